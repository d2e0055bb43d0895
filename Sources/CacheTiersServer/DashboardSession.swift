import Crypto
import Foundation
import Synchronization

/// The dashboard's browser session: a cookie a browser gets for the master's token at
/// `POST /login`, so the token never sits in a URL, a bookmark or a log.
///
/// The cookie is `v1.EXPIRY.MAC`: EXPIRY in seconds since 1970, MAC the HMAC-SHA256 of
/// `cachetiers-dashboard-session v1 EXPIRY` keyed by the SHA-256 of the token, base64url.
/// Stateless: nothing is stored, so a session survives a restart of the master, and dies
/// when it expires or when the token changes (the key is the token's hash). The value
/// never holds the token, and cannot be turned into it.
struct DashboardSession: Sendable {
    static let cookieName = "cachetiers_session"
    static let lifetimeSeconds = 43_200
    private static let version = "v1"
    private let key: SymmetricKey

    init(token: String) {
        key = SymmetricKey(data: SHA256.hash(data: Data(token.utf8)))
    }

    /// The `Set-Cookie` value of a new session, valid from `now` for 12 hours.
    func setCookie(now: Date) -> String {
        let expiry = Int(now.timeIntervalSince1970) + Self.lifetimeSeconds
        return "\(Self.cookieName)=\(Self.version).\(expiry).\(mac(expiry)); Path=/; HttpOnly; SameSite=Strict; Max-Age=\(Self.lifetimeSeconds)"
    }

    /// The `Set-Cookie` value that clears the session.
    static let clearCookie = "\(cookieName)=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"

    /// Whether a `Cookie` header holds a session of this token that has not expired.
    func accepts(cookieHeader: String?, now: Date) -> Bool {
        guard let cookieHeader else { return false }
        let values = cookieHeader.split(separator: ";").compactMap { pair -> Substring? in
            let pair = pair.drop { $0 == " " }
            guard pair.hasPrefix("\(Self.cookieName)=") else { return nil }
            return pair.dropFirst(Self.cookieName.count + 1)
        }
        // Any of them (a stale cookie of another path may come first).
        return values.prefix(4).contains { accepts(value: $0, now: now) }
    }

    private func accepts(value: Substring, now: Date) -> Bool {
        let parts = value.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3, parts[0] == Self.version, parts[1].count <= 12, parts[1].allSatisfy(\.isASCII),
            let expiry = Int(parts[1]), expiry > Int(now.timeIntervalSince1970),
            expiry <= Int(now.timeIntervalSince1970) + Self.lifetimeSeconds
        else { return false }
        return constantTimeEquals(Array(parts[2].utf8), Array(mac(expiry).utf8))
    }

    private func mac(_ expiry: Int) -> String {
        let code = HMAC<SHA256>.authenticationCode(for: Data("cachetiers-dashboard-session v1 \(expiry)".utf8), using: key)
        return Data(code).base64EncodedString().replacingOccurrences(of: "+", with: "-")
            .replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
    }
}

/// Slows guessing at `POST /login`: failed logins spend from a bucket of
/// ``capacity`` that refills one every ``refillSeconds``; an empty bucket answers 429
/// before any token is compared. For the whole master, not per client address, so a
/// guesser cannot spread over addresses: ten guesses, then one every six seconds (14,400
/// a day, against a token of 32 random characters). The price is that a guesser can keep
/// a person from logging in by browser for as long as it guesses; `Authorization:
/// Bearer` is never throttled.
final class LoginThrottle: Sendable {
    static let capacity = 10.0
    static let refillSeconds = 6.0

    private struct State {
        var available = LoginThrottle.capacity
        var updated: ContinuousClock.Instant
    }
    private let state: Mutex<State>
    private let now: @Sendable () -> ContinuousClock.Instant

    /// - Parameter now: the clock (a test's own, to step it).
    init(now: @escaping @Sendable () -> ContinuousClock.Instant = { ContinuousClock.now }) {
        self.now = now
        self.state = Mutex(State(updated: now()))
    }

    /// Seconds until a failed login may be tried again; 0 when one may be tried now.
    func retryAfter() -> Int {
        state.withLock { state in
            refill(&state)
            return state.available >= 1 ? 0 : Int((Self.refillSeconds * (1 - state.available)).rounded(.up))
        }
    }

    func recordFailure() {
        state.withLock { state in
            refill(&state)
            state.available = max(0, state.available - 1)
        }
    }

    private func refill(_ state: inout State) {
        let now = now()
        let elapsed = now - state.updated
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        state.available = min(Self.capacity, state.available + seconds / Self.refillSeconds)
        state.updated = now
    }
}
