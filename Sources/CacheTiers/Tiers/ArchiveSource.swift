import Logging
import NIOCore
import SystemPackage

/// A tier that holds archives: it finds the archive of a key and streams its bytes; the
/// chain does everything else.
///
/// A ``TierChain`` downloads an archive source's archive itself, the same way for every
/// such tier: it unpacks the bytes as they arrive (``UnpackSession``), resumes from the
/// last byte received when a stream fails, with backoff on the chain's clock and a
/// bounded number of resumes, checks the CRC32C (when the tier gives one), the size and
/// the SHA-256, refuses an archive whose manifest names another key, reports progress,
/// and decides what each failure means (a full disk stops the chain; a damaged archive
/// is retried). A tier only answers two questions: where is the archive of this key,
/// and what are its bytes from this offset on.
///
/// ``CacheSource/restore(_:into:progress:logger:)`` comes for free: it runs the same
/// download, for callers that use the source without a chain.
public protocol ArchiveSource: CacheSource {
    /// What the source needs to stream the archive it found (a URL and an ETag, an
    /// object generation, a path).
    associatedtype Archive: Sendable

    /// Finds the archive of `request.key`.
    ///
    /// - Returns: ``ArchiveLookup/found(_:)`` with what the download is checked
    ///   against, or ``ArchiveLookup/miss(_:)`` when the tier does not hold the key.
    /// - Throws: a ``CacheTierError`` classifying any other failure. Nothing is resumed
    ///   at this stage: the chain's retry policy decides whether to try again.
    func findArchive(_ request: RestoreRequest, logger: Logger) async throws -> ArchiveLookup<Archive>

    /// Streams the bytes of `archive` from `offset` to its end, handing them to
    /// `deliver` in order.
    ///
    /// - Parameters:
    ///   - offset: 0 for the first stream, the bytes delivered so far after a failure.
    ///   - progress: for signs of life that are not delivered bytes (bytes arriving
    ///     ahead of the one being delivered); the chain counts delivered bytes itself.
    ///   - deliver: the chain's consumer. Rethrow what it throws unchanged.
    /// - Throws: a ``CacheTierError`` for an answer the tier understands (transient ones
    ///   are resumed from the last byte, others end the attempt), ``ArchiveReplaced``
    ///   when the archive found is no longer the one served, or the transport's own
    ///   error for a dropped connection (resumed).
    func streamArchive(
        _ archive: FoundArchive<Archive>,
        from offset: Int64,
        progress: TransferProgress,
        logger: Logger,
        deliver: (ByteBuffer) async throws -> Void
    ) async throws

    /// How many times one attempt may resume the stream from its last byte. 5 by default.
    var maxResumes: Int { get }

    /// The caps on what an archive may unpack to. The defaults by default.
    var limits: ExtractionLimits { get }

    /// The report's facts about a restore of `archive`: by default the bytes, one
    /// request per stream and the manifest. A tier that counts requests or charges for
    /// them says so here.
    func restoreDetails(for archive: FoundArchive<Archive>, bytesTransferred: Int64, streams: Int) -> RestoreDetails

    /// Called once a restore of `archive` has unpacked and verified every byte: a hit.
    /// It must return at once; whatever it starts (a GCS `customTime` update) runs in the
    /// background, owned by the source, and never changes the restore's outcome. By
    /// default nothing.
    func didRestore(_ archive: FoundArchive<Archive>, logger: Logger)
}

extension ArchiveSource {
    public var traits: CacheSourceTraits { .download }

    public var maxResumes: Int { 5 }

    public var limits: ExtractionLimits { ExtractionLimits() }

    public func restoreDetails(for archive: FoundArchive<Archive>, bytesTransferred: Int64, streams: Int) -> RestoreDetails {
        RestoreDetails(bytesTransferred: bytesTransferred, requests: streams, manifest: archive.manifest)
    }

    public func didRestore(_ archive: FoundArchive<Archive>, logger: Logger) {}

    /// Downloads the archive into `staging` as a ``TierChain`` does, on the continuous
    /// clock with the default ``RetryPolicy`` between resumes.
    public func restore(
        _ request: RestoreRequest,
        into staging: FilePath,
        progress: TransferProgress,
        logger: Logger
    ) async throws -> SourceRestoreOutcome {
        try await ArchiveDownload(source: self, clock: ChainClock(ContinuousClock()), backoff: RetryPolicy())
            .run(request, into: staging, progress: progress, logger: logger)
    }
}

/// What ``ArchiveSource/findArchive(_:logger:)`` found.
public enum ArchiveLookup<Archive: Sendable>: Sendable {
    /// The tier holds an archive for the key.
    case found(FoundArchive<Archive>)
    /// The tier does not hold the key; the reason is for the log.
    case miss(String)
}

/// An archive a tier holds, and what its download is checked against.
public struct FoundArchive<Archive: Sendable>: Sendable {
    /// The source's own handle on it.
    public var archive: Archive
    /// Where it is, for messages: `http://10.0.0.5:7420`, `gs://bucket/key.tar.zst`, a path.
    public var origin: String
    /// Its size in bytes; the download must deliver exactly this many.
    public var size: Int64
    /// Its SHA-256 (hex), when known; checked once every byte is in.
    public var sha256: String?
    /// Its CRC32C (base64 of the big-endian value, as GCS gives it), when known.
    public var crc32c: String?
    /// Its manifest, when the tier has one: its key must be the one requested.
    public var manifest: CacheManifest?

    public init(
        _ archive: Archive,
        origin: String,
        size: Int64,
        sha256: String? = nil,
        crc32c: String? = nil,
        manifest: CacheManifest? = nil
    ) {
        self.archive = archive
        self.origin = origin
        self.size = size
        self.sha256 = sha256
        self.crc32c = crc32c
        self.manifest = manifest
    }
}

/// Thrown by ``ArchiveSource/streamArchive(_:from:progress:logger:deliver:)`` when the
/// archive found is no longer the one the tier serves (a new publish replaced it): the
/// download cannot resume, and the chain's next attempt starts over.
public struct ArchiveReplaced: Error, CustomStringConvertible {
    /// What happened, for the person reading the log.
    public var description: String

    public init(_ description: String) {
        self.description = description
    }
}
