import AsyncHTTPClient
import CacheTiers
import CacheTiersServer
import CacheTiersTesting
import Foundation
import NIOHTTP1
import SystemPackage
import Testing

/// The cache master's HTTP API, request by request.
@Suite(.serialized) struct CacheMasterRouteTests {
    func published(_ peer: PeerHarness, large: Bool = false) async throws -> (CacheKey, CacheManifest, [UInt8]) {
        let tree = peer.scratch.path.appending("tree")
        try SampleTree.write(to: tree, files: 50)
        if large {
            // Incompressible, and larger than loopback socket buffers: the server must wait on the reader.
            var generator = SystemRandomNumberGenerator()
            let noise = (0..<(24 << 20) / 8).map { _ in generator.next() as UInt64 }
            try noise.withUnsafeBytes { try Data($0).write(to: URL(fileURLWithPath: tree.appending("native/big.node").string)) }
        }
        let key = try CacheKey("api")
        let manifest = try await peer.publish(tree, as: key)
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: peer.scratch.path.appending("root/api.tar.zst").string)))
        return (key, manifest, bytes)
    }

    @Test func aReaderMidStreamFinishesTheArchiveItStartedWhenAPublishReplacesIt() async throws {
        try await PeerHarness.with { peer in
            // 24 MiB that do not compress, through a 4 MB/s link (6 s: on a busy 2-core machine packing and
            // uploading the replacement has seconds to land before half is streamed): the server is still
            // reading the old file from disk when the replacement lands.
            let (key, manifest, _) = try await published(peer, large: true)
            let expected = try TreeSnapshot(of: peer.scratch.path.appending("tree"))
            let proxy = try FaultInjectingProxy(upstreamPort: peer.port, fault: .bandwidth(bytesPerSecond: 4_000_000))
            defer { proxy.stop() }
            let source = VMPeerSource(configuration: .init(peers: [proxy.url]))
            let staging = try peer.scratch.makeDirectory("staging")
            let progress = TransferProgress()
            let restore = Task {
                try await source.restore(RestoreRequest(key: key), into: staging, progress: progress, logger: PeerHarness.quietLogger)
            }
            while progress.snapshot.completed < 1 << 20 { try await Task.sleep(for: .milliseconds(5)) }

            let new = peer.scratch.path.appending("new")
            try SampleTree.write(to: new, seed: 3, files: 40)
            let file = peer.scratch.path.appending("new.tar.zst")
            let replacement = try await ArchivePacker().pack(new, key: key, to: file, logger: PeerHarness.quietLogger)
            let put = try await peer.send(
                .PUT, "/v1/caches/\(key)",
                headers: [("X-CacheTiers-Manifest", try replacement.jsonData().base64EncodedString())],
                body: [UInt8](try Data(contentsOf: URL(fileURLWithPath: file.string)))
            )
            #expect(put.status == 200)
            #expect(progress.snapshot.completed < manifest.archiveSize / 2, "replaced with most of the old archive still to stream")

            let outcome = try await restore.value
            try await source.shutdown()
            guard case .restored(let details) = outcome else { Issue.record("expected a restore, got \(outcome)"); return }
            #expect(details.bytesTransferred == manifest.archiveSize, "one stream to the end, no restart")
            #expect(try TreeSnapshot(of: staging).differences(from: expected) == [], "the old tree, whole")
        }
    }

    @Test func getHeadAndManifest() async throws {
        try await PeerHarness.with { peer in
            let (_, manifest, bytes) = try await published(peer)
            let get = try await peer.send(.GET, "/v1/caches/api")
            #expect(get.status == 200)
            #expect(get.body == bytes)
            #expect(get.headers.first(name: "ETag") == "\"\(manifest.archiveSHA256)\"")
            #expect(get.headers.first(name: "Accept-Ranges") == "bytes")
            #expect(get.headers.first(name: "Content-Length") == "\(bytes.count)")
            let head = try await peer.send(.HEAD, "/v1/caches/api")
            #expect(head.status == 200 && head.body.isEmpty)
            #expect(head.headers.first(name: "Content-Length") == "\(bytes.count)")
            let json = try await peer.send(.GET, "/v1/caches/api/manifest")
            #expect(try CacheManifest(jsonData: Data(json.body)) == manifest)
        }
    }

    @Test func rangesAndPreconditions() async throws {
        try await PeerHarness.with { peer in
            let (_, manifest, bytes) = try await published(peer)
            let part = try await peer.send(.GET, "/v1/caches/api", headers: [("Range", "bytes=100-199")])
            #expect(part.status == 206)
            #expect(part.body == Array(bytes[100...199]))
            #expect(part.headers.first(name: "Content-Range") == "bytes 100-199/\(bytes.count)")
            let tail = try await peer.send(.GET, "/v1/caches/api", headers: [("Range", "bytes=-10")])
            #expect(tail.body == Array(bytes.suffix(10)))
            let open = try await peer.send(.GET, "/v1/caches/api", headers: [("Range", "bytes=\(bytes.count - 5)-")])
            #expect(open.body == Array(bytes.suffix(5)))
            let outside = try await peer.send(.GET, "/v1/caches/api", headers: [("Range", "bytes=\(bytes.count)-")])
            #expect(outside.status == 416)
            #expect(outside.headers.first(name: "Content-Range") == "bytes */\(bytes.count)")
            let matching = try await peer.send(.GET, "/v1/caches/api", headers: [("If-Match", "\"\(manifest.archiveSHA256)\"")])
            #expect(matching.status == 200)
            let stale = try await peer.send(.GET, "/v1/caches/api", headers: [("If-Match", "\"0000\"")])
            #expect(stale.status == 412)
        }
    }

    @Test func errorsForBadKeysUnknownRoutesAndMissingCaches() async throws {
        try await PeerHarness.with { peer in
            #expect(try await peer.send(.GET, "/v1/caches/..%2Fetc").status == 400)
            #expect(try await peer.send(.GET, "/v1/caches/.hidden").status == 400)
            #expect(try await peer.send(.GET, "/v1/caches/absent").status == 404)
            #expect(try await peer.send(.GET, "/v2/whatever").status == 404)
            #expect(try await peer.send(.GET, "/healthz").status == 200)
            let metrics = try await peer.send(.GET, "/metrics")
            let text = String(decoding: metrics.body, as: UTF8.self)
            #expect(text.contains("cachetiers_server_requests_total"))
            #expect(text.contains("cachetiers_server_active_transfers"))
        }
    }

    @Test func aBadUploadLeavesNothingBehind() async throws {
        try await PeerHarness.with { peer in
            let (_, manifest, bytes) = try await published(peer)
            var other = manifest
            other.key = try CacheKey("other")
            let header = try other.jsonData().base64EncodedString()
            var damaged = bytes
            damaged[damaged.count / 2] ^= 1
            let wrongHash = try await peer.send(.PUT, "/v1/caches/other", headers: [("X-CacheTiers-Manifest", header)], body: damaged)
            #expect(wrongHash.status == 400)
            #expect(String(decoding: wrongHash.body, as: UTF8.self).contains("SHA-256"))
            let short = try await peer.send(.PUT, "/v1/caches/other", headers: [("X-CacheTiers-Manifest", header)], body: Array(bytes.prefix(100)))
            #expect(short.status == 400)
            let mismatched = try await peer.send(.PUT, "/v1/caches/api2", headers: [("X-CacheTiers-Manifest", header)], body: bytes)
            #expect(mismatched.status == 400, "the manifest names another key")
            let names = try FileManager.default.contentsOfDirectory(atPath: peer.scratch.path.appending("root").string).sorted()
            #expect(names == [".cachetiers", "api.tar.zst", "api.tar.zst.manifest.json"], "no half object: \(names)")
            #expect(try await peer.send(.GET, "/v1/caches/other").status == 404)
        }
    }

    @Test func aServerStartingAfterACrashMovesHalfPublishedKeysAsideSoTheyCanBePublishedAgain() async throws {
        let scratch = try TemporaryDirectory(prefix: "crashed")
        defer { scratch.remove() }
        let root = try scratch.makeDirectory("root")
        let tree = scratch.path.appending("tree")
        try SampleTree.write(to: tree, files: 20)
        let good = try CacheKey("good")
        let packed = scratch.path.appending("good.tar.zst")
        let manifest = try await ArchivePacker().pack(tree, key: good, to: packed, logger: PeerHarness.quietLogger)
        let bytes = try Data(contentsOf: URL(fileURLWithPath: packed.string))
        func put(_ name: String, _ data: Data) throws { try data.write(to: URL(fileURLWithPath: root.appending(name).string)) }
        try put("good.tar.zst", bytes)
        try put("good.tar.zst.manifest.json", try manifest.jsonData())
        try put("orphan.tar.zst", bytes)  // killed between linking the archive and renaming its manifest
        var cut = manifest
        cut.key = try CacheKey("cut")
        try put("cut.tar.zst", bytes.prefix(1000))  // a replace killed between its two renames
        try put("cut.tar.zst.manifest.json", try cut.jsonData())
        try put("lone.tar.zst.manifest.json", try manifest.jsonData())
        // Scratch files of an upload whose server was killed (its process is gone).
        let gone = "\(try Fixtures.processIDOfAFinishedProcess())@\(Fixtures.hostName)"
        try put(".good.tar.zst.partial-\(gone)-1a", bytes.prefix(10))
        try put(".good.manifest.partial-\(gone)-2b", bytes.prefix(10))
        let running = ".good.tar.zst.partial-1@\(Fixtures.hostName)-3c"  // a publish of a process still running
        try put(running, bytes.prefix(10))
        try put("README.txt", Data("the operator's notes".utf8))  // not the server's: left alone
        try put("Not A Key.tar.zst", bytes)

        // Grace period zero: every file above counts as settled (a crash, long ago).
        let server = CacheMasterServer(
            configuration: .init(root: root, port: 0, orphanGracePeriod: .zero), logger: PeerHarness.quietLogger
        )
        let url = try await server.start()
        let names = try FileManager.default.contentsOfDirectory(atPath: root.string).sorted()
        #expect(names == [running, ".cachetiers", ".quarantine", "Not A Key.tar.zst", "README.txt", "good.tar.zst", "good.tar.zst.manifest.json"].sorted())
        let quarantined = try FileManager.default.contentsOfDirectory(atPath: root.appending(".quarantine").string).sorted()
        #expect(
            quarantined == ["cut.tar.zst", "cut.tar.zst.manifest.json", "lone.tar.zst.manifest.json", "orphan.tar.zst"],
            "doubtful files are moved aside, not deleted"
        )

        let peer = VMPeerSource(configuration: .init(peers: [url]))
        var orphan = manifest
        orphan.key = try CacheKey("orphan")
        let outcome = try await peer.publish(PackedArchive(file: packed, manifest: orphan), logger: PeerHarness.quietLogger)
        #expect(outcome == .published, "the key is free again instead of 412 for good")
        let staging = try scratch.makeDirectory("staging")
        let restored = try await peer.restore(RestoreRequest(key: orphan.key), into: staging, progress: .init(), logger: PeerHarness.quietLogger)
        guard case .restored = restored else { Issue.record("expected a restore, got \(restored)"); return }
        #expect(try TreeSnapshot(of: staging).differences(from: TreeSnapshot(of: tree)) == [])
        try await peer.shutdown()
        await server.stop()
    }

    @Test func createOnlyPublishingReportsExists() async throws {
        try await PeerHarness.with { peer in
            let (_, manifest, bytes) = try await published(peer)
            let header = try manifest.jsonData().base64EncodedString()
            let again = try await peer.send(
                .PUT, "/v1/caches/api", headers: [("X-CacheTiers-Manifest", header), ("If-None-Match", "*")], body: bytes
            )
            #expect(again.status == 412)
            let replace = try await peer.send(.PUT, "/v1/caches/api", headers: [("X-CacheTiers-Manifest", header)], body: bytes)
            #expect(replace.status == 200, "without If-None-Match a publish replaces")
        }
    }

    @Test func beyondTheTransferLimitTheServerAnswers503WithRetryAfter() async throws {
        try await PeerHarness.with(maxTransfers: 1) { peer in
            _ = try await published(peer, large: true)
            // Hold the only slot with a download trickling through a proxy.
            let proxy = try FaultInjectingProxy(upstreamPort: peer.port, fault: .trickle(afterBytes: 1000, interval: .milliseconds(200)))
            defer { proxy.stop() }
            let (headers, signal) = AsyncStream.makeStream(of: Int.self)
            let slow = Task {
                var request = HTTPClientRequest(url: proxy.url + "/v1/caches/api")
                request.method = .GET
                let response = try await HTTPClient.shared.execute(request, timeout: .seconds(60))
                signal.yield(Int(response.status.code))
                for try await _ in response.body {}
            }
            defer { slow.cancel() }
            var firstStatus: Int?
            for await status in headers {
                firstStatus = status
                break
            }
            #expect(firstStatus == 200, "the slow download holds the only slot")
            let busy = try await peer.send(.GET, "/v1/caches/api")
            #expect(busy.status == 503)
            #expect(busy.headers.first(name: "Retry-After") == "1")
        }
    }

    /// HEAD on the read-only routes answers what GET would, without the body (attack 15,
    /// F4): a load balancer probing `HEAD /healthz` must see the master up.
    @Test func headAnswersTheReadRoutesAsGetWould() async throws {
        try await PeerHarness.with(token: "head-token-0123456789") { peer in
            let bearer = [("Authorization", "Bearer head-token-0123456789")]
            for path in ["/healthz", "/v1/stats?window=1h", "/?window=1h", "/v1/dashboard?window=1h"] {
                let get = try await peer.send(.GET, path, headers: bearer)
                let head = try await peer.send(.HEAD, path, headers: bearer)
                #expect(get.status == 200 && head.status == 200, "\(path): GET \(get.status), HEAD \(head.status)")
                #expect(head.body.isEmpty, "\(path)")
                #expect(head.headers["Content-Type"] == get.headers["Content-Type"], "\(path)")
            }
            #expect(try await peer.send(.HEAD, "/healthz").status == 200, "the health check needs no token")
            #expect(try await peer.send(.HEAD, "/v1/stats?window=1h").status == 401, "HEAD needs the token GET needs")
        }
    }
}
