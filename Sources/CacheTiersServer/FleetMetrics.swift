import Foundation
import Prometheus
import Synchronization

/// The fleet's aggregates on `/metrics`, counted once per stored report (never per
/// duplicate) in the server's registry.
///
/// No label names a VM, so the series do not grow with the fleet. Tier names come from
/// the reports, so they are untrusted: the first ``maximumTierLabels`` distinct names
/// seen by this process are labels, every later one is `other`. Counters are this
/// process's own (a restart resets them, which Prometheus's `rate()` handles).
final class FleetMetrics: Sendable {
    static let durationBuckets: [Double] = [1, 5, 10, 20, 30, 45, 60, 80, 90, 120, 180, 300, 600]
    static let maximumTierLabels = 32
    static let otherTier = "other"
    /// `served_by` of a failed restore.
    static let noTier = "none"

    enum Rejection: String, CaseIterable {
        /// Over 256 KiB.
        case tooLarge = "too_large"
        /// Not JSON, or a field missing, mistyped or out of bounds.
        case malformed
        /// The store could not commit it (answered 503).
        case storeFailed = "store_failed"
    }

    private let registry: PrometheusCollectorRegistry
    private let tiers = Mutex<Set<String>>([])
    private let stored: Prometheus.Gauge
    private let lastReportAge: Prometheus.Gauge

    /// `cachetiers_fleet_<metric>_<unit>`, the names `Documentation/Contract.md` fixes.
    private static func name(_ metric: String, _ unit: String, _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(namespace: "cachetiers", subsystem: "fleet", metricName: metric, unitName: unit, helpText: help)
    }

    private static var durations: MetricNameDescriptor { name("restore_duration", "seconds", "Restore durations the fleet reported, by the tier that served.") }
    private static var restores: MetricNameDescriptor { name("restores", "total", "Restores the fleet reported, by outcome and the tier that served.") }
    private static var attempts: MetricNameDescriptor { name("attempts", "total", "Attempts the fleet reported, by tier and outcome.") }
    private static var bytes: MetricNameDescriptor { name("bytes", "total", "Bytes the serving tiers transferred, as the fleet reported.") }
    private static var cost: MetricNameDescriptor { name("estimated_cost_usd", "total", "Estimated cost of the restores in USD, by the tier that served.") }
    private static var rejected: MetricNameDescriptor { name("reports_rejected", "total", "Reports the cache master refused, by reason.") }

    init(registry: PrometheusCollectorRegistry) {
        self.registry = registry
        stored = registry.makeGauge(descriptor: Self.name("reports", "stored", "Reports in the cache master's store."))
        lastReportAge = registry.makeGauge(
            descriptor: Self.name("last_report_age", "seconds", "Seconds since the newest stored report arrived; -1 when none is stored.")
        )
        lastReportAge.set(to: -1)
        restores(outcome: ReceivedReport.Outcome.failed.rawValue, servedBy: Self.noTier).increment(by: Int64(0))
        for reason in Rejection.allCases { rejections(reason).increment(by: Int64(0)) }
    }

    /// Creates at 0 the series a report served by each of `tiers` (and a failed one)
    /// would move: a series that first appears with its first sample is an increase
    /// Prometheus never sees.
    func prepareSeries(servedBy tiers: [String]) {
        registry.makeValueHistogram(descriptor: Self.durations, labels: [("served_by", Self.noTier)], buckets: Self.durationBuckets)
        for tier in tiers.map(label) {
            restores(outcome: ReceivedReport.Outcome.restored.rawValue, servedBy: tier).increment(by: Int64(0))
            registry.makeValueHistogram(descriptor: Self.durations, labels: [("served_by", tier)], buckets: Self.durationBuckets)
            registry.makeCounter(descriptor: Self.bytes, labels: [("tier", tier)]).increment(by: Int64(0))
            registry.makeCounter(descriptor: Self.cost, labels: [("tier", tier)]).increment(by: 0.0)
        }
    }

    /// Counts a report that was just stored.
    func record(_ report: ReceivedReport) {
        let servedBy = report.servedBy.map(label) ?? Self.noTier
        restores(outcome: report.outcome.rawValue, servedBy: servedBy).increment()
        registry.makeValueHistogram(descriptor: Self.durations, labels: [("served_by", servedBy)], buckets: Self.durationBuckets)
            .record(report.durationSeconds)
        for attempt in report.attempts {
            registry.makeCounter(
                descriptor: Self.attempts, labels: [("tier", label(attempt.tier)), ("outcome", attempt.outcome.rawValue)]
            ).increment()
        }
        guard let tier = report.servedBy.map(label) else { return }
        registry.makeCounter(descriptor: Self.bytes, labels: [("tier", tier)]).increment(by: report.bytesTransferred)
        registry.makeCounter(descriptor: Self.cost, labels: [("tier", tier)]).increment(by: report.estimatedCostUSD ?? 0)
    }

    func reject(_ reason: Rejection) {
        rejections(reason).increment()
    }

    /// Sets the gauges computed at scrape from the store.
    func refresh(_ summary: ReportStore.Summary, now: Date) {
        stored.set(to: Double(summary.count))
        lastReportAge.set(to: summary.newestArrival.map { max(0, now.timeIntervalSince($0)) } ?? -1)
    }

    /// The label for a tier name from a report: itself while fewer than 32 names have
    /// been seen, else `other`.
    func label(_ tier: String) -> String {
        tiers.withLock { seen in
            if seen.contains(tier) { return tier }
            guard seen.count < Self.maximumTierLabels else { return Self.otherTier }
            seen.insert(tier)
            return tier
        }
    }

    private func restores(outcome: String, servedBy: String) -> Prometheus.Counter {
        registry.makeCounter(descriptor: Self.restores, labels: [("outcome", outcome), ("served_by", servedBy)])
    }

    private func rejections(_ reason: Rejection) -> Prometheus.Counter {
        registry.makeCounter(descriptor: Self.rejected, labels: [("reason", reason.rawValue)])
    }
}
