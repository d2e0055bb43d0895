import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import SystemPackage

/// Prometheus (Debian's `prometheus` package), started on a free loopback port with a
/// fresh TSDB in a folder of its own, scraping the given targets and evaluating the given
/// rules every `interval`: for tests of alerting rules against a real server and real
/// scrapes. Call ``stop()`` when done; it also removes the folder.
public final class PrometheusServer: @unchecked Sendable {
    /// An HTTP endpoint Prometheus scrapes, as one job.
    public struct Target: Sendable {
        public var job: String
        /// `HOST:PORT`.
        public var address: String
        public var metricsPath: String
        /// Sent as `Authorization: Bearer`, from a file as a production config would.
        public var bearerToken: String?

        public init(job: String, address: String, metricsPath: String = "/metrics", bearerToken: String? = nil) {
            self.job = job
            self.address = address
            self.metricsPath = metricsPath
            self.bearerToken = bearerToken
        }
    }

    /// One element of an instant vector.
    public struct Sample: Sendable, Equatable {
        public var labels: [String: String]
        public var value: Double
    }

    /// An alert as `GET /api/v1/alerts` lists it.
    public struct Alert: Sendable, Decodable, Equatable {
        public var labels: [String: String]
        public var annotations: [String: String]
        /// `pending` or `firing`.
        public var state: String
        public var value: String

        public var name: String { labels["alertname"] ?? "" }
    }

    public let port: Int
    private let folder: TemporaryDirectory
    private let process: Process

    /// The `prometheus` binary: `CACHETIERS_PROMETHEUS`, else `prometheus` on PATH; nil when missing.
    public static let binary: String? = executable("prometheus", override: "CACHETIERS_PROMETHEUS")

    /// `promtool`, from the same package: `CACHETIERS_PROMTOOL`, else `promtool` on PATH; nil when missing.
    public static let promtool: String? = executable("promtool", override: "CACHETIERS_PROMTOOL")

    private init(port: Int, folder: TemporaryDirectory, process: Process) {
        self.port = port
        self.folder = folder
        self.process = process
    }

    /// Writes the configuration (and `rules`, the text of a rules file, when given), starts
    /// Prometheus on a free loopback port and waits until `/-/ready` answers.
    public static func start(
        targets: [Target],
        rules: String? = nil,
        interval: Duration = .seconds(1)
    ) async throws -> PrometheusServer {
        guard let binary else {
            throw EmulatorError("prometheus is not installed: apt-get install prometheus (or set CACHETIERS_PROMETHEUS)")
        }
        let folder = try TemporaryDirectory(prefix: "prometheus")
        do {
            let config = try writeConfiguration(in: folder.path, targets: targets, rules: rules, interval: interval)
            for _ in 0..<5 {
                let port = try LoopbackPort.free()
                let process = Process()
                process.executableURL = URL(fileURLWithPath: binary)
                process.arguments = [
                    "--config.file=\(config.string)",
                    "--storage.tsdb.path=\(folder.path.appending("data").string)",
                    "--web.listen-address=127.0.0.1:\(port)",
                    "--log.level=warn",
                ]
                process.standardOutput = FileHandle.nullDevice
                FileManager.default.createFile(atPath: folder.path.appending("prometheus.log").string, contents: nil)
                process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: folder.path.appending("prometheus.log").string))
                try process.run()
                let server = PrometheusServer(port: port, folder: folder, process: process)
                let deadline = ContinuousClock.now + .seconds(30)
                while ContinuousClock.now < deadline, process.isRunning {
                    if (try? await server.get("/-/ready").status) == 200 { return server }
                    try await Task.sleep(for: .milliseconds(100))
                }
                let exited = !process.isRunning
                server.terminate()
                let log = server.log
                // The port was taken meanwhile (it exits at once): try another. Anything else is final.
                guard exited, log.contains("address already in use") else {
                    throw EmulatorError(
                        exited
                            ? "prometheus exited with status \(process.terminationStatus): \(log.suffix(2000))"
                            : "prometheus did not become ready on 127.0.0.1:\(port) within 30 s: \(log.suffix(2000))"
                    )
                }
            }
            throw EmulatorError("prometheus found no free loopback port (5 tries)")
        } catch {
            folder.remove()
            throw error
        }
    }

    /// `http://127.0.0.1:PORT`.
    public var url: String { "http://127.0.0.1:\(port)" }

    /// What the server wrote on stderr (warnings and errors), for a failing test to show.
    public var log: String {
        (try? String(contentsOfFile: folder.path.appending("prometheus.log").string, encoding: .utf8)) ?? ""
    }

    /// Evaluates `expression` now (`GET /api/v1/query`); it must give an instant vector.
    public func query(_ expression: String) async throws -> [Sample] {
        struct Result: Decodable {
            var metric: [String: String]
            var value: [Value]
        }
        let data: APIData<Result> = try await api("/api/v1/query", query: expression)
        guard data.resultType == "vector", let results = data.result else {
            throw EmulatorError("the query \(expression) gave a \(data.resultType ?? "nil"), not an instant vector")
        }
        return results.map { result in
            Sample(labels: result.metric, value: result.value.last.flatMap(\.number) ?? .nan)
        }
    }

    /// The alerts pending or firing now (`GET /api/v1/alerts`).
    public func alerts() async throws -> [Alert] {
        let data: APIData<Alert> = try await api("/api/v1/alerts")
        return data.alerts ?? []
    }

    /// Stops Prometheus (SIGTERM, then waits) and removes its folder.
    public func stop() {
        terminate()
        folder.remove()
    }

    deinit { stop() }

    private func terminate() {
        guard process.isRunning else { return }
        process.terminate()
        process.waitUntilExit()
    }

    // MARK: - The HTTP API

    /// A number of the API: a JSON string (`"0.5"`, `"NaN"`, `"+Inf"`) or, for the
    /// evaluation time, a JSON number.
    private enum Value: Decodable {
        case time(Double)
        case number(Double?)

        init(from decoder: any Decoder) throws {
            let container = try decoder.singleValueContainer()
            if let text = try? container.decode(String.self) {
                self = .number(Double(text))
            } else {
                self = .time(try container.decode(Double.self))
            }
        }

        var number: Double? {
            if case .number(let value) = self { return value }
            return nil
        }
    }

    private struct APIData<Result: Decodable>: Decodable {
        var resultType: String?
        var result: [Result]?
        var alerts: [Alert]?
    }

    private struct Envelope<Result: Decodable>: Decodable {
        var status: String
        var data: APIData<Result>?
        var error: String?
    }

    private func api<Result: Decodable>(_ path: String, query: String? = nil) async throws -> APIData<Result> {
        var target = path
        if let query {
            var components = URLComponents()
            components.queryItems = [URLQueryItem(name: "query", value: query)]
            // `+` is a space in a query string: encode it too.
            target += "?" + (components.percentEncodedQuery ?? "").replacingOccurrences(of: "+", with: "%2B")
        }
        let (status, body) = try await get(target)
        let envelope: Envelope<Result>
        do {
            envelope = try JSONDecoder().decode(Envelope<Result>.self, from: body)
        } catch {
            throw EmulatorError("\(path) answered \(status) with \(String(decoding: body.prefix(500), as: UTF8.self))")
        }
        guard envelope.status == "success", let data = envelope.data else {
            throw EmulatorError("\(path) \(query ?? ""): \(envelope.error ?? "status \(status)")")
        }
        return data
    }

    private func get(_ path: String) async throws -> (status: Int, body: Data) {
        let response = try await HTTPClient.shared.execute(HTTPClientRequest(url: url + path), timeout: .seconds(10))
        let body = try await response.body.collect(upTo: 16 << 20)
        return (Int(response.status.code), Data(body.readableBytesView))
    }

    // MARK: - Setup

    /// `prometheus.yml` (written as JSON, which YAML includes), the token files and the rules file.
    private static func writeConfiguration(
        in folder: FilePath,
        targets: [Target],
        rules: String?,
        interval: Duration
    ) throws -> FilePath {
        let seconds = "\(interval.components.seconds)s"
        var jobs: [[String: Any]] = []
        for (index, target) in targets.enumerated() {
            var job: [String: Any] = [
                "job_name": target.job,
                "metrics_path": target.metricsPath,
                "static_configs": [["targets": [target.address]]],
            ]
            if let token = target.bearerToken {
                let file = folder.appending("token-\(index)")
                try Data(token.utf8).write(to: URL(fileURLWithPath: file.string))
                job["authorization"] = ["type": "Bearer", "credentials_file": file.string]
            }
            jobs.append(job)
        }
        var config: [String: Any] = [
            "global": ["scrape_interval": seconds, "evaluation_interval": seconds, "scrape_timeout": seconds],
            "scrape_configs": jobs,
        ]
        if let rules {
            let file = folder.appending("rules.yml")
            try Data(rules.utf8).write(to: URL(fileURLWithPath: file.string))
            config["rule_files"] = [file.string]
        }
        let file = folder.appending("prometheus.yml")
        try JSONSerialization.data(withJSONObject: config, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
            .write(to: URL(fileURLWithPath: file.string))
        return file
    }

    private static func executable(_ name: String, override variable: String) -> String? {
        let environment = ProcessInfo.processInfo.environment
        if let path = environment[variable], !path.isEmpty {
            return FileManager.default.isExecutableFile(atPath: path) ? path : nil
        }
        let folders = (environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":") + ["/usr/bin"]
        return folders.lazy.map { "\($0)/\(name)" }.first { FileManager.default.isExecutableFile(atPath: $0) }
    }
}
