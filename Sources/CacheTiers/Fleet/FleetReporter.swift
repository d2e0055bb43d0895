import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import SystemPackage

/// Sends a restore's report to the fleet: `POST /v1/reports` on the cache master, with
/// a token that may only report, best-effort and bounded.
///
/// The whole send, delivering the reports an earlier run spooled included, ends within
/// ``Configuration/timeout``: a down or silent master costs the restore at most that.
/// The report is spooled first (``ReportSpool``), so whatever the master has not
/// acknowledged when the time is up, or when the process dies, is sent by the next run;
/// the master counts a report sent twice once, by its id. A 2xx that names the report
/// (``ReportAnswer/reportIdHeader``) removes it from the spool; a 4xx other than 408 and
/// 429 from a cache master (its `Server` header) means the master will never take it,
/// and it is dropped with a warning; anything else (5xx, 408, 429, no connection, no
/// answer in time, and any answer a captive portal or middlebox gives in the master's
/// place) leaves it spooled.
///
/// The current report goes first, then the spooled ones, newest first: the freshest
/// numbers are the ones the fleet's alerts look at, and the oldest are the ones the
/// spool's bound drops anyway when the master stays away.
public struct FleetReporter: Sendable {
    public struct Configuration: Sendable {
        /// The cache masters' base URLs, tried in order.
        public var urls: [String]
        /// Sent as `Authorization: Bearer <token>`.
        public var token: String?
        /// The bound on the whole send (1 s).
        public var timeout: Duration
        /// `nil` for ``ReportSpool/defaultDirectory(environment:)``.
        public var spoolDirectory: FilePath?
        /// Reports kept for a later run at most (100); the oldest go beyond. 0 spools nothing.
        public var maxSpooledReports: Int

        public init(
            urls: [String],
            token: String? = nil,
            timeout: Duration = .seconds(1),
            spoolDirectory: FilePath? = nil,
            maxSpooledReports: Int = 100
        ) {
            self.urls = urls.map { $0.hasSuffix("/") ? String($0.dropLast()) : $0 }
            self.token = token
            self.timeout = timeout
            self.spoolDirectory = spoolDirectory
            self.maxSpooledReports = max(0, maxSpooledReports)
        }
    }

    /// What a send came to.
    public struct Outcome: Sendable {
        /// The reports the master acknowledged, this one first when it was.
        public var delivered: [UUID] = []
        /// The reports left in the spool for the next run.
        public var spooled = 0
        /// One line each, for the operator: what was lost or could not be sent.
        public var warnings: [String] = []
    }

    public let configuration: Configuration

    public init(configuration: Configuration) {
        self.configuration = configuration
    }

    /// Sends `report` and what the spool holds, within the configured bound. Never throws.
    public func send(_ report: RestoreReport) async -> Outcome {
        let deadline = NIODeadline.now() + .nanoseconds(Int64(configuration.timeout.inSeconds * 1e9))
        var outcome = Outcome()
        let json: [UInt8]
        do {
            json = try report.wireJSON()
        } catch {
            outcome.warnings.append("the report could not be encoded for the fleet: \(error)")
            return outcome
        }
        guard json.count <= RestoreReport.maxWireBytes else {
            outcome.warnings.append(
                "the report is \(json.count) bytes, over the \(RestoreReport.maxWireBytes >> 10) KiB a cache master accepts; not sent"
            )
            return outcome
        }

        let spool = ReportSpool(
            directory: configuration.spoolDirectory ?? ReportSpool.defaultDirectory(), maxReports: configuration.maxSpooledReports
        )
        var usableSpool = false
        if spool.maxReports > 0 {
            do {
                try spool.prepare()
                try spool.add(report, json: json)
                usableSpool = true
                let dropped = spool.trim()
                if dropped > 0 {
                    outcome.warnings.append(
                        "the report spool \(spool.directory) holds at most \(spool.maxReports) reports; dropped the \(dropped) oldest"
                    )
                }
            } catch {
                outcome.warnings.append("cannot spool reports: \(error); a report the cache master does not take now is lost")
            }
        }

        let client = Self.makeClient(timeout: configuration.timeout)
        await deliver(report, json: json, spool: usableSpool ? spool : nil, client: client, deadline: deadline, into: &outcome)
        try? await client.shutdown()
        return outcome
    }

    /// Posts the report, then (when the master took or refused it) the spooled ones.
    private func deliver(
        _ report: RestoreReport,
        json: [UInt8],
        spool: ReportSpool?,
        client: HTTPClient,
        deadline: NIODeadline,
        into outcome: inout Outcome
    ) async {
        var masters = Masters(urls: configuration.urls)
        switch await masters.post(json, id: report.id, token: configuration.token, client: client, deadline: deadline) {
        case .acknowledged:
            outcome.delivered.append(report.id)
            spool?.remove(report.id)
        case .refused(let answer):
            spool?.remove(report.id)
            outcome.warnings.append("the cache master refused the report (\(answer)); dropped")
        case .unavailable(let reason):
            let waiting = spool?.count ?? 0
            outcome.spooled = waiting
            outcome.warnings.append(
                "the report did not reach the fleet (\(reason))"
                    + (spool.map { "; spooled in \($0.directory) for the next run (\(waiting) waiting)" } ?? "")
            )
            return
        }
        guard let spool else { return }
        var entries = spool.entries()[...]
        var refused: [String] = []
        defer {
            // One line however many: a token the master no longer takes refuses them all.
            if let first = refused.first {
                outcome.warnings.append(
                    "the cache master refused \(refused.count) spooled report\(refused.count == 1 ? "" : "s") (\(first)); dropped"
                )
            }
        }
        while let entry = entries.popFirst() {
            switch await masters.post(entry.json, id: entry.report.id, token: configuration.token, client: client, deadline: deadline) {
            case .acknowledged:
                outcome.delivered.append(entry.report.id)
                spool.remove(entry.report.id)
            case .refused(let answer):
                spool.remove(entry.report.id)
                refused.append(answer)
            case .unavailable:
                // This run's time or the master's patience ran out: the rest waits for the next run.
                outcome.spooled = entries.count + 1
                return
            }
        }
    }

    /// A client for reports only: connects within the bound, never retries a refused
    /// connection (a down master must not eat the bound), follows no redirect.
    static func makeClient(timeout: Duration) -> HTTPClient {
        var configuration = HTTPClient.Configuration()
        configuration.timeout = .init(connect: .milliseconds(max(1, Int64((timeout.inSeconds * 1000).rounded()))))
        configuration.connectionPool.retryConnectionEstablishment = false
        configuration.redirectConfiguration = .disallow
        return HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: configuration)
    }
}

/// How a cache master answered one report.
enum ReportAnswer: Sendable {
    /// The header a cache master's 200 and 201 carry: the id of the report it stored.
    static let reportIdHeader = "X-CacheTiers-Report-Id"
    /// How a cache master's `Server` header begins.
    static let serverPrefix = "cachetiers/"

    /// 2xx naming the report: stored now, or already.
    case acknowledged
    /// A cache master's 4xx other than 408 and 429: never to be taken; the status and the master's words.
    case refused(String)
    /// No connection, no answer in time, 5xx, 408, 429, or an answer that is not a cache
    /// master's: for a later run.
    case unavailable(String)
}

/// The cache masters of one send, in order; one that was unavailable is not asked again
/// in this send.
struct Masters {
    private var urls: [String]

    init(urls: [String]) {
        self.urls = urls
    }

    mutating func post(_ json: [UInt8], id: UUID, token: String?, client: HTTPClient, deadline: NIODeadline) async -> ReportAnswer {
        var last = ReportAnswer.unavailable("no cache master URL")
        while let url = urls.first {
            let answer = await Self.post(json, id: id, to: url, token: token, client: client, deadline: deadline)
            guard case .unavailable = answer else { return answer }
            last = answer
            urls.removeFirst()
        }
        return last
    }

    static func post(_ json: [UInt8], id: UUID, to base: String, token: String?, client: HTTPClient, deadline: NIODeadline) async
        -> ReportAnswer
    {
        let endpoint = base + "/v1/reports"
        guard deadline > .now() else { return .unavailable("no time left within the report's bound") }
        var request = HTTPClientRequest(url: endpoint)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        if let token { request.headers.add(name: "Authorization", value: "Bearer \(token)") }
        request.body = .bytes(ByteBuffer(bytes: json))
        do {
            let response = try await client.execute(request, deadline: deadline)
            let code = Int(response.status.code)
            let body = (try? await response.body.collect(upTo: 4096)).map { String(buffer: $0) } ?? ""
            let words = body.split(whereSeparator: \.isNewline).first.map { ": " + String($0.prefix(200)) } ?? ""
            let answer = "\(endpoint) answered \(code)\(words)".printableOnOneLine
            let notAMaster = "\(answer), an answer that did not come from a cache master"
            switch code {
            case 200...299:
                let named = response.headers.first(name: ReportAnswer.reportIdHeader)?.lowercased() == id.uuidString.lowercased()
                return named ? .acknowledged : .unavailable(notAMaster + " (no \(ReportAnswer.reportIdHeader) naming the report)")
            case 408, 429: return .unavailable(answer)
            case 400...499:
                let fromMaster = response.headers.first(name: "Server")?.hasPrefix(ReportAnswer.serverPrefix) == true
                return fromMaster ? .refused(answer) : .unavailable(notAMaster + " (no Server: \(ReportAnswer.serverPrefix)...)")
            default: return .unavailable(answer)
            }
        } catch let error as HTTPClientError where error == .deadlineExceeded || error == .cancelled {
            return .unavailable("\(endpoint) did not answer within the report's bound")
        } catch is CancellationError {
            return .unavailable("\(endpoint) did not answer within the report's bound")
        } catch {
            let reason = HTTPClient.describeAnswerFailure(error, maxBytes: 4096)
            return .unavailable("cannot reach \(endpoint): \(reason)".printableOnOneLine)
        }
    }
}
