import Foundation
import Hummingbird
import HTTPTypes
import NIOCore
import Prometheus

/// The server's counters, in its own Prometheus registry (`GET /metrics`).
final class ServerMetrics: Sendable {
    let registry = PrometheusCollectorRegistry()
    let bytesServed: Prometheus.Counter
    let bytesReceived: Prometheus.Counter
    let activeTransfers: Prometheus.Gauge
    /// The aggregates of the fleet's reports, in the same registry.
    let fleet: FleetMetrics
    // MARK: Retention
    let retention: RetentionMetrics

    private static func name(_ metric: String, _ unit: String, _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(namespace: "cachetiers", subsystem: "server", metricName: metric, unitName: unit, helpText: help)
    }

    private static var requests: MetricNameDescriptor { name("requests", "total", "Requests by route, method and status.") }
    private static var errors: MetricNameDescriptor { name("errors", "total", "Requests that failed on the server (status 500 and above).") }

    init() {
        bytesServed = registry.makeCounter(descriptor: Self.name("bytes_served", "total", "Archive bytes sent to clients."))
        bytesReceived = registry.makeCounter(descriptor: Self.name("bytes_received", "total", "Archive bytes received in uploads."))
        activeTransfers = registry.makeGauge(descriptor: Self.name("active", "transfers", "Downloads and uploads in flight."))
        fleet = FleetMetrics(registry: registry)
        // MARK: Retention
        retention = RetentionMetrics(registry: registry)
    }

    func recordRequest(route: String, method: String, status: Int) {
        registry.makeCounter(
            descriptor: Self.requests, labels: [("route", route), ("method", method), ("status", "\(status)")]
        ).increment()
        if status >= 500 {
            registry.makeCounter(descriptor: Self.errors, labels: [("route", route)]).increment()
        }
    }

    func exposition(activeTransfers active: Int) -> String {
        activeTransfers.set(Double(active))
        return registry.emitToString()
    }
}

/// Counts every request by route and status.
struct MetricsMiddleware<Context: RequestContext>: RouterMiddleware {
    let metrics: ServerMetrics

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            let response = try await next(request, context)
            metrics.recordRequest(route: routeLabel(context), method: request.method.rawValue, status: response.status.code)
            return response
        } catch let error as any HTTPResponseError {
            metrics.recordRequest(route: routeLabel(context), method: request.method.rawValue, status: error.status.code)
            throw error
        } catch {
            metrics.recordRequest(route: routeLabel(context), method: request.method.rawValue, status: 500)
            throw error
        }
    }

    private func routeLabel(_ context: Context) -> String {
        context.endpointPath ?? "unmatched"
    }
}

/// Answers every error as one line of plain text (the API's promise), whatever the
/// message holds: an interpolated error description can span lines, and Hummingbird
/// would otherwise wrap it in JSON.
struct OneLineErrorMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as HTTPError {
            var headers = error.headers
            guard let message = error.body else { return Response(status: error.status, headers: headers) }
            let line = Self.oneLine(message)
            headers[.contentType] = "text/plain; charset=utf-8"
            headers[.contentLength] = "\(line.utf8.count)"
            return Response(status: error.status, headers: headers, body: .init(byteBuffer: ByteBuffer(string: line)))
        }
    }

    /// `text` with every run of whitespace (newlines included) made one space, every other
    /// control character (ESC, NUL, DEL, C1: what a request may have put in a message)
    /// written as `\u{1B}`, and one newline at the end, so no answer can drive a terminal.
    static func oneLine(_ text: String) -> String {
        let flat = text.split(whereSeparator: \.isWhitespace).joined(separator: " ")
        var line = ""
        line.unicodeScalars.reserveCapacity(flat.unicodeScalars.count)
        for scalar in flat.unicodeScalars {
            if scalar.properties.generalCategory == .control {
                line += "\\u{\(String(scalar.value, radix: 16, uppercase: true))}"
            } else {
                line.unicodeScalars.append(scalar)
            }
        }
        return line + "\n"
    }
}

/// The master's tokens, and what a presented one may do: compared in constant time,
/// both whatever the first answered, so timing tells nothing of either.
struct MasterTokens: Sendable {
    enum Holder: Sendable, Equatable {
        /// The master's token: every route.
        case everything
        /// The report-only token: `POST /v1/reports` alone.
        case reportsOnly
        case refused
    }

    let token: String?
    let reportToken: String?
    /// The browser sessions of ``token`` (nil without one: nobody can log in).
    let sessions: DashboardSession?

    init(token: String?, reportToken: String?) {
        self.token = token
        self.reportToken = reportToken
        self.sessions = token.map(DashboardSession.init(token:))
    }

    /// Whether every route is open (neither token set).
    var open: Bool { token == nil && reportToken == nil }

    func holder(of presented: some Collection<UInt8>) -> Holder {
        let presented = Array(presented)
        let mayDoEverything = token.map { constantTimeEquals(presented, Array($0.utf8)) } ?? false
        let mayReport = reportToken.map { constantTimeEquals(presented, Array($0.utf8)) } ?? false
        return mayDoEverything ? .everything : mayReport ? .reportsOnly : .refused
    }
}

/// Requires `Authorization: Bearer <token>` on everything but `/healthz` and the login
/// routes, compared in constant time. The scheme is case-insensitive (RFC 7235), the
/// token is not; a token in a query string is never looked at.
///
/// `token` may do everything; `reportToken` (what VMs hold to report their restores)
/// may only `POST /v1/reports`, and is answered 403 on every other route. With neither
/// set, every route is open.
///
/// Browsers: the session cookie of ``DashboardSession`` stands for the token on the
/// dashboard's reads only (GET and HEAD of `/`, `/v1/dashboard` and `/v1/stats`), never
/// on a route that writes, so a cross-site request cannot use it to change anything
/// (and `SameSite=Strict` keeps it off cross-site requests anyway). `GET /` without
/// credentials answers 401 with the login page instead of a line of text.
struct BearerTokenMiddleware<Context: RequestContext>: RouterMiddleware {
    let tokens: MasterTokens

    init(token: String?, reportToken: String? = nil) {
        self.tokens = MasterTokens(token: token, reportToken: reportToken)
    }

    /// Routes open without a token: the health check, and logging in and out.
    static var openPaths: Set<String> { ["/healthz", DashboardRoutes.loginPath, DashboardRoutes.logoutPath] }
    /// The reads a session cookie opens.
    static var sessionPaths: Set<String> { [DashboardRoutes.pagePath, DashboardRoutes.snapshotPath, "/v1/stats"] }

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard !tokens.open, !Self.openPaths.contains(request.uri.path) else { return try await next(request, context) }
        let presented = request.headers[.authorization].flatMap { value -> [UInt8]? in
            let scheme = "bearer "
            return value.prefix(scheme.count).lowercased() == scheme ? Array(value.utf8.dropFirst(scheme.count)) : nil
        }
        switch presented.map({ tokens.holder(of: $0) }) {
        case .everything:
            return try await next(request, context)
        case .reportsOnly:
            guard request.method == .post, request.uri.path == "/v1/reports" else {
                throw HTTPError(.forbidden, message: "this bearer token may only send reports (POST /v1/reports)\n")
            }
            return try await next(request, context)
        case .refused:
            break
        case nil:
            let read = request.method == .get || request.method == .head
            if read, Self.sessionPaths.contains(request.uri.path),
                tokens.sessions?.accepts(cookieHeader: request.headers[.cookie], now: Date()) == true
            {
                return try await next(request, context)
            }
            if read, request.uri.path == DashboardRoutes.pagePath {
                return DashboardPage.loginResponse(status: .unauthorized, window: DashboardRoutes.window(in: request) ?? .default)
            }
        }
        throw HTTPError(
            .unauthorized, headers: [.wwwAuthenticate: "Bearer realm=\"cachetiers\""],
            message: presented == nil ? "this cache master needs Authorization: Bearer <token>\n" : "the bearer token was refused\n"
        )
    }
}

extension Router {
    /// Registers `handler` for GET of `path` and for HEAD, which answers the GET's status
    /// and headers without its body, as HTTP asks (a load balancer probing
    /// `HEAD /healthz` sees the master up). For the read-only routes; the archive routes
    /// have HEAD handlers of their own, which skip reading the file.
    @discardableResult
    func getAndHead(
        _ path: RouterPath, use handler: @escaping @Sendable (Request, Context) async throws -> some ResponseGenerator
    ) -> Self {
        get(path, use: handler)
        head(path) { request, context -> Response in
            let response = try await handler(request, context).response(from: request, context: context)
            var headers = response.headers
            if headers[.contentLength] == nil, let length = response.body.contentLength { headers[.contentLength] = "\(length)" }
            return Response(status: response.status, headers: headers, body: .init())
        }
        return self
    }
}

/// Compares without stopping at the first difference, so timing reveals nothing of the token.
func constantTimeEquals(_ a: [UInt8], _ b: [UInt8]) -> Bool {
    var difference = UInt8(a.count == b.count ? 0 : 1)
    for index in 0..<max(a.count, b.count) {
        let x = index < a.count ? a[index] : 0
        let y = index < b.count ? b[index] : 0
        difference |= x ^ y
    }
    return difference == 0
}

/// Closes a connection whose client has stopped reading: once the socket cannot take
/// more of a response (the channel turns unwritable) and stays so for `timeout`, the
/// connection goes. Without it, a client that pipelines requests and never reads the
/// answers, or starts downloads and never reads them, holds a connection slot (and a
/// transfer slot) for good, since the idle timeout only watches what the client sends.
final class WriteStallHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny
    typealias OutboundIn = NIOAny

    private let timeout: TimeAmount
    private var scheduled: Scheduled<Void>?

    init(timeout: TimeAmount) {
        self.timeout = timeout
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable {
            scheduled?.cancel()
            scheduled = nil
        } else if scheduled == nil {
            let channel = context.channel
            scheduled = context.eventLoop.scheduleTask(in: timeout) {
                if !channel.isWritable { channel.close(promise: nil) }
            }
        }
        context.fireChannelWritabilityChanged()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        scheduled?.cancel()
        scheduled = nil
    }

    func channelInactive(context: ChannelHandlerContext) {
        scheduled?.cancel()
        scheduled = nil
        context.fireChannelInactive()
    }
}
