import Foundation
import GRDB

/// The dashboard's numbers, from the report rollup: one row per (minute of `finishedAt`,
/// serving tier or `none`, outcome, fell back, duration bucket) with its count, bytes,
/// cost and summed duration. SQLite triggers on `report` keep it exact through every
/// path that adds or removes a report (a new report, a duplicate that inserts nothing,
/// the retention, the row cap and the byte cap), so no code path has to remember it.
///
/// A window's figures are the rollup's whole minutes plus the reports of the window's
/// first, partial minute read from `report` itself: the same reports `GET /v1/stats`
/// counts, in milliseconds at 100,000 reports instead of the stats' sorts of every
/// duration (see Documentation/Dashboard.md for the figures).
extension ReportStore {
    /// The rollup's key of the report in `row` (`NEW`, `OLD`, or a table name), as SQL
    /// expressions: the triggers and the read of a partial minute use the same ones.
    static func rollupKey(of row: String) -> (minute: String, servedBy: String, fallback: String, bucket: String) {
        let bounds = FleetMetrics.durationBuckets.enumerated().map { index, bound in
            "WHEN \(row).durationSeconds <= \(bound) THEN \(index)"
        }
        return (
            minute: "CAST(\(row).finishedAt / 60 AS INTEGER) * 60",
            servedBy: "coalesce(\(row).servedBy, '\(FleetMetrics.noTier)')",
            fallback: "(\(row).outcome = 'restored' AND \(row).servedBy IS NOT \(row).firstTier)",
            bucket: "CASE \(bounds.joined(separator: " ")) ELSE \(FleetMetrics.durationBuckets.count) END"
        )
    }

    /// Migration v2: the rollup, its triggers, its backfill, and the index that lets a
    /// percentile seek its rank inside one duration bucket.
    static func createRollup(_ db: Database) throws {
        let new = rollupKey(of: "NEW")
        let old = rollupKey(of: "OLD")
        let all = rollupKey(of: "report")
        try db.execute(
            sql: """
                CREATE TABLE report_rollup (
                    minute INTEGER NOT NULL,
                    servedBy TEXT NOT NULL,
                    outcome TEXT NOT NULL,
                    fallback INTEGER NOT NULL,
                    bucket INTEGER NOT NULL,
                    count INTEGER NOT NULL,
                    bytes INTEGER NOT NULL,
                    cost REAL NOT NULL,
                    durationSum REAL NOT NULL,
                    PRIMARY KEY (minute, servedBy, outcome, fallback, bucket)
                ) WITHOUT ROWID;
                INSERT INTO report_rollup (minute, servedBy, outcome, fallback, bucket, count, bytes, cost, durationSum)
                    SELECT \(all.minute), \(all.servedBy), outcome, \(all.fallback), \(all.bucket),
                           count(*), sum(bytes), total(estimatedCostUSD), total(durationSeconds)
                    FROM report GROUP BY 1, 2, 3, 4, 5;
                CREATE TRIGGER report_rollup_insert AFTER INSERT ON report BEGIN
                    INSERT INTO report_rollup (minute, servedBy, outcome, fallback, bucket, count, bytes, cost, durationSum)
                    VALUES (\(new.minute), \(new.servedBy), NEW.outcome, \(new.fallback), \(new.bucket),
                            1, NEW.bytes, coalesce(NEW.estimatedCostUSD, 0), NEW.durationSeconds)
                    ON CONFLICT DO UPDATE SET count = count + 1, bytes = bytes + excluded.bytes,
                        cost = cost + excluded.cost, durationSum = durationSum + excluded.durationSum;
                END;
                CREATE TRIGGER report_rollup_delete AFTER DELETE ON report BEGIN
                    UPDATE report_rollup SET count = count - 1, bytes = bytes - OLD.bytes,
                        cost = cost - coalesce(OLD.estimatedCostUSD, 0), durationSum = durationSum - OLD.durationSeconds
                    WHERE minute = \(old.minute) AND servedBy = \(old.servedBy) AND outcome = OLD.outcome
                        AND fallback = \(old.fallback) AND bucket = \(old.bucket);
                    DELETE FROM report_rollup WHERE minute = \(old.minute) AND count = 0;
                END;
                -- A percentile's rank is sought inside one duration bucket, in order.
                CREATE INDEX report_by_duration ON report (outcome, durationSeconds, finishedAt);
                """
        )
    }

    /// The dashboard of the `window` before `now`, in one read snapshot.
    /// - Parameter upSince: when the master started serving (the stale-reports alert).
    func dashboard(window: DashboardWindow, now: Date, upSince: Date) async throws -> DashboardSnapshot {
        let newestArrival = summary.newestArrival
        return try await read { db in
            try Self.dashboard(window: window, now: now, upSince: upSince, newestArrival: newestArrival, db)
        }
    }

    private struct Cell {
        var start: Int
        var servedBy: String
        var restored: Bool
        var fallback: Bool
        var bucket: Int
        var count: Int
        var bytes: Int64
        var cost: Double
    }

    private static func dashboard(
        window: DashboardWindow, now: Date, upSince: Date, newestArrival: Date?, _ db: Database
    ) throws -> DashboardSnapshot {
        let since = now.timeIntervalSince1970 - Double(window.seconds)
        let step = window.bucketSeconds
        let cells = try self.cells(since: since, step: step, db)

        // Totals, tiers and the distribution.
        var restores = 0
        var restored = 0
        var fallbacks = 0
        var bytes: Int64 = 0
        var cost = 0.0
        var distribution = [Int](repeating: 0, count: FleetMetrics.durationBuckets.count + 1)
        var byTier: [String: DashboardSnapshot.Tier] = [:]
        for cell in cells {
            restores += cell.count
            bytes += cell.bytes
            cost += cell.cost
            guard cell.restored else { continue }
            restored += cell.count
            if cell.fallback { fallbacks += cell.count }
            distribution[cell.bucket] += cell.count
            byTier[cell.servedBy, default: .init(tier: cell.servedBy, restores: 0, share: 0, fallbacks: 0, bytes: 0, estimatedCostUSD: 0)]
                .add(cell.count, fallback: cell.fallback, bytes: cell.bytes, cost: cell.cost)
        }
        let ranked = byTier.values.sorted { ($0.restores, $1.tier) > ($1.restores, $0.tier) }
        var tiers = ranked.count > DashboardSnapshot.maximumTiers ? Array(ranked.prefix(DashboardSnapshot.maximumTiers - 1)) : ranked
        if ranked.count > DashboardSnapshot.maximumTiers {
            var other = DashboardSnapshot.Tier(tier: FleetMetrics.otherTier, restores: 0, share: 0, fallbacks: 0, bytes: 0, estimatedCostUSD: 0)
            for tier in ranked.dropFirst(DashboardSnapshot.maximumTiers - 1) {
                other.add(tier.restores, fallbacks: tier.fallbacks, bytes: tier.bytes, cost: tier.estimatedCostUSD)
            }
            tiers.append(other)
        }
        for index in tiers.indices { tiers[index].share = Double(tiers[index].restores) / Double(max(1, restores)) }
        let named = Set(tiers.map(\.tier))

        // Over time: every bucket of the window, empty ones too, so the axis is the window.
        let firstStart = Int((since / Double(step)).rounded(.down)) * step
        let lastStart = Int((now.timeIntervalSince1970 / Double(step)).rounded(.down)) * step
        var buckets: [Int: (restores: Int, failed: Int, byTier: [String: Int])] = [:]
        for cell in cells {
            buckets[cell.start, default: (0, 0, [:])].restores += cell.count
            if cell.restored {
                buckets[cell.start]!.byTier[named.contains(cell.servedBy) ? cell.servedBy : FleetMetrics.otherTier, default: 0] += cell.count
            } else {
                buckets[cell.start]!.failed += cell.count
            }
        }
        let overTime = stride(from: firstStart, through: lastStart, by: step).map { start in
            let bucket = buckets[start] ?? (0, 0, [:])
            return DashboardSnapshot.TimeBucket(
                start: start, restores: bucket.restores, failed: bucket.failed,
                byTier: tiers.compactMap { tier in
                    bucket.byTier[tier.tier].map { DashboardSnapshot.TimeBucket.TierCount(tier: tier.tier, count: $0) }
                },
                successRate: bucket.restores > 0 ? Double(bucket.restores - bucket.failed) / Double(bucket.restores) : nil
            )
        }

        let percentiles = FleetStats.Percentiles(
            p50: try restoredDuration(atRank: (restored * 50 + 99) / 100, buckets: distribution, since: since, db),
            p90: try restoredDuration(atRank: (restored * 90 + 99) / 100, buckets: distribution, since: since, db),
            p99: try restoredDuration(atRank: (restored * 99 + 99) / 100, buckets: distribution, since: since, db)
        )
        let successRate = restores > 0 ? Double(restored) / Double(restores) : nil
        let projected = cost * Double(30 * 86_400) / Double(window.seconds)
        let alertCells = try Row.fetchAll(
            db,
            sql: """
                SELECT minute, servedBy, outcome, bucket, sum(count) AS count FROM report_rollup
                WHERE minute >= ? GROUP BY minute, servedBy, outcome, bucket
                """,
            arguments: [Int(now.timeIntervalSince1970) / 60 * 60 - FleetAlertRules.lookback]
        ).map { row in
            FleetAlertRules.MinuteCell(
                minute: row["minute"], servedBy: row["servedBy"], failed: (row["outcome"] as String) == "failed",
                bucket: row["bucket"], count: row["count"]
            )
        }
        return DashboardSnapshot(
            window: window, windowSeconds: window.seconds, bucketSeconds: step, generatedAt: now,
            restores: restores, restored: restored, failed: restores - restored, successRate: successRate,
            fallbacks: fallbacks, bytes: bytes, estimatedCostUSD: cost, projectedMonthlyCostUSD: projected,
            durationSeconds: percentiles, tiers: tiers, overTime: overTime,
            distribution: distribution.enumerated().map { index, count in
                .init(upperBound: index < FleetMetrics.durationBuckets.count ? FleetMetrics.durationBuckets[index] : nil, count: count)
            },
            targets: FleetStats.targets(
                p90: percentiles.p90, successRate: successRate, projectedMonthlyCostUSD: projected, restores: restores
            ),
            slowest: try slowest(since: since, db),
            alerts: FleetAlertRules.firing(cells: alertCells, now: now, newestArrival: newestArrival, upSince: upSince),
            lastReportReceivedAt: newestArrival
        )
    }

    /// The window's rollup cells, summed per bucket of `step` seconds: whole minutes from
    /// the rollup, the first partial minute from the reports themselves.
    private static func cells(since: Double, step: Int, _ db: Database) throws -> [Cell] {
        let firstWholeMinute = Int((since / 60).rounded(.up)) * 60
        let edge = rollupKey(of: "report")
        return try Row.fetchAll(
            db,
            sql: """
                WITH cell AS (
                    SELECT minute, servedBy, outcome, fallback, bucket, count, bytes, cost
                    FROM report_rollup WHERE minute >= :whole
                    UNION ALL
                    SELECT \(edge.minute), \(edge.servedBy), outcome, \(edge.fallback), \(edge.bucket),
                           1, bytes, coalesce(estimatedCostUSD, 0)
                    FROM report WHERE finishedAt >= :since AND finishedAt < :whole
                )
                SELECT minute / :step * :step AS start, servedBy, outcome, fallback, bucket,
                       sum(count) AS count, sum(bytes) AS bytes, total(cost) AS cost
                FROM cell GROUP BY start, servedBy, outcome, fallback, bucket
                """,
            arguments: ["whole": firstWholeMinute, "since": since, "step": step]
        ).map { row in
            Cell(
                start: row["start"], servedBy: row["servedBy"], restored: (row["outcome"] as String) == "restored",
                fallback: row["fallback"], bucket: row["bucket"], count: row["count"], bytes: row["bytes"], cost: row["cost"]
            )
        }
    }

    /// The `rank`-th shortest duration (from 1) of the restored reports since `since`:
    /// the bucket counts say which bucket holds it, and the index on (outcome, duration)
    /// seeks it inside that bucket, from whichever end of the bucket is nearer.
    private static func restoredDuration(atRank rank: Int, buckets: [Int], since: Double, _ db: Database) throws -> Double? {
        guard rank > 0 else { return nil }
        var below = 0
        for (index, count) in buckets.enumerated() {
            guard below + count >= rank else {
                below += count
                continue
            }
            let bounds = FleetMetrics.durationBuckets
            let lower = index > 0 ? bounds[index - 1] : -Double.greatestFiniteMagnitude
            let upper = index < bounds.count ? bounds[index] : Double.greatestFiniteMagnitude
            let fromBottom = rank - below - 1
            let fromTop = below + count - rank
            return try Double.fetchOne(
                db,
                sql: """
                    SELECT durationSeconds FROM report
                    WHERE outcome = 'restored' AND durationSeconds > ? AND durationSeconds <= ? AND finishedAt >= ?
                    ORDER BY durationSeconds \(fromBottom <= fromTop ? "ASC" : "DESC") LIMIT 1 OFFSET ?
                    """,
                arguments: [lower, upper, since, min(fromBottom, fromTop)]
            )
        }
        return nil
    }

    /// The longest restores since `since`, longest first, with the phases their JSON holds:
    /// the longest of each outcome walk the (outcome, duration) index from its top, which
    /// stops after a few rows when the window holds most reports, and only the chosen
    /// rows' JSON is read.
    private static func slowest(since: Double, _ db: Database) throws -> [DashboardSnapshot.SlowRestore] {
        try Row.fetchAll(
            db,
            sql: """
                WITH top AS (
                    SELECT seq FROM (
                        SELECT seq FROM report WHERE outcome = 'restored' AND finishedAt >= :since
                        ORDER BY durationSeconds DESC, seq LIMIT :count
                    )
                    UNION ALL
                    SELECT seq FROM (
                        SELECT seq FROM report WHERE outcome = 'failed' AND finishedAt >= :since
                        ORDER BY durationSeconds DESC, seq LIMIT :count
                    )
                )
                SELECT id, finishedAt, durationSeconds, outcome, servedBy, host, key, json
                FROM report JOIN top USING (seq) ORDER BY durationSeconds DESC, seq LIMIT :count
                """,
            arguments: ["since": since, "count": DashboardSnapshot.slowestCount]
        ).map { row in
            DashboardSnapshot.SlowRestore(
                id: row["id"], finishedAt: Date(timeIntervalSince1970: row["finishedAt"]), durationSeconds: row["durationSeconds"],
                outcome: row["outcome"], servedBy: row["servedBy"], host: row["host"], key: row["key"],
                breakdown: StoredPhases.breakdown(json: row["json"], servedBy: row["servedBy"])
            )
        }
    }
}

extension DashboardSnapshot.Tier {
    fileprivate mutating func add(_ count: Int, fallback: Bool, bytes: Int64, cost: Double) {
        add(count, fallbacks: fallback ? count : 0, bytes: bytes, cost: cost)
    }

    fileprivate mutating func add(_ count: Int, fallbacks: Int, bytes: Int64, cost: Double) {
        restores += count
        self.fallbacks += fallbacks
        self.bytes += bytes
        estimatedCostUSD += cost
    }
}

/// The phases of a stored report's JSON (checked when it arrived): the serving
/// attempt's `timings` (the last `hit` of the serving tier; of a failed restore, its last
/// attempt) and the report's own.
private struct StoredPhases: Decodable {
    struct Attempt: Decodable {
        var tier: String
        var outcome: String
        var timings: AttemptTimings?
    }
    struct AttemptTimings: Decodable {
        var connectSeconds: Double?
        var firstByteSeconds: Double?
        var transferSeconds: Double?
        var extractSeconds: Double?
        var extractTailSeconds: Double?
    }
    struct Timings: Decodable {
        var promotionSeconds: Double?
        var writeBackSeconds: Double?
    }
    var attempts: [Attempt]
    var timings: Timings?

    static func breakdown(json: String, servedBy: String?) -> DashboardSnapshot.Breakdown {
        guard let phases = try? JSONDecoder().decode(StoredPhases.self, from: Data(json.utf8)) else {
            return .init()
        }
        let serving = servedBy.flatMap { tier in phases.attempts.last { $0.tier == tier && $0.outcome == "hit" } } ?? phases.attempts.last
        let timings = serving?.timings
        return .init(
            connect: timings?.connectSeconds, firstByte: timings?.firstByteSeconds, transfer: timings?.transferSeconds,
            extract: timings?.extractSeconds, extractTail: timings?.extractTailSeconds,
            promotion: phases.timings?.promotionSeconds, writeBack: phases.timings?.writeBackSeconds
        )
    }
}
