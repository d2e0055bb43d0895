import Foundation
import Logging
import NIOPosix
import SystemPackage

/// A directory tier's use of its folder's ``ArchiveIndex``, best effort throughout: a
/// folder the process cannot write (a read-only mount, a restoring VM without the
/// rights) costs one debug line, never a failed restore or publish.
///
/// The index is opened for each operation and closed after it, so a restoring process
/// holds nothing open in the folder once its restore is done. A hit is recorded only in
/// an index that exists (a cache master sharing the folder made it, or a limited
/// directory did): a folder nobody limits is not given a database of its own.
struct FolderUseLog: Sendable {
    let folder: ArchiveFolder
    /// A restore waits at most this long for another process's write to the index.
    static let busyTimeout = Duration.milliseconds(500)

    /// Opens the index, runs `body` and closes it, on NIO's blocking-I/O pool.
    private func withIndex(creating: Bool, failure level: Logger.Level = .debug, logger: Logger, _ body: @escaping @Sendable (ArchiveIndex) throws -> Void) async {
        let folder = folder
        _ = try? await NIOThreadPool.singleton.runIfActive {
            guard creating || FileManager.default.fileExists(atPath: ArchiveIndex.path(in: folder.root).string) else { return }
            do {
                let index = try ArchiveIndex.open(root: folder.root, busyTimeout: Self.busyTimeout)
                defer { index.close() }
                try body(index)
            } catch {
                logger.log(level: level, "the directory tier's archive index is not usable", metadata: ["folder": "\(folder.root)", "error": "\(error)"])
            }
        }
    }

    /// Records a hit of `manifest`'s archive, or with `limited` creates the index for it.
    func recordHit(_ manifest: CacheManifest, limited: Bool, logger: Logger) async {
        await withIndex(creating: limited, logger: logger) { index in try index.recordHit(manifest, at: Date()) }
    }

    /// Applies `policy` to the folder after a publish into it; `published` is recorded as
    /// stored now first.
    func enforce(_ policy: RetentionPolicy, published: CacheManifest, logger: Logger) async {
        let folder = folder
        // Limits that cannot be applied are worth a warning: the folder keeps growing.
        await withIndex(creating: true, failure: .warning, logger: logger) { index in
            try index.recordPublished(published, at: Date())
            let report = try ArchiveRetention(folder: folder, index: index, policy: policy).enforce(logger: logger)
            if !report.evicted.isEmpty {
                logger.info(
                    "directory tier pruned",
                    metadata: ["evicted": "\(report.evicted.count)", "bytes": "\(report.evictedBytes)", "kept": "\(report.storedBytes)"]
                )
            }
        }
    }
}
