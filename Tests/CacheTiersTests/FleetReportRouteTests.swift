import AsyncHTTPClient
import CacheTiers
import CacheTiersServer
import CacheTiersTesting
import Foundation
import NIOCore
import NIOHTTP1
import SystemPackage
import Testing

/// `POST /v1/reports`, `GET /v1/stats` and the fleet's `/metrics`, request by request,
/// on an in-process cache master.
@Suite struct FleetReportRouteTests {
    func post(_ peer: PeerHarness, _ body: [UInt8], token: String? = nil) async throws -> (status: Int, text: String) {
        let answer = try await peer.send(
            .POST, "/v1/reports",
            headers: [("Content-Type", "application/json")] + (token.map { [("Authorization", "Bearer \($0)")] } ?? []),
            body: body
        )
        return (answer.status, String(decoding: answer.body, as: UTF8.self))
    }

    func stats(_ peer: PeerHarness, window: String = "24h", token: String? = nil) async throws -> FleetStats {
        let answer = try await peer.send(.GET, "/v1/stats?window=\(window)", headers: token.map { [("Authorization", "Bearer \($0)")] } ?? [])
        guard answer.status == 200 else { throw FixtureError("stats answered \(answer.status): \(String(decoding: answer.body, as: UTF8.self))") }
        return try JSONDecoder().decode(FleetStats.self, from: Data(answer.body))
    }

    /// Why `server` refused to start, or nil when it started (it is stopped again).
    func startFailure(_ server: CacheMasterServer) async -> String? {
        do {
            _ = try await server.start()
            await server.stop()
            return nil
        } catch {
            return "\(error)"
        }
    }

    func metrics(_ peer: PeerHarness) async throws -> [String] {
        let answer = try await peer.send(.GET, "/metrics")
        return String(decoding: answer.body, as: UTF8.self).split(separator: "\n").map(String.init).filter { $0.hasPrefix("cachetiers_fleet_") }
    }

    @Test func aReportIsStoredOnceAndAResendIsCountedOnce() async throws {
        try await PeerHarness.with { peer in
            let report = FleetReport()
            let first = try await post(peer, report.body)
            #expect(first.status == 201, "\(first.text)")
            let again = try await post(peer, report.body)
            #expect(again.status == 200, "a resend is acknowledged as already stored: \(again.text)")
            var upper = report
            upper.id = report.id.uppercased()
            #expect(try await post(peer, upper.body).status == 200, "the id is a UUID, whatever its case")

            let numbers = try await stats(peer)
            #expect(numbers.restores == 1 && numbers.restored == 1)
            let lines = try await metrics(peer)
            #expect(lines.contains(#"cachetiers_fleet_restores_total{outcome="restored",served_by="cache-master"} 1"#), "\(lines)")
            #expect(lines.contains("cachetiers_fleet_reports_stored 1.0"))
        }
    }

    /// Reports posted at once are committed together: a resend racing its first send,
    /// even in the same transaction, is still stored once and answered 201 once.
    @Test func aReportSentManyTimesAtOnceIsStoredOnce() async throws {
        try await PeerHarness.with { peer in
            let report = FleetReport()
            let others = (0..<10).map { _ in FleetReport() }
            let statuses = try await withThrowingTaskGroup(of: (Bool, Int).self) { group in
                for _ in 0..<20 { group.addTask { (true, try await post(peer, report.body).status) } }
                for other in others { group.addTask { (false, try await post(peer, other.body).status) } }
                return try await group.reduce(into: [(Bool, Int)]()) { $0.append($1) }
            }
            #expect(statuses.filter { $0.0 }.map(\.1).sorted() == Array(repeating: 200, count: 19) + [201])
            #expect(statuses.filter { !$0.0 }.allSatisfy { $0.1 == 201 })
            #expect(try await stats(peer).restores == 11)
            #expect(try await metrics(peer).contains("cachetiers_fleet_reports_stored 11.0"))
        }
    }

    @Test func everySchemaProblemIsA400NamingTheFieldAndNothingIsStored() async throws {
        func mutated(_ change: (inout [String: Any]) -> Void) -> [UInt8] {
            var json = FleetReport().json
            change(&json)
            return FleetReport.encode(json)
        }
        func attempt(_ change: @escaping (inout [String: Any]) -> Void) -> (inout [String: Any]) -> Void {
            { json in
                var attempts = json["attempts"] as! [[String: Any]]
                change(&attempts[0])
                json["attempts"] = attempts
            }
        }
        let cases: [(body: [UInt8], answer: String)] = [
            (mutated { $0["id"] = nil }, "id: required"),
            (mutated { $0["id"] = "not-a-uuid" }, "id: expected a UUID"),
            (mutated { $0["id"] = 7 }, "id: expected a string"),
            (mutated { $0["finishedAt"] = "yesterday" }, "finishedAt: expected an RFC 3339 UTC time"),
            (mutated { $0["finishedAt"] = "2026-12-01T18:40:12+02:00" }, "finishedAt: expected an RFC 3339 UTC time"),
            (mutated { $0["key"] = "../../etc/passwd" }, "key: not a cache key"),
            (mutated { $0["outcome"] = "partly" }, "outcome: expected one of restored, failed"),
            (mutated { $0["servedBy"] = NSNull() }, "servedBy: required when outcome is restored"),
            (mutated { $0["outcome"] = "failed" }, "servedBy: must be null when outcome is failed"),
            (mutated { $0["durationSeconds"] = -1 }, "durationSeconds: must be a number from 0 to 2592000"),
            (mutated { $0["durationSeconds"] = 1e300 }, "durationSeconds: must be a number from 0 to 2592000"),
            (mutated { $0["durationSeconds"] = "12" }, "durationSeconds: expected a number"),
            (mutated { $0["bytesTransferred"] = 1.5 }, "bytesTransferred: must be a whole number from 0 to 1125899906842624"),
            (mutated { $0["bytesTransferred"] = 1e300 }, "bytesTransferred: must be a whole number from 0 to 1125899906842624"),
            (mutated { $0["bytesTransferred"] = -5 }, "bytesTransferred: must be a whole number from 0 to"),
            (mutated { $0["estimatedCostUSD"] = 1e9 }, "estimatedCostUSD: must be a number from 0 to 1000000"),
            (mutated { $0["destination"] = String(repeating: "d", count: 9000) }, "destination: at most 8192 bytes"),
            (mutated { $0["timings"] = ["promotionSeconds": -0.5] }, "timings.promotionSeconds: must be a number from 0"),
            (mutated { $0["archive"] = ["compressedBytes": 1] }, "archive.uncompressedBytes: required"),
            (mutated { $0["attempts"] = nil }, "attempts: required"),
            (mutated { $0["attempts"] = "all of them" }, "attempts: expected an array"),
            (mutated { $0["attempts"] = Array(repeating: (FleetReport().json["attempts"] as! [Any])[0], count: 300) }, "attempts: at most 256 attempts"),
            (mutated(attempt { $0["tier"] = String(repeating: "t", count: 100_000) }), "attempts[0].tier: a tier name is 1 to 64 printable Unicode scalars"),
            (mutated(attempt { $0["tier"] = "\u{1B}[31mred" }), "attempts[0].tier: a tier name is 1 to 64 printable Unicode scalars"),
            (mutated(attempt { $0["tier"] = "" }), "attempts[0].tier: a tier name is 1 to 64 printable Unicode scalars"),
            (mutated(attempt { $0["outcome"] = "won" }), "attempts[0].outcome: expected one of hit, miss, timeout"),
            // Names that display as something else: a bidi override, a zero-width space,
            // a line separator, blank or padded names (a row that looks empty or aligned).
            (mutated(attempt { $0["tier"] = "gcs\u{202E}retsam" }), "attempts[0].tier: a tier name is 1 to 64 printable Unicode scalars"),
            (mutated(attempt { $0["tier"] = "c\u{200B}m" }), "attempts[0].tier: a tier name is 1 to 64 printable Unicode scalars"),
            (mutated(attempt { $0["tier"] = "gcs\u{2028}fake" }), "attempts[0].tier: a tier name is 1 to 64 printable Unicode scalars"),
            (mutated(attempt { $0["tier"] = " " }), "attempts[0].tier: a tier name is 1 to 64 printable Unicode scalars"),
            (mutated { $0["servedBy"] = "cache-master\u{2029}" }, "servedBy: a tier name is 1 to 64 printable Unicode scalars"),
            (mutated { $0["servedBy"] = " cache-master" }, "servedBy: a tier name is 1 to 64 printable Unicode scalars"),
            (mutated { $0["writeBack"] = [["tier": "gcs ", "outcome": "published"]] }, "writeBack[0].tier: a tier name is 1 to 64"),
            (mutated { $0["host"] = "vm-17\u{202E}" }, "host: without control or format characters"),
            // One character carrying 2,040 combining marks: short in characters, 8 KiB in
            // bytes, and seconds of normalization in every comparison (attack 15, F2).
            (mutated { $0["servedBy"] = "A" + String(repeating: "\u{336}\u{301}", count: 2040) }, "servedBy: a tier name is 1 to 64 printable Unicode scalars"),
            (mutated(attempt { $0["tier"] = "A" + String(repeating: "\u{336}\u{301}", count: 40) }), "attempts[0].tier: a tier name is 1 to 64 printable Unicode scalars"),
            (mutated { $0["host"] = "A" + String(repeating: "\u{336}\u{301}", count: 2040) }, "host: a host name is at most 255 bytes"),
            (mutated { $0["host"] = "  " }, "host: without control or format characters"),
            // The labels of failed restores and of the tiers beyond the caps.
            (mutated { $0["servedBy"] = "none"; $0["attempts"] = [["tier": "none", "attempt": 1, "outcome": "hit", "durationSeconds": 1.0, "bytes": 1]] }, "servedBy: none is reserved"),
            (mutated(attempt { $0["tier"] = "other" }), "attempts[0].tier: other is reserved"),
            // The serving tier is one whose attempt hit.
            (mutated { $0["servedBy"] = "ghost" }, "servedBy: must be the tier of an attempt whose outcome is hit"),
            (mutated { $0["attempts"] = [] as [Any] }, "servedBy: must be the tier of an attempt whose outcome is hit"),
            (mutated(attempt { $0["outcome"] = "miss" }), "servedBy: must be the tier of an attempt whose outcome is hit"),
            // Instants that do not exist are refused, not rolled over.
            (mutated { $0["finishedAt"] = "2026-02-30T10:00:00Z" }, "finishedAt: expected an RFC 3339 UTC time"),
            (mutated { $0["finishedAt"] = "2026-11-31T10:00:00.000Z" }, "finishedAt: expected an RFC 3339 UTC time"),
            (mutated { $0["finishedAt"] = "2026-12-01T25:00:00Z" }, "finishedAt: expected an RFC 3339 UTC time"),
            (mutated { $0["finishedAt"] = "2026-12-01T10:61:00Z" }, "finishedAt: expected an RFC 3339 UTC time"),
            (mutated { $0["finishedAt"] = "2026-12-01T23:59:60Z" }, "finishedAt: expected an RFC 3339 UTC time"),
            (mutated { $0["finishedAt"] = "2026-11-1T10:00:00Z" }, "finishedAt: expected an RFC 3339 UTC time"),
            (mutated { $0["finishedAt"] = "2026-12-01T10:00:00.Z" }, "finishedAt: expected an RFC 3339 UTC time"),
            (mutated(attempt { $0["timings"] = ["connectSeconds": "fast"] }), "attempts[0].timings.connectSeconds: expected a number"),
            (mutated { $0["writeBack"] = [["tier": "gcs", "outcome": "maybe"]] }, "writeBack[0].outcome: expected one of published"),
            (Array("[1, 2]".utf8), "(top level): expected an object"),
            (Array("{\"id\": ".utf8), "the body is not JSON"),
            ([0xFF, 0xFE, 0x7B, 0x7D], "the body is not JSON"),
            ([], "the body is not JSON"),
        ]
        try await PeerHarness.with { peer in
            for (body, answer) in cases {
                let refused = try await post(peer, body)
                #expect(refused.status == 400, "\(answer): \(refused.status)")
                #expect(refused.text.hasPrefix("not a usable report: \(answer)"), "\(refused.text)")
                #expect(refused.text.hasSuffix("\n") && refused.text.filter(\.isNewline).count == 1, "one line: \(refused.text)")
            }
            #expect(try await stats(peer, window: "90d").restores == 0, "nothing stored on a 400")
            let lines = try await metrics(peer)
            #expect(lines.contains(#"cachetiers_fleet_reports_rejected_total{reason="malformed"} \#(cases.count)"#), "\(lines)")
            #expect(lines.contains("cachetiers_fleet_reports_stored 0.0"))
        }
    }

    @Test func anOversizedReportIs413WithoutTheServerReadingItAndNothingIsStored() async throws {
        try await PeerHarness.with { peer in
            // Valid JSON, padded past 256 KiB with a field the schema does not know.
            var json = FleetReport().json
            json["padding"] = String(repeating: "x", count: 300 * 1024)
            let declared = try await post(peer, FleetReport.encode(json))
            #expect(declared.status == 413, "\(declared.text)")
            #expect(declared.text == "a report is at most 256 KiB of JSON\n")

            // Chunked, with no length to refuse up front: refused once it passes the cap.
            var request = HTTPClientRequest(url: peer.url + "/v1/reports")
            request.method = .POST
            let chunk = ByteBuffer(repeating: UInt8(ascii: " "), count: 64 * 1024)
            request.body = .stream(AsyncStream { continuation in
                for _ in 0..<16 { continuation.yield(chunk) }
                continuation.finish()
            }, length: .unknown)
            let streamed = try await HTTPClient.shared.execute(request, timeout: .seconds(60))
            #expect(streamed.status.code == 413)

            // A 1 GiB body declared and never sent: the answer comes at once, from the header.
            let connection = try RawConnection(port: peer.port)
            connection.send("POST /v1/reports HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1073741824\r\n\r\n{\"id\":")
            let answer = try await Fixtures.offThePool { connection.read(within: 60) }
            guard case .data(let text) = answer else { Issue.record("no answer to a 1 GiB report: \(answer)"); return }
            #expect(text.hasPrefix("HTTP/1.1 413"), "\(text)")

            #expect(try await stats(peer, window: "90d").restores == 0)
            #expect(try await metrics(peer).contains(#"cachetiers_fleet_reports_rejected_total{reason="too_large"} 3"#))
        }
    }

    @Test func aReportOnlyTokenMayOnlyPostReports() async throws {
        try await PeerHarness.with(token: "admin-token", reportToken: "vm-token") { peer in
            #expect(try await post(peer, FleetReport().body, token: "vm-token").status == 201)
            #expect(try await post(peer, FleetReport().body, token: "admin-token").status == 201, "the full token may report too")
            #expect(try await post(peer, FleetReport().body).status == 401)
            #expect(try await post(peer, FleetReport().body, token: "vm-token2").status == 401)

            let vm = [("Authorization", "Bearer vm-token")]
            for (method, path) in [(HTTPMethod.GET, "/v1/stats"), (.GET, "/metrics"), (.GET, "/v1/caches/some-key"), (.HEAD, "/v1/caches/some-key"), (.GET, "/v1/caches/some-key/manifest"), (.PUT, "/v1/caches/some-key")] {
                let answer = try await peer.send(method, path, headers: vm, body: method == .PUT ? [1, 2, 3] : nil)
                #expect(answer.status == 403, "\(method) \(path) with the report-only token: \(answer.status)")
                if method != .HEAD {
                    #expect(String(decoding: answer.body, as: UTF8.self) == "this bearer token may only send reports (POST /v1/reports)\n")
                }
            }
            #expect(try await peer.send(.GET, "/healthz").status == 200)
            #expect(try await stats(peer, token: "admin-token").restores == 2, "refused reports are not stored")
            #expect(FileManager.default.fileExists(atPath: peer.scratch.path.appending("root/some-key.tar.zst").string) == false)
        }
    }

    @Test func metricsCountEachStoredReportWithTheTierLabelsCappedAt32() async throws {
        try await PeerHarness.with { peer in
            let before = try await metrics(peer)
            #expect(before.contains(#"cachetiers_fleet_restores_total{outcome="failed",served_by="none"} 0"#), "\(before)")
            #expect(before.contains("cachetiers_fleet_last_report_age_seconds -1.0"), "\(before)")

            #expect(try await post(peer, FleetReport(durationSeconds: 50, bytes: 1000).body).status == 201)
            let fallback = FleetReport(servedBy: "gcs", durationSeconds: 85, bytes: 2000, costUSD: 0.25, attempts: [("cache-master", "miss"), ("gcs", "hit")])
            #expect(try await post(peer, fallback.body).status == 201)
            #expect(try await post(peer, fallback.body).status == 200, "a duplicate is not counted")
            let failed = FleetReport(servedBy: nil, durationSeconds: 130, bytes: 0, attempts: [("cache-master", "timeout"), ("gcs", "error")])
            #expect(try await post(peer, failed.body).status == 201)
            // 40 more tier names: 30 fill the 32 labels, the other 10 are `other`.
            for index in 0..<40 {
                let name = String(format: "tier-%02d", index)
                #expect(try await post(peer, FleetReport(servedBy: name, durationSeconds: 700, attempts: [(name, "hit")]).body).status == 201)
            }

            let lines = try await metrics(peer)
            func value(_ series: String) -> String? {
                lines.first { $0.hasPrefix(series + " ") }.map { String($0.dropFirst(series.count + 1)) }
            }
            #expect(value(#"cachetiers_fleet_restores_total{outcome="restored",served_by="cache-master"}"#) == "1")
            #expect(value(#"cachetiers_fleet_restores_total{outcome="restored",served_by="gcs"}"#) == "1")
            #expect(value(#"cachetiers_fleet_restores_total{outcome="failed",served_by="none"}"#) == "1")
            #expect(value(#"cachetiers_fleet_restores_total{outcome="restored",served_by="other"}"#) == "10")
            #expect(value(#"cachetiers_fleet_attempts_total{tier="cache-master",outcome="miss"}"#) == "1")
            #expect(value(#"cachetiers_fleet_attempts_total{tier="gcs",outcome="error"}"#) == "1")
            #expect(value(#"cachetiers_fleet_attempts_total{tier="other",outcome="hit"}"#) == "10")
            #expect(value(#"cachetiers_fleet_bytes_total{tier="gcs"}"#) == "2000")
            #expect(value(#"cachetiers_fleet_estimated_cost_usd_total{tier="gcs"}"#) == "0.25")
            #expect(value("cachetiers_fleet_reports_stored") == "43.0")
            #expect(value("cachetiers_fleet_last_report_age_seconds").flatMap(Double.init).map { $0 >= 0 } == true)

            // The gcs restore took 85 s: above the 80 s bucket, inside the 90 s one.
            let buckets = lines.filter { $0.hasPrefix(#"cachetiers_fleet_restore_duration_seconds_bucket{served_by="gcs""#) }
            let bounds = buckets.compactMap { line in line.split(separator: "\"").dropFirst(3).first.map(String.init) }
            #expect(bounds == ["1.0", "5.0", "10.0", "20.0", "30.0", "45.0", "60.0", "80.0", "90.0", "120.0", "180.0", "300.0", "600.0", "+Inf"], "\(buckets)")
            #expect(buckets.first { $0.contains(#"le="80.0""#) }?.hasSuffix(" 0") == true, "\(buckets)")
            #expect(buckets.first { $0.contains(#"le="90.0""#) }?.hasSuffix(" 1") == true, "\(buckets)")

            let servedBy = Set(lines.filter { $0.hasPrefix("cachetiers_fleet_restores_total{") }.compactMap { line in
                line.range(of: #"served_by=""#).map { String(line[$0.upperBound...].prefix { $0 != "\"" }) }
            })
            #expect(servedBy.count == 34, "32 tier names, other and none: \(servedBy.sorted())")
        }
    }

    @Test func theWindowIsByFinishTimeAndAFutureFinishCountsAsItsArrival() async throws {
        try await PeerHarness.with { peer in
            let now = Date()
            for (finished, key) in [(now.addingTimeInterval(-2 * 86_400), "old-key"), (now.addingTimeInterval(-600), "recent-key"), (now.addingTimeInterval(365 * 86_400), "future-key")] {
                #expect(try await post(peer, FleetReport(finishedAt: finished, key: key).body).status == 201)
            }
            let day = try await stats(peer)
            #expect(day.window == 86_400)
            #expect(day.topKeys.map(\.key) == ["future-key", "recent-key"], "a clock ahead counts as now, not in every future window")
            let week = try await stats(peer, window: "7d")
            #expect(week.restores == 3)
            #expect(try await stats(peer, window: "5m").topKeys.map(\.key) == ["future-key"])
            for bad in ["0m", "91d", "24", "h", "1w", "-1h", "99999999999999999999d", "1.5h"] {
                let answer = try await peer.send(.GET, "/v1/stats?window=\(bad)")
                #expect(answer.status == 400, "window \(bad)")
                #expect(String(decoding: answer.body, as: UTF8.self) == "window: \(StatsWindow.problem)\n")
            }
        }
    }

    @Test func retentionAndTheRowCapDeleteTheOldestAtStart() async throws {
        let scratch = try TemporaryDirectory(prefix: "retention")
        defer { scratch.remove() }
        let root = scratch.path.appending("root")
        func server() -> CacheMasterServer {
            CacheMasterServer(
                configuration: .init(root: root, port: 0, reportRetention: .seconds(86_400), maxReports: 5),
                logger: PeerHarness.quietLogger
            )
        }
        let first = server()
        let url = try await first.start()
        let peer = PeerHarness(scratch: scratch, server: first, url: url)
        let now = Date()
        for index in 0..<10 {
            let report = FleetReport(finishedAt: now.addingTimeInterval(Double(index - 20) * 60), key: "key-\(index)")
            #expect(try await post(peer, report.body).status == 201)
        }
        #expect(try await post(peer, FleetReport(finishedAt: now.addingTimeInterval(-2 * 86_400), key: "expired").body).status == 201)
        await first.stop()

        let second = server()
        let restarted = PeerHarness(scratch: scratch, server: second, url: try await second.start())
        let kept = try await stats(restarted, window: "90d")
        await second.stop()
        #expect(kept.restores == 5)
        #expect(kept.topKeys.map(\.key) == ["key-5", "key-6", "key-7", "key-8", "key-9"], "the newest five are kept")
    }

    @Test func theDatabaseStaysUnderItsByteBoundByDroppingTheOldestReports() async throws {
        let scratch = try TemporaryDirectory(prefix: "byte-bound")
        defer { scratch.remove() }
        let root = scratch.path.appending("root")
        let server = CacheMasterServer(
            configuration: .init(root: root, port: 0, maxReportsDatabaseBytes: 1 << 20), logger: PeerHarness.quietLogger
        )
        let peer = PeerHarness(scratch: scratch, server: server, url: try await server.start())
        // Reports of about 200 KiB each (25 failed attempts with an 8,000-character error, then a hit): 30 of
        // them are 6 MB, six times the bound; the row cap (a million) never applies.
        let error = String(repeating: "e", count: 8000)
        for index in 0..<30 {
            var report = FleetReport(key: "key-\(index)").json
            report["attempts"] = (0..<25).map { attempt -> [String: Any] in
                ["tier": "cache-master", "attempt": attempt + 1, "outcome": "error", "durationSeconds": 1.0, "bytes": 0, "error": error]
            } + [["tier": "cache-master", "attempt": 26, "outcome": "hit", "durationSeconds": 1.0, "bytes": 1000]]
            #expect(try await post(peer, FleetReport.encode(report)).status == 201)
        }
        let kept = try await stats(peer, window: "1h")
        await server.stop()
        #expect(kept.restores >= 1 && kept.restores < 10, "\(kept.restores) reports of 200 KiB kept under a 1 MiB bound")
        #expect(kept.topKeys.map(\.key).contains("key-29"), "the newest is kept")
        #expect(!kept.topKeys.map(\.key).contains("key-0"), "the oldest went")
        let database = try FileManager.default.attributesOfItem(atPath: root.appending(".cachetiers/reports.sqlite").string)
        #expect((database[.size] as? Int ?? .max) < 2 << 20, "the file, checkpointed at close, stays near the bound")
    }

    @Test func aRestartedMasterExportsTheServingTiersSeriesAtZero() async throws {
        let scratch = try TemporaryDirectory(prefix: "late-series")
        defer { scratch.remove() }
        let root = scratch.path.appending("root")
        let first = CacheMasterServer(configuration: .init(root: root, port: 0), logger: PeerHarness.quietLogger)
        let peer = PeerHarness(scratch: scratch, server: first, url: try await first.start())
        for _ in 0..<2 {
            let gcs = FleetReport(finishedAt: Date().addingTimeInterval(-3600), servedBy: "gcs", attempts: [("gcs", "hit")])
            #expect(try await post(peer, gcs.body).status == 201)
        }
        // 32 tier names reported once each, after gcs: the slots go by volume, not recency.
        for index in 0..<32 {
            let name = "junk-\(index)"
            #expect(try await post(peer, FleetReport(servedBy: name, attempts: [(name, "hit")]).body).status == 201)
        }
        await first.stop()

        let second = CacheMasterServer(configuration: .init(root: root, port: 0), logger: PeerHarness.quietLogger)
        let restarted = PeerHarness(scratch: scratch, server: second, url: try await second.start())
        let lines = try await metrics(restarted)
        await second.stop()
        // Present before the next report, so rate() counts that report's increase.
        #expect(lines.contains(#"cachetiers_fleet_restores_total{outcome="restored",served_by="gcs"} 0"#), "\(lines)")
        #expect(lines.contains(#"cachetiers_fleet_restore_duration_seconds_count{served_by="gcs"} 0"#), "\(lines)")
        #expect(lines.contains(#"cachetiers_fleet_restore_duration_seconds_count{served_by="none"} 0"#), "\(lines)")
        #expect(lines.contains(#"cachetiers_fleet_bytes_total{tier="gcs"} 0"#), "\(lines)")
    }

    @Test func aCorruptReportDatabaseStopsTheStartWithOneLineNamingIt() async throws {
        let scratch = try TemporaryDirectory(prefix: "corrupt")
        defer { scratch.remove() }
        let root = try scratch.makeDirectory("root")
        let folder = try scratch.makeDirectory("root/.cachetiers")
        let database = folder.appending("reports.sqlite")
        try Data(repeating: 0x5A, count: 8192).write(to: URL(fileURLWithPath: database.string))
        let server = CacheMasterServer(configuration: .init(root: root, port: 0), logger: PeerHarness.quietLogger)
        if let text = await startFailure(server) {
            #expect(text.contains("the report database \(database) cannot be used"), "\(text)")
            #expect(text.contains("move it aside"), "\(text)")
            #expect(!text.contains("\n"))
        } else {
            Issue.record("a cache master started over a corrupt report database")
        }
        #expect(try Data(contentsOf: URL(fileURLWithPath: database.string)) == Data(repeating: 0x5A, count: 8192), "left as it was")
    }
}
