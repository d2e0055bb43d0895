import Foundation

/// The small JSON document that travels with every archive and describes it.
///
/// Field names are part of the wire format and never change. Decoding ignores fields
/// it does not know, so a manifest from a newer producer is still readable.
public struct CacheManifest: Sendable, Hashable, Codable {
    /// The manifest layout this version writes.
    public static let currentFormatVersion = 1

    public var formatVersion: Int
    /// The key the archive was published under.
    public var key: CacheKey
    /// SHA-256 of the archive bytes exactly as stored (compressed), lowercase hex.
    public var archiveSHA256: String
    /// Size of the archive as stored, in bytes.
    public var archiveSize: Int64
    /// The compression codec: `zstd` or `identity`.
    public var codec: String
    /// The compression level used, when the codec has levels.
    public var level: Int?
    /// Total bytes of file contents in the tree.
    public var uncompressedSize: Int64
    /// Number of entries (files, directories, links) in the archive.
    public var entryCount: Int
    public var createdAt: Date
    /// What wrote the archive, e.g. `cachetiers/0.1.0 (linux x86_64)`.
    public var producer: String

    public init(
        key: CacheKey,
        archiveSHA256: String,
        archiveSize: Int64,
        codec: String,
        level: Int?,
        uncompressedSize: Int64,
        entryCount: Int,
        createdAt: Date = Date(),
        producer: String = CacheManifest.defaultProducer,
        formatVersion: Int = CacheManifest.currentFormatVersion
    ) {
        self.formatVersion = formatVersion
        self.key = key
        self.archiveSHA256 = archiveSHA256
        self.archiveSize = archiveSize
        self.codec = codec
        self.level = level
        self.uncompressedSize = uncompressedSize
        self.entryCount = entryCount
        // Whole seconds: the JSON form carries no more, so a manifest round-trips equal.
        self.createdAt = Date(timeIntervalSince1970: createdAt.timeIntervalSince1970.rounded(.down))
        self.producer = producer
    }

    public static var defaultProducer: String {
        let platform = Platform.current
        return "cachetiers/\(CacheTiersVersion.current) (\(platform.operatingSystem) \(platform.architecture))"
    }

    /// The manifest as pretty-printed JSON with sorted keys and ISO 8601 dates.
    public func jsonData() throws -> Data {
        try encoded(as: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
    }

    /// The manifest as JSON on one line, for where a newline cannot go: GCS custom
    /// metadata, which servers may echo as `x-goog-meta-*` response headers.
    public func compactJSONData() throws -> Data {
        try encoded(as: [.sortedKeys, .withoutEscapingSlashes])
    }

    private func encoded(as formatting: JSONEncoder.OutputFormatting) throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = formatting
        encoder.dateEncodingStrategy = .iso8601
        return try encoder.encode(self)
    }

    /// Reads a manifest in either form, accepting unknown fields.
    public init(jsonData data: Data) throws {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        self = try decoder.decode(CacheManifest.self, from: data)
    }
}

extension CacheManifest {
    /// The codecs an archive may declare.
    public static let knownCodecs: Set<String> = ["zstd", "identity"]

    /// The first field that makes no sense, or `nil`: a negative size or count, a digest
    /// that is not 64 lowercase hex digits, a codec no reader knows, a format version
    /// below 1. The cache master refuses such a manifest on PUT and clients treat one as
    /// corrupt, so nonsense never enters or leaves a cache.
    public var problem: String? {
        if formatVersion < 1 { return "formatVersion \(formatVersion) is below 1" }
        if archiveSHA256.utf8.count != 64 || !archiveSHA256.utf8.allSatisfy({ (48...57).contains($0) || (97...102).contains($0) }) {
            return "archiveSHA256 is not 64 lowercase hexadecimal digits"
        }
        if archiveSize < 0 { return "archiveSize \(archiveSize) is negative" }
        if uncompressedSize < 0 { return "uncompressedSize \(uncompressedSize) is negative" }
        if entryCount < 0 { return "entryCount \(entryCount) is negative" }
        if !Self.knownCodecs.contains(codec) { return "codec \"\(codec)\" is not one of \(Self.knownCodecs.sorted().joined(separator: ", "))" }
        return nil
    }
}

/// The version of this package, as reported in manifests and `--version`.
public enum CacheTiersVersion {
    public static let current = "0.1.0"
}
