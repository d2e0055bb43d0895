import AsyncHTTPClient
import CacheTiers
import CacheTiersServer
import CacheTiersTesting
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import SystemPackage
import Testing

/// What replication needs, for the suites below.
enum Replication {
    static let logger = PeerHarness.quietLogger

    /// Waits until `condition` holds, checking every 100 ms; fails after `limit` (a bound
    /// so a broken replication ends the test, not an assertion on how long it took).
    static func eventually(
        _ what: String, within limit: Duration = .seconds(90), _ condition: () async throws -> Bool
    ) async throws {
        let deadline = ContinuousClock.now + limit
        while ContinuousClock.now < deadline {
            if (try? await condition()) == true { return }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw FixtureError("gave up waiting: \(what)")
    }

    /// Packs a sample tree and publishes it to the cache master at `url` with a PUT.
    @discardableResult
    static func publish(seed: Int, as key: CacheKey, to url: String, scratch: TemporaryDirectory) async throws -> PackedArchive {
        let archive = try await pack(seed: seed, as: key, scratch: scratch)
        let peer = VMPeerSource(configuration: .init(peers: [url], replicas: 1))
        defer { Task { try? await peer.shutdown() } }
        let outcome = try await peer.publish(archive, logger: logger)
        guard outcome == .published else { throw FixtureError("publishing \(key) answered \(outcome)") }
        return archive
    }

    static func pack(seed: Int, as key: CacheKey, scratch: TemporaryDirectory) async throws -> PackedArchive {
        let tree = scratch.path.appending("tree-\(key.rawValue)")
        _ = try SampleTree.write(to: tree, seed: seed, files: 12)
        let file = scratch.path.appending("\(key.rawValue)-\(UUID().uuidString.prefix(6)).tar.zst")
        let manifest = try await ArchivePacker().pack(tree, key: key, to: file, logger: logger)
        return PackedArchive(file: file, manifest: manifest)
    }

    /// A cache master in this process replicating to `targets`.
    static func master(root: FilePath, replicatingTo targets: [any CacheSink]) -> CacheMasterServer {
        var configuration = CacheMasterServer.Configuration(root: root, port: 0)
        configuration.replicationTargets = targets
        return CacheMasterServer(configuration: configuration, logger: logger)
    }
}

@Suite struct MasterReplicationTests {
    @Test(.needsGCSEmulator) func aPublishToMasterAAppearsOnMasterBAndInGCS() async throws {
        try await GCSHarness.with { gcs in
            try await PeerHarness.with { b in
                let scratch = try TemporaryDirectory(prefix: "replicate")
                defer { scratch.remove() }
                let masterB = VMPeerSource(name: "b", configuration: .init(peers: [b.url], replicas: 1))
                let bucket = gcs.source(name: "gcs")
                let a = Replication.master(root: scratch.path.appending("a"), replicatingTo: [masterB, bucket])
                let url = try await a.start()
                let key = try CacheKey("node-modules-replicated")
                let archive = try await Replication.publish(seed: 3, as: key, to: url, scratch: scratch)

                try await Replication.eventually("the archive on B and in GCS") {
                    let onB = try await masterB.contains(key, logger: Replication.logger)
                    let inGCS = try await bucket.contains(key, logger: Replication.logger)
                    return onB && inGCS
                }
                // Whole, as published: each fetch checks size and SHA-256 against the manifest.
                let fromB = try await masterB.fetchArchive(key, to: scratch.path.appending("from-b"), logger: Replication.logger)
                let fromGCS = try await bucket.fetchArchive(key, to: scratch.path.appending("from-gcs"), logger: Replication.logger)
                #expect(fromB?.archiveSHA256 == archive.manifest.archiveSHA256)
                #expect(fromGCS?.archiveSHA256 == archive.manifest.archiveSHA256)
                try await Replication.eventually("an empty backlog") {
                    a.metricsText().contains("cachetiers_replication_backlog{target=\"b\"} 0")
                }
                let metrics = a.metricsText()
                #expect(metrics.contains("cachetiers_replication_copies_total{target=\"b\",outcome=\"published\"} 1"))
                #expect(metrics.contains("cachetiers_replication_copies_total{target=\"gcs\",outcome=\"published\"} 1"))
                #expect(metrics.contains("cachetiers_replication_failures_total{target=\"gcs\"} 0"))
                #expect(metrics.contains("cachetiers_replication_bytes_total{target=\"b\"} \(archive.manifest.archiveSize)"))
                await a.stop()
                try await masterB.shutdown()
            }
        }
    }

    @Test(.needsGCSEmulator) func withTheMasterDownAKeyOnlyEverPublishedToItIsServedByGCS() async throws {
        try await GCSHarness.with { gcs in
            let scratch = try TemporaryDirectory(prefix: "replicate")
            defer { scratch.remove() }
            let bucket = gcs.source(name: "gcs")
            let a = Replication.master(root: scratch.path.appending("a"), replicatingTo: [bucket])
            let url = try await a.start()
            let key = try CacheKey("node-modules-fallback")
            try await Replication.publish(seed: 5, as: key, to: url, scratch: scratch)
            try await Replication.eventually("the archive in GCS") { try await bucket.contains(key, logger: Replication.logger) }
            await a.stop()

            let peer = VMPeerSource(name: "peer", configuration: .init(peers: [url]))
            let chain = TierChain(
                tiers: [.init(peer), .init(gcs.source(name: "gcs"))],
                configuration: .init(writeBack: .disabled, retryBudget: RetryBudget()), logger: Replication.logger
            )
            let destination = scratch.path.appending("workspace/node_modules")
            try FileManager.default.createDirectory(atPath: destination.removingLastComponent().string, withIntermediateDirectories: true)
            let report = try await chain.restore(key, into: destination)
            try await peer.shutdown()
            #expect(report.servedBy == "gcs")
            #expect(report.attempts.first?.tier == "peer")
            let expected = scratch.path.appending("tree-\(key.rawValue)")
            #expect(try TreeSnapshot(of: destination).differences(from: TreeSnapshot(of: expected), comparingTimes: true) == [])
        }
    }

    @Test func aMasterKilledMidReplicationResumesAfterItsRestart() async throws {
        try await PeerHarness.with { b in
            let scratch = try TemporaryDirectory(prefix: "replicate-kill")
            defer { scratch.remove() }
            // B answers nothing for a minute: A's copy is in flight when it is killed.
            let proxy = try FaultInjectingProxy(upstreamPort: b.port, fault: .delayFirstByte(.seconds(60)))
            defer { proxy.stop() }
            let config = scratch.path.appending("replicate.json")
            try Data(#"{"tiers": [{"kind": "peer", "name": "b", "urls": ["\#(proxy.url)"]}]}"#.utf8)
                .write(to: URL(fileURLWithPath: config.string))
            let root = scratch.path.appending("a")
            let arguments = ["--root", root.string, "--replicate-to", config.string]
            let key = try CacheKey("node-modules-interrupted")
            let masterB = VMPeerSource(name: "b", configuration: .init(peers: [b.url], replicas: 1))

            // Starting, killing and stopping the process block: off the cooperative pool.
            let first = try await Fixtures.offThePool { try ServeProcess(arguments) }
            let archive = try await Replication.publish(seed: 7, as: key, to: first.url, scratch: scratch)
            try await Replication.eventually("A's copy to reach B's proxy") { proxy.connectionsAccepted > 0 }
            try await Fixtures.offThePool { first.kill9() }
            #expect(try await masterB.contains(key, logger: Replication.logger) == false)

            proxy.setFault(.none)
            let second = try await Fixtures.offThePool { try ServeProcess(arguments) }
            try await Replication.eventually("the queued copy to reach B after the restart") {
                try await masterB.contains(key, logger: Replication.logger)
            }
            let copy = try await masterB.fetchArchive(key, to: scratch.path.appending("from-b"), logger: Replication.logger)
            #expect(copy?.archiveSHA256 == archive.manifest.archiveSHA256)
            #expect(copy?.archiveSize == archive.manifest.archiveSize)
            let metrics = try await second.send(.GET, "/metrics").body
            #expect(metrics.contains("cachetiers_replication_copies_total{target=\"b\",outcome=\"published\"} 1"))
            let status = try await Fixtures.offThePool { second.stop() }
            #expect(status == 0)
            try await masterB.shutdown()
        }
    }

    @Test func aFailedCopyIsCountedAndRetriedUntilItArrives() async throws {
        try await PeerHarness.with { b in
            let scratch = try TemporaryDirectory(prefix: "replicate-retry")
            defer { scratch.remove() }
            // B's first four connections are cut before a byte of its answer: the first copy fails.
            let proxy = try FaultInjectingProxy(upstreamPort: b.port, fault: .cut(afterBytes: 0, connections: 4))
            defer { proxy.stop() }
            let masterB = VMPeerSource(name: "b", configuration: .init(peers: [proxy.url], replicas: 1))
            let a = Replication.master(root: scratch.path.appending("a"), replicatingTo: [masterB])
            let url = try await a.start()
            let key = try CacheKey("node-modules-retried")
            let archive = try await Replication.publish(seed: 8, as: key, to: url, scratch: scratch)
            try await Replication.eventually("the retried copy on B") {
                ArchiveFolder(root: b.scratch.path.appending("root")).contains(key)
            }
            try await Replication.eventually("an empty backlog") {
                a.metricsText().contains("cachetiers_replication_backlog{target=\"b\"} 0")
            }
            // A cut answer may come after B stored it: the retry then finds it there.
            #expect(!a.metricsText().contains("cachetiers_replication_failures_total{target=\"b\"} 0"))
            let copy = try await masterB.fetchArchive(key, to: scratch.path.appending("from-b"), logger: Replication.logger)
            #expect(copy?.archiveSHA256 == archive.manifest.archiveSHA256)
            await a.stop()
            try await masterB.shutdown()
        }
    }

    @Test func aQueuedCopyOfAnArchiveThatIsGoneIsDropped() async throws {
        let scratch = try TemporaryDirectory(prefix: "replicate-gone")
        defer { scratch.remove() }
        // Nothing listens there: every copy fails until the archive is gone.
        let nowhere = VMPeerSource(name: "b", configuration: .init(peers: ["http://127.0.0.1:\(try LoopbackPort.free())"]))
        let root = scratch.path.appending("a")
        let a = Replication.master(root: root, replicatingTo: [nowhere])
        let url = try await a.start()
        let key = try CacheKey("node-modules-evicted")
        try await Replication.publish(seed: 9, as: key, to: url, scratch: scratch)
        try await Replication.eventually("a failed copy") {
            !a.metricsText().contains("cachetiers_replication_failures_total{target=\"b\"} 0")
        }
        #expect(a.metricsText().contains("cachetiers_replication_backlog{target=\"b\"} 1"))
        let folder = ArchiveFolder(root: root)
        try FileManager.default.removeItem(atPath: folder.manifestPath(for: key).string)
        try FileManager.default.removeItem(atPath: folder.archivePath(for: key).string)
        try await Replication.eventually("the row dropped") {
            a.metricsText().contains("cachetiers_replication_backlog{target=\"b\"} 0")
        }
        #expect(a.metricsText().contains("cachetiers_replication_copies_total{target=\"b\",outcome=\"published\"} 0"))
        await a.stop()
        try await nowhere.shutdown()
    }

    @Test func serveRefusesAReplicationTierThatIsNotAnInventory() async throws {
        let scratch = try TemporaryDirectory(prefix: "replicate-usage")
        defer { scratch.remove() }
        let config = scratch.path.appending("replicate.json")
        try Data(#"{"tiers": [{"kind": "install", "name": "npm", "command": ["npm", "ci"], "produces": "node_modules"}]}"#.utf8)
            .write(to: URL(fileURLWithPath: config.string))
        let result = try await ServeProcess.failingToStart([
            "--root", scratch.path.appending("a").string, "--replicate-to", config.string, "--replicate-tier", "npm",
        ])
        #expect(result.status == 2)
        #expect(result.stderr.contains("--replicate-tier npm: a fresh install holds no archives"))
        #expect(result.stderr.split(separator: "\n").count == 1)
    }
}

@Suite struct ReplicaTests {
    @Test func aWriteBackReachesExactlyTheKeysTopTwoAndRestoreFallsToTheSecond() async throws {
        try await PeerHarness.with { one in
            try await PeerHarness.with { two in
                try await PeerHarness.with { three in
                    let scratch = try TemporaryDirectory(prefix: "replicas")
                    defer { scratch.remove() }
                    let masters = [one, two, three]
                    let peer = VMPeerSource(
                        name: "peer", configuration: .init(peers: masters.map(\.url), selection: .rendezvous, replicas: 2)
                    )
                    let key = try CacheKey("node-modules-top-two")
                    let local = DirectorySource(name: "local", root: scratch.path.appending("local"))
                    let seeded = try await Replication.pack(seed: 11, as: key, scratch: scratch)
                    #expect(try await local.publish(seeded, logger: Replication.logger) == .published)
                    let chain = TierChain(
                        tiers: [.init(peer), .init(local)],
                        configuration: .init(writeBack: .init(waitForCompletion: true), retryBudget: RetryBudget()),
                        logger: Replication.logger
                    )
                    let destination = scratch.path.appending("workspace/node_modules")
                    try FileManager.default.createDirectory(
                        atPath: destination.removingLastComponent().string, withIntermediateDirectories: true
                    )
                    let first = try await chain.restore(key, into: destination)
                    #expect(first.servedBy == "local")
                    #expect(first.writeBack == [WriteBackRecord(tier: "peer", outcome: .published)])

                    let order = peer.peers(for: key)
                    let holders = masters.filter { ArchiveFolder(root: $0.scratch.path.appending("root")).contains(key) }.map(\.url)
                    #expect(Set(holders) == Set(order.prefix(2)))
                    #expect(try await peer.contains(key, logger: Replication.logger))

                    // The key's first master dies: the second serves it.
                    await masters.first { $0.url == order[0] }!.server.stop()
                    try FileManager.default.removeItem(atPath: destination.string)
                    let peerOnly = TierChain(
                        tiers: [.init(peer)], configuration: .init(writeBack: .disabled, retryBudget: RetryBudget()),
                        logger: Replication.logger
                    )
                    let second = try await peerOnly.restore(key, into: destination)
                    #expect(second.servedBy == "peer")
                    let expected = scratch.path.appending("tree-\(key.rawValue)")
                    #expect(try TreeSnapshot(of: destination).differences(from: TreeSnapshot(of: expected), comparingTimes: true) == [])
                    // The reachable top two are now the second and the third, which lacks it.
                    #expect(try await peer.contains(key, logger: Replication.logger) == false)
                    try await peer.shutdown()
                }
            }
        }
    }

    @Test func aTiersOnlyConfigReadsReplicasAndRefusesZero() throws {
        func load(_ replicas: Int) throws(ConfigError) -> CacheTiersConfig {
            try CacheTiersConfig(
                json: Data(#"{"tiers": [{"kind": "peer", "urls": ["http://a:1", "http://b:1"], "replicas": \#(replicas)}]}"#.utf8),
                baseDirectory: FilePath("/tmp"), purpose: .tiers
            )
        }
        guard case .peer(let peer) = try load(3).tiers[0].source else { throw FixtureError("not a peer tier") }
        #expect(peer.replicas == 2)
        #expect(throws: ConfigError.self) { try load(0) }
        #expect(throws: ConfigError.self) {
            try CacheTiersConfig(json: Data(#"{"tiers": [{"kind": "directory", "path": "d"}]}"#.utf8), baseDirectory: FilePath("/tmp"))
        }
    }

    @Test func replicasAreClampedToTheNumberOfMasters() {
        #expect(VMPeerSource.Configuration(peers: ["http://a:1"]).replicas == 1)
        #expect(VMPeerSource.Configuration(peers: ["http://a:1", "http://b:1", "http://c:1"]).replicas == 2)
        #expect(VMPeerSource.Configuration(peers: ["http://a:1", "http://b:1"], replicas: 9).replicas == 2)
        #expect(VMPeerSource.Configuration(peers: ["http://a:1", "http://b:1"], replicas: 0).replicas == 1)
    }
}

@Suite struct InventoryTests {
    /// A cache master's `GET /v1/caches` over a fixed set of keys, as the route pages it.
    static func listingRouter(_ keys: [String]) -> Router<BasicRequestContext> {
        let router = Router(context: BasicRequestContext.self)
        router.get("/v1/caches") { request, _ -> Response in
            let limit = request.uri.queryParameters.get("limit").flatMap(Int.init) ?? ArchivePage.defaultLimit
            let after: String? = request.uri.queryParameters.get("after").map { String($0) }
            let remaining = keys.sorted().filter { after == nil || $0 > after! }
            let listed = remaining.prefix(limit)
            let page = ArchivePage(
                archives: try listed.map {
                    ArchiveListing(key: try CacheKey($0), size: 10, sha256: nil, createdAt: Date(timeIntervalSince1970: 0))
                },
                next: remaining.count > limit ? try CacheKey(listed.last!) : nil
            )
            let encoder = JSONEncoder()
            encoder.dateEncodingStrategy = .iso8601
            return Response(
                status: .ok, headers: [.contentType: "application/json"],
                body: .init(byteBuffer: ByteBuffer(bytes: try encoder.encode(page)))
            )
        }
        return router
    }

    @Test func aPeerTierListsTheUnionOfItsMastersAndLeavesOutOneThatIsDown() async throws {
        let down = "http://127.0.0.1:\(try LoopbackPort.free())"
        try await FakeHTTPServer.with(Self.listingRouter(["a", "c", "e"])) { first in
            try await FakeHTTPServer.with(Self.listingRouter(["b", "c", "f"])) { second in
                let peer = VMPeerSource(name: "peer", configuration: .init(peers: [first, down, second]))
                var keys: [String] = []
                var after: CacheKey?
                var pages = 0
                repeat {
                    let page = try await peer.listArchives(after: after, limit: 2, logger: Replication.logger)
                    #expect(page.archives.count <= 2)
                    keys += page.archives.map(\.key.rawValue)
                    after = page.next
                    pages += 1
                } while after != nil && pages < 10
                try await peer.shutdown()
                #expect(keys == ["a", "b", "c", "e", "f"])
            }
        }
    }

    @Test func aPeerTierWhoseMastersAreAllDownCannotList() async throws {
        let peer = VMPeerSource(name: "peer", configuration: .init(peers: ["http://127.0.0.1:\(try LoopbackPort.free())"]))
        await #expect(throws: CacheTierError.self) { try await peer.listArchives(after: nil, limit: 10, logger: Replication.logger) }
        try await peer.shutdown()
    }

    @Test func aFetchFromAMasterIsTheArchiveAndAMissIsNothing() async throws {
        try await PeerHarness.with { master in
            let scratch = try TemporaryDirectory(prefix: "fetch")
            defer { scratch.remove() }
            let key = try CacheKey("node-modules-fetched")
            let archive = try await Replication.publish(seed: 2, as: key, to: master.url, scratch: scratch)
            let peer = VMPeerSource(name: "peer", configuration: .init(peers: [master.url]))
            let file = scratch.path.appending("copy.tar.zst")
            let manifest = try await peer.fetchArchive(key, to: file, logger: Replication.logger)
            #expect(manifest == archive.manifest)
            #expect(FileManager.default.contentsEqual(atPath: file.string, andPath: archive.file.string))
            let missing = scratch.path.appending("missing.tar.zst")
            #expect(try await peer.fetchArchive(try CacheKey("absent"), to: missing, logger: Replication.logger) == nil)
            #expect(!FileManager.default.fileExists(atPath: missing.string))
            try await peer.shutdown()
        }
    }

    @Test func aDamagedArchiveIsNotFetchedAndLeavesNothing() async throws {
        let scratch = try TemporaryDirectory(prefix: "fetch-damaged")
        defer { scratch.remove() }
        let directory = DirectorySource(name: "local", root: scratch.path.appending("local"))
        let key = try CacheKey("node-modules-damaged")
        let archive = try await Replication.pack(seed: 4, as: key, scratch: scratch)
        #expect(try await directory.publish(archive, logger: Replication.logger) == .published)
        // Bit rot in place: same size, other bytes.
        let handle = try #require(FileHandle(forUpdatingAtPath: directory.archivePath(for: key).string))
        try handle.seek(toOffset: 100)
        try handle.write(contentsOf: Data([0xFF, 0x00, 0xFF]))
        try handle.close()
        let out = try scratch.makeDirectory("out")
        await #expect(throws: CacheTierError.self) {
            try await directory.fetchArchive(key, to: out.appending("copy.tar.zst"), logger: Replication.logger)
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: out.string) == [])
    }
}

@Suite struct TierSyncTests {
    @Test(.needsGCSEmulator) func aDirectorySyncsToGCSOnceAndADryRunCopiesNothing() async throws {
        try await GCSHarness.with { gcs in
            let scratch = try TemporaryDirectory(prefix: "sync")
            defer { scratch.remove() }
            let directory = DirectorySource(name: "local", root: scratch.path.appending("local"))
            let bucket = gcs.source(name: "gcs")
            var archives: [PackedArchive] = []
            // `a.b` and `a` sort one way as keys and the other as object names.
            for (seed, name) in ["a", "a.b", "node-modules-3", "z"].enumerated() {
                let archive = try await Replication.pack(seed: seed + 20, as: try CacheKey(name), scratch: scratch)
                #expect(try await directory.publish(archive, logger: Replication.logger) == .published)
                archives.append(archive)
            }
            #expect(try await bucket.publish(archives[1], logger: Replication.logger) == .published)
            let scratchFolder = try scratch.makeDirectory("scratch")

            let first = try await TierSync(from: directory, to: [bucket], options: .init(scratch: scratchFolder)).run(logger: Replication.logger)
            #expect(first.copied == 3)
            #expect(first.alreadyThere == 1)
            #expect(first.failed == 0)
            #expect(first.bytes == [0, 2, 3].reduce(Int64(0)) { $0 + archives[$1].manifest.archiveSize })
            let listed = try await bucket.listArchives(after: nil, limit: 100, logger: Replication.logger)
            #expect(listed.archives.map(\.key.rawValue) == ["a", "a.b", "node-modules-3", "z"])
            #expect(listed.archives.map(\.sha256) == archives.map(\.manifest.archiveSHA256))
            // Paged: the GCS listing orders by key, not by object name.
            let paged = try await bucket.listArchives(after: try CacheKey("a"), limit: 2, logger: Replication.logger)
            #expect(paged.archives.map(\.key.rawValue) == ["a.b", "node-modules-3"])
            #expect(paged.next?.rawValue == "node-modules-3")

            let second = try await TierSync(from: directory, to: [bucket], options: .init(scratch: scratchFolder)).run(logger: Replication.logger)
            #expect(second.copied == 0)
            #expect(second.alreadyThere == 4)

            let late = try await Replication.pack(seed: 40, as: try CacheKey("node-modules-late"), scratch: scratch)
            #expect(try await directory.publish(late, logger: Replication.logger) == .published)
            let dry = try await TierSync(from: directory, to: [bucket], options: .init(dryRun: true, scratch: scratchFolder))
                .run(logger: Replication.logger)
            #expect(dry.planned == 1)
            #expect(dry.plannedBytes == late.manifest.archiveSize)
            #expect(dry.copied == 0)
            #expect(try await bucket.contains(late.key, logger: Replication.logger) == false)
            #expect(try FileManager.default.contentsOfDirectory(atPath: scratchFolder.string) == [])
        }
    }

    @Test func aMasterSyncsToADirectoryOnce() async throws {
        try await PeerHarness.with { master in
            let scratch = try TemporaryDirectory(prefix: "sync-master")
            defer { scratch.remove() }
            var archives: [PackedArchive] = []
            for (seed, name) in ["beta", "alpha", "gamma"].enumerated() {
                archives.append(try await Replication.publish(seed: seed + 30, as: try CacheKey(name), to: master.url, scratch: scratch))
            }
            // The master's own GET /v1/caches lists them, its GET /v1/caches/KEY serves them.
            let peer = VMPeerSource(name: "master", configuration: .init(peers: [master.url]))
            let local = DirectorySource(name: "local", root: scratch.path.appending("local"))
            let scratchFolder = try scratch.makeDirectory("scratch")
            let first = try await TierSync(from: peer, to: [local], options: .init(scratch: scratchFolder)).run(logger: Replication.logger)
            let second = try await TierSync(from: peer, to: [local], options: .init(scratch: scratchFolder)).run(logger: Replication.logger)
            #expect((first.copied, first.failed, second.copied, second.alreadyThere) == (3, 0, 0, 3), "\(first.failures)")
            for archive in archives {
                let listed = try await local.listArchives(after: nil, limit: 10, logger: Replication.logger)
                let copy = try #require(listed.archives.first { $0.key == archive.key })
                #expect(copy.sha256 == archive.manifest.archiveSHA256)
            }
            // A copy read through the route is a hit on the master, as a restore's read is;
            // listing is not, so the second sync (which only listed) added none.
            let listing = try await peer.listArchives(after: nil, limit: 10, logger: Replication.logger)
            try await peer.shutdown()
            #expect(listing.archives.map(\.key.rawValue) == ["alpha", "beta", "gamma"])
            #expect(listing.archives.map(\.hits) == [1, 1, 1])
        }
    }

    @Test func twoDirectoriesSyncBothWaysAndEndAlike() async throws {
        let scratch = try TemporaryDirectory(prefix: "sync-dirs")
        defer { scratch.remove() }
        let left = DirectorySource(name: "left", root: scratch.path.appending("left"))
        let right = DirectorySource(name: "right", root: scratch.path.appending("right"))
        let a = try await Replication.pack(seed: 1, as: try CacheKey("alpha"), scratch: scratch)
        let b = try await Replication.pack(seed: 2, as: try CacheKey("beta"), scratch: scratch)
        _ = try await left.publish(a, logger: Replication.logger)
        _ = try await right.publish(b, logger: Replication.logger)
        let scratchFolder = try scratch.makeDirectory("scratch")
        let there = try await TierSync(from: left, to: [right], options: .init(scratch: scratchFolder)).run(logger: Replication.logger)
        let back = try await TierSync(from: right, to: [left], options: .init(scratch: scratchFolder)).run(logger: Replication.logger)
        #expect((there.copied, there.alreadyThere, back.copied, back.alreadyThere) == (1, 0, 1, 1))
        for source in [left, right] {
            #expect(try await source.listArchives(after: nil, limit: 10, logger: Replication.logger).archives.map(\.key.rawValue) == ["alpha", "beta"])
        }
    }
}

@Suite struct SyncCommandTests {
    @Test(.needsGCSEmulator) func aCorruptObjectIsCountedFailedAndNotCopied() async throws {
        try await GCSHarness.with { gcs in
            let scratch = try TemporaryDirectory(prefix: "sync-cli")
            defer { scratch.remove() }
            let bucket = gcs.source(name: "gcs")
            let good = try await Replication.pack(seed: 1, as: try CacheKey("node-modules-good"), scratch: scratch)
            let bad = try await Replication.pack(seed: 2, as: try CacheKey("node-modules-bad"), scratch: scratch)
            #expect(try await bucket.publish(good, logger: Replication.logger) == .published)
            // The object's bytes are not its manifest's (a byte flipped before upload).
            var bytes = try Data(contentsOf: URL(fileURLWithPath: bad.file.string))
            bytes[200] ^= 0xFF
            try bytes.write(to: URL(fileURLWithPath: bad.file.string))
            #expect(try await bucket.publish(bad, logger: Replication.logger) == .published)

            let local = scratch.path.appending("local")
            let config = scratch.path.appending("sync.json")
            try Data(
                #"""
                {"tiers": [
                  {"kind": "gcs", "name": "gcs", "bucket": "\#(gcs.bucket)", "prefix": "caches/", "endpoint": "\#(gcs.emulator.url)"},
                  {"kind": "directory", "name": "local", "path": "\#(local.string)"},
                  {"kind": "install", "name": "npm", "command": ["npm", "ci"], "produces": "node_modules"}
                ]}
                """#.utf8
            ).write(to: URL(fileURLWithPath: config.string))
            let scratchFolder = try scratch.makeDirectory("scratch")
            let arguments = ["sync", "--config", config.string, "--scratch", scratchFolder.string]

            let dry = try await Fixtures.cli(arguments + ["--dry-run"])
            #expect(dry.status == 0)
            #expect(dry.stdout.contains("would copy 2"))
            #expect(!FileManager.default.fileExists(atPath: local.appending("node-modules-good.tar.zst").string))

            let first = try await Fixtures.cli(arguments + ["--json"])
            #expect(first.status == 1)
            let summary = try JSONDecoder().decode(TierSync.Summary.self, from: Data(first.stdout.utf8))
            #expect((summary.copied, summary.failed) == (1, 1))
            #expect(summary.failures.first?.key.rawValue == "node-modules-bad")
            #expect(first.stderr.contains("copying node-modules-good"))
            #expect(first.stderr.contains("failed to copy node-modules-bad to local"))
            #expect(first.stderr.contains("SHA-256"))
            let names = try FileManager.default.contentsOfDirectory(atPath: local.string).sorted()
            #expect(names == ["node-modules-good.tar.zst", "node-modules-good.tar.zst.manifest.json"])
            #expect(try FileManager.default.contentsOfDirectory(atPath: scratchFolder.string) == ["cachetiers-sync.lock"])

            let again = try await Fixtures.cli(arguments + ["--to", "local"])
            #expect(again.status == 1)
            #expect(again.stdout.contains("copied 0"))
            #expect(again.stdout.contains("already there 1"))

            let install = try await Fixtures.cli(["sync", "--config", config.string, "--from", "npm"])
            #expect(install.status == 2)
            #expect(install.stderr.contains("--from npm: a fresh install holds no archives"))
        }
    }

    @Test func aSecondSyncWhileOneRunsSaysSoAndDoesNothing() async throws {
        let scratch = try TemporaryDirectory(prefix: "sync-lock")
        defer { scratch.remove() }
        let config = scratch.path.appending("sync.json")
        try Data(
            #"{"tiers": [{"kind": "directory", "name": "one", "path": "one"}, {"kind": "directory", "name": "two", "path": "two"}]}"#.utf8
        ).write(to: URL(fileURLWithPath: config.string))
        let archive = try await Replication.pack(seed: 1, as: try CacheKey("held"), scratch: scratch)
        _ = try await DirectorySource(root: scratch.path.appending("one")).publish(archive, logger: Replication.logger)
        let lockFile = scratch.path.appending("cachetiers-sync.lock")
        let descriptor = open(lockFile.string, O_RDWR | O_CREAT, 0o644)
        #expect(flock(descriptor, LOCK_EX) == 0)
        let held = try await Fixtures.cli(["sync", "--config", config.string, "--scratch", scratch.path.string])
        close(descriptor)
        #expect(held.status == 0)
        #expect(held.stderr.contains("another sync is running"))
        #expect(!FileManager.default.fileExists(atPath: scratch.path.appending("two/held.tar.zst").string))

        let free = try await Fixtures.cli(["sync", "--config", config.string, "--scratch", scratch.path.string])
        #expect(free.status == 0)
        #expect(free.stdout.contains("sync from one: copied 1"))
        #expect(FileManager.default.fileExists(atPath: scratch.path.appending("two/held.tar.zst").string))
    }
}
