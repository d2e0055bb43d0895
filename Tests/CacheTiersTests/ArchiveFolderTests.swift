@testable import CacheTiers
import CacheTiersServer
import CacheTiersTesting
import Foundation
import Logging
import NIOHTTP1
import Synchronization
import SystemPackage
import Testing

/// The one archive folder a directory tier and a cache master share: its lock holds
/// across processes, its publish checks what it makes visible, and either user reads
/// what the other wrote.
@Suite(.serialized) struct ArchiveFolderTests {
    /// Takes the folder's `flock(2)` on a descriptor of its own, as another process does.
    final class OtherProcessLock {
        private let descriptor: Int32

        init(_ root: FilePath, exclusive: Bool) throws {
            descriptor = open(root.string, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            guard descriptor >= 0, flock(descriptor, exclusive ? LOCK_EX : LOCK_SH) == 0 else {
                throw FixtureError("cannot lock \(root): \(String(cString: strerror(errno)))")
            }
        }

        func release() { close(descriptor) }
    }

    static func packed(in scratch: TemporaryDirectory, key: CacheKey, seed: Int = 1) async throws -> PackedArchive {
        let tree = scratch.path.appending("tree-\(seed)")
        _ = try SampleTree.write(to: tree, seed: seed, files: 20)
        let file = scratch.path.appending("\(key)-\(seed).tar.zst")
        let manifest = try await ArchivePacker().pack(tree, key: key, to: file, logger: PeerHarness.quietLogger)
        return PackedArchive(file: file, manifest: manifest)
    }

    @Test func aReaderWaitsWhileAnotherProcessHoldsTheFolderForAPublish() async throws {
        let scratch = try TemporaryDirectory(prefix: "folder-lock")
        defer { scratch.remove() }
        let key = try CacheKey("locked")
        let directory = DirectorySource(root: scratch.path.appending("root"))
        #expect(try await directory.publish(try await Self.packed(in: scratch, key: key), logger: PeerHarness.quietLogger) == .published)

        let other = try OtherProcessLock(directory.root, exclusive: true)
        let folder = ArchiveFolder(root: directory.root)
        let done = Atomic<Bool>(false)
        let reader = Task {
            try await Fixtures.offThePool {
                defer { done.store(true, ordering: .relaxed) }
                guard case .found(let archive) = try folder.lookup(key) else { return Int64(-1) }
                return archive.size
            }
        }
        try await Task.sleep(for: .milliseconds(500))
        let finishedEarly = done.load(ordering: .relaxed)
        #expect(!finishedEarly, "the lookup waits for the other process's publish")
        other.release()
        let size = try await reader.value
        #expect(size == Int64(try FileManager.default.attributesOfItem(atPath: directory.archivePath(for: key).string)[.size] as! Int))
    }

    @Test func aPublishWaitsWhileAnotherProcessReadsThenBothFilesAppearTogether() async throws {
        let scratch = try TemporaryDirectory(prefix: "folder-lock")
        defer { scratch.remove() }
        let key = try CacheKey("awaited")
        let directory = DirectorySource(root: scratch.path.appending("root"))
        try FileManager.default.createDirectory(atPath: directory.root.string, withIntermediateDirectories: true)
        let archive = try await Self.packed(in: scratch, key: key)

        let other = try OtherProcessLock(directory.root, exclusive: false)
        let publish = Task { try await directory.publish(archive, logger: PeerHarness.quietLogger) }
        try await Task.sleep(for: .milliseconds(500))
        #expect(FileSystem.kind(of: directory.archivePath(for: key)) == nil, "nothing becomes visible while another process reads")
        other.release()
        #expect(try await publish.value == .published)
        #expect(try await directory.contains(key, logger: PeerHarness.quietLogger))
    }

    @Test func aCacheMasterAndADirectorySourceShareOneFolder() async throws {
        let scratch = try TemporaryDirectory(prefix: "shared-folder")
        defer { scratch.remove() }
        let root = scratch.path.appending("root")
        let server = CacheMasterServer(configuration: .init(root: root, port: 0), logger: PeerHarness.quietLogger)
        let url = try await server.start()
        let directory = DirectorySource(root: root)

        // Published by the directory tier, served by the cache master.
        let first = try await Self.packed(in: scratch, key: CacheKey("by-directory"))
        #expect(try await directory.publish(first, logger: PeerHarness.quietLogger) == .published)
        let peer = VMPeerSource(configuration: .init(peers: [url]))
        let served = try await peer.restore(
            RestoreRequest(key: first.key), into: try scratch.makeDirectory("from-peer"), progress: .init(), logger: PeerHarness.quietLogger
        )
        guard case .restored = served else { Issue.record("the cache master did not serve it: \(served)"); return }

        // Uploaded to the cache master, read by the directory tier.
        let second = try await Self.packed(in: scratch, key: CacheKey("by-peer"), seed: 2)
        #expect(try await peer.publish(second, logger: PeerHarness.quietLogger) == .published)
        try await peer.shutdown()
        let read = try await directory.restore(
            RestoreRequest(key: second.key), into: try scratch.makeDirectory("from-directory"), progress: .init(),
            logger: PeerHarness.quietLogger
        )
        guard case .restored = read else { Issue.record("the directory tier did not read it: \(read)"); return }
        #expect(try await directory.publish(second, logger: PeerHarness.quietLogger) == .exists, "create-only across both")
        await server.stop()

        let names = try FileManager.default.contentsOfDirectory(atPath: root.string).sorted()
        #expect(names == [".cachetiers", "by-directory.tar.zst", "by-directory.tar.zst.manifest.json", "by-peer.tar.zst", "by-peer.tar.zst.manifest.json"])
    }

    /// The cache master keeps its report database in `ROOT/.cachetiers/`; the recovery
    /// that moves half-published files aside at start must never take it for one.
    @Test func recoveryAtStartLeavesTheReportDatabaseAlone() async throws {
        let scratch = try TemporaryDirectory(prefix: "recovery-reports")
        defer { scratch.remove() }
        let root = try scratch.makeDirectory("root")
        let reports = try scratch.makeDirectory("root/\(CacheMasterServer.reportsFolderName)")
        let longAgo = Date(timeIntervalSinceNow: -30 * 86_400)
        var files: [String: Data] = [:]
        for name in ["reports.sqlite", "reports.sqlite-wal", "reports.sqlite-shm"] {
            let path = reports.appending(name).string
            files[name] = Data("SQLite format 3 \(name)".utf8)
            try files[name]!.write(to: URL(fileURLWithPath: path))
            try FileManager.default.setAttributes([.modificationDate: longAgo], ofItemAtPath: path)
        }
        try FileManager.default.setAttributes([.modificationDate: longAgo], ofItemAtPath: reports.string)
        // An archive without its manifest, settled: this one the recovery does move aside.
        try Data("orphan".utf8).write(to: URL(fileURLWithPath: root.appending("orphan.tar.zst").string))

        let preparation = try ArchiveFolder(root: root).prepare(gracePeriod: .zero, logger: PeerHarness.quietLogger)
        #expect(preparation.quarantined == ["orphan.tar.zst"], "the recovery ran")
        #expect(preparation.removed == [])
        for (name, contents) in files {
            #expect(try Data(contentsOf: URL(fileURLWithPath: reports.appending(name).string)) == contents, "\(name) untouched")
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: root.string).sorted() == [".cachetiers", ".quarantine"])
    }

    @Test func aFileThatDoesNotMatchItsManifestIsNotPublishedAndLeavesNothing() async throws {
        let scratch = try TemporaryDirectory(prefix: "mismatch")
        defer { scratch.remove() }
        let directory = DirectorySource(name: "local", root: scratch.path.appending("root"))
        let archive = try await Self.packed(in: scratch, key: CacheKey("mismatched"))
        var shorter = archive.manifest
        shorter.archiveSize -= 1
        var otherDigest = archive.manifest
        otherDigest.archiveSHA256 = String(repeating: "0", count: 64)
        for (manifest, says) in [(shorter, "bytes but the manifest says"), (otherDigest, "SHA-256")] {
            let failure = await #expect(throws: CacheTierError.self) {
                try await directory.publish(PackedArchive(file: archive.file, manifest: manifest), logger: PeerHarness.quietLogger)
            }
            #expect(failure?.kind == .corrupt)
            #expect(failure?.message.contains(says) == true, "\(failure?.message ?? "")")
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory.root.string) == [], "no scratch file, no archive")
        #expect(try await !directory.contains(archive.key, logger: PeerHarness.quietLogger))
    }
}
