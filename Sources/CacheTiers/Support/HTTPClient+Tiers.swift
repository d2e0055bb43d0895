import AsyncHTTPClient

extension HTTPClient {
    /// The client a download tier owns: a connect timeout of its own (the chain times
    /// the transfer), enough connections a host that concurrent restores never queue,
    /// no redirects, no transparent decompression (the bytes are the archive), and no
    /// retrying a refused connection (a peer that is down should fail now, so the
    /// chain can move on).
    static func forTier(connectTimeout: Duration, connectionsPerHost: Int) -> HTTPClient {
        let milliseconds = Int64((connectTimeout.inSeconds * 1000).rounded())
        var configuration = HTTPClient.Configuration()
        configuration.timeout = .init(connect: .milliseconds(max(1, milliseconds)))
        configuration.connectionPool = .init(
            idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: connectionsPerHost
        )
        configuration.connectionPool.retryConnectionEstablishment = false
        configuration.redirectConfiguration = .disallow
        configuration.decompression = .disabled
        return HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: configuration)
    }
}
