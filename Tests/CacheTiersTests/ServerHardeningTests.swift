import AsyncHTTPClient
import CacheTiers
import CacheTiersServer
import CacheTiersTesting
import Crypto
import Foundation
import Logging
import NIOCore
import SystemPackage
import Testing

/// The cache master against requests no client of ours sends: absurd ranges, silent and
/// half-sent connections, floods of sockets, and replacing publishes racing readers.
@Suite(.serialized) struct ServerHardeningTests {
    static func hex(_ bytes: [UInt8]) -> String {
        SHA256.hash(data: bytes).map { String(format: "%02x", $0) }.joined()
    }

    /// A blob and the manifest a PUT needs for it (the server checks size and digest, not contents).
    static func upload(_ bytes: [UInt8], key: CacheKey) -> (header: String, manifest: CacheManifest) {
        let manifest = CacheManifest(
            key: key, archiveSHA256: hex(bytes), archiveSize: Int64(bytes.count), codec: "zstd", level: 1,
            uncompressedSize: Int64(bytes.count), entryCount: 1
        )
        return (try! manifest.jsonData().base64EncodedString(), manifest)
    }

    @Test(arguments: [
        ("bytes=0-9223372036854775807", 206, "whole"),
        ("bytes=10-9223372036854775807", 206, "from 10"),
        ("bytes=0-99999999999999999999999", 206, "whole"),
        ("bytes=-9223372036854775807", 206, "whole"),
        ("bytes=-99999999999999999999999", 206, "whole"),
        ("bytes=9223372036854775807-", 416, ""),
        ("bytes=99999999999999999999999-", 416, ""),
        ("bytes=9223372036854775807-9223372036854775807", 416, ""),
        ("bytes=+5-10", 200, "whole"),
        ("bytes=5--10", 200, "whole"),
        ("bytes=0-1,5-6", 200, "whole"),
    ])
    func absurdRangesAreClampedOrRefusedAndNeverStopTheServer(range: String, status: Int, body: String) async throws {
        try await PeerHarness.with { peer in
            let bytes = (0..<1000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
            let key = try CacheKey("ranges")
            let (header, _) = Self.upload(bytes, key: key)
            #expect(try await peer.send(.PUT, "/v1/caches/ranges", headers: [("X-CacheTiers-Manifest", header)], body: bytes).status == 201)

            let head = try await peer.send(.HEAD, "/v1/caches/ranges", headers: [("Range", range)])
            #expect(head.status == status, "HEAD \(range)")
            let get = try await peer.send(.GET, "/v1/caches/ranges", headers: [("Range", range)])
            #expect(get.status == status, "GET \(range)")
            switch body {
            case "whole": #expect(get.body == bytes)
            case "from 10": #expect(get.body == Array(bytes[10...]))
            default: #expect(get.headers.first(name: "Content-Range") == "bytes */1000")
            }
            #expect(try await peer.send(.GET, "/healthz").status == 200, "the server is still up after \(range)")
        }
    }

    /// A server whose idle timeout is short enough to watch.
    static func withServer<T>(
        idleTimeout: Duration = .seconds(1),
        maxConnections: Int = 512,
        _ body: (_ port: Int, _ url: String) async throws -> T
    ) async throws -> T {
        let scratch = try TemporaryDirectory(prefix: "hardening")
        defer { scratch.remove() }
        let server = CacheMasterServer(
            configuration: .init(
                root: scratch.path.appending("root"), port: 0, maxConcurrentTransfers: 1, idleTimeout: idleTimeout,
                maxConnections: maxConnections
            ),
            logger: PeerHarness.quietLogger
        )
        let url = try await server.start()
        do {
            let value = try await body(Int(url.split(separator: ":").last!)!, url)
            await server.stop()
            return value
        } catch {
            await server.stop()
            throw error
        }
    }

    @Test func connectionsThatSendNothingOrHalfARequestAreClosed() async throws {
        try await Self.withServer(idleTimeout: .seconds(1)) { port, _ in
            let silent = try RawConnection(port: port)
            let half = try RawConnection(port: port)
            half.send("GET /v1/caches/some-key HTTP/1.1\r\nHost: 127.0")
            let idleAfterRequest = try RawConnection(port: port)
            idleAfterRequest.send("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            // Generous waits: what is asserted is that the server hangs up at all, where
            // before it held such connections for minutes.
            let outcomes = try await Fixtures.offThePool {
                [silent.readUntilClosed(idleSeconds: 20), half.readUntilClosed(idleSeconds: 20), idleAfterRequest.readUntilClosed(idleSeconds: 20)]
            }
            #expect(outcomes[0] == ("", true), "a connection that sends nothing is closed")
            #expect(outcomes[1].closed, "half a request head is not waited on forever")
            #expect(outcomes[2].text.contains("200 OK") && outcomes[2].closed, "an idle keep-alive connection is closed after its answer")
        }
    }

    @Test func beyondTheConnectionCapNewConnectionsWaitInsteadOfExhaustingDescriptors() async throws {
        try await Self.withServer(idleTimeout: .seconds(60), maxConnections: 3) { port, _ in
            let held = try (0..<3).map { _ in try RawConnection(port: port) }
            // Make sure the server has taken all three before the fourth arrives.
            for connection in held {
                connection.send("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                guard case .data(let text) = try await Fixtures.offThePool({ connection.read(within: 20) }), text.contains("200") else {
                    Issue.record("a held connection got no answer")
                    return
                }
            }
            let waiting = try RawConnection(port: port)
            waiting.send("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            let early = try await Fixtures.offThePool { waiting.read(within: 1.5) }
            #expect(early == .silent, "a fourth connection is not served while three are open")
            _ = held[0].descriptor
            shutdown(held[0].descriptor, Int32(SHUT_RDWR))
            let late = try await Fixtures.offThePool { waiting.read(within: 20) }
            guard case .data(let text) = late else {
                Issue.record("the waiting connection was never served: \(late)")
                return
            }
            #expect(text.contains("200 OK"), "once one closes, the waiting connection is served")
        }
    }

    @Test func responsesNeverMixTheHeadersOfOneArchiveWithTheBodyOfAnother() async throws {
        try await Self.withServer(idleTimeout: .seconds(30)) { port, url in
            let key = try CacheKey("racing")
            // Two archives of exactly the same size: only the digest tells them apart.
            let first = [UInt8]((0..<(1 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 7) })
            let second = [UInt8]((0..<(1 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ 1) })
            let uploads = [Self.upload(first, key: key), Self.upload(second, key: key)]
            let bodies = [first, second]
            let client = HTTPClient(eventLoopGroupProvider: .singleton)
            defer { _ = client.shutdown() }
            func put(_ index: Int) async throws {
                var request = HTTPClientRequest(url: "\(url)/v1/caches/racing")
                request.method = .PUT
                request.headers.add(name: "X-CacheTiers-Manifest", value: uploads[index].header)
                request.body = .bytes(ByteBuffer(bytes: bodies[index]))
                let response = try await client.execute(request, timeout: .seconds(60))
                _ = try await response.body.collect(upTo: 1 << 20)
            }
            try await put(0)
            let mismatches = try await withThrowingTaskGroup(of: [String].self) { group in
                group.addTask {
                    for round in 0..<150 { try await put(round % 2 == 0 ? 1 : 0) }
                    return []
                }
                for _ in 0..<2 {
                    group.addTask {
                        var found: [String] = []
                        for _ in 0..<150 {
                            let response = try await client.execute(HTTPClientRequest(url: "\(url)/v1/caches/racing"), timeout: .seconds(60))
                            let body = try await response.body.collect(upTo: 2 << 20)
                            guard response.status == .ok else { continue }  // 503 while changing is allowed
                            let digest = Self.hex(Array(buffer: body))
                            let etag = response.headers.first(name: "ETag") ?? ""
                            let manifest = response.headers.first(name: "X-CacheTiers-Manifest")
                                .flatMap { Data(base64Encoded: $0) }.flatMap { try? CacheManifest(jsonData: $0) }
                            if etag != "\"\(digest)\"" || manifest?.archiveSHA256 != digest {
                                found.append("ETag \(etag), manifest \(manifest?.archiveSHA256 ?? "none"), body \(digest)")
                            }
                        }
                        return found
                    }
                }
                return try await group.reduce(into: []) { $0 += $1 }
            }
            #expect(mismatches.isEmpty, "\(mismatches.count) responses mixed two archives: \(mismatches.prefix(3))")
            _ = port
        }
    }

    @Test func aClientThatNeverReadsItsAnswersIsCutInsteadOfHoldingItsSlot() async throws {
        try await Self.withServer(idleTimeout: .seconds(1), maxConnections: 2) { port, _ in
            // Two connections pipeline thousands of requests and read nothing: their
            // answers fill the socket, the server can write no more.
            let hogs = try (0..<2).map { _ in try RawConnection(port: port) }
            let flood = String(repeating: "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", count: 20_000)
            for hog in hogs { hog.send(flood) }
            let probe = try RawConnection(port: port)
            probe.send("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            let answer = try await Fixtures.offThePool { probe.read(within: 30) }
            guard case .data(let text) = answer else {
                Issue.record("a legitimate client was locked out: \(answer)")
                return
            }
            #expect(text.contains("200 OK"))
        }
    }

    @Test func aStrayDotUploadFileDoesNotStopTheServerStarting() async throws {
        let scratch = try TemporaryDirectory(prefix: "stray")
        defer { scratch.remove() }
        let root = try scratch.makeDirectory("root")
        for name in [".upload-7", ".upload-", "..upload-1", ".x.upload-"] {
            try Data("x".utf8).write(to: URL(fileURLWithPath: root.appending(name).string))
        }
        let server = CacheMasterServer(configuration: .init(root: root, port: 0, orphanGracePeriod: .zero), logger: PeerHarness.quietLogger)
        _ = try await server.start()
        await server.stop()
        let names = try FileManager.default.contentsOfDirectory(atPath: root.string).sorted()
        #expect(names == ["..upload-1", ".cachetiers", ".upload-", ".upload-7", ".x.upload-"], "not names the server makes: left alone")
    }

    @Test func quarantiningNeverOverwritesAnEarlierFileAndKeepsAPairTogether() async throws {
        let scratch = try TemporaryDirectory(prefix: "quarantine")
        defer { scratch.remove() }
        let root = try scratch.makeDirectory("root")
        let quarantine = try scratch.makeDirectory("root/.quarantine")
        try Data("earlier".utf8).write(to: URL(fileURLWithPath: quarantine.appending("dup.tar.zst").string))
        try Data("later".utf8).write(to: URL(fileURLWithPath: root.appending("dup.tar.zst").string))
        let server = CacheMasterServer(configuration: .init(root: root, port: 0, orphanGracePeriod: .zero), logger: PeerHarness.quietLogger)
        _ = try await server.start()
        await server.stop()
        #expect(try String(contentsOfFile: quarantine.appending("dup.tar.zst").string, encoding: .utf8) == "earlier")
        #expect(try String(contentsOfFile: quarantine.appending("dup.tar.zst.1").string, encoding: .utf8) == "later")
    }

    @Test func aManifestThatMakesNoSenseIsRefusedOnPut() async throws {
        try await PeerHarness.with { peer in
            let bytes = [UInt8](repeating: 7, count: 100)
            let key = try CacheKey("nonsense")
            let (_, manifest) = Self.upload(bytes, key: key)
            var gzip = manifest
            gzip.codec = "gzip"
            var negative = manifest
            negative.entryCount = -5
            var shortDigest = manifest
            shortDigest.archiveSHA256 = "abc"
            for bad in [gzip, negative, shortDigest] {
                let header = try bad.jsonData().base64EncodedString()
                let put = try await peer.send(.PUT, "/v1/caches/nonsense", headers: [("X-CacheTiers-Manifest", header)], body: bytes)
                #expect(put.status == 400, "\(bad)")
                #expect(String(decoding: put.body, as: UTF8.self).contains("not a usable manifest"))
            }
            #expect(try await peer.send(.GET, "/v1/caches/nonsense").status == 404, "nothing stored")
        }
    }

    @Test func atStartOnlySettledHalfPublishedFilesOfValidKeysAreMovedAsideAndNothingElseIsTouched() async throws {
        let scratch = try TemporaryDirectory(prefix: "seeded")
        defer { scratch.remove() }
        let root = try scratch.makeDirectory("root")
        func put(_ name: String, _ text: String = "x") throws {
            try Data(text.utf8).write(to: URL(fileURLWithPath: root.appending(name).string))
        }
        try put("being-seeded.tar.zst")  // an operator is copying it in by hand, manifest next
        try put("notes.txt")
        try put("Not A Key!.tar.zst")
        try put(".being-seeded.upload-42")  // an upload in flight in another process
        let server = CacheMasterServer(configuration: .init(root: root, port: 0), logger: PeerHarness.quietLogger)
        _ = try await server.start()
        await server.stop()
        let names = try FileManager.default.contentsOfDirectory(atPath: root.string).sorted()
        #expect(
            names == [".being-seeded.upload-42", ".cachetiers", "Not A Key!.tar.zst", "being-seeded.tar.zst", "notes.txt"],
            "with the default grace period, fresh files stay: \(names)"
        )
    }
}
