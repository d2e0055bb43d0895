import AsyncHTTPClient
@testable import CacheTiers
import CacheTiersTesting
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import SystemPackage
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// What a hostile tester found on the VM's side of fleet monitoring (attack 14): the
/// metrics file written over special files, `stats` trusting what a master sends, and
/// failures printed as type names.
@Suite struct FleetClientHardeningTests {
    static let report = RestoreReport(
        key: try! CacheKey("k"), outcome: .restored, servedBy: "plain", destination: "/d", durationSeconds: 2, bytesTransferred: 0,
        estimatedCostUSD: nil, attempts: [], writeBack: []
    )

    static func kind(_ path: FilePath) -> mode_t? {
        var info = stat()
        return lstat(path.string, &info) == 0 ? info.st_mode & S_IFMT : nil
    }

    // MARK: F1: the metrics file replaces only a regular file

    @Test func theMetricsFileLeavesAFIFOASymlinkAndADeviceAsTheyAre() throws {
        let scratch = try TemporaryDirectory(prefix: "textfile-special")
        defer { scratch.remove() }
        let fifo = scratch.path.appending("fifo.prom")
        #expect(mkfifo(fifo.string, 0o644) == 0)
        let link = scratch.path.appending("null.prom")
        #expect(symlink("/dev/null", link.string) == 0)
        var special: [(FilePath, mode_t)] = [(fifo, S_IFIFO), (link, S_IFLNK)]
        // A device of our own, never one in /dev: /dev/null's numbers (1, 3), made here as root.
        let device = scratch.path.appending("null-device.prom")
        if mknod(device.string, S_IFCHR | 0o666, dev_t(1 << 8 | 3)) == 0 { special.append((device, S_IFCHR)) }

        for (path, kind) in special {
            do {
                try RestoreTextfile(path: path, tiers: ["plain"]).write(Self.report)
                Issue.record("\(path) was written over")
            } catch {
                #expect("\(error)".contains("not a regular file; left as it is"), "\(error)")
                #expect(!"\(error)".contains("\n"))
            }
            #expect(Self.kind(path) == kind, "\(path) is still what it was")
        }
        #expect((try? FileManager.default.destinationOfSymbolicLink(atPath: link.string)) == "/dev/null", "the link still points where it did")
        #expect(Self.kind("/dev/null") == S_IFCHR, "and what it points to is untouched")
        #expect(try FileManager.default.contentsOfDirectory(atPath: scratch.path.string).count == special.count, "no temporary left")

        // A regular file, or none, is still written.
        let plain = scratch.path.appending("plain.prom")
        try RestoreTextfile(path: plain, tiers: ["plain"]).write(Self.report)
        try RestoreTextfile(path: plain, tiers: ["plain"]).write(Self.report)
        #expect(Self.kind(plain) == S_IFREG)
        #expect(try String(contentsOfFile: plain.string, encoding: .utf8).contains(#"cachetiers_restore_last_served_by{tier="plain"} 1"#))
    }

    @Test func restoreWithAMetricsFileOnASymlinkWarnsOnceAndKeepsTheLink() async throws {
        let scene = try await FleetMonitoringTests.Scene(peerURL: CommandLineEndToEndTests.deadURL, report: ["enabled": false])
        defer { scene.remove() }
        let link = scene.scratch.path.appending("stdout.prom")
        #expect(symlink("/dev/null", link.string) == 0)
        let run = try await FleetMonitoringTests().restore(scene, ["--metrics-file", link.string])
        #expect(run.status == 0, "\(run.stderr)")
        let warnings = FleetMonitoringTests().warnings(run.stderr)
        #expect(warnings.count == 1, "\(run.stderr)")
        #expect(warnings.first?.contains("metrics file not written") == true && warnings.first?.contains("a symbolic link") == true, "\(run.stderr)")
        #expect(Self.kind(link) == S_IFLNK)
        #expect(Self.kind("/dev/null") == S_IFCHR)
    }

    // MARK: F3, F12: stats gives up in time, and says why in words

    @Test func statsGivesUpOnAMasterThatTricklesItsBody() async throws {
        let router = Router()
        router.get("/v1/stats") { _, _ -> Response in
            Response(
                status: .ok,
                body: ResponseBody { writer in
                    for _ in 0..<600 {
                        try await writer.write(ByteBuffer(string: " "))
                        try await Task.sleep(for: .milliseconds(100))
                    }
                    try await writer.finish(nil)
                }
            )
        }
        try await FakeHTTPServer.with(router) { url in
            let started = ContinuousClock.now
            await #expect {
                _ = try await FleetStatsClient(peer: url, timeout: .seconds(1)).fetch(window: "1h", token: nil)
            } throws: { error in
                "\(error)" == "cannot reach \(url): no complete answer within 1 s"
            }
            #expect(ContinuousClock.now - started < .seconds(30), "a hang guard, not a timing claim")
        }
    }

    @Test func statsFailuresArePlainLinesAndARedirectIsNotFollowed() async throws {
        let router = Router()
        router.get("/big/v1/stats") { _, _ -> Response in
            Response(status: .ok, body: .init(byteBuffer: ByteBuffer(repeating: UInt8(ascii: "x"), count: 4096)))
        }
        router.get("/moved/v1/stats") { _, _ -> Response in
            Response(status: .found, headers: [.location: "http://10.9.9.9:7420/v1/stats"])
        }
        try await FakeHTTPServer.with(router) { url in
            func failure(_ peer: String) async -> String {
                do {
                    _ = try await FleetStatsClient(peer: peer, maxBytes: 1024).fetch(window: "1h", token: nil)
                    return "no failure"
                } catch {
                    return error.description
                }
            }
            #expect(await failure(url + "/big") == "cannot reach \(url)/big: the answer is larger than 1024 bytes")
            let moved = await failure(url + "/moved")
            #expect(moved.hasPrefix("\(url)/moved answered 302, a redirect to http://10.9.9.9:7420/v1/stats"), "\(moved)")
            let refused = await failure(CommandLineEndToEndTests.deadURL)
            #expect(refused.contains("the connection was refused"), "\(refused)")
            for line in [moved, refused] {
                #expect(!line.contains("Error") && !line.contains("errno") && !line.contains("Optional"), "\(line)")
            }
        }
    }

    @Test func statsCommandPrintsThoseLinesAndBlamesNoWrongHost() async throws {
        let router = Router()
        router.get("/big/v1/stats") { _, _ -> Response in
            Response(status: .ok, body: .init(byteBuffer: ByteBuffer(repeating: UInt8(ascii: "x"), count: (4 << 20) + 1)))
        }
        router.get("/elsewhere/v1/stats") { _, _ -> Response in Response(status: .internalServerError) }
        router.get("/moved/v1/stats") { _, _ -> Response in Response(status: .found, headers: [.location: "/elsewhere/v1/stats"]) }
        try await FakeHTTPServer.with(router) { url in
            let big = try await Fixtures.cli(["stats", "--peer", url + "/big"])
            #expect(big.status == 1)
            #expect(big.stderr == "cachetiers: stats: cannot reach \(url)/big: the answer is larger than 4 MiB\n", "\(big.stderr)")
            let moved = try await Fixtures.cli(["stats", "--peer", url + "/moved"])
            #expect(moved.status == 1)
            #expect(moved.stderr.contains("\(url)/moved answered 302, a redirect to /elsewhere/v1/stats"), "\(moved.stderr)")
            #expect(!moved.stderr.contains("answered 500"), "the redirect is not followed: \(moved.stderr)")
        }
    }

    // MARK: F9, F10: the table escapes what the master sent and cuts no number

    @Test func statsEscapesWhatTheMasterSentAndCutsNoNumber() async throws {
        let hostile = "cm\u{1B}[2J\u{1B}]0;title\u{07}\nFake line: 100 %\r\u{2028}\u{202E}x\u{200B}"
        let stats: [String: Any] = [
            "window": 3600, "restores": 1, "restored": 1, "failed": 0, "successRate": 1,
            "durationSeconds": ["p50": 1, "p90": 1, "p99": 1],
            "byTier": [["tier": hostile, "restores": 1, "share": 1, "p50": 1, "p90": 1, "p99": 1, "bytes": 10, "estimatedCostUSD": 1]],
            "fallbacks": 0, "bytes": 10, "estimatedCostUSD": 1, "projectedMonthlyCostUSD": 1080,
            "topKeys": [["key": hostile, "count": 1]], "topMissedKeys": [],
            "targets": [
                ["name": "monthlyCost", "target": "under 10 USD", "value": 1080, "met": false],
                ["name": "transfer", "target": "p90 under 90 s", "value": 30_000_000.5, "met": false],
                ["name": hostile, "target": hostile, "value": NSNull(), "met": NSNull(), "note": hostile],
            ],
        ]
        let body = try JSONSerialization.data(withJSONObject: stats)
        let router = Router()
        router.get("/v1/stats") { _, _ -> Response in Response(status: .ok, body: .init(byteBuffer: ByteBuffer(bytes: body))) }
        try await FakeHTTPServer.with(router) { url in
            let run = try await Fixtures.cli(["stats", "--peer", url])
            #expect(run.status == 0, "\(run.stderr)")
            for scalar in ["\u{1B}", "\u{07}", "\r", "\u{2028}", "\u{202E}", "\u{200B}"] {
                #expect(!run.stdout.contains(scalar), "U+\(String(scalar.unicodeScalars.first!.value, radix: 16)) reaches the terminal")
            }
            #expect(!run.stdout.contains("\nFake line"), "no forged line")
            #expect(run.stdout.contains(#"cm\u{1B}[2J\u{1B}]0;title\u{7} Fake line: 100 % \u{2028}\u{202E}x\u{200B}"#), "\(run.stdout)")
            #expect(run.stdout.contains("1080.0000 USD NOT MET"), "\(run.stdout)")
            #expect(run.stdout.contains("30000000.5 s "), "\(run.stdout)")
        }
    }
}
