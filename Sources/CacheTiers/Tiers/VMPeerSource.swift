import AsyncHTTPClient
import Crypto
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import Synchronization
import SystemPackage

/// Restores from a peer VM (the cache master) over the private network, decoding and
/// extracting while the bytes arrive.
///
/// As an ``ArchiveSource`` it finds the archive with one `GET` and streams its body
/// straight into the chain's download, verified against the SHA-256 the server gives
/// as its ETag; no temporary archive file is written. When a connection drops
/// mid-transfer the download resumes from the last byte received with a Range request
/// pinned to that ETag (`If-Match`); a changed archive restarts cleanly.
///
/// It is also a ``CacheSink``: `publish` uploads an archive create-only.
///
/// It owns an `HTTPClient` configured with the connect timeout; call ``shutdown()``
/// when done with it.
public final class VMPeerSource: ArchiveSource, CacheSink {
    public struct Configuration: Sendable {
        /// How several cache masters share the load.
        public enum Selection: Sendable, Hashable {
            /// Try the peers in the order given.
            case ordered
            /// Rendezvous hashing: each key has its own preference order, so several
            /// cache masters each hold a share of the keys.
            case rendezvous
        }

        /// Base URLs of the cache masters, e.g. `http://10.0.0.5:7420`.
        public var peers: [String]
        public var selection: Selection
        /// Sent as `Authorization: Bearer <token>`.
        public var token: String?
        /// How long to wait for a TCP connection, separate from the chain's transfer timeout.
        public var connectTimeout: Duration
        /// How many times one download may resume after a dropped connection.
        public var maxResumes: Int
        /// Connections kept per cache master, so concurrent restores through one source
        /// never queue behind each other.
        public var maxConnectionsPerPeer: Int
        public var limits: ExtractionLimits
        /// How many cache masters hold each key: a publish (and a write-back) reaches the
        /// first `replicas` reachable masters in the key's order, and ``VMPeerSource/contains(_:logger:)``
        /// is true only when they all hold it. Clamped to 1 … the number of peers; 2 by
        /// default, so losing one master loses no key.
        public var replicas: Int {
            get { min(max(1, requestedReplicas), peers.count) }
            set { requestedReplicas = newValue }
        }
        private var requestedReplicas: Int

        public init(
            peers: [String],
            selection: Selection = .ordered,
            token: String? = nil,
            connectTimeout: Duration = .seconds(2),
            maxResumes: Int = 5,
            maxConnectionsPerPeer: Int = 64,
            limits: ExtractionLimits = .init(),
            replicas: Int = 2
        ) {
            self.peers = peers.map { $0.hasSuffix("/") ? String($0.dropLast()) : $0 }
            self.selection = selection
            self.token = token
            self.connectTimeout = connectTimeout
            self.maxResumes = maxResumes
            self.maxConnectionsPerPeer = maxConnectionsPerPeer
            self.limits = limits
            self.requestedReplicas = replicas
        }
    }

    public let name: String
    public let configuration: Configuration
    public var traits: CacheSourceTraits { .download }
    private let client: HTTPClient

    public init(name: String = "peer", configuration: Configuration) {
        precondition(!configuration.peers.isEmpty, "a VMPeerSource needs at least one peer URL")
        self.name = name
        self.configuration = configuration
        // AsyncHTTPClient's default of 8 connections a host would make the 9th concurrent
        // restore wait, and fail once the connect timeout passes.
        self.client = .forTier(
            connectTimeout: configuration.connectTimeout, connectionsPerHost: configuration.maxConnectionsPerPeer
        )
    }

    /// Closes the HTTP client's connections. Call once, when the source is no longer used.
    public func shutdown() async throws {
        try await client.shutdown()
    }

    /// The peers in the order this key tries them.
    public func peers(for key: CacheKey) -> [String] {
        switch configuration.selection {
        case .ordered:
            return configuration.peers
        case .rendezvous:
            func score(_ peer: String) -> UInt64 {
                let digest = SHA256.hash(data: Array("\(key.rawValue)\u{0}\(peer)".utf8))
                return digest.prefix(8).reduce(0) { $0 << 8 | UInt64($1) }
            }
            return configuration.peers.sorted { score($0) > score($1) }
        }
    }

    func url(_ peer: String, _ key: CacheKey) -> String {
        "\(peer)/v1/caches/\(key.rawValue)"
    }

    func request(_ url: String, method: HTTPMethod = .GET) -> HTTPClientRequest {
        var request = HTTPClientRequest(url: url)
        request.method = method
        request.headers.add(name: "User-Agent", value: "cachetiers/\(CacheTiersVersion.current)")
        if let token = configuration.token {
            request.headers.add(name: "Authorization", value: "Bearer \(token)")
        }
        return request
    }

    // MARK: restore

    public var maxResumes: Int { configuration.maxResumes }
    public var limits: ExtractionLimits { configuration.limits }

    /// A peer's answer to `GET /v1/caches/KEY`: the archive's ETag, and its body, which
    /// the first stream reads (the download starts with the same request that found it).
    public final class PeerArchive: Sendable {
        let peer: String
        let key: CacheKey
        let etag: String
        private let firstBody: Mutex<HTTPClientResponse.Body?>

        init(peer: String, key: CacheKey, etag: String, body: HTTPClientResponse.Body) {
            self.peer = peer
            self.key = key
            self.etag = etag
            self.firstBody = Mutex(body)
        }

        /// The body of the answer that found the archive, once.
        func takeFirstBody() -> HTTPClientResponse.Body? {
            firstBody.withLock { body in
                defer { body = nil }
                return body
            }
        }
    }

    /// Asks the peers in the key's order. A peer that fails (unreachable, 5xx, 429, or
    /// refusing the token) passes the key to the next one, as a 404 does: several cache
    /// masters serve the same keys, and one broken master must not take out its share.
    /// When none serves, a refused token is the most telling failure (a misconfigured
    /// source or master), then a miss, then the last transient failure with its Retry-After.
    public func findArchive(_ request: RestoreRequest, logger: Logger) async throws -> ArchiveLookup<PeerArchive> {
        var misses: [String] = []
        var mostTelling: CacheTierError?
        for peer in peers(for: request.key) {
            try Task.checkCancellation()
            do {
                let response = try await execute(self.request(url(peer, request.key)), peer: peer, logger: logger)
                switch response.status.code {
                case 200:
                    return .found(try await archive(in: response, from: peer, key: request.key, logger: logger))
                case 404:
                    misses.append(peer)
                default:
                    throw await failure(for: response, peer: peer, what: "GET \(request.key)")
                }
            } catch let error as CacheTierError where [.transient, .timeout, .unauthorized].contains(error.kind) {
                // Nothing was delivered yet: the next peer may serve.
                logger.notice("peer failed; trying the next one", metadata: ["peer": "\(peer)", "error": "\(error)"])
                if mostTelling?.kind != .unauthorized { mostTelling = error }
            }
        }
        if let mostTelling, mostTelling.kind == .unauthorized || misses.isEmpty { throw mostTelling }
        let failed = mostTelling.map { "; \($0.message)" } ?? ""
        return .miss("no cache for \(request.key) on \(misses.joined(separator: ", "))\(failed)")
    }

    /// The archive a 200 answer carries, checked against its manifest.
    private func archive(in response: HTTPClientResponse, from peer: String, key: CacheKey, logger: Logger) async throws
        -> FoundArchive<PeerArchive>
    {
        let etagHeader = response.headers.first(name: "ETag")
        let lengthHeader = response.headers.first(name: "Content-Length")
        guard let etag = etagHeader, let length = lengthHeader.flatMap(Int64.init) else {
            let missing = [
                etagHeader == nil ? "an ETag" : nil,
                lengthHeader == nil ? "a Content-Length" : lengthHeader.flatMap(Int64.init) == nil ? "a valid Content-Length" : nil,
            ].compactMap { $0 }.joined(separator: " or ")
            throw CacheTierError(.corrupt, "\(peer) sent the archive without \(missing); is it a cache master?")
        }
        let digest = etag.trimmingCharacters(in: CharacterSet(charactersIn: "\"W/"))
        let manifest = try await manifest(describing: response, from: peer, key: key, logger: logger)
        if let problem = manifest.problem {
            throw CacheTierError(.corrupt, "\(peer) sent a manifest that makes no sense: \(problem)")
        }
        guard manifest.archiveSHA256 == digest, manifest.archiveSize == length else {
            throw CacheTierError(
                .corrupt,
                "\(peer) sent an archive (ETag \(etag), \(length) bytes) that is not the one its manifest of \(key) describes "
                    + "(\(manifest.archiveSHA256), \(manifest.archiveSize) bytes)"
            )
        }
        return FoundArchive(
            PeerArchive(peer: peer, key: key, etag: etag, body: response.body),
            origin: peer, size: length, sha256: digest, manifest: manifest
        )
    }

    /// Reads the body that found the archive; from a later offset, a Range request
    /// pinned to its ETag (`If-Match`), so a changed archive is never spliced in.
    public func streamArchive(
        _ found: FoundArchive<PeerArchive>,
        from offset: Int64,
        progress: TransferProgress,
        logger: Logger,
        deliver: (ByteBuffer) async throws -> Void
    ) async throws {
        let archive = found.archive
        var body = offset == 0 ? archive.takeFirstBody() : nil
        if body == nil {
            var resume = request(url(archive.peer, archive.key))
            resume.headers.add(name: "Range", value: "bytes=\(offset)-")
            resume.headers.add(name: "If-Match", value: archive.etag)
            let response = try await execute(resume, peer: archive.peer, logger: logger)
            switch response.status.code {
            case 206:
                // The rest of the archive found, or another's bytes: a server that ignores
                // If-Match, or a proxy, must not splice a second archive onto the first.
                let range = "bytes \(offset)-\(found.size - 1)/\(found.size)"
                let servedRange = response.headers.first(name: "Content-Range") ?? "none"
                let servedETag = response.headers.first(name: "ETag") ?? archive.etag
                guard servedRange == range, servedETag == archive.etag else {
                    throw ArchiveReplaced(
                        "the archive on \(archive.peer) changed during the download (the resume was answered with Content-Range "
                            + "\(servedRange) and ETag \(servedETag), not \(range) and \(archive.etag)); restarting from the beginning"
                    )
                }
                body = response.body
            case 200:
                // The whole archive again: feeding it on would repeat the first bytes.
                throw ArchiveReplaced(
                    "\(archive.peer) ignored the Range of the resume at byte \(offset) and sent the whole archive (200); restarting from the beginning"
                )
            case 412:
                throw ArchiveReplaced("the archive on \(archive.peer) changed during the download; restarting from the beginning")
            default:
                throw await failure(for: response, peer: archive.peer, what: "resuming at byte \(offset)")
            }
        }
        for try await buffer in body! {
            try await deliver(buffer)
        }
    }

    /// The manifest of the archive `response` carries: from its `X-CacheTiers-Manifest`
    /// header, or (from a cache master that does not send one) `GET …/manifest`. The
    /// chain checks that it names the requested key, and the unpack that the body is the
    /// archive it describes.
    private func manifest(
        describing response: HTTPClientResponse,
        from peer: String,
        key: CacheKey,
        logger: Logger
    ) async throws -> CacheManifest {
        if let header = response.headers.first(name: "X-CacheTiers-Manifest") {
            guard let json = Data(base64Encoded: header), let manifest = try? CacheManifest(jsonData: json) else {
                throw CacheTierError(.corrupt, "\(peer) sent an X-CacheTiers-Manifest header that is not a base64 cache manifest")
            }
            return manifest
        }
        let answer = try await execute(request(url(peer, key) + "/manifest"), peer: peer, logger: logger)
        guard answer.status.code == 200 else {
            throw await failure(for: answer, peer: peer, what: "GET the manifest of \(key)")
        }
        let body = try await answer.body.collect(upTo: 1 << 20)
        guard let manifest = try? CacheManifest(jsonData: Data(body.readableBytesView)) else {
            throw CacheTierError(.corrupt, "\(peer) answered GET the manifest of \(key) with something that is not a cache manifest")
        }
        return manifest
    }

    /// Sends a request, mapping connection failures to tier errors.
    func execute(_ request: HTTPClientRequest, peer: String, logger: Logger) async throws -> HTTPClientResponse {
        try await client.executeForTier(request, endpoint: peer, connectTimeout: configuration.connectTimeout, logger: logger)
    }

    /// The tier error for an unexpected answer, with the server's own words.
    func failure(for response: HTTPClientResponse, peer: String, what: String) async -> CacheTierError {
        var text = ""
        if let body = try? await response.body.collect(upTo: 4096) {
            text = String(buffer: body).trimmingCharacters(in: .whitespacesAndNewlines)
        }
        let detail = text.isEmpty ? "" : ": \(text)"
        let code = response.status.code
        switch code {
        case 401, 403:
            return CacheTierError(
                .unauthorized,
                "\(peer) refused \(what) with \(code)\(detail); check the peer token (--token-file or tokenFile)"
            )
        case 429, 500...599:
            return CacheTierError(.transient, "\(peer) answered \(code) to \(what)\(detail)", retryAfter: response.retryAfter)
        default:
            return CacheTierError(.transient, "\(peer) answered \(code) to \(what)\(detail)")
        }
    }

    // MARK: publish

    /// Whether the key's replicas hold it: the first ``Configuration/replicas`` masters in
    /// the key's order that answer (one that cannot be reached is passed over, as a
    /// publish passes it over) all say 200. A write-back therefore fills a replica that
    /// lacks the key.
    public func contains(_ key: CacheKey, logger: Logger) async throws -> Bool {
        var lastError: CacheTierError?
        var answered = 0
        for peer in peers(for: key) where answered < configuration.replicas {
            do {
                let response = try await execute(request(url(peer, key), method: .HEAD), peer: peer, logger: logger)
                switch response.status.code {
                case 200:
                    // A cache master's HEAD carries the archive's ETag and manifest; a proxy, a
                    // captive portal or another service answering 200 to anything does not hold it.
                    guard response.headers.first(name: "ETag") != nil, response.headers.first(name: "X-CacheTiers-Manifest") != nil else {
                        throw CacheTierError(
                            .transient, "\(peer) answered HEAD \(key) with 200 but no ETag and manifest: it is not a cache master"
                        )
                    }
                    answered += 1
                case 404: return false
                default: throw await failure(for: response, peer: peer, what: "HEAD \(key)")
                }
            } catch let error as CacheTierError where error.kind == .transient || error.kind == .timeout {
                lastError = error
            }
        }
        if answered > 0 { return true }
        throw lastError ?? CacheTierError(.transient, "no peer answered")
    }

    /// Uploads create-only to the key's first ``Configuration/replicas`` masters in its
    /// order, at once; a master that cannot be reached (or fails) is replaced by the next
    /// in the order, so R copies exist while R masters are up.
    /// - Returns: ``PublishOutcome/published`` when any master stored it,
    ///   ``PublishOutcome/exists`` when every one that answered already had it.
    /// - Throws: the last failure, only when no master took it.
    public func publish(_ archive: PackedArchive, logger: Logger) async throws -> PublishOutcome {
        let manifest = try archive.manifest.jsonData().base64EncodedString()
        let replicas = configuration.replicas
        let upload = TransferProgress.upload
        // Each replica's upload reads the file once; the bound sees the whole of them.
        upload?.setTotal(archive.manifest.archiveSize * Int64(replicas))
        var order = peers(for: archive.key)[...]
        var outcomes: [PublishOutcome] = []
        var lastError: (any Error)?
        try await withThrowingTaskGroup(of: Result<PublishOutcome, CacheTierError>.self) { group in
            func startNext() {
                guard let peer = order.popFirst() else { return }
                group.addTask { await self.put(archive, manifest: manifest, to: peer, progress: upload, logger: logger) }
            }
            for _ in 0..<replicas { startNext() }
            while let result = try await group.next() {
                switch result {
                case .success(let outcome):
                    outcomes.append(outcome)
                case .failure(let error) where error.kind == .transient || error.kind == .timeout:
                    lastError = error
                    startNext()
                case .failure(let error):
                    // Refused (a token), or the archive itself is at fault: no other master would take it.
                    group.cancelAll()
                    throw error
                }
            }
        }
        if outcomes.isEmpty { try Task.checkCancellation() }
        if outcomes.contains(.published) { return .published }
        if !outcomes.isEmpty { return .exists }
        throw lastError ?? CacheTierError(.transient, "no peer answered")
    }

    /// One create-only PUT.
    private func put(
        _ archive: PackedArchive, manifest: String, to peer: String, progress: TransferProgress?, logger: Logger
    ) async -> Result<PublishOutcome, CacheTierError> {
        var put = request(url(peer, archive.key), method: .PUT)
        put.headers.add(name: "If-None-Match", value: "*")
        put.headers.add(name: "Content-Type", value: "application/zstd")
        put.headers.add(name: "X-CacheTiers-Manifest", value: manifest)
        put.body = .stream(FileByteBuffers(path: archive.file, progress: progress), length: .known(archive.manifest.archiveSize))
        do {
            let response = try await execute(put, peer: peer, logger: logger)
            switch response.status.code {
            case 200, 201:
                // A cache master answers a stored archive with its SHA-256 as the ETag: a 2xx
                // without it is some other server, which stored nothing.
                guard response.headers.first(name: "ETag") == "\"\(archive.manifest.archiveSHA256)\"" else {
                    return .failure(CacheTierError(
                        .transient,
                        "\(peer) answered PUT \(archive.key) with \(response.status.code) but not with the archive's SHA-256 as its ETag: it is not a cache master, and nothing was stored"
                    ))
                }
                return .success(.published)
            case 412: return .success(.exists)
            default: return .failure(await failure(for: response, peer: peer, what: "PUT \(archive.key)"))
            }
        } catch let error as CacheTierError {
            return .failure(error)
        } catch {
            return .failure(CacheTierError(.transient, "\(peer) failed PUT \(archive.key): \(error)", underlying: error))
        }
    }
}

/// A file's contents as ByteBuffers of 256 KiB, for streaming uploads. The HTTP client
/// asks for the next buffer only when the connection can take it, so `progress` moves
/// as fast as the server reads: a stopped server stops it.
struct FileByteBuffers: AsyncSequence, Sendable {
    typealias Element = ByteBuffer
    let path: FilePath
    var progress: TransferProgress?

    struct AsyncIterator: AsyncIteratorProtocol {
        let handle: FileHandle?
        let progress: TransferProgress?

        mutating func next() async throws -> ByteBuffer? {
            guard let handle else { throw CacheTierError(.fatal, "cannot open the archive to upload") }
            guard let data = try handle.read(upToCount: 256 * 1024), !data.isEmpty else { return nil }
            progress?.advance(by: data.count)
            return ByteBuffer(bytes: data)
        }
    }

    func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(handle: FileHandle(forReadingAtPath: path.string), progress: progress)
    }
}
