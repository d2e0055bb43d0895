import Foundation
import Logging
import NIOCore
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A tier over a local or mounted directory of archives, readable and writable.
///
/// The layout is the cache master's: `ROOT/KEY.tar.zst` beside
/// `ROOT/KEY.tar.zst.manifest.json`, exactly what `cachetiers pack DIR --output
/// ROOT/KEY.tar.zst` writes, so a directory can be seeded by hand. An archive is
/// served only with its manifest, and the chain's download verifies it against it.
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

    private let folder: ArchiveFolder

    public init(name: String = "directory", root: FilePath, limits: ExtractionLimits = .init()) {
        self.name = name
        self.root = root
        self.limits = limits
        self.folder = ArchiveFolder(root: root)
    }

    /// Where the archive for `key` lives.
    public func archivePath(for key: CacheKey) -> FilePath {
        folder.archivePath(for: key)
    }

    /// Where the manifest for `key` lives.
    public func manifestPath(for key: CacheKey) -> FilePath {
        folder.manifestPath(for: key)
    }

    /// Finds `KEY.tar.zst` and the manifest beside it; an archive without one is a miss.
    public func findArchive(_ request: RestoreRequest, logger: Logger) async throws -> ArchiveLookup<FilePath> {
        try Task.checkCancellation()
        let archive = archivePath(for: request.key)
        guard FileSystem.kind(of: archive) == .regular else {
            return .miss("no archive at \(archive)")
        }
        guard let manifest = try readManifest(for: request.key) else {
            return .miss(
                "\(archive) has no manifest beside it (a publish in progress, or an interrupted one, which the next publish replaces)"
            )
        }
        return .found(
            FoundArchive(archive, origin: archive.string, size: manifest.archiveSize, sha256: manifest.archiveSHA256, manifest: manifest)
        )
    }

    /// Reads the archive file from `offset`. Removed since it was found, it is a miss.
    public func streamArchive(
        _ found: FoundArchive<FilePath>,
        from offset: Int64,
        progress: TransferProgress,
        logger: Logger,
        deliver: (ByteBuffer) async throws -> Void
    ) async throws {
        try await ArchiveFile(found.archive).stream(from: offset, deliver: deliver)
    }

    private func readManifest(for key: CacheKey) throws -> CacheManifest? {
        do {
            return try folder.manifest(for: key)
        } catch {
            throw CacheTierError(.corrupt, tier: name, error.description, underlying: error)
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
            return outcome == .exists ? .exists : .published
        } catch let error as ArchiveFolderError {
            switch error.kind {
            case .unusableFolder: throw CacheTierError(.fatal, tier: name, error.description, underlying: error)
            case .mismatch, .unusableManifest: throw CacheTierError(.corrupt, tier: name, error.description, underlying: error)
            case .io: throw CacheTierError(.transient, tier: name, error.description, underlying: error)
            }
        }
    }
}
