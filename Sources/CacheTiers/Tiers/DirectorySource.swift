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
/// Publishing is create-only and atomic: the archive is written to a temporary file in
/// the same directory and linked into place (`link(2)` fails if the name exists), then
/// its manifest is renamed beside it. A publish killed between the two leaves an
/// archive without a manifest; once it is ``orphanAge`` old the next publish of the key
/// replaces it.
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

    public init(name: String = "directory", root: FilePath, limits: ExtractionLimits = .init()) {
        self.name = name
        self.root = root
        self.limits = limits
    }

    /// Where the archive for `key` lives.
    public func archivePath(for key: CacheKey) -> FilePath {
        root.appending("\(key.rawValue).tar.zst")
    }

    /// Where the manifest for `key` lives.
    public func manifestPath(for key: CacheKey) -> FilePath {
        root.appending("\(key.rawValue).tar.zst.manifest.json")
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
        let path = manifestPath(for: key)
        guard let data = FileManager.default.contents(atPath: path.string) else { return nil }
        let manifest: CacheManifest
        do {
            manifest = try CacheManifest(jsonData: data)
        } catch {
            throw CacheTierError(
                .corrupt, tier: name, "the manifest \(path) is not valid JSON of a cache manifest: \(error); delete it and publish again",
                underlying: error
            )
        }
        if let problem = manifest.problem {
            throw CacheTierError(.corrupt, tier: name, "the manifest \(path) makes no sense: \(problem); delete it and publish again")
        }
        return manifest
    }

    public func contains(_ key: CacheKey, logger: Logger) async throws -> Bool {
        FileSystem.kind(of: archivePath(for: key)) == .regular && FileSystem.kind(of: manifestPath(for: key)) == .regular
    }

    public func publish(_ archive: PackedArchive, logger: Logger) async throws -> PublishOutcome {
        let key = archive.key
        do {
            try FileManager.default.createDirectory(atPath: root.string, withIntermediateDirectories: true)
        } catch {
            throw CacheTierError(.fatal, tier: name, "cannot create the cache directory \(root): \(error)", underlying: error)
        }
        // Copies left by a publish of this key that was killed midway go first.
        await ScratchName.sweep(in: root, base: key.rawValue, logger: logger)
        let temporaryArchive = root.appending(ScratchName.make(base: key.rawValue, purpose: "tar.zst.partial"))
        let temporaryManifest = root.appending(ScratchName.make(base: key.rawValue, purpose: "manifest.partial"))
        defer {
            unlink(temporaryArchive.string)
            unlink(temporaryManifest.string)
        }
        do {
            // Hundreds of MB: copied on a thread of its own, not one of the cooperative pool's.
            TransferProgress.upload?.touch()
            try await DedicatedThread.run(name: "cachetiers-copy") { _ in
                try FileManager.default.copyItem(atPath: archive.file.string, toPath: temporaryArchive.string)
            }
            TransferProgress.upload?.advance(by: Int(clamping: archive.manifest.archiveSize))
            try archive.manifest.jsonData().write(to: URL(fileURLWithPath: temporaryManifest.string))
        } catch {
            throw CacheTierError(.transient, tier: name, "cannot write into \(root): \(error)", underlying: error)
        }
        var failure = link(temporaryArchive.string, archivePath(for: key).string) == 0 ? 0 : errno
        if failure == EEXIST && removeOrphanedArchive(for: key, logger: logger) {
            failure = link(temporaryArchive.string, archivePath(for: key).string) == 0 ? 0 : errno
        }
        guard failure == 0 else {
            if failure == EEXIST { return .exists }
            throw CacheTierError(
                .transient, tier: name, "cannot publish into \(root): \(String(cString: strerror(failure)))"
            )
        }
        do {
            try FileSystem.rename(temporaryManifest, to: manifestPath(for: key))
        } catch {
            unlink(archivePath(for: key).string)
            throw CacheTierError(.transient, tier: name, "cannot publish the manifest into \(root): \(error)", underlying: error)
        }
        return .published
    }

    /// Removes the archive for `key` when it has had no manifest for ``orphanAge``: left
    /// so, it would be a miss for every restore and `exists` for every publish, for good.
    /// - Returns: whether it was removed.
    private func removeOrphanedArchive(for key: CacheKey, logger: Logger) -> Bool {
        let archive = archivePath(for: key)
        var info = stat()
        guard FileSystem.kind(of: manifestPath(for: key)) == nil, lstat(archive.string, &info) == 0 else {
            return false
        }
        // link(2) sets the change time, so it says when the archive was published.
        let age = time(nil) - info.st_ctim.tv_sec
        guard age >= Int(orphanAge.components.seconds) else { return false }
        // Move it aside, then make sure it is the file judged: another publisher may have
        // repaired and republished the key in between, and that archive goes back.
        let aside = root.appending(ScratchName.make(base: key.rawValue, purpose: "orphan"))
        guard (try? FileSystem.rename(archive, to: aside)) != nil else { return false }
        var moved = stat()
        guard lstat(aside.string, &moved) == 0, moved.st_ino == info.st_ino, moved.st_dev == info.st_dev else {
            _ = link(aside.string, archive.string)
            unlink(aside.string)
            return false
        }
        unlink(aside.string)
        logger.notice(
            "removed an archive whose publish was interrupted before its manifest was written",
            metadata: ["tier": "\(name)", "key": "\(key)", "ageSeconds": "\(age)"]
        )
        return true
    }
}
