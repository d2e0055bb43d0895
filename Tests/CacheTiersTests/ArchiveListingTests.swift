import CacheTiers
import CacheTiersTesting
import Foundation
import Logging
import SystemPackage
import Testing

/// The folder's listing (what `GET /v1/caches`, sync and prune page through) and the
/// config load for commands that need only the tiers.
@Suite struct ArchiveListingTests {
    @Test func aFolderListsCompletePairsInKeyOrderPageByPage() async throws {
        let scratch = try TemporaryDirectory(prefix: "listing")
        defer { scratch.remove() }
        let tree = scratch.path.appending("tree")
        try SampleTree.write(to: tree)
        let directory = DirectorySource(root: scratch.path.appending("cache"))
        let keys = ["b-key", "A-key", "c.key", "a_key", "9-key"]
        for key in keys {
            let file = scratch.path.appending("\(key).tar.zst")
            let manifest = try await ArchivePacker().pack(tree, key: try CacheKey(key), to: file, logger: Logger(label: "t"))
            _ = try await directory.publish(PackedArchive(file: file, manifest: manifest), logger: Logger(label: "t"))
        }
        // What a publish in progress and a hand copy without a manifest leave: not keys.
        try Data([1]).write(to: URL(fileURLWithPath: scratch.path.appending("cache/lonely.tar.zst").string))
        try Data([1]).write(to: URL(fileURLWithPath: scratch.path.appending("cache/.b-key.tar.zst.partial-1@h-x").string))

        let folder = ArchiveFolder(root: directory.root)
        let first = folder.listArchives(after: nil, limit: 2)
        #expect(first.archives.map(\.key.rawValue) == ["9-key", "A-key"])
        #expect(first.next?.rawValue == "A-key")
        let second = folder.listArchives(after: first.next, limit: 2)
        #expect(second.archives.map(\.key.rawValue) == ["a_key", "b-key"])
        let last = folder.listArchives(after: second.next, limit: 2)
        #expect(last.archives.map(\.key.rawValue) == ["c.key"])
        #expect(last.next == nil)
        let archive = try #require(last.archives.first)
        #expect(archive.size == Int64(try FileManager.default.attributesOfItem(atPath: directory.archivePath(for: archive.key).string)[.size] as! Int))
        #expect(archive.sha256 == (try folder.manifest(for: archive.key))?.archiveSHA256)
        // An `after` that is no key of the folder starts at the next key in order.
        #expect(folder.listArchives(after: try CacheKey("b"), limit: 10).archives.map(\.key.rawValue) == ["b-key", "c.key"])
    }

    @Test func aPageEncodesAsTheAPIDocumentsIt() throws {
        let page = ArchivePage(
            archives: [ArchiveListing(key: try CacheKey("k"), size: 3, sha256: nil, createdAt: Date(timeIntervalSince1970: 0))],
            next: nil
        )
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        encoder.dateEncodingStrategy = .iso8601
        let json = String(decoding: try encoder.encode(page), as: UTF8.self)
        #expect(json == #"{"caches":[{"createdAt":"1970-01-01T00:00:00Z","hits":null,"key":"k","lastServedAt":null,"sha256":null,"size":3}],"next":null}"#)
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        #expect(try decoder.decode(ArchivePage.self, from: Data(json.utf8)) == page)
    }

    @Test func aTiersLoadNeedsNoKeyOrDestinationButARestoreLoadDoes() throws {
        let json = Data(#"{"tiers": [{"kind": "directory", "path": "cache"}]}"#.utf8)
        let tiers = try CacheTiersConfig(json: json, baseDirectory: "/srv", purpose: .tiers)
        #expect(tiers.keyInputs == nil)
        #expect(tiers.destination == nil)
        #expect(tiers.tiers.map(\.name) == ["directory"])
        #expect(throws: ConfigError.self) { try tiers.cacheKey() }
        do {
            _ = try CacheTiersConfig(json: json, baseDirectory: "/srv")
            Issue.record("a restore load accepted a config without key")
        } catch {
            #expect(error.description.contains("key: required"))
        }
    }
}
