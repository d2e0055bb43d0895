import CacheTiersTesting
#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Hummingbird
import NIOHTTP1
import SystemPackage
import Testing

@testable import CacheTiers

/// `cachetiers doctor` against real servers: a cache master in-process, the GCS
/// emulator, directories and mounts of its own (CI runs as root). A sound config passes
/// every check; then each check is made to fail in turn and the output must name it with
/// its fix.
@Suite(.serialized) struct DoctorTests {
    static let token = "doctor-test-token-0123456789"

    /// A project whose config lists a cache master, a bucket, a directory and an install,
    /// with its destination on an ext4 mount of its own (noatime), so the host's /tmp
    /// does not decide the destination's checks.
    struct Setup {
        let master: PeerHarness
        let gcs: GCSHarness
        let folder: FilePath
        let destinationMount: TestMount
        /// Whether this build's master answers `GET /v1/caches` (a master without it is
        /// one warning, on the token check, and every test expects exactly that).
        let listsArchives: Bool
        var config: FilePath { folder.appending("cachetiers.json") }
        var local: FilePath { folder.appending("local-cache") }

        var tiers: [[String: Any]] {
            [
                [
                    "kind": "peer", "name": "cache-master", "urls": [master.url], "tokenFile": folder.appending("peer.token").string,
                    "connectTimeoutSeconds": 2,
                ],
                [
                    "kind": "gcs", "name": "gcs", "bucket": gcs.bucket, "prefix": "caches/", "endpoint": gcs.emulator.url,
                    "credentials": ["kind": "none"],
                ],
                ["kind": "directory", "name": "local", "path": local.string],
                ["kind": "install", "name": "fresh-install", "command": ["sh", "-c", "mkdir node_modules"], "produces": "node_modules"],
            ]
        }

        var document: [String: Any] {
            [
                "key": ["prefix": "node-modules", "files": ["package-lock.json"]],
                "destination": destinationMount.mountPoint.appending("node_modules").string,
                "tiers": tiers,
                "writeBack": ["enabled": true],
                "monitoring": ["report": ["enabled": false]],
            ]
        }

        func write(_ document: [String: Any]) throws {
            try JSONSerialization.data(withJSONObject: document, options: [.sortedKeys]).write(to: URL(fileURLWithPath: config.string))
        }

        /// Runs `cachetiers doctor` on `document`, in text or JSON.
        func doctor(_ document: [String: Any], json: Bool = false) async throws -> Fixtures.ProcessResult {
            try write(document)
            return try await Fixtures.cli(["doctor", "--config", config.string] + (json ? ["--json"] : []))
        }

        /// The checklist line of a master without `GET /v1/caches`, when this one has none.
        var listingWarning: String? {
            listsArchives ? nil : "warn  tier.cache-master.\(master.url).token: \(master.url) accepted the token but has no GET /v1/caches (404): a cachetiers older than this one"
        }

        /// The summary line with `failed` failures and `warnings` warnings besides the listing's.
        func summary(failed: Int = 0, warnings: Int = 0) -> String {
            let warned = warnings + (listsArchives ? 0 : 1)
            return "15 checks: \(failed) failed, \(warned) warning\(warned == 1 ? "" : "s"), \(15 - failed - warned) ok"
        }

        /// The report of `doctor --json` on `document`, and its exit status.
        func report(_ document: [String: Any]) async throws -> (status: Int32, report: DoctorReport) {
            let result = try await doctor(document, json: true)
            do {
                return (result.status, try JSONDecoder().decode(DoctorReport.self, from: Data(result.stdout.utf8)))
            } catch {
                throw FixtureError("doctor --json printed no report (\(error)): \(result.stdout) \(result.stderr)")
            }
        }
    }

    static func withSetup(_ body: (Setup) async throws -> Void) async throws {
        try await PeerHarness.with(token: token) { master in
            try await GCSHarness.with { gcs in
                let folder = master.scratch.path.appending("project")
                try FileManager.default.createDirectory(atPath: folder.string, withIntermediateDirectories: true)
                try Data(#"{"lockfileVersion":3,"packages":{"left-pad":"1.3.0"}}"#.utf8)
                    .write(to: URL(fileURLWithPath: folder.appending("package-lock.json").string))
                try Data("\(token)\n".utf8).write(to: URL(fileURLWithPath: folder.appending("peer.token").string))
                try FileManager.default.createDirectory(atPath: folder.appending("local-cache").string, withIntermediateDirectories: true)
                let mount = try await TestMount.ext4(at: master.scratch.path.appending("destination"), options: "noatime")
                do {
                    let listing = try await master.send(.GET, "/v1/caches?limit=1", headers: [("Authorization", "Bearer \(token)")])
                    let setup = Setup(master: master, gcs: gcs, folder: folder, destinationMount: mount, listsArchives: listing.status == 200)
                    try setup.write(setup.document)
                    let key = try await Fixtures.cli(["key", "--config", setup.config.string])
                    guard key.status == 0 else { throw FixtureError("cachetiers key: \(key.stderr)") }
                    // The archive the destination and memory checks size: on the master, under the project's key.
                    let tree = try await Fixtures.makeCorpus(in: master.scratch.path.appending("corpus"), files: 200, seed: 16)
                    try await master.publish(tree, as: try CacheKey(key.stdout.trimmingCharacters(in: .whitespacesAndNewlines)), token: token)
                    try await body(setup)
                } catch {
                    await mount.remove()
                    throw error
                }
                await mount.remove()
            }
        }
    }

    @Test(.needsGCSEmulator) func aSoundConfigPassesEveryCheckAndWritesNothing() async throws {
        try await Self.withSetup { setup in
            let result = try await setup.doctor(setup.document)
            #expect(result.status == 0, "\(result.stdout)\n\(result.stderr)")
            let lines = result.stdout.split(separator: "\n")
            let notOK = lines.dropLast().filter { !$0.hasPrefix("ok    ") && !$0.hasPrefix("      fix: upgrade the cache master") }
            #expect(notOK == (setup.listingWarning.map { [Substring($0)] } ?? []), "every check passes:\n\(result.stdout)")
            #expect(lines.last.map(String.init) == setup.summary(), "\(result.stdout)")
            let base = "tier.cache-master.\(setup.master.url)"
            let (status, report) = try await setup.report(setup.document)
            #expect(status == 0)
            #expect(
                report.checks.map(\.id) == [
                    "config", "key", base, "\(base).clock", "\(base).token", "\(base).write", "tier.gcs.credentials", "tier.gcs",
                    "tier.gcs.write", "tier.local", "tier.local.write", "install", "destination", "memory", "writeBack",
                ]
            )
            #expect(result.stdout.contains("is a cache master (cachetiers/\(CacheTiersVersion.current))"))
            #expect(result.stdout.contains("accepts uploads with the token"))
            #expect(result.stdout.contains("wrote and deleted the empty probe object caches/cachetiers-doctor-probe-"))
            #expect(result.stdout.contains("is on ext4"), "\(result.stdout)")
            #expect(result.stdout.contains("for the archive of the current key on cache-master"), "\(result.stdout)")
            #expect(result.stdout.contains("zstd window of the archive of the current key on cache-master"), "\(result.stdout)")

            // The probes left nothing: no object in the bucket, no archive on the master, no file in the folder.
            #expect(try await setup.gcs.emulator.objectNames(bucket: setup.gcs.bucket) == [])
            #expect(try await setup.master.send(.HEAD, "/v1/caches/cachetiers-doctor-probe", headers: [("Authorization", "Bearer \(Self.token)")]).status == 404)
            #expect(try FileManager.default.contentsOfDirectory(atPath: setup.local.string) == [])
            #expect(try FileManager.default.contentsOfDirectory(atPath: setup.master.scratch.path.appending("root").string).filter { !$0.hasPrefix(".") || $0.contains("probe") }.count == 2)

            // --json: the stable keys, every field present.
            let json = try await setup.doctor(setup.document, json: true)
            #expect(json.status == 0)
            let object = try #require(try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any])
            #expect(Set(object.keys) == ["checks", "ok"])
            #expect(object["ok"] as? Bool == true)
            let checks = try #require(object["checks"] as? [[String: Any]])
            #expect(checks.count == 15)
            #expect(checks.allSatisfy { Set($0.keys) == ["id", "status", "finding", "fix"] })
            #expect(checks.filter { $0["status"] as? String != "ok" }.count == (setup.listsArchives ? 0 : 1))
            #expect(checks.allSatisfy { ($0["status"] as? String == "ok") == ($0["fix"] is NSNull) })
        }
    }

    /// One way to break the sound config, and what doctor must then say.
    struct Breakage: Sendable {
        var name: String
        var id: String
        var status: DoctorCheck.Status
        var finding: String
        var fix: String
        /// How many checks the output has: a master that is down or not a master skips its
        /// clock, token and upload checks, a refused token the upload's, a missing bucket its probe object.
        var checks = 15
        var change: @Sendable (_ setup: Setup, _ document: inout [String: Any], _ cleanup: inout [TestMount]) async throws -> Void
    }

    static func tier(_ index: Int, _ document: inout [String: Any], _ change: (inout [String: Any]) -> Void) {
        var tiers = document["tiers"] as! [[String: Any]]
        change(&tiers[index])
        document["tiers"] = tiers
    }

    static let breakages: [Breakage] = [
        Breakage(
            name: "the master is down", id: "tier.cache-master.http://127.0.0.1:9", status: .fail,
            finding: "the connection was refused", fix: "start the cache master there (cachetiers serve)", checks: 12
        ) { _, document, _ in tier(0, &document) { $0["urls"] = ["http://127.0.0.1:9"] } },
        Breakage(
            name: "the port is not a cache master", id: "tier.cache-master.NOT-A-MASTER", status: .fail,
            finding: "is not a cache master: GET /healthz answered 200 with \"hello\"", fix: "point tiers[0].urls at a cache master", checks: 12
        ) { _, _, _ in },
        Breakage(
            name: "a wrong token", id: "tier.cache-master.MASTER.token", status: .fail,
            finding: "refused the token (401", fix: "put the master's --token-file token in tiers[0].tokenFile", checks: 14
        ) { setup, _, _ in
            try Data("not-the-token\n".utf8).write(to: URL(fileURLWithPath: setup.folder.appending("peer.token").string))
        },
        Breakage(
            name: "no token for a master that needs one", id: "tier.cache-master.MASTER.token", status: .fail,
            finding: "requires a token and tiers[0] has none (401)", fix: "set tiers[0].tokenFile", checks: 14
        ) { _, document, _ in tier(0, &document) { $0["tokenFile"] = nil } },
        Breakage(
            name: "a bucket that does not exist", id: "tier.gcs", status: .fail,
            finding: "the bucket gs://no-such-bucket does not exist (404", fix: "create the bucket, or correct tiers[1].bucket", checks: 14
        ) { _, document, _ in tier(1, &document) { $0["bucket"] = "no-such-bucket" } },
        Breakage(
            name: "an unwritable directory", id: "tier.local.write", status: .fail,
            finding: "does not take new files (Read-only file system)", fix: "mount"
        ) { setup, document, cleanup in
            let mount = try await TestMount.tmpfs(at: setup.folder.appending("read-only"), options: "ro,size=1m")
            cleanup.append(mount)
            tier(2, &document) { $0["path"] = mount.mountPoint.string }
        },
        Breakage(
            name: "a missing install command", id: "install", status: .fail,
            finding: "the install command `no-such-installer-16` is not on PATH", fix: "install no-such-installer-16 in the VM image"
        ) { _, document, _ in tier(3, &document) { $0["command"] = ["no-such-installer-16", "ci"] } },
        Breakage(
            name: "a destination on tmpfs", id: "destination", status: .warn,
            finding: "tmpfs keeps the tree in RAM: ", fix: "restore onto a disk filesystem"
        ) { setup, document, cleanup in
            let mount = try await TestMount.tmpfs(at: setup.folder.appending("tmpfs"))
            cleanup.append(mount)
            document["destination"] = mount.mountPoint.appending("node_modules").string
        },
        Breakage(
            name: "a destination mounted strictatime", id: "destination", status: .warn,
            finding: "it is mounted with strictatime: every read of the tree writes access times (measured", fix: "mount it with noatime"
        ) { setup, document, cleanup in
            let mount = try await TestMount.ext4(at: setup.folder.appending("strict"), options: "strictatime")
            cleanup.append(mount)
            document["destination"] = mount.mountPoint.appending("node_modules").string
        },
        Breakage(
            name: "a destination whose folder is missing", id: "destination", status: .fail,
            finding: "does not exist, and a restore needs it", fix: "mkdir -p"
        ) { setup, document, _ in document["destination"] = setup.folder.appending("no/such/node_modules").string },
    ]

    @Test(.needsGCSEmulator) func eachCheckMadeToFailInTurnIsNamedWithItsFix() async throws {
        let router = Router()
        router.get("/healthz") { _, _ in "hello\n" }
        router.get("/v1/caches") { _, _ in "hello\n" }
        try await FakeHTTPServer.with(router) { notAMaster in
            try await Self.withSetup { setup in
                for breakage in Self.breakages {
                    var document = setup.document
                    var mounts: [TestMount] = []
                    do {
                        try await breakage.change(setup, &document, &mounts)
                    } catch {
                        for mount in mounts { await mount.remove() }
                        throw error
                    }
                    if breakage.name == "the port is not a cache master" { Self.tier(0, &document) { $0["urls"] = [notAMaster] } }
                    let id = breakage.id.replacingOccurrences(of: "NOT-A-MASTER", with: notAMaster)
                        .replacingOccurrences(of: "MASTER", with: setup.master.url)

                    let result = try await setup.doctor(document)
                    let lines = result.stdout.split(separator: "\n").map(String.init)
                    let label = breakage.status == .fail ? "FAIL" : "warn"
                    let line = lines.firstIndex { $0.hasPrefix("\(label)  \(id): ") }
                    #expect(result.status == (breakage.status == .fail ? 1 : 0), "\(breakage.name): exit \(result.status)\n\(result.stdout)")
                    guard let line else {
                        Issue.record("\(breakage.name): no \(label) line for \(id):\n\(result.stdout)\n\(result.stderr)")
                        continue
                    }
                    #expect(lines[line].contains(breakage.finding), "\(breakage.name): \(lines[line])")
                    #expect(lines[line + 1].hasPrefix("      fix: ") && lines[line + 1].contains(breakage.fix), "\(breakage.name): \(lines[line + 1])")
                    // Only what was broken: every other check still passes.
                    let others = lines.dropLast().filter {
                        !$0.hasPrefix("ok  ") && !$0.hasPrefix("      fix: ") && !$0.hasPrefix("\(label)  \(id): ") && $0 != setup.listingWarning
                    }
                    // The listing's warning is there only when the token check ran and passed.
                    let listing = !breakage.id.hasPrefix("tier.cache-master.") && !setup.listsArchives ? 1 : 0
                    let failed = breakage.status == .fail ? 1 : 0
                    let warned = (breakage.status == .warn ? 1 : 0) + listing
                    let expected = "\(breakage.checks) checks: \(failed) failed, \(warned) warning\(warned == 1 ? "" : "s"), \(breakage.checks - failed - warned) ok"
                    #expect(lines.last == expected, "\(breakage.name): \(lines.last ?? "")")
                    for mount in mounts { await mount.remove() }
                    try setup.write(setup.document)
                    try Data("\(Self.token)\n".utf8).write(to: URL(fileURLWithPath: setup.folder.appending("peer.token").string))
                }
            }
        }
    }

    @Test func aConfigThatDoesNotLoadIsTheFirstCheckFailedWithItsOwnLine() async throws {
        let scratch = try TemporaryDirectory(prefix: "doctor-config")
        defer { scratch.remove() }
        let config = scratch.path.appending("cachetiers.json")
        try Data("{\n  \"tiers\": [\n}\n".utf8).write(to: URL(fileURLWithPath: config.string))
        let loadError: String
        do {
            _ = try CacheTiersConfig.load(from: config)
            Issue.record("the broken config loaded")
            return
        } catch {
            loadError = error.description
        }

        let text = try await Fixtures.cli(["doctor", "--config", config.string])
        #expect(text.status == 1)
        let lines = text.stdout.split(separator: "\n").map(String.init)
        #expect(lines.first == "FAIL  config: \(loadError)", "\(text.stdout)")
        #expect(lines.count == 3 && lines[1].hasPrefix("      fix: correct the field it names in \(config)"), "\(text.stdout)")
        #expect(lines.last == "1 checks: 1 failed, 0 warnings, 0 ok")

        let json = try await Fixtures.cli(["doctor", "--config", config.string, "--json"])
        #expect(json.status == 1)
        let report = try JSONDecoder().decode(DoctorReport.self, from: Data(json.stdout.utf8))
        #expect(report.checks.map(\.id) == ["config"] && report.checks[0].status == .fail && report.checks[0].finding == loadError)
        #expect(!report.ok && json.stdout.contains("\"ok\" : false"))

        // A missing token file is a config failure too: the secrets must be readable.
        try JSONSerialization.data(withJSONObject: [
            "key": ["prefix": "p", "files": ["package-lock.json"]], "destination": "node_modules",
            "tiers": [["kind": "peer", "urls": ["http://127.0.0.1:9"], "tokenFile": "missing.token"]],
        ]).write(to: URL(fileURLWithPath: config.string))
        let secrets = try await Fixtures.cli(["doctor", "--config", config.string])
        #expect(secrets.status == 1)
        #expect(secrets.stdout.hasPrefix("FAIL  config: \(config): tiers[0].tokenFile: cannot read "), "\(secrets.stdout)")
    }

    /// A port that takes the connection and never answers is a failure within the bound, not a hang.
    @Test func aMasterThatNeverAnswersFailsWithinTheBound() async throws {
        let silent = try SilentListener()
        defer { silent.close() }
        let scratch = try TemporaryDirectory(prefix: "doctor-silent")
        defer { scratch.remove() }
        let config = try CacheTiersConfig(
            json: Data(#"{"key":{"prefix":"p"},"destination":"node_modules","tiers":[{"kind":"peer","name":"m","urls":["\#(silent.url)"]}]}"#.utf8),
            baseDirectory: scratch.path
        )
        let report = await Doctor(configuration: .init(answerTimeout: .milliseconds(500))).examine(config, logger: PeerHarness.quietLogger)
        let check = try #require(report.checks.first { $0.id == "tier.m.\(silent.url)" })
        #expect(check.status == .fail)
        #expect(check.finding == "GET \(silent.url)/healthz got no answer within 2.5 s", "\(check.finding)")
        #expect(!report.ok)
    }

    @Test func clockSkewWarnsBeyondFiveSecondsAndFailsBeyondAMinute() async throws {
        let probe = MasterProbe(
            tier: "m", configuration: .init(peers: ["http://10.0.0.5:7420"]), doctor: .init(), field: "tiers[0]"
        )
        func skew(_ seconds: Double) -> DoctorCheck {
            let now = Date()
            let formatter = DateFormatter()
            formatter.locale = Locale(identifier: "en_US_POSIX")
            formatter.timeZone = TimeZone(identifier: "GMT")
            formatter.dateFormat = "EEE, dd MMM yyyy HH:mm:ss 'GMT'"
            var headers = HTTPHeaders()
            headers.add(name: "Date", value: formatter.string(from: now.addingTimeInterval(seconds)))
            let answer = MasterProbe.Answer(status: 200, headers: headers, body: .init(), receivedAround: now)
            return probe.clock(of: answer, id: "clock", base: "http://10.0.0.5:7420")
        }
        #expect(skew(0).status == .ok)
        #expect(skew(0).finding.hasSuffix("clock is within 1 s of this VM's") || skew(0).finding.hasSuffix("1 s behind this VM's"))
        #expect(skew(10).status == .warn && skew(10).finding.contains("s ahead of this VM's (warns beyond 5 s)"))
        #expect(skew(-120).status == .fail && skew(-120).finding.contains("s behind this VM's (fails beyond 60 s)"))
        #expect(skew(-120).fix?.contains("NTP") == true)
        var missing = HTTPHeaders()
        missing.add(name: "Server", value: "cachetiers/0.1.0")
        #expect(probe.clock(of: .init(status: 200, headers: missing, body: .init(), receivedAround: Date()), id: "clock", base: "b").status == .warn)
        await probe.close()
    }

    @Test func theZstdWindowIsReadFromTheFrameHeader() async throws {
        // Window descriptor 0x58: exponent 11, mantissa 0, so 2^21 = 2 MiB; 0x5B adds 3/8.
        #expect(try ZstdFrameHeader([0x28, 0xB5, 0x2F, 0xFD, 0x00, 0x58]).windowSize == 2 << 20)
        #expect(try ZstdFrameHeader([0x28, 0xB5, 0x2F, 0xFD, 0x00, 0x5B]).windowSize == (2 << 20) + 3 * (2 << 20) / 8)
        // Single segment: the window is the content size (two-byte form: + 256).
        #expect(try ZstdFrameHeader([0x28, 0xB5, 0x2F, 0xFD, 0x60, 0x00, 0x01]).windowSize == 256 + 256)
        #expect(throws: ZstdFrameHeader.Problem.self) { try ZstdFrameHeader(Array("PK\u{3}\u{4}zip".utf8)) }
        #expect(throws: ZstdFrameHeader.Problem.self) { try ZstdFrameHeader([0x28, 0xB5, 0x2F, 0xFD]) }

        // What cachetiers pack writes: a window the decoder takes, within Archives.md's 512 KiB to 2 MiB at level 1.
        let scratch = try TemporaryDirectory(prefix: "doctor-zstd")
        defer { scratch.remove() }
        let tree = try await Fixtures.makeCorpus(in: scratch.path.appending("corpus"), files: 300, seed: 3)
        let archive = scratch.path.appending("a.tar.zst")
        _ = try await ArchivePacker().pack(tree, key: try CacheKey("zstd-window"), to: archive, logger: PeerHarness.quietLogger)
        let bytes = try #require(FileManager.default.contents(atPath: archive.string))
        let header = try ZstdFrameHeader(Array(bytes.prefix(ZstdFrameHeader.maximumSize)))
        #expect(header.windowSize > 0 && header.windowSize <= 2 << 20, "\(header.windowSize)")
    }

    @Test func memoryFailsForAWindowTheDecoderRefusesAndMountsParse() throws {
        let manifest = CacheManifest(
            key: try CacheKey("k"), archiveSHA256: String(repeating: "a", count: 64), archiveSize: 1, codec: "zstd", level: 19,
            uncompressedSize: 1, entryCount: 1
        )
        let huge = ArchiveSample(
            tier: "gcs", key: manifest.key, manifest: manifest, isCurrentKey: true,
            window: .success(try ZstdFrameHeader([0x28, 0xB5, 0x2F, 0xFD, 0x00, 0x90]))
        )
        let check = MemoryCheck(sample: huge).check()
        #expect(check.status == .fail && check.finding.contains("256 MiB zstd window") && check.finding.contains("over the 128 MiB"), "\(check.finding)")

        #expect(MemoryInfo.available(from: "MemTotal:  2000 kB\nMemAvailable:    1536 kB\n") == Int64(1536 * 1024))
        let table = MountTable(mountinfo: """
            22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
            40 22 0:35 / /srv/my\\040cache rw,nosuid - tmpfs tmpfs rw,size=1024k
            41 22 7:0 / /srv/app rw,noatime - ext4 /dev/loop0 rw
            """)
        #expect(table.mounts.count == 3)
        #expect(table.mounts[1].mountPoint == "/srv/my cache" && table.mounts[1].type == "tmpfs")
        #expect(table.mounts[2].options == ["rw", "noatime"] && table.mounts[2].source == "/dev/loop0")
    }
}

/// A TCP port that accepts connections (the kernel completes them in the backlog) and
/// never answers.
struct SilentListener {
    let socket: Int32
    let url: String

    init() throws {
        let descriptor = Glibc.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, listen(descriptor, 16) == 0 else {
            _ = Glibc.close(descriptor)
            throw FixtureError("cannot listen on a loopback port")
        }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(descriptor, $0, &length) }
        }
        socket = descriptor
        url = "http://127.0.0.1:\(UInt16(bigEndian: address.sin_port))"
    }

    func close() {
        _ = Glibc.close(socket)
    }
}
