import CacheTiers
import CacheTiersTesting
import Foundation
import Logging
import SystemPackage
import Testing

/// The directory tier's limits: its config fields, the hits a restore records, the
/// eviction after a publish, and `cachetiers prune`.
@Suite(.serialized) struct DirectoryRetentionTests {
    static let logger = Logger(label: "test")

    @Test func theDirectoryTiersLimitsAreReadWithTheSizeAndAgeGrammar() throws {
        func tiers(_ fields: String) throws(ConfigError) -> [CacheTiersConfig.Tier] {
            try CacheTiersConfig(
                json: Data(#"{"tiers": [{"kind": "directory", "path": "cache"\#(fields)}]}"#.utf8), baseDirectory: "/srv", purpose: .tiers
            ).tiers
        }
        let limited = try tiers(#", "maxSize": "2G", "maxAgeUnused": "30d", "minAge": "0m""#)
        #expect(limited[0].retention == RetentionPolicy(maxSize: StorageSize(bytes: 2 << 30), maxAgeUnused: RetentionAge(seconds: 30 * 86_400), minAge: RetentionAge(seconds: 0)))
        #expect(try tiers(#", "maxSize": 1048576"#)[0].retention == RetentionPolicy(maxSize: StorageSize(bytes: 1 << 20)))
        #expect(try tiers("")[0].retention == nil)
        for (fields, message) in [
            (#", "maxSize": "2X""#, #"tiers[0].maxSize: "2X" is not a size"#),
            (#", "maxSize": true"#, "tiers[0].maxSize: expected a size like \"50G\" or a number of bytes, got a boolean"),
            (#", "maxSize": 0"#, "tiers[0].maxSize: must be at least 1"),
            (#", "maxAgeUnused": "30""#, #"tiers[0].maxAgeUnused: "30" is not an age"#),
            (#", "minAge": 5"#, "tiers[0].minAge: expected a string"),
        ] {
            do {
                _ = try tiers(fields)
                Issue.record("\(fields) was accepted")
            } catch {
                #expect(error.description.hasPrefix(message), "\(error)")
            }
        }
    }

    func pack(_ scratch: TemporaryDirectory, _ key: String, seed: Int) async throws -> PackedArchive {
        let tree = scratch.path.appending("tree-\(key)")
        try SampleTree.write(to: tree, seed: seed, files: 10)
        let file = scratch.path.appending("\(key).tar.zst")
        return PackedArchive(file: file, manifest: try await ArchivePacker().pack(tree, key: try CacheKey(key), to: file, logger: Self.logger))
    }

    @Test func aPublishIntoALimitedDirectoryEvictsTheLeastRecentlyRestored() async throws {
        let scratch = try TemporaryDirectory(prefix: "dir-retention")
        defer { scratch.remove() }
        var archives: [PackedArchive] = []
        for (index, key) in ["d1", "d2", "d3"].enumerated() { archives.append(try await pack(scratch, key, seed: index + 1)) }
        let sizes = archives.map(\.manifest.archiveSize)
        var directory = DirectorySource(root: scratch.path.appending("cache"))
        directory.retention = RetentionPolicy(maxSize: StorageSize(bytes: sizes.reduce(0, +) - sizes.min()! / 2), minAge: RetentionAge(seconds: 0))
        for archive in archives.prefix(2) { #expect(try await directory.publish(archive, logger: Self.logger) == .published) }
        // d1 is restored (a hit in the folder's index), d2 is not.
        let staging = try scratch.makeDirectory("staging")
        let outcome = try await directory.restore(RestoreRequest(key: try CacheKey("d1")), into: staging, progress: .init(), logger: Self.logger)
        guard case .restored = outcome else { Issue.record("expected a restore, got \(outcome)"); return }
        let index = try ArchiveIndex.open(root: directory.root)
        defer { index.close() }
        #expect(try index.entries(for: [try CacheKey("d1")])[try CacheKey("d1")]?.hits == 1)

        #expect(try await directory.publish(archives[2], logger: Self.logger) == .published)
        #expect(ArchiveFolder(root: directory.root).keys().map(\.rawValue) == ["d1", "d3"], "d2, never restored, went")
        #expect(try index.entries().map(\.key.rawValue).sorted() == ["d1", "d3"])
    }

    @Test func pruneSaysWhatEachTierDoesAndADryRunChangesNothing() async throws {
        let scratch = try TemporaryDirectory(prefix: "prune")
        defer { scratch.remove() }
        var archives: [PackedArchive] = []
        for (index, key) in ["p1", "p2", "p3"].enumerated() { archives.append(try await pack(scratch, key, seed: index + 1)) }
        let cache = scratch.path.appending("cache")
        let unlimited = DirectorySource(root: cache)
        for archive in archives { #expect(try await unlimited.publish(archive, logger: Self.logger) == .published) }
        let sizes = archives.map(\.manifest.archiveSize)
        let limit = sizes.reduce(0, +) - sizes.min()! / 2
        let config = scratch.path.appending("config.json")
        try Data(
            """
            {"tiers": [
              {"kind": "peer", "name": "master", "urls": ["http://127.0.0.1:9"]},
              {"kind": "gcs", "name": "bucket", "bucket": "b"},
              {"kind": "directory", "name": "shared", "path": "cache", "maxSize": \(limit), "minAge": "0m"}
            ]}
            """.utf8
        ).write(to: URL(fileURLWithPath: config.string))
        func contents() throws -> [String] { try FileManager.default.contentsOfDirectory(atPath: cache.string).sorted() }
        let before = try contents()

        let dry = try await Fixtures.cli(["prune", "--config", config.string, "--dry-run", "--json"])
        #expect(dry.status == 0, "\(dry.stderr)")
        #expect(try contents() == before, "a dry run writes nothing, not even an index")
        let json = try #require(try JSONSerialization.jsonObject(with: Data(dry.stdout.utf8)) as? [String: Any])
        let tiers = try #require(json["tiers"] as? [[String: Any]])
        #expect(tiers.map { $0["tier"] as? String } == ["master", "bucket", "shared"])
        #expect((tiers[0]["summary"] as? String)?.contains("serve --max-size") == true)
        #expect((tiers[1]["summary"] as? String)?.contains("Deploy/gcs/lifecycle.json") == true)
        let evicted = try #require(tiers[2]["evicted"] as? [[String: Any]])
        #expect(evicted.map { $0["key"] as? String } == ["p1"], "the oldest of three never served")
        #expect(tiers[2]["evictedBytes"] as? Int == Int(sizes[0]))

        let real = try await Fixtures.cli(["prune", "--config", config.string])
        #expect(real.status == 0, "\(real.stderr)")
        #expect(real.stdout.contains("shared: evicted 1 archives"), "\(real.stdout)")
        #expect(real.stdout.contains("master: the cache master prunes itself"))
        #expect(ArchiveFolder(root: cache).keys().map(\.rawValue) == ["p2", "p3"])
        let again = try await Fixtures.cli(["prune", "--config", config.string])
        #expect(again.stdout.contains("shared: evicted 0 archives"), "idempotent: \(again.stdout)")

        let missing = try await Fixtures.cli(["prune", "--config", scratch.path.appending("absent.json").string])
        #expect(missing.status == 2)
        try Data(#"{"tiers": [{"kind": "directory", "path": "nowhere", "maxSize": "1G"}]}"#.utf8)
            .write(to: URL(fileURLWithPath: config.string))
        let broken = try await Fixtures.cli(["prune", "--config", config.string])
        #expect(broken.status == 1)
        #expect(broken.stdout.contains("is not a folder") || broken.stderr.contains("is not a folder"), "\(broken.stdout)\(broken.stderr)")
    }
}
