import AsyncHTTPClient
@testable import CacheTiers
import CacheTiersTesting
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import Synchronization
import SystemPackage
import Testing

/// What leaves the VM after `cachetiers restore`: the metrics file node_exporter's
/// textfile collector reads (a real node_exporter), and the report sent to the fleet (a
/// real HTTP server on loopback playing the master's `POST /v1/reports`), with the
/// spool that keeps what a down master could not take.
@Suite(.serialized) struct FleetMonitoringTests {
    typealias Project = CommandLineEndToEndTests.Project

    // MARK: The scene

    /// A project whose first tier is a peer at `peerURL` (the fleet's master: it
    /// misses, having no cache routes) and whose second, a folder, holds the key.
    struct Scene {
        let scratch: TemporaryDirectory
        var project: Project
        let folder: FilePath
        var spool: FilePath { scratch.path.appending("spool") }

        init(peerURL: String, report: [String: Any] = [:], metricsFile: String? = nil) async throws {
            scratch = try TemporaryDirectory(prefix: "fleet")
            folder = scratch.path.appending("folder")
            try Data("peer-token\n".utf8).write(to: URL(fileURLWithPath: scratch.path.appending("peer.token").string))
            try Data("report-token\n".utf8).write(to: URL(fileURLWithPath: scratch.path.appending("report.token").string))
            project = try Project(in: scratch.path, tiers: [])
            try configure(peerURL: peerURL, report: report, metricsFile: metricsFile)
            let tree = try await Fixtures.makeCorpus(in: scratch.path.appending("corpus"), files: 50, seed: 61)
            let key = try await project.key()
            let file = scratch.path.appending("archive.tar.zst")
            let manifest = try await ArchivePacker().pack(tree, key: key, to: file, logger: PeerHarness.quietLogger)
            _ = try await DirectorySource(root: folder).publish(PackedArchive(file: file, manifest: manifest), logger: PeerHarness.quietLogger)
        }

        func configure(peerURL: String, report: [String: Any] = [:], metricsFile: String? = nil) throws {
            var monitoring: [String: Any] = [
                // A generous bound: a suite on two busy cores can take a second to answer (the
                // black-hole test sets its own).
                "report": ["tokenFile": "../report.token", "spoolDirectory": spool.string, "timeoutSeconds": 10].merging(report) { $1 }
            ]
            if let metricsFile { monitoring["metricsFile"] = metricsFile }
            try project.write([
                "key": ["prefix": "node-modules", "files": ["package-lock.json"]],
                "destination": "node_modules",
                "tiers": [
                    [
                        "kind": "peer", "name": "cache-master", "urls": [peerURL], "tokenFile": "../peer.token",
                        "connectTimeoutSeconds": 2, "maxAttempts": 1,
                    ],
                    ["kind": "directory", "name": "folder", "path": folder.string],
                ],
                "writeBack": ["enabled": false],
                "monitoring": monitoring,
            ])
        }

        var spooled: [String] {
            ((try? FileManager.default.contentsOfDirectory(atPath: spool.string)) ?? []).sorted()
        }

        func remove() { scratch.remove() }
    }

    /// A cache master's `POST /v1/reports` as the contract has it: 401 without the report
    /// token, 400 for a body that is no report, 201 when new, 200 for an id it holds, 2xx
    /// naming the report in `X-CacheTiers-Report-Id`, every answer with `Server:
    /// cachetiers/...`; or whatever status a test makes it answer, as a master would or
    /// (`asPortal`) as a captive portal would, with neither header.
    final class FleetMaster: Sendable {
        struct Received: Sendable {
            var id: String
            var body: [UInt8]
            var contentType: String?
        }

        private struct State {
            var received: [Received] = []
            var stored: Set<String> = []
            var forced: (HTTPResponse.Status, String)?
            var asPortal = false
        }

        private let state = Mutex(State())

        var received: [Received] { state.withLock { $0.received } }
        var stored: Set<String> { state.withLock { $0.stored } }

        func answer(_ status: HTTPResponse.Status?, _ body: String = "", asPortal: Bool = false) {
            state.withLock {
                $0.forced = status.map { ($0, body) }
                $0.asPortal = asPortal
            }
        }

        static let server = HTTPField.Name("Server")!
        static let reportId = HTTPField.Name("X-CacheTiers-Report-Id")!

        var router: Router<BasicRequestContext> {
            let router = Router()
            router.post("/v1/reports") { [self] request, _ -> Response in
                guard request.headers[.authorization] == "Bearer report-token" else {
                    return Response(status: .unauthorized, headers: [Self.server: "cachetiers/test"], body: .init(byteBuffer: ByteBuffer(string: "wrong token")))
                }
                let body = Array(buffer: try await request.body.collect(upTo: 256 << 10))
                let report = try? JSONDecoder().decode(RestoreReport.self, from: Data(body))
                if let (status, text, asPortal) = state.withLock({ state in state.forced.map { ($0.0, $0.1, state.asPortal) } }) {
                    var headers: HTTPFields = asPortal ? [:] : [Self.server: "cachetiers/test"]
                    if !asPortal, let report { headers[Self.reportId] = report.id.uuidString.lowercased() }
                    return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(string: text)))
                }
                guard let report else {
                    return Response(status: .badRequest, headers: [Self.server: "cachetiers/test"], body: .init(byteBuffer: ByteBuffer(string: "not a report")))
                }
                let id = report.id.uuidString.lowercased()
                let isNew = state.withLock { state in
                    state.received.append(Received(id: id, body: body, contentType: request.headers[.contentType]))
                    return state.stored.insert(id).inserted
                }
                return Response(status: isNew ? .created : .ok, headers: [Self.server: "cachetiers/test", Self.reportId: id])
            }
            return router
        }
    }

    func restore(_ scene: Scene, _ extra: [String] = []) async throws -> (status: Int32, report: RestoreReport?, stderr: String, seconds: Double) {
        let started = ContinuousClock.now
        let result = try await Fixtures.cli(["restore", "--config", scene.project.config.string, "--report", "-"] + extra)
        let report = try? JSONDecoder().decode(RestoreReport.self, from: Data(result.stdout.utf8))
        return (result.status, report, result.stderr, (ContinuousClock.now - started).inSeconds)
    }

    /// Lines of stderr that are warnings.
    func warnings(_ stderr: String) -> [Substring] {
        stderr.split(separator: "\n").filter { $0.hasPrefix("cachetiers: warning:") }
    }

    // MARK: Reports to the fleet

    @Test func theReportGoesToThePeerTiersMasterWithTheReportToken() async throws {
        let master = FleetMaster()
        try await FakeHTTPServer.with(master.router) { url in
            let scene = try await Scene(peerURL: url)
            defer { scene.remove() }
            let run = try await restore(scene)
            #expect(run.status == 0, "\(run.stderr)")
            let report = try #require(run.report)
            #expect(report.servedBy == "folder")
            #expect(master.received.map(\.id) == [report.id.uuidString.lowercased()], "sent once")
            #expect(master.received.first?.contentType == "application/json")
            let sent = try JSONDecoder().decode(RestoreReport.self, from: Data(master.received[0].body))
            #expect(sent.attempts.map(\.outcome) == report.attempts.map(\.outcome))
            #expect(sent.durationSeconds == report.durationSeconds)
            #expect(scene.spooled == [], "acknowledged: nothing left to send")
            #expect(warnings(run.stderr) == [], "\(run.stderr)")
        }
    }

    @Test func aDownMasterSpoolsTheReportAndTheNextRunDeliversItOnce() async throws {
        let master = FleetMaster()
        try await FakeHTTPServer.with(master.router) { url in
            // Nothing listens on the discard port: refused at once.
            let scene = try await Scene(peerURL: CommandLineEndToEndTests.deadURL)
            defer { scene.remove() }
            let down = try await restore(scene)
            #expect(down.status == 0, "the restore's outcome stands: \(down.stderr)")
            let first = try #require(down.report).id.uuidString.lowercased()
            #expect(scene.spooled == ["\(first).json"])
            #expect(warnings(down.stderr).count == 1, "one line: \(down.stderr)")
            #expect(down.stderr.contains("spooled"), "\(down.stderr)")

            try scene.configure(peerURL: url)
            let up = try await restore(scene)
            #expect(up.status == 0, "\(up.stderr)")
            let second = try #require(up.report).id.uuidString.lowercased()
            #expect(master.received.map(\.id) == [second, first], "this run's first, then the spooled one")
            #expect(scene.spooled == [])

            // A report the master stored but whose answer was lost is resent: counted once.
            let resent = master.received[1].body
            try Data(resent).write(to: URL(fileURLWithPath: scene.spool.appending("\(first).json").string))
            let again = try await restore(scene)
            #expect(again.status == 0)
            #expect(master.received.map(\.id).filter { $0 == first }.count == 2, "sent twice")
            #expect(master.stored.count == 3, "stored once by id: \(master.stored)")
            #expect(scene.spooled == [], "a duplicate is acknowledged too")
        }
    }

    @Test func aMasterThatNeverAnswersCostsTheBoundAndNotTheExitStatus() async throws {
        // Accepts connections (the kernel's backlog) and never reads or answers.
        let hole = try BlackHoleServer()
        let scene = try await Scene(peerURL: hole.url, report: ["timeoutSeconds": 1])
        defer { scene.remove() }
        // The peer tier itself must not wait on it either: its attempt times out quickly.
        var config = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: scene.project.config.string))) as! [String: Any]
        var tiers = config["tiers"] as! [[String: Any]]
        tiers[0]["timeoutSeconds"] = 1
        config["tiers"] = tiers
        try scene.project.write(config)

        let run = try await restore(scene)
        #expect(run.status == 0, "\(run.stderr)")
        #expect(run.report?.servedBy == "folder")
        #expect(run.seconds < 10, "a hang guard, not a timing claim: \(run.seconds) s")
        #expect(scene.spooled.count == 1, "unanswered: kept for the next run")
        #expect(run.stderr.contains("did not answer within"), "\(run.stderr)")
        withExtendedLifetime(hole) {}
    }

    @Test func aReportTheMasterRefusesIsDroppedAndOneThatItCannotTakeNowIsKept() async throws {
        let master = FleetMaster()
        try await FakeHTTPServer.with(master.router) { url in
            let scene = try await Scene(peerURL: url)
            defer { scene.remove() }
            master.answer(.badRequest, "durationSeconds: must be a finite number at least 0")
            let refused = try await restore(scene)
            #expect(refused.status == 0)
            #expect(scene.spooled == [], "a 400 will never be taken: not spooled")
            #expect(warnings(refused.stderr).count == 1, "\(refused.stderr)")
            #expect(refused.stderr.contains("400: durationSeconds: must be a finite number"), "the master's words: \(refused.stderr)")

            master.answer(.serviceUnavailable, "the report store is full")
            let unavailable = try await restore(scene)
            #expect(unavailable.status == 0)
            #expect(scene.spooled.count == 1, "a 503 is for later")

            try Data("not-the-report-token\n".utf8).write(to: URL(fileURLWithPath: scene.scratch.path.appending("report.token").string))
            master.answer(nil)
            let unauthorized = try await restore(scene)
            #expect(unauthorized.status == 0)
            #expect(unauthorized.stderr.contains("answered 401"), "\(unauthorized.stderr)")
            #expect(warnings(unauthorized.stderr).count == 2, "this report and the spooled one: \(unauthorized.stderr)")
            #expect(scene.spooled == [], "a 401 is final: the master will never take these")
        }
    }

    @Test func aCaptivePortalOrMiddleboxEmptiesNoSpool() async throws {
        let master = FleetMaster()
        try await FakeHTTPServer.with(master.router) { url in
            let scene = try await Scene(peerURL: url)
            defer { scene.remove() }
            master.answer(.serviceUnavailable)
            _ = try await restore(scene)
            #expect(scene.spooled.count == 1)

            for status in [HTTPResponse.Status.ok, .created, .badRequest, .forbidden] {
                master.answer(status, "<html>Sign in to the hotel Wi-Fi</html>", asPortal: true)
                let before = scene.spooled.count
                let run = try await restore(scene)
                #expect(run.status == 0)
                #expect(scene.spooled.count == before + 1, "\(status): this report and the earlier ones stay spooled")
                #expect(warnings(run.stderr).count == 1, "\(run.stderr)")
                #expect(run.stderr.contains("answered \(status.code)") && run.stderr.contains("did not come from a cache master"), "\(run.stderr)")
            }
            // The master is back: everything kept arrives.
            master.answer(nil)
            let delivered = try await restore(scene)
            #expect(warnings(delivered.stderr) == [], "\(delivered.stderr)")
            #expect(scene.spooled == [], "the real master takes them all")
            #expect(master.stored.count == 6)
        }
    }

    @Test func theSpoolIsBoundedAndIgnoresWhatIsNoReport() async throws {
        let scene = try await Scene(peerURL: CommandLineEndToEndTests.deadURL, report: ["maxSpooledReports": 3])
        defer { scene.remove() }
        try FileManager.default.createDirectory(atPath: scene.spool.string, withIntermediateDirectories: true)
        // Three older reports, a cut-short one, and a file that is none of the spool's.
        var old: [String] = []
        for age in 1...3 {
            let report = RestoreReport(
                finishedAt: Date(timeIntervalSinceNow: -Double(age) * 3600), key: try CacheKey("old"), outcome: .restored,
                servedBy: "folder", destination: "/d", durationSeconds: 1, bytesTransferred: 1, estimatedCostUSD: nil,
                attempts: [], writeBack: []
            )
            let id = report.id.uuidString.lowercased()
            old.append(id)
            let file = scene.spool.appending("\(id).json").string
            try JSONEncoder().encode(report).write(to: URL(fileURLWithPath: file))
            // Spooled by earlier runs: the older, the earlier.
            try FileManager.default.setAttributes([.modificationDate: report.finishedAt], ofItemAtPath: file)
        }
        let broken = UUID().uuidString.lowercased()
        try Data(#"{"id": "#.utf8).write(to: URL(fileURLWithPath: scene.spool.appending("\(broken).json").string))
        try Data("keep me".utf8).write(to: URL(fileURLWithPath: scene.spool.appending("notes.txt").string))
        // Half-written by a process killed before its rename, and by one still writing.
        let killed = "\(UUID().uuidString.lowercased()).json.tmp-\(try Fixtures.processIDOfAFinishedProcess())"
        let writing = "\(UUID().uuidString.lowercased()).json.tmp-\(ProcessInfo.processInfo.processIdentifier)"
        for name in [killed, writing] {
            try Data(#"{"id":"#.utf8).write(to: URL(fileURLWithPath: scene.spool.appending(name).string))
        }

        let run = try await restore(scene)
        #expect(run.status == 0)
        let current = try #require(run.report).id.uuidString.lowercased()
        #expect(
            scene.spooled == ["\(current).json", "\(old[0]).json", "\(old[1]).json", "notes.txt", writing].sorted(),
            "the newest three, the broken one and the dead writer's removed, the stranger and a live writer's left alone"
        )
        #expect(run.stderr.contains("holds at most 3 reports; dropped the 1 oldest"), "\(run.stderr)")
    }

    @Test func anUnusableSpoolIsOneWarningAndTheReportIsStillSent() async throws {
        let master = FleetMaster()
        try await FakeHTTPServer.with(master.router) { url in
            let scene = try await Scene(peerURL: url)
            defer { scene.remove() }
            try Data("a file where the folder should be".utf8).write(to: URL(fileURLWithPath: scene.spool.string))
            let run = try await restore(scene)
            #expect(run.status == 0)
            #expect(master.received.count == 1, "sent without a spool")
            #expect(warnings(run.stderr).count == 1, "\(run.stderr)")
            #expect(run.stderr.contains("cannot spool reports: cannot write \(scene.spool): it is not a folder"), "\(run.stderr)")
        }
    }

    // MARK: The real cache master

    @Test func aRealMasterCountsEveryRestoreOnceThroughADowntime() async throws {
        let scene = try await Scene(peerURL: CommandLineEndToEndTests.deadURL)
        defer { scene.remove() }
        let root = scene.scratch.path.appending("root").string
        let tokens = ["--token-file", scene.scratch.path.appending("peer.token").string,
                      "--report-token-file", scene.scratch.path.appending("report.token").string]
        func serve<T>(_ body: (LoopbackDaemon) async throws -> T) async throws -> T {
            try await LoopbackDaemon.with(Fixtures.cliPath, probe: "/healthz", { port in
                ["serve", "--root", root, "--port", "\(port)"] + tokens
            }, body)
        }
        func restores(_ master: LoopbackDaemon) async throws -> Int? {
            let stats = try JSONSerialization.jsonObject(with: Data(try await master.get("/v1/stats?window=1h", token: "peer-token").utf8))
            return (stats as? [String: Any])?["restores"] as? Int
        }

        try await serve { master in
            try scene.configure(peerURL: master.url)
            let run = try await restore(scene)
            #expect(run.status == 0, "\(run.stderr)")
            #expect(warnings(run.stderr) == [], "the report token may report: \(run.stderr)")
            #expect(try await restores(master) == 1)
            let fleet = try await master.samples(token: "peer-token")
            #expect(fleet[#"cachetiers_fleet_restores_total{outcome="restored",served_by="folder"}"#] == 1, "\(fleet)")
        }
        // The master is down for one boot: that report waits in the spool.
        let down = try await restore(scene)
        #expect(down.status == 0)
        #expect(scene.spooled.count == 1)
        let resend = try #require(down.report)
        try await serve { master in
            try scene.configure(peerURL: master.url)
            let up = try await restore(scene)
            #expect(up.status == 0, "\(up.stderr)")
            #expect(scene.spooled == [])
            #expect(try await restores(master) == 3, "the spooled report arrived, the database kept the first")
            // The same report once more (an answer lost on the way): stored once.
            try JSONEncoder().encode(resend).write(
                to: URL(fileURLWithPath: scene.spool.appending("\(resend.id.uuidString.lowercased()).json").string)
            )
            let again = try await restore(scene)
            #expect(again.status == 0)
            #expect(scene.spooled == [])
            #expect(try await restores(master) == 4, "four restores, five reports received")
        }
    }

    // MARK: The metrics file, read by a real node_exporter

    @Test(.needsNodeExporter) func nodeExporterReadsTheRestoreGaugesAndTheLastSuccessSurvivesAFailure() async throws {
        let scene = try await Scene(peerURL: CommandLineEndToEndTests.deadURL, report: ["enabled": false])
        defer { scene.remove() }
        let textfiles = try scene.scratch.makeDirectory("textfiles")
        let metricsFile = textfiles.appending("cachetiers.prom")
        // What a run killed before its rename left behind.
        let abandoned = textfiles.appending("cachetiers.prom.tmp-\(try Fixtures.processIDOfAFinishedProcess())")
        try Data("cachetiers_restore_last_bytes 1".utf8).write(to: URL(fileURLWithPath: abandoned.string))
        try await NodeExporter.with(textfileDirectory: textfiles) { exporter in
            let restored = try await restore(scene, ["--metrics-file", metricsFile.string])
            #expect(restored.status == 0, "\(restored.stderr)")
            let report = try #require(restored.report)
            let first = try await exporter.samples()
            #expect(first["node_textfile_scrape_error"] == 0, "node_exporter read the file without complaint")
            #expect(first[#"cachetiers_restore_last_outcome{outcome="restored"}"#] == 1)
            #expect(first[#"cachetiers_restore_last_outcome{outcome="failed"}"#] == 0)
            #expect(first[#"cachetiers_restore_last_served_by{tier="folder"}"#] == 1)
            #expect(first[#"cachetiers_restore_last_served_by{tier="cache-master"}"#] == 0)
            #expect(first["cachetiers_restore_last_bytes"] == Double(report.bytesTransferred))
            #expect(first["cachetiers_restore_last_estimated_cost_usd"] == 0)
            #expect(first["cachetiers_restore_last_attempts"] == 2)
            #expect(first["cachetiers_restore_last_duration_seconds"] == report.durationSeconds)
            let success = try #require(first["cachetiers_restore_last_success_timestamp_seconds"])
            #expect(abs(success - report.finishedAt.timeIntervalSince1970) < 0.001)
            #expect(first["cachetiers_restore_last_run_timestamp_seconds"] == success)

            // The folder loses the archive: every tier misses, and the file says so.
            try FileManager.default.removeItem(atPath: scene.folder.string)
            try FileManager.default.createDirectory(atPath: scene.folder.string, withIntermediateDirectories: true)
            let failed = try await restore(scene, ["--metrics-file", metricsFile.string])
            #expect(failed.status == 1)
            let second = try await exporter.samples()
            #expect(second["node_textfile_scrape_error"] == 0)
            #expect(second[#"cachetiers_restore_last_outcome{outcome="failed"}"#] == 1)
            #expect(second[#"cachetiers_restore_last_outcome{outcome="restored"}"#] == 0)
            #expect(second[#"cachetiers_restore_last_served_by{tier="folder"}"#] == 0, "every known series, at 0")
            #expect(second["cachetiers_restore_last_bytes"] == 0)
            #expect(second["cachetiers_restore_last_success_timestamp_seconds"] == success, "kept from the last success")
            #expect((second["cachetiers_restore_last_run_timestamp_seconds"] ?? 0) > success)
        }
        let text = try String(contentsOfFile: metricsFile.string, encoding: .utf8)
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            #expect(line.split(separator: " ").count == 2, "no sample timestamp: \(line)")
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: textfiles.string) == ["cachetiers.prom"], "no temporary file left, a killed run's included")
    }

    @Test func labelValuesAreEscapedAndEverySeriesIsThereWhenNothingApplies() throws {
        let textfile = RestoreTextfile(path: "/unused", tiers: [#"odd"name\"#, "plain"])
        let report = RestoreReport(
            key: try CacheKey("k"), outcome: .failed, servedBy: nil, destination: "/d", durationSeconds: 2, bytesTransferred: 0,
            estimatedCostUSD: nil, attempts: [AttemptRecord(tier: "plain", attempt: 0, outcome: .skipped, durationSeconds: 0, bytes: 0, error: "open")],
            writeBack: []
        )
        let text = textfile.render(report, previousSuccess: 1234.5)
        #expect(text.contains(#"cachetiers_restore_last_served_by{tier="odd\"name\\"} 0"#), "\(text)")
        #expect(text.contains(#"cachetiers_restore_last_served_by{tier="plain"} 0"#))
        #expect(text.contains("cachetiers_restore_last_success_timestamp_seconds 1234.5\n"))
        #expect(text.contains("cachetiers_restore_last_attempts 0\n"), "a skipped tier makes no attempt")
        #expect(text.contains("cachetiers_restore_last_estimated_cost_usd 0"))
        #expect(text.split(separator: "\n").filter { $0.hasPrefix("# TYPE") }.count == 8, "eight gauges")
    }

    @Test func aMetricsFileThatCannotBeWrittenIsOneWarningAndTheExitStatusStands() async throws {
        let scene = try await Scene(peerURL: CommandLineEndToEndTests.deadURL, report: ["enabled": false])
        defer { scene.remove() }
        let run = try await restore(scene, ["--metrics-file", scene.scratch.path.appending("missing/cachetiers.prom").string])
        #expect(run.status == 0, "\(run.stderr)")
        #expect(run.report?.servedBy == "folder")
        #expect(warnings(run.stderr).count == 1, "\(run.stderr)")
        #expect(run.stderr.contains("metrics file not written: cannot write"), "\(run.stderr)")
    }
}

/// A server process on a free loopback port, answering at `url` once it is up.
struct LoopbackDaemon {
    let url: String

    /// Starts `arguments(port)` (a free port picked by binding it first), waits until a
    /// GET of `probe` answers, runs `body`, and stops the process.
    static func with<T>(
        _ executable: String,
        probe: String,
        _ arguments: (_ port: Int) -> [String],
        _ body: (LoopbackDaemon) async throws -> T
    ) async throws -> T {
        guard FileManager.default.isExecutableFile(atPath: executable) else { throw FixtureError("\(executable) is missing") }
        // A port that was free a moment ago: bound by this process, then released for the server.
        let port = try BlackHoleServer().port
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments(port)
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        defer {
            process.terminate()
            process.waitUntilExit()
        }
        let daemon = LoopbackDaemon(url: "http://127.0.0.1:\(port)")
        var ready = false
        for _ in 0..<400 where process.isRunning {
            if (try? await daemon.get(probe)) != nil {
                ready = true
                break
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        guard ready else { throw FixtureError("\(executable) did not answer on port \(port)") }
        return try await body(daemon)
    }

    func get(_ path: String, token: String? = nil) async throws -> String {
        var request = HTTPClientRequest(url: url + path)
        if let token { request.headers.add(name: "Authorization", value: "Bearer \(token)") }
        let response = try await HTTPClient.shared.execute(request, timeout: .seconds(10))
        let body = String(buffer: try await response.body.collect(upTo: 16 << 20))
        guard response.status == .ok else { throw FixtureError("GET \(path) answered \(response.status): \(body)") }
        return body
    }

    /// Every sample of a Prometheus text exposition at `path`, by series (name and labels, as exposed).
    func samples(_ path: String = "/metrics", token: String? = nil) async throws -> [String: Double] {
        var samples: [String: Double] = [:]
        for line in try await get(path, token: token).split(separator: "\n") where !line.hasPrefix("#") {
            guard let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...]) else { continue }
            samples[String(line[..<space])] = value
        }
        return samples
    }
}

/// Debian's node_exporter with only the textfile collector.
enum NodeExporter {
    static let binary = "/usr/bin/prometheus-node-exporter"

    static func with<T>(textfileDirectory: FilePath, _ body: (LoopbackDaemon) async throws -> T) async throws -> T {
        guard FileManager.default.isExecutableFile(atPath: binary) else {
            throw FixtureError("\(binary) is missing: apt-get install prometheus-node-exporter (.ci/setup does)")
        }
        return try await LoopbackDaemon.with(binary, probe: "/metrics", { port in
            [
                "--collector.disable-defaults", "--collector.textfile",
                "--collector.textfile.directory=\(textfileDirectory.string)", "--web.listen-address=127.0.0.1:\(port)",
            ]
        }, body)
    }
}

extension Trait where Self == ConditionTrait {
    /// Runs the test when node_exporter is installed, and always in CI (where a missing
    /// one fails the test, not skips it).
    static var needsNodeExporter: Self {
        .enabled(
            if: FileManager.default.isExecutableFile(atPath: NodeExporter.binary) || GCSHarness.isCI,
            "SKIPPED: prometheus-node-exporter is not installed (apt-get install prometheus-node-exporter); CI installs it and runs this"
        )
    }
}
