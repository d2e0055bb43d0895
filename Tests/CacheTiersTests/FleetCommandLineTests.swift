import CacheTiers
import CacheTiersServer
import CacheTiersTesting
import Foundation
import Synchronization
import SystemPackage
import Testing

/// The cache master's report store and `cachetiers stats`, through the real binary:
/// what an operator sees, and what survives a restart or a SIGKILL.
@Suite struct FleetCommandLineTests {
    /// The rows of the report database and its integrity check, read by Python's sqlite3
    /// (another SQLite than the server's), with the server stopped.
    static func inspect(_ database: FilePath) async throws -> (rows: Int, integrity: String) {
        let script = """
            import sqlite3, sys
            db = sqlite3.connect(sys.argv[1])
            print(db.execute("PRAGMA integrity_check").fetchone()[0])
            print(db.execute("SELECT count(*) FROM report").fetchone()[0])
            """
        let result = try await Fixtures.run(["python3", "-c", script, database.string])
        let lines = result.stdout.split(separator: "\n").map(String.init)
        guard result.status == 0, lines.count == 2, let rows = Int(lines[1]) else {
            throw FixtureError("cannot inspect \(database): \(result.stdout) \(result.stderr)")
        }
        return (rows, lines[0])
    }

    @Test func statsPrintsExactlyTheNumbersOfTheReportsSent() async throws {
        let scratch = try TemporaryDirectory(prefix: "stats")
        defer { scratch.remove() }
        let serve = try ServeProcess(["--root", scratch.path.appending("root").string])
        defer { serve.stop() }

        let start = Date().addingTimeInterval(-3600)
        let reports = [
            FleetReport(key: "node-modules-aaa", durationSeconds: 10, bytes: 100_000_000),
            FleetReport(key: "node-modules-aaa", durationSeconds: 20, bytes: 100_000_000),
            FleetReport(key: "node-modules-aaa", durationSeconds: 30, bytes: 100_000_000),
            FleetReport(key: "node-modules-bbb", durationSeconds: 40, bytes: 100_000_000),
            FleetReport(key: "node-modules-bbb", servedBy: "gcs", durationSeconds: 60, bytes: 50_000_000, costUSD: 0.25, attempts: [("cache-master", "miss"), ("gcs", "hit")]),
            FleetReport(key: "node-modules-ccc", servedBy: "gcs", durationSeconds: 100, bytes: 50_000_000, costUSD: 0.5, attempts: [("cache-master", "miss"), ("gcs", "hit")]),
            FleetReport(key: "node-modules-ddd", servedBy: nil, durationSeconds: 120, bytes: 0, attempts: [("cache-master", "miss"), ("gcs", "miss"), ("fresh-install", "error")]),
            FleetReport(key: "node-modules-ddd", servedBy: "fresh-install", durationSeconds: 300, bytes: 0, attempts: [("cache-master", "miss"), ("gcs", "miss"), ("fresh-install", "hit")]),
        ]
        for (index, report) in reports.enumerated() {
            var report = report
            report.finishedAt = start.addingTimeInterval(Double(index) * 60)
            let answer = try await serve.send(.POST, "/v1/reports", body: report.body)
            #expect(answer.status == 201, "\(answer.body)")
        }
        // Outside the window: not counted.
        #expect(try await serve.send(.POST, "/v1/reports", body: FleetReport(finishedAt: Date().addingTimeInterval(-3 * 86_400)).body).status == 201)

        let text = try await Fixtures.cli(["stats", "--peer", serve.url])
        #expect(text.status == 0, "\(text.stderr)")
        let expected = """
            Window:                     24h (by when restores finished)
            Restores:                   8
              Restored:                 7 (87.50 %)
              Failed:                   1 (12.50 %)
              Fell back:                3
            Duration p50 / p90 / p99:   40.0 s / 300.0 s / 300.0 s
            Bytes transferred:          500.0 MB
            Estimated cost:             0.7500 USD
              Projected a month:        22.5000 USD

            Served by:
              cache-master   4 (50.00 %), p50 / p90 / p99 20.0 s / 40.0 s / 40.0 s, 400.0 MB, 0.0000 USD
              gcs            2 (25.00 %), p50 / p90 / p99 60.0 s / 100.0 s / 100.0 s, 100.0 MB, 0.7500 USD
              fresh-install  1 (12.50 %), p50 / p90 / p99 300.0 s / 300.0 s / 300.0 s, 0 B, 0.0000 USD

            Most restored keys:
              3  node-modules-aaa
              2  node-modules-bbb
              1  node-modules-ccc
              1  node-modules-ddd

            Most missed keys:
              4  node-modules-ddd
              1  node-modules-bbb
              1  node-modules-ccc

            Targets:
              transfer    p90 under 90 s        300.0 s     NOT MET
              successRate over 99 %             87.50 %     NOT MET
              monthlyCost under 10 USD          22.5000 USD NOT MET
              maintenance under 1 hour a month  -           not measurable from restore reports

            """
        #expect(text.stdout == expected, "\(text.stdout)")

        let json = try await Fixtures.cli(["stats", "--peer", serve.url, "--window", "24h", "--json"])
        #expect(json.status == 0, "\(json.stderr)")
        let object = try #require(try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any])
        #expect(object["window"] as? Int == 86_400)
        #expect(object["restores"] as? Int == 8)
        #expect(object["restored"] as? Int == 7)
        #expect(object["failed"] as? Int == 1)
        #expect(object["successRate"] as? Double == 0.875)
        #expect(object["fallbacks"] as? Int == 3)
        #expect(object["bytes"] as? Int == 500_000_000)
        #expect(object["estimatedCostUSD"] as? Double == 0.75)
        #expect(object["projectedMonthlyCostUSD"] as? Double == 22.5)
        #expect(object["durationSeconds"] as? [String: Double] == ["p50": 40, "p90": 300, "p99": 300])
        let tiers = try #require(object["byTier"] as? [[String: Any]])
        #expect(tiers.map { $0["tier"] as? String } == ["cache-master", "gcs", "fresh-install"])
        #expect(tiers.map { $0["restores"] as? Int } == [4, 2, 1])
        #expect(tiers.map { $0["share"] as? Double } == [0.5, 0.25, 0.125])
        #expect(tiers.map { $0["p50"] as? Double } == [20, 60, 300])
        #expect(tiers.map { $0["p90"] as? Double } == [40, 100, 300])
        #expect(tiers.map { $0["p99"] as? Double } == [40, 100, 300])
        #expect(tiers.map { $0["bytes"] as? Int } == [400_000_000, 100_000_000, 0])
        #expect(tiers.map { $0["estimatedCostUSD"] as? Double } == [0, 0.75, 0])
        let top = try #require(object["topKeys"] as? [[String: Any]])
        #expect(top.map { "\($0["key"]!) \($0["count"]!)" } == ["node-modules-aaa 3", "node-modules-bbb 2", "node-modules-ccc 1", "node-modules-ddd 1"])
        let missed = try #require(object["topMissedKeys"] as? [[String: Any]])
        #expect(missed.map { "\($0["key"]!) \($0["count"]!)" } == ["node-modules-ddd 4", "node-modules-bbb 1", "node-modules-ccc 1"])
        let targets = try #require(object["targets"] as? [[String: Any]])
        #expect(targets.map { $0["name"] as? String } == ["transfer", "successRate", "monthlyCost", "maintenance"])
        #expect(targets.map { $0["value"] as? Double } == [300, 0.875, 22.5, nil])
        #expect(targets.map { $0["met"] as? Bool } == [false, false, false, nil])
        #expect(targets[3]["value"] is NSNull && targets[3]["met"] is NSNull, "null, not missing")
        #expect(targets[3]["note"] as? String == "not measurable from restore reports")

        let usage = try await Fixtures.cli(["stats", "--peer", serve.url, "--window", "2w"])
        #expect(usage.status == 2)
        #expect(usage.stderr.hasPrefix("cachetiers: --window: \(StatsWindow.problem)"), "\(usage.stderr)")
        let refused = try await Fixtures.cli(["stats", "--peer", "http://127.0.0.1:1"])
        #expect(refused.status == 1)
        #expect(refused.stderr.hasPrefix("cachetiers: stats: cannot reach http://127.0.0.1:1"), "\(refused.stderr)")
    }

    @Test func everyAcknowledgedReportSurvivesASIGKILLMidIngestAndARestart() async throws {
        let scratch = try TemporaryDirectory(prefix: "killed")
        defer { scratch.remove() }
        let root = scratch.path.appending("root")
        let database = root.appending(".cachetiers/reports.sqlite")
        let serve = try ServeProcess(["--root", root.string])

        final class Ledger: Sendable {
            let sent = Mutex<[String: [UInt8]]>([:])
            let acknowledged = Mutex<Set<String>>([])
        }
        let ledger = Ledger()
        let url = serve.url
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<3 {
                group.addTask {
                    while true {
                        let report = FleetReport(key: "node-modules-\(Int.random(in: 0..<50))")
                        ledger.sent.withLock { $0[report.id] = report.body }
                        guard let answer = try? await serve.send(.POST, "/v1/reports", body: report.body) else { return }
                        guard answer.status == 201 else { throw FixtureError("\(url) answered \(answer.status): \(answer.body)") }
                        ledger.acknowledged.withLock { _ = $0.insert(report.id) }
                    }
                }
            }
            // Bounded only against a hang: the clients stop at the first failed request.
            for _ in 0..<60_000 {
                if ledger.acknowledged.withLock({ $0.count }) >= 100 { break }
                try await Task.sleep(for: .milliseconds(5))
            }
            serve.kill9()
            try await group.waitForAll()
        }
        let sent = ledger.sent.withLock { $0 }
        let acknowledged = ledger.acknowledged.withLock { $0 }

        let restarted = try ServeProcess(["--root", root.string])
        let stored = try await Fixtures.cli(["stats", "--peer", restarted.url, "--window", "90d", "--json"])
        let object = try #require(try JSONSerialization.jsonObject(with: Data(stored.stdout.utf8)) as? [String: Any])
        let count = try #require(object["restores"] as? Int)
        #expect(acknowledged.count <= count && count <= sent.count, "acknowledged \(acknowledged.count) ≤ stored \(count) ≤ sent \(sent.count)")
        for id in acknowledged {
            let again = try await restarted.send(.POST, "/v1/reports", body: sent[id]!)
            #expect(again.status == 200, "acknowledged report \(id) is stored: \(again.status)")
        }
        var added = 0
        for (id, body) in sent where !acknowledged.contains(id) {
            let again = try await restarted.send(.POST, "/v1/reports", body: body)
            #expect(again.status == 200 || again.status == 201)
            if again.status == 201 { added += 1 }
        }
        #expect(count + added == sent.count, "each report once")
        #expect(restarted.stop() == 0)

        // A clean restart keeps them all, and the archive folder's recovery leaves the database alone.
        let inspected = try await Self.inspect(database)
        #expect(inspected.integrity == "ok")
        #expect(inspected.rows == sent.count)
        let again = try ServeProcess(["--root", root.string])
        #expect(try await again.send(.POST, "/v1/reports", body: sent.values.first!).status == 200)
        #expect(again.stop() == 0)
        #expect(try FileManager.default.contentsOfDirectory(atPath: root.string) == [".cachetiers"], "nothing moved aside")
    }

    @Test func badInputIsRefusedAndNothingIsStored() async throws {
        let scratch = try TemporaryDirectory(prefix: "refused")
        defer { scratch.remove() }
        let root = scratch.path.appending("root")
        let admin = scratch.path.appending("admin.token").string
        let vm = scratch.path.appending("vm.token").string
        try Data("admin-secret\n".utf8).write(to: URL(fileURLWithPath: admin))
        try Data("vm-secret\n".utf8).write(to: URL(fileURLWithPath: vm))
        let serve = try ServeProcess(["--root", root.string, "--token-file", admin, "--report-token-file", vm])

        var oversized = FleetReport().json
        oversized["padding"] = String(repeating: "x", count: 300 * 1024)
        let tooLarge = try await serve.send(.POST, "/v1/reports", token: "vm-secret", body: FleetReport.encode(oversized))
        #expect(tooLarge.status == 413)
        var malformed = FleetReport().json
        malformed["durationSeconds"] = -3
        let bad = try await serve.send(.POST, "/v1/reports", token: "vm-secret", body: FleetReport.encode(malformed))
        #expect(bad.status == 400)
        #expect(bad.body == "not a usable report: durationSeconds: must be a number from 0 to 2592000\n")
        #expect(try await serve.send(.POST, "/v1/reports", token: "guess", body: FleetReport().body).status == 401)
        #expect(try await serve.send(.POST, "/v1/reports", body: FleetReport().body).status == 401)
        let put = try await serve.send(.PUT, "/v1/caches/node-modules-aaa", token: "vm-secret", body: [1, 2, 3])
        #expect(put.status == 403)
        let stats = try await Fixtures.cli(["stats", "--peer", serve.url, "--token-file", vm])
        #expect(stats.status == 1)
        #expect(stats.stderr == "cachetiers: stats: \(serve.url) answered 403: this bearer token may only send reports (POST /v1/reports)\n")
        #expect(serve.stop() == 0)
        #expect(try await Self.inspect(root.appending(".cachetiers/reports.sqlite")).rows == 0)
        #expect(try FileManager.default.contentsOfDirectory(atPath: root.string) == [".cachetiers"], "no archive either")

        let alone = try await ServeProcess.failingToStart(["--root", root.string, "--report-token-file", vm])
        #expect(alone.status == 2)
        #expect(alone.stderr.contains("--report-token-file needs --token-file"), "\(alone.stderr)")
        let same = try await ServeProcess.failingToStart(["--root", root.string, "--token-file", vm, "--report-token-file", vm])
        #expect(same.status == 2)
        #expect(same.stderr.contains("the same token"), "\(same.stderr)")

        let corrupt = scratch.path.appending("corrupt.sqlite")
        try Data(repeating: 0x42, count: 4096).write(to: URL(fileURLWithPath: corrupt.string))
        let refused = try await ServeProcess.failingToStart(["--root", root.string, "--reports-db", corrupt.string])
        #expect(refused.status == 1)
        let line = refused.stderr.split(separator: "\n").last.map(String.init) ?? ""
        #expect(line.hasPrefix("cachetiers: serve: the report database \(corrupt.string) cannot be used: "), "\(refused.stderr)")
        #expect(line.hasSuffix("; move it aside to start a new one, or give another --reports-db"), "\(refused.stderr)")
    }
}
