import Foundation
import Logging
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Recovering what a killed publish left: scratch files, an archive without its
/// manifest, a pair that does not belong together.
extension ArchiveFolder {
    /// The folder, inside the root, where ``prepare(gracePeriod:logger:)`` moves what it
    /// doubts; hidden, so no key can name it.
    package static let quarantineName = ".quarantine"

    /// What ``prepare(gracePeriod:logger:)`` did, by file name.
    package struct Preparation: Sendable, Equatable {
        /// Scratch files of publishes cut short.
        package var removed: [String] = []
        /// Archives without their manifest, lone manifests and pairs that disagree, moved
        /// into ``ArchiveFolder/quarantineName``.
        package var quarantined: [String] = []
    }

    /// Creates the folder and clears what a crash left half-published, so a key is not
    /// a miss to every reader and `exists` to every create-only publish for good.
    ///
    /// Only names a publish could have written are touched. Scratch files are deleted
    /// once their process is gone (or, made on another host, once unchanged for
    /// `gracePeriod`). An archive without its manifest, a lone manifest, or a pair whose
    /// key or size disagree is moved into ``quarantineName``, never deleted, since an
    /// operator may still want it, and only once every file of the key is older than
    /// `gracePeriod` (a file still being copied in by hand is younger). Anything else
    /// (files that are not `KEY.tar.zst` for a valid key, folders) is left alone. Every
    /// removal and move is logged.
    @discardableResult
    package func prepare(gracePeriod: Duration, logger: Logger) throws(ArchiveFolderError) -> Preparation {
        do {
            try FileManager.default.createDirectory(atPath: root.string, withIntermediateDirectories: true)
        } catch {
            throw ArchiveFolderError(.unusableFolder, "cannot create the folder \(root): \(error.localizedDescription)")
        }
        return try lock.withLock(.exclusive) { () throws(ArchiveFolderError) -> Preparation in
            try prepareLocked(gracePeriod: gracePeriod, logger: logger)
        }
    }

    private func prepareLocked(gracePeriod: Duration, logger: Logger) throws(ArchiveFolderError) -> Preparation {
        let names = Set(entries())
        let now = time(nil)
        let grace = Int(gracePeriod.components.seconds)
        func isSettled(_ name: String) -> Bool {
            guard let info = regularFile(name) else { return false }
            return now - info.st_mtim.tv_sec >= grace
        }
        var preparation = Preparation()
        preparation.removed = removeLeftovers(among: names.sorted(), logger: logger) { name, owner in
            owner.host != ScratchName.hostName && isSettled(name)
        }

        // A key's doubtful files are judged together: moved only once every one of them
        // has settled, so a pair is never split.
        var doubtful: [[String]] = []
        for archive in names where Self.key(ofArchive: archive) != nil && regularFile(archive) != nil {
            let manifest = archive + Self.manifestSuffix
            if !belongTogether(archive: archive, manifest: manifest) {
                doubtful.append(names.contains(manifest) ? [archive, manifest] : [archive])
            }
        }
        for manifest in names where manifest.hasSuffix(Self.manifestSuffix) && regularFile(manifest) != nil {
            let archive = String(manifest.dropLast(Self.manifestSuffix.count))
            if Self.key(ofArchive: archive) != nil, !names.contains(archive) { doubtful.append([manifest]) }
        }
        let settled = doubtful.filter { $0.allSatisfy(isSettled) }.flatMap { $0 }.sorted()
        if !settled.isEmpty {
            let quarantine = root.appending(Self.quarantineName)
            do {
                try FileManager.default.createDirectory(atPath: quarantine.string, withIntermediateDirectories: true)
            } catch {
                throw ArchiveFolderError(
                    .unusableFolder,
                    "cannot create \(quarantine) to move half-published files into: \(error.localizedDescription); "
                        + "move whatever is at that path away"
                )
            }
            for name in settled {
                guard let target = Self.freeName(for: name, in: quarantine) else { continue }
                if rename(root.appending(name).string, target.string) == 0 {
                    preparation.quarantined.append(name)
                    logger.notice(
                        "moved aside a file without its pair, left by a publish cut short or copied in by hand",
                        metadata: ["file": "\(name)", "to": "\(target)"]
                    )
                }
            }
        }
        for name in Set(doubtful.flatMap { $0 }).subtracting(settled).sorted() {
            logger.notice("left a file without its pair: it is younger than the grace period", metadata: ["file": "\(name)"])
        }
        return preparation
    }

    /// Removes the scratch files of `key` whose process is gone from this host.
    func removeLeftovers(of key: CacheKey, logger: Logger) {
        let names = entries().filter { Self.scratch($0)?.key == key }
        removeLeftovers(among: names, logger: logger) { _, _ in false }
    }

    /// Removes the folder's scratch files among `names` whose process is gone from this
    /// host, or for which `isAbandoned` says so (a process on another host cannot be asked).
    @discardableResult
    private func removeLeftovers(
        among names: [String],
        logger: Logger,
        isAbandoned: (String, ScratchName.Owner) -> Bool
    ) -> [String] {
        var removed: [String] = []
        for name in names {
            guard let (_, owner) = Self.scratch(name), !owner.isAlive || isAbandoned(name, owner) else { continue }
            if unlink(root.appending(name).string) == 0 {
                removed.append(name)
                logger.notice("removed the scratch file of a publish cut short", metadata: ["file": "\(name)"])
            }
        }
        return removed
    }

    /// Removes the archive of `key` when it has had no manifest for `age`: left so, it
    /// would be a miss for every reader and `exists` for every create-only publish, for
    /// good. Called under the folder's exclusive lock.
    /// - Returns: whether it was removed.
    func removeOrphanedArchive(of key: CacheKey, olderThan age: Duration, logger: Logger) -> Bool {
        let archive = archivePath(for: key)
        var info = stat()
        guard FileSystem.kind(of: manifestPath(for: key)) == nil, lstat(archive.string, &info) == 0 else {
            return false
        }
        // link(2) sets the change time, so it says when the archive was published.
        let standing = time(nil) - info.st_ctim.tv_sec
        guard standing >= Int(age.components.seconds) else { return false }
        // Move it aside, then make sure it is the file judged: a writer that does not take
        // the lock (a copy by hand) may have replaced it in between, and that one goes back.
        let aside = scratchPath(for: key, purpose: Self.orphanScratch)
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
            metadata: ["folder": "\(root)", "key": "\(key)", "ageSeconds": "\(standing)"]
        )
        return true
    }

    /// The names in the folder (none when it cannot be read).
    private func entries() -> [String] {
        (try? FileManager.default.contentsOfDirectory(atPath: root.string)) ?? []
    }

    private func regularFile(_ name: String) -> stat? {
        var info = stat()
        guard lstat(root.appending(name).string, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG else { return nil }
        return info
    }

    /// `folder/name`, or `folder/name.1`, `.2` … when that is taken: an earlier
    /// quarantined file is never overwritten.
    static func freeName(for name: String, in folder: FilePath) -> FilePath? {
        for attempt in 0..<1000 {
            let candidate = folder.appending(attempt == 0 ? name : "\(name).\(attempt)")
            var info = stat()
            if lstat(candidate.string, &info) != 0, errno == ENOENT { return candidate }
        }
        return nil
    }

    /// The key of `KEY.tar.zst`, when `name` is that for a valid key.
    static func key(ofArchive name: String) -> CacheKey? {
        guard name.hasSuffix(archiveSuffix) else { return nil }
        return try? CacheKey(String(name.dropLast(archiveSuffix.count)))
    }

    /// Whether `manifest` exists, parses, is for the archive's key, and describes an
    /// archive of `archive`'s size.
    private func belongTogether(archive: String, manifest: String) -> Bool {
        guard let data = FileManager.default.contents(atPath: root.appending(manifest).string),
            let parsed = try? CacheManifest(jsonData: data),
            parsed.key == Self.key(ofArchive: archive),
            let info = regularFile(archive)
        else { return false }
        return parsed.archiveSize == Int64(info.st_size)
    }
}
