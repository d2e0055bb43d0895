import CacheTiers
import CacheTiersTesting
import Foundation
import Logging
import SystemPackage
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The retention rule, once for every folder: the size and age grammar, the victims a
/// policy picks, and an enforcement on a real folder through its archive index.
@Suite struct RetentionPolicyTests {
    @Test func sizesAndAgesParseTheDocumentedGrammarAndNothingElse() throws {
        #expect(try StorageSize(parsing: "50G").bytes == 50 << 30)
        #expect(try StorageSize(parsing: "512m").bytes == 512 << 20)
        #expect(try StorageSize(parsing: "1048576").bytes == 1 << 20)
        #expect(try StorageSize(parsing: "2T").bytes == 2 << 40)
        #expect(try StorageSize(parsing: "3K").description == "3K")
        #expect(StorageSize(bytes: 1536 << 20).description == "1536M")
        for bad in ["", "G", "-1G", "1.5G", "0", "0G", "1 G", "1GB", "+5", "8388608T", String(repeating: "9", count: 30), "1X"] {
            do {
                _ = try StorageSize(parsing: bad)
                Issue.record("\(bad) parsed as a size")
            } catch {
                #expect(error.description.contains("like 50G"), "\(bad): \(error)")
                #expect(!error.description.contains("\n") && error.description.count < 200, "\(bad): one short line")
            }
        }
        #expect(try RetentionAge(parsing: "30d").seconds == 30 * 86_400)
        #expect(try RetentionAge(parsing: "1h").seconds == 3600)
        #expect(try RetentionAge(parsing: "90m").description == "90m")
        #expect(try RetentionAge(parsing: "0m").seconds == 0)
        for bad in ["", "30", "d", "1w", "-1d", "1.5h", "1H", "99999999999999d", " 1d"] {
            do {
                _ = try RetentionAge(parsing: bad)
                Issue.record("\(bad) parsed as an age")
            } catch {
                #expect(error.description.contains("like 30d"), "\(bad): \(error)")
            }
        }
    }

    static let now = Date(timeIntervalSince1970: 1_800_000_000)

    func entry(_ key: String, size: Int64 = 100, createdDaysAgo: Double, servedDaysAgo: Double? = nil) throws -> ArchiveIndex.Entry {
        ArchiveIndex.Entry(
            key: try CacheKey(key), size: size, sha256: nil, createdAt: Self.now.addingTimeInterval(-createdDaysAgo * 86_400),
            lastServedAt: servedDaysAgo.map { Self.now.addingTimeInterval(-$0 * 86_400) }, hits: servedDaysAgo == nil ? 0 : 1
        )
    }

    @Test func victimsAreTheLeastRecentlyServedNeverYoungerThanMinAgeNorInUse() throws {
        let entries = [
            try entry("served-today", createdDaysAgo: 20, servedDaysAgo: 0.1),
            try entry("never-served-old", createdDaysAgo: 8),
            try entry("served-long-ago", createdDaysAgo: 30, servedDaysAgo: 9),
            try entry("streaming", createdDaysAgo: 40, servedDaysAgo: 39),
            try entry("just-published", createdDaysAgo: 0.01),
        ]
        let policy = RetentionPolicy(maxSize: StorageSize(bytes: 250), minAge: try RetentionAge(parsing: "1h"))
        let plan = policy.plan(entries, inUse: [try CacheKey("streaming")], now: Self.now)
        // Served 9 days ago goes before stored 8 days ago and never served; the streamed one and the young one stay.
        #expect(plan.victims.map(\.entry.key.rawValue) == ["served-long-ago", "never-served-old", "served-today"])
        #expect(plan.victims.allSatisfy { $0.reason == .size })
        #expect(plan.remainingBytes == 200 && plan.fits)
        // Nothing evictable left: an incoming archive cannot fit.
        #expect(!policy.plan(entries, inUse: [try CacheKey("streaming")], incoming: 100, now: Self.now).fits)

        let byAge = RetentionPolicy(maxAgeUnused: try RetentionAge(parsing: "7d"), minAge: RetentionAge(seconds: 0))
        let aged = byAge.plan(entries, inUse: [], now: Self.now)
        #expect(aged.victims.map(\.entry.key.rawValue) == ["streaming", "served-long-ago", "never-served-old"])
        #expect(aged.victims.allSatisfy { $0.reason == .age })
        #expect(RetentionPolicy().plan(entries, inUse: [], now: Self.now).victims.isEmpty, "no limit: nothing goes")
    }

    @Test func aFolderIsPrunedByTheIndexNotByAtime() async throws {
        let scratch = try TemporaryDirectory(prefix: "retention")
        defer { scratch.remove() }
        let logger = Logger(label: "test")
        let tree = scratch.path.appending("tree")
        try SampleTree.write(to: tree, files: 5)
        let folder = ArchiveFolder(root: scratch.path.appending("cache"))
        var manifests: [String: CacheManifest] = [:]
        for key in ["a", "b", "c"] {
            let file = scratch.path.appending("\(key).tar.zst")
            let manifest = try await ArchivePacker().pack(tree, key: try CacheKey(key), to: file, logger: logger)
            #expect(try await folder.publish(file: file, manifest: manifest, mode: .replace, logger: logger) == .created)
            manifests[key] = manifest
        }
        let index = try ArchiveIndex.open(root: folder.root)
        defer { index.close() }
        // A copy by hand (or an archive from before the index) gets a row with the manifest's time at reconcile.
        #expect(try index.reconcile(with: folder) == (added: 3, removed: 0))
        #expect(try index.entries().allSatisfy { $0.hits == 0 && $0.lastServedAt == nil })
        let day = 86_400.0
        try index.recordHit(manifests["a"]!, at: Self.now.addingTimeInterval(-1 * day))
        try index.recordHit(manifests["b"]!, at: Self.now.addingTimeInterval(-5 * day))
        try index.recordHit(manifests["c"]!, at: Self.now.addingTimeInterval(-3 * day))
        try index.recordHit(manifests["c"]!, at: Self.now.addingTimeInterval(-2 * day))
        #expect(try index.entries(for: [try CacheKey("c")])[try CacheKey("c")]?.hits == 2)
        // atime says the opposite of the index: b read a moment ago, a years ago. It is never read.
        for (key, atime) in [("a", 0), ("b", Int(Self.now.timeIntervalSince1970))] {
            var times = [timespec(tv_sec: atime, tv_nsec: 0), timespec(tv_sec: Int(Date().timeIntervalSince1970), tv_nsec: 0)]
            #expect(utimensat(AT_FDCWD, folder.archivePath(for: try CacheKey(key)).string, &times, 0) == 0)
        }
        let size = manifests["a"]!.archiveSize
        let policy = RetentionPolicy(maxSize: StorageSize(bytes: 2 * size), minAge: RetentionAge(seconds: 0))
        let retention = ArchiveRetention(folder: folder, index: index, policy: policy)

        let dry = try retention.enforce(dryRun: true, now: Self.now, logger: logger)
        #expect(dry.evicted.map(\.entry.key.rawValue) == ["b"])
        #expect(folder.keys().count == 3, "a dry run removes nothing")

        let report = try retention.enforce(now: Self.now, logger: logger)
        #expect(report.evicted.map(\.entry.key.rawValue) == ["b"])
        #expect(report.storedBytes == 2 * size && report.storedArchives == 2)
        #expect(folder.keys().map(\.rawValue) == ["a", "c"])
        #expect(!FileManager.default.fileExists(atPath: folder.manifestPath(for: try CacheKey("b")).string))
        #expect(try index.entries().map(\.key.rawValue).sorted() == ["a", "c"])

        // An archive in use is skipped even when it is the only victim left.
        let tight = ArchiveRetention(
            folder: folder, index: index, policy: RetentionPolicy(maxSize: StorageSize(bytes: size), minAge: RetentionAge(seconds: 0))
        )
        let hold = tight.inUse.hold(try CacheKey("a"))
        #expect(try tight.enforce(now: Self.now, logger: logger).evicted.map(\.entry.key.rawValue) == ["c"])
        #expect(try !tight.admits(size, now: Self.now), "a held, nothing else to evict")
        hold.release()
        #expect(try tight.admits(size, now: Self.now))
        #expect(folder.keys().map(\.rawValue) == ["a"])
    }
}
