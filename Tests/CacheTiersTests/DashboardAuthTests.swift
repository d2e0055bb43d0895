import Foundation
import Synchronization
import Testing

@testable import CacheTiersServer

/// Who may open the dashboard on a master with a token: curl with the bearer token, a
/// browser through the login form and its session cookie, which opens the reads and
/// nothing that writes; nobody through a token in a URL.
@Suite struct DashboardAuthTests {
    static let token = "dashboard-t0ken-\(UUID().uuidString)"
    static let reportToken = "report-only-t0ken"

    func withMaster(_ body: (PeerHarness) async throws -> Void) async throws {
        try await PeerHarness.with(token: Self.token, reportToken: Self.reportToken) { peer in try await body(peer) }
    }

    /// The `cachetiers_session=…` pair of a 303's Set-Cookie, for a Cookie header.
    func sessionCookie(_ answer: DashboardClient.Answer) throws -> String {
        let header = try #require(answer.headers["Set-Cookie"].first)
        return String(header.prefix { $0 != ";" })
    }

    @Test func withoutCredentialsThePageIsTheLoginFormAndTheAPIOneLine() async throws {
        try await withMaster { (peer: PeerHarness) async throws in
            let page = try await DashboardClient.send(peer, .GET, "/?window=7d")
            #expect(page.status == 401)
            #expect(page.headers["Content-Type"] == ["text/html; charset=utf-8"])
            #expect(page.headers["Cache-Control"] == ["no-store"])
            #expect(page.headers["Content-Security-Policy"].first?.contains("frame-ancestors 'none'") == true)
            #expect(page.text.contains(#"<form id="login" method="post" action="/login">"#))
            #expect(page.text.contains(#"<input type="password" name="token" id="token""#))
            #expect(page.text.contains(#"<input type="hidden" name="window" value="7d">"#))
            #expect(page.text.contains(#"<button type="submit">"#))
            #expect(!page.text.contains("data-metric"), "no number before a login")

            let api = try await DashboardClient.send(peer, .GET, "/v1/dashboard")
            #expect(api.status == 401 && api.text == "this cache master needs Authorization: Bearer <token>\n")
        }
    }

    @Test func theBearerTokenOpensEverythingAndAWrongOneNothing() async throws {
        try await withMaster { (peer: PeerHarness) async throws in
            let right = [("Authorization", "Bearer \(Self.token)")]
            #expect(try await DashboardClient.send(peer, .GET, "/", headers: right).status == 200)
            #expect(try await DashboardClient.send(peer, .GET, "/v1/dashboard?window=30d", headers: right).status == 200)
            #expect(try await DashboardClient.send(peer, .GET, "/?part=main", headers: right).status == 200)
            let wrong = [("Authorization", "Bearer \(Self.token)x")]
            #expect(try await DashboardClient.send(peer, .GET, "/", headers: wrong).status == 401)
            #expect(try await DashboardClient.send(peer, .GET, "/v1/dashboard", headers: wrong).text == "the bearer token was refused\n")
            let reporter = [("Authorization", "Bearer \(Self.reportToken)")]
            #expect(try await DashboardClient.send(peer, .GET, "/", headers: reporter).status == 403)
        }
    }

    @Test func aTokenInTheURLIsIgnored() async throws {
        try await withMaster { (peer: PeerHarness) async throws in
            for path in ["/?token=\(Self.token)", "/v1/dashboard?token=\(Self.token)", "/?access_token=\(Self.token)"] {
                #expect(try await DashboardClient.send(peer, .GET, path).status == 401, "\(path)")
            }
        }
    }

    @Test func theRightTokenLogsInWithAnHttpOnlyStrictCookieThatOpensTheReadsOnly() async throws {
        try await withMaster { (peer: PeerHarness) async throws in
            let login = try await DashboardClient.login(peer, token: Self.token, window: "7d")
            #expect(login.status == 303)
            #expect(login.headers["Location"] == ["/?window=7d"])
            let setCookie = try #require(login.headers["Set-Cookie"].first)
            #expect(setCookie.hasPrefix("cachetiers_session=v1."))
            for attribute in ["; Path=/", "; HttpOnly", "; SameSite=Strict", "; Max-Age=43200"] {
                #expect(setCookie.contains(attribute), "\(setCookie)")
            }
            #expect(!setCookie.contains(Self.token), "the cookie is not the token")
            let cookie = [("Cookie", try sessionCookie(login))]

            let page = try await DashboardClient.send(peer, .GET, "/?window=7d", headers: cookie)
            #expect(page.status == 200 && page.text.contains(#"<main id="dashboard" data-window="604800""#))
            #expect(page.text.contains(#"action="/logout""#), "a logged-in page offers to log out")
            #expect(try await DashboardClient.send(peer, .GET, "/v1/dashboard", headers: cookie).status == 200)
            #expect(try await DashboardClient.send(peer, .GET, "/v1/stats", headers: cookie).status == 200)
            #expect(try await DashboardClient.send(peer, .GET, "/?part=main", headers: cookie).status == 200)
            #expect(try await DashboardClient.send(peer, .DELETE, "/v1/caches/node-modules-aaa", headers: cookie).status == 401)

            // Nothing that writes, nor the other reads.
            let put = try await DashboardClient.send(
                peer, .PUT, "/v1/caches/node-modules-aaa", headers: cookie + [("Content-Type", "application/octet-stream")], body: Array("x".utf8)
            )
            #expect(put.status == 401, "\(put.text)")
            let report = try await DashboardClient.send(
                peer, .POST, "/v1/reports", headers: cookie + [("Content-Type", "application/json")], body: FleetReport().body
            )
            #expect(report.status == 401)
            #expect(try await DashboardClient.send(peer, .GET, "/metrics", headers: cookie).status == 401)
            #expect(try await DashboardClient.send(peer, .GET, "/v1/caches/node-modules-aaa/manifest", headers: cookie).status == 401)

            let logout = try await DashboardClient.send(peer, .POST, "/logout", headers: cookie)
            #expect(logout.status == 303 && logout.headers["Location"] == ["/"])
            #expect(logout.headers["Set-Cookie"].first?.contains("Max-Age=0") == true)
        }
    }

    @Test func aLoginWithoutAWindowGoesToTheDefaultOneAndABadWindowIsDropped() async throws {
        try await withMaster { (peer: PeerHarness) async throws in
            #expect(try await DashboardClient.login(peer, token: Self.token).headers["Location"] == ["/"])
            #expect(try await DashboardClient.login(peer, token: Self.token, window: "%2F%2Fevil.example").headers["Location"] == ["/"])
        }
    }

    @Test func aForgedExpiredOrOtherTokensCookieIsRefused() async throws {
        try await withMaster { (peer: PeerHarness) async throws in
            let now = Date()
            let expiry = Int(now.timeIntervalSince1970) + 3600
            func pair(_ setCookie: String) -> String { String(setCookie.prefix { $0 != ";" }) }
            let cookies = [
                "cachetiers_session=v1.\(expiry).AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                "cachetiers_session=\(Self.token)",
                pair(DashboardSession(token: Self.token).setCookie(now: now.addingTimeInterval(-43_300))),
                pair(DashboardSession(token: "another master's token").setCookie(now: now)),
                pair(DashboardSession(token: Self.reportToken).setCookie(now: now)),
                "cachetiers_session=v1.99999999999.AAAA",
                "cachetiers_session=",
            ]
            for cookie in cookies {
                let page = try await DashboardClient.send(peer, .GET, "/", headers: [("Cookie", cookie)])
                #expect(page.status == 401 && page.text.contains(#"<form id="login""#), "\(cookie)")
                #expect(try await DashboardClient.send(peer, .GET, "/v1/dashboard", headers: [("Cookie", cookie)]).status == 401, "\(cookie)")
            }
            // The same construction with the master's own token and a live expiry works:
            // the refusals above are the forgery, the expiry and the key.
            let genuine = pair(DashboardSession(token: Self.token).setCookie(now: now))
            #expect(try await DashboardClient.send(peer, .GET, "/", headers: [("Cookie", genuine)]).status == 200)
        }
    }

    @Test func aWrongTokenIsTheLoginPageAgainAndTheReportTokenCannotLogIn() async throws {
        try await withMaster { (peer: PeerHarness) async throws in
            let wrong = try await DashboardClient.login(peer, token: "guess", window: "1h")
            #expect(wrong.status == 401)
            #expect(wrong.headers["Set-Cookie"].isEmpty)
            #expect(wrong.text.contains("That token is not this cache master&#39;s."))
            #expect(wrong.text.contains(#"<form id="login""#) && wrong.text.contains(#"name="window" value="1h""#))

            let reporter = try await DashboardClient.login(peer, token: Self.reportToken)
            #expect(reporter.status == 403 && reporter.headers["Set-Cookie"].isEmpty)
            #expect(reporter.text.contains("That token may only send reports"))
        }
    }

    @Test func aLoginBodyIsBoundedAndFormEncoded() async throws {
        try await withMaster { (peer: PeerHarness) async throws in
            let huge = try await DashboardClient.send(
                peer, .POST, "/login", headers: [("Content-Type", "application/x-www-form-urlencoded")],
                body: Array(("token=" + String(repeating: "a", count: 1 << 20)).utf8)
            )
            #expect(huge.status == 413 && huge.text == "a login form is at most 4 KiB\n")

            // A 1 GiB body declared and never sent: the answer comes at once, from the header.
            let connection = try RawConnection(port: peer.port)
            connection.send(
                "POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 1073741824\r\n\r\ntoken="
            )
            let answer = try await Fixtures.offThePool { connection.read(within: 60) }
            guard case .data(let text) = answer else { Issue.record("no answer to a 1 GiB login: \(answer)"); return }
            #expect(text.hasPrefix("HTTP/1.1 413"), "\(text)")
            let json = try await DashboardClient.send(
                peer, .POST, "/login", headers: [("Content-Type", "application/json")], body: Array(#"{"token":"x"}"#.utf8)
            )
            #expect(json.status == 415)
        }
    }

    @Test func failedLoginsAreThrottledBeforeAnyTokenIsCompared() async throws {
        try await withMaster { (peer: PeerHarness) async throws in
            // Guess until the master throttles (10 at once; more when the machine is slow
            // enough for the bucket to refill meanwhile), then try the right token at once.
            var refusedTheRightToken = false
            for attempt in 0..<60 where !refusedTheRightToken {
                let guess = try await DashboardClient.login(peer, token: "guess-\(attempt)")
                guard guess.status == 429 else {
                    #expect(guess.status == 401)
                    continue
                }
                #expect(attempt >= Int(LoginThrottle.capacity), "\(attempt) guesses were allowed")
                #expect(guess.headers["Retry-After"].first.flatMap(Int.init).map { $0 > 0 && $0 <= 6 } == true)
                #expect(guess.text.contains("Too many failed logins: try again in "))
                let right = try await DashboardClient.login(peer, token: Self.token)
                refusedTheRightToken = right.status == 429
            }
            #expect(refusedTheRightToken, "while throttled even the right token waits: the guesses cannot tell it")
            // The bearer token is never throttled.
            #expect(try await DashboardClient.send(peer, .GET, "/", headers: [("Authorization", "Bearer \(Self.token)")]).status == 200)
        }
    }

    @Test func theThrottleAllowsTenFailuresThenOneEverySixSeconds() {
        let clock = Mutex(ContinuousClock.now)
        let throttle = LoginThrottle { clock.withLock { $0 } }
        for _ in 0..<10 {
            #expect(throttle.retryAfter() == 0)
            throttle.recordFailure()
        }
        #expect(throttle.retryAfter() == 6)
        clock.withLock { $0 += .seconds(3) }
        #expect(throttle.retryAfter() == 3)
        clock.withLock { $0 += .seconds(3) }
        #expect(throttle.retryAfter() == 0)
        throttle.recordFailure()
        #expect(throttle.retryAfter() == 6, "one more, then wait again")
        clock.withLock { $0 += .seconds(3600) }
        for _ in 0..<10 { throttle.recordFailure() }
        #expect(throttle.retryAfter() == 6, "an idle hour refills to 10, not more")
    }

    @Test func withoutATokenTheDashboardIsOpen() async throws {
        try await PeerHarness.with { peer in
            #expect(try await DashboardClient.send(peer, .GET, "/").status == 200)
            let page = try await DashboardClient.send(peer, .GET, "/").text
            #expect(!page.contains(#"action="/logout""#))
            #expect(try await DashboardClient.login(peer, token: "anything").status == 303)
        }
    }
}
