import AsyncHTTPClient
@testable import CacheTiers
import CacheTiersTesting
import Foundation
import Logging
import NIOHTTP1
import SystemPackage
import Testing

/// The GCS tier end to end: the real client against fake-gcs-server, Google's own Python
/// client for interoperability, and real faults through a proxy.
@Suite(.serialized, .needsGCSEmulator) struct GCSSourceTests {
    let logger = PeerHarness.quietLogger

    func chain(_ tiers: [TierChain.Tier]) -> TierChain {
        TierChain(
            tiers: tiers,
            configuration: .init(deadline: .seconds(120), writeBack: .disabled, retryBudget: RetryBudget()),
            logger: logger
        )
    }

    @Test(arguments: [1, 4])
    func aCorpusRestoresIdenticallyWithItsCost(parallelDownloads: Int) async throws {
        try await GCSHarness.with { gcs in
            let tree = try await Fixtures.makeCorpus(in: gcs.scratch.path.appending("corpus"), files: 500, seed: 11)
            let key = try CacheKey("node-modules-gcs")
            let archive = try await gcs.publish(tree, as: key)
            let source = gcs.source(parallelDownloads: parallelDownloads)
            let destination = gcs.scratch.path.appending("restored")
            let report = try await chain([.init(source)]).restore(key, into: destination)

            #expect(report.servedBy == "gcs")
            #expect(report.bytesTransferred == archive.manifest.archiveSize)
            #expect(try TreeSnapshot(of: destination).differences(from: TreeSnapshot(of: tree), comparingTimes: true) == [])
            // One metadata GET, then one stream or one request per 256 KiB segment.
            let segments = Int((archive.manifest.archiveSize + (256 << 10) - 1) / (256 << 10))
            #expect(segments > 2, "the archive must span several segments to test the reorder buffer")
            let requests = 1 + (parallelDownloads == 1 ? 1 : segments)
            let expected = Double(archive.manifest.archiveSize) / Double(1 << 30) * 0.12 + Double(requests) * 0.0004 / 1000
            let cost = try #require(report.estimatedCostUSD)
            #expect(abs(cost - expected) < 1e-12, "egress at 0.12 USD/GB plus \(requests) reads")
        }
    }

    @Test func publishingKeepsTheManifestAndCRCAndIsCreateOnly() async throws {
        try await GCSHarness.with { gcs in
            let tree = gcs.scratch.path.appending("tree")
            try SampleTree.write(to: tree, files: 50)
            let key = try CacheKey("create-only")
            let archive = try await gcs.pack(tree, as: key)
            let source = gcs.source(uploadChunkSize: 8 << 20)  // one multipart request
            #expect(try await source.contains(key, logger: logger) == false)

            // Two VMs race to publish the same key: exactly one object is written.
            async let first = source.publish(archive, logger: logger)
            async let second = source.publish(archive, logger: logger)
            let outcomes = try await [first, second].map(\.rawValue).sorted()
            #expect(outcomes == ["exists", "published"])
            #expect(try await source.publish(archive, logger: logger) == .exists)
            #expect(try await source.contains(key, logger: logger))

            let metadata = try #require(try await gcs.emulator.objectMetadata(bucket: gcs.bucket, name: "caches/create-only.tar.zst"))
            #expect(metadata["crc32c"] as? String == (try CRC32C.ofFile(at: archive.file.string).base64))
            let custom = try #require(metadata["metadata"] as? [String: String])
            let stored = try CacheManifest(jsonData: Data(try #require(custom[GCSSource.manifestMetadataKey]).utf8))
            #expect(stored == archive.manifest)
        }
    }

    @Test func theManifestIsStoredOnOneLineAndAPrettyPrintedOneStillRestores() async throws {
        try await GCSHarness.with { gcs in
            let tree = gcs.scratch.path.appending("tree")
            try SampleTree.write(to: tree, files: 30)
            let key = try CacheKey("one-line")
            let archive = try await gcs.publish(tree, as: key)
            let name = "caches/one-line.tar.zst"
            let metadata = try #require(try await gcs.emulator.objectMetadata(bucket: gcs.bucket, name: name))
            let stored = try #require((metadata["metadata"] as? [String: String])?[GCSSource.manifestMetadataKey])
            #expect(!stored.contains("\n"), "servers may echo custom metadata as a header: \(stored)")
            #expect(try CacheManifest(jsonData: Data(stored.utf8)) == archive.manifest)

            // What earlier versions wrote: the pretty-printed form, newlines and all.
            let pretty = String(decoding: try archive.manifest.jsonData(), as: UTF8.self)
            var patch = HTTPClientRequest(url: "\(gcs.emulator.url)/storage/v1/b/\(gcs.bucket)/o/caches%2Fone-line.tar.zst")
            patch.method = .PATCH
            patch.headers.add(name: "Content-Type", value: "application/json")
            patch.body = .bytes(try JSONSerialization.data(withJSONObject: ["metadata": [GCSSource.manifestMetadataKey: pretty]]))
            let patched = try await HTTPClient.shared.execute(patch, timeout: .seconds(10))
            #expect(patched.status.code == 200)
            let updated = try #require(try await gcs.emulator.objectMetadata(bucket: gcs.bucket, name: name))
            #expect((updated["metadata"] as? [String: String])?[GCSSource.manifestMetadataKey] == pretty)
            let destination = gcs.scratch.path.appending("restored")
            let report = try await chain([.init(gcs.source())]).restore(key, into: destination)
            #expect(report.servedBy == "gcs")
            #expect(try TreeSnapshot(of: destination).differences(from: TreeSnapshot(of: tree)) == [])
        }
    }

    @Test func aResumableUploadCutMidwayEndsWithTheWholeArchive() async throws {
        try await GCSHarness.with { gcs in
            let tree = try await Fixtures.makeCorpus(in: gcs.scratch.path.appending("corpus"), files: 400, seed: 12)
            let key = try CacheKey("resumed-upload")
            let archive = try await gcs.pack(tree, as: key)
            #expect(archive.manifest.archiveSize > 4 * (256 << 10), "several chunks")
            // The first chunk (256 KiB) gets through; the second dies mid-body.
            let proxy = try FaultInjectingProxy(upstreamPort: gcs.emulator.port, fault: .cutUpload(afterBytes: 400_000))
            defer { proxy.stop() }
            let source = gcs.source(endpoint: proxy.url)
            #expect(try await source.publish(archive, logger: logger) == .published)
            #expect(proxy.connectionsAccepted >= 2, "the upload continued on a new connection")

            let restored = gcs.scratch.path.appending("restored")
            let reader = gcs.source()
            _ = try await chain([.init(reader)]).restore(key, into: restored)
            #expect(try TreeSnapshot(of: restored).differences(from: TreeSnapshot(of: tree)) == [])
        }
    }

    @Test func aFailedUploadLeavesNoObjectBehind() async throws {
        try await GCSHarness.with { gcs in
            let tree = try await Fixtures.makeCorpus(in: gcs.scratch.path.appending("corpus"), files: 1500, seed: 13)
            let key = try CacheKey("failed-upload")
            let archive = try await gcs.pack(tree, as: key)
            #expect(archive.manifest.archiveSize > 2 * (256 << 10), "a resumable upload of several chunks")
            // The connection dies 400 KB into the upload, in the second chunk.
            let proxy = try FaultInjectingProxy(upstreamPort: gcs.emulator.port, fault: .cutUpload(afterBytes: 400_000))
            defer { proxy.stop() }
            let source = gcs.source(endpoint: proxy.url, retriesPerRequest: 0)
            await #expect(throws: CacheTierError.self) { try await source.publish(archive, logger: logger) }
            #expect(try await gcs.emulator.objectNames(bucket: gcs.bucket) == [], "no half object")
        }
    }

    @Test(arguments: [1, 4])
    func aConnectionCutMidDownloadResumesWithinTheAttempt(parallelDownloads: Int) async throws {
        try await GCSHarness.with { gcs in
            let tree = try await Fixtures.makeCorpus(in: gcs.scratch.path.appending("corpus"), files: 400, seed: 14)
            let key = try CacheKey("cut-download")
            let archive = try await gcs.publish(tree, as: key)
            let proxy = try FaultInjectingProxy(
                upstreamPort: gcs.emulator.port, fault: .cut(afterBytes: Int(archive.manifest.archiveSize / 3), connections: 2)
            )
            defer { proxy.stop() }
            let source = gcs.source(endpoint: proxy.url, parallelDownloads: parallelDownloads)
            let destination = gcs.scratch.path.appending("restored")
            let report = try await chain([.init(source, policy: .init(retry: .none))]).restore(key, into: destination)
            #expect(report.attempts.map(\.outcome) == [.hit], "the cut request was retried alone, within one attempt")
            #expect(proxy.connectionsAccepted >= 3)
            #expect(try TreeSnapshot(of: destination).differences(from: TreeSnapshot(of: tree)) == [])
        }
    }

    @Test func aFlippedByteIsCorruptAndTheNextTierServes() async throws {
        try await GCSHarness.with { gcs in
            let tree = gcs.scratch.path.appending("tree")
            try SampleTree.write(to: tree, files: 200)
            let key = try CacheKey("flipped")
            try await gcs.publish(tree, as: key)
            let fallback = InMemorySource(name: "local")
            try fallback.seed(key, from: tree)
            let proxy = try FaultInjectingProxy(upstreamPort: gcs.emulator.port, fault: .flipByte(atOffset: 30_000))
            defer { proxy.stop() }
            let source = gcs.source(endpoint: proxy.url, parallelDownloads: 1)
            let destination = gcs.scratch.path.appending("workspace/node_modules")
            try SampleTree.write(to: destination, seed: 8, files: 3)
            let before = try TreeSnapshot(of: destination)

            let failure = await #expect(throws: RestoreFailure.self) {
                try await chain([.init(source, policy: .init(retry: .none))]).restore(key, into: destination)
            }
            #expect(failure?.report.attempts.map(\.outcome) == [.corrupt])
            #expect(try TreeSnapshot(of: destination).differences(from: before) == [], "destination untouched")

            // A fresh client, so the request comes on a new connection the proxy damages again.
            let again = gcs.source(endpoint: proxy.url, parallelDownloads: 1)
            let report = try await chain([.init(again, policy: .init(retry: .none)), .init(fallback)]).restore(key, into: destination)
            #expect(report.attempts.map(\.outcome) == [.corrupt, .hit])
            #expect(try TreeSnapshot(of: destination).differences(from: TreeSnapshot(of: tree)) == [])
        }
    }

    @Test func anObjectThatFailsItsManifestIsCorrupt() async throws {
        try await GCSHarness.with { gcs in
            let tree = gcs.scratch.path.appending("tree")
            try SampleTree.write(to: tree, files: 100)
            let key = try CacheKey("tampered")
            var archive = try await gcs.pack(tree, as: key)
            // Damage the file after packing: its CRC32C (computed at upload) is consistent,
            // but the manifest's SHA-256 no longer is.
            let handle = try #require(FileHandle(forUpdatingAtPath: archive.file.string))
            try handle.seek(toOffset: UInt64(archive.manifest.archiveSize / 2))
            let byte = try #require(try handle.read(upToCount: 1))
            try handle.seek(toOffset: UInt64(archive.manifest.archiveSize / 2))
            try handle.write(contentsOf: Data([byte[0] ^ 0xFF]))
            try handle.close()
            archive = PackedArchive(file: archive.file, manifest: archive.manifest)
            let source = gcs.source(parallelDownloads: 1)
            #expect(try await source.publish(archive, logger: logger) == .published)

            let destination = gcs.scratch.path.appending("restored")
            let failure = await #expect(throws: RestoreFailure.self) {
                try await chain([.init(source, policy: .init(retry: .none))]).restore(key, into: destination)
            }
            #expect(failure?.report.attempts.map(\.outcome) == [.corrupt])
            #expect(!FileManager.default.fileExists(atPath: destination.string))
        }
    }

    @Test func aMissingObjectIsAMiss() async throws {
        try await GCSHarness.with { gcs in
            let source = gcs.source()
            let destination = gcs.scratch.path.appending("restored")
            let failure = await #expect(throws: RestoreFailure.self) {
                try await chain([.init(source)]).restore(try CacheKey("nobody-published-this"), into: destination)
            }
            #expect(failure?.report.attempts.map(\.outcome) == [.miss])
        }
    }

    @Test func theEmulatorStoppedMidDownloadFallsThroughToTheNextTier() async throws {
        try await GCSHarness.with { gcs in
            let tree = try await Fixtures.makeCorpus(in: gcs.scratch.path.appending("corpus"), files: 1500, seed: 15)
            let key = try CacheKey("emulator-dies")
            try await gcs.publish(tree, as: key)
            let fallback = InMemorySource(name: "local")
            try fallback.seed(key, from: tree)
            // Slow enough that segments are still to be requested when the emulator goes away.
            let proxy = try FaultInjectingProxy(upstreamPort: gcs.emulator.port, fault: .bandwidth(bytesPerSecond: 256 << 10))
            defer { proxy.stop() }
            let source = gcs.source(endpoint: proxy.url, parallelDownloads: 2, retriesPerRequest: 2)
            let destination = gcs.scratch.path.appending("restored")
            let restore = Task {
                try await chain([.init(source, policy: .init(retry: .none)), .init(fallback)]).restore(key, into: destination)
            }
            while proxy.connectionsAccepted < 1 { try await Task.sleep(for: .milliseconds(10)) }
            try await Task.sleep(for: .milliseconds(500))
            gcs.emulator.stop()
            let report = try await restore.value
            #expect(report.attempts.map(\.outcome) == [.error, .hit])
            #expect(report.servedBy == "local")
            #expect(try TreeSnapshot(of: destination).differences(from: TreeSnapshot(of: tree)) == [])
        }
    }

    @Test func conforms() async throws {
        try await GCSHarness.with { gcs in
            struct Subject: ConformanceSubject {
                let gcs: GCSHarness
                let client: GCSSource
                var source: any CacheSource { client }
                var sink: (any CacheSink)? { client }
                var packer: (any CachePacker)? { ArchivePacker() }
                func seed(_ key: CacheKey, from tree: FilePath) async throws {
                    try await gcs.publish(tree, as: key)
                }
            }
            let client = gcs.source()
            try await CacheSourceConformance(subject: Subject(gcs: gcs, client: client)).run()
        }
    }
}

/// What CacheTiers publishes, Google's client reads and GNU tar extracts; what Google's
/// client uploads, CacheTiers restores.
@Suite(.serialized, .needsGoogleClient) struct GCSInteroperabilityTests {
    let logger = PeerHarness.quietLogger

    @Test func theOfficialClientDownloadsAndVerifiesWhatCacheTiersPublished() async throws {
        try await GCSHarness.with { gcs in
            let tree = try await Fixtures.makeCorpus(in: gcs.scratch.path.appending("corpus"), files: 300, seed: 21)
            let key = try CacheKey("published-by-cachetiers")
            let archive = try await gcs.publish(tree, as: key)
            let downloaded = gcs.scratch.path.appending("downloaded.tar.zst")
            let output = try await gcs.officialClient(["download", gcs.bucket, "caches/\(key.rawValue).tar.zst", downloaded.string])
            let info = try #require(try JSONSerialization.jsonObject(with: Data(output.utf8)) as? [String: Any])
            #expect((info["size"] as? Int).map(Int64.init) == archive.manifest.archiveSize)
            #expect((info["metadata"] as? [String: String])?[GCSSource.manifestMetadataKey] != nil)

            let extracted = gcs.scratch.path.appending("extracted")
            try FileManager.default.createDirectory(atPath: extracted.string, withIntermediateDirectories: true)
            let tar = try await Fixtures.run(["tar", "--zstd", "-xf", downloaded.string, "-C", extracted.string])
            #expect(tar.status == 0, "\(tar.stderr)")
            #expect(try TreeSnapshot(of: extracted).differences(from: TreeSnapshot(of: tree), comparingTimes: true) == [])
        }
    }

    @Test func cacheTiersRestoresWhatTheOfficialClientUploaded() async throws {
        try await GCSHarness.with { gcs in
            let tree = try await Fixtures.makeCorpus(in: gcs.scratch.path.appending("corpus"), files: 300, seed: 22)
            let file = gcs.scratch.path.appending("stock.tar.zst")
            let tar = try await Fixtures.run(["tar", "--zstd", "-cf", file.string, "-C", tree.string, "."])
            #expect(tar.status == 0, "\(tar.stderr)")
            let key = try CacheKey("uploaded-by-google-client")
            _ = try await gcs.officialClient(["upload", gcs.bucket, "caches/\(key.rawValue).tar.zst", file.string])

            let source = gcs.source()
            let destination = gcs.scratch.path.appending("restored")
            let report = try await TierChain(
                tiers: [.init(source)],
                configuration: .init(deadline: .seconds(60), writeBack: .disabled, retryBudget: RetryBudget()),
                logger: logger
            ).restore(key, into: destination)
            #expect(report.servedBy == "gcs")
            #expect(try TreeSnapshot(of: destination).differences(from: TreeSnapshot(of: tree)) == [])
        }
    }
}
