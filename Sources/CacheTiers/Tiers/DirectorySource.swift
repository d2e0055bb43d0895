import Foundation
import Logging
import NIOCore
import SystemPackage

/// A tier over a local or mounted directory of archives, readable and writable.
///
/// The layout is the cache master's: `ROOT/KEY.tar.zst` beside
/// `ROOT/KEY.tar.zst.manifest.json`, exactly what `cachetiers pack DIR --output
/// ROOT/KEY.tar.zst` writes, so a directory can be seeded by hand. An archive is
/// served only with its manifest, both opened under the folder's lock, and the chain's
/// download reads that open file and checks it against that manifest, whatever is
/// published meanwhile.
///
/// Publishing is create-only and atomic (an ``ArchiveFolder``, as the cache master's):
/// the archive is copied to a scratch file in the same directory, checked against its
/// manifest's size and SHA-256, flushed and linked into place (`link(2)` fails if the
/// name exists), then its manifest is renamed beside it, under the folder's `flock(2)`,
/// so a cache master sharing the directory never serves half of it. A publish killed
/// between the two leaves an archive without a manifest; once it is ``orphanAge`` old
/// the next publish of the key replaces it.
public struct DirectorySource: ArchiveSource, CacheSink {
    public let name: String
    public let root: FilePath
    public var traits: CacheSourceTraits { .download }
    public var protectedPaths: [ProtectedPath] { [ProtectedPath(root, role: "the folder of the directory tier \(name)")] }
    public var limits: ExtractionLimits
    /// How long an archive may stand without its manifest before a publish treats it as
    /// the orphan of a publish killed between the two, and replaces it. A live publish
    /// renames the manifest microseconds after linking the archive.
    public var orphanAge: Duration = .seconds(60)
    // MARK: Retention
    /// The folder's limits, applied after each publish into it (and by `cachetiers
    /// prune`); nil keeps everything. Restores record their hits in the folder's archive
    /// index, best effort: with limits, or when the index exists (a cache master sharing
    /// the folder made it).
    public var retention: RetentionPolicy?

    private let folder: ArchiveFolder
    private let useLog: FolderUseLog

    public init(name: String = "directory", root: FilePath, limits: ExtractionLimits = .init()) {
        self.name = name
        self.root = root
        self.limits = limits
        self.folder = ArchiveFolder(root: root)
        self.useLog = FolderUseLog(folder: folder)
    }

    /// Where the archive for `key` lives.
    public func archivePath(for key: CacheKey) -> FilePath {
        folder.archivePath(for: key)
    }

    /// Where the manifest for `key` lives.
    public func manifestPath(for key: CacheKey) -> FilePath {
        folder.manifestPath(for: key)
    }

    /// An archive the directory tier found: opened together with its manifest under the
    /// folder's lock, so the download reads the archive its manifest describes even if a
    /// publish replaces the key meanwhile. The file is closed when the download lets go
    /// of it, on every path.
    public struct OpenedArchive: Sendable {
        /// Where it was found.
        public let path: FilePath
        let file: ArchiveFolder.OpenArchive
    }

    /// Opens `KEY.tar.zst` with the manifest beside it; an archive without one is a miss.
    public func findArchive(_ request: RestoreRequest, logger: Logger) async throws -> ArchiveLookup<OpenedArchive> {
        try Task.checkCancellation()
        let path = archivePath(for: request.key)
        let lookup: ArchiveFolder.Lookup
        do {
            lookup = try folder.lookup(request.key)
        } catch {
            throw CacheTierError(error.kind == .unusableManifest ? .corrupt : .transient, tier: name, error.description, underlying: error)
        }
        switch lookup {
        case .found(let file):
            let manifest = file.manifest
            return .found(
                FoundArchive(
                    OpenedArchive(path: path, file: file), origin: path.string, size: file.size, sha256: manifest.archiveSHA256,
                    manifest: manifest
                )
            )
        case .missing where FileSystem.kind(of: path) == .regular:
            return .miss(
                "\(path) has no manifest beside it (a publish in progress, or an interrupted one, which the next publish replaces)"
            )
        case .missing:
            return .miss("no archive at \(path)")
        case .changing:
            // Something that does not take the folder's lock (a copy by hand) is replacing
            // the pair right now; it is whole again in a moment, as the cache master's 503 says.
            throw CacheTierError(
                .transient, tier: name,
                "\(path) and its manifest disagree in size and the archive changed moments ago: it is being replaced; retry",
                retryAfter: .seconds(1)
            )
        case .inconsistent(let archiveSize, let manifestSize):
            // A miss, as the cache master's 404: retrying will not heal it, the next tier may serve.
            return .miss(
                "no usable archive at \(path): it is \(archiveSize) bytes but its manifest says \(manifestSize); delete both and publish again"
            )
        }
    }

    /// Reads the archive opened with its manifest from `offset`, in buffers of 1 MiB.
    public func streamArchive(
        _ found: FoundArchive<OpenedArchive>,
        from offset: Int64,
        progress: TransferProgress,
        logger: Logger,
        deliver: (ByteBuffer) async throws -> Void
    ) async throws {
        let file = found.archive.file
        // MARK: Retention
        // A read from the first byte is a hit (a resume is not), as at the cache master.
        if offset == 0 { await useLog.recordHit(file.manifest, limited: retention?.limitsAnything == true, logger: logger) }
        let allocator = ByteBufferAllocator()
        var position = offset
        while position < file.size {
            try Task.checkCancellation()
            let length = Int(min(Int64(ArchiveFile.bufferSize), file.size - position))
            let buffer: ByteBuffer
            do {
                buffer = try await file.read(at: position, length: length, allocator: allocator)
            } catch let error as ArchiveFolderError {
                // Short: the file was cut in place since it was opened, which no retry heals.
                throw CacheTierError(error.kind == .mismatch ? .corrupt : .transient, tier: name, error.description, underlying: error)
            }
            try await deliver(buffer)
            position += Int64(length)
        }
    }

    public func contains(_ key: CacheKey, logger: Logger) async throws -> Bool {
        folder.contains(key)
    }

    public func publish(_ archive: PackedArchive, logger: Logger) async throws -> PublishOutcome {
        let upload = TransferProgress.upload
        upload?.touch()
        do {
            let outcome = try await folder.publish(
                file: archive.file, manifest: archive.manifest, mode: .createOnly(orphanAge: orphanAge), logger: logger,
                progress: { upload?.advance(by: $0) }
            )
            if outcome == .exists { return .exists }
            // MARK: Retention
            if let retention, retention.limitsAnything {
                await useLog.enforce(retention, published: archive.manifest, logger: logger)
            }
            return .published
        } catch let error as ArchiveFolderError {
            switch error.kind {
            case .unusableFolder: throw CacheTierError(.fatal, tier: name, error.description, underlying: error)
            case .mismatch, .unusableManifest: throw CacheTierError(.corrupt, tier: name, error.description, underlying: error)
            case .io: throw CacheTierError(.transient, tier: name, error.description, underlying: error)
            }
        }
    }
}
