import CacheTiers
import CacheTiersServer
import CacheTiersTesting
import Foundation
import Logging
import NIOHTTP1
import SystemPackage
import Testing

/// The peer tier end to end: a real cache master on loopback, the real client, real faults.
@Suite(.serialized) struct VMPeerSourceTests {
    let logger = PeerHarness.quietLogger

    func chain(_ tiers: [TierChain.Tier]) -> TierChain {
        TierChain(
            tiers: tiers,
            configuration: .init(deadline: .seconds(120), writeBack: .disabled, retryBudget: RetryBudget()),
            logger: logger
        )
    }

    @Test func aCorpusRestoresIdenticallyFromThePeer() async throws {
        try await PeerHarness.with { peer in
            let tree = try await Fixtures.makeCorpus(in: peer.scratch.path.appending("corpus"), files: 500, seed: 4)
            let key = try CacheKey("node-modules-peer")
            let manifest = try await peer.publish(tree, as: key)
            let source = VMPeerSource(configuration: .init(peers: [peer.url]))
            defer { Task { try? await source.shutdown() } }
            let destination = peer.scratch.path.appending("restored")
            let report = try await chain([.init(source)]).restore(key, into: destination)
            #expect(report.servedBy == "peer")
            #expect(report.bytesTransferred == manifest.archiveSize)
            #expect(try TreeSnapshot(of: destination).differences(from: TreeSnapshot(of: tree), comparingTimes: true) == [])
        }
    }

    @Test func conforms() async throws {
        try await PeerHarness.with { peer in
            struct Subject: ConformanceSubject {
                let peer: PeerHarness
                let client: VMPeerSource
                var source: any CacheSource { client }
                var sink: (any CacheSink)? { client }
                var packer: (any CachePacker)? { ArchivePacker() }
                func seed(_ key: CacheKey, from tree: FilePath) async throws {
                    try await peer.publish(tree, as: key)
                }
            }
            let client = VMPeerSource(configuration: .init(peers: [peer.url]))
            try await CacheSourceConformance(subject: Subject(peer: peer, client: client)).run()
            try await client.shutdown()
        }
    }

    @Test func aConnectionCutMidTransferResumesWithARangeRequest() async throws {
        try await PeerHarness.with { peer in
            let tree = try await Fixtures.makeCorpus(in: peer.scratch.path.appending("corpus"), files: 300, seed: 5)
            let key = try CacheKey("cut")
            let manifest = try await peer.publish(tree, as: key)
            let proxy = try FaultInjectingProxy(
                upstreamPort: peer.port, fault: .cut(afterBytes: Int(manifest.archiveSize / 3), connections: 2)
            )
            defer { proxy.stop() }
            let source = VMPeerSource(configuration: .init(peers: [proxy.url]))
            let destination = peer.scratch.path.appending("restored")
            let report = try await chain([.init(source, policy: .init(retry: .none))]).restore(key, into: destination)
            try await source.shutdown()
            #expect(report.attempts.map(\.outcome) == [.hit], "resumed within one attempt")
            #expect(proxy.connectionsAccepted == 3, "cut twice, so two resumes")
            #expect(peer.server.metricsText().contains(#"status="206""#))
            #expect(try TreeSnapshot(of: destination).differences(from: TreeSnapshot(of: tree)) == [])
        }
    }

    @Test func anArchiveReplacedBeforeTheResumeRestartsCleanly() async throws {
        try await PeerHarness.with { peer in
            let old = peer.scratch.path.appending("old")
            let new = peer.scratch.path.appending("new")
            try SampleTree.write(to: old, seed: 1, files: 300)
            try SampleTree.write(to: new, seed: 2, files: 300)
            let key = try CacheKey("replaced")
            let manifest = try await peer.publish(old, as: key)
            // Packed before the restore starts, so that only the upload has to land while the
            // proxy holds the resume: on a busy machine packing alone can outlast the hold.
            let file = peer.scratch.path.appending("new.tar.zst")
            let replacement = try await ArchivePacker().pack(new, key: key, to: file, logger: logger)
            let proxy = try FaultInjectingProxy(
                upstreamPort: peer.port, fault: .cutThenDelay(afterBytes: Int(manifest.archiveSize / 2), delay: .seconds(3))
            )
            defer { proxy.stop() }
            let source = VMPeerSource(configuration: .init(peers: [proxy.url]))
            let destination = peer.scratch.path.appending("restored")
            let restore = Task {
                try await chain([.init(source, policy: .init(retry: .init(maxAttempts: 2, initialDelay: .milliseconds(10))))])
                    .restore(key, into: destination)
            }
            // The cut happened and the resume is held at the proxy: replace the archive now.
            while proxy.connectionsAccepted < 2 { try await Task.sleep(for: .milliseconds(5)) }
            let put = try await peer.send(
                .PUT, "/v1/caches/replaced",
                headers: [("X-CacheTiers-Manifest", try replacement.jsonData().base64EncodedString())],
                body: [UInt8](try Data(contentsOf: URL(fileURLWithPath: file.string)))
            )
            #expect(put.status == 200)
            let report = try await restore.value
            try await source.shutdown()
            #expect(report.attempts.map(\.outcome) == [.error, .hit])
            #expect(report.attempts[0].error?.contains("changed during the download") == true)
            #expect(try TreeSnapshot(of: destination).differences(from: TreeSnapshot(of: new)) == [], "the new tree, never a mix")
        }
    }

    @Test func aFlippedByteIsCorruptAndTheNextTierServes() async throws {
        try await PeerHarness.with { peer in
            let tree = peer.scratch.path.appending("tree")
            try SampleTree.write(to: tree, files: 200)
            let key = try CacheKey("flipped")
            try await peer.publish(tree, as: key)
            let fallback = DirectorySource(name: "gcs", root: peer.scratch.path.appending("root"))  // same archives, no proxy
            let proxy = try FaultInjectingProxy(upstreamPort: peer.port, fault: .flipByte(atOffset: 20_000))
            defer { proxy.stop() }
            let source = VMPeerSource(configuration: .init(peers: [proxy.url]))
            let destination = peer.scratch.path.appending("workspace/node_modules")
            try SampleTree.write(to: destination, seed: 8, files: 3)
            let before = try TreeSnapshot(of: destination)

            let corruptOnly = chain([.init(source, policy: .init(retry: .none))])
            let failure = await #expect(throws: RestoreFailure.self) { try await corruptOnly.restore(key, into: destination) }
            #expect(failure?.report.attempts.map(\.outcome) == [.corrupt])
            #expect(try TreeSnapshot(of: destination).differences(from: before) == [], "destination untouched")

            try await source.shutdown()
            // A fresh client, so the request comes on a new connection the proxy damages again.
            let again = VMPeerSource(configuration: .init(peers: [proxy.url]))
            let report = try await chain([.init(again, policy: .init(retry: .none)), .init(fallback)]).restore(key, into: destination)
            try await again.shutdown()
            #expect(report.attempts.map(\.outcome) == [.corrupt, .hit])
            #expect(try TreeSnapshot(of: destination).differences(from: TreeSnapshot(of: tree)) == [])
        }
    }

    @Test func aTricklingPeerIsCaughtByStallDetection() async throws {
        try await PeerHarness.with { peer in
            let tree = peer.scratch.path.appending("tree")
            try SampleTree.write(to: tree, files: 100)
            let key = try CacheKey("trickle")
            try await peer.publish(tree, as: key)
            let fallback = DirectorySource(name: "gcs", root: peer.scratch.path.appending("root"))
            let proxy = try FaultInjectingProxy(upstreamPort: peer.port, fault: .trickle(afterBytes: 2000, interval: .seconds(3)))
            defer { proxy.stop() }
            let source = VMPeerSource(configuration: .init(peers: [proxy.url]))
            let policy = TierChain.TierPolicy(timeout: .seconds(60), stallTimeout: .milliseconds(800), retry: .none)
            let report = try await chain([.init(source, policy: policy), .init(fallback)])
                .restore(key, into: peer.scratch.path.appending("restored"))
            try await source.shutdown()
            #expect(report.attempts.map(\.outcome) == [.stalled, .hit])
            // One byte every 3 s: caught by the silence or by the throughput floor, whichever the window sees first.
            #expect(report.attempts[0].error?.contains("stalled: ") == true, "\(report.attempts[0].error ?? "")")
        }
    }

    @Test func aDownPeerFallsThroughWithinTheConnectTimeout() async throws {
        let scratch = try TemporaryDirectory(prefix: "down")
        defer { scratch.remove() }
        let tree = scratch.path.appending("tree")
        try SampleTree.write(to: tree)
        let key = try CacheKey("down")
        let fallback = DirectorySource(name: "gcs", root: scratch.path.appending("cache"))
        try await DirectorySourceTests.Subject(directory: fallback).seed(key, from: tree)
        // A port nothing listens on: bind one, then close it.
        let closed = try FaultInjectingProxy(upstreamPort: 9)
        let url = closed.url
        closed.stop()
        // A connect timeout far above what a refused connection takes, so a busy machine
        // cannot blur the two: waiting for it would also end in `timeout`, not `error`.
        let source = VMPeerSource(configuration: .init(peers: [url], connectTimeout: .seconds(30)))
        let report = try await chain([.init(source, policy: .init(retry: .none)), .init(fallback)])
            .restore(key, into: scratch.path.appending("restored"))
        try await source.shutdown()
        #expect(report.attempts.map(\.outcome) == [.error, .hit])
        #expect(report.attempts[0].error?.contains("cannot reach") == true)
        #expect(report.attempts[0].durationSeconds < 30, "a refused connection fails within the connect timeout")
    }

    @Test func manyConcurrentRestoresThroughOneSourceAllSucceed() async throws {
        try await PeerHarness.with { peer in
            let tree = peer.scratch.path.appending("tree")
            try SampleTree.write(to: tree, files: 30)
            let key = try CacheKey("popular")
            try await peer.publish(tree, as: key)
            let source = VMPeerSource(configuration: .init(peers: [peer.url], connectTimeout: .milliseconds(500)))
            let restores = chain([.init(source, policy: .init(retry: .none))])
            let reports = try await withThrowingTaskGroup(of: RestoreReport.self) { group in
                for index in 0..<24 {
                    group.addTask { try await restores.restore(key, into: peer.scratch.path.appending("dest-\(index)")) }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            try await source.shutdown()
            #expect(reports.count == 24)
            #expect(reports.allSatisfy { $0.servedBy == "peer" }, "more than AsyncHTTPClient's default 8 connections")
        }
    }

    @Test func aMissingKeyIsAMiss() async throws {
        try await PeerHarness.with { peer in
            let source = VMPeerSource(configuration: .init(peers: [peer.url]))
            let failure = await #expect(throws: RestoreFailure.self) {
                try await chain([.init(source)]).restore(CacheKey("absent"), into: peer.scratch.path.appending("x"))
            }
            try await source.shutdown()
            #expect(failure?.report.attempts.map(\.outcome) == [.miss])
        }
    }

    @Test(arguments: [nil, "wrong-token"])
    func aMissingOrWrongTokenIsUnauthorized(_ presented: String?) async throws {
        try await PeerHarness.with(token: "s3cret") { peer in
            let tree = peer.scratch.path.appending("tree")
            try SampleTree.write(to: tree)
            let key = try CacheKey("guarded")
            try await peer.publish(tree, as: key, token: "s3cret")
            let source = VMPeerSource(configuration: .init(peers: [peer.url], token: presented))
            let failure = await #expect(throws: RestoreFailure.self) {
                try await chain([.init(source)]).restore(key, into: peer.scratch.path.appending("x"))
            }
            try await source.shutdown()
            #expect(failure?.report.attempts.map(\.outcome) == [.unauthorized], "no retry")
            #expect(failure?.report.attempts.first?.error?.contains("401") == true)
            #expect(try await peer.send(.GET, "/healthz").status == 200, "health needs no token")
            #expect(try await peer.send(.GET, "/metrics").status == 401)
            #expect(try await peer.send(.GET, "/metrics", headers: [("Authorization", "Bearer s3cret")]).status == 200)
        }
    }

    @Test func rendezvousHashingSpreadsKeysAcrossPeers() throws {
        let peers = ["http://10.0.0.1:7420", "http://10.0.0.2:7420", "http://10.0.0.3:7420"]
        let source = VMPeerSource(configuration: .init(peers: peers, selection: .rendezvous))
        defer { Task { try? await source.shutdown() } }
        var firsts: [String: Int] = [:]
        for index in 0..<300 {
            let key = try CacheKey("key-\(index)")
            let order = source.peers(for: key)
            #expect(Set(order) == Set(peers))
            #expect(source.peers(for: key) == order, "stable for a key")
            firsts[order[0], default: 0] += 1
        }
        #expect(firsts.count == 3)
        #expect(firsts.values.allSatisfy { $0 > 60 }, "each peer leads for a fair share: \(firsts)")
    }
}
