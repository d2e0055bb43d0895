import CacheTiers
import CacheTiersTesting
import Foundation
import SystemPackage
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// What the entry at `path` is, without following a link: "file", "link", "device"…
func kindOfEntry(_ path: FilePath) -> String {
        var info = stat()
        guard lstat(path.string, &info) == 0 else { return "missing" }
        switch info.st_mode & S_IFMT {
        case S_IFREG: return "file"
        case S_IFLNK: return "link"
        case S_IFCHR, S_IFBLK: return "device"
        case S_IFDIR: return "directory"
        default: return "other"
        }
}

/// The real `cachetiers` binary against real folders, used carelessly: destinations that
/// would delete what the user needs, a report path with a typo, a cache master that
/// never answers the write-back, and a stop signal after the tree is in place.
@Suite(.serialized) struct CommandLineSafetyTests {
    typealias Project = CommandLineEndToEndTests.Project

    /// A project whose directory tier (`cache/`) holds its key, so restores hit it.
    func seededProject(in scratch: TemporaryDirectory, peer: String? = nil, writeBack: [String: Any] = ["enabled": false])
        async throws -> (Project, FilePath)
    {
        var tiers: [[String: Any]] = []
        if let peer {
            tiers.append(["kind": "peer", "name": "cache-master", "urls": [peer], "stallSeconds": 1, "maxAttempts": 1])
        }
        tiers.append(["kind": "directory", "name": "local", "path": "cache"])
        let project = try Project(in: scratch.path, tiers: tiers, writeBack: writeBack)
        let tree = scratch.path.appending("tree")
        try SampleTree.write(to: tree, seed: 2, files: 20)
        let local = DirectorySource(name: "local", root: project.folder.appending("cache"))
        try await DirectorySourceTests.Subject(directory: local).seed(try await project.key(), from: tree)
        return (project, tree)
    }

    /// Starts `cachetiers restore` with a report file, reading its stderr as it goes.
    func startRestore(_ project: Project, report: FilePath) throws -> (Process, Thread.PendingRead) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Fixtures.cliPath)
        process.arguments = ["restore", "--config", project.config.string, "--report", report.string]
        let stderr = Pipe()
        process.standardError = stderr
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        return (process, Thread.detachedRead(stderr.fileHandleForReading))
    }

    /// Everything under `folder`, to compare before and after.
    func snapshot(_ folder: FilePath) throws -> TreeSnapshot { try TreeSnapshot(of: folder) }

    @Test(arguments: [
        (["--into", "."], "is the current directory"),
        (["--into", ".."], "contains the current directory"),
        (["--into", "cache"], "is the folder of the directory tier local"),
    ])
    func aDestinationThatWouldDeleteWhatTheUserNeedsIsRefusedBeforeAnythingRuns(arguments: [String], reason: String) async throws {
        let scratch = try TemporaryDirectory(prefix: "dest")
        defer { scratch.remove() }
        let (project, _) = try await seededProject(in: scratch)
        try Data("keep me".utf8).write(to: URL(fileURLWithPath: scratch.path.appending("sibling-notes.txt").string))
        let before = try snapshot(scratch.path)
        let result = try await Fixtures.cli(["restore", "--config", "cachetiers.json"] + arguments, in: project.folder)
        #expect(result.status == 2, "\(result.stderr)")
        #expect(result.stderr.contains("refusing to restore into") && result.stderr.contains(reason), "\(result.stderr)")
        #expect(result.stderr.split(separator: "\n").count == 1, "one line: \(result.stderr)")
        #expect(try snapshot(scratch.path).differences(from: before) == [], "nothing was touched")
    }

    @Test(arguments: ["..", ".", "cache", "/", "package-lock.json/.."])
    func aConfiguredDestinationThatWouldDeleteWhatTheUserNeedsIsRefused(destination: String) async throws {
        let scratch = try TemporaryDirectory(prefix: "dest")
        defer { scratch.remove() }
        let (project, _) = try await seededProject(in: scratch)
        var json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: project.config.string))) as! [String: Any]
        json["destination"] = destination
        try project.write(json)
        let before = try snapshot(scratch.path)
        // Run from elsewhere, so it is the config's folder, tiers or root that protect.
        let result = try await Fixtures.cli(["restore", "--config", project.config.string], in: scratch.path.appending("tree"))
        #expect(result.status == 2, "\(result.stderr)")
        #expect(result.stderr.contains("refusing to restore into"), "\(result.stderr)")
        #expect(try snapshot(scratch.path).differences(from: before) == [])
    }

    @Test func aSymlinkToTheProjectIsSeenThrough() async throws {
        let scratch = try TemporaryDirectory(prefix: "dest")
        defer { scratch.remove() }
        let (project, _) = try await seededProject(in: scratch)
        let link = scratch.path.appending("alias")
        try FileManager.default.createSymbolicLink(atPath: link.string, withDestinationPath: project.folder.string)
        let before = try snapshot(scratch.path)
        let result = try await Fixtures.cli(["restore", "--config", project.config.string, "--into", link.string], in: scratch.path)
        #expect(result.status == 2, "\(result.stderr)")
        #expect(result.stderr.contains("refusing to restore into \(link)"), "\(result.stderr)")
        #expect(try snapshot(scratch.path).differences(from: before) == [])
    }

    @Test func unpackIntoTheFolderHoldingTheArchiveIsRefused() async throws {
        let scratch = try TemporaryDirectory(prefix: "unpack")
        defer { scratch.remove() }
        let tree = scratch.path.appending("tree")
        try SampleTree.write(to: tree, files: 10)
        let work = try scratch.makeDirectory("work")
        let packed = try await Fixtures.cli(["pack", tree.string, "--output", work.appending("x.tar.zst").string])
        #expect(packed.status == 0, "\(packed.stderr)")
        try Data("notes".utf8).write(to: URL(fileURLWithPath: work.appending("notes.txt").string))
        let before = try snapshot(work)
        let result = try await Fixtures.cli(["unpack", "work/x.tar.zst", "--into", "work"], in: scratch.path)
        #expect(result.status == 2, "\(result.stderr)")
        #expect(result.stderr.contains("contains the archive being unpacked"), "\(result.stderr)")
        #expect(try snapshot(work).differences(from: before) == [], "the archive and the notes are still there")
    }

    @Test func packingIntoTheFolderBeingPackedIsRefusedAndWritesNothing() async throws {
        let scratch = try TemporaryDirectory(prefix: "pack")
        defer { scratch.remove() }
        let tree = scratch.path.appending("tree")
        try SampleTree.write(to: tree, files: 10)
        let before = try snapshot(tree)
        let result = try await Fixtures.cli(["pack", tree.string, "--output", tree.appending("deps.tar.zst").string])
        #expect(result.status == 2, "a usage error, as restore's refusals are")
        #expect(result.stderr.contains("inside"), "\(result.stderr)")
        #expect(try snapshot(tree).differences(from: before) == [], "no partial archive inside the tree")
    }

    @Test func publishRefusesAnUnsafeEntryAndSkipsItWhenAsked() async throws {
        try await PeerHarness.with { peer in
            let tree = peer.scratch.path.appending("tree")
            try SampleTree.write(to: tree, files: 5)
            try FileManager.default.createSymbolicLink(atPath: tree.appending("linked").string, withDestinationPath: "/home/dev/src/linked")
            let refused = try await Fixtures.cli(["publish", tree.string, "--key", "unsafe", "--peer", peer.url])
            #expect(refused.status == 1, "\(refused.stderr)")
            #expect(refused.stderr.contains("linked"), "names the entry: \(refused.stderr)")
            #expect(try await peer.send(.GET, "/v1/caches/unsafe").status == 404, "nothing published")
            let skipped = try await Fixtures.cli(["publish", tree.string, "--key", "unsafe", "--peer", peer.url, "--skip-unsafe"])
            #expect(skipped.status == 0, "\(skipped.stderr)")
            #expect(try await peer.send(.GET, "/v1/caches/unsafe").status == 200)
        }
    }

    @Test func aReportPathThatCannotBeWrittenIsAUsageErrorBeforeAnyTierRuns() async throws {
        let scratch = try TemporaryDirectory(prefix: "report")
        defer { scratch.remove() }
        let (project, _) = try await seededProject(in: scratch)
        let result = try await Fixtures.cli(["restore", "--config", project.config.string, "--report", "/nonexistent/dir/r.json"])
        #expect(result.status == 2, "\(result.stderr)")
        #expect(result.stderr.contains("/nonexistent/dir") && result.stderr.contains("does not exist"), "\(result.stderr)")
        #expect(result.stderr.split(separator: "\n").count == 1, "\(result.stderr)")
        #expect(FileManager.default.fileExists(atPath: project.destination.string) == false, "no tier ran")
    }

    @Test(arguments: [("", "needs a file path"), ("/proc/r.json", "cannot create a file in /proc"), ("node_modules/r.json", "inside the destination")])
    func reportPathsThatWouldFailOrPolluteTheCacheAreRefusedFirst(path: String, message: String) async throws {
        let scratch = try TemporaryDirectory(prefix: "report")
        defer { scratch.remove() }
        let (project, _) = try await seededProject(in: scratch)
        try FileManager.default.createDirectory(atPath: project.destination.string, withIntermediateDirectories: true)
        let before = try snapshot(project.folder)
        let result = try await Fixtures.cli(["restore", "--config", "cachetiers.json", "--report", path], in: project.folder)
        #expect(result.status == 2, "\(result.stderr)")
        #expect(result.stderr.contains(message), "\(result.stderr)")
        #expect(try snapshot(project.folder).differences(from: before) == [], "no tier ran")
    }

    /// A FIFO, a character device and a symbolic link as `--report`: the report goes
    /// through them; none of them is replaced by a regular file (as root, `--report
    /// /dev/null` would otherwise replace the system's).
    @Test func aReportPathThatIsADeviceOrALinkIsWrittenThroughNotReplaced() async throws {
        let scratch = try TemporaryDirectory(prefix: "report")
        defer { scratch.remove() }
        let (project, _) = try await seededProject(in: scratch)
        let target = scratch.path.appending("report.json")
        let link = scratch.path.appending("report-link.json")
        try FileManager.default.createSymbolicLink(atPath: link.string, withDestinationPath: "report.json")
        let result = try await Fixtures.cli(["restore", "--config", project.config.string, "--report", link.string])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(kindOfEntry(link) == "link", "the link is still a link")
        let written = try JSONDecoder().decode(RestoreReport.self, from: Data(contentsOf: URL(fileURLWithPath: target.string)))
        #expect(written.servedBy == "local", "the report went to the link's target")

        let null = scratch.path.appending("null")
        #expect(mknod(null.string, S_IFCHR | 0o666, dev_t((1 << 8) | 3)) == 0, "a character device like /dev/null")
        let second = try await Fixtures.cli(["restore", "--config", project.config.string, "--report", null.string])
        #expect(second.status == 0, "\(second.stderr)")
        #expect(kindOfEntry(null) == "device", "the device is still a device")

        // A FIFO nobody reads: a clear error at once, not a command that never ends (the
        // exit status stays the restore's: the tree is in place).
        let fifo = scratch.path.appending("report.fifo")
        #expect(mkfifo(fifo.string, 0o600) == 0)
        let third = try await Fixtures.cli(["restore", "--config", project.config.string, "--report", fifo.string])
        #expect(third.status == 0, "\(third.stderr)")
        #expect(third.stderr.contains("cannot write the report to \(fifo)"), "\(third.stderr)")
        #expect(kindOfEntry(fifo) == "other", "the FIFO is still a FIFO")
    }

    /// A token file that is a FIFO, too large, or two lines long: a config error naming
    /// the field at once (a FIFO used to hang the boot before any tier, /dev/zero to eat
    /// memory), and a destination that holds a token file is refused like a lockfile.
    @Test func tokenFilesAreReadOnlyAsSmallRegularFilesAndNeverRestoredOver() async throws {
        let scratch = try TemporaryDirectory(prefix: "token")
        defer { scratch.remove() }
        let (project, _) = try await seededProject(in: scratch)
        let secrets = scratch.path.appending("secrets")
        try FileManager.default.createDirectory(atPath: secrets.string, withIntermediateDirectories: true)
        let token = secrets.appending("peer.token")
        func configure(tokenFile: FilePath) throws {
            try project.write([
                "key": ["prefix": "node-modules", "files": ["package-lock.json"], "platform": true, "salt": ""],
                "destination": "node_modules",
                "tiers": [
                    ["kind": "peer", "name": "cache-master", "urls": ["http://127.0.0.1:9"], "tokenFile": tokenFile.string, "maxAttempts": 1],
                    ["kind": "directory", "name": "local", "path": "cache"],
                ],
                "writeBack": ["enabled": false],
            ])
        }
        let fifo = secrets.appending("fifo.token")
        #expect(mkfifo(fifo.string, 0o600) == 0)
        let big = secrets.appending("big.token")
        try Data(repeating: 0x61, count: 1 << 20).write(to: URL(fileURLWithPath: big.string))
        let twoLines = secrets.appending("two.token")
        try Data("secret\nsecond\n".utf8).write(to: URL(fileURLWithPath: twoLines.string))
        for (file, reason) in [(fifo, "not a regular file"), (big, "more than the 64 KiB"), (twoLines, "more than one line")] {
            try configure(tokenFile: file)
            let result = try await Fixtures.cli(["restore", "--config", project.config.string])
            #expect(result.status == 2, "\(file): \(result.stderr)")
            #expect(result.stderr.contains("tiers[0].tokenFile: ") && result.stderr.contains(reason), "\(result.stderr)")
            #expect(!result.stderr.contains("second"), "the token is never printed")
        }

        try Data("secret\n".utf8).write(to: URL(fileURLWithPath: token.string))
        try configure(tokenFile: token)
        let result = try await Fixtures.cli(["restore", "--config", project.config.string, "--into", secrets.string])
        #expect(result.status == 2, "\(result.stderr)")
        #expect(result.stderr.contains("a token or key file of the config"), "\(result.stderr)")
        #expect(try String(contentsOfFile: token.string, encoding: .utf8) == "secret\n", "the token is still there")
    }

    @Test func aDestinationReachedThroughASymlinkedParentIsRestored() async throws {
        let scratch = try TemporaryDirectory(prefix: "linked")
        defer { scratch.remove() }
        let (project, tree) = try await seededProject(in: scratch)
        let releases = try scratch.makeDirectory("releases-42")
        let current = scratch.path.appending("current")
        try FileManager.default.createSymbolicLink(atPath: current.string, withDestinationPath: releases.string)
        let result = try await Fixtures.cli(["restore", "--config", project.config.string, "--into", current.appending("node_modules").string])
        #expect(result.status == 0, "the /srv/app/current → releases/N layout: \(result.stderr)")
        #expect(try TreeSnapshot(of: releases.appending("node_modules")).differences(from: TreeSnapshot(of: tree)) == [])
    }

    @Test func aSilentCacheMasterCannotHoldTheBootThroughWriteBack() async throws {
        let scratch = try TemporaryDirectory(prefix: "silent")
        defer { scratch.remove() }
        let hole = try BlackHoleServer()
        let (project, tree) = try await seededProject(
            in: scratch, peer: hole.url,
            writeBack: ["enabled": true, "wait": false, "timeoutSeconds": 8, "stallSeconds": 1]
        )
        let report = project.folder.appending("boot.json")
        let result = try await Fixtures.cli(["restore", "--config", project.config.string, "--report", report.string])
        #expect(result.status == 0, "a tier restored: \(result.stderr)")
        let written = try JSONDecoder().decode(RestoreReport.self, from: Data(contentsOf: URL(fileURLWithPath: report.string)))
        #expect(written.servedBy == "local")
        #expect(written.writeBack.map(\.outcome) == [.failed], "\(written.writeBack)")
        #expect(written.writeBack.first?.error?.contains("gave up") == true, "\(written.writeBack)")
        #expect(try TreeSnapshot(of: project.destination).differences(from: TreeSnapshot(of: tree)) == [])
    }

    @Test func theReportIsWrittenAtPromotionAndSIGTERMDuringWriteBackSaysTheTreeStays() async throws {
        let scratch = try TemporaryDirectory(prefix: "sigterm")
        defer { scratch.remove() }
        let hole = try BlackHoleServer()
        let (project, tree) = try await seededProject(
            in: scratch, peer: hole.url,
            writeBack: ["enabled": true, "wait": false, "timeoutSeconds": 600, "stallSeconds": 600]
        )
        let report = project.folder.appending("boot.json")
        let (process, pending) = try startRestore(project, report: report)
        // The write-back waits on the silent master for up to 600 s; the report must not.
        var early: RestoreReport?
        for _ in 0..<600 {
            if let data = FileManager.default.contents(atPath: report.string),
                let decoded = try? JSONDecoder().decode(RestoreReport.self, from: data)
            {
                early = decoded
                break
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(early?.servedBy == "local", "the report is there while the write-back still runs")
        #expect(early?.writeBack.map(\.outcome) == [.pending])
        process.terminate()  // SIGTERM, as a service manager stops it
        let output = String(decoding: try await Fixtures.offThePool { pending.wait() }, as: UTF8.self)
        try await Fixtures.offThePool { process.waitUntilExit() }

        #expect(process.terminationStatus == 0, "the destination was restored: \(output)")
        #expect(output.contains("was restored from local and stays"), "\(output)")
        #expect(!output.contains("left as it was"), "\(output)")
        let final = try JSONDecoder().decode(RestoreReport.self, from: Data(contentsOf: URL(fileURLWithPath: report.string)))
        #expect(final.writeBack.map(\.outcome) == [.failed], "updated with the write-back's outcome")
        #expect(try TreeSnapshot(of: project.destination).differences(from: TreeSnapshot(of: tree)) == [])
    }

    @Test func aSignalBeforePromotionStillWritesTheReport() async throws {
        let scratch = try TemporaryDirectory(prefix: "sigterm")
        defer { scratch.remove() }
        let hole = try BlackHoleServer()
        // A silent master with a long stall window: the restore is stuck in its first attempt.
        let project = try Project(
            in: scratch.path,
            tiers: [["kind": "peer", "name": "cache-master", "urls": [hole.url], "stallSeconds": 600, "maxAttempts": 1]],
            writeBack: ["enabled": false]
        )
        let report = project.folder.appending("boot.json")
        let (process, pending) = try startRestore(project, report: report)
        // Wait until the attempt has started, as the progress lines on the pipe say.
        for _ in 0..<200 {
            if let staged = try? FileManager.default.contentsOfDirectory(atPath: project.folder.string),
                staged.contains(where: { $0.hasPrefix(".node_modules.staging-") })
            {
                break
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        process.terminate()
        let output = String(decoding: try await Fixtures.offThePool { pending.wait() }, as: UTF8.self)
        try await Fixtures.offThePool { process.waitUntilExit() }
        #expect(process.terminationStatus == 1, "\(output)")
        #expect(output.contains("is as it was"), "\(output)")
        let written = try JSONDecoder().decode(RestoreReport.self, from: Data(contentsOf: URL(fileURLWithPath: report.string)))
        #expect(written.outcome == .failed)
        #expect(written.servedBy == nil)
    }
}
