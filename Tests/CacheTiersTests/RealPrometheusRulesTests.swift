import CacheTiersTesting
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import Synchronization
import Testing

/// The time-compressed rules in a real Prometheus, scraping an exporter that serves the
/// cache master's fleet series exactly as the master names and writes them (swift-prometheus's
/// `le="120.0"`), behind a bearer token: the rules load in the server, the harness scrapes
/// and queries, the alerts fire once the exporter's counters say so, and the example
/// Grafana dashboard's queries run.
@Suite struct RealPrometheusRulesTests {
    /// The fleet's numbers as the exporter serves them.
    struct Fleet {
        var restored = 0
        var restoredWithin120s = 0
        var failed = 0

        var exposition: String {
            """
            # TYPE cachetiers_fleet_restores_total counter
            cachetiers_fleet_restores_total{outcome="failed",served_by="none"} \(failed)
            cachetiers_fleet_restores_total{outcome="restored",served_by="gcs"} \(restored)
            # TYPE cachetiers_fleet_restore_duration_seconds histogram
            cachetiers_fleet_restore_duration_seconds_bucket{served_by="gcs",le="60.0"} \(restoredWithin120s)
            cachetiers_fleet_restore_duration_seconds_bucket{served_by="gcs",le="120.0"} \(restoredWithin120s)
            cachetiers_fleet_restore_duration_seconds_bucket{served_by="gcs",le="180.0"} \(restored)
            cachetiers_fleet_restore_duration_seconds_bucket{served_by="gcs",le="+Inf"} \(restored)
            cachetiers_fleet_restore_duration_seconds_sum{served_by="gcs"} \(restored * 50)
            cachetiers_fleet_restore_duration_seconds_count{served_by="gcs"} \(restored)
            # TYPE cachetiers_fleet_last_report_age_seconds gauge
            cachetiers_fleet_last_report_age_seconds 3

            """
        }
    }

    @Test(.needsPrometheus, .timeLimit(.minutes(5)))
    func theCompressedRulesFireInARealPrometheusOnTheMastersSeries() async throws {
        let fleet = Mutex(Fleet(restored: 5, restoredWithin120s: 5))
        let router = Router()
        router.get("/metrics") { request, _ -> Response in
            guard request.headers[.authorization] == "Bearer scrape-t0ken" else { return Response(status: .unauthorized) }
            return Response(
                status: .ok,
                headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: .init(byteBuffer: ByteBuffer(string: fleet.withLock { $0.exposition }))
            )
        }
        try await FakeHTTPServer.with(router) { url in
            let prometheus = try await PrometheusServer.start(
                targets: [.init(job: "cachetiers-master", address: String(url.dropFirst("http://".count)), bearerToken: "scrape-t0ken")],
                rules: try AlertRules.compressed()
            )
            defer { prometheus.stop() }

            try await prometheus.eventually("two scrapes of a healthy fleet") {
                try await prometheus.query("count_over_time(cachetiers_fleet_restores_total[1m])").map(\.value).min() ?? 0 >= 2
            }
            // A scrape that times out on a loaded machine makes `up` 0 until the next one: the
            // target must come up (its token accepted), not be up at one instant.
            try await prometheus.eventually("the master's target up") {
                try await prometheus.query(#"up{job="cachetiers-master"}"#).map(\.value) == [1]
            }
            #expect(try await prometheus.alerts().filter { $0.name.hasPrefix("CacheTiers") } == [], "a healthy fleet")

            // Three failures and one restore over 120 s within the (one-minute) hour.
            fleet.withLock { $0.failed = 3; $0.restored = 6 }
            try await prometheus.eventually("the success-rate, burn-rate and slow-restore alerts") {
                let names = Set(try await prometheus.alerts().map(\.name))
                return names.isSuperset(of: ["CacheTiersSuccessRateLow", "CacheTiersErrorBudgetBurnFast", "CacheTiersSlowRestore"])
            }
            let alerts = try await prometheus.alerts()
            let successRate = try #require(alerts.first { $0.name == "CacheTiersSuccessRateLow" })
            // 1 restored out of 4; increase() extrapolates each series to the window's edges
            // by up to half a scrape interval, so a window not yet full is only near 25 %.
            let rate = try #require(Double(successRate.value), "\(successRate)")
            #expect(rate > 0.15 && rate < 0.4, "1 restored out of 4: \(successRate)")
            #expect(successRate.annotations["summary"]?.hasPrefix("CacheTiers success rate ") == true)
            #expect(successRate.annotations["summary"]?.hasSuffix("% over the last hour") == true)
            let slow = try #require(alerts.first { $0.name == "CacheTiersSlowRestore" })
            #expect(slow.labels["served_by"] == "gcs")
            #expect(slow.state == "firing", "no `for`: firing at once")
            // Fewer than 10 restored restores in the hour: no p90 alert, whatever the p90.
            #expect(!alerts.contains { $0.name == "CacheTiersSlowTransfersP90" })

            // The example dashboard's queries are valid PromQL for this server (an invalid
            // one throws with Prometheus's error), on the rules' recorded series too.
            let expressions = try AlertRules.dashboardExpressions()
            #expect(expressions.count >= 10)
            for expression in expressions { _ = try await prometheus.query(expression) }
            #expect(try await prometheus.query("1 - cachetiers:restore_failures:increase1h / cachetiers:restores:increase1h").count == 1)
        }
    }
}
