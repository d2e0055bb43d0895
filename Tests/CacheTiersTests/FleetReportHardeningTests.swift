import CacheTiers
import CacheTiersServer
import CacheTiersTesting
import Foundation
import Logging
import Synchronization
import SystemPackage
import Testing

/// The cache master's report routes against hostile VMs and a failing database: a body
/// dripped byte by byte, thousands of tier names, names that take over the label slots,
/// a disk that cannot prune, a database that stops committing.
@Suite struct FleetReportHardeningTests {
    let routes = FleetReportRouteTests()

    @Test func aReportBodyDrippedPastTheDeadlineIsAnswered408AndClosed() async throws {
        let scratch = try TemporaryDirectory(prefix: "drip")
        defer { scratch.remove() }
        let server = CacheMasterServer(
            configuration: .init(root: scratch.path.appending("root"), port: 0, reportBodyDeadline: .seconds(1)),
            logger: PeerHarness.quietLogger
        )
        let url = try await server.start()
        let port = Int(url.split(separator: ":").last!)!
        let connection = try RawConnection(port: port)
        connection.send("POST /v1/reports HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n")
        // One byte every 200 ms, never silent long enough for the idle timeout: the whole
        // body would take 20 s, and without a deadline it ends in a 400 (not JSON).
        let answer = try await Fixtures.offThePool { () -> (text: String, closed: Bool) in
            for _ in 0..<100 {
                if case .data(let text) = connection.read(within: 0.2) {
                    let rest = connection.readUntilClosed(idleSeconds: 10)
                    return (text + rest.text, rest.closed)
                }
                connection.send(" ")
            }
            return connection.readUntilClosed(idleSeconds: 10)
        }
        await server.stop()
        #expect(answer.text.hasPrefix("HTTP/1.1 408"), "\(answer.text)")
        #expect(answer.text.hasSuffix("a report's body must arrive within 1 s\n"), "\(answer.text)")
        #expect(answer.closed, "the connection is closed after the 408")
    }

    @Test func byTierIsTheTwentyBusiestTiersAndOneOtherRow() async throws {
        try await PeerHarness.with { peer in
            for _ in 0..<3 {
                #expect(try await routes.post(peer, FleetReport().body).status == 201)
            }
            for index in 0..<25 {
                let name = String(format: "tier-%02d", index)
                #expect(try await routes.post(peer, FleetReport(servedBy: name, attempts: [(name, "hit")]).body).status == 201)
            }
            let stats = try await routes.stats(peer)
            #expect(stats.byTier.count == 21, "\(stats.byTier.map(\.tier))")
            #expect(stats.byTier.first?.tier == "cache-master" && stats.byTier.first?.restores == 3)
            #expect(stats.byTier.dropFirst().prefix(19).map(\.tier) == (0..<19).map { String(format: "tier-%02d", $0) })
            let other = try #require(stats.byTier.last)
            #expect(other.tier == "other" && other.restores == 6 && other.bytes == 6000, "\(other)")
            #expect(other.p50 == nil && other.p90 == nil && other.p99 == nil)
            #expect(abs(other.share - 6.0 / 28.0) < 1e-9)
            #expect(stats.byTier.map(\.restores).reduce(0, +) == stats.restored, "every restore is in one row")
        }
    }

    @Test func aPruneThatFailsAtStartIsAWarningAndTheMasterServes() async throws {
        let scratch = try TemporaryDirectory(prefix: "prune-fails")
        defer { scratch.remove() }
        let root = scratch.path.appending("root")
        func server(_ logger: Logger) -> CacheMasterServer {
            CacheMasterServer(configuration: .init(root: root, port: 0, reportRetention: .seconds(86_400)), logger: logger)
        }
        let first = server(PeerHarness.quietLogger)
        let peer = PeerHarness(scratch: scratch, server: first, url: try await first.start())
        #expect(try await routes.post(peer, FleetReport(finishedAt: Date().addingTimeInterval(-2 * 86_400)).body).status == 201)
        await first.stop()
        // Every delete fails, as on a full disk.
        try sqlite(
            root.appending(".cachetiers/reports.sqlite"),
            "CREATE TRIGGER full BEFORE DELETE ON report BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END;"
        )

        let log = RecordingLog()
        let second = server(log.logger)
        let restarted = PeerHarness(scratch: scratch, server: second, url: try await second.start())
        let stats = try await routes.stats(restarted, window: "90d")
        await second.stop()
        #expect(stats.restores == 1, "the report the prune could not delete is still there")
        let warnings = log.entries.filter { $0.level == .warning }
        #expect(warnings.count == 1 && warnings[0].message.contains("cannot prune"), "\(log.entries)")
        #expect(warnings.first?.metadata.contains("database or disk is full") == true, "\(warnings)")
    }

    @Test func aDatabaseThatCannotBeCreatedDoesNotSayMoveItAside() async throws {
        let path = FilePath("/proc/cachetiers-\(UUID().uuidString).sqlite")
        let scratch = try TemporaryDirectory(prefix: "uncreatable")
        defer { scratch.remove() }
        let server = CacheMasterServer(
            configuration: .init(root: scratch.path.appending("root"), port: 0, reportsDatabase: path), logger: PeerHarness.quietLogger
        )
        let text = try #require(await routes.startFailure(server), "a cache master started with a report database under /proc")
        #expect(text.hasPrefix("the report database \(path) cannot be created: "), "\(text)")
        #expect(text.hasSuffix("make its folder writable, or give another --reports-db"), "\(text)")
        #expect(!text.contains("move it aside"), "\(text)")
    }

    @Test func aDatabaseThatStopsCommittingIsLoggedOnceAndThenCounted() async throws {
        let scratch = try TemporaryDirectory(prefix: "commit-fails")
        defer { scratch.remove() }
        let root = scratch.path.appending("root")
        let first = CacheMasterServer(configuration: .init(root: root, port: 0), logger: PeerHarness.quietLogger)
        _ = try await first.start()
        await first.stop()
        try sqlite(
            root.appending(".cachetiers/reports.sqlite"),
            "CREATE TRIGGER full BEFORE INSERT ON report BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END;"
        )
        let log = RecordingLog()
        let server = CacheMasterServer(configuration: .init(root: root, port: 0), logger: log.logger)
        let peer = PeerHarness(scratch: scratch, server: server, url: try await server.start())
        var statuses: [Int] = []
        for _ in 0..<3 { statuses.append(try await routes.post(peer, FleetReport().body).status) }
        await server.stop()
        #expect(statuses == [503, 503, 503])
        let errors = log.entries.filter { $0.level == .error }
        #expect(errors.count == 1, "the first failure is logged, the next ones within 10 s are counted: \(log.entries)")
        #expect(errors.first?.message == "cannot store a report; answering 503", "\(errors)")
        #expect(errors.first?.metadata.contains("database or disk is full") == true, "\(errors)")
    }

    @Test func storedAndDuplicateAnswersCarryTheReportID() async throws {
        try await PeerHarness.with { peer in
            let report = FleetReport(id: UUID().uuidString.uppercased())
            for expected in [201, 200] {
                let answer = try await peer.send(.POST, "/v1/reports", headers: [("Content-Type", "application/json")], body: report.body)
                #expect(answer.status == expected)
                #expect(answer.headers["X-CacheTiers-Report-Id"] == [report.id.lowercased()], "\(answer.headers)")
            }
            let refused = try await peer.send(.POST, "/v1/reports", body: Array("{}".utf8))
            #expect(refused.status == 400 && refused.headers["X-CacheTiers-Report-Id"].isEmpty)
        }
    }

    private func sqlite(_ database: FilePath, _ sql: String) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/sqlite3")
        process.arguments = [database.string, sql]
        try process.run()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { throw FixtureError("sqlite3 \(sql) exited \(process.terminationStatus)") }
    }
}

/// Collects what a logger logs (info and above), for tests that assert what an operator
/// would read.
final class RecordingLog: Sendable {
    struct Entry: Sendable, CustomStringConvertible {
        var level: Logger.Level
        var message: String
        var metadata: String
        var description: String { "\(level) \(message) \(metadata)" }
    }

    private let recorded = Mutex<[Entry]>([])

    var entries: [Entry] { recorded.withLock { $0 } }

    var logger: Logger {
        Logger(label: "test") { _ in Handler(log: self) }
    }

    private struct Handler: LogHandler {
        let log: RecordingLog
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .info

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }

        func log(
            level: Logger.Level, message: Logger.Message, metadata: Logger.Metadata?, source: String, file: String,
            function: String, line: UInt
        ) {
            let entry = Entry(
                level: level, message: message.description,
                metadata: (metadata ?? [:]).map { "\($0)=\($1)" }.sorted().joined(separator: " ")
            )
            log.recorded.withLock { $0.append(entry) }
        }
    }
}
