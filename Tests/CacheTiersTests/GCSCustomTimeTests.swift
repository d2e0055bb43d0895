@testable import CacheTiers
import CacheTiersTesting
import Foundation
import HTTPTypes
import Logging
import SystemPackage
import Testing

/// The GCS tier keeps `customTime` honest for a lifecycle rule on `daysSinceCustomTime`:
/// set at publish, moved forward by a hit at most once a day, never at the restore's expense.
@Suite(.serialized, .needsGCSEmulator) struct GCSCustomTimeTests {
    let logger = PeerHarness.quietLogger
    let objectName = "caches/custom-time.tar.zst"

    func chain(_ source: GCSSource, logger: Logger? = nil) -> TierChain {
        TierChain(
            tiers: [.init(source)],
            configuration: .init(deadline: .seconds(120), writeBack: .disabled, retryBudget: RetryBudget()),
            logger: logger ?? self.logger
        )
    }

    /// Publishes a small tree under `custom-time` and makes its `customTime` three days old.
    func publishUnusedArchive(_ gcs: GCSHarness) async throws -> (key: CacheKey, tree: FilePath, customTime: Date) {
        let tree = gcs.scratch.path.appending("tree")
        try SampleTree.write(to: tree, files: 40)
        let key = try CacheKey("custom-time")
        try await gcs.publish(tree, as: key)
        let old = Date(timeIntervalSinceNow: -3 * 24 * 60 * 60)
        try await gcs.emulator.setCustomTime(bucket: gcs.bucket, name: objectName, to: old.rfc3339)
        let stored = try #require(try await customTime(gcs))
        #expect(abs(stored.timeIntervalSince(old)) < 1, "the emulator keeps the customTime it is given")
        return (key, tree, stored)
    }

    func customTime(_ gcs: GCSHarness) async throws -> Date? {
        let metadata = try #require(try await gcs.emulator.objectMetadata(bucket: gcs.bucket, name: objectName))
        return (metadata["customTime"] as? String).flatMap(Date.init(rfc3339:))
    }

    /// Restores `key` into a fresh folder and checks the tree is the one published.
    func restore(_ key: CacheKey, from source: GCSSource, tree: FilePath, gcs: GCSHarness, logger: Logger? = nil) async throws {
        let destination = gcs.scratch.path.appending("restored-\(UUID().uuidString.prefix(8))")
        let report = try await chain(source, logger: logger).restore(key, into: destination)
        #expect(report.servedBy == "gcs")
        #expect(try TreeSnapshot(of: destination).differences(from: TreeSnapshot(of: tree)) == [])
    }

    @Test(arguments: [8 << 20, 256 << 10])
    func aPublishSetsCustomTimeToTheUploadTime(uploadChunkSize: Int) async throws {
        try await GCSHarness.with { gcs in
            let tree = try await Fixtures.makeCorpus(in: gcs.scratch.path.appending("corpus"), files: 500, seed: 11)
            let key = try CacheKey("custom-time")
            let before = Date()
            let archive = try await gcs.publish(tree, as: key, uploadChunkSize: uploadChunkSize)
            let after = Date()
            if uploadChunkSize == 256 << 10 {
                #expect(archive.manifest.archiveSize > Int64(uploadChunkSize), "the archive must go up through a resumable session")
            }
            let stored = try #require(try await customTime(gcs), "a published object carries a customTime")
            // Millisecond precision: allow the rounding, nothing more.
            #expect(stored >= before.addingTimeInterval(-0.001) && stored <= after.addingTimeInterval(0.001))
        }
    }

    @Test func aHitMovesAnOldCustomTimeForwardAndASecondHitThatDayDoesNotPatch() async throws {
        try await GCSHarness.with { gcs in
            let (key, tree, old) = try await publishUnusedArchive(gcs)
            try await GCSRecordingProxy.with(upstream: gcs.emulator.url) { proxy, url in
                let before = Date()
                let vm = gcs.source(endpoint: url, parallelDownloads: 1)
                try await restore(key, from: vm, tree: tree, gcs: gcs)
                // shutdown() waits for the background PATCH.
                try await vm.shutdown()
                #expect(proxy.patches == 1)
                let moved = try #require(try await customTime(gcs))
                #expect(moved > old && moved >= before.addingTimeInterval(-0.001), "moved from \(old) to \(moved)")

                // Another VM the same day: the metadata GET says it is fresh, so no PATCH.
                let other = gcs.source(endpoint: url, parallelDownloads: 1)
                try await restore(key, from: other, tree: tree, gcs: gcs)
                try await other.shutdown()
                #expect(proxy.patches == 1, "requests: \(proxy.methods)")
                #expect(try await customTime(gcs) == moved)
            }
        }
    }

    @Test func withRefreshCustomTimeOffAHitNeverPatches() async throws {
        try await GCSHarness.with { gcs in
            let (key, tree, old) = try await publishUnusedArchive(gcs)
            try await GCSRecordingProxy.with(upstream: gcs.emulator.url) { proxy, url in
                let vm = gcs.source(endpoint: url, parallelDownloads: 1, refreshCustomTime: false)
                try await restore(key, from: vm, tree: tree, gcs: gcs)
                try await restore(key, from: vm, tree: tree, gcs: gcs)
                try await vm.shutdown()
                #expect(!proxy.methods.isEmpty && proxy.patches == 0, "requests: \(proxy.methods)")
                #expect(try await customTime(gcs) == old)
            }
        }
    }

    @Test(arguments: [HTTPResponse.Status.forbidden, .internalServerError])
    func aRefusedPatchStillRestores(status: HTTPResponse.Status) async throws {
        try await GCSHarness.with { gcs in
            let (key, tree, old) = try await publishUnusedArchive(gcs)
            try await GCSRecordingProxy.with(upstream: gcs.emulator.url, patches: .status(status)) { proxy, url in
                let log = RecordingLog()
                let vm = gcs.source(endpoint: url, parallelDownloads: 1)
                for _ in 0..<3 {
                    try await restore(key, from: vm, tree: tree, gcs: gcs, logger: log.logger)
                    await vm.customTimeRefresh.settled()
                }
                try await vm.shutdown()
                let notices = log.entries.filter { $0.message.contains("customTime") }
                if status == .forbidden {
                    // Read-only credentials: said once, then never tried again.
                    #expect(proxy.patches == 1, "requests: \(proxy.methods)")
                    #expect(notices.count == 1 && notices.first?.level == .notice, "\(notices)")
                    #expect(notices.first?.message.contains("roles/storage.objectUser") == true)
                } else {
                    // Any other failure: tried again on the next hit, never above debug.
                    #expect(proxy.patches == 3, "requests: \(proxy.methods)")
                    #expect(notices.isEmpty, "\(notices)")
                }
                #expect(try await customTime(gcs) == old)
            }
        }
    }

    @Test(.timeLimit(.minutes(1)))
    func aPatchThatNeverAnswersDelaysNeitherTheRestoreNorShutdownBeyondItsGrace() async throws {
        try await GCSHarness.with { gcs in
            let (key, tree, old) = try await publishUnusedArchive(gcs)
            try await GCSRecordingProxy.with(upstream: gcs.emulator.url, patches: .never) { proxy, url in
                let vm = gcs.source(endpoint: url, parallelDownloads: 1)
                // The restore returns while its PATCH hangs.
                try await restore(key, from: vm, tree: tree, gcs: gcs)
                while proxy.patches == 0 { try await Task.sleep(for: .milliseconds(20)) }
                // shutdown() gives up on it after its grace instead of hanging with it.
                try await vm.shutdown()
                #expect(proxy.patches == 1)
                #expect(try await customTime(gcs) == old)
            }
        }
    }

    @Test func aRefreshIsDueWhenCustomTimeIsUnsetOrADayOld() throws {
        let now = Date()
        #expect(CustomTimeRefresh.isDue(nil, now: now))
        #expect(CustomTimeRefresh.isDue(now.addingTimeInterval(-25 * 60 * 60), now: now))
        #expect(!CustomTimeRefresh.isDue(now.addingTimeInterval(-23 * 60 * 60), now: now))
        #expect(!CustomTimeRefresh.isDue(now.addingTimeInterval(60 * 60), now: now), "a customTime ahead of this clock")

        // An object written before customTime existed (or by another tool) has none: due.
        let unset = #"{"name":"a","size":"1","generation":"7","metageneration":"1"}"#
        let object = try JSONDecoder().decode(GCSObject.self, from: Data(unset.utf8))
        #expect(object.customTime == nil && object.metageneration == 1)
        let set = #"{"name":"a","size":"1","generation":"7","metageneration":"3","customTime":"2026-11-30T08:00:00.250Z"}"#
        let refreshed = try JSONDecoder().decode(GCSObject.self, from: Data(set.utf8))
        #expect(refreshed.customTime == Date(rfc3339: "2026-11-30T08:00:00.250Z") && refreshed.customTime != nil)
        #expect(Date(rfc3339: "2026-11-30T08:00:00Z") != nil && Date(rfc3339: "yesterday") == nil)
        // A server's garbage in either field only turns the refresh off; the restore still reads the object.
        let garbage = #"{"name":"a","size":"1","generation":"7","metageneration":"1&x=y","customTime":42}"#
        let odd = try JSONDecoder().decode(GCSObject.self, from: Data(garbage.utf8))
        #expect(odd.customTime == nil && odd.metageneration == nil && odd.size == 1)
    }

    @Test func refreshCustomTimeIsOnByDefault() throws {
        let json = #"{"key": {"prefix": "p"}, "destination": "x", "tiers": [{"kind": "gcs", "bucket": "b"}]}"#
        let config = try CacheTiersConfig(json: Data(json.utf8), baseDirectory: "/srv/app")
        guard case .gcs(let gcs) = config.tiers[0].source else {
            Issue.record("not a gcs tier")
            return
        }
        #expect(gcs.refreshCustomTime)
    }
}
