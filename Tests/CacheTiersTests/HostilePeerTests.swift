import CacheTiers
import CacheTiersServer
import CacheTiersTesting
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import Synchronization
import SystemPackage
import Testing

/// The peer tier against cache masters that misbehave: one that answers a resume with
/// another archive's bytes, and ones that fail every request while another master holds
/// the key.
@Suite(.serialized) struct HostilePeerTests {
    let logger = PeerHarness.quietLogger

    /// Runs `body` with a source over `configuration`, shut down on every path out.
    func withSource<T>(_ configuration: VMPeerSource.Configuration, _ body: (VMPeerSource) async throws -> T) async throws -> T {
        let source = VMPeerSource(configuration: configuration)
        do {
            let value = try await body(source)
            try await source.shutdown()
            return value
        } catch {
            try? await source.shutdown()
            throw error
        }
    }

    func chain(_ source: VMPeerSource, maxAttempts: Int = 1) -> TierChain {
        TierChain(
            tiers: [.init(source, policy: .init(retry: .init(maxAttempts: maxAttempts, initialDelay: .milliseconds(10))))],
            configuration: .init(deadline: .seconds(120), writeBack: .disabled, retryBudget: RetryBudget()),
            logger: logger
        )
    }

    final class Count: Sendable {
        let value = Atomic<Int>(0)
    }

    /// How the hostile master answers `Range: bytes=N-`.
    enum Resume: String, CaseIterable, CustomTestStringConvertible {
        /// 206 with the bytes of a longer archive: its Content-Range total is not the size found.
        case otherTotal
        /// 206 with the right Content-Range, but the bytes and ETag of another archive of the same size.
        case otherETag
        /// 200 with the whole archive, as a server that ignores Range does.
        case wholeArchive

        var testDescription: String { rawValue }
    }

    @Test(arguments: Resume.allCases)
    func aResumeAnsweredWithOtherBytesRestartsCleanly(_ resume: Resume) async throws {
        let scratch = try TemporaryDirectory(prefix: "hostile-resume")
        defer { scratch.remove() }
        let tree = scratch.path.appending("tree")
        try SampleTree.write(to: tree, seed: 3, files: 300)
        let key = try CacheKey("spliced")
        let file = scratch.path.appending("a.tar.zst")
        let manifest = try await ArchivePacker().pack(tree, key: key, to: file, logger: logger)
        let archive = [UInt8](try Data(contentsOf: URL(fileURLWithPath: file.string)))
        let other = archive.map { $0 ^ 0xFF }
        let etag = "\"\(manifest.archiveSHA256)\""
        let manifestHeader = try manifest.jsonData().base64EncodedString()
        let ranges = Count()

        let router = Router()
        router.get("/v1/caches/{key}") { request, _ -> Response in
            var headers: HTTPFields = [.eTag: etag, HTTPField.Name("X-CacheTiers-Manifest")!: manifestHeader]
            guard let range = request.headers[.range], let offset = Int(range.dropFirst("bytes=".count).dropLast()) else {
                return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: archive)))
            }
            ranges.value.add(1, ordering: .relaxed)
            let served: [UInt8]
            switch resume {
            case .otherTotal:
                served = other + [UInt8](repeating: 0, count: 100)
            case .otherETag:
                served = other
                headers[.eTag] = "\"\(String(repeating: "0", count: 64))\""
            case .wholeArchive:
                return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: archive)))
            }
            headers[.contentRange] = "bytes \(offset)-\(served.count - 1)/\(served.count)"
            return Response(status: .partialContent, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: served[offset...])))
        }
        try await FakeHTTPServer.with(router) { url in
            let proxy = try FaultInjectingProxy(
                upstreamPort: Int(url.split(separator: ":").last!)!, fault: .cut(afterBytes: archive.count / 2, connections: 1)
            )
            defer { proxy.stop() }
            let destination = scratch.path.appending("restored")
            let report = try await withSource(.init(peers: [proxy.url])) { source in
                try await chain(source, maxAttempts: 2).restore(key, into: destination)
            }
            #expect(report.attempts.map(\.outcome) == [.error, .hit], "\(report.attempts.map { $0.error ?? "-" })")
            #expect(report.attempts[0].error?.contains("restarting from the beginning") == true, "\(report.attempts[0].error ?? "")")
            #expect(ranges.value.load(ordering: .relaxed) == 1, "the bad resume ends the attempt instead of resuming again")
            #expect(try TreeSnapshot(of: destination).differences(from: TreeSnapshot(of: tree)) == [], "the archive's tree, nothing spliced")
        }
    }

    /// A master that answers every request with `status` (and `Retry-After`, when given).
    static func broken(_ status: Int, retryAfter: Int? = nil) -> Router<BasicRequestContext> {
        let router = Router()
        router.get("/v1/caches/{key}") { _, _ -> Response in
            var headers = HTTPFields()
            if let retryAfter { headers[.retryAfter] = "\(retryAfter)" }
            return Response(
                status: .init(code: status), headers: headers, body: .init(byteBuffer: ByteBuffer(string: "broken master\n"))
            )
        }
        return router
    }

    @Test(arguments: [503, 500, 429, 401])
    func aBrokenMasterPassesItsKeysToTheNextMaster(status: Int) async throws {
        try await FakeHTTPServer.with(Self.broken(status, retryAfter: 30)) { broken in
            try await PeerHarness.with { peer in
                let destination = peer.scratch.path.appending("restored")
                let tree = peer.scratch.path.appending("tree")
                try SampleTree.write(to: tree, files: 50)
                let report = try await withSource(.init(peers: [broken, peer.url], selection: .rendezvous)) { source in
                    // A key of the broken master's share: it comes first in the key's order.
                    let key = try (0..<100).lazy.map { try CacheKey("share-\($0)") }.first { source.peers(for: $0).first == broken }!
                    try await peer.publish(tree, as: key)
                    return try await chain(source).restore(key, into: destination)
                }
                #expect(report.attempts.map(\.outcome) == [.hit], "one attempt, served by the second master")
                #expect(report.servedBy == "peer")
                #expect(try TreeSnapshot(of: destination).differences(from: TreeSnapshot(of: tree)) == [])
            }
        }
    }

    @Test func whenEveryMasterFailsTheMostTellingErrorIsThrown() async throws {
        let scratch = try TemporaryDirectory(prefix: "every-master")
        defer { scratch.remove() }
        let request = RestoreRequest(key: try CacheKey("nowhere"))
        func failure(_ peers: [String]) async throws -> CacheTierError? {
            let staging = try scratch.makeDirectory("staging-\(UUID().uuidString.prefix(6))")
            return try await withSource(.init(peers: peers)) { source in
                await #expect(throws: CacheTierError.self) {
                    try await source.restore(request, into: staging, progress: .init(), logger: logger)
                }
            }
        }
        let closed = try FaultInjectingProxy(upstreamPort: 9)
        let refused = closed.url
        closed.stop()
        try await FakeHTTPServer.with(Self.broken(401)) { unauthorized in
            try await FakeHTTPServer.with(Self.broken(503, retryAfter: 7)) { busy in
                let refusedFirst = try await failure([unauthorized, busy])
                #expect(refusedFirst?.kind == .unauthorized, "a master that refused the token says why none served")
                #expect(refusedFirst?.message.contains("401") == true, "\(refusedFirst?.message ?? "")")
                let refusedLast = try await failure([busy, unauthorized])
                #expect(refusedLast?.kind == .unauthorized)
                let transient = try await failure([refused, busy])
                #expect(transient?.kind == .transient)
                #expect(transient?.message.contains("503") == true, "\(transient?.message ?? "")")
                #expect(transient?.retryAfter == .seconds(7), "the busy master's Retry-After")
            }
        }
    }

    @Test func aServerThatAnswers200ToEverythingIsNotTakenForACacheMasterHoldingTheKey() async throws {
        // A proxy, a captive portal or another service on the port: 200 and a body to anything.
        let router = Router(context: BasicRequestContext.self)
        let requests = Mutex<[String]>([])
        for method in [HTTPRequest.Method.head, .put, .get] {
            router.on("/v1/caches/:key", method: method) { request, _ -> Response in
                if method == .put { for try await _ in request.body {} }
                requests.withLock { $0.append(method.rawValue) }
                return Response(status: .ok, body: .init(byteBuffer: ByteBuffer(string: "<html>welcome</html>")))
            }
        }
        let scratch = try TemporaryDirectory(prefix: "hostile-200")
        defer { scratch.remove() }
        let tree = scratch.path.appending("tree")
        try SampleTree.write(to: tree)
        let file = scratch.path.appending("a.tar.zst")
        let key = try CacheKey("answered-anyway")
        let manifest = try await ArchivePacker().pack(tree, key: key, to: file, logger: logger)
        try await FakeHTTPServer.with(router) { url in
            try await withSource(.init(peers: [url])) { source in
                await #expect(throws: CacheTierError.self) { try await source.contains(key, logger: logger) }
                do {
                    let outcome = try await source.publish(PackedArchive(file: file, manifest: manifest), logger: logger)
                    Issue.record("a PUT answered 200 without the archive's ETag counted as \(outcome)")
                } catch let error as CacheTierError {
                    #expect(error.message.contains("not a cache master, and nothing was stored"), "\(error)")
                }
            }
        }
        #expect(requests.withLock { $0 } == ["HEAD", "PUT"])
    }
}
