import CacheTiers
import CacheTiersTesting
import Foundation
import SystemPackage
import Testing

/// `cachetiers serve` and `cachetiers publish` as an operator runs them.
@Suite struct ServeCommandTests {
    @Test func serveAnnouncesItsAddressServesPublishesAndStopsCleanlyOnSIGTERM() async throws {
        let scratch = try TemporaryDirectory(prefix: "serve")
        defer { scratch.remove() }
        let tokenFile = scratch.path.appending("token").string
        try Data("t0ken\n".utf8).write(to: URL(fileURLWithPath: tokenFile))

        let process = Process()
        process.executableURL = URL(fileURLWithPath: Fixtures.cliPath)
        process.arguments = ["serve", "--root", scratch.path.appending("root").string, "--port", "0", "--token-file", tokenFile]
        let output = Pipe()
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        try process.run()
        defer { if process.isRunning { process.terminate() } }

        // The first line on stdout names the address; read it without a fixed sleep.
        var line = Data()
        while !line.contains(UInt8(ascii: "\n")) {
            let chunk = output.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            line.append(chunk)
        }
        let first = String(decoding: line, as: UTF8.self).split(separator: "\n").first.map(String.init) ?? ""
        #expect(first.hasPrefix("listening on http://127.0.0.1:"), "\(first)")
        let url = String(first.dropFirst("listening on ".count))

        let tree = scratch.path.appending("tree")
        try SampleTree.write(to: tree)
        let publish = try await Fixtures.cli(["publish", tree.string, "--key", "served", "--peer", url, "--token-file", tokenFile])
        #expect(publish.status == 0, "\(publish.stderr)")
        #expect(publish.stdout.contains("published served"))
        let again = try await Fixtures.cli(["publish", tree.string, "--key", "served", "--peer", url, "--token-file", tokenFile])
        #expect(again.status == 0)
        #expect(again.stdout.contains("already"))
        let refused = try await Fixtures.cli(["publish", tree.string, "--key", "other", "--peer", url])
        #expect(refused.status == 1)
        #expect(refused.stderr.contains("401"))

        let source = VMPeerSource(configuration: .init(peers: [url], token: "t0ken"))
        let staging = try scratch.makeDirectory("staging")
        let outcome = try await source.restore(RestoreRequest(key: CacheKey("served")), into: staging, progress: .init(), logger: PeerHarness.quietLogger)
        try await source.shutdown()
        guard case .restored = outcome else { Issue.record("expected a restore, got \(outcome)"); return }
        #expect(try TreeSnapshot(of: staging).differences(from: TreeSnapshot(of: tree)) == [])

        process.terminate()  // SIGTERM
        process.waitUntilExit()
        #expect(process.terminationReason == .exit)
        #expect(process.terminationStatus == 0)
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: scratch.path.appending("root").string).sorted()
        #expect(leftovers == ["served.tar.zst", "served.tar.zst.manifest.json"])
    }
}
