import CacheTiers
import CacheTiersTesting
import Foundation
import SystemPackage
import Testing

/// The whole loop with real components: `cachetiers restore` on "VMs" reports to a real
/// `cachetiers serve`, a real Prometheus scrapes that master and evaluates the shipped
/// rules (time compressed 60 times: an hour is a minute), and its HTTP API shows the fleet
/// series and the success-rate alert.
@Suite(.serialized) struct FleetAlertsEndToEndTests {
    /// A VM's project folder: a lockfile (its content picks the key) and a config whose
    /// peer tier is `peer` and whose fresh install fails (`false`), reporting to `peer`.
    struct Project {
        let folder: FilePath
        var config: FilePath { folder.appending("cachetiers.json") }

        init(_ name: String, in scratch: TemporaryDirectory, lockfile: String, peer: String, tokens: Tokens) throws {
            folder = try scratch.makeDirectory(name)
            try Data(lockfile.utf8).write(to: URL(fileURLWithPath: folder.appending("package-lock.json").string))
            let config: [String: Any] = [
                "key": ["prefix": "node-modules", "files": ["package-lock.json"], "platform": true, "salt": ""],
                "destination": "node_modules",
                "deadlineSeconds": 120,
                "tiers": [
                    [
                        "kind": "peer", "name": "cache-master", "urls": [peer], "tokenFile": tokens.admin.string,
                        "connectTimeoutSeconds": 5, "maxAttempts": 1, "minBytesPerSecond": 0,
                    ],
                    ["kind": "install", "name": "fresh-install", "command": ["false"], "produces": "node_modules", "timeoutSeconds": 60],
                ],
                "writeBack": ["enabled": false],
                "monitoring": [
                    "report": [
                        "tokenFile": tokens.report.string,
                        "spoolDirectory": scratch.path.appending("spool").string,
                        // Generous: a busy machine must not spool a report the test then waits for.
                        "timeoutSeconds": 10,
                    ]
                ],
            ]
            try JSONSerialization.data(withJSONObject: config, options: [.prettyPrinted, .sortedKeys])
                .write(to: URL(fileURLWithPath: self.config.string))
        }

        func restore() async throws -> Fixtures.ProcessResult {
            try await Fixtures.cli(["restore", "--config", config.string, "--report", "-"])
        }
    }

    /// The master's full token (Prometheus scrapes with it) and its report-only token (the VMs').
    struct Tokens {
        let admin: FilePath
        let report: FilePath

        init(in scratch: TemporaryDirectory) throws {
            admin = scratch.path.appending("admin.token")
            report = scratch.path.appending("report.token")
            try Data("admin-t0ken\n".utf8).write(to: URL(fileURLWithPath: admin.string))
            try Data("report-t0ken\n".utf8).write(to: URL(fileURLWithPath: report.string))
        }
    }

    @Test(.needsPrometheus, .timeLimit(.minutes(5)))
    func restoresReportedToTheMasterShowInPrometheusAndFireTheSuccessRateAlert() async throws {
        let scratch = try TemporaryDirectory(prefix: "fleet")
        defer { scratch.remove() }
        let tokens = try Tokens(in: scratch)
        let arguments = ["--root", scratch.path.appending("root").string, "--token-file", tokens.admin.string, "--report-token-file", tokens.report.string]
        let master = try await Fixtures.offThePool { try ServeProcess(arguments) }
        defer { master.stop() }
        let address = String(master.url.dropFirst("http://".count))
        let port = try #require(Int(master.url.split(separator: ":").last ?? ""))
        let prometheus = try await PrometheusServer.start(
            targets: [.init(job: "cachetiers-master", address: address, bearerToken: "admin-t0ken")],
            rules: try AlertRules.compressed()
        )
        defer { prometheus.stop() }

        // Scraped before any report: the failed series is there at 0 (so increase() sees
        // every failure), and so is the age of the last report (-1: none yet).
        try await prometheus.eventually("the master's first scrape") {
            let failed = try await prometheus.query(#"cachetiers_fleet_restores_total{outcome="failed",served_by="none"}"#)
            let age = try await prometheus.query("cachetiers_fleet_last_report_age_seconds")
            return failed.map(\.value) == [0] && age.map(\.value) == [-1]
        }

        // Two VMs restore a published cache: one at full speed, one through a peer link
        // limited to a third of the archive (and its manifest) a second: at least 3 s.
        let hit = try Project("hit", in: scratch, lockfile: #"{"packages":{"left-pad":"1.3.0"}}"#, peer: master.url, tokens: tokens)
        let key = try await Fixtures.cli(["key", "--config", hit.config.string]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let tree = scratch.path.appending("tree")
        try SampleTree.write(to: tree, files: 64)
        let publish = try await Fixtures.cli(["publish", tree.string, "--key", key, "--peer", master.url, "--token-file", tokens.admin.string])
        try #require(publish.status == 0, "\(publish.stderr)")
        // The manifest travels too (in a header), so the link's rate counts it in.
        let published = try ["\(key).tar.zst", "\(key).tar.zst.manifest.json"].map { name in
            try #require(try FileManager.default.attributesOfItem(atPath: scratch.path.appending("root/\(name)").string)[.size] as? Int)
        }
        let slowLink = try FaultInjectingProxy(
            upstreamPort: port, fault: .bandwidth(bytesPerSecond: max(1, published.reduce(0, +) / 3))
        )
        defer { slowLink.stop() }
        let slow = try Project("slow", in: scratch, lockfile: #"{"packages":{"left-pad":"1.3.0"}}"#, peer: slowLink.url, tokens: tokens)
        for project in [hit, slow] {
            let restore = try await project.restore()
            try #require(restore.status == 0, "\(restore.stderr)")
            #expect(try JSONDecoder().decode(RestoreReport.self, from: Data(restore.stdout.utf8)).servedBy == "cache-master")
        }
        try await prometheus.eventually("the two restored reports in Prometheus") {
            try await prometheus.query("cachetiers_fleet_reports_stored").map(\.value) == [2]
        }
        #expect(try await prometheus.alerts().filter { $0.name.hasPrefix("CacheTiers") } == [], "alerts with no failure at all")

        // Three VMs whose lockfile nobody published: the peer misses, the install fails.
        // Concurrently, as boots of a fleet are, and well inside the test's one-minute hour.
        let failing = try (1...3).map { index in
            try Project("new-\(index)", in: scratch, lockfile: #"{"packages":{"new-dependency":"\#(index).0.0"}}"#, peer: master.url, tokens: tokens)
        }
        try await withThrowingTaskGroup(of: Fixtures.ProcessResult.self) { group in
            for project in failing { group.addTask { try await project.restore() } }
            for try await restore in group { #expect(restore.status == 1, "\(restore.stderr)") }
        }

        // Prometheus sees the fleet series the reports made...
        try await prometheus.eventually("the fleet's restores by outcome") {
            let byOutcome = try await prometheus.query("sum by (outcome) (cachetiers_fleet_restores_total)")
            return Dictionary(uniqueKeysWithValues: byOutcome.map { ($0.labels["outcome"] ?? "", $0.value) }) == ["restored": 2, "failed": 3]
        }
        let durations = try await prometheus.query(#"cachetiers_fleet_restore_duration_seconds_bucket{served_by="cache-master"}"#)
        let buckets = Dictionary(durations.map { sample in
            (sample.labels["le"] == "+Inf" ? .infinity : Double(sample.labels["le"] ?? "") ?? .nan, sample.value)
        }) { first, _ in first }
        #expect(buckets[.infinity] == 2, "\(durations)")
        #expect((buckets[1] ?? 2) <= 1, "the slowed-down restore took at least 3 s: \(durations)")
        #expect(try await prometheus.query(#"cachetiers_fleet_restore_duration_seconds_count{served_by="none"}"#).map(\.value) == [3])
        #expect(try await prometheus.query(#"cachetiers_fleet_attempts_total{tier="fresh-install"}"#).map(\.value).reduce(0, +) == 3)

        // ...and evaluates the success rate of the compressed hour: under 90 %, 3 failures.
        try await prometheus.eventually("CacheTiersSuccessRateLow pending or firing") {
            try await prometheus.alerts().contains { $0.name == "CacheTiersSuccessRateLow" && ["pending", "firing"].contains($0.state) }
        }
        let alert = try #require(try await prometheus.alerts().first { $0.name == "CacheTiersSuccessRateLow" })
        #expect(alert.labels["severity"] == "critical")
        #expect(alert.annotations["summary"]?.hasPrefix("CacheTiers success rate ") == true, "\(alert.annotations)")
        #expect((Double(alert.value) ?? 1) < 0.9, "\(alert)")
        #expect(alert.annotations["runbook"] == "Documentation/Monitoring-alerts.md#cachetierssuccessratelow")
        // No restore came near 120 s (the master's buckets are `le="120.0"`): no slow-restore alert.
        #expect(try await !prometheus.alerts().contains { $0.name.hasPrefix("CacheTiersSlow") })
    }
}
