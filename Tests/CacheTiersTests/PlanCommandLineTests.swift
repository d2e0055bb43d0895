import CacheTiers
import CacheTiersServer
import CacheTiersTesting
import Foundation
import Hummingbird
import NIOCore
import SystemPackage
import Testing

/// `cachetiers plan` through the real binary: the table and the JSON an operator reads,
/// every refusal as one line with exit 2, and `--from-stats` against a real cache master
/// fed known reports, one that cannot be reached and one answering garbage.
@Suite struct PlanCommandLineTests {
    static func object(_ stdout: String) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: Data(stdout.utf8)) as? [String: Any])
    }

    @Test func theAnalysisInputsPrintTheAnalysisTable() async throws {
        let run = try await Fixtures.cli(["plan"])
        #expect(run.status == 0, "\(run.stderr)")
        #expect(run.stderr.isEmpty)
        let expected = """
            Inputs: 500 workspaces a day, archive 409.6 MiB; peer 70.0 s, GCS 55.0 s, fresh install 350.0 s;
            fallback 5.00 %; GCS 0.01 USD a GB and 0.0004 USD per 1,000 reads (53 a restore): 0.0040 USD a
            transfer; availability GCS 99.900 %, fresh install 99.000 %; budget 10.00 USD a month.

            Option             Cost a month  Restore   Success  Waiting a day  Targets
            peer-only              0.00 USD   84.0 s  99.950 %         11.7 h  all met
            gcs-every-restore     60.26 USD   55.3 s  99.999 %          7.7 h  missed: cost
            hybrid                 3.01 USD   69.3 s  99.999 %          9.6 h  all met
            fresh-install          0.00 USD  350.0 s  99.000 %         48.6 h  missed: time, success
            Tiers in order: peer-only = peer, install; gcs-every-restore = gcs, install; hybrid = peer, gcs,
            install; fresh-install = install. Targets: restore under 90 s, success over 99 %, cost within the
            budget.

            Recommendation: hybrid
            1. Traffic is 500 workspaces a day, under 1,000: the question is what GCS costs, not how to scale
               the peer.
            2. Budget concern: GCS on every restore would cost 60.26 USD a month, over the 10.00 USD budget; the
               peer first with GCS for the 5.00 % it misses costs 3.01 USD (restores 69.3 s, success 99.999 %).
            3. The peer needs 1 cache master at the peak of 2.1 boots a minute (see Capacity); keep it filled by
               write-back, and GCS too where it is a tier.
            4. A fresh install stays last in the chain: 350.0 s a restore and 99.000 % success alone, it runs
               only when every cache misses.

            Capacity at the peak:
              Boots a minute  2.1 (25.00 % of a day's boots in its busiest hour)
              Peer transfers  95.00 % of them: 113.3 Mbit/s, 2.3 at once
              One master      1,000 Mbit/s at 70.00 %: 700.0 Mbit/s, 64 transfers (serve --max-transfers)
              Cache masters   1, at rendezvous hashing
              One master carries the peak. Rendezvous hashing gives each master about an equal share of the
              keys, so more masters share a load only when it spreads over many keys; one key's burst always
              lands on one master.

            """
        #expect(run.stdout == expected, "\(run.stdout)")
        for line in run.stdout.split(separator: "\n") { #expect(line.count <= 100, "\(line)") }
    }

    @Test func jsonCarriesTheSameNumbersUnderStableKeys() async throws {
        let run = try await Fixtures.cli(["plan", "--workspaces-per-day", "1000", "--redundancy-critical", "--peer-link-mbps", "100", "--json"])
        #expect(run.status == 0, "\(run.stderr)")
        let object = try Self.object(run.stdout)
        #expect(Set(object.keys) == ["inputs", "sources", "archive", "gcsCostPerTransferUSD", "options", "recommendation", "capacity", "fromStats"])
        let inputs = try #require(object["inputs"] as? [String: Any])
        #expect(inputs["workspacesPerDay"] as? Double == 1000)
        #expect(inputs["archiveBytes"] as? Int == 429_496_730)
        #expect(inputs["peerLinkMbps"] as? Double == 100)
        #expect(inputs["peerSeconds"] as? Double == Double(429_496_730) * 8 / 100e6)
        #expect(inputs["gcsLinkMbps"] is NSNull, "null, not missing")
        #expect(inputs["redundancyCritical"] as? Bool == true)
        let sources = try #require(object["sources"] as? [String: String])
        #expect(sources["workspacesPerDay"] == "option" && sources["peerLinkMbps"] == "option" && sources["peerSeconds"] == "derived")
        #expect(sources["budgetUSD"] == "default" && sources["gcsRequestsPerRestore"] == "derived")
        let options = try #require(object["options"] as? [[String: Any]])
        #expect(options.map { $0["name"] as? String } == ["peer-only", "gcs-every-restore", "hybrid", "fresh-install"])
        let gcs = options[1]
        // 30,000 restores a month; GCS serves 99.9 % (0.4 GiB at 0.01 USD a GiB, 53 reads),
        // and a miss costs its one metadata read.
        let transfer = Double(429_496_730) / 1_073_741_824 * 0.01 + 53 * 0.0004 / 1000
        #expect(abs((gcs["monthlyCostUSD"] as? Double ?? 0) - 30_000 * (0.999 * transfer + 0.001 * 0.0004 / 1000)) < 1e-6)
        #expect(Set(gcs.keys) == ["name", "tiers", "monthlyCostUSD", "expectedRestoreSeconds", "successRate", "waitingHoursPerDay", "servedShares", "meetsTargets"])
        #expect(gcs["meetsTargets"] as? [String: Bool] == ["transfer": true, "successRate": true, "monthlyCost": false])
        let recommendation = try #require(object["recommendation"] as? [String: Any])
        #expect(recommendation["option"] as? String == "hybrid")
        #expect((recommendation["reasons"] as? [String])?.first?.hasPrefix("Traffic is 1,000 workspaces a day, 1,000 or more") == true)
        let capacity = try #require(object["capacity"] as? [String: Any])
        #expect(capacity["masters"] as? Int == 2)
        #expect(object["fromStats"] is NSNull)
    }

    @Test(.timeLimit(.minutes(2))) func everyBadOptionIsOneLineAndExitTwo() async throws {
        let scratch = try TemporaryDirectory(prefix: "plan-bad")
        defer { scratch.remove() }
        let fifo = scratch.path.appending("archive.fifo").string
        #expect(mkfifo(fifo, 0o600) == 0)
        let cases: [([String], String)] = [
            (["--workspaces-per-day", "0"], "cachetiers: --workspaces-per-day: expected a number from 0.01 to 10000000, got 0"),
            (["--workspaces-per-day", "-1"], "cachetiers: --workspaces-per-day: expected a number from 0.01 to 10000000, got -1"),
            (["--workspaces-per-day", "nan"], "cachetiers: --workspaces-per-day: expected a number from 0.01 to 10000000, got nan"),
            (["--archive-mb", "1e308"], "cachetiers: --archive-mb: expected a number more than 0 to 1048576 MiB, got 1e+308"),
            (["--fallback-rate", "inf"], "cachetiers: --fallback-rate: expected a number from 0 to 1, got inf"),
            (["--budget-usd", "-5"], "cachetiers: --budget-usd: expected a number from 0 to 1000000000 USD, got -5"),
            (["--archive", fifo], "cachetiers: --archive \(fifo) is not a regular file (a FIFO, socket or device); give the archive itself"),
            (["--archive", scratch.path.string], "cachetiers: --archive \(scratch.path.string) is a directory; give the .tar.zst archive"),
            (["--archive", "/dev/zero"], "cachetiers: --archive /dev/zero is not a regular file (a FIFO, socket or device); give the archive itself"),
            (["--archive-mb", "400", "--archive", fifo], "cachetiers: give --archive-mb or --archive, not both (see 'cachetiers plan --help')"),
            (["--peer-seconds", "60", "--peer-link-mbps", "100"], "cachetiers: give --peer-seconds or --peer-link-mbps, not both (see 'cachetiers plan --help')"),
            (["--from-stats", "ftp://x"], "cachetiers: --from-stats must be an http:// or https:// URL (see 'cachetiers plan --help')"),
            (["--from-stats", "http://127.0.0.1:9", "--window", "2w"], "cachetiers: --window: \(StatsWindow.problem) (see 'cachetiers plan --help')"),
            (["--token-file", fifo], "cachetiers: --token-file needs --from-stats (see 'cachetiers plan --help')"),
            // Refused before the (unreachable) master is asked.
            (["--from-stats", "http://127.0.0.1:9", "--fallback-rate", "2"], "cachetiers: --fallback-rate: expected a number from 0 to 1, got 2"),
        ]
        for (arguments, line) in cases {
            let run = try await Fixtures.cli(["plan"] + arguments)
            #expect(run.status == 2, "\(arguments): \(run.stderr)")
            #expect(run.stderr == line + "\n", "\(arguments)")
            #expect(run.stdout.isEmpty)
        }
        let word = try await Fixtures.cli(["plan", "--install-seconds", "soon"])
        #expect(word.status == 2)
        #expect(word.stderr.split(separator: "\n").count == 1 && word.stderr.contains("--install-seconds"), "\(word.stderr)")
    }

    @Test func anArchiveFileGivesTheSizeAndItsManifestTheTree() async throws {
        let scratch = try TemporaryDirectory(prefix: "plan-archive")
        defer { scratch.remove() }
        let tree = try await Fixtures.makeCorpus(in: scratch.path.appending("tree"), files: 30, seed: 15)
        let archive = scratch.path.appending("node-modules.tar.zst").string
        let pack = try await Fixtures.cli(["pack", tree.string, "--output", archive])
        #expect(pack.status == 0, "\(pack.stderr)")
        let size = try #require(try FileManager.default.attributesOfItem(atPath: archive)[.size] as? Int)
        let manifest = try CacheManifest(jsonData: Data(contentsOf: URL(fileURLWithPath: archive + ".manifest.json")))

        let run = try await Fixtures.cli(["plan", "--archive", archive, "--json"])
        #expect(run.status == 0, "\(run.stderr)")
        let object = try Self.object(run.stdout)
        #expect((object["inputs"] as? [String: Any])?["archiveBytes"] as? Int == size)
        #expect((object["sources"] as? [String: String])?["archiveBytes"] == "option")
        let described = try #require(object["archive"] as? [String: Any])
        #expect(described["file"] as? String == archive)
        #expect(described["uncompressedBytes"] as? Int == Int(manifest.uncompressedSize))
        #expect(described["entries"] as? Int == manifest.entryCount)

        // A manifest that describes another archive is not believed.
        try Data("not an archive".utf8).write(to: URL(fileURLWithPath: archive))
        let other = try Self.object(try await Fixtures.cli(["plan", "--archive", archive, "--json"]).stdout)
        #expect((other["archive"] as? [String: Any])?["uncompressedBytes"] is NSNull)
        let empty = scratch.path.appending("empty.tar.zst").string
        #expect(FileManager.default.createFile(atPath: empty, contents: Data()))
        let refused = try await Fixtures.cli(["plan", "--archive", empty])
        #expect(refused.status == 2 && refused.stderr == "cachetiers: --archive \(empty) is empty; give an archive cachetiers pack wrote\n")
    }

    // MARK: --from-stats

    /// A report served by `tier` (after a miss of `missed` when given), 400 MiB, at `cost`.
    static func report(_ tier: String, seconds: Double, cost: Double?, missed: String? = nil) -> FleetReport {
        var attempts = [(tier, "hit")]
        if let missed { attempts.insert((missed, "miss"), at: 0) }
        return FleetReport(servedBy: tier, durationSeconds: seconds, bytes: 400 << 20, costUSD: cost, attempts: attempts)
    }

    @Test func fromStatsSaysTheDeploymentIsOverBudgetAndWhatToChange() async throws {
        let scratch = try TemporaryDirectory(prefix: "plan-stats")
        defer { scratch.remove() }
        try Data("admin-secret\n".utf8).write(to: URL(fileURLWithPath: scratch.path.appending("admin.token").string))
        let serve = try ServeProcess(["--root", scratch.path.appending("root").string, "--token-file", scratch.path.appending("admin.token").string])
        defer { serve.stop() }
        // GCS for every restore, 20 a day, at the GCS tier's default internet price
        // (0.12 USD a GiB): 0.0469 USD a restore, 28.14 USD a month projected.
        let cost = 400.0 / 1024 * 0.12 + 51 * 0.0004 / 1000
        for index in 0..<20 {
            let answer = try await serve.send(.POST, "/v1/reports", token: "admin-secret", body: Self.report("gcs", seconds: 50 + Double(index), cost: cost).body)
            #expect(answer.status == 201, "\(answer.body)")
        }
        let arguments = ["plan", "--from-stats", serve.url, "--token-file", scratch.path.appending("admin.token").string, "--window", "24h"]
        let run = try await Fixtures.cli(arguments)
        #expect(run.status == 0, "\(run.stderr)")
        let header = run.stdout.components(separatedBy: "\n\n")[0].replacingOccurrences(of: "\n", with: " ")
        for measured in ["20 workspaces a day (measured)", "archive 400.0 MiB (measured)", "peer 70.0 s,", "GCS 59.0 s (measured)", "GCS 0.12 USD a GB (measured)"] {
            #expect(header.contains(measured), "\(measured): \(header)")
        }
        #expect(run.stdout.contains("\nRecommendation: hybrid\n"), "\(run.stdout)")
        let deployment = try #require(run.stdout.components(separatedBy: "\nDeployment (").last)
        let expected = """
            \(serve.url), last 24h):
              The deployment does not meet the cost target: 28.14 USD a month projected from the last 1.0 days,
              over the 10.00 USD budget.
              GCS served 100.00 % of restores and the peer 0.00 %; to fit the budget GCS may serve at most
              35.54 % (0.0469 USD a transfer at 20 restores a day).
              Put a cache master first in the chain (a peer tier before gcs): the hybrid at a 5.00 % fallback
              rate would cost 1.41 USD a month.
              Or raise --budget-usd if 28.14 USD a month is acceptable.

            """
        #expect(deployment == expected, "\(deployment)")
        for line in run.stdout.split(separator: "\n") { #expect(line.count <= 100, "\(line)") }

        let json = try Self.object(try await Fixtures.cli(arguments + ["--json"]).stdout)
        let sources = try #require(json["sources"] as? [String: String])
        #expect(sources["workspacesPerDay"] == "measured" && sources["gcsSeconds"] == "measured" && sources["gcsPricePerGB"] == "measured")
        #expect(sources["peerSeconds"] == "default" && sources["fallbackRate"] == "default")
        let inputs = try #require(json["inputs"] as? [String: Any])
        #expect(abs((inputs["gcsPricePerGB"] as? Double ?? 0) - 0.12) < 1e-9, "the VMs' price, measured")
        let fromStats = try #require(json["fromStats"] as? [String: Any])
        #expect(fromStats["url"] as? String == serve.url && fromStats["window"] as? String == "24h")
        let check = try #require(fromStats["deployment"] as? [String: Any])
        #expect(check["meetsCostTarget"] as? Bool == false)
        #expect(check["gcsShare"] as? Double == 1)
        #expect(abs((check["projectedMonthlyCostUSD"] as? Double ?? 0) - cost * 20 * 30) < 1e-9)

        // An option beats the measurement.
        let given = try Self.object(try await Fixtures.cli(arguments + ["--workspaces-per-day", "400", "--json"]).stdout)
        #expect((given["inputs"] as? [String: Any])?["workspacesPerDay"] as? Double == 400)
        #expect((given["sources"] as? [String: String])?["workspacesPerDay"] == "option")

        // Without the token: the master's one line, exit 1.
        let refused = try await Fixtures.cli(["plan", "--from-stats", serve.url])
        #expect(refused.status == 1)
        #expect(refused.stderr.hasPrefix("cachetiers: plan: \(serve.url) answered 401"), "\(refused.stderr)")
    }

    @Test func fromStatsSaysADeploymentWithinBudgetMeetsIt() async throws {
        let scratch = try TemporaryDirectory(prefix: "plan-stats-ok")
        defer { scratch.remove() }
        let serve = try ServeProcess(["--root", scratch.path.appending("root").string])
        defer { serve.stop() }
        // 9 from the peer in 60-68 s, one that fell back to GCS at the plan's own price.
        for index in 0..<9 {
            #expect(try await serve.send(.POST, "/v1/reports", body: Self.report("peer", seconds: 60 + Double(index), cost: nil).body).status == 201)
        }
        let gcsCost = 400.0 / 1024 * 0.01 + 51 * 0.0004 / 1000
        #expect(try await serve.send(.POST, "/v1/reports", body: Self.report("gcs", seconds: 40, cost: gcsCost, missed: "peer").body).status == 201)
        let run = try await Fixtures.cli(["plan", "--from-stats", serve.url, "--json"])
        #expect(run.status == 0, "\(run.stderr)")
        let object = try Self.object(run.stdout)
        let inputs = try #require(object["inputs"] as? [String: Any])
        #expect(abs((inputs["workspacesPerDay"] as? Double ?? 0) - 10.0 / 7) < 1e-9, "10 in the 7-day window")
        #expect(inputs["fallbackRate"] as? Double == 0.1)
        #expect(inputs["peerSeconds"] as? Double == 64)
        #expect(inputs["gcsSeconds"] as? Double == 40)
        #expect(abs((inputs["gcsPricePerGB"] as? Double ?? 0) - 0.01) < 1e-9)
        let check = try #require((object["fromStats"] as? [String: Any])?["deployment"] as? [String: Any])
        #expect(check["meetsCostTarget"] as? Bool == true)
        let findings = try #require(check["findings"] as? [String])
        #expect(findings == ["The deployment meets the cost target: 0.02 USD a month projected from the last 7.0 days, within the 10.00 USD budget."])
    }

    @Test(.timeLimit(.minutes(2))) func anUnreachableOrGarbageMasterIsOneLineAndExitOne() async throws {
        let dead = try await Fixtures.cli(["plan", "--from-stats", CommandLineEndToEndTests.deadURL])
        #expect(dead.status == 1)
        #expect(dead.stderr.hasPrefix("cachetiers: plan: cannot reach \(CommandLineEndToEndTests.deadURL): "), "\(dead.stderr)")
        #expect(dead.stderr.split(separator: "\n").count == 1 && dead.stdout.isEmpty)

        let router = Router()
        router.get("/html/v1/stats") { _, _ -> Response in
            Response(status: .ok, body: .init(byteBuffer: ByteBuffer(string: "<html><script>alert(1)</script>\u{1B}[2J")))
        }
        router.get("/absurd/v1/stats") { _, _ -> Response in
            // Decodes as stats, with a window of 0 s and 1e308 s restores.
            let stats = """
                {"window": 60, "restores": 1000000000, "restored": 1000000000, "failed": 0, "successRate": 1,
                 "durationSeconds": {"p50": 1, "p90": 1, "p99": 1}, "byTier": [], "fallbacks": 0, "bytes": 5,
                 "estimatedCostUSD": 0, "projectedMonthlyCostUSD": 0, "topKeys": [], "topMissedKeys": [], "targets": []}
                """
            return Response(status: .ok, body: .init(byteBuffer: ByteBuffer(string: stats)))
        }
        // Stats that decode but cannot be a master's (attack 15, F9): refused, not planned.
        let impossible = [
            ("fallbacks", #""window": 86400, "restores": 10, "restored": 8, "fallbacks": 100, "projectedMonthlyCostUSD": 1"#, "100 fallbacks of 8 restored"),
            ("negative", #""window": 86400, "restores": -5, "restored": 0, "fallbacks": 0, "projectedMonthlyCostUSD": 1"#, "a negative count of restores"),
            ("nowindow", #""window": 0, "restores": 5, "restored": 5, "fallbacks": 0, "projectedMonthlyCostUSD": 1"#, "a window of 0 s"),
            ("cost", #""window": 86400, "restores": 5, "restored": 5, "fallbacks": 0, "projectedMonthlyCostUSD": -3"#, "a projected monthly cost of -3.0 USD"),
        ]
        for (path, fields, _) in impossible {
            router.get("/\(path)/v1/stats") { _, _ -> Response in
                let stats = """
                    {\(fields), "failed": 0, "successRate": 1, "durationSeconds": {"p50": 1, "p90": 1, "p99": 1},
                     "byTier": [], "bytes": 5, "estimatedCostUSD": 0, "topKeys": [], "topMissedKeys": [], "targets": []}
                    """
                return Response(status: .ok, body: .init(byteBuffer: ByteBuffer(string: stats)))
            }
        }
        try await FakeHTTPServer.with(router) { url in
            for (path, _, problem) in impossible {
                let run = try await Fixtures.cli(["plan", "--from-stats", url + "/" + path])
                #expect(run.status == 1)
                #expect(run.stderr == "cachetiers: plan: the stats of \(url)/\(path) are not a cache master's (\(problem)); check the URL\n")
            }
            let garbage = try await Fixtures.cli(["plan", "--from-stats", url + "/html"])
            #expect(garbage.status == 1)
            #expect(garbage.stderr == "cachetiers: plan: \(url)/html answered something that is not fleet stats; is it a cache master?\n")
            let absurd = try await Fixtures.cli(["plan", "--from-stats", url + "/absurd", "--window", "1m"])
            #expect(absurd.status == 1)
            #expect(
                absurd.stderr
                    == "cachetiers: plan: the stats of \(url)/absurd give 1440000000000 for --workspaces-per-day, which expects a number from 0.01 to 10000000; give --workspaces-per-day to plan with another figure\n"
            )
            let overridden = try await Fixtures.cli(["plan", "--from-stats", url + "/absurd", "--window", "1m", "--workspaces-per-day", "100"])
            #expect(overridden.status == 0, "\(overridden.stderr)")
        }
    }

    /// Each answer says what to change, naming plan's own option (attack 15, F8).
    @Test(.timeLimit(.minutes(2))) func aMasterThatWillNotAnswerSaysWhatToChange() async throws {
        let router = Router()
        router.get("/locked/v1/stats") { _, _ -> Response in
            Response(status: .unauthorized, body: .init(byteBuffer: ByteBuffer(string: "this cache master needs Authorization: Bearer <token>\n")))
        }
        router.get("/moved/v1/stats") { _, _ -> Response in
            Response(status: .movedPermanently, headers: [.location: "http://elsewhere.internal/"])
        }
        router.get("/silent/v1/stats") { _, _ -> Response in Response(status: .notFound) }
        try await FakeHTTPServer.with(router) { url in
            let cases: [([String], String)] = [
                (["--from-stats", url + "/locked"], "cachetiers: plan: \(url)/locked answered 401: this cache master needs Authorization: Bearer <token>; give --token-file with the master's token"),
                (["--from-stats", url + "/moved"], "cachetiers: plan: \(url)/moved answered 301, a redirect to http://elsewhere.internal/; stats follows no redirect: give --from-stats the cache master's own URL"),
                (["--from-stats", url + "/silent"], "cachetiers: plan: \(url)/silent answered 404 with no explanation; is it the cache master's base URL?"),
                (["--from-stats", url + "/locked?x=1"], "cachetiers: plan: give --from-stats the cache master's base URL, without ?query or #fragment: \(url)/locked?x=1"),
            ]
            for (arguments, line) in cases {
                let run = try await Fixtures.cli(["plan"] + arguments)
                #expect(run.status == 1)
                #expect(run.stderr == line + "\n")
            }
            // A password in the URL is never printed back.
            let secret = url.replacingOccurrences(of: "http://", with: "http://ops:s3cret@") + "/silent"
            let run = try await Fixtures.cli(["plan", "--from-stats", secret])
            #expect(run.status == 1 && !run.stderr.contains("s3cret") && run.stderr.contains("ops@"), "\(run.stderr)")
        }
    }
}
