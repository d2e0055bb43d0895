import Foundation
import HTTPTypes
import Hummingbird
import NIOCore

/// `GET /` (the dashboard page), `GET /v1/dashboard` (its numbers as JSON), and the
/// browser login: `POST /login` and `POST /logout` (see Documentation/Dashboard.md).
/// Who may reach them is ``BearerTokenMiddleware``'s business; the login checks the
/// token it is given with the same ``MasterTokens``.
struct DashboardRoutes: Sendable {
    static let pagePath = "/"
    static let snapshotPath = "/v1/dashboard"
    static let loginPath = "/login"
    static let logoutPath = "/logout"
    /// A login form holds a token and a window: far less than this.
    static let maximumLoginBodyBytes = 4096

    let store: ReportStore
    let tokens: MasterTokens
    let throttle: LoginThrottle
    /// When the master started serving (the stale-reports alert needs 6 h of it).
    let upSince: Date
    /// How long a login's whole body may take to arrive.
    let loginDeadline: Duration
    let databaseErrors: RateLimitedLog

    func register(on router: Router<BasicRequestContext>) {
        router.getAndHead(.init(Self.pagePath)) { request, _ in try await page(request) }
        router.getAndHead(.init(Self.snapshotPath)) { request, _ in try await snapshotJSON(request) }
        router.post(.init(Self.loginPath)) { request, _ in try await login(request) }
        router.post(.init(Self.logoutPath)) { _, _ in
            Response(status: .seeOther, headers: [.location: Self.pagePath, .setCookie: DashboardSession.clearCookie, .cacheControl: "no-store"])
        }
    }

    /// The `window` of a dashboard request: the default when absent, nil when it is not
    /// one of the four.
    static func window(in request: Request) -> DashboardWindow? {
        guard let text = request.uri.queryParameters.get("window") else { return .default }
        return DashboardWindow(rawValue: text)
    }

    private func snapshot(_ request: Request) async throws -> DashboardSnapshot {
        guard let window = Self.window(in: request) else { throw HTTPError(.badRequest, message: "\(DashboardWindow.problem)\n") }
        do {
            return try await store.dashboard(window: window, now: Date(), upSince: upSince)
        } catch {
            databaseErrors.error("cannot compute the dashboard; answering 500", error: ReportStore.describe(error))
            throw HTTPError(.internalServerError, message: "the report database cannot be read: \(ReportStore.describe(error))\n")
        }
    }

    private func page(_ request: Request) async throws -> Response {
        let part = request.uri.queryParameters.get("part")
        guard part == nil || part == "main" else { throw HTTPError(.badRequest, message: "part: expected main, or no part for the whole page\n") }
        let snapshot = try await snapshot(request)
        let html = part == nil ? DashboardPage.page(snapshot, canLogOut: tokens.sessions != nil) : DashboardPage.main(snapshot)
        return DashboardPage.response(.ok, html: html)
    }

    private func snapshotJSON(_ request: Request) async throws -> Response {
        let snapshot = try await snapshot(request)
        return Response(
            status: .ok,
            headers: [.contentType: "application/json", .cacheControl: "no-store", .xContentTypeOptions: "nosniff"],
            body: .init(byteBuffer: ByteBuffer(bytes: try snapshot.jsonData()))
        )
    }

    /// Checks the token of the login form: the right one answers 303 to the dashboard
    /// with a session cookie; a wrong one 401 with the login page again. Failed logins
    /// are throttled (``LoginThrottle``): past the allowance, 429 before any comparison.
    private func login(_ request: Request) async throws -> Response {
        let type = request.headers[.contentType]?.lowercased() ?? ""
        guard type.hasPrefix("application/x-www-form-urlencoded") else {
            throw HTTPError(.unsupportedMediaType, message: "a login is an HTML form: Content-Type application/x-www-form-urlencoded\n")
        }
        let limit = Self.maximumLoginBodyBytes
        let body = try await request.collectBody(
            upTo: limit, within: loginDeadline, what: "a login's body",
            tooLarge: HTTPError(.contentTooLarge, message: "a login form is at most \(limit / 1024) KiB\n")
        )
        let form = Self.formFields(String(buffer: body))
        let window = form["window"].flatMap(DashboardWindow.init(rawValue:))
        let location = window.map { "\(Self.pagePath)?window=\($0.rawValue)" } ?? Self.pagePath
        let shown = window ?? .default
        guard let sessions = tokens.sessions else {
            if tokens.open { return Response(status: .seeOther, headers: [.location: location, .cacheControl: "no-store"]) }
            return DashboardPage.loginResponse(
                status: .forbidden, window: shown,
                message: "This cache master has only a report token: give it --token-file to open the dashboard."
            )
        }
        let wait = throttle.retryAfter()
        guard wait == 0 else {
            return DashboardPage.loginResponse(
                status: .tooManyRequests, window: shown, message: "Too many failed logins: try again in \(wait) s.",
                headers: [.retryAfter: "\(wait)"]
            )
        }
        switch tokens.holder(of: (form["token"] ?? "").utf8) {
        case .everything:
            return Response(
                status: .seeOther,
                headers: [.location: location, .setCookie: sessions.setCookie(now: Date()), .cacheControl: "no-store"]
            )
        case .reportsOnly:
            throttle.recordFailure()
            return DashboardPage.loginResponse(
                status: .forbidden, window: shown,
                message: "That token may only send reports: log in with the cache master's token."
            )
        case .refused:
            throttle.recordFailure()
            return DashboardPage.loginResponse(status: .unauthorized, window: shown, message: "That token is not this cache master's.")
        }
    }

    /// The fields of an `application/x-www-form-urlencoded` body (the first of a repeated name).
    static func formFields(_ body: String) -> [String: String] {
        var fields: [String: String] = [:]
        for pair in body.split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            func decode(_ text: Substring) -> String? {
                String(text).replacingOccurrences(of: "+", with: " ").removingPercentEncoding
            }
            guard let name = decode(parts[0]), let value = decode(parts.count > 1 ? parts[1] : "") else { continue }
            if fields[name] == nil { fields[name] = value }
        }
        return fields
    }
}
