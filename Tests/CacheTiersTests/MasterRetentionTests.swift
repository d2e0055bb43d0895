import AsyncHTTPClient
import CacheTiers
import CacheTiersServer
import CacheTiersTesting
import Foundation
import GRDB
import NIOHTTP1
import SystemPackage
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The cache master's retention, over real HTTP: what it evicts and when, what it never
/// evicts, what it refuses, and what it remembers across a restart.
@Suite(.serialized) struct MasterRetentionTests {
    static let none = RetentionAge(seconds: 0)

    func pack(_ peer: PeerHarness, _ key: String) async throws -> (FilePath, CacheManifest) {
        let tree = peer.scratch.path.appending("tree-\(key)")
        try SampleTree.write(to: tree, files: 20)
        let file = peer.scratch.path.appending("\(key).upload.tar.zst")
        return (file, try await ArchivePacker().pack(tree, key: try CacheKey(key), to: file, logger: PeerHarness.quietLogger))
    }

    func put(_ peer: PeerHarness, _ file: FilePath, _ manifest: CacheManifest) async throws -> (status: Int, headers: HTTPHeaders, body: [UInt8]) {
        try await peer.send(
            .PUT, "/v1/caches/\(manifest.key)", headers: [("X-CacheTiers-Manifest", try manifest.jsonData().base64EncodedString())],
            body: [UInt8](try Data(contentsOf: URL(fileURLWithPath: file.string)))
        )
    }

    func listing(_ peer: PeerHarness) async throws -> [String: ArchiveListing] {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        let page = try decoder.decode(ArchivePage.self, from: Data(try await peer.send(.GET, "/v1/caches").body))
        return Dictionary(uniqueKeysWithValues: page.archives.map { ($0.key.rawValue, $0) })
    }

    func metric(_ peer: PeerHarness, _ line: String) async throws -> Double? {
        let text = String(decoding: try await peer.send(.GET, "/metrics").body, as: UTF8.self)
        return text.split(separator: "\n").first { $0.hasPrefix(line + " ") }.flatMap { Double($0.split(separator: " ").last!) }
    }

    @Test func theLeastRecentlyServedGoesFirstByTheServersHitsNotAtime() async throws {
        let probe = try TemporaryDirectory(prefix: "packed")
        defer { probe.remove() }
        var packed: [(FilePath, CacheManifest)] = []
        for (index, key) in ["k1", "k2", "k3", "k4"].enumerated() {
            let tree = probe.path.appending("tree-\(key)")
            try SampleTree.write(to: tree, seed: index + 1, files: 20)
            let file = probe.path.appending("\(key).tar.zst")
            packed.append((file, try await ArchivePacker().pack(tree, key: try CacheKey(key), to: file, logger: PeerHarness.quietLogger)))
        }
        let sizes = packed.map(\.1.archiveSize)
        // Room for three of the four, whichever three.
        let limit = sizes.reduce(0, +) - sizes.min()! / 2
        #expect(sizes.max()! - sizes.min()! < sizes.min()! / 2, "the limit holds any three")
        try await PeerHarness.with(retention: RetentionPolicy(maxSize: StorageSize(bytes: limit), minAge: Self.none)) { peer in
            for (file, manifest) in packed.prefix(3) { #expect(try await put(peer, file, manifest).status == 201) }
            #expect(try await peer.send(.GET, "/v1/caches/k1").status == 200, "a hit")
            #expect(try await peer.send(.GET, "/v1/caches/k2", headers: [("Range", "bytes=10-")]).status == 206, "a resume: no hit")
            #expect(try await peer.send(.HEAD, "/v1/caches/k2").status == 200, "a HEAD: no hit")
            #expect(try await peer.send(.GET, "/v1/caches/k2/manifest").status == 200, "a manifest: no hit")
            #expect(try await peer.send(.GET, "/v1/caches/k3", headers: [("Range", "bytes=0-99")]).status == 206, "from byte 0: a hit")
            let before = try await listing(peer)
            #expect(before["k1"]?.hits == 1 && before["k1"]?.lastServedAt != nil)
            #expect(before["k2"]?.hits == 0 && before["k2"]?.lastServedAt == nil)
            #expect(before["k3"]?.hits == 1)
            // atime says k2 was read a moment ago and k1 decades ago: it is not what the master reads.
            let root = peer.server.configuration.root
            for (key, atime) in [("k1", 1), ("k2", Int(Date().timeIntervalSince1970) + 86_400)] {
                var times = [timespec(tv_sec: atime, tv_nsec: 0), timespec(tv_sec: Int(Date().timeIntervalSince1970), tv_nsec: 0)]
                #expect(utimensat(AT_FDCWD, root.appending("\(key).tar.zst").string, &times, 0) == 0)
            }

            #expect(try await put(peer, packed[3].0, packed[3].1).status == 201)
            let after = try await listing(peer)
            #expect(after.keys.sorted() == ["k1", "k3", "k4"], "k2, never served from byte 0, went first")
            #expect(!FileManager.default.fileExists(atPath: root.appending("k2.tar.zst").string))
            #expect(try await peer.send(.GET, "/v1/caches/k2").status == 404)
            #expect(try await metric(peer, #"cachetiers_server_evictions_total{reason="size"}"#) == 1)
            #expect(try await metric(peer, #"cachetiers_server_evictions_total{reason="age"}"#) == 0)
            #expect(try await metric(peer, "cachetiers_server_evicted_bytes_total") == Double(sizes[1]))
            #expect(try await metric(peer, "cachetiers_server_capacity_bytes") == Double(limit))
            #expect(try await metric(peer, "cachetiers_server_stored_archives") == 3)
            #expect(try await metric(peer, "cachetiers_server_stored_bytes") == Double(sizes[0] + sizes[2] + sizes[3]))
            #expect(try await metric(peer, "cachetiers_server_stored_bytes")! <= Double(limit))
        }
    }

    @Test func anArchiveBeingStreamedIsNotEvictedAndItsStreamCompletes() async throws {
        try await PeerHarness.with(retention: RetentionPolicy(maxSize: StorageSize(bytes: 60 << 20), minAge: Self.none)) { peer in
            // 24 MiB that do not compress: more than loopback buffers, so the stream waits on its reader.
            let tree = peer.scratch.path.appending("big")
            try SampleTree.write(to: tree, files: 5)
            var generator = SystemRandomNumberGenerator()
            let noise = (0..<(24 << 20) / 8).map { _ in generator.next() as UInt64 }
            try noise.withUnsafeBytes { try Data($0).write(to: URL(fileURLWithPath: tree.appending("native/big.node").string)) }
            let big = try await peer.publish(tree, as: try CacheKey("big"))
            let other = try await peer.publish(tree, as: try CacheKey("other"))

            // From byte 1, so no hit: "big" stays the least recently used, the first victim but for its stream.
            var request = HTTPClientRequest(url: peer.url + "/v1/caches/big")
            request.headers.add(name: "Range", value: "bytes=1-")
            let response = try await HTTPClient.shared.execute(request, timeout: .seconds(60))
            #expect(response.status == .partialContent)
            var body = response.body.makeAsyncIterator()
            var received = 0
            while received < 1 << 20, let chunk = try await body.next() { received += chunk.readableBytes }

            // A third 24 MiB archive needs one of the two gone: "other", since "big" is being streamed.
            #expect(try await listing(peer)["big"]?.hits == 0)
            let third = try await peer.publish(tree, as: try CacheKey("third"))
            let keys = try await listing(peer).keys.sorted()
            #expect(keys == ["big", "third"], "the streamed archive stayed, the idle one went")
            #expect(third.archiveSize == other.archiveSize)

            while let chunk = try await body.next() { received += chunk.readableBytes }
            #expect(Int64(received) == big.archiveSize - 1, "the stream ran to its end")
            #expect(FileManager.default.fileExists(atPath: peer.server.configuration.root.appending("big.tar.zst").string))
        }
    }

    @Test func aPublishThatCannotFitIs507BeforeItsBodyAndYoungArchivesStay() async throws {
        try await PeerHarness.with(retention: RetentionPolicy(maxSize: StorageSize(bytes: 1 << 20))) { peer in
            let (file, manifest) = try await pack(peer, "young")
            #expect(try await put(peer, file, manifest).status == 201)
            // Larger than the limit itself, said by the manifest: refused before a byte is read.
            var huge = manifest
            huge.key = try CacheKey("huge")
            huge.archiveSize = 2 << 20
            let refused = try await peer.send(
                .PUT, "/v1/caches/huge", headers: [("X-CacheTiers-Manifest", try huge.jsonData().base64EncodedString())], body: [1, 2, 3]
            )
            let line = String(decoding: refused.body, as: UTF8.self)
            #expect(refused.status == 507)
            #expect(line.contains("larger than the limit itself; raise --max-size") && line.filter { $0 == "\n" }.count == 1, "\(line)")
            // Fits the limit, but only with "young" gone, which the default --min-age of 1h protects.
            var second = manifest
            second.key = try CacheKey("second")
            second.archiveSize = (1 << 20) - manifest.archiveSize + 1
            let full = try await peer.send(
                .PUT, "/v1/caches/second", headers: [("X-CacheTiers-Manifest", try second.jsonData().base64EncodedString())], body: [1]
            )
            #expect(full.status == 507)
            #expect(String(decoding: full.body, as: UTF8.self).contains("younger than --min-age 1h"))
            #expect(try await listing(peer).keys.sorted() == ["young"])
            let scratch = try FileManager.default.contentsOfDirectory(atPath: peer.server.configuration.root.string)
            #expect(!scratch.contains { $0.contains("partial") }, "no scratch file was made")
        }
    }

    @Test func hitsPersistAcrossARestartAndUnusedArchivesAgeOutAtStart() async throws {
        let scratch = try TemporaryDirectory(prefix: "restart")
        defer { scratch.remove() }
        let root = scratch.path.appending("root")
        func serve<T>(_ policy: RetentionPolicy, _ body: (PeerHarness) async throws -> T) async throws -> T {
            let server = CacheMasterServer(configuration: .init(root: root, port: 0, retention: policy), logger: PeerHarness.quietLogger)
            let url = try await server.start()
            do {
                let value = try await body(PeerHarness(scratch: scratch, server: server, url: url))
                await server.stop()
                return value
            } catch {
                await server.stop()
                throw error
            }
        }
        let tree = scratch.path.appending("tree")
        try SampleTree.write(to: tree, files: 5)
        try await serve(RetentionPolicy()) { peer in
            try await peer.publish(tree, as: try CacheKey("kept"))
            try await peer.publish(tree, as: try CacheKey("stale"))
            for _ in 0..<2 { #expect(try await peer.send(.GET, "/v1/caches/kept").status == 200) }
        }
        // Both rows say "unused for 40 days" but "kept" was served, later: set its last hit to yesterday.
        let database = try DatabaseQueue(path: root.appending(".cachetiers/archives.sqlite").string)
        let day = 86_400.0
        let now = Date().timeIntervalSince1970
        try await database.write { db in
            try db.execute(sql: "UPDATE archive SET createdAt = ?", arguments: [now - 40 * day])
            try db.execute(sql: "UPDATE archive SET lastServedAt = ? WHERE key = 'kept'", arguments: [now - day])
        }
        try database.close()

        try await serve(RetentionPolicy(maxAgeUnused: try RetentionAge(parsing: "30d"))) { peer in
            let listed = try await listing(peer)
            #expect(listed.keys.sorted() == ["kept"], "stale (unused 40 days) went at start")
            #expect(listed["kept"]?.hits == 2, "the hits survived the restart")
            #expect(abs(listed["kept"]!.createdAt.timeIntervalSince1970 - (now - 40 * day)) < 2, "created is the index's")
            #expect(try await metric(peer, #"cachetiers_server_evictions_total{reason="age"}"#) == 1)
        }
    }
}

