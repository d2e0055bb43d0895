import Foundation
import Logging
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Packs a directory into a zstd-compressed POSIX tar archive: the format every tier
/// moves, readable by `tar --zstd -xf`.
///
/// Packing streams: files are read and compressed in 1 MiB steps, never held whole.
/// The archive appears at its path only when complete (written beside it, then
/// renamed); a failed pack leaves nothing behind.
public struct ArchivePacker: CachePacker {
    public struct Options: Sendable, Hashable {
        /// Owner 0:0 on every entry, so the same tree packs to the same bytes anywhere.
        /// Entries are always sorted.
        public var deterministic: Bool
        /// A modification time (seconds since 1970) stamped on every entry, for
        /// byte-identical archives of trees whose mtimes differ.
        public var fixedModificationTime: Int64?
        /// The limits the archive must fit, as unpack applies them (the defaults are the
        /// unpack defaults): a longer path is refused like an unsafe symlink.
        public var limits: ExtractionLimits
        /// Leave out, and report in ``Summary/skippedUnsafe``, the entries a restore
        /// would refuse (absolute symlinks, symlinks climbing out of the tree, paths over
        /// the limit), instead of failing the pack on the first one.
        public var skipUnsafeEntries: Bool

        public init(
            deterministic: Bool = false, fixedModificationTime: Int64? = nil, limits: ExtractionLimits = .init(),
            skipUnsafeEntries: Bool = false
        ) {
            self.deterministic = deterministic
            self.fixedModificationTime = fixedModificationTime
            self.limits = limits
            self.skipUnsafeEntries = skipUnsafeEntries
        }
    }

    public var codec: any CompressionCodec
    public var options: Options

    /// - Parameter codec: zstd level 1 on every core by default: the analysis behind
    ///   CacheTiers found level 19 cost minutes of CPU for 10 % fewer bytes.
    public init(codec: any CompressionCodec = ZstdCodec(), options: Options = .init()) {
        self.codec = codec
        self.options = options
    }

    /// What a pack produced, beyond the manifest.
    public struct Summary: Sendable {
        public var manifest: CacheManifest
        /// Paths skipped because they are sockets, FIFOs or devices.
        public var skipped: [String]
        /// Entries left out because a restore would refuse them (with
        /// ``Options/skipUnsafeEntries``); a directory left out takes its contents along.
        public var skippedUnsafe: [SkippedEntry]
        public var duration: Duration
    }

    /// An entry left out of the archive, and why.
    public struct SkippedEntry: Sendable, Hashable, Codable {
        public var path: String
        public var reason: String
    }

    public func pack(_ directory: FilePath, key: CacheKey, to archive: FilePath, logger: Logger) async throws
        -> CacheManifest
    {
        try await packWithSummary(directory, key: key, to: archive, logger: logger).manifest
    }

    /// Packs `directory` into `archive` and reports what was skipped and how long it took.
    /// - Throws: before writing anything when `archive` is inside `directory` (the
    ///   partial archive would pack itself).
    public func packWithSummary(_ directory: FilePath, key: CacheKey, to archive: FilePath, logger: Logger)
        async throws -> Summary
    {
        if ProtectedPath.isInside(archive, directory) {
            throw CacheTierError(
                .fatal, "the archive \(archive) would be inside \(directory), the folder being packed; write it elsewhere"
            )
        }
        let started = ContinuousClock.now
        let encoder = try codec.makeEncoder()
        let partial = archive.removingLastComponent().appending(
            ".\(archive.lastComponent?.string ?? "archive").partial-\(FileSystem.uniqueSuffix())"
        )
        let descriptor: Int32
        do {
            descriptor = try syscall("open") { open(partial.string, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644) }
        } catch {
            throw PackError.io("cannot create \(partial)", errno: error.errnoCode)
        }
        let root = directory.string
        let options = self.options
        let box = UncheckedSendable(encoder)
        let result: TarPackWriter.Result
        do {
            result = try await DedicatedThread.run(name: "cachetiers-pack") { cancellation in
                defer { close(descriptor) }
                return try TarPackWriter(
                    root: root, options: options, encoder: box.value, output: descriptor, cancellation: cancellation
                ).run()
            }
            try FileSystem.rename(partial, to: archive)
        } catch {
            unlink(partial.string)
            throw error
        }
        let manifest = CacheManifest(
            key: key, archiveSHA256: result.archiveSHA256, archiveSize: result.archiveBytes, codec: codec.name,
            level: codec.level, uncompressedSize: result.uncompressedBytes, entryCount: result.entries
        )
        if !result.skipped.isEmpty {
            logger.warning(
                "skipped entries that are neither files, directories nor links",
                metadata: ["count": "\(result.skipped.count)", "first": "\(result.skipped[0])"]
            )
        }
        if !result.skippedUnsafe.isEmpty {
            logger.warning(
                "skipped entries a restore would refuse",
                metadata: ["count": "\(result.skippedUnsafe.count)", "first": "\(result.skippedUnsafe[0].reason)"]
            )
        }
        return Summary(
            manifest: manifest, skipped: result.skipped, skippedUnsafe: result.skippedUnsafe,
            duration: ContinuousClock.now - started
        )
    }
}

/// Moves a non-Sendable value into a closure that runs elsewhere, where the caller
/// guarantees it is used by one thread at a time.
struct UncheckedSendable<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}
