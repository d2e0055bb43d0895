import Foundation

/// The six alerts of `Deploy/prometheus/cachetiers-rules.yml`, evaluated on the stored
/// reports for the dashboard: the same thresholds, windows and guards (a test reads the
/// YAML and fails when one differs from the constants here).
///
/// Evaluation works like Prometheus with a one-minute evaluation interval, on whole
/// minutes of the report rollup: the newest evaluation covers up to the end of the
/// current minute, and a rule with `for: 5m` fires when its condition holds at that
/// evaluation and at each one a minute apart back to five minutes before. Counts are
/// exact (Prometheus's `increase()` estimates them from samples); `histogram_quantile`
/// interpolates linearly inside the bucket, as Prometheus does.
public enum FleetAlertRules {
    /// One alert's numbers, as the YAML writes them.
    public struct Rule: Sendable, Equatable {
        public var name: String
        public var severity: String
        /// The range windows of its expression, in seconds (`[1h]` is 3600).
        public var windows: [Int]
        /// Every number its expression compares with, in the YAML's order of appearance
        /// as a multiset (`> 14.4 * 0.01` is 0.144).
        public var comparedValues: [Double]
        /// Its `for:`, in seconds; nil when it fires at once.
        public var forSeconds: Int?
    }

    /// Restores in ten that may be slower than this (p90), in seconds.
    public static let slowP90Seconds = 120.0
    public static let slowQuantile = 0.9
    /// Restored restores a p90 needs in its window.
    public static let minimumRestoresForP90 = 10
    /// A single restore slower than this (the `le="120"` bucket) alerts.
    public static let slowRestoreSeconds = 120.0
    public static let minimumSuccessRate = 0.90
    /// Failures every failure-driven alert needs in its long window.
    public static let minimumFailures = 3
    /// The SLO's error budget: 1 % of restores may fail.
    public static let errorBudget = 0.01
    public static let fastBurnFactor = 14.4
    public static let slowBurnFactor = 6.0
    public static let staleAfterSeconds = 6 * 3600
    public static let hour = 3600
    public static let fastShortWindow = 300
    public static let slowLongWindow = 6 * 3600
    public static let slowShortWindow = 1800
    public static let forSeconds = 300
    /// How far back the evaluation reads: the longest window and the `for:`.
    static let lookback = slowLongWindow + forSeconds + 60

    public static let slowTransfersP90 = Rule(
        name: "CacheTiersSlowTransfersP90", severity: "warning", windows: [hour, hour],
        comparedValues: [slowP90Seconds, Double(minimumRestoresForP90)], forSeconds: forSeconds
    )
    public static let slowRestore = Rule(
        name: "CacheTiersSlowRestore", severity: "warning", windows: [hour, hour], comparedValues: [0], forSeconds: nil
    )
    public static let successRateLow = Rule(
        name: "CacheTiersSuccessRateLow", severity: "critical", windows: [],
        comparedValues: [minimumSuccessRate, Double(minimumFailures)], forSeconds: forSeconds
    )
    public static let errorBudgetBurnFast = Rule(
        name: "CacheTiersErrorBudgetBurnFast", severity: "critical", windows: [],
        comparedValues: [fastBurnFactor * errorBudget, Double(minimumFailures), fastBurnFactor * errorBudget, 0],
        forSeconds: nil
    )
    public static let errorBudgetBurnSlow = Rule(
        name: "CacheTiersErrorBudgetBurnSlow", severity: "critical", windows: [],
        comparedValues: [slowBurnFactor * errorBudget, Double(minimumFailures), slowBurnFactor * errorBudget, 0],
        forSeconds: nil
    )
    public static let reportsStale = Rule(
        name: "CacheTiersReportsStale", severity: "warning", windows: [staleAfterSeconds],
        comparedValues: [Double(staleAfterSeconds), -1], forSeconds: nil
    )
    public static let all = [slowTransfersP90, slowRestore, successRateLow, errorBudgetBurnFast, errorBudgetBurnSlow, reportsStale]
    /// The windows of the recording rules the ratio alerts read (`increase5m` … `increase6h`).
    public static let recordedWindows = [fastShortWindow, slowShortWindow, hour, slowLongWindow]

    /// Restores of one minute of the rollup, as the alerts read them.
    struct MinuteCell: Sendable, Equatable {
        /// Seconds since 1970, a multiple of 60.
        var minute: Int
        /// The serving tier, `none` for a failed restore.
        var servedBy: String
        var failed: Bool
        /// The index in ``FleetMetrics/durationBuckets`` of the first bound at or above
        /// the duration; `durationBuckets.count` for over the last.
        var bucket: Int
        var count: Int
    }

    /// The alerts firing at `now`, given the rollup's minutes since `now - lookback`, the
    /// newest report's arrival and when the master started serving.
    static func firing(
        cells: [MinuteCell], now: Date, newestArrival: Date?, upSince: Date, maximumTiers: Int = DashboardSnapshot.maximumTiers
    ) -> [DashboardSnapshot.Alert] {
        let end = (Int(now.timeIntervalSince1970.rounded(.down)) / 60) * 60 + 60
        let evaluations = stride(from: end, through: end - forSeconds, by: -60).map { $0 }
        func totals(_ window: Int, at t: Int) -> Totals {
            var totals = Totals()
            for cell in cells where cell.minute >= t - window && cell.minute < t { totals.add(cell) }
            return totals
        }
        func always(_ condition: (Int) -> Bool) -> Bool { evaluations.allSatisfy(condition) }
        var alerts: [DashboardSnapshot.Alert] = []

        if always({ t in
            let hour = totals(Self.hour, at: t)
            return hour.restored >= minimumRestoresForP90 && (hour.restoredQuantile(slowQuantile).map { $0 > slowP90Seconds } ?? false)
        }) {
            let p90 = totals(hour, at: end).restoredQuantile(slowQuantile) ?? 0
            alerts.append(alert(slowTransfersP90, "p90 of the last hour's restores is \(seconds(p90)) (alert above 120 s; the target is under 90 s)"))
        }

        let lastHour = totals(hour, at: end)
        // One alert per serving tier, as `sum by (served_by)` gives; tiers beyond a
        // handful summed as `other`, so hostile names cannot make the list unbounded.
        let slow = lastHour.overSlowRestore.filter { $0.value > 0 }.sorted { ($0.value, $1.key) > ($1.value, $0.key) }
        var slowByTier = slow.count > maximumTiers ? Array(slow.prefix(maximumTiers - 1)) : slow
        if slow.count > maximumTiers {
            slowByTier.append((key: FleetMetrics.otherTier, value: slow.dropFirst(maximumTiers - 1).reduce(0) { $0 + $1.value }))
        }
        for (tier, count) in slowByTier {
            var firing = alert(slowRestore, "\(count) restore(s) served by \(tier) took over 120 s in the last hour")
            firing.servedBy = tier
            alerts.append(firing)
        }

        if always({ t in
            let hour = totals(Self.hour, at: t)
            return hour.failures >= minimumFailures && 1 - hour.failureRatio! < minimumSuccessRate
        }) {
            alerts.append(alert(successRateLow, "\(percent(1 - lastHour.failureRatio!)) of the last hour's restores succeeded (alert under 90 %)"))
        }

        for (rule, factor, long, short) in [
            (errorBudgetBurnFast, fastBurnFactor, hour, fastShortWindow), (errorBudgetBurnSlow, slowBurnFactor, slowLongWindow, slowShortWindow),
        ] {
            let longTotals = totals(long, at: end)
            let shortTotals = totals(short, at: end)
            let limit = factor * errorBudget
            guard longTotals.failures >= minimumFailures, longTotals.failureRatio! > limit,
                shortTotals.restores == 0 || shortTotals.failureRatio! > limit
            else { continue }
            alerts.append(
                alert(rule, "\(percent(longTotals.failureRatio!)) of restores failed over the last \(long / 3600) h: \(factor.formatted()) times the 1 % budget or more")
            )
        }

        let age = newestArrival.map { now.timeIntervalSince($0) }
        if let age, age > Double(staleAfterSeconds) {
            alerts.append(alert(reportsStale, "no report for \(Int(age / 3600)) h"))
        } else if age == nil, now.timeIntervalSince(upSince) >= Double(staleAfterSeconds) {
            alerts.append(alert(reportsStale, "no report since the master started, over 6 h ago"))
        }
        return alerts
    }

    private static func alert(_ rule: Rule, _ summary: String) -> DashboardSnapshot.Alert {
        DashboardSnapshot.Alert(name: rule.name, severity: rule.severity, summary: summary, servedBy: nil)
    }

    private static func seconds(_ value: Double) -> String { "\(Int(value.rounded())) s" }
    private static func percent(_ value: Double) -> String { (value * 100).formatted(.number.precision(.fractionLength(1))) + " %" }

    /// The counts of a window.
    struct Totals {
        var restores = 0
        var failures = 0
        /// Restored restores per duration bucket.
        var restoredBuckets = [Int](repeating: 0, count: FleetMetrics.durationBuckets.count + 1)
        /// Restores over ``slowRestoreSeconds``, by serving tier (`none`: failed).
        var overSlowRestore: [String: Int] = [:]

        var restored: Int { restores - failures }
        var failureRatio: Double? { restores > 0 ? Double(failures) / Double(restores) : nil }

        mutating func add(_ cell: MinuteCell) {
            restores += cell.count
            if cell.failed { failures += cell.count } else { restoredBuckets[cell.bucket] += cell.count }
            if cell.bucket > FleetAlertRules.slowRestoreBucket { overSlowRestore[cell.servedBy, default: 0] += cell.count }
        }

        func restoredQuantile(_ q: Double) -> Double? {
            FleetAlertRules.histogramQuantile(q, bucketCounts: restoredBuckets)
        }
    }

    /// The index of the 120 s bound in ``FleetMetrics/durationBuckets``.
    static let slowRestoreBucket = FleetMetrics.durationBuckets.firstIndex(of: slowRestoreSeconds)!

    /// Prometheus's `histogram_quantile` over buckets of ``FleetMetrics/durationBuckets``
    /// then +Inf, given the (non-cumulative) count of each: the bucket holding rank q·n,
    /// linearly interpolated inside it; the highest finite bound when it falls in +Inf;
    /// nil (NaN) without an observation.
    static func histogramQuantile(_ q: Double, bucketCounts: [Int]) -> Double? {
        let bounds = FleetMetrics.durationBuckets
        precondition(bucketCounts.count == bounds.count + 1)
        var cumulative: [Double] = []
        var running = 0.0
        for count in bucketCounts {
            running += Double(count)
            cumulative.append(running)
        }
        let observations = running
        guard observations > 0 else { return nil }
        if q < 0 { return -.infinity }
        if q > 1 { return .infinity }
        var rank = q * observations
        let b = cumulative.firstIndex { $0 >= rank }!
        if b == bounds.count { return bounds[bounds.count - 1] }
        if b == 0, bounds[0] <= 0 { return bounds[0] }
        var start = 0.0
        var count = cumulative[b]
        if b > 0 {
            start = bounds[b - 1]
            count -= cumulative[b - 1]
            rank -= cumulative[b - 1]
        }
        return start + (bounds[b] - start) * (rank / count)
    }
}
