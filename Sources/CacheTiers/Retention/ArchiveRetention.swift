import Foundation
import Logging
import Synchronization
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The archives of a folder in use right now (being streamed or published), which
/// retention never evicts. Each use is a ``Hold``: released when it is, or when it is
/// dropped, so no path (a client gone before its body started, a throw) can leak one.
package final class ArchiveUseRegistry: Sendable {
    private let counts = Mutex<[CacheKey: Int]>([:])

    package init() {}

    package final class Hold: Sendable {
        package let key: CacheKey
        private let registry: ArchiveUseRegistry
        private let released = Atomic<Bool>(false)

        fileprivate init(key: CacheKey, registry: ArchiveUseRegistry) {
            self.key = key
            self.registry = registry
        }

        package func release() {
            guard !released.exchange(true, ordering: .acquiringAndReleasing) else { return }
            registry.counts.withLock { counts in
                counts[key, default: 1] -= 1
                if counts[key] == 0 { counts[key] = nil }
            }
        }

        deinit { release() }
    }

    package func hold(_ key: CacheKey) -> Hold {
        counts.withLock { $0[key, default: 0] += 1 }
        return Hold(key: key, registry: self)
    }

    package func contains(_ key: CacheKey) -> Bool {
        counts.withLock { $0[key] != nil }
    }

    package var keys: Set<CacheKey> {
        counts.withLock { Set($0.keys) }
    }
}

/// A ``RetentionPolicy`` applied to one folder through its ``ArchiveIndex``: what the
/// cache master runs at start, after each publish and every minute, what a directory
/// tier runs after each publish into it, and what `cachetiers prune` runs.
///
/// Each victim goes under the folder's exclusive lock, manifest first (a reader that
/// opens the key meanwhile sees a miss, never half a pair), and only if it is still the
/// archive the index described and not in use; then its row goes.
package final class ArchiveRetention: Sendable {
    package let folder: ArchiveFolder
    package let index: ArchiveIndex
    package let policy: RetentionPolicy
    package let inUse: ArchiveUseRegistry
    /// One enforcement at a time: two would pick the same victims.
    private let serial = Mutex(())

    package init(folder: ArchiveFolder, index: ArchiveIndex, policy: RetentionPolicy, inUse: ArchiveUseRegistry = ArchiveUseRegistry()) {
        self.folder = folder
        self.index = index
        self.policy = policy
        self.inUse = inUse
    }

    /// What one enforcement did (or, dry, would do).
    package struct Report: Sendable, Hashable {
        package var evicted: [RetentionPolicy.Victim] = []
        /// What the folder holds once the victims are gone.
        package var storedBytes: Int64 = 0
        package var storedArchives = 0
        /// Whether an incoming archive fits once the victims are gone.
        package var fits = true

        package var evictedBytes: Int64 { evicted.reduce(0) { $0 + $1.entry.size } }
    }

    /// Brings the folder under the policy, with room for `incoming` more bytes.
    /// - Parameter dryRun: only say what would go.
    package func enforce(incoming: Int64 = 0, dryRun: Bool = false, now: Date = Date(), logger: Logger) throws(ArchiveIndexError) -> Report {
        try serial.withLock { _ throws(ArchiveIndexError) -> Report in
            let entries: [ArchiveIndex.Entry]
            if dryRun {
                entries = try Self.entries(of: folder, index: index)
            } else {
                try index.reconcile(with: folder)
                entries = try index.entries()
            }
            var report = Report(storedBytes: entries.reduce(0) { $0 + $1.size }, storedArchives: entries.count)
            if dryRun {
                let plan = policy.plan(entries, inUse: inUse.keys, incoming: incoming, now: now)
                report.evicted = plan.victims
                report.fits = plan.fits
            } else {
                // A victim a download took between the plan and its eviction stays; the
                // next round plans without it, so "fits" is only said of what was freed.
                var left = entries
                for _ in 0..<Self.rounds {
                    let plan = policy.plan(left, inUse: inUse.keys, incoming: incoming, now: now)
                    let (evicted, gone) = try evict(plan.victims, logger: logger)
                    report.evicted += evicted
                    left.removeAll { gone.contains($0.key) }
                    report.fits = plan.fits && gone.count == plan.victims.count
                    if report.fits || plan.victims.isEmpty { break }
                }
            }
            // What stays (or, dry, would stay).
            report.storedBytes -= report.evictedBytes
            report.storedArchives -= report.evicted.count
            return report
        }
    }

    /// Rounds of planning and evicting one enforcement makes at most.
    static let rounds = 4

    /// Evicts `victims` one by one; returns those removed, and the keys no longer in the
    /// folder (those removed and those already gone).
    private func evict(
        _ victims: [RetentionPolicy.Victim], logger: Logger
    ) throws(ArchiveIndexError) -> (evicted: [RetentionPolicy.Victim], gone: Set<CacheKey>) {
        var removed: [RetentionPolicy.Victim] = []
        var gone = Set<CacheKey>()
        for victim in victims {
            let key = victim.entry.key
            let outcome: ArchiveFolder.Eviction
            do {
                outcome = try folder.evict(key, expectedSHA256: victim.entry.sha256) { inUse.contains(key) }
            } catch {
                logger.error("cannot evict an archive", metadata: ["key": "\(key)", "error": "\(error)"])
                continue
            }
            switch outcome {
            case .removed:
                try index.remove(key)
                removed.append(victim)
                gone.insert(key)
                logger.notice(
                    "evicted",
                    metadata: [
                        "key": "\(key)", "bytes": "\(victim.entry.size)", "reason": "\(victim.reason.rawValue)",
                        "lastUsed": "\(victim.entry.lastUsed)",
                    ]
                )
            case .missing:
                try index.remove(key)
                gone.insert(key)
            case .inUse, .changed:
                // Taken by a download or replaced by a publish since the plan: it stays.
                break
            }
        }
        return (removed, gone)
    }

    /// The folder's archives as the index describes them, without writing anything: an
    /// archive the index lacks (or that has no index) by its manifest, never served.
    package static func entries(of folder: ArchiveFolder, index: ArchiveIndex?) throws(ArchiveIndexError) -> [ArchiveIndex.Entry] {
        let keys = folder.keys()
        let known = try index?.entries(for: keys) ?? [:]
        return keys.compactMap { key in
            if let entry = known[key] { return entry }
            guard let manifest = try? folder.manifest(for: key) else { return nil }
            return ArchiveIndex.Entry(
                key: key, size: manifest.archiveSize, sha256: manifest.archiveSHA256, createdAt: manifest.createdAt, hits: 0
            )
        }
    }

    /// `cachetiers prune` for one folder: the policy applied through the folder's index,
    /// or, dry, what it would evict, with nothing written (not even a new index).
    package static func prune(
        _ folder: ArchiveFolder, policy: RetentionPolicy, dryRun: Bool, now: Date = Date(), logger: Logger
    ) throws(ArchiveIndexError) -> Report {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: folder.root.string, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw ArchiveIndexError("\(folder.root) is not a folder; check the tier's path")
        }
        let hasIndex = FileManager.default.fileExists(atPath: ArchiveIndex.path(in: folder.root).string)
        if dryRun, !hasIndex {
            let entries = try entries(of: folder, index: nil)
            let plan = policy.plan(entries, inUse: [], now: now)
            return Report(
                evicted: plan.victims, storedBytes: plan.remainingBytes, storedArchives: entries.count - plan.victims.count, fits: plan.fits
            )
        }
        let index = try ArchiveIndex.open(root: folder.root)
        defer { index.close() }
        return try ArchiveRetention(folder: folder, index: index, policy: policy).enforce(dryRun: dryRun, now: now, logger: logger)
    }

    /// Whether an archive of `size` bytes can be stored, evicting everything the policy
    /// may evict: false when even that leaves no room (the cache master's 507).
    package func admits(_ size: Int64, now: Date = Date()) throws(ArchiveIndexError) -> Bool {
        guard let maxSize = policy.maxSize else { return true }
        guard size <= maxSize.bytes else { return false }
        var everything = policy
        everything.maxAgeUnused = nil
        return everything.plan(try index.entries(), inUse: inUse.keys, incoming: size, now: now).fits
    }
}

extension ArchiveFolder {
    /// What ``evict(_:expectedSHA256:isInUse:)`` did.
    package enum Eviction: Sendable, Equatable {
        case removed(bytes: Int64)
        /// In use when the lock was taken: left alone.
        case inUse
        /// Replaced since it was picked (another SHA-256): left alone.
        case changed
        /// Already gone.
        case missing
    }

    /// Removes the pair of `key` under the folder's exclusive lock, manifest first, unless
    /// `isInUse()` says it is taken or its manifest is no longer the one of `expectedSHA256`.
    package func evict(
        _ key: CacheKey, expectedSHA256: String?, isInUse: () -> Bool
    ) throws(ArchiveFolderError) -> Eviction {
        try lock.withLock(.exclusive) { () throws(ArchiveFolderError) -> Eviction in
            if isInUse() { return .inUse }
            let manifest: CacheManifest?
            do throws(ArchiveFolderError) {
                manifest = try self.manifest(for: key)
            } catch {
                // Unreadable: not served either; recovery moves it aside, retention leaves it.
                return .changed
            }
            guard let manifest else { return .missing }
            if let expectedSHA256, manifest.archiveSHA256 != expectedSHA256 { return .changed }
            guard unlink(manifestPath(for: key).string) == 0 || errno == ENOENT else {
                throw ArchiveFolderError(.io, "cannot remove \(manifestPath(for: key)): \(Errno(rawValue: errno))")
            }
            guard unlink(archivePath(for: key).string) == 0 || errno == ENOENT else {
                throw ArchiveFolderError(
                    .io, "cannot remove \(archivePath(for: key)) (its manifest is gone, so it is no longer served): \(Errno(rawValue: errno))"
                )
            }
            return .removed(bytes: manifest.archiveSize)
        }
    }
}
