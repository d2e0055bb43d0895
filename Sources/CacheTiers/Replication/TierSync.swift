import Foundation
import Logging
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Copies every archive one tier holds and others lack, as it is: `cachetiers sync`.
///
/// It walks the source's listing and each target's side by side, page by page in key
/// order (``ArchiveInventory/listArchives(after:limit:logger:)``), so memory holds a
/// page of each however many archives there are. An archive some target lacks is
/// fetched once (``ArchiveInventory/fetchArchive(_:to:logger:)``: verified against its
/// manifest on arrival) into the scratch folder and published create-only to every
/// target lacking it at once (``CachePublisher/publish(_:to:logger:)``, whose sinks
/// verify it again), then removed. At most ``Options/concurrency`` archives are in
/// flight, so scratch space is that many archives.
///
/// Running it again copies nothing: what the first run copied is listed by the target.
/// A failed copy is counted and the walk goes on; the summary says what failed.
public struct TierSync: Sendable {
    public struct Options: Sendable {
        /// Archives copied at once.
        public var concurrency: Int
        /// List what would be copied, copy nothing.
        public var dryRun: Bool
        /// The bounds of each copy: a fetch or an upload that moves no byte for
        /// `stallTimeout` is given up, and each key's copy ends by `timeout`.
        public var limits: CachePublisher.Limits
        /// An existing folder for the copies in flight; a folder of this run's own is
        /// made in it and removed at the end.
        public var scratch: FilePath

        public init(
            concurrency: Int = 2,
            dryRun: Bool = false,
            limits: CachePublisher.Limits = .init(timeout: nil, stallTimeout: .seconds(30)),
            scratch: FilePath = FilePath(NSTemporaryDirectory())
        ) {
            self.concurrency = max(1, concurrency)
            self.dryRun = dryRun
            self.limits = limits
            self.scratch = scratch
        }
    }

    /// What a run did.
    public struct Summary: Sendable, Codable, Hashable {
        /// (archive, target) copies published.
        public var copied = 0
        /// (archive, target) pairs the target already held.
        public var alreadyThere = 0
        /// (archive, target) copies that failed.
        public var failed = 0
        /// Archive bytes published (once per target).
        public var bytes: Int64 = 0
        /// In a dry run, the copies that would be made, and their bytes.
        public var planned = 0
        public var plannedBytes: Int64 = 0
        public var dryRun = false
        public var seconds = 0.0
        public var failures: [Failure] = []

        public struct Failure: Sendable, Codable, Hashable {
            public var key: CacheKey
            public var tier: String
            public var error: String
        }
    }

    /// What a run tells as it goes, for progress lines.
    public enum Event: Sendable {
        /// An archive is being fetched for these targets.
        case copying(ArchiveListing, to: [String])
        /// A dry run would copy it to these targets.
        case wouldCopy(ArchiveListing, to: [String])
        /// One target's outcome for an archive.
        case finished(CacheKey, WriteBackRecord)
    }

    public let source: any ArchiveInventory
    public let targets: [any ArchiveInventory]
    public let options: Options
    private let onEvent: @Sendable (Event) -> Void

    public init(
        from source: any ArchiveInventory,
        to targets: [any ArchiveInventory],
        options: Options = .init(),
        onEvent: @escaping @Sendable (Event) -> Void = { _ in }
    ) {
        self.source = source
        self.targets = targets
        self.options = options
        self.onEvent = onEvent
    }

    /// Runs the sync.
    /// - Throws: when a listing cannot be read (the source, or a target); a failed copy
    ///   is in the summary instead.
    public func run(logger: Logger) async throws -> Summary {
        let started = ContinuousClock.now
        var summary = Summary()
        summary.dryRun = options.dryRun
        await ScratchName.sweep(in: options.scratch, base: Self.scratchBase, logger: logger)
        let folder = options.scratch.appending(ScratchName.make(base: Self.scratchBase, purpose: "copies"))
        if !options.dryRun {
            do {
                try FileManager.default.createDirectory(atPath: folder.string, withIntermediateDirectories: false)
            } catch {
                throw CacheTierError(.fatal, "cannot make a scratch folder in \(options.scratch): \(error.localizedDescription); pass another --scratch")
            }
        }
        defer { if !options.dryRun { try? FileSystem.removeTree(folder) } }

        var sourceListing = ListingCursor(source)
        var targetListings = targets.map(ListingCursor.init)
        try await withThrowingTaskGroup(of: [(CacheKey, WriteBackRecord, Int64)].self) { group in
            var inFlight = 0
            func collect(_ results: [(CacheKey, WriteBackRecord, Int64)]) {
                for (key, record, size) in results {
                    switch record.outcome {
                    case .published:
                        summary.copied += 1
                        summary.bytes += size
                    case .exists:
                        summary.alreadyThere += 1
                    case .failed, .pending, .detached:
                        summary.failed += 1
                        summary.failures.append(.init(key: key, tier: record.tier, error: record.error ?? "failed"))
                    }
                }
            }
            while let listing = try await sourceListing.next(logger: logger) {
                var missing: [any ArchiveInventory] = []
                for index in targetListings.indices {
                    if try await targetListings[index].holds(listing.key, logger: logger) {
                        summary.alreadyThere += 1
                    } else {
                        missing.append(targets[index])
                    }
                }
                guard !missing.isEmpty else { continue }
                if options.dryRun {
                    summary.planned += missing.count
                    summary.plannedBytes += listing.size * Int64(missing.count)
                    onEvent(.wouldCopy(listing, to: missing.map(\.name)))
                    continue
                }
                if inFlight == options.concurrency, let results = try await group.next() {
                    inFlight -= 1
                    collect(results)
                }
                onEvent(.copying(listing, to: missing.map(\.name)))
                inFlight += 1
                group.addTask { await copy(listing, to: missing, in: folder, logger: logger) }
            }
            while let results = try await group.next() { collect(results) }
        }
        summary.seconds = (ContinuousClock.now - started).inSeconds
        return summary
    }

    static let scratchBase = "cachetiers-sync"

    /// One archive: fetched once, published to every target lacking it, removed.
    private func copy(
        _ listing: ArchiveListing, to targets: [any ArchiveInventory], in folder: FilePath, logger: Logger
    ) async -> [(CacheKey, WriteBackRecord, Int64)] {
        let key = listing.key
        let file = folder.appending("\(key.rawValue).tar.zst")
        defer { unlink(file.string) }
        let source = self.source
        let records: [WriteBackRecord]
        do {
            let clock = ChainClock(ContinuousClock())
            let fetched = try await Bounded<Result<CacheManifest?, any Error>>.runThrowing(
                deadline: options.limits.timeout.map { clock.now() + $0 }, stallTimeout: options.limits.stallTimeout, clock: clock
            ) {
                try await source.fetchArchive(key, to: file, logger: logger)
            }.value(limits: options.limits, what: "\(source.name) sent no byte of \(key)")
            guard let manifest = fetched else {
                // Evicted or deleted since it was listed: nothing to copy, nothing failed.
                logger.notice("an archive listed by the source is gone; not copied", metadata: ["key": "\(key)", "tier": "\(source.name)"])
                return []
            }
            records = await CachePublisher(packer: ArchivePacker(), limits: options.limits)
                .publish(PackedArchive(file: file, manifest: manifest), to: targets, logger: logger)
        } catch {
            records = targets.map { WriteBackRecord(tier: $0.name, outcome: .failed, error: "fetching from \(source.name) failed: \(error)") }
        }
        for record in records { onEvent(.finished(key, record)) }
        return records.map { (key, $0, listing.size) }
    }
}

/// An inventory's listing read one page at a time, in key order.
struct ListingCursor {
    let inventory: any ArchiveInventory
    private var page: [ArchiveListing] = []
    private var index = 0
    private var after: CacheKey?
    private var ended = false

    init(_ inventory: any ArchiveInventory) {
        self.inventory = inventory
    }

    /// The next listing, or nil at the end.
    mutating func next(logger: Logger) async throws -> ArchiveListing? {
        guard let listing = try await peek(logger: logger) else { return nil }
        index += 1
        return listing
    }

    /// Whether the inventory lists `key`, moving past every key before it.
    mutating func holds(_ key: CacheKey, logger: Logger) async throws -> Bool {
        while let current = try await peek(logger: logger), current.key.precedes(key) { index += 1 }
        return try await peek(logger: logger)?.key == key
    }

    private mutating func peek(logger: Logger) async throws -> ArchiveListing? {
        while index == page.count {
            if ended { return nil }
            let next = try await inventory.listArchives(after: after, limit: ArchivePage.maximumLimit, logger: logger)
            page = next.archives
            index = 0
            // A page that does not move forward would loop for ever.
            if let nextKey = next.next, after.map({ $0.precedes(nextKey) }) ?? true {
                after = nextKey
            } else {
                ended = true
            }
        }
        return page[index]
    }
}
