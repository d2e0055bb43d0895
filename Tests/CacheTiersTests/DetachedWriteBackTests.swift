import CacheTiers
import CacheTiersTesting
import Foundation
import SystemPackage
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// `writeBack.detach`: `cachetiers restore` exits once the tree is promoted and the report
/// written; the write-back finishes in a detached `cachetiers write-back` with its own log,
/// bounded in time, and leaves nothing behind if it dies.
@Suite(.serialized) struct DetachedWriteBackTests {
    typealias Project = CommandLineEndToEndTests.Project

    /// A project whose cache master (through `proxy`) is above a directory tier holding
    /// the key, so every restore is served by the directory and writes back to the master.
    static func project(
        in scratch: FilePath, peerURL: String, log: FilePath, timeoutSeconds: Int, stallSeconds: Int, peerTimeoutSeconds: Int = 3
    ) async throws -> (Project, CacheKey) {
        let local = scratch.appending("local")
        let peer: [String: Any] = [
            "kind": "peer", "name": "cache-master", "urls": [peerURL], "connectTimeoutSeconds": 2, "maxAttempts": 1,
            // The restore's own attempt on the master gives up this soon (a black hole), then the directory serves.
            "timeoutSeconds": peerTimeoutSeconds,
        ]
        let project = try Project(
            in: scratch, tiers: [peer, ["kind": "directory", "name": "local", "path": local.string]],
            writeBack: [
                "enabled": true, "detach": true, "logFile": log.string, "timeoutSeconds": timeoutSeconds, "stallSeconds": stallSeconds,
            ]
        )
        let key = try await project.key()
        let tree = try await Fixtures.makeCorpus(in: scratch.appending("corpus"), files: 200, seed: 16)
        let archive = scratch.appending("seed.tar.zst")
        let manifest = try await ArchivePacker().pack(tree, key: key, to: archive, logger: PeerHarness.quietLogger)
        _ = try await DirectorySource(root: local).publish(PackedArchive(file: archive, manifest: manifest), logger: PeerHarness.quietLogger)
        return (project, key)
    }

    /// The pid the detached write-back logged in its first line.
    static func writeBackProcess(in log: FilePath) async throws -> pid_t {
        for _ in 0..<200 {
            if let text = try? String(contentsOfFile: log.string, encoding: .utf8),
                let range = text.range(of: #"\(pid (\d+)\)"#, options: .regularExpression)
            {
                return pid_t(text[range].dropFirst(5).dropLast())!
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw FixtureError("the detached write-back logged no pid in \(log)")
    }

    /// Waits until `pid` has exited (it is not the test's child: the restore was its parent).
    static func waitForExit(_ pid: pid_t, seconds: Int) async throws {
        for _ in 0..<(seconds * 10) {
            if kill(pid, 0) != 0 && errno == ESRCH { return }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw FixtureError("the detached write-back (pid \(pid)) is still running after \(seconds) s")
    }

    static func leftovers(beside project: Project) throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: project.folder.string).filter { $0.hasPrefix(".node_modules.") }
    }

    @Test func theRestoreExitsFirstAndTheDetachedProcessPublishesToTheMaster() async throws {
        try await PeerHarness.with { peer in
            // Every answer of the master takes 6 s: the write-back cannot be done when the restore exits.
            let proxy = try FaultInjectingProxy(upstreamPort: peer.port, fault: .delayFirstByte(.seconds(6)))
            defer { proxy.stop() }
            let log = peer.scratch.path.appending("logs/write-back.log")
            let (project, key) = try await Self.project(
                in: peer.scratch.path, peerURL: proxy.url, log: log, timeoutSeconds: 120, stallSeconds: 30, peerTimeoutSeconds: 20
            )
            let master = DirectorySource(root: peer.scratch.path.appending("root"))

            let (status, report, stderr) = try await project.restore()
            #expect(status == 0, "\(stderr)")
            #expect(report?.servedBy == "local")
            #expect(report?.writeBack == [WriteBackRecord(tier: "cache-master", outcome: .detached)])
            #expect(!(try await master.contains(key, logger: PeerHarness.quietLogger)), "the restore waited for the write-back")
            let restored = try FileManager.default.contentsOfDirectory(atPath: project.destination.string)
            #expect(!restored.isEmpty, "the tree is in place when the restore exits")

            let pid = try await Self.writeBackProcess(in: log)
            try await Self.waitForExit(pid, seconds: 120)
            #expect(try await master.contains(key, logger: PeerHarness.quietLogger))
            let text = try String(contentsOfFile: log.string, encoding: .utf8)
            #expect(text.contains("write-back to cache-master: published"), "\(text)")
            #expect(text.contains("write-back of \(key) finished\n"), "\(text)")
            #expect(try Self.leftovers(beside: project) == [])
        }
    }

    @Test func aBlackHoledTierEndsTheDetachedWriteBackByItsBound() async throws {
        try await PeerHarness.with { peer in
            let proxy = try FaultInjectingProxy(upstreamPort: peer.port, fault: .delayFirstByte(.seconds(3600)))
            defer { proxy.stop() }
            let log = peer.scratch.path.appending("write-back.log")
            let (project, key) = try await Self.project(
                in: peer.scratch.path, peerURL: proxy.url, log: log, timeoutSeconds: 4, stallSeconds: 2
            )
            let (status, report, stderr) = try await project.restore()
            #expect(status == 0, "\(stderr)")
            #expect(report?.writeBack.map(\.outcome) == [.detached])

            let pid = try await Self.writeBackProcess(in: log)
            try await Self.waitForExit(pid, seconds: 60)
            let text = try String(contentsOfFile: log.string, encoding: .utf8)
            #expect(text.contains("write-back to cache-master: failed: gave up"), "\(text)")
            #expect(text.contains("failed for cache-master"), "\(text)")
            #expect(try Self.leftovers(beside: project) == [])
            #expect(!(try await DirectorySource(root: peer.scratch.path.appending("root")).contains(key, logger: PeerHarness.quietLogger)))
        }
    }

    @Test func aKilledDetachedWriteBackLeavesNothingTheNextRestoreDoesNotClear() async throws {
        try await PeerHarness.with { peer in
            let proxy = try FaultInjectingProxy(upstreamPort: peer.port, fault: .delayFirstByte(.seconds(3600)))
            defer { proxy.stop() }
            let log = peer.scratch.path.appending("write-back.log")
            let (project, _) = try await Self.project(
                in: peer.scratch.path, peerURL: proxy.url, log: log, timeoutSeconds: 300, stallSeconds: 240
            )
            #expect(try await project.restore().status == 0)
            let first = try await Self.writeBackProcess(in: log)
            // Its scratch folder beside the destination is there while it asks the master.
            #expect(try Self.leftovers(beside: project).contains { $0.contains("writeback-\(first)@") })
            kill(first, SIGKILL)
            try await Self.waitForExit(first, seconds: 30)
            try FileManager.default.removeItem(atPath: log.string)

            #expect(try await project.restore().status == 0)
            let second = try await Self.writeBackProcess(in: log)
            defer { kill(second, SIGKILL) }
            #expect(!(try Self.leftovers(beside: project).contains { $0.contains("-\(first)@") }), "the killed write-back's scratch folder stayed")
        }
    }

    @Test func aLogInsideTheDestinationIsRefusedBeforeAnyTierRuns() async throws {
        let scratch = try TemporaryDirectory(prefix: "detach")
        defer { scratch.remove() }
        let project = try Project(
            in: scratch.path, tiers: [["kind": "directory", "name": "local", "path": scratch.path.appending("local").string]],
            writeBack: ["detach": true, "logFile": "node_modules/write-back.log"]
        )
        let result = try await Fixtures.cli(["restore", "--config", project.config.string])
        #expect(result.status == 2)
        #expect(result.stderr.contains("writeBack.logFile \(project.destination.appending("write-back.log")) is inside the destination"), "\(result.stderr)")
    }

    enum HostileLog: String, CaseIterable, Sendable {
        case fifo, symlink, folder
    }

    @Test(arguments: HostileLog.allCases)
    func aLogThatIsNotARegularFileIsRefusedBeforeAnyTierRuns(_ kind: HostileLog) async throws {
        let scratch = try TemporaryDirectory(prefix: "detach-log")
        defer { scratch.remove() }
        let log = scratch.path.appending("write-back.log")
        switch kind {
        case .fifo: #expect(mkfifo(log.string, 0o600) == 0)
        case .symlink: try FileManager.default.createSymbolicLink(atPath: log.string, withDestinationPath: scratch.path.appending("elsewhere.log").string)
        case .folder: try FileManager.default.createDirectory(atPath: log.string, withIntermediateDirectories: false)
        }
        let project = try Project(
            in: scratch.path, tiers: [["kind": "directory", "name": "local", "path": scratch.path.appending("local").string]],
            writeBack: ["detach": true, "logFile": log.string]
        )
        // A FIFO nobody reads would block an open for ever: the restore must not hang on it.
        let result = try await Fixtures.cli(["restore", "--config", project.config.string])
        #expect(result.status == 2)
        let expected = kind == .symlink ? "it is a symbolic link; name the file itself" : "is not a regular file"
        #expect(result.stderr.contains("writeBack.logFile \(log)") && result.stderr.contains(expected), "\(result.stderr)")
        #expect(result.stderr.split(separator: "\n").count == 1, "\(result.stderr)")
    }
}
