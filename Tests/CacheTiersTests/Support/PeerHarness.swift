import AsyncHTTPClient
import CacheTiers
import CacheTiersServer
import CacheTiersTesting
import Foundation
import Logging
import NIOHTTP1
import SystemPackage

/// A cache master on 127.0.0.1 (port 0) over a scratch folder, for one test.
struct PeerHarness {
    let scratch: TemporaryDirectory
    let server: CacheMasterServer
    let url: String

    static var quietLogger: Logger {
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        return logger
    }

    /// Starts a server, runs `body`, and always stops the server and removes the folder.
    static func with<T>(
        token: String? = nil,
        reportToken: String? = nil,
        maxTransfers: Int = 64,
        retention: RetentionPolicy = RetentionPolicy(),
        _ body: (PeerHarness) async throws -> T
    ) async throws -> T {
        let scratch = try TemporaryDirectory(prefix: "peer")
        let server = CacheMasterServer(
            configuration: .init(
                root: scratch.path.appending("root"), port: 0, token: token, reportToken: reportToken,
                maxConcurrentTransfers: maxTransfers, retention: retention
            ),
            logger: quietLogger
        )
        let url = try await server.start()
        let harness = PeerHarness(scratch: scratch, server: server, url: url)
        do {
            let value = try await body(harness)
            await server.stop()
            scratch.remove()
            return value
        } catch {
            await server.stop()
            scratch.remove()
            throw error
        }
    }

    var port: Int { Int(url.split(separator: ":").last!)! }

    /// Packs `tree` and publishes it under `key` with a real PUT.
    @discardableResult
    func publish(_ tree: FilePath, as key: CacheKey, token: String? = nil) async throws -> CacheManifest {
        let file = scratch.path.appending("upload-\(UUID().uuidString.prefix(6)).tar.zst")
        let manifest = try await ArchivePacker().pack(tree, key: key, to: file, logger: Self.quietLogger)
        let peer = VMPeerSource(configuration: .init(peers: [url], token: token))
        defer { try? FileManager.default.removeItem(atPath: file.string) }
        let outcome = try await peer.publish(PackedArchive(file: file, manifest: manifest), logger: Self.quietLogger)
        try await peer.shutdown()
        guard outcome == .published else { throw FixtureError("publishing \(key) answered \(outcome)") }
        return manifest
    }

    /// A raw HTTP request to the server, for the API tests.
    func send(
        _ method: HTTPMethod,
        _ path: String,
        headers: [(String, String)] = [],
        body: [UInt8]? = nil
    ) async throws -> (status: Int, headers: HTTPHeaders, body: [UInt8]) {
        var request = HTTPClientRequest(url: url + path)
        request.method = method
        for (name, value) in headers { request.headers.add(name: name, value: value) }
        if let body { request.body = .bytes(body) }
        let response = try await HTTPClient.shared.execute(request, timeout: .seconds(30))
        let bytes = try await response.body.collect(upTo: 512 << 20)
        return (Int(response.status.code), response.headers, Array(buffer: bytes))
    }
}
