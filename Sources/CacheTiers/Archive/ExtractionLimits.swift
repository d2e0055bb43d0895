/// Caps that stop a hostile or broken archive (a decompression bomb) early. Pack
/// applies the same caps, so it never writes an archive that a restore refuses.
public struct ExtractionLimits: Sendable, Hashable {
    /// The most bytes an archive may unpack to: file contents, and what is decompressed
    /// all the same, data attached to directory and symlink entries and extended headers.
    public var maxTotalBytes: Int64
    /// The most entries (files, directories, links) an archive may hold.
    public var maxEntries: Int
    /// The longest entry path accepted, in bytes.
    public var maxPathLength: Int

    public init(maxTotalBytes: Int64 = 64 << 30, maxEntries: Int = 5_000_000, maxPathLength: Int = 4095) {
        self.maxTotalBytes = maxTotalBytes
        self.maxEntries = maxEntries
        self.maxPathLength = maxPathLength
    }
}

/// What an unpack produced.
public struct UnpackSummary: Sendable, Hashable, Codable {
    public var entries: Int
    public var files: Int
    public var directories: Int
    public var symlinks: Int
    public var hardLinks: Int
    /// Bytes of file contents written.
    public var uncompressedBytes: Int64
    /// Bytes of the archive as received.
    public var archiveBytes: Int64
    /// SHA-256 of the archive as received, lowercase hex.
    public var archiveSHA256: String
    /// How the archive was compressed.
    public var format: String

    public init(
        entries: Int = 0, files: Int = 0, directories: Int = 0, symlinks: Int = 0, hardLinks: Int = 0,
        uncompressedBytes: Int64 = 0, archiveBytes: Int64 = 0, archiveSHA256: String = "", format: String = ""
    ) {
        self.entries = entries
        self.files = files
        self.directories = directories
        self.symlinks = symlinks
        self.hardLinks = hardLinks
        self.uncompressedBytes = uncompressedBytes
        self.archiveBytes = archiveBytes
        self.archiveSHA256 = archiveSHA256
        self.format = format
    }
}
