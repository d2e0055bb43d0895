import Logging

/// Supplies OAuth 2 access tokens for Google Cloud Storage requests.
///
/// ``GCSSource`` asks for a token before each request and calls ``invalidate(_:)``
/// when the server answers 401, then asks once more; a second 401 is reported as
/// unauthorized. Implementations cache tokens and share one refresh among
/// concurrent callers.
public protocol AccessTokenProvider: Sendable {
    /// The token to send as `Authorization: Bearer`, or nil to send none (an emulator).
    func token(logger: Logger) async throws -> String?

    /// The server refused `token`: the next ``token(logger:)`` must not return it.
    func invalidate(_ token: String) async
}

/// An OAuth 2 access token and when it stops working.
public struct AccessToken: Sendable, Hashable {
    public var value: String
    /// When the token expires, on the continuous clock.
    public var expiresAt: ContinuousClock.Instant

    public init(value: String, expiresAt: ContinuousClock.Instant) {
        self.value = value
        self.expiresAt = expiresAt
    }
}

/// No credentials: for the emulator and public buckets.
public struct NoAccessToken: AccessTokenProvider {
    public init() {}
    public func token(logger: Logger) async throws -> String? { nil }
    public func invalidate(_ token: String) async {}
}

/// One token given up front (from a file an operator rotates, say). It is never
/// refreshed: a 401 with it is unauthorized.
public struct StaticAccessToken: AccessTokenProvider {
    public let value: String

    public init(_ value: String) {
        self.value = value
    }

    public func token(logger: Logger) async throws -> String? { value }
    public func invalidate(_ token: String) async {}
}

/// Caches the token a fetch function returns, refreshes it `refreshMargin` before it
/// expires, and makes concurrent callers share one fetch.
///
/// The default margin, 3 min 45 s, is what Google's own client libraries use: the
/// metadata server keeps handing out a token until a few minutes before it expires.
public actor CachingAccessTokenProvider: AccessTokenProvider {
    public typealias Fetch = @Sendable (Logger) async throws -> AccessToken

    private let fetch: Fetch
    private let refreshMargin: Duration
    private var cached: AccessToken?
    private var inFlight: Task<AccessToken, any Error>?
    /// How many times the fetch function ran; for tests and the log.
    public private(set) var fetches = 0

    public init(refreshMargin: Duration = .seconds(225), fetch: @escaping Fetch) {
        self.refreshMargin = refreshMargin
        self.fetch = fetch
    }

    public func token(logger: Logger) async throws -> String? {
        if let cached, ContinuousClock.now < cached.expiresAt - refreshMargin {
            return cached.value
        }
        if let inFlight {
            return try await inFlight.value.value
        }
        fetches += 1
        let task = Task { [fetch] in try await fetch(logger) }
        inFlight = task
        defer { inFlight = nil }
        let token = try await task.value
        cached = token
        return token.value
    }

    public func invalidate(_ token: String) {
        if cached?.value == token { cached = nil }
    }
}
