import CacheTiers
import CacheTiersTesting
import Foundation
import SystemPackage
import Testing

/// `cachetiers restore`, `key`, `publish --config` and `demo`, run as an operator runs
/// them at VM boot: the real binary, a config file, real tiers.
@Suite(.serialized) struct CommandLineEndToEndTests {
    /// A project folder with a lockfile and a config file listing `tiers`.
    struct Project {
        let folder: FilePath
        var config: FilePath { folder.appending("cachetiers.json") }
        var destination: FilePath { folder.appending("node_modules") }

        init(in scratch: FilePath, tiers: [[String: Any]], writeBack: [String: Any] = ["enabled": true, "wait": false]) throws {
            folder = scratch.appending("project")
            try FileManager.default.createDirectory(atPath: folder.string, withIntermediateDirectories: true)
            try Data(#"{"lockfileVersion":3,"packages":{"left-pad":"1.3.0"}}"#.utf8)
                .write(to: URL(fileURLWithPath: folder.appending("package-lock.json").string))
            try write([
                "key": ["prefix": "node-modules", "files": ["package-lock.json"], "platform": true, "salt": ""],
                "destination": "node_modules",
                "deadlineSeconds": 120,
                "tiers": tiers,
                "writeBack": writeBack,
                // Each test's own spool: a report one test could not deliver must not reach another's master.
                "monitoring": ["report": ["spoolDirectory": scratch.appending("report-spool").string]],
            ])
        }

        func write(_ json: [String: Any]) throws {
            try JSONSerialization.data(withJSONObject: json, options: [.prettyPrinted, .sortedKeys])
                .write(to: URL(fileURLWithPath: config.string))
        }

        func key() async throws -> CacheKey {
            let result = try await Fixtures.cli(["key", "--config", config.string])
            guard result.status == 0 else { throw FixtureError("cachetiers key: \(result.stderr)") }
            return try CacheKey(result.stdout.trimmingCharacters(in: .whitespacesAndNewlines))
        }

        /// Runs `cachetiers restore` and decodes the report it printed on stdout.
        func restore() async throws -> (status: Int32, report: RestoreReport?, stderr: String) {
            let result = try await Fixtures.cli(["restore", "--config", config.string, "--report", "-"])
            let report = try? JSONDecoder().decode(RestoreReport.self, from: Data(result.stdout.utf8))
            return (result.status, report, result.stderr)
        }
    }

    /// Nothing listens on the discard port: connections are refused at once.
    static let deadURL = "http://127.0.0.1:9"

    static func peerTier(_ url: String) -> [String: Any] {
        ["kind": "peer", "name": "cache-master", "urls": [url], "connectTimeoutSeconds": 2, "maxAttempts": 1]
    }

    static func gcsTier(_ endpoint: String, bucket: String = "cache-bucket") -> [String: Any] {
        [
            "kind": "gcs", "name": "gcs", "bucket": bucket, "prefix": "caches/", "endpoint": endpoint,
            "credentials": ["kind": "none"], "maxAttempts": 1, "parallelDownloads": 4,
        ]
    }

    static func installTier(_ command: [String], workingDirectory: String = ".", produces: String = "node_modules") -> [String: Any] {
        [
            "kind": "install", "name": "fresh-install", "command": command, "workingDirectory": workingDirectory,
            "produces": produces, "timeoutSeconds": 120, "environment": ["PIP_NO_INPUT": "1"],
        ]
    }

    @Test func aPeerHit() async throws {
        try await PeerHarness.with { peer in
            let project = try Project(in: peer.scratch.path, tiers: [Self.peerTier(peer.url)])
            let tree = try await Fixtures.makeCorpus(in: peer.scratch.path.appending("corpus"), files: 300, seed: 31)
            let manifest = try await peer.publish(tree, as: try await project.key())

            let (status, report, stderr) = try await project.restore()
            #expect(status == 0, "\(stderr)")
            #expect(report?.servedBy == "cache-master")
            #expect(report?.attempts.map(\.outcome) == [.hit])
            #expect(report?.bytesTransferred == manifest.archiveSize)
            #expect(report?.destination == project.destination.string)
            #expect(stderr.contains("cache-master: attempt 1 hit"), "every attempt is logged: \(stderr)")
            #expect(try TreeSnapshot(of: project.destination).differences(from: TreeSnapshot(of: tree)) == [])
        }
    }

    @Test func progressIsALiveLineOnATerminalPlainLinesOnAPipeAndNothingWhenQuiet() async throws {
        try await PeerHarness.with { peer in
            let project = try Project(in: peer.scratch.path, tiers: [Self.peerTier(peer.url)])
            let tree = try await Fixtures.makeCorpus(in: peer.scratch.path.appending("corpus"), files: 300, seed: 33)
            try await peer.publish(tree, as: try await project.key())
            let restore = [Fixtures.cliPath, "restore", "--config", project.config.string]

            // A terminal: `script` gives the command a pseudo-terminal and records what it drew.
            let typescript = peer.scratch.path.appending("typescript").string
            let terminal = try await Fixtures.run(["script", "-qfec", restore.joined(separator: " "), typescript])
            #expect(terminal.status == 0, "\(terminal.stderr)")
            let drawn = String(decoding: try Data(contentsOf: URL(fileURLWithPath: typescript)), as: UTF8.self)
            #expect(drawn.contains("\r\u{1B}[Kcache-master: "), "a line redrawn in place: \(drawn)")
            #expect(drawn.contains("cache-master: attempt 1 hit"))

            let pipe = try await Fixtures.run(restore)
            #expect(pipe.status == 0)
            #expect(!pipe.stderr.contains("\u{1B}["), "no terminal codes on a pipe")
            #expect(pipe.stderr.contains("cache-master: attempt 1 started"))
            #expect(pipe.stderr.contains("cache-master: attempt 1 hit after"))
            #expect(pipe.stderr.contains("restored \(try await project.key()) from cache-master"))

            let quiet = try await Fixtures.run(restore + ["--quiet"])
            #expect(quiet.status == 0)
            #expect(quiet.stderr.isEmpty && quiet.stdout.isEmpty, "\(quiet.stderr)")
        }
    }

    @Test(.needsGCSEmulator) func peerDownThenAGCSHitFromTheEmulator() async throws {
        try await GCSHarness.with { gcs in
            let project = try Project(in: gcs.scratch.path, tiers: [Self.peerTier(Self.deadURL), Self.gcsTier(gcs.emulator.url)])
            let tree = try await Fixtures.makeCorpus(in: gcs.scratch.path.appending("corpus"), files: 300, seed: 32)
            try await gcs.publish(tree, as: try await project.key())

            let (status, report, stderr) = try await project.restore()
            #expect(status == 0, "\(stderr)")
            #expect(report?.attempts.map(\.tier) == ["cache-master", "gcs"])
            #expect(report?.attempts.map(\.outcome) == [.error, .hit])
            #expect(report?.servedBy == "gcs")
            #expect((report?.estimatedCostUSD ?? 0) > 0, "a GCS restore carries its cost")
            #expect(try TreeSnapshot(of: project.destination).differences(from: TreeSnapshot(of: tree)) == [])
        }
    }

    @Test(.needsGCSEmulator) func aMissEverywhereInstallsWritesBackAndTheNextBootHitsThePeer() async throws {
        try await GCSHarness.with { gcs in
            try await PeerHarness.with { peer in
                let pip = try await PipProject.make(in: gcs.scratch.path.appending("python"))
                let project = try Project(
                    in: gcs.scratch.path,
                    tiers: [
                        Self.peerTier(peer.url), Self.gcsTier(gcs.emulator.url),
                        Self.installTier(pip.command, workingDirectory: pip.directory.string, produces: "site-packages"),
                    ]
                )
                let key = try await project.key()

                let (status, report, stderr) = try await project.restore()
                #expect(status == 0, "\(stderr)")
                #expect(report?.attempts.map(\.outcome) == [.miss, .miss, .hit])
                #expect(report?.servedBy == "fresh-install")
                #expect(try await PipProject.importValue(from: project.destination) == "42")
                let writeBack = Dictionary(uniqueKeysWithValues: (report?.writeBack ?? []).map { ($0.tier, $0.outcome) })
                #expect(writeBack == ["cache-master": .published, "gcs": .published])
                #expect(try await gcs.emulator.objectMetadata(bucket: gcs.bucket, name: "caches/\(key.rawValue).tar.zst") != nil)
                #expect(try await peer.send(.HEAD, "/v1/caches/\(key.rawValue)").status == 200)

                // The next VM boots: the cache master has it now.
                let installed = try TreeSnapshot(of: project.destination)
                try FileManager.default.removeItem(atPath: project.destination.string)
                let next = try await project.restore()
                #expect(next.status == 0, "\(next.stderr)")
                #expect(next.report?.servedBy == "cache-master")
                #expect(next.report?.attempts.map(\.outcome) == [.hit])
                #expect(try TreeSnapshot(of: project.destination).differences(from: installed) == [])
            }
        }
    }

    @Test func everythingDownAndTheInstallFailingExits1WithTheDestinationUntouched() async throws {
        let scratch = try TemporaryDirectory(prefix: "cli")
        defer { scratch.remove() }
        let project = try Project(
            in: scratch.path,
            tiers: [
                Self.peerTier(Self.deadURL), Self.gcsTier(Self.deadURL),
                Self.installTier(["/bin/sh", "-c", "echo resolving; echo 'npm ERR! network unreachable' >&2; exit 1"]),
            ]
        )
        try SampleTree.write(to: project.destination, seed: 5, files: 20)
        let before = try TreeSnapshot(of: project.destination)
        let reportFile = scratch.path.appending("report.json")

        let result = try await Fixtures.cli(["restore", "--config", project.config.string, "--report", reportFile.string])
        #expect(result.status == 1)
        #expect(result.stderr.contains("cachetiers: every tier failed"), "\(result.stderr)")
        #expect(try TreeSnapshot(of: project.destination).differences(from: before) == [], "destination untouched")
        let report = try JSONDecoder().decode(RestoreReport.self, from: Data(contentsOf: URL(fileURLWithPath: reportFile.string)))
        #expect(report.outcome == .failed)
        #expect(report.servedBy == nil)
        #expect(report.attempts.map(\.tier) == ["cache-master", "gcs", "fresh-install"])
        #expect(report.attempts.allSatisfy { $0.outcome == .error })
        #expect(report.attempts.last?.error?.contains("npm ERR! network unreachable") == true)
    }

    @Test func ctrlCStopsTheInstallAndItsChildrenAndLeavesNothingBehind() async throws {
        let scratch = try TemporaryDirectory(prefix: "cli")
        defer { scratch.remove() }
        let marker = "\(Int.random(in: 40_000...49_999)).25"
        let project = try Project(
            in: scratch.path, tiers: [Self.installTier(["/bin/sh", "-c", "sleep \(marker) & sleep \(marker) & wait"])]
        )
        try SampleTree.write(to: project.destination, seed: 6, files: 10)
        let before = try TreeSnapshot(of: project.destination)

        let process = Process()
        process.executableURL = URL(fileURLWithPath: Fixtures.cliPath)
        process.arguments = ["restore", "--config", project.config.string]
        let stderr = Pipe()
        process.standardError = stderr
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        func running() async throws -> Int {
            try await Fixtures.run(["pgrep", "-f", "sleep \(marker)"]).stdout.split(separator: "\n").count
        }
        // The shell and its two sleeps all carry the marker.
        for _ in 0..<100 where try await running() < 3 { try await Task.sleep(for: .milliseconds(50)) }
        #expect(try await running() == 3, "the install started")
        process.interrupt()  // SIGINT, as Ctrl-C sends it
        let output = String(decoding: stderr.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()

        #expect(process.terminationStatus == 1)
        #expect(output.contains("stopped by SIGINT"), "\(output)")
        #expect(try await running() == 0, "the package manager's whole process group is gone")
        #expect(try TreeSnapshot(of: project.destination).differences(from: before) == [])
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: scratch.path.string)
            + FileManager.default.contentsOfDirectory(atPath: project.folder.string)
        #expect(leftovers.sorted() == ["cachetiers.json", "node_modules", "package-lock.json", "project"], "no staging or scratch folders")
    }

    @Test(arguments: [
        (#""tiers": [{"kind": "gcs", "name": "gcs"}]"#, "tiers[0].bucket: required"),
        (#""tiers": [{"kind": "peer", "urls": ["http://x:1"], "timeoutSecs": 3}]"#, "tiers[0].timeoutSecs: unknown field"),
        (#""tiers": [{"kind": "peer", "urls": ["http://x:1"]}], "deadlineSeconds": "soon""#,
         "deadlineSeconds: expected a number, got a string"),
        (#""tiers": [{"kind": "ftp"}]"#, "tiers[0].kind: expected peer, gcs, directory or install"),
        // Numbers that once trapped converting seconds to milliseconds.
        (#""tiers": [{"kind": "peer", "urls": ["http://x:1"]}], "deadlineSeconds": 1e300"#, "deadlineSeconds: must be at most"),
        (#""tiers": [{"kind": "peer", "urls": ["http://x:1"], "timeoutSeconds": 9.3e18}]"#, "tiers[0].timeoutSeconds: must be at most"),
        (#""tiers": [{"kind": "peer", "urls": ["http://x:1"]}], "writeBack": {"timeoutSeconds": 1e300}"#, "writeBack.timeoutSeconds: must be at most"),
        (#""tiers": [{"kind": "peer", "urls": ["http://x:1"], "maxAttempts": 1e10}]"#, "tiers[0].maxAttempts: must be at most 100"),
    ])
    func aBadConfigExits2NamingTheField(fields: String, message: String) async throws {
        let scratch = try TemporaryDirectory(prefix: "cli")
        defer { scratch.remove() }
        let project = try Project(in: scratch.path, tiers: [])
        let json = #"{"key": {"prefix": "node-modules", "files": ["package-lock.json"]}, "destination": "node_modules", "#
            + fields + "}"
        try Data(json.utf8).write(to: URL(fileURLWithPath: project.config.string))
        for command in [["restore", "--config", project.config.string], ["key", "--config", project.config.string]] {
            let result = try await Fixtures.cli(command)
            #expect(result.status == 2, "\(command[0])")
            #expect(result.stderr.contains(message), "\(command[0]): \(result.stderr)")
            #expect(result.stderr.split(separator: "\n").count == 1, "one line")
        }
    }

    @Test func theKeyFollowsTheLockfile() async throws {
        let scratch = try TemporaryDirectory(prefix: "cli")
        defer { scratch.remove() }
        let project = try Project(in: scratch.path, tiers: [Self.peerTier(Self.deadURL)])
        let first = try await project.key()
        #expect(try await project.key() == first, "stable")
        #expect(first.rawValue.hasPrefix("node-modules-"))
        try Data(#"{"lockfileVersion":3,"packages":{"left-pad":"1.3.1"}}"#.utf8)
            .write(to: URL(fileURLWithPath: project.folder.appending("package-lock.json").string))
        #expect(try await project.key() != first, "a changed lockfile is a new key")
        try FileManager.default.removeItem(atPath: project.folder.appending("package-lock.json").string)
        let missing = try await Fixtures.cli(["key", "--config", project.config.string])
        #expect(missing.status == 2)
        #expect(missing.stderr.contains("key.files[0]: cannot read"))
    }

    @Test func publishWithAConfigGoesToEveryWritableTier() async throws {
        try await PeerHarness.with { peer in
            let project = try Project(
                in: peer.scratch.path,
                tiers: [Self.peerTier(peer.url), ["kind": "directory", "name": "local", "path": "../local-cache"]]
            )
            let tree = peer.scratch.path.appending("tree")
            try SampleTree.write(to: tree, seed: 3, files: 40)
            let key = try await project.key()
            let first = try await Fixtures.cli(["publish", tree.string, "--config", project.config.string])
            #expect(first.status == 0, "\(first.stderr)")
            #expect(first.stdout.contains("cache-master: published \(key)"))
            #expect(first.stdout.contains("local: published \(key)"))
            #expect(FileManager.default.fileExists(atPath: peer.scratch.path.appending("local-cache/\(key.rawValue).tar.zst").string))
            let again = try await Fixtures.cli(["publish", tree.string, "--config", project.config.string])
            #expect(again.status == 0)
            #expect(again.stdout.contains("cache-master: \(key) is already there"))
        }
    }

    @Test func theDemoRunsWithNoSetup() async throws {
        let result = try await Fixtures.cli(["demo", "--packages", "20"])
        #expect(result.status == 0, "\(result.stderr)")
        for expected in ["cache-master", "fresh-install", "local", "write-back published", "hit"] {
            #expect(result.stdout.contains(expected), "\(expected) in:\n\(result.stdout)")
        }
        // npm is on every machine .ci/setup prepared: the fresh install is real npm ci.
        #expect(result.stdout.contains("fresh install: npm ci --offline (npm "), "\(result.stdout)")
        #expect(result.stdout.contains("the fresh install (npm) restore 2"), "\(result.stdout)")
        let installRow = result.stdout.split(separator: "\n").first { $0.contains("fresh-install") && $0.contains("hit") }
        #expect(installRow?.hasSuffix("npm ci --offline") == true, "the table says which package manager ran: \(installRow ?? "")")
        // The master came back for restore 4, and took the reports spooled while it was down.
        #expect(result.stdout.contains(#/4 peer back +cache-master +hit/#), "\(result.stdout)")
        #expect(result.stdout.contains("The cache master holds 4 of the 4 restores' reports"), "\(result.stdout)")
        #expect(result.stdout.contains("Dashboard: http://127.0.0.1:"), "\(result.stdout)")
    }

    @Test(.timeLimit(.minutes(3)))
    func theDemoWithKeepLeavesItsDashboardOpenUntilCtrlC() async throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Fixtures.cliPath)
        process.arguments = ["demo", "--packages", "10", "--keep"]
        let output = Pipe()
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        try process.run()
        defer { if process.isRunning { kill(process.processIdentifier, SIGKILL) } }

        // Read until the dashboard's line; the demo then waits for the signal.
        var text = ""
        while !text.contains("Ctrl-C stops it") {
            let chunk = output.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            text += String(decoding: chunk, as: UTF8.self)
        }
        let line = text.split(separator: "\n").first { $0.hasPrefix("Dashboard: http://") }
        let url = try #require(line.flatMap { $0.split(separator: " ").dropFirst().first }.map(String.init), "\(text)")
        let page = try await Fixtures.run(["curl", "-sS", "--max-time", "10", url])
        #expect(page.status == 0, "the dashboard answers while the demo waits: \(page.stderr)")
        #expect(page.stdout.contains(#/data-metric="restores"[^>]*data-value="4"/#), "the demo's 4 restores are on it")

        kill(process.processIdentifier, SIGINT)
        let rest = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        #expect(process.terminationStatus == 0)
        let kept = rest.split(separator: "\n").first { $0.hasPrefix("kept ") }.map { String($0.dropFirst(5)) }
        #expect(kept != nil, "\(rest)")
        if let kept { try? FileManager.default.removeItem(atPath: kept) }
        let after = try await Fixtures.run(["curl", "-sS", "--max-time", "5", url])
        #expect(after.status != 0, "Ctrl-C stopped the cache master")
    }
}
