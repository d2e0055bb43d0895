import Logging
import SystemPackage

/// A place a cached tree can be restored from: a peer VM, a bucket, a directory, or
/// the package manager itself.
///
/// A ``TierChain`` owns the destination. It hands each attempt an empty staging
/// directory on the destination's filesystem; the source fills it and returns. Only
/// after that does the chain promote the staged tree, so a source never has to
/// clean up after itself on failure, and must never write outside `staging`.
///
/// Implementations must cooperate with task cancellation: the chain cancels an
/// attempt on timeout, on a stall, when a hedged attempt wins, or when the caller
/// gives up, and waits for `restore` to return before removing the staging directory.
public protocol CacheSource: Sendable {
    /// What reports, logs and metrics call this tier.
    var name: String { get }

    /// Facts about the source that change how the chain treats it.
    var traits: CacheSourceTraits { get }

    /// Restores `request.key` into `staging`, an existing empty directory.
    ///
    /// - Returns: ``SourceRestoreOutcome/restored(_:)`` once `staging` holds the
    ///   complete, verified tree, or ``SourceRestoreOutcome/miss(_:)`` when this tier
    ///   does not have the key.
    /// - Throws: a ``CacheTierError`` classifying any other failure (other errors are
    ///   treated as transient), or `CancellationError`.
    func restore(
        _ request: RestoreRequest,
        into staging: FilePath,
        progress: TransferProgress,
        logger: Logger
    ) async throws -> SourceRestoreOutcome

    /// Folders the source uses outside staging (a directory tier's folder, an install's
    /// working directory): the chain refuses a destination that is or contains one,
    /// since promoting a tree there would delete it. None by default.
    var protectedPaths: [ProtectedPath] { get }
}

extension CacheSource {
    public var protectedPaths: [ProtectedPath] { [] }
}

/// A tier that accepts archives, so the chain can write back to it what a lower tier
/// served and the next VM restores it faster.
public protocol CacheSink: Sendable {
    /// What reports, logs and metrics call this tier.
    var name: String { get }

    /// Whether the tier already holds `key`. Checked before packing a write-back, so a
    /// burst of VMs that all missed the same key do not all pack and upload it.
    func contains(_ key: CacheKey, logger: Logger) async throws -> Bool

    /// Publishes a packed archive under its manifest's key.
    ///
    /// Publishing must be create-only and all-or-nothing: readers see either no
    /// archive or the complete one, and an existing archive is never replaced.
    /// - Returns: ``PublishOutcome/exists`` when another publisher got there first.
    func publish(_ archive: PackedArchive, logger: Logger) async throws -> PublishOutcome
}

/// Facts about a source that change how the chain treats it.
public struct CacheSourceTraits: Sendable, Hashable {
    /// Whether a slow attempt of the tier above may be hedged into this one. A fresh
    /// install is never a hedge target: it costs minutes of CPU for a tree a download
    /// is about to deliver.
    public var isHedgeTarget: Bool
    /// Whether the source's progress counts bytes as they arrive, so the chain can hold
    /// it to ``TierChain/TierPolicy/minimumThroughput``. A fresh install reports signs of
    /// life (``TransferProgress/touch()``), not bytes.
    public var reportsBytes: Bool

    public init(isHedgeTarget: Bool = true, reportsBytes: Bool = true) {
        self.isHedgeTarget = isHedgeTarget
        self.reportsBytes = reportsBytes
    }

    /// A tier that downloads an archive.
    public static let download = CacheSourceTraits(isHedgeTarget: true, reportsBytes: true)
    /// A tier that builds the tree from scratch (a package manager run).
    public static let build = CacheSourceTraits(isHedgeTarget: false, reportsBytes: false)
}

/// What the chain asks of a source.
public struct RestoreRequest: Sendable, Hashable {
    public var key: CacheKey
    /// The attempt number within this tier, starting at 1.
    public var attempt: Int

    public init(key: CacheKey, attempt: Int = 1) {
        self.key = key
        self.attempt = attempt
    }
}

/// What a source reports after an attempt that did not throw.
public enum SourceRestoreOutcome: Sendable {
    /// `staging` now holds the complete, verified tree.
    case restored(RestoreDetails)
    /// The tier does not hold the key; the reason is for the log.
    case miss(String)
}

/// Facts about a successful restore, for the report.
public struct RestoreDetails: Sendable, Hashable {
    /// Bytes received over the wire (the compressed archive for download tiers).
    public var bytesTransferred: Int64
    /// Requests made, for cost accounting.
    public var requests: Int
    /// What this restore cost, when the tier charges for it.
    public var estimatedCostUSD: Double?
    /// The manifest of the archive that was restored, when there was one.
    public var manifest: CacheManifest?
    /// The archive's size received and unpacked; the chain's download sets it.
    public var archive: ArchiveSizes?

    public init(
        bytesTransferred: Int64,
        requests: Int = 1,
        estimatedCostUSD: Double? = nil,
        manifest: CacheManifest? = nil
    ) {
        self.bytesTransferred = bytesTransferred
        self.requests = requests
        self.estimatedCostUSD = estimatedCostUSD
        self.manifest = manifest
    }
}

/// The result of publishing to a ``CacheSink``.
public enum PublishOutcome: String, Sendable, Hashable, Codable {
    /// The archive is now stored.
    case published
    /// The tier already held the key; nothing was replaced.
    case exists
}

/// An archive file on local disk and its manifest, ready to publish.
public struct PackedArchive: Sendable, Hashable {
    public var file: FilePath
    public var manifest: CacheManifest

    public var key: CacheKey { manifest.key }

    public init(file: FilePath, manifest: CacheManifest) {
        self.file = file
        self.manifest = manifest
    }
}

/// Packs a directory tree into an archive file; the chain uses one for write-back.
public protocol CachePacker: Sendable {
    /// Packs `directory` into a new file at `archive` and returns its manifest.
    func pack(_ directory: FilePath, key: CacheKey, to archive: FilePath, logger: Logger) async throws
        -> CacheManifest
}
