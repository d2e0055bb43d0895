import Foundation
import GRDB

extension ReportStore {
    /// The fleet's numbers over the `window` seconds before `now`, computed in SQL in
    /// one read snapshot, each query one range scan of the `report_window` index.
    func stats(window: Int, now: Date) async throws -> FleetStats {
        let since = now.timeIntervalSince1970 - Double(window)
        return try await read { db in try Self.stats(window: window, since: since, db) }
    }

    private static func stats(window: Int, since: Double, _ db: Database) throws -> FleetStats {
        let arguments: StatementArguments = ["since": since]
        let totals = try Row.fetchOne(
            db,
            sql: """
                SELECT count(*) AS restores,
                       coalesce(sum(outcome = 'restored'), 0) AS restored,
                       coalesce(sum(outcome = 'restored' AND servedBy IS NOT firstTier), 0) AS fallbacks,
                       coalesce(sum(bytes), 0) AS bytes,
                       total(estimatedCostUSD) AS cost
                FROM report WHERE finishedAt >= :since
                """,
            arguments: arguments
        )!
        let restores: Int = totals["restores"]
        let restored: Int = totals["restored"]
        let cost: Double = totals["cost"]

        // Per serving tier (and, with a tier of NULL, for every restored report): the
        // count, bytes, cost and the nearest-rank percentiles, the ⌈p·n⌉-th duration, in
        // integers: ⌈p·n⌉ = (P·n + 99) / 100 for P = 100·p.
        let rows = try Row.fetchAll(
            db,
            sql: """
                WITH restored AS (
                    SELECT servedBy, durationSeconds, bytes, estimatedCostUSD FROM report
                    WHERE finishedAt >= :since AND outcome = 'restored'
                ), ranked AS (
                    SELECT NULL AS tier, durationSeconds, bytes, estimatedCostUSD,
                           row_number() OVER (ORDER BY durationSeconds) AS rank, count(*) OVER () AS n
                    FROM restored
                    UNION ALL
                    SELECT servedBy, durationSeconds, bytes, estimatedCostUSD,
                           row_number() OVER (PARTITION BY servedBy ORDER BY durationSeconds),
                           count(*) OVER (PARTITION BY servedBy)
                    FROM restored
                )
                SELECT tier, count(*) AS restores, coalesce(sum(bytes), 0) AS bytes, total(estimatedCostUSD) AS cost,
                       max(CASE WHEN rank = (n * 50 + 99) / 100 THEN durationSeconds END) AS p50,
                       max(CASE WHEN rank = (n * 90 + 99) / 100 THEN durationSeconds END) AS p90,
                       max(CASE WHEN rank = (n * 99 + 99) / 100 THEN durationSeconds END) AS p99
                FROM ranked GROUP BY tier ORDER BY restores DESC, tier
                """,
            arguments: arguments
        )
        var overall = FleetStats.Percentiles()
        var tiers: [FleetStats.Tier] = []
        // Tier names come from reports: the tiers with the most restores are rows, the
        // rest one `other` row (sums, no percentiles), so the answer stays bounded.
        var rest = FleetStats.Tier(
            tier: FleetMetrics.otherTier, restores: 0, share: 0, p50: nil, p90: nil, p99: nil, bytes: 0, estimatedCostUSD: 0
        )
        for row in rows {
            guard let tier: String = row["tier"] else {
                overall = FleetStats.Percentiles(p50: row["p50"], p90: row["p90"], p99: row["p99"])
                continue
            }
            let count: Int = row["restores"]
            guard tiers.count < FleetStats.maximumTierRows else {
                rest.restores += count
                rest.bytes += row["bytes"] as Int64
                rest.estimatedCostUSD += row["cost"] as Double
                continue
            }
            tiers.append(
                FleetStats.Tier(
                    tier: tier, restores: count, share: Double(count) / Double(max(1, restores)),
                    p50: row["p50"], p90: row["p90"], p99: row["p99"], bytes: row["bytes"], estimatedCostUSD: row["cost"]
                )
            )
        }
        if rest.restores > 0 {
            rest.share = Double(rest.restores) / Double(max(1, restores))
            tiers.append(rest)
        }

        let topKeys = try keyCounts(
            db,
            sql: """
                SELECT key, count(*) AS count FROM report
                WHERE finishedAt >= :since AND outcome = 'restored'
                GROUP BY key ORDER BY count DESC, key LIMIT 10
                """,
            arguments
        )
        let topMissedKeys = try keyCounts(
            db,
            sql: """
                SELECT report.key AS key, count(*) AS count
                FROM report JOIN attempt ON attempt.report = report.seq
                WHERE report.finishedAt >= :since AND attempt.outcome = 'miss'
                GROUP BY report.key ORDER BY count DESC, report.key LIMIT 10
                """,
            arguments
        )

        let successRate = restores > 0 ? Double(restored) / Double(restores) : nil
        let projected = cost * Double(30 * 86_400) / Double(window)
        return FleetStats(
            window: window, restores: restores, restored: restored, failed: restores - restored,
            successRate: successRate, durationSeconds: overall, byTier: tiers, fallbacks: totals["fallbacks"],
            bytes: totals["bytes"], estimatedCostUSD: cost, projectedMonthlyCostUSD: projected,
            topKeys: topKeys, topMissedKeys: topMissedKeys,
            targets: FleetStats.targets(
                p90: overall.p90, successRate: successRate, projectedMonthlyCostUSD: projected, restores: restores
            )
        )
    }

    private static func keyCounts(_ db: Database, sql: String, _ arguments: StatementArguments) throws -> [FleetStats.KeyCount] {
        try Row.fetchAll(db, sql: sql, arguments: arguments).map { FleetStats.KeyCount(key: $0["key"], count: $0["count"]) }
    }
}
