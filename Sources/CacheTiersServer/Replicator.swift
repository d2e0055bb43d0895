import CacheTiers
import Foundation
import Logging
import Prometheus
import Synchronization
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Pushes every archive the cache master newly stores to its replication targets (a
/// bucket, other masters, a directory) in the background: `serve --replicate-to`.
///
/// A `.created` publish queues one row per target in the durable ``ReplicationQueue``
/// before its 201 is sent; ``run()`` (in the server's task group) copies due rows, at
/// most ``concurrency`` at once, each from a hard link of the archive taken with its
/// manifest under the folder's lock (``ArchiveFolder/pin(_:at:)``), so a replace or an
/// eviction meanwhile cannot mix two archives. A copy asks the target first and uploads
/// create-only (``CachePublisher/publish(_:to:askingFirst:logger:)``): a target that
/// already holds the key (another master that replicated it back: 412) is done, so two
/// masters replicating to each other stop after one round.
///
/// A failed copy is retried after an exponential backoff with jitter, 1 s doubling to
/// 10 min, until it succeeds or has failed for ``giveUpAfter`` (then it is dropped and
/// counted). A key gone from the folder (evicted, deleted) drops its rows. At start the
/// rows a previous run left are resumed; nothing else is queued (reconciling what was
/// never queued is `cachetiers sync`'s job). A graceful shutdown stops the copies in
/// flight; their rows stay for the next start.
final class Replicator: Sendable {
    static let giveUpAfter: Duration = .seconds(24 * 3600)
    static let firstRetry = 1.0
    static let longestRetry = 600.0
    /// How often due retries are looked for when nothing rings.
    static let tick: Duration = .seconds(1)

    let queue: ReplicationQueue
    let folder: ArchiveFolder
    let targets: [any CacheSink]
    let metrics: ReplicationMetrics
    let limits: CachePublisher.Limits
    let concurrency: Int
    let logger: Logger
    /// Rings when a row is queued or a copy ends, so the worker looks at once.
    private let doorbell: AsyncStream<Void>.Continuation
    private let rings: AsyncStream<Void>
    private let busy = Mutex<Set<String>>([])

    init(
        queue: ReplicationQueue, folder: ArchiveFolder, targets: [any CacheSink], registry: PrometheusCollectorRegistry,
        limits: CachePublisher.Limits, concurrency: Int = 2, logger: Logger
    ) {
        self.queue = queue
        self.folder = folder
        self.targets = targets
        self.metrics = ReplicationMetrics(registry: registry, targets: targets.map(\.name))
        self.limits = limits
        self.concurrency = max(1, concurrency)
        self.logger = logger
        (rings, doorbell) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
    }

    /// Where archives are pinned while they are copied: in the master's hidden folder,
    /// on the root's filesystem (a hard link needs it).
    var pins: FilePath { folder.root.appending(CacheMasterServer.reportsFolderName).appending("replicating") }

    /// Queues `key` for every target; durable when this returns. A queue that cannot be
    /// written is logged, never fails the publish (the archive is stored; `cachetiers
    /// sync` reconciles).
    func enqueue(_ key: CacheKey) async {
        do {
            try await queue.enqueue(key, to: targets.map(\.name), at: Date())
        } catch {
            logger.error(
                "cannot queue the replication of a new archive; run cachetiers sync to copy it",
                metadata: ["key": "\(key)", "error": "\(error)"]
            )
        }
        refreshGauges()
        doorbell.yield()
    }

    /// Copies queued rows until cancelled.
    func run() async {
        // Pins a killed run left hold disk space for nothing: the rows they served are still queued.
        try? FileManager.default.removeItem(atPath: pins.string)
        try? FileManager.default.createDirectory(atPath: pins.string, withIntermediateDirectories: true)
        do {
            let dropped = try queue.removeRows(notFor: targets.map(\.name))
            if dropped > 0 {
                logger.warning("dropped queued copies to tiers no longer replicated to", metadata: ["rows": "\(dropped)"])
            }
        } catch {
            logger.error("cannot read the replication queue", metadata: ["error": "\(error)"])
        }
        refreshGauges()
        await withDiscardingTaskGroup { group in
            group.addTask { [doorbell] in
                while (try? await Task.sleep(for: Self.tick)) != nil { doorbell.yield() }
            }
            doorbell.yield()
            for await _ in rings {
                let free = concurrency - busy.withLock { $0.count }
                guard free > 0 else { continue }
                let due: [ReplicationQueue.Row]
                do {
                    due = try queue.due(at: Date(), limit: free, excluding: busy.withLock { $0 })
                } catch {
                    logger.error("cannot read the replication queue", metadata: ["error": "\(error)"])
                    continue
                }
                for row in due {
                    busy.withLock { _ = $0.insert(row.id) }
                    group.addTask {
                        await self.copy(row)
                        self.busy.withLock { _ = $0.remove(row.id) }
                        self.doorbell.yield()
                    }
                }
                refreshGauges()
            }
            group.cancelAll()
        }
    }

    /// One copy of one archive to one target.
    private func copy(_ row: ReplicationQueue.Row) async {
        guard let target = targets.first(where: { $0.name == row.target }) else { return }
        let pin = pins.appending(Self.pinName(for: row))
        defer { unlink(pin.string) }
        let manifest: CacheManifest?
        do {
            manifest = try folder.pin(row.key, at: pin)
        } catch {
            await failed(row, because: "\(error)")
            return
        }
        guard let manifest else {
            logger.notice(
                "dropped a queued copy: the archive is no longer on this master (evicted or deleted)",
                metadata: ["key": "\(row.key)", "target": "\(row.target)"]
            )
            try? await queue.remove(row)
            return
        }
        let record = await CachePublisher(packer: ArchivePacker(), limits: limits)
            .publish(PackedArchive(file: pin, manifest: manifest), to: [target], askingFirst: true, logger: logger)
            .first ?? WriteBackRecord(tier: target.name, outcome: .failed, error: "no answer")
        // A shutdown cut it: the row stays as it was, for the next start.
        if Task.isCancelled { return }
        switch record.outcome {
        case .published, .exists:
            metrics.copied(to: target.name, outcome: record.outcome == .published ? "published" : "exists", bytes: manifest.archiveSize)
            logger.info(
                "replicated", metadata: ["key": "\(row.key)", "target": "\(row.target)", "outcome": "\(record.outcome.rawValue)"]
            )
            do {
                try await queue.remove(row)
            } catch {
                logger.error("cannot remove a finished copy from the replication queue", metadata: ["error": "\(error)"])
            }
        case .failed, .pending, .detached:
            await failed(row, because: record.error ?? "failed")
        }
    }

    private func failed(_ row: ReplicationQueue.Row, because reason: String) async {
        metrics.failed(to: row.target)
        let now = Date()
        if now.timeIntervalSince(row.enqueuedAt) >= Self.giveUpAfter.inSeconds {
            metrics.dropped(to: row.target)
            logger.error(
                "gave up replicating an archive after 24 h of failures; run cachetiers sync once the target is healthy",
                metadata: ["key": "\(row.key)", "target": "\(row.target)", "attempts": "\(row.attempts + 1)", "error": "\(reason)"]
            )
            try? await queue.remove(row)
            return
        }
        let delay = Self.retryDelay(afterAttempt: row.attempts + 1, random: Double.random(in: 0..<1))
        logger.warning(
            "replication failed; retrying",
            metadata: ["key": "\(row.key)", "target": "\(row.target)", "in": "\(Int(delay)) s", "error": "\(reason)"]
        )
        do {
            try await queue.reschedule(row, at: now.addingTimeInterval(delay), error: reason)
        } catch {
            logger.error("cannot reschedule a failed copy in the replication queue", metadata: ["error": "\(error)"])
        }
    }

    /// 1 s doubling per attempt up to 10 min, the second half of it jittered, so many
    /// copies failing together do not retry together.
    static func retryDelay(afterAttempt attempt: Int, random: Double) -> Double {
        let ceiling = min(longestRetry, firstRetry * pow(2, Double(min(attempt, 30) - 1)))
        return ceiling / 2 + ceiling / 2 * random
    }

    /// The pin's file name for a row: the key and the target's name in hex, one per copy in flight.
    static func pinName(for row: ReplicationQueue.Row) -> String {
        "\(row.key.rawValue).\(row.target.utf8.map { String(format: "%02x", $0) }.joined()).tar.zst"
    }

    func refreshGauges() {
        guard let backlog = try? queue.backlog() else { return }
        metrics.refresh(backlog, now: Date())
    }
}

/// The replication series on the master's `/metrics`, each at 0 from the start for
/// every target (rate() needs the series before its first increase).
final class ReplicationMetrics: Sendable {
    private let registry: PrometheusCollectorRegistry
    private let backlog: [String: Prometheus.Gauge]
    private let oldest: [String: Prometheus.Gauge]

    private static func name(_ metric: String, _ unit: String, _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(namespace: "cachetiers", subsystem: "replication", metricName: metric, unitName: unit, helpText: help)
    }

    private static var copies: MetricNameDescriptor { name("copies", "total", "Archives replicated, by target and outcome (published, or exists: the target had it).") }
    private static var failures: MetricNameDescriptor { name("failures", "total", "Replication copies that failed (each is retried).") }
    private static var drops: MetricNameDescriptor { name("dropped", "total", "Queued copies given up after 24 h of failures.") }
    private static var bytes: MetricNameDescriptor { name("bytes", "total", "Archive bytes replicated.") }

    init(registry: PrometheusCollectorRegistry, targets: [String]) {
        self.registry = registry
        var backlog: [String: Prometheus.Gauge] = [:]
        var oldest: [String: Prometheus.Gauge] = [:]
        for target in targets {
            backlog[target] = registry.makeGauge(
                descriptor: Self.name("backlog", "", "Copies queued for a target."), labels: [("target", target)]
            )
            oldest[target] = registry.makeGauge(
                descriptor: Self.name("oldest_pending", "seconds", "Age of the oldest copy queued for a target."), labels: [("target", target)]
            )
            for outcome in ["published", "exists"] {
                registry.makeCounter(descriptor: Self.copies, labels: [("target", target), ("outcome", outcome)]).increment(by: Int64(0))
            }
            registry.makeCounter(descriptor: Self.failures, labels: [("target", target)]).increment(by: Int64(0))
            registry.makeCounter(descriptor: Self.drops, labels: [("target", target)]).increment(by: Int64(0))
            registry.makeCounter(descriptor: Self.bytes, labels: [("target", target)]).increment(by: Int64(0))
        }
        self.backlog = backlog
        self.oldest = oldest
    }

    func copied(to target: String, outcome: String, bytes: Int64) {
        registry.makeCounter(descriptor: Self.copies, labels: [("target", target), ("outcome", outcome)]).increment()
        if outcome == "published" {
            registry.makeCounter(descriptor: Self.bytes, labels: [("target", target)]).increment(by: bytes)
        }
    }

    func failed(to target: String) {
        registry.makeCounter(descriptor: Self.failures, labels: [("target", target)]).increment()
    }

    func dropped(to target: String) {
        registry.makeCounter(descriptor: Self.drops, labels: [("target", target)]).increment()
    }

    func refresh(_ state: [String: ReplicationQueue.Backlog], now: Date) {
        for (target, gauge) in backlog { gauge.set(Double(state[target]?.count ?? 0)) }
        for (target, gauge) in oldest {
            gauge.set(state[target]?.oldest.map { max(0, now.timeIntervalSince($0)) } ?? 0)
        }
    }
}
