import CacheTiers
import CacheTiersTesting
import Foundation
import Logging
import NIOCore
import SystemPackage
import Testing

@Suite struct DirectorySourceTests {
    struct Subject: ConformanceSubject {
        let directory: DirectorySource
        var source: any CacheSource { directory }
        var sink: (any CacheSink)? { directory }
        var packer: (any CachePacker)? { ArchivePacker() }

        func seed(_ key: CacheKey, from tree: FilePath) async throws {
            let scratch = try TemporaryDirectory(prefix: "seed")
            defer { scratch.remove() }
            let file = scratch.path.appending("a.tar.zst")
            let manifest = try await ArchivePacker().pack(tree, key: key, to: file, logger: Logger(label: "seed"))
            _ = try await directory.publish(PackedArchive(file: file, manifest: manifest), logger: Logger(label: "seed"))
        }
    }

    @Test func conforms() async throws {
        let scratch = try TemporaryDirectory(prefix: "directory")
        defer { scratch.remove() }
        try await CacheSourceConformance(subject: Subject(directory: DirectorySource(root: scratch.path.appending("cache")))).run()
    }

    @Test func copiesLeftByAKilledPublishAreRemovedByTheNextPublishOfThatKey() async throws {
        let scratch = try TemporaryDirectory(prefix: "directory")
        defer { scratch.remove() }
        let source = DirectorySource(root: scratch.path.appending("cache"))
        let key = try CacheKey("republished")
        let gone = try Fixtures.processIDOfAFinishedProcess()
        let owner = "\(gone)@\(Fixtures.hostName)"
        try FileManager.default.createDirectory(atPath: source.root.string, withIntermediateDirectories: true)
        let leftovers = [".republished.tar.zst.partial-\(owner)-1a", ".republished.manifest.partial-\(owner)-1a"]
        let otherKey = ".another.tar.zst.partial-\(owner)-2b"
        for name in leftovers + [otherKey] {
            try Data(repeating: 7, count: 4096).write(to: URL(fileURLWithPath: source.root.appending(name).string))
        }
        let tree = scratch.path.appending("tree")
        try SampleTree.write(to: tree)
        try await Subject(directory: source).seed(key, from: tree)
        let names = try FileManager.default.contentsOfDirectory(atPath: source.root.string).sorted()
        #expect(names == [otherKey, "republished.tar.zst", "republished.tar.zst.manifest.json"].sorted())
    }

    @Test func anArchiveOrphanedByAKilledPublishIsReplacedOnceItIsOldEnough() async throws {
        let scratch = try TemporaryDirectory(prefix: "directory")
        defer { scratch.remove() }
        var source = DirectorySource(root: scratch.path.appending("cache"))
        let key = try CacheKey("orphaned")
        let tree = scratch.path.appending("tree")
        try SampleTree.write(to: tree)
        try FileManager.default.createDirectory(atPath: source.root.string, withIntermediateDirectories: true)
        // What a publish killed between link(2) and renaming the manifest leaves.
        try Data([1, 2, 3]).write(to: URL(fileURLWithPath: source.archivePath(for: key).string))
        let logger = Logger(label: "t")

        let file = scratch.path.appending("a.tar.zst")
        let manifest = try await ArchivePacker().pack(tree, key: key, to: file, logger: logger)
        let archive = PackedArchive(file: file, manifest: manifest)
        // Young: it may be a publish between its two steps right now, so it is left alone.
        #expect(try await source.publish(archive, logger: logger) == .exists)
        source.orphanAge = .zero
        #expect(try await source.publish(archive, logger: logger) == .published)
        #expect(try await source.contains(key, logger: logger))
        let staging = try scratch.makeDirectory("staging")
        let outcome = try await source.restore(RestoreRequest(key: key), into: staging, progress: .init(), logger: logger)
        guard case .restored = outcome else { Issue.record("expected a restore, got \(outcome)"); return }
        #expect(try TreeSnapshot(of: staging).differences(from: TreeSnapshot(of: tree)) == [])
        let names = try FileManager.default.contentsOfDirectory(atPath: source.root.string).sorted()
        #expect(names == ["orphaned.tar.zst", "orphaned.tar.zst.manifest.json"], "nothing set aside is left")
        // A complete entry is never replaced, however old.
        #expect(try await source.publish(archive, logger: logger) == .exists)
    }

    @Test func anArchiveWithoutItsManifestIsAMiss() async throws {
        let scratch = try TemporaryDirectory(prefix: "directory")
        defer { scratch.remove() }
        let source = DirectorySource(root: scratch.path)
        let key = try CacheKey("half-published")
        try Data([1, 2, 3]).write(to: URL(fileURLWithPath: source.archivePath(for: key).string))
        let staging = try scratch.makeDirectory("staging")
        let outcome = try await source.restore(RestoreRequest(key: key), into: staging, progress: .init(), logger: Logger(label: "t"))
        guard case .miss(let reason) = outcome else { Issue.record("expected a miss, got \(outcome)"); return }
        #expect(reason.contains("no manifest"))
        #expect(try await !source.contains(key, logger: Logger(label: "t")))
    }

    /// Finds the directory's archive, then has a cache master sharing the folder replace
    /// the key (its replace mode) before a byte is streamed.
    struct ReplacedAfterFinding: ArchiveSource {
        let directory: DirectorySource
        let replacement: PackedArchive
        var name: String { directory.name }

        func findArchive(_ request: RestoreRequest, logger: Logger) async throws -> ArchiveLookup<DirectorySource.Archive> {
            let found = try await directory.findArchive(request, logger: logger)
            let outcome = try await ArchiveFolder(root: directory.root).publish(
                file: replacement.file, manifest: replacement.manifest, mode: .replace, logger: logger
            )
            guard outcome == .replaced else { throw FixtureError("the replacement was \(outcome)") }
            return found
        }

        func streamArchive(
            _ archive: FoundArchive<DirectorySource.Archive>,
            from offset: Int64,
            progress: TransferProgress,
            logger: Logger,
            deliver: (ByteBuffer) async throws -> Void
        ) async throws {
            try await directory.streamArchive(archive, from: offset, progress: progress, logger: logger, deliver: deliver)
        }
    }

    /// The descriptors this process holds on files under `root`.
    static func openFiles(under root: FilePath) throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").compactMap { descriptor in
            let target = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\(descriptor)")
            return target?.hasPrefix(root.string + "/") == true ? target : nil
        }
    }

    @Test func anArchiveReplacedAfterItWasFoundIsReadAsFound() async throws {
        let scratch = try TemporaryDirectory(prefix: "directory")
        defer { scratch.remove() }
        let logger = Logger(label: "t")
        let key = try CacheKey("swapped")
        let directory = DirectorySource(root: scratch.path.appending("cache"))
        var packed: [PackedArchive] = []
        for seed in [1, 2] {
            let tree = scratch.path.appending("tree-\(seed)")
            try SampleTree.write(to: tree, seed: seed, files: 200)
            let file = scratch.path.appending("\(seed).tar.zst")
            packed.append(PackedArchive(file: file, manifest: try await ArchivePacker().pack(tree, key: key, to: file, logger: logger)))
        }
        #expect(try await directory.publish(packed[0], logger: logger) == .published)

        // Streamed directly, from the start and from a resume's offset: the old archive's bytes.
        let old = try Data(contentsOf: URL(fileURLWithPath: packed[0].file.string))
        for offset in [0, old.count / 2] {
            guard case .found(let found) = try await directory.findArchive(RestoreRequest(key: key), logger: logger) else {
                Issue.record("the published archive was not found"); return
            }
            let replaced = try await ArchiveFolder(root: directory.root).publish(
                file: packed[offset == 0 ? 1 : 0].file, manifest: packed[offset == 0 ? 1 : 0].manifest, mode: .replace, logger: logger
            )
            #expect(replaced == .replaced)
            var bytes = Data()
            try await directory.streamArchive(found, from: Int64(offset), progress: .init(), logger: logger) {
                bytes.append(contentsOf: $0.readableBytesView)
            }
            let expected = try Data(contentsOf: URL(fileURLWithPath: packed[offset == 0 ? 0 : 1].file.string))
            // Compared outside #expect, which would diff two archives byte by byte.
            let same = bytes == expected.dropFirst(offset)
            #expect(same, "\(bytes.count) bytes from \(offset): the bytes of the archive found")
        }
        #expect(try Self.openFiles(under: directory.root) == [], "the archives found are closed once dropped")

        // Restored: the tree of the archive found, whose manifest it was checked against.
        #expect(try await directory.publish(packed[0], logger: logger) == .exists)
        let source = ReplacedAfterFinding(directory: directory, replacement: packed[1])
        let staging = try scratch.makeDirectory("staging")
        let outcome = try await source.restore(RestoreRequest(key: key), into: staging, progress: .init(), logger: logger)
        guard case .restored = outcome else { Issue.record("expected a restore, got \(outcome)"); return }
        #expect(try TreeSnapshot(of: staging).differences(from: TreeSnapshot(of: scratch.path.appending("tree-1"))) == [])
        #expect(try Self.openFiles(under: directory.root) == [], "the download closed the archive it read")
    }

    @Test func aDamagedArchiveIsCorruptAndTheChainFallsThrough() async throws {
        let scratch = try TemporaryDirectory(prefix: "directory")
        defer { scratch.remove() }
        let tree = scratch.path.appending("tree")
        try SampleTree.write(to: tree)
        let key = try CacheKey("damaged")
        let good = DirectorySource(name: "good", root: scratch.path.appending("good"))
        let bad = DirectorySource(name: "bad", root: scratch.path.appending("bad"))
        try await Subject(directory: good).seed(key, from: tree)
        try await Subject(directory: bad).seed(key, from: tree)
        var bytes = try Data(contentsOf: URL(fileURLWithPath: bad.archivePath(for: key).string))
        bytes[bytes.count / 2] ^= 0xFF
        try bytes.write(to: URL(fileURLWithPath: bad.archivePath(for: key).string))

        var logger = Logger(label: "t")
        logger.logLevel = .critical
        let chain = TierChain(
            tiers: [.init(bad, policy: .init(retry: .none)), .init(good)],
            configuration: .init(writeBack: .disabled, retryBudget: RetryBudget()),
            logger: logger
        )
        let destination = scratch.path.appending("node_modules")
        let report = try await chain.restore(key, into: destination)
        #expect(report.attempts.map(\.outcome) == [.corrupt, .hit])
        #expect(try TreeSnapshot(of: destination).differences(from: TreeSnapshot(of: tree)) == [])
    }
}

/// The chain with real tiers and the real packer: a lower hit is written back, and
/// the next restore is served from the faster tier.
@Suite struct ChainWithRealTiersTests {
    @Test func writeBackMakesTheNextRestoreHitTheFirstTier() async throws {
        let scratch = try TemporaryDirectory(prefix: "real-chain")
        defer { scratch.remove() }
        let tree = try await Fixtures.makeCorpus(in: scratch.path.appending("corpus"), files: 200, seed: 9)
        let key = try CacheKey("node-modules-e2e")
        let fast = DirectorySource(name: "fast", root: scratch.path.appending("fast"))
        let slow = DirectorySource(name: "slow", root: scratch.path.appending("slow"))
        try await DirectorySourceTests.Subject(directory: slow).seed(key, from: tree)

        var logger = Logger(label: "t")
        logger.logLevel = .critical
        let chain = TierChain(
            tiers: [.init(fast), .init(slow)],
            configuration: .init(writeBack: .init(waitForCompletion: true), retryBudget: RetryBudget()),
            logger: logger
        )
        let destination = scratch.path.appending("workspace/node_modules")
        try FileManager.default.createDirectory(atPath: destination.removingLastComponent().string, withIntermediateDirectories: true)
        let first = try await chain.restore(key, into: destination)
        #expect(first.servedBy == "slow")
        #expect(first.writeBack == [WriteBackRecord(tier: "fast", outcome: .published)])
        #expect(try await fast.contains(key, logger: logger))

        try FileManager.default.removeItem(atPath: destination.string)
        let second = try await chain.restore(key, into: destination)
        #expect(second.servedBy == "fast")
        #expect(second.attempts.map(\.outcome) == [.hit])
        #expect(try TreeSnapshot(of: destination).differences(from: TreeSnapshot(of: tree), comparingTimes: true) == [])
    }
}
