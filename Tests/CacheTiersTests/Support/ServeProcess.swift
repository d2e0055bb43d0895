import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1

/// A real `cachetiers serve` process, started as an operator starts it, for the tests
/// that need the binary (a restart, a SIGKILL, what stderr says).
final class ServeProcess: @unchecked Sendable {
    let process: Process
    /// `http://127.0.0.1:PORT`, from the first line on stdout.
    let url: String
    private let stderrRead: Thread.PendingRead

    /// Starts `cachetiers serve --port 0 ARGUMENTS` and waits for its first line.
    init(_ arguments: [String]) throws {
        process = Process()
        process.executableURL = URL(fileURLWithPath: Fixtures.cliPath)
        process.arguments = ["serve", "--port", "0"] + arguments
        let output = Pipe()
        let errors = Pipe()
        process.standardOutput = output
        process.standardError = errors
        try process.run()
        stderrRead = Thread.detachedRead(errors.fileHandleForReading)

        // The first line on stdout names the address; read it without a fixed sleep.
        var line = Data()
        while !line.contains(UInt8(ascii: "\n")) {
            let chunk = output.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            line.append(chunk)
        }
        let first = String(decoding: line, as: UTF8.self).split(separator: "\n").first.map(String.init) ?? ""
        guard first.hasPrefix("listening on http://") else {
            process.waitUntilExit()
            throw FixtureError("serve did not start (exit \(process.terminationStatus)): \(String(decoding: stderrRead.wait(), as: UTF8.self))")
        }
        url = String(first.dropFirst("listening on ".count))
    }

    deinit {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
    }

    /// SIGTERM, then waits: the exit status.
    @discardableResult
    func stop() -> Int32 {
        process.terminate()
        process.waitUntilExit()
        return process.terminationStatus
    }

    /// SIGKILL, as a crash or the OOM killer would, and waits.
    func kill9() {
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    /// What the process wrote to stderr, once it has exited.
    var stderr: String { String(decoding: stderrRead.wait(), as: UTF8.self) }

    /// Runs `cachetiers serve ARGUMENTS` expecting it not to start.
    static func failingToStart(_ arguments: [String]) async throws -> Fixtures.ProcessResult {
        try await Fixtures.cli(["serve", "--port", "0"] + arguments)
    }

    /// One HTTP request to the server.
    func send(
        _ method: HTTPMethod, _ path: String, token: String? = nil, body: [UInt8]? = nil
    ) async throws -> (status: Int, body: String) {
        var request = HTTPClientRequest(url: url + path)
        request.method = method
        if let token { request.headers.add(name: "Authorization", value: "Bearer \(token)") }
        if let body {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(body)
        }
        let response = try await HTTPClient.shared.execute(request, timeout: .seconds(60))
        let bytes = try await response.body.collect(upTo: 16 << 20)
        return (Int(response.status.code), String(buffer: bytes))
    }
}
