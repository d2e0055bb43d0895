import CacheTiersTesting
import Crypto
import Foundation
import GRDB
import Logging
import SystemPackage
import Testing

@testable import CacheTiersServer

/// The dashboard's numbers (`GET /v1/dashboard`) and page (`GET /`) on a real cache
/// master fed with known reports, the rollup behind them kept exact through resends
/// and pruning, and hostile report strings kept escaped and bounded.
@Suite struct DashboardTests {
    /// Ten restores ten minutes ago: six by the cache master (10 … 60 s), two by GCS
    /// after a cache-master miss (100 s and 200 s, 0.001 USD each), two failures (5 s).
    static func knownReports(now: Date = Date()) -> [FleetReport] {
        let finished = now.addingTimeInterval(-600)
        var reports: [FleetReport] = []
        for duration in [10.0, 20, 30, 40, 50, 60] {
            reports.append(FleetReport(finishedAt: finished, durationSeconds: duration, bytes: 1000))
        }
        for duration in [100.0, 200] {
            reports.append(
                FleetReport(
                    finishedAt: finished, servedBy: "gcs", durationSeconds: duration, bytes: 5000, costUSD: 0.001,
                    attempts: [("cache-master", "miss"), ("gcs", "hit")]
                )
            )
        }
        for _ in 0..<2 {
            reports.append(FleetReport(finishedAt: finished, servedBy: nil, durationSeconds: 5, bytes: 0, attempts: [("cache-master", "miss")]))
        }
        return reports
    }

    @Test func theDashboardCountsAKnownSetOfReportsAsTheStatsDo() async throws {
        try await PeerHarness.with { peer in
            let reports = Self.knownReports()
            try await DashboardClient.post(peer, reports)
            let snapshot = try await DashboardClient.snapshot(peer, window: "1h")
            #expect(snapshot.window == .hour && snapshot.windowSeconds == 3600 && snapshot.bucketSeconds == 60)
            #expect(snapshot.restores == 10 && snapshot.restored == 8 && snapshot.failed == 2)
            #expect(snapshot.successRate == 0.8)
            #expect(snapshot.fallbacks == 2)
            #expect(snapshot.bytes == 6 * 1000 + 2 * 5000)
            #expect(abs(snapshot.estimatedCostUSD - 0.002) < 1e-12)
            #expect(abs(snapshot.projectedMonthlyCostUSD - 0.002 * 720) < 1e-9, "an hour's cost times 720")
            #expect(snapshot.durationSeconds == .init(p50: 40, p90: 200, p99: 200), "nearest rank over 10 20 30 40 50 60 100 200")
            #expect(snapshot.tiers.map(\.tier) == ["cache-master", "gcs"])
            #expect(snapshot.tiers.map(\.restores) == [6, 2])
            #expect(snapshot.tiers.map(\.share) == [0.6, 0.2])
            #expect(snapshot.tiers.map(\.fallbacks) == [0, 2])

            // The distribution: the FleetMetrics buckets, restored restores only.
            // ≤1 ≤5 ≤10 ≤20 ≤30 ≤45 ≤60 ≤80 ≤90 ≤120 ≤180 ≤300 ≤600 over
            #expect(snapshot.distribution.map(\.count) == [0, 0, 1, 1, 1, 1, 2, 0, 0, 1, 0, 1, 0, 0])
            #expect(snapshot.distribution.map(\.upperBound) == FleetMetrics.durationBuckets + [nil])
            #expect(snapshot.distribution.map(\.count).reduce(0, +) == 8)

            // Over time: 60 one-minute buckets, the reports in the one ten minutes ago.
            #expect((60...61).contains(snapshot.overTime.count))
            #expect(snapshot.overTime.allSatisfy { $0.start % 60 == 0 })
            let busy = snapshot.overTime.filter { $0.restores > 0 }
            #expect(busy.count == 1)
            #expect(busy.first?.start == Int(reports[0].finishedAt.timeIntervalSince1970) / 60 * 60)
            #expect(busy.first?.failed == 2 && busy.first?.successRate == 0.8)
            #expect(busy.first?.byTier == [.init(tier: "cache-master", count: 6), .init(tier: "gcs", count: 2)])

            // The slowest, longest first, with the serving attempt's phases.
            #expect(snapshot.slowest.map(\.durationSeconds) == [200, 100, 60, 50, 40, 30, 20, 10, 5, 5])
            #expect(snapshot.slowest.first?.id == reports[7].id && snapshot.slowest.first?.servedBy == "gcs")
            #expect(snapshot.slowest.first?.breakdown.connect == 0.1 && snapshot.slowest.first?.breakdown.promotion == 0.004)
            #expect(snapshot.slowest.last?.outcome == "failed" && snapshot.slowest.last?.servedBy == nil)

            // One restore over 120 s: the slow-restore alert, for gcs. Two failures are
            // under the 3-failure guard, eight restores under the p90's 10.
            #expect(snapshot.alerts.map(\.name) == ["CacheTiersSlowRestore"])
            #expect(snapshot.alerts.first?.servedBy == "gcs" && snapshot.alerts.first?.severity == "warning")
            #expect(snapshot.targets.map(\.name) == ["transfer", "successRate", "monthlyCost", "maintenance"])
            #expect(snapshot.targets.map(\.met) == [false, false, true, nil])

            // The same figures as /v1/stats of the same window.
            let stats = try JSONDecoder().decode(FleetStats.self, from: Data(try await DashboardClient.send(peer, .GET, "/v1/stats?window=1h").body))
            #expect(stats.restores == snapshot.restores && stats.restored == snapshot.restored && stats.fallbacks == snapshot.fallbacks)
            #expect(stats.bytes == snapshot.bytes && stats.durationSeconds == snapshot.durationSeconds)
            #expect(stats.targets == snapshot.targets)
        }
    }

    @Test func thePageCarriesTheContractsHooksWithTheNumbers() async throws {
        try await PeerHarness.with { peer in
            let reports = Self.knownReports()
            try await DashboardClient.post(peer, reports)
            let answer = try await DashboardClient.send(peer, .GET, "/?window=1h")
            #expect(answer.status == 200)
            #expect(answer.headers["Content-Type"] == ["text/html; charset=utf-8"])
            #expect(answer.headers["Cache-Control"] == ["no-store"])
            #expect(answer.headers["X-Content-Type-Options"] == ["nosniff"])
            #expect(answer.headers["Referrer-Policy"] == ["no-referrer"])
            let page = answer.text
            #expect(page.hasPrefix("<!DOCTYPE html>"))
            #expect(page.contains(#"<main id="dashboard" data-window="3600""#))
            #expect(page.contains(#"data-refresh-seconds="30""#))
            #expect(page.contains(#"<a data-window="1h" href="/?window=1h" aria-current="page">"#))
            #expect(page.contains(#"<a data-window="24h" href="/?window=24h">"#))
            for (metric, value) in [
                ("restores", "10"), ("restored", "8"), ("failed", "2"), ("successRate", "0.8"), ("fallbacks", "2"),
                ("bytes", "16000"), ("costUSD", "0.002"), ("p50", "40"), ("p90", "200"), ("p99", "200"),
            ] {
                #expect(page.contains(#"data-metric="\#(metric)" data-value="\#(value)""#), "\(metric) = \(value)")
            }
            #expect(page.contains(#"data-metric="successRate" data-value="0.8">80.0 %<"#))
            #expect(page.contains(#"<li data-target="transfer" data-met="false">"#))
            #expect(page.contains(#"<li data-target="monthlyCost" data-met="true">"#))
            #expect(page.contains(#"<li data-target="maintenance" data-met="unknown">"#))
            #expect(page.contains(#"<table id="tiers">"#) && page.contains(#"<tr data-tier="cache-master">"#))
            #expect(page.contains(#"data-metric="tierRestores" data-value="6""#) && page.contains(#"data-metric="tierShare" data-value="0.6""#))
            let minute = Int(reports[0].finishedAt.timeIntervalSince1970) / 60 * 60
            #expect(page.contains(#"<rect data-tier="cache-master" data-bucket-start="\#(minute)" data-count="6""#))
            #expect(page.contains(#"<rect data-tier="none" data-bucket-start="\#(minute)" data-count="2""#))
            #expect(page.contains(#"<rect data-bin-upper="300" data-count="1""#) && page.contains(#"<rect data-bin-upper="inf" data-count="0""#))
            for line in ["target-90", "alert-120", "target-99", "alert-90"] { #expect(page.contains(#"<line data-line="\#(line)""#)) }
            #expect(page.contains(#"<path data-series="success-rate" d="M"#))
            let firstRow = page.range(of: "<tr data-report-id=").map { page[$0.upperBound...].prefix(40) } ?? ""
            #expect(firstRow.hasPrefix("\"\(reports[7].id)\""), "the slowest restore comes first")
            for field in ["duration", "outcome", "servedBy", "host", "key", "finishedAt", "connect", "firstByte", "transfer", "extract", "extractTail", "promotion", "writeBack"] {
                #expect(page.contains(#"data-field="\#(field)""#), "\(field)")
            }
            #expect(page.contains(#"<li data-alert="CacheTiersSlowRestore" data-severity="warning""#))

            // The inline script is the one the CSP's hash allows, so a browser runs it.
            let script = try #require(page.range(of: "<script>").flatMap { start in
                page.range(of: "</script>", range: start.upperBound..<page.endIndex).map { String(page[start.upperBound..<$0.lowerBound]) }
            })
            let hash = Data(SHA256.hash(data: Data(script.utf8))).base64EncodedString()
            let policy = try #require(answer.headers["Content-Security-Policy"].first)
            #expect(policy.contains("script-src 'sha256-\(hash)'"))
            for directive in ["default-src 'none'", "style-src 'unsafe-inline'", "img-src data:", "connect-src 'self'", "form-action 'self'", "frame-ancestors 'none'", "base-uri 'none'"] {
                #expect(policy.contains(directive), "\(directive)")
            }
            #expect(script.contains("window.cachetiersRefresh") && script.contains("session-expired") && script.contains("part=main"))
            #expect(!page.contains("http://") && !page.contains("https://"), "nothing is loaded from anywhere")

            // The part the refresh fetches: the <main> alone.
            let part = try await DashboardClient.send(peer, .GET, "/?window=1h&part=main").text
            #expect(part.hasPrefix(#"<main id="dashboard""#) && part.hasSuffix("</main>"))
            #expect(!part.contains("<script"))
        }
    }

    @Test func aWindowOutsideTheFourIsOneLineOf400() async throws {
        try await PeerHarness.with { peer in
            for path in ["/?window=2h", "/?window=", "/v1/dashboard?window=90d", "/?window=24h%00", "/?window=24h&part=all"] {
                let answer = try await DashboardClient.send(peer, .GET, path)
                #expect(answer.status == 400, "\(path)")
                #expect(answer.text.hasSuffix("\n") && answer.text.dropLast().contains("\n") == false, "\(path): \(answer.text)")
            }
            #expect(try await DashboardClient.send(peer, .GET, "/?window=2h").text == "window: expected 1h, 24h, 7d or 30d\n")
        }
    }

    @Test func anEmptyMasterSaysWhatToDo() async throws {
        try await PeerHarness.with { peer in
            let page = try await DashboardClient.send(peer, .GET, "/").text
            #expect(page.contains("No report yet: point VMs' <code>monitoring.report</code> at this master"))
            #expect(page.contains(#"data-metric="successRate" data-value="""#))
            #expect(page.contains(#"data-metric="p90" data-value="""#))
            #expect(page.contains(#"<p data-alerts="none""#))
            #expect(page.contains(#"<li data-target="transfer" data-met="unknown">"#))
        }
    }

    static func open(_ scratch: TemporaryDirectory, maxReports: Int = 1_000_000, retention: Duration = .seconds(30 * 86_400)) throws -> ReportStore {
        try ReportStore.open(
            at: scratch.path.appending("reports.sqlite"), retention: retention, maxReports: maxReports, logger: PeerHarness.quietLogger
        )
    }

    static func insert(_ store: ReportStore, _ reports: [FleetReport], receivedAt: Date = Date()) async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            for report in reports {
                group.addTask {
                    let body = report.body
                    _ = try await store.insert(try ReceivedReport.decode(body), json: String(decoding: body, as: UTF8.self), receivedAt: receivedAt)
                }
            }
            try await group.waitForAll()
        }
    }

    /// Durations per FleetMetrics bucket, counted in the test the way Prometheus does (le).
    static func expectedDistribution(_ durations: [Double]) -> [Int] {
        var counts = [Int](repeating: 0, count: FleetMetrics.durationBuckets.count + 1)
        for duration in durations {
            counts[FleetMetrics.durationBuckets.firstIndex { duration <= $0 } ?? FleetMetrics.durationBuckets.count] += 1
        }
        return counts
    }

    @Test func theRollupStaysExactThroughResendsTheRowCapAndTheRetention() async throws {
        let scratch = try TemporaryDirectory(prefix: "rollup")
        defer { scratch.remove() }
        let now = Date()
        let store = try Self.open(scratch, maxReports: 20, retention: .seconds(86_400))
        defer { store.close() }
        // 40 reports a minute apart, the oldest first, durations 3 s … 120 s … 600 s and
        // over; a tenth failed; then every one sent again.
        let reports: [FleetReport] = (0..<40).map { index in
            let failed = index % 10 == 3
            let tier = index % 2 == 0 ? "cache-master" : "gcs"
            var report = FleetReport(
                finishedAt: now.addingTimeInterval(-Double(40 - index) * 61), servedBy: failed ? nil : tier,
                durationSeconds: Double(index * 17 + 3), bytes: Int64(index)
            )
            report.costUSD = tier == "gcs" && !failed ? 0.001 : nil
            report.attempts = failed ? [("cache-master", "miss")] : tier == "gcs" ? [("cache-master", "miss"), ("gcs", "hit")] : [("cache-master", "hit")]
            return report
        }
        // Two reports past the retention, which the prune deletes.
        let old = FleetReport(finishedAt: now.addingTimeInterval(-2 * 86_400), durationSeconds: 1000)
        for report in reports { try await Self.insert(store, [report]) }
        try await Self.insert(store, reports + [old])
        try await store.prune(now: now)

        // What stays: the 20 that finished last (the cap deletes the oldest; the slack is 1).
        let survivors = reports.suffix(store.summary.count)
        #expect(store.summary.count == 20)
        let snapshot = try await store.dashboard(window: .day, now: now, upSince: now)
        let stats = try await store.stats(window: 86_400, now: now)
        #expect(snapshot.restores == 20 && stats.restores == 20)
        #expect(snapshot.failed == survivors.filter { $0.servedBy == nil }.count)
        #expect(snapshot.fallbacks == survivors.filter { $0.servedBy == "gcs" }.count && stats.fallbacks == snapshot.fallbacks)
        #expect(snapshot.bytes == survivors.map(\.bytes).reduce(0, +) && snapshot.bytes == stats.bytes)
        #expect(abs(snapshot.estimatedCostUSD - stats.estimatedCostUSD) < 1e-12)
        #expect(snapshot.distribution.map(\.count) == Self.expectedDistribution(survivors.filter { $0.servedBy != nil }.map(\.durationSeconds)))
        #expect(snapshot.durationSeconds == stats.durationSeconds)
        #expect(snapshot.tiers.map(\.restores) == stats.byTier.map(\.restores))
        #expect(snapshot.slowest.first?.durationSeconds == survivors.map(\.durationSeconds).max())

        // Reopened (the migration is not run twice, the rollup is on disk), then emptied.
        store.close()
        let again = try Self.open(scratch, maxReports: 20, retention: .seconds(86_400))
        defer { again.close() }
        #expect(try await again.dashboard(window: .day, now: now, upSince: now) == snapshot)
        try await again.prune(now: now.addingTimeInterval(2 * 86_400))
        let empty = try await again.dashboard(window: .month, now: now, upSince: now)
        #expect(empty.restores == 0 && empty.distribution.allSatisfy { $0.count == 0 } && empty.tiers.isEmpty && empty.slowest.isEmpty)
    }

    /// A database of the version before the rollup, holding reports, gets the rollup
    /// filled from them when it is opened: the same numbers as the stats.
    @Test func theMigrationFillsTheRollupFromTheReportsAlreadyStored() async throws {
        let scratch = try TemporaryDirectory(prefix: "rollup-backfill")
        defer { scratch.remove() }
        let now = Date()
        let reports = Self.knownReports(now: now)
        let store = try Self.open(scratch)
        try await Self.insert(store, reports)
        let before = try await store.dashboard(window: .day, now: now, upSince: now)
        store.close()
        // Back to v1: no rollup, no triggers, no duration index, v2 not applied.
        let queue = try DatabaseQueue(path: scratch.path.appending("reports.sqlite").string)
        try await queue.write { db in
            try db.execute(
                sql: """
                    DROP TRIGGER report_rollup_insert; DROP TRIGGER report_rollup_delete; DROP TABLE report_rollup;
                    DROP INDEX report_by_duration; DELETE FROM grdb_migrations WHERE identifier LIKE 'v2:%';
                    """
            )
        }
        try queue.close()

        let migrated = try Self.open(scratch)
        defer { migrated.close() }
        let after = try await migrated.dashboard(window: .day, now: now, upSince: now)
        #expect(after == before)
        #expect(after.restores == 10 && after.distribution.map(\.count).reduce(0, +) == 8)
        #expect(after.durationSeconds == (try await migrated.stats(window: 86_400, now: now)).durationSeconds)
    }

    /// Exact at the window's edge: a report of the window's first, partial minute counts,
    /// one a second before the window does not.
    @Test func theWindowsEdgeIsExactToTheSecond() async throws {
        let scratch = try TemporaryDirectory(prefix: "rollup-edge")
        defer { scratch.remove() }
        let store = try Self.open(scratch)
        defer { store.close() }
        let now = Date(timeIntervalSince1970: (Date().timeIntervalSince1970 / 60).rounded(.down) * 60 + 30)
        let inside = FleetReport(finishedAt: now.addingTimeInterval(-3600 + 5), durationSeconds: 7)
        let outside = FleetReport(finishedAt: now.addingTimeInterval(-3600 - 5), durationSeconds: 8)
        try await Self.insert(store, [inside, outside], receivedAt: now)
        let snapshot = try await store.dashboard(window: .hour, now: now, upSince: now)
        #expect(snapshot.restores == 1 && snapshot.slowest.map(\.id) == [inside.id])
        #expect(snapshot.restores == (try await store.stats(window: 3600, now: now)).restores)
    }

    @Test func hostileReportStringsAreEscapedAndBounded() async throws {
        try await PeerHarness.with { peer in
            let tier = #"<img src=x onerror="alert(1)">&'"#
            var report = FleetReport(servedBy: tier, durationSeconds: 130, attempts: [(tier, "hit")])
            report.key = "node-modules-evil"
            var json = report.json
            // As long as a host may be (255 bytes): shown cut to 32 characters, whole in a title.
            json["host"] = "<script>alert('host')</script>" + String(repeating: "h", count: 220)
            let answer = try await DashboardClient.send(
                peer, .POST, "/v1/reports", headers: [("Content-Type", "application/json")], body: FleetReport.encode(json)
            )
            #expect(answer.status == 201, "\(answer.text)")
            let page = try await DashboardClient.send(peer, .GET, "/").text
            #expect(!page.contains("<img") && !page.contains("<script>alert"))
            #expect(page.contains("&lt;img src=x onerror=&quot;alert(1)&quot;&gt;&amp;&#39;"))
            #expect(page.contains(#"<tr data-tier="&lt;img src=x onerror=&quot;alert(1)&quot;&gt;&amp;&#39;">"#))
            #expect(page.components(separatedBy: "<script>").count == 2, "only the page's own script")
            #expect(page.contains(#"<td data-field="host"><span title="&lt;script&gt;"#), "the whole host in a title")
            #expect(page.contains(#">&lt;script&gt;alert(&#39;host&#39;)&lt;/script&gt;h…</span>"#), "the cell cut to 32 characters")
            let script = page.components(separatedBy: "<script>")[1]
            #expect(!script.contains("alert"), "nothing from a report lands in the script")
            let alert = page.range(of: "<li data-alert=").map { String(page[$0.lowerBound...].prefix(400)) } ?? ""
            #expect(alert.contains("served by &lt;img"), "\(alert)")
        }
    }

    @Test func tenThousandTiersBecomeAHandfulAndOther() async throws {
        let scratch = try TemporaryDirectory(prefix: "tiers")
        defer { scratch.remove() }
        let store = try Self.open(scratch)
        defer { store.close() }
        let reports = (0..<10_000).map { index in
            let tier = "tier-\(index)-" + String(repeating: "x", count: 50)
            return FleetReport(servedBy: tier, durationSeconds: 200, attempts: [(tier, "hit")])
        }
        for batch in stride(from: 0, to: reports.count, by: 500) {
            try await Self.insert(store, Array(reports[batch..<min(reports.count, batch + 500)]))
        }
        let snapshot = try await store.dashboard(window: .day, now: Date(), upSince: Date())
        #expect(snapshot.restores == 10_000)
        #expect(snapshot.tiers.count == DashboardSnapshot.maximumTiers)
        #expect(snapshot.tiers.last?.tier == "other" && snapshot.tiers.last?.restores == 10_000 - (DashboardSnapshot.maximumTiers - 1))
        #expect(snapshot.alerts.filter { $0.name == "CacheTiersSlowRestore" }.count == DashboardSnapshot.maximumTiers)
        #expect(snapshot.overTime.allSatisfy { $0.byTier.count <= DashboardSnapshot.maximumTiers })
        let page = DashboardPage.page(snapshot, canLogOut: false)
        #expect(page.components(separatedBy: "<tr data-tier=").count - 1 == DashboardSnapshot.maximumTiers)
        #expect(page.utf8.count < 200_000, "\(page.utf8.count) bytes")
        #expect(page.contains("title=\"tier-"), "a long tier name is cut, whole in its title")
    }
}
