import Hummingbird
import Logging

/// A Hummingbird server on 127.0.0.1 (port 0) playing a Google endpoint (a token
/// URI, the metadata server, a GCS that refuses tokens) for one test.
enum FakeHTTPServer {
    /// Serves `router` while `body` runs, then stops the server.
    static func with<T: Sendable>(
        _ router: Router<BasicRequestContext>,
        _ body: (_ url: String) async throws -> T
    ) async throws -> T {
        let (ports, continuation) = AsyncStream.makeStream(of: Int.self)
        var logger = Logger(label: "fake-server")
        logger.logLevel = .critical
        let application = Application(
            router: router,
            configuration: .init(address: .hostname("127.0.0.1", port: 0)),
            onServerRunning: { channel in continuation.yield(channel.localAddress?.port ?? 0) },
            logger: logger
        )
        let server = Task { try await application.run() }
        defer { server.cancel() }
        var iterator = ports.makeAsyncIterator()
        guard let port = await iterator.next() else { throw FixtureError("the fake server did not start") }
        return try await body("http://127.0.0.1:\(port)")
    }
}
