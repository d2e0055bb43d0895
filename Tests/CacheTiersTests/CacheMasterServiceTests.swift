import CacheTiers
import CacheTiersServer
import CacheTiersTesting
import Foundation
import Logging
import ServiceLifecycle
import Synchronization
import SystemPackage
import Testing

/// The cache master as a host application runs it: one service in its own ServiceGroup.
@Suite struct CacheMasterServiceTests {
    /// A service of the host application: runs until the group's graceful shutdown.
    final class Worker: Service {
        let stoppedGracefully = Atomic<Bool>(false)

        func run() async throws {
            try? await gracefulShutdown()
            stoppedGracefully.store(true, ordering: .relaxed)
        }
    }

    // The limit only turns a hang into a failure: on a busy machine the suite's other tests can
    // hold the cooperative pool for tens of seconds before this one runs.
    @Test(.timeLimit(.minutes(5))) func runsInAHostServiceGroupAndClosesItsPortOnGracefulShutdown() async throws {
        let scratch = try TemporaryDirectory(prefix: "service")
        defer { scratch.remove() }
        let (urls, announce) = AsyncStream.makeStream(of: String.self)
        let server = CacheMasterServer(
            configuration: .init(root: scratch.path.appending("root"), port: 0),
            logger: PeerHarness.quietLogger,
            onServerRunning: { announce.yield($0) }
        )
        let worker = Worker()
        let group = ServiceGroup(
            configuration: .init(services: [worker, server], gracefulShutdownSignals: [], logger: PeerHarness.quietLogger)
        )
        let running = Task { try await group.run() }

        var url: String?
        for await announced in urls {
            url = announced
            break
        }
        let base = try #require(url)
        let port = try #require(Int(base.split(separator: ":").last ?? ""))
        do {
            let connection = try RawConnection(port: port)
            connection.send("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            let answer = try await Fixtures.offThePool { connection.read(within: 60) }
            guard case .data(let text) = answer else {
                Issue.record("the server did not answer while the group ran: \(answer)")
                return
            }
            #expect(text.hasPrefix("HTTP/1.1 200 OK"), "the server answers while the group runs: \(text)")
        }

        await group.triggerGracefulShutdown()
        try await running.value
        let workerStopped = worker.stoppedGracefully.load(ordering: .relaxed)
        #expect(workerStopped, "the other service shut down gracefully too")
        let refused = #expect(throws: FixtureError.self, "the port is closed once run() returned") { try RawConnection(port: port) }
        #expect(refused?.description.contains("Connection refused") == true, "\(String(describing: refused))")
    }
}
