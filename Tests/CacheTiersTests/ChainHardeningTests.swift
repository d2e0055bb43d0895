import CacheTiers
import CacheTiersServer
import CacheTiersTesting
import Foundation
import Logging
import SystemPackage
import Testing

/// The chain against peers that never finish: silent, dripping, or serving the wrong
/// key, on real servers over loopback.
@Suite(.serialized) struct ChainHardeningTests {
    let logger = PeerHarness.quietLogger

    func chain(_ tiers: [TierChain.Tier], writeBack: TierChain.WriteBack = .disabled) -> TierChain {
        TierChain(
            tiers: tiers,
            configuration: .init(deadline: .seconds(300), writeBack: writeBack, retryBudget: RetryBudget()),
            logger: logger
        )
    }

    /// A directory tier holding `key`, the fallback every test here ends on.
    func fallback(_ scratch: TemporaryDirectory, key: CacheKey) async throws -> (DirectorySource, FilePath) {
        let tree = scratch.path.appending("tree")
        try SampleTree.write(to: tree, files: 30)
        let directory = DirectorySource(name: "local", root: scratch.path.appending("cache"))
        try await DirectorySourceTests.Subject(directory: directory).seed(key, from: tree)
        return (directory, tree)
    }

    @Test func aDrippingPeerIsCutByTheThroughputFloorAfterOneWindowAndNotRetried() async throws {
        try await PeerHarness.with { peer in
            let key = try CacheKey("drip")
            let (local, tree) = try await fallback(peer.scratch, key: key)
            try await peer.publish(tree, as: key)
            // Headers and a little of the body, then one byte every 50 ms: 20 bytes/s, forever "making progress".
            let proxy = try FaultInjectingProxy(upstreamPort: peer.port, fault: .trickle(afterBytes: 4000, interval: .milliseconds(50)))
            defer { proxy.stop() }
            let source = VMPeerSource(configuration: .init(peers: [proxy.url]))
            // A 3 s window: long enough that the headers and first bytes arrive within it
            // on a busy machine, so what cuts the attempt is the floor, not silence.
            let policy = TierChain.TierPolicy(timeout: .seconds(120), stallTimeout: .seconds(3), retry: .init(maxAttempts: 3))
            let report = try await chain([.init(source, policy: policy), .init(local)])
                .restore(key, into: peer.scratch.path.appending("restored"))
            try await source.shutdown()
            #expect(report.attempts.map(\.outcome) == [.stalled, .hit], "one stalled attempt, not three timeouts of 120 s")
            #expect(report.attempts[0].error?.contains("under the floor of 16384 bytes/s") == true, "\(report.attempts[0].error ?? "")")
            #expect(report.servedBy == "local")
        }
    }

    @Test func aPeerThatAcceptsAndNeverAnswersCostsOneStallWindow() async throws {
        let scratch = try TemporaryDirectory(prefix: "blackhole")
        defer { scratch.remove() }
        let key = try CacheKey("silent")
        let (local, _) = try await fallback(scratch, key: key)
        let hole = try BlackHoleServer()
        let source = VMPeerSource(configuration: .init(peers: [hole.url]))
        let policy = TierChain.TierPolicy(timeout: .seconds(120), stallTimeout: .seconds(1), retry: .init(maxAttempts: 3))
        let report = try await chain([.init(source, policy: policy), .init(local)])
            .restore(key, into: scratch.path.appending("restored"))
        try await source.shutdown()
        #expect(report.attempts.map(\.outcome) == [.stalled, .hit], "one attempt on a dead peer, not three")
        #expect(report.attempts[0].error?.contains("no progress") == true)
    }

    @Test func aPeerServingAnotherKeysArchiveIsNeverPromoted() async throws {
        try await PeerHarness.with { peer in
            let wanted = try CacheKey("wanted")
            let other = try CacheKey("other")
            let otherTree = peer.scratch.path.appending("other-tree")
            try SampleTree.write(to: otherTree, seed: 9, files: 20)
            try await peer.publish(otherTree, as: other)
            // A confused master: the files of `other` under the name of `wanted`, with
            // ETag and Content-Length consistent with that archive.
            let root = peer.scratch.path.appending("root")
            for suffix in [".tar.zst", ".tar.zst.manifest.json"] {
                try FileManager.default.copyItem(atPath: root.appending("other\(suffix)").string, toPath: root.appending("wanted\(suffix)").string)
            }
            let (local, tree) = try await fallback(peer.scratch, key: wanted)
            let source = VMPeerSource(configuration: .init(peers: [peer.url]))
            let destination = peer.scratch.path.appending("restored")
            let report = try await chain([.init(source, policy: .init(retry: .none)), .init(local)]).restore(wanted, into: destination)
            try await source.shutdown()
            #expect(report.attempts.map(\.outcome) == [.corrupt, .hit])
            #expect(report.attempts[0].error?.contains("served the archive of other when asked for wanted") == true)
            #expect(try TreeSnapshot(of: destination).differences(from: TreeSnapshot(of: tree)) == [], "the right tree, from the next tier")
        }
    }

    @Test func aDirectoryTierHoldingAnotherKeysArchiveUnderThisNameIsNeverPromoted() async throws {
        let scratch = try TemporaryDirectory(prefix: "wrongkey")
        defer { scratch.remove() }
        let other = try CacheKey("other")
        let wanted = try CacheKey("wanted")
        let tree = scratch.path.appending("tree")
        try SampleTree.write(to: tree, files: 10)
        let shared = DirectorySource(name: "shared", root: scratch.path.appending("shared"))
        try await DirectorySourceTests.Subject(directory: shared).seed(other, from: tree)
        for suffix in [".tar.zst", ".tar.zst.manifest.json"] {
            try FileManager.default.copyItem(
                atPath: shared.root.appending("other\(suffix)").string, toPath: shared.root.appending("wanted\(suffix)").string
            )
        }
        let destination = scratch.path.appending("restored")
        let failure = await #expect(throws: RestoreFailure.self) {
            try await chain([.init(shared, policy: .init(retry: .none))]).restore(wanted, into: destination)
        }
        #expect(failure?.report.attempts.map(\.outcome) == [.corrupt])
        #expect(FileManager.default.fileExists(atPath: destination.string) == false, "nothing promoted")
    }

    @Test func writeBackToAStoppedMasterEndsWithinItsBoundAndTheRestoreStands() async throws {
        let scratch = try TemporaryDirectory(prefix: "writeback")
        defer { scratch.remove() }
        let key = try CacheKey("write-back")
        let (local, tree) = try await fallback(scratch, key: key)
        let hole = try BlackHoleServer()
        let source = VMPeerSource(configuration: .init(peers: [hole.url]))
        let writeBack = TierChain.WriteBack(
            waitForCompletion: true, limits: .init(timeout: .seconds(10), stallTimeout: .seconds(1))
        )
        let destination = scratch.path.appending("restored")
        let started = ContinuousClock.now
        let report = try await chain(
            [.init(source, policy: .init(stallTimeout: .seconds(1), retry: .none)), .init(local)], writeBack: writeBack
        ).restore(key, into: destination)
        let elapsed = ContinuousClock.now - started
        try await source.shutdown()
        #expect(report.servedBy == "local")
        #expect(report.writeBack.map(\.outcome) == [.failed])
        #expect(report.writeBack.first?.error?.contains("no answer") == true, "\(report.writeBack)")
        #expect(elapsed < .seconds(60), "bounded: the write-back gave up instead of waiting on the silent master")
        #expect(try TreeSnapshot(of: destination).differences(from: TreeSnapshot(of: tree)) == [])
    }

    /// A sink whose upload is all handed over at once, then answers after `answerAfter`:
    /// a server verifying and syncing a large upload.
    struct SlowToAnswerSink: CacheSink {
        let name = "slow-master"
        let answerAfter: Duration

        func contains(_ key: CacheKey, logger: Logger) async throws -> Bool { false }

        func publish(_ archive: PackedArchive, logger: Logger) async throws -> PublishOutcome {
            TransferProgress.upload?.setTotal(archive.manifest.archiveSize)
            TransferProgress.upload?.advance(by: Int(archive.manifest.archiveSize))
            try await Task.sleep(for: answerAfter)
            return .published
        }
    }

    @Test func anUploadFullyHandedOverIsNotCutWhileTheServerFinishesIt() async throws {
        let scratch = try TemporaryDirectory(prefix: "finishing")
        defer { scratch.remove() }
        let tree = scratch.path.appending("tree")
        try SampleTree.write(to: tree, files: 10)
        let publisher = CachePublisher(packer: ArchivePacker(), limits: .init(timeout: .seconds(60), stallTimeout: .milliseconds(300)))
        let result = await publisher.publish(
            tree, as: try CacheKey("finishing"), to: [SlowToAnswerSink(answerAfter: .seconds(2))],
            scratch: try scratch.makeDirectory("pack"), logger: logger
        )
        #expect(result.records.map(\.outcome) == [.published], "\(result.records)")
    }
}
