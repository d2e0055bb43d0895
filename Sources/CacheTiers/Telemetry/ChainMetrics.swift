import Metrics

/// The chain's counters and timers.
///
/// - `cachetiers_attempts_total{tier, outcome}`: attempts by how they ended.
/// - `cachetiers_attempt_duration_seconds{tier, outcome}`: how long attempts took.
/// - `cachetiers_restore_duration_seconds{tier}`: whole restores, by the tier that
///   served (`none` when every tier failed).
/// - `cachetiers_write_backs_total{tier, outcome}`.
struct ChainMetrics: Sendable {
    let factory: any MetricsFactory

    func recordAttempt(_ record: AttemptRecord, duration: Duration) {
        let dimensions = [("tier", record.tier), ("outcome", record.outcome.rawValue)]
        Counter(label: "cachetiers_attempts_total", dimensions: dimensions, factory: factory).increment()
        if record.outcome != .skipped {
            Timer(label: "cachetiers_attempt_duration_seconds", dimensions: dimensions, factory: factory)
                .record(duration: duration)
        }
    }

    func recordRestore(servedBy tier: String?, duration: Duration) {
        Timer(
            label: "cachetiers_restore_duration_seconds",
            dimensions: [("tier", tier ?? "none")],
            factory: factory
        ).record(duration: duration)
    }

    func recordWriteBack(_ record: WriteBackRecord) {
        Counter(
            label: "cachetiers_write_backs_total",
            dimensions: [("tier", record.tier), ("outcome", record.outcome.rawValue)],
            factory: factory
        ).increment()
    }
}
