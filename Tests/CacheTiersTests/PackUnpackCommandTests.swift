import CacheTiers
import CacheTiersTesting
import Foundation
import SystemPackage
import Testing

/// `cachetiers pack` and `cachetiers unpack` as an operator runs them.
@Suite struct PackUnpackCommandTests {
    @Test func packThenUnpackRestoresTheTree() async throws {
        let scratch = try TemporaryDirectory(prefix: "cli")
        defer { scratch.remove() }
        let tree = scratch.path.appending("tree")
        try SampleTree.write(to: tree)
        let archive = scratch.path.appending("deps.tar.zst").string

        let pack = try await Fixtures.cli(["pack", tree.string, "--output", archive, "--json"])
        #expect(pack.status == 0, "\(pack.stderr)")
        let summary = try #require(try JSONSerialization.jsonObject(with: Data(pack.stdout.utf8)) as? [String: Any])
        for field in ["entries", "bytesIn", "bytesOut", "ratio", "seconds", "sha256"] {
            #expect(summary[field] != nil, "--json lacks \(field)")
        }
        let manifest = try CacheManifest(jsonData: Data(contentsOf: URL(fileURLWithPath: archive + ".manifest.json")))
        #expect(manifest.archiveSHA256 == summary["sha256"] as? String)
        #expect(manifest.key.rawValue == "deps")

        let destination = scratch.path.appending("restored").string
        let unpack = try await Fixtures.cli(["unpack", archive, "--into", destination])
        #expect(unpack.status == 0, "\(unpack.stderr)")
        #expect(unpack.stdout.contains("verified against"))
        #expect(try TreeSnapshot(of: FilePath(destination)).differences(from: TreeSnapshot(of: tree), comparingTimes: true) == [])
    }

    @Test func aBadArchiveExitsOneWithAOneLineReasonAndTouchesNothing() async throws {
        let scratch = try TemporaryDirectory(prefix: "cli")
        defer { scratch.remove() }
        let destination = scratch.path.appending("node_modules")
        try SampleTree.write(to: destination, seed: 4, files: 3)
        let before = try TreeSnapshot(of: destination)
        let archive = scratch.path.appending("junk.tar.zst")
        try Data([0x28, 0xB5, 0x2F, 0xFD] + Array(repeating: 0x42, count: 200)).write(to: URL(fileURLWithPath: archive.string))

        let result = try await Fixtures.cli(["unpack", archive.string, "--into", destination.string])
        #expect(result.status == 1)
        #expect(result.stderr.split(separator: "\n").count == 1, "one line: \(result.stderr)")
        #expect(result.stderr.contains("corrupt") && result.stderr.contains("unchanged"))
        #expect(try TreeSnapshot(of: destination).differences(from: before) == [])
    }

    @Test func aWrongChecksumExitsOne() async throws {
        let scratch = try TemporaryDirectory(prefix: "cli")
        defer { scratch.remove() }
        let tree = scratch.path.appending("tree")
        try SampleTree.write(to: tree)
        let archive = scratch.path.appending("a.tar.zst").string
        #expect(try await Fixtures.cli(["pack", tree.string, "--output", archive]).status == 0)
        let result = try await Fixtures.cli([
            "unpack", archive, "--into", scratch.path.appending("out").string, "--sha256", String(repeating: "0", count: 64),
        ])
        #expect(result.status == 1)
        #expect(result.stderr.contains("SHA-256"))
        #expect(!FileManager.default.fileExists(atPath: scratch.path.appending("out").string))
    }

    @Test(arguments: [
        ["unpack", "x.tar.zst"],
        ["pack", "dir"],
        ["pack", ".", "--output", "a.tar.zst", "--level", "42"],
        ["unpack", "x.tar.zst", "--into", "d", "--sha256", "abc"],
        ["no-such-command"],
    ])
    func usageErrorsExitTwo(_ arguments: [String]) async throws {
        let result = try await Fixtures.cli(arguments)
        #expect(result.status == 2, "\(arguments): \(result.stderr)")
        #expect(!result.stderr.isEmpty)
    }
}
