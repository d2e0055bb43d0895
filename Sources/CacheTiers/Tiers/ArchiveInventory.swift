import Foundation
import Logging
import SystemPackage

/// A tier whose archives can be listed and copied as they are, without unpacking:
/// what `cachetiers sync`, the cache master's replication and `cachetiers prune` work
/// through. The cache master, a bucket and a directory are inventories; a fresh install
/// is not.
public protocol ArchiveInventory: CacheSink {
    /// One page of the archives the tier holds, in ascending key order (bytewise, which
    /// for the key alphabet `A-Z a-z 0-9 . _ -` is ASCII order), starting after `after`.
    ///
    /// - Parameter limit: at most this many entries (1 to ``ArchivePage/maximumLimit``).
    func listArchives(after: CacheKey?, limit: Int, logger: Logger) async throws -> ArchivePage

    /// Copies the archive of `key`, byte for byte as the tier stores it, into a new file
    /// at `file`, checked against its manifest's size and SHA-256 before this returns.
    ///
    /// - Returns: the archive's manifest, or `nil` when the tier does not hold the key.
    ///   On a throw nothing is left at `file`.
    func fetchArchive(_ key: CacheKey, to file: FilePath, logger: Logger) async throws -> CacheManifest?
}

/// One page of an ``ArchiveInventory``'s listing.
public struct ArchivePage: Sendable, Hashable, Codable {
    /// The most entries one page may ask for.
    public static let maximumLimit = 1000
    /// The page size when none is asked for.
    public static let defaultLimit = 100

    public var archives: [ArchiveListing]
    /// The key to pass as `after` for the next page; `nil` on the last page.
    public var next: CacheKey?

    public init(archives: [ArchiveListing], next: CacheKey?) {
        self.archives = archives
        self.next = next
    }

    /// `{"caches": [...], "next": "KEY" | null}`, the answer of `GET /v1/caches`.
    private enum CodingKeys: String, CodingKey {
        case archives = "caches"
        case next
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(archives, forKey: .archives)
        // `null` on the last page, never a missing field.
        try container.encode(next, forKey: .next)
    }
}

/// What a listing says about one archive. The JSON form is the cache master's
/// `GET /v1/caches` entry (Documentation/CacheMasterAPI.md).
public struct ArchiveListing: Sendable, Hashable, Codable {
    public var key: CacheKey
    /// The archive's size as stored, in bytes.
    public var size: Int64
    /// The archive's SHA-256 (hex) when the tier knows it without reading the archive.
    public var sha256: String?
    /// When the archive was published to this tier (the manifest's `createdAt` where
    /// the tier keeps no time of its own).
    public var createdAt: Date
    /// When the tier last served it, where the tier tracks that; `nil` when it never did
    /// or does not track it.
    public var lastServedAt: Date?
    /// How many times the tier served it, where it tracks that.
    public var hits: Int?

    public init(key: CacheKey, size: Int64, sha256: String?, createdAt: Date, lastServedAt: Date? = nil, hits: Int? = nil) {
        self.key = key
        self.size = size
        self.sha256 = sha256
        self.createdAt = createdAt
        self.lastServedAt = lastServedAt
        self.hits = hits
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(key, forKey: .key)
        try container.encode(size, forKey: .size)
        // Every field present, `null` where unknown: what the API documents.
        try container.encode(sha256, forKey: .sha256)
        try container.encode(createdAt, forKey: .createdAt)
        try container.encode(lastServedAt, forKey: .lastServedAt)
        try container.encode(hits, forKey: .hits)
    }
}
