import CacheTiers
import CacheTiersTesting
import Foundation
import SystemPackage
import Testing

/// `cachetiers serve` and `cachetiers publish` as an operator runs them.
@Suite struct ServeCommandTests {
    /// The bearer header is not rate-limited, so a guessable token is said at start, once,
    /// and a strong one is not (attack 15, F1).
    @Test func aShortTokenIsWarnedAboutAtStart() async throws {
        let scratch = try TemporaryDirectory(prefix: "serve-short")
        defer { scratch.remove() }
        let short = scratch.path.appending("short.token").string
        let strong = scratch.path.appending("strong.token").string
        try Data("short\n".utf8).write(to: URL(fileURLWithPath: short))
        try Data("n0G8mXc1qLr5TzVb2WkYpHs3Jd7Ea9Uf\n".utf8).write(to: URL(fileURLWithPath: strong))

        let weak = try ServeProcess(["--root", scratch.path.appending("a").string, "--token-file", short])
        #expect(weak.stop() == 0)
        let warnings = weak.stderr.split(separator: "\n").filter { $0.hasPrefix("cachetiers: warning:") }
        #expect(warnings == [
            "cachetiers: warning: the token in --token-file \(short) is 5 characters, which a client on the network can guess; use at least 16 random ones (head -c 32 /dev/urandom | base64 > \(short))"
        ])
        let good = try ServeProcess(["--root", scratch.path.appending("b").string, "--token-file", strong])
        #expect(good.stop() == 0)
        #expect(!good.stderr.contains("warning: the token"))
    }

    @Test func serveAnnouncesItsAddressServesPublishesAndStopsCleanlyOnSIGTERM() async throws {
        let scratch = try TemporaryDirectory(prefix: "serve")
        defer { scratch.remove() }
        let tokenFile = scratch.path.appending("token").string
        try Data("t0ken\n".utf8).write(to: URL(fileURLWithPath: tokenFile))

        let serve = try ServeProcess(["--root", scratch.path.appending("root").string, "--token-file", tokenFile])
        #expect(serve.url.hasPrefix("http://127.0.0.1:"), "\(serve.url)")
        let url = serve.url

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

        #expect(serve.stop() == 0, "SIGTERM is a clean stop")
        #expect(serve.process.terminationReason == .exit)
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: scratch.path.appending("root").string).sorted()
        #expect(leftovers == [".cachetiers", "served.tar.zst", "served.tar.zst.manifest.json"], "the archives and the report database")
    }
}
