import CacheTiers
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import Synchronization

/// `POST /v1/reports` and `GET /v1/stats` (see Documentation/CacheMasterAPI.md).
struct ReportRoutes: Sendable {
    let store: ReportStore
    let metrics: FleetMetrics
    let retryAfterSeconds: Int
    /// How long a report's whole body may take to arrive (the idle timeout only catches
    /// silence; a body dripped a byte at a time would hold its connection for good).
    let bodyDeadline: Duration
    /// Database failures while serving, logged at most once every 10 s.
    let databaseErrors: RateLimitedLog

    /// The header of every 200 and 201 answer to a report: its stored id, lowercase, so
    /// a VM tells a cache master's acknowledgement from a proxy's or captive portal's 200.
    static let reportIDHeader = HTTPField.Name("X-CacheTiers-Report-Id")!

    func register(on router: Router<BasicRequestContext>) {
        router.post("/v1/reports") { request, _ in try await receive(request) }
        router.getAndHead("/v1/stats") { request, _ in try await stats(request) }
    }

    /// Stores a report: 201 when new, 200 when its id is already stored, and nothing
    /// stored on any other answer. The answer is sent once the row is committed.
    private func receive(_ request: Request) async throws -> Response {
        let limit = ReceivedReport.maximumBodyBytes
        let body = try await request.collectBody(
            upTo: limit, within: bodyDeadline, what: "a report's body",
            tooLarge: HTTPError(.contentTooLarge, message: "a report is at most \(limit / 1024) KiB of JSON\n"),
            onTooLarge: { metrics.reject(.tooLarge) }
        )
        let report: ReceivedReport
        do {
            report = try ReceivedReport.decode(body.readableBytesView)
        } catch {
            metrics.reject(.malformed)
            throw HTTPError(.badRequest, message: "not a usable report: \(error)\n")
        }
        let outcome: ReportStore.InsertOutcome
        do {
            outcome = try await store.insert(report, json: String(buffer: body), receivedAt: Date())
        } catch {
            metrics.reject(.storeFailed)
            databaseErrors.error("cannot store a report; answering 503", error: "\(error)")
            throw HTTPError(
                .serviceUnavailable, headers: [.retryAfter: "\(retryAfterSeconds)"],
                message: "\(error); the report can be sent again\n"
            )
        }
        switch outcome {
        case .stored:
            metrics.record(report)
            return Response(status: .created, headers: [Self.reportIDHeader: report.id])
        case .duplicate:
            return Response(status: .ok, headers: [Self.reportIDHeader: report.id])
        }
    }

    private func stats(_ request: Request) async throws -> Response {
        let text = request.uri.queryParameters.get("window") ?? StatsWindow.defaultText
        guard let window = StatsWindow.seconds(text) else {
            throw HTTPError(.badRequest, message: "window: \(StatsWindow.problem)\n")
        }
        let stats: FleetStats
        do {
            stats = try await store.stats(window: window, now: Date())
        } catch {
            databaseErrors.error("cannot compute the fleet's stats; answering 500", error: ReportStore.describe(error))
            throw HTTPError(.internalServerError, message: "the report database cannot be read: \(ReportStore.describe(error))\n")
        }
        return Response(
            status: .ok,
            // A browser session may read it too: nothing of it is to be kept in a cache.
            headers: [.contentType: "application/json", .cacheControl: "no-store"],
            body: .init(byteBuffer: ByteBuffer(bytes: try stats.jsonData()))
        )
    }
}

extension Request {
    /// The whole body: `tooLarge` as soon as it is known to pass `limit` bytes (from its
    /// declared length, before a byte is read, or while it arrives), 408 with
    /// `Connection: close` when it has not all arrived within `deadline` (the idle
    /// timeout only catches silence; a body dripped a byte at a time would hold its
    /// connection for good).
    func collectBody(
        upTo limit: Int, within deadline: Duration, what: String, tooLarge: HTTPError, onTooLarge: @escaping @Sendable () -> Void = {}
    ) async throws -> ByteBuffer {
        if let declared = headers[.contentLength].flatMap(Int.init), declared > limit {
            onTooLarge()
            throw tooLarge
        }
        let body = self.body
        return try await withThrowingTaskGroup(of: ByteBuffer?.self) { group in
            group.addTask {
                var collected = ByteBuffer()
                for try await part in body {
                    guard collected.readableBytes + part.readableBytes <= limit else {
                        onTooLarge()
                        throw tooLarge
                    }
                    collected.writeImmutableBuffer(part)
                }
                return collected
            }
            group.addTask {
                try await Task.sleep(for: deadline)
                return nil
            }
            defer { group.cancelAll() }
            guard let collected = try await group.next()! else {
                throw HTTPError(
                    .requestTimeout, headers: [.connection: "close"],
                    message: "\(what) must arrive within \(deadline.components.seconds) s\n"
                )
            }
            return collected
        }
    }
}

/// Logs a recurring failure at error level at most once per `interval`, with how many
/// were left unlogged since, so a database that fails every request is visible in the
/// log without flooding it.
final class RateLimitedLog: Sendable {
    private struct State {
        var lastLogged: ContinuousClock.Instant?
        var suppressed = 0
    }

    private let logger: Logger
    private let interval: Duration
    private let state = Mutex(State())

    init(logger: Logger, interval: Duration = .seconds(10)) {
        self.logger = logger
        self.interval = interval
    }

    func error(_ message: Logger.Message, error: String) {
        let now = ContinuousClock.now
        let suppressed = state.withLock { state -> Int? in
            if let last = state.lastLogged, now - last < interval {
                state.suppressed += 1
                return nil
            }
            defer {
                state.lastLogged = now
                state.suppressed = 0
            }
            return state.suppressed
        }
        guard let suppressed else { return }
        logger.error(message, metadata: ["error": "\(error)", "suppressed": "\(suppressed)"])
    }
}
