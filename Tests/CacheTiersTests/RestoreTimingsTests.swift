import CacheTiers
import CacheTiersTesting
import Foundation
import SystemPackage
import Testing

/// The report's timing breakdown, measured through real tiers: a cache master on
/// loopback behind a proxy that shapes or delays what it sends. Only relations and
/// presence are asserted, and delays large next to a busy machine's noise.
@Suite(.serialized) struct RestoreTimingsTests {
    let logger = PeerHarness.quietLogger

    func chain(_ tiers: [TierChain.Tier], writeBack: TierChain.WriteBack = .disabled) -> TierChain {
        TierChain(
            tiers: tiers,
            configuration: .init(deadline: .seconds(120), writeBack: writeBack, retryBudget: RetryBudget()),
            logger: logger
        )
    }

    /// The phases of one attempt follow each other within its duration.
    func expectConsistent(_ attempt: AttemptRecord, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let timings = try #require(attempt.timings, sourceLocation: sourceLocation)
        let connect = try #require(timings.connectSeconds, sourceLocation: sourceLocation)
        let firstByte = try #require(timings.firstByteSeconds, sourceLocation: sourceLocation)
        let transfer = try #require(timings.transferSeconds, sourceLocation: sourceLocation)
        let extract = try #require(timings.extractSeconds, sourceLocation: sourceLocation)
        let tail = try #require(timings.extractTailSeconds, sourceLocation: sourceLocation)
        #expect(connect <= firstByte, "the tier answers before its first archive byte", sourceLocation: sourceLocation)
        #expect(firstByte + transfer + tail <= attempt.durationSeconds + 1e-6, "\(timings)", sourceLocation: sourceLocation)
        #expect(extract > 0 && extract <= attempt.durationSeconds, "\(timings)", sourceLocation: sourceLocation)
    }

    @Test func aShapedTransferShowsInTransferSecondsAndTheThroughput() async throws {
        try await PeerHarness.with { peer in
            let tree = try await Fixtures.makeCorpus(in: peer.scratch.path.appending("corpus"), files: 300, seed: 41)
            let key = try CacheKey("shaped")
            let manifest = try await peer.publish(tree, as: key)
            // About 2 s for the whole archive.
            let rate = max(1, Int(manifest.archiveSize / 2))
            let proxy = try FaultInjectingProxy(upstreamPort: peer.port, fault: .bandwidth(bytesPerSecond: rate))
            defer { proxy.stop() }
            let source = VMPeerSource(configuration: .init(peers: [proxy.url]))
            let destination = peer.scratch.path.appending("workspace/node_modules")
            try FileManager.default.createDirectory(atPath: destination.string, withIntermediateDirectories: true)
            try SampleTree.write(to: destination, seed: 3, files: 50)

            let report = try await chain([.init(source, policy: .init(retry: .none))]).restore(key, into: destination)
            try await source.shutdown()

            let attempt = try #require(report.attempts.first)
            try expectConsistent(attempt)
            let transfer = try #require(attempt.timings?.transferSeconds)
            #expect(transfer > 1, "the shaped link holds the transfer for about 2 s: \(transfer)")
            #expect(report.archive == ArchiveSizes(compressedBytes: manifest.archiveSize, uncompressedBytes: manifest.uncompressedSize))
            let throughput = try #require(report.throughputBytesPerSecond)
            #expect(abs(throughput - Double(manifest.archiveSize) / transfer) < 1e-6 * throughput)
            #expect(throughput < Double(rate) * 2, "no faster than the link: \(throughput) B/s over a \(rate) B/s link")
            #expect(report.timings.promotionSeconds != nil)
            #expect(report.timings.oldTreeRemovalSeconds != nil, "an earlier tree was there and was removed")
            #expect(report.timings.writeBackSeconds == nil, "no write-back")
            let phases = (report.timings.promotionSeconds ?? 0) + (report.timings.oldTreeRemovalSeconds ?? 0)
            #expect(attempt.durationSeconds + phases <= report.durationSeconds + 1e-6)
            #expect(try TreeSnapshot(of: destination).differences(from: TreeSnapshot(of: tree)) == [])
        }
    }

    @Test func aDelayedFirstByteShowsInFirstByteSeconds() async throws {
        try await PeerHarness.with { peer in
            let tree = try await Fixtures.makeCorpus(in: peer.scratch.path.appending("corpus"), files: 100, seed: 42)
            let key = try CacheKey("delayed")
            try await peer.publish(tree, as: key)
            let proxy = try FaultInjectingProxy(upstreamPort: peer.port, fault: .delayFirstByte(.milliseconds(1500)))
            defer { proxy.stop() }
            let source = VMPeerSource(configuration: .init(peers: [proxy.url]))
            let destination = peer.scratch.path.appending("node_modules")

            let report = try await chain([.init(source, policy: .init(retry: .none))]).restore(key, into: destination)
            try await source.shutdown()

            let attempt = try #require(report.attempts.first)
            try expectConsistent(attempt)
            let timings = try #require(attempt.timings)
            #expect((timings.firstByteSeconds ?? 0) > 1, "the 1.5 s hold is before the first byte: \(timings)")
            #expect((timings.connectSeconds ?? 0) > 1, "the answer about the key is the held response: \(timings)")
            #expect(report.timings.oldTreeRemovalSeconds == nil, "the destination was empty: nothing to remove")
        }
    }

    @Test func aMissHasALookupAndNoTransferAndWriteBackIsTimed() async throws {
        try await PeerHarness.with { peer in
            let tree = try await Fixtures.makeCorpus(in: peer.scratch.path.appending("corpus"), files: 100, seed: 43)
            let key = try CacheKey("written-back")
            let folder = DirectorySource(name: "folder", root: peer.scratch.path.appending("folder"))
            let file = peer.scratch.path.appending("archive.tar.zst")
            let manifest = try await ArchivePacker().pack(tree, key: key, to: file, logger: logger)
            _ = try await folder.publish(PackedArchive(file: file, manifest: manifest), logger: logger)
            let source = VMPeerSource(configuration: .init(peers: [peer.url]))
            let destination = peer.scratch.path.appending("node_modules")

            let report = try await chain(
                [.init(source, policy: .init(retry: .none)), .init(folder)],
                writeBack: .init(waitForCompletion: true, packer: ArchivePacker())
            ).restore(key, into: destination)
            try await source.shutdown()

            #expect(report.attempts.map(\.outcome) == [.miss, .hit])
            let miss = try #require(report.attempts.first?.timings)
            #expect(miss.connectSeconds != nil, "the master answered 404")
            #expect(miss.firstByteSeconds == nil && miss.transferSeconds == nil && miss.extractSeconds == nil && miss.extractTailSeconds == nil)
            try expectConsistent(report.attempts[1])
            #expect(report.writeBack.map(\.outcome) == [.published])
            #expect((report.timings.writeBackSeconds ?? 0) > 0, "the write-back to the master is timed")
        }
    }

    @Test func theReportCarriesAnIdATimeAndAHostAndKeepsItsOldFields() throws {
        let report = RestoreReport(
            key: try CacheKey("k"), outcome: .failed, servedBy: nil, destination: "/d", durationSeconds: 1.5, bytesTransferred: 0,
            estimatedCostUSD: nil, attempts: [AttemptRecord(tier: "t", attempt: 1, outcome: .error, durationSeconds: 1, bytes: 0, error: "x")],
            writeBack: []
        )
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let json = String(decoding: try encoder.encode(report), as: UTF8.self)
        let id = report.id.uuidString.lowercased()
        #expect(json.contains(#""id":"\#(id)""#), "lowercase: \(json)")
        #expect(json.range(of: #""finishedAt":"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z""#, options: .regularExpression) != nil, "\(json)")
        #expect(json.contains(#""archive":null"#) && json.contains(#""throughputBytesPerSecond":null"#))
        #expect(json.contains(#""timings":{"oldTreeRemovalSeconds":null,"promotionSeconds":null,"writeBackSeconds":null}"#))
        for old in [#""durationSeconds":1.5"#, #""bytesTransferred":0"#, #""estimatedCostUSD":null"#, #""servedBy":null"#, #""writeBack":[]"#] {
            #expect(json.contains(old), "\(old) stays: \(json)")
        }
        let decoded = try JSONDecoder().decode(RestoreReport.self, from: Data(json.utf8))
        #expect(decoded.id == report.id)
        #expect(abs(decoded.finishedAt.timeIntervalSince(report.finishedAt)) < 0.001)
        #expect(decoded.host == RestoreReport.hostName)
        #expect(RestoreReport(key: try CacheKey("k"), outcome: .failed, servedBy: nil, destination: "/d", durationSeconds: 0,
            bytesTransferred: 0, estimatedCostUSD: nil, attempts: [], writeBack: []).id != report.id, "a new id per report")
    }
}
