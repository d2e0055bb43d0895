import CacheTiers
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore

/// `POST /v1/reports` and `GET /v1/stats` (see Documentation/CacheMasterAPI.md).
struct ReportRoutes: Sendable {
    let store: ReportStore
    let metrics: FleetMetrics
    let retryAfterSeconds: Int

    func register(on router: Router<BasicRequestContext>) {
        router.post("/v1/reports") { request, _ in try await receive(request) }
        router.get("/v1/stats") { request, _ in try await stats(request) }
    }

    /// Stores a report: 201 when new, 200 when its id is already stored, and nothing
    /// stored on any other answer. The answer is sent once the row is committed.
    private func receive(_ request: Request) async throws -> Response {
        let limit = ReceivedReport.maximumBodyBytes
        let tooLarge = HTTPError(.contentTooLarge, message: "a report is at most \(limit / 1024) KiB of JSON\n")
        // A declared length over the cap is refused before a byte of the body is read;
        // an undeclared one (chunked) is refused as soon as it passes the cap.
        if let declared = request.headers[.contentLength].flatMap(Int.init), declared > limit {
            metrics.reject(.tooLarge)
            throw tooLarge
        }
        var body = ByteBuffer()
        for try await part in request.body {
            guard body.readableBytes + part.readableBytes <= limit else {
                metrics.reject(.tooLarge)
                throw tooLarge
            }
            body.writeImmutableBuffer(part)
        }
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
            throw HTTPError(
                .serviceUnavailable, headers: [.retryAfter: "\(retryAfterSeconds)"],
                message: "\(error); the report can be sent again\n"
            )
        }
        switch outcome {
        case .stored:
            metrics.record(report)
            return Response(status: .created)
        case .duplicate:
            return Response(status: .ok)
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
            throw HTTPError(.internalServerError, message: "the report database cannot be read: \(ReportStore.describe(error))\n")
        }
        return Response(
            status: .ok,
            headers: [.contentType: "application/json"],
            body: .init(byteBuffer: ByteBuffer(bytes: try stats.jsonData()))
        )
    }
}
