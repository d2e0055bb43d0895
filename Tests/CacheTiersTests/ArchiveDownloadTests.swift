import CacheTiers
import CacheTiersTesting
import Foundation
import Logging
import NIOCore
import Synchronization
import SystemPackage
import Testing

/// The chain's one archive download, proven against a tier that only serves bytes:
/// resumes come from the last byte, wait on the chain's clock and are bounded; an
/// archive of another key is refused before a byte is streamed.
@Suite struct ArchiveDownloadTests {
    static let policy = TierChain.TierPolicy(timeout: .seconds(60), stallTimeout: nil, retry: .none)

    /// A packed archive of a small tree under `key`, and the tree.
    static func packed(_ h: ChainHarness, as key: CacheKey) async throws -> (bytes: [UInt8], manifest: CacheManifest, tree: FilePath) {
        let tree = h.scratch.path.appending("fixtures/tree")
        try SampleTree.write(to: tree, seed: 5, files: 40)
        let file = h.scratch.path.appending("fixtures/archive.tar.zst")
        let manifest = try await ArchivePacker().pack(tree, key: key, to: file, logger: ChainHarness.logger)
        return ([UInt8](try Data(contentsOf: URL(fileURLWithPath: file.string))), manifest, tree)
    }

    @Test func aFailedStreamResumesFromItsLastByteAfterWaitingOnTheChainsClock() async throws {
        let h = try ChainHarness()
        let (bytes, manifest, tree) = try await Self.packed(h, as: ChainHarness.key)
        let cut = bytes.count / 3
        let source = ServedArchive(bytes: bytes, manifest: manifest, failures: [.init(atByte: cut, retryAfter: .seconds(5))])
        let restore = Task { try await h.restore(h.chain([.init(source, policy: Self.policy)])) }
        try await h.clock.waitForSleeper(until: .init(offset: .seconds(5)))  // the Retry-After, on the chain's clock
        #expect(source.offsets == [0], "no resume before the chain's clock has moved")
        h.clock.advance(by: .seconds(5))
        let report = try await restore.value
        #expect(report.outcomes == ["served:hit"])
        #expect(source.offsets == [0, Int64(cut)], "resumed at the byte the first stream stopped at")
        #expect(report.bytesTransferred == Int64(bytes.count))
        #expect(try TreeSnapshot(of: h.destination).differences(from: TreeSnapshot(of: tree)) == [])
    }

    @Test func resumesAreBoundedByTheTiersCount() async throws {
        let h = try ChainHarness()
        let (bytes, manifest, _) = try await Self.packed(h, as: ChainHarness.key)
        let failures = (1...3).map { ServedArchive.Failure(atByte: $0 * 1000) }
        let source = ServedArchive(bytes: bytes, manifest: manifest, failures: failures, maxResumes: 2)
        let failure = await #expect(throws: RestoreFailure.self) {
            try await h.restore(h.chain([.init(source, policy: Self.policy)]))
        }
        #expect(failure?.report.attempts.map(\.outcome) == [.error])
        #expect(failure?.report.attempts.first?.error?.contains("connection reset") == true)
        #expect(source.offsets == [0, 1000, 2000], "two resumes, then the attempt fails")
        #expect(try h.leftovers().isEmpty, "its staging directory is removed")
    }

    @Test func anArchiveOfAnotherKeyIsRefusedBeforeAByteIsStreamed() async throws {
        let h = try ChainHarness()
        let (bytes, manifest, _) = try await Self.packed(h, as: try CacheKey("another-key"))
        let source = ServedArchive(bytes: bytes, manifest: manifest)
        let failure = await #expect(throws: RestoreFailure.self) {
            try await h.restore(h.chain([.init(source, policy: Self.policy)]))
        }
        #expect(failure?.report.attempts.map(\.outcome) == [.corrupt])
        let message = failure?.report.attempts.first?.error ?? ""
        #expect(message.contains("served the archive of another-key when asked for \(ChainHarness.key)"), "\(message)")
        #expect(source.offsets == [])
    }
}

/// An archive tier that serves one archive from memory, failing its streams as planned.
final class ServedArchive: ArchiveSource {
    struct Failure: Sendable {
        /// The stream fails once it has delivered up to this byte of the archive.
        var atByte: Int
        var retryAfter: Duration?
    }

    let name = "served"
    let maxResumes: Int
    private let bytes: [UInt8]
    private let manifest: CacheManifest
    private let state: Mutex<(failures: [Failure], offsets: [Int64])>

    init(bytes: [UInt8], manifest: CacheManifest, failures: [Failure] = [], maxResumes: Int = 5) {
        self.bytes = bytes
        self.manifest = manifest
        self.maxResumes = maxResumes
        self.state = Mutex((failures: failures, offsets: []))
    }

    /// The offset each stream was opened at.
    var offsets: [Int64] { state.withLock { $0.offsets } }

    func findArchive(_ request: RestoreRequest, logger: Logger) async throws -> ArchiveLookup<[UInt8]> {
        .found(
            FoundArchive(bytes, origin: "memory://served", size: Int64(bytes.count), sha256: manifest.archiveSHA256, manifest: manifest)
        )
    }

    func streamArchive(
        _ archive: FoundArchive<[UInt8]>,
        from offset: Int64,
        progress: TransferProgress,
        logger: Logger,
        deliver: (ByteBuffer) async throws -> Void
    ) async throws {
        let failure = state.withLock { state in
            state.offsets.append(offset)
            return state.failures.isEmpty ? nil : state.failures.removeFirst()
        }
        let end = failure.map { min($0.atByte, archive.archive.count) } ?? archive.archive.count
        var position = Int(offset)
        while position < end {
            let next = min(position + 16 * 1024, end)
            try await deliver(ByteBuffer(bytes: archive.archive[position..<next]))
            position = next
        }
        if let failure {
            throw CacheTierError(.transient, "connection reset at byte \(failure.atByte)", retryAfter: failure.retryAfter)
        }
    }
}
