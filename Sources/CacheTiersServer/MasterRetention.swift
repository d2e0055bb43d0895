import CacheTiers
import Foundation
import Logging
import NIOPosix
import Prometheus
import Synchronization

/// The cache master's side of retention: its archive index (hits, last served, created),
/// its ``RetentionPolicy`` applied at start, after each publish and every minute, the
/// archives in use that the policy may not evict, and the `/metrics` series of it all.
final class MasterRetention: Sendable {
    let policy: RetentionPolicy
    let inUse = ArchiveUseRegistry()
    let metrics: RetentionMetrics
    private let folder: ArchiveFolder
    private let logger: Logger
    private let state = Mutex<ArchiveRetention?>(nil)
    private let indexErrors: RateLimitedLog

    /// How often the policy runs while serving, beside after each publish.
    static let interval = Duration.seconds(60)

    init(folder: ArchiveFolder, policy: RetentionPolicy, metrics: RetentionMetrics, logger: Logger) {
        self.folder = folder
        self.policy = policy
        self.metrics = metrics
        self.logger = logger
        self.indexErrors = RateLimitedLog(logger: logger)
        metrics.capacity.set(Double(policy.maxSize?.bytes ?? 0))
    }

    /// Opens the index (reconciled with the folder) and applies the policy once.
    func open() throws(CacheMasterError) {
        let index: ArchiveIndex
        do {
            index = try ArchiveIndex.open(root: folder.root)
        } catch {
            throw CacheMasterError(error.description)
        }
        state.withLock { $0 = ArchiveRetention(folder: folder, index: index, policy: policy, inUse: inUse) }
        enforce()
    }

    func close() {
        state.withLock { state in
            state?.index.close()
            state = nil
        }
    }

    private var retention: ArchiveRetention? { state.withLock { $0 } }

    /// Applies the policy, with room for `incoming` bytes, and updates the gauges. A
    /// failure is logged (rate-limited): the master keeps serving.
    @discardableResult
    func enforce(incoming: Int64 = 0) -> ArchiveRetention.Report? {
        guard let retention else { return nil }
        do {
            let report = try retention.enforce(incoming: incoming, logger: logger)
            metrics.record(report)
            return report
        } catch {
            indexErrors.error("cannot apply the retention policy", error: error.description)
            return nil
        }
    }

    /// ``enforce(incoming:)`` on NIO's blocking-I/O pool: it unlinks files and writes SQLite.
    @discardableResult
    func enforceOffloaded(incoming: Int64 = 0) async -> ArchiveRetention.Report? {
        (try? await NIOThreadPool.singleton.runIfActive { self.enforce(incoming: incoming) }) ?? nil
    }

    func enforceEvery(_ interval: Duration) async {
        while (try? await Task.sleep(for: interval)) != nil {
            await enforceOffloaded()
        }
    }

    /// Whether an archive of `size` bytes can be stored under `--max-size`, evicting
    /// everything evictable; true when the index cannot tell (the publish then goes ahead).
    func admits(_ size: Int64) -> Bool {
        guard let retention else { return true }
        do {
            return try retention.admits(size)
        } catch {
            indexErrors.error("cannot read the archive index", error: error.description)
            return true
        }
    }

    /// A download from byte 0 of `manifest`'s archive started.
    func recordHit(_ manifest: CacheManifest) async {
        guard let retention else { return }
        do {
            try await retention.index.recordHitAsync(manifest, at: Date())
        } catch {
            indexErrors.error("cannot record a hit in the archive index", error: ArchiveIndex.describe(error))
        }
    }

    /// `manifest`'s archive was just published.
    func recordPublished(_ manifest: CacheManifest) {
        guard let retention else { return }
        do {
            try retention.index.recordPublished(manifest, at: Date())
            let totals = try retention.index.totals()
            metrics.storedArchives.set(Double(totals.archives))
            metrics.storedBytes.set(Double(totals.bytes))
        } catch {
            indexErrors.error("cannot record a publish in the archive index", error: error.description)
        }
    }

    /// One page of the folder's listing, with created, last served and hits from the index.
    func listArchives(after: CacheKey?, limit: Int) -> ArchivePage {
        var page = folder.listArchives(after: after, limit: limit)
        guard let retention else { return page }
        let entries: [CacheKey: ArchiveIndex.Entry]
        do {
            entries = try retention.index.entries(for: page.archives.map(\.key))
        } catch {
            indexErrors.error("cannot read the archive index", error: error.description)
            return page
        }
        for position in page.archives.indices {
            let entry = entries[page.archives[position].key]
            // Only a row that describes this archive (not one replaced by hand since) tells its creation.
            if let entry, entry.sha256 == page.archives[position].sha256 { page.archives[position].createdAt = entry.createdAt }
            page.archives[position].lastServedAt = entry?.lastServedAt
            page.archives[position].hits = entry?.hits ?? 0
        }
        return page
    }
}

/// The retention series of the master's `/metrics`, each at 0 from the start.
final class RetentionMetrics: Sendable {
    let storedBytes: Prometheus.Gauge
    let storedArchives: Prometheus.Gauge
    let capacity: Prometheus.Gauge
    let evictions: [RetentionPolicy.Reason: Prometheus.Counter]
    let evictedBytes: Prometheus.Counter

    init(registry: PrometheusCollectorRegistry) {
        func name(_ metric: String, _ unit: String, _ help: String) -> MetricNameDescriptor {
            MetricNameDescriptor(namespace: "cachetiers", subsystem: "server", metricName: metric, unitName: unit, helpText: help)
        }
        storedBytes = registry.makeGauge(descriptor: name("stored", "bytes", "Bytes of the archives in the root."))
        storedArchives = registry.makeGauge(descriptor: name("stored", "archives", "Archives in the root."))
        capacity = registry.makeGauge(descriptor: name("capacity", "bytes", "The --max-size limit in bytes; 0 when there is none."))
        let evictionName = name("evictions", "total", "Archives evicted by the retention policy, by reason.")
        evictions = Dictionary(
            uniqueKeysWithValues: RetentionPolicy.Reason.allCases.map {
                ($0, registry.makeCounter(descriptor: evictionName, labels: [("reason", $0.rawValue)]))
            }
        )
        evictedBytes = registry.makeCounter(descriptor: name("evicted_bytes", "total", "Bytes of the archives evicted."))
    }

    func record(_ report: ArchiveRetention.Report) {
        storedBytes.set(Double(report.storedBytes))
        storedArchives.set(Double(report.storedArchives))
        for victim in report.evicted { evictions[victim.reason]?.increment() }
        if report.evictedBytes > 0 { evictedBytes.increment(by: report.evictedBytes) }
    }
}
