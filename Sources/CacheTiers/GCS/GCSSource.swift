import AsyncHTTPClient
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import Synchronization
import SystemPackage

/// Restores from a Google Cloud Storage bucket through the JSON API, decoding and
/// extracting while the bytes arrive.
///
/// Objects are named `{prefix}{key}.tar.zst`. The manifest travels in the object's
/// custom metadata (`cachetiers-manifest`, the manifest JSON on one line: servers may
/// echo custom metadata as response headers, where a newline breaks the response), so
/// object and manifest are one atomic write and there is no sidecar to get out of step.
///
/// As an ``ArchiveSource`` it finds an archive by reading the object's metadata (size,
/// generation, CRC32C, manifest), and streams the media pinned to that generation: one
/// request, or, for objects larger than two segments and `parallelDownloads > 1`,
/// ranged segments fetched concurrently and fed to the decoder in order through a
/// bounded reorder buffer. The chain's download resumes a failed stream (a dropped
/// connection, 408, 429, 5xx) from its last byte, up to `retriesPerRequest` times, and
/// checks the whole stream against the object's CRC32C and the manifest's SHA-256.
///
/// A hit moves the object's `customTime` forward, at most once a day and in the
/// background (``CustomTimeRefresh``), for a lifecycle rule on `daysSinceCustomTime`.
///
/// It is also a ``CacheSink``: `publish` uploads create-only (`ifGenerationMatch=0`),
/// with `customTime` set to the upload's time.
///
/// It owns an `HTTPClient`; call ``shutdown()`` when done with it.
public final class GCSSource: ArchiveSource, CacheSink {
    /// The custom-metadata field that holds the manifest JSON.
    public static let manifestMetadataKey = "cachetiers-manifest"

    public struct Configuration: Sendable {
        public var bucket: String
        /// Prepended to `{key}.tar.zst`; include a trailing `/` to use a folder.
        public var prefix: String
        /// Base URL of the JSON API, e.g. `https://storage.googleapis.com`.
        public var endpoint: String
        public var credentials: any AccessTokenProvider
        /// How long to wait for a TCP connection.
        public var connectTimeout: Duration
        /// Concurrent ranged requests per download; 1 downloads as one stream.
        public var parallelDownloads: Int
        /// Bytes per ranged request. At most `2 × parallelDownloads` segments are held
        /// in memory ahead of the decoder.
        public var segmentSize: Int
        /// How many times one download resumes from its last byte, and one upload chunk
        /// is retried, after a dropped connection, 408, 429 or 5xx before the attempt fails.
        public var retriesPerRequest: Int
        /// Upload chunk size; a multiple of 256 KiB, as GCS requires. Archives up to one
        /// chunk go up in a single multipart request.
        public var uploadChunkSize: Int
        /// Price of a downloaded GB (2^30 bytes) in USD: 0.12 is internet egress.
        public var pricePerGB: Double
        /// Price of 1,000 reads (Class B operations) in USD.
        public var pricePerThousandReads: Double
        /// Whether a hit moves the object's `customTime` forward (at most once a day, in
        /// the background), for a lifecycle rule on `daysSinceCustomTime`.
        public var refreshCustomTime: Bool
        public var limits: ExtractionLimits

        /// The default ``segmentSize``: 8 MiB.
        public static let defaultSegmentSize = 8 << 20

        public init(
            bucket: String,
            prefix: String = "",
            endpoint: String? = nil,
            credentials: any AccessTokenProvider = NoAccessToken(),
            connectTimeout: Duration = .seconds(5),
            parallelDownloads: Int = 4,
            segmentSize: Int = Configuration.defaultSegmentSize,
            retriesPerRequest: Int = 4,
            uploadChunkSize: Int = 8 << 20,
            pricePerGB: Double = 0.12,
            pricePerThousandReads: Double = 0.0004,
            refreshCustomTime: Bool = true,
            limits: ExtractionLimits = .init()
        ) {
            self.bucket = bucket
            self.prefix = prefix
            let endpoint = endpoint ?? Self.defaultEndpoint()
            self.endpoint = endpoint.hasSuffix("/") ? String(endpoint.dropLast()) : endpoint
            self.credentials = credentials
            self.connectTimeout = connectTimeout
            self.parallelDownloads = max(1, parallelDownloads)
            self.segmentSize = max(256 << 10, segmentSize)
            self.retriesPerRequest = max(0, retriesPerRequest)
            self.uploadChunkSize = max(1, uploadChunkSize / (256 << 10)) * (256 << 10)
            self.pricePerGB = pricePerGB
            self.pricePerThousandReads = pricePerThousandReads
            self.refreshCustomTime = refreshCustomTime
            self.limits = limits
        }

        /// `STORAGE_EMULATOR_HOST` when set (the convention of Google's client
        /// libraries; a scheme is added when missing), else the real service.
        public static func defaultEndpoint(
            environment: [String: String] = ProcessInfo.processInfo.environment
        ) -> String {
            guard let host = environment["STORAGE_EMULATOR_HOST"], !host.isEmpty else {
                return "https://storage.googleapis.com"
            }
            return host.contains("://") ? host : "http://\(host)"
        }
    }

    public let name: String
    public let configuration: Configuration
    public var traits: CacheSourceTraits { .download }
    let client: HTTPClient
    let customTimeRefresh = CustomTimeRefresh()

    public init(name: String = "gcs", configuration: Configuration) {
        self.name = name
        self.configuration = configuration
        self.client = .forTier(connectTimeout: configuration.connectTimeout, connectionsPerHost: 64)
    }

    /// Waits a few seconds at most for the `customTime` updates still in flight (then
    /// cancels them) and closes the HTTP client's connections. Call once, when the source
    /// is no longer used.
    public func shutdown() async throws {
        await customTimeRefresh.shutdown(grace: CustomTimeRefresh.shutdownGrace)
        try await client.shutdown()
    }

    /// The object name for `key`: `{prefix}{key}.tar.zst`.
    public func objectName(for key: CacheKey) -> String {
        "\(configuration.prefix)\(key.rawValue).tar.zst"
    }

    var bucketDescription: String { "gs://\(configuration.bucket)" }

    func objectURL(_ name: String) -> String {
        "\(configuration.endpoint)/storage/v1/b/\(configuration.bucket.gcsPathSegment)/o/\(name.gcsPathSegment)"
    }

    // MARK: restore

    public var maxResumes: Int { configuration.retriesPerRequest }
    public var limits: ExtractionLimits { configuration.limits }

    /// An object found for a restore: its generation, which every read is pinned to,
    /// and the requests the restore has made, for the report and its cost.
    public struct StoredObject: Sendable {
        let object: GCSObject
        let requests: RequestCounter
    }

    /// Reads the object's metadata: size, generation, CRC32C and the manifest.
    public func findArchive(_ request: RestoreRequest, logger: Logger) async throws -> ArchiveLookup<StoredObject> {
        let requests = RequestCounter()
        let name = objectName(for: request.key)
        guard let object = try await metadata(of: name, requests: requests, logger: logger) else {
            return .miss("no object \(bucketDescription)/\(name)")
        }
        let manifest: CacheManifest?
        do {
            manifest = try object.manifest()
        } catch {
            throw CacheTierError(.corrupt, "the manifest in the metadata of \(bucketDescription)/\(name) is unreadable: \(error)")
        }
        return .found(
            FoundArchive(
                StoredObject(object: object, requests: requests), origin: "\(bucketDescription)/\(name)", size: object.size,
                sha256: manifest?.archiveSHA256, crc32c: object.crc32c, manifest: manifest
            )
        )
    }

    /// Streams the media from `offset`, pinned to the object's generation: one request,
    /// or, for more than two segments and `parallelDownloads > 1`, ranged segments
    /// fetched concurrently and delivered in order.
    public func streamArchive(
        _ found: FoundArchive<StoredObject>,
        from offset: Int64,
        progress: TransferProgress,
        logger: Logger,
        deliver: (ByteBuffer) async throws -> Void
    ) async throws {
        let object = found.archive.object
        let requests = found.archive.requests
        let segments = segments(of: offset..<object.size)
        if segments.count <= 2 || configuration.parallelDownloads == 1 {
            try await fetch(object, range: offset..<object.size, requests: requests, logger: logger, deliver: deliver)
        } else {
            try await fetchInParallel(object, segments: segments, requests: requests, progress: progress, logger: logger, deliver: deliver)
        }
    }

    public func restoreDetails(for found: FoundArchive<StoredObject>, bytesTransferred: Int64, streams: Int) -> RestoreDetails {
        let count = found.archive.requests.value
        return RestoreDetails(
            bytesTransferred: bytesTransferred, requests: count,
            estimatedCostUSD: estimatedCost(bytes: bytesTransferred, requests: count), manifest: found.manifest
        )
    }

    /// Egress for `bytes` plus the read operations.
    public func estimatedCost(bytes: Int64, requests: Int) -> Double {
        Self.estimatedCost(
            bytes: Double(bytes), requests: Double(requests), pricePerGB: configuration.pricePerGB,
            pricePerThousandReads: configuration.pricePerThousandReads
        )
    }

    /// What a download costs: `bytes` of egress at `pricePerGB` a GB of 2^30 bytes (as
    /// GCS bills), plus `requests` reads (Class B operations) at `pricePerThousandReads`.
    /// The one rule behind a report's `estimatedCostUSD` and `cachetiers plan`'s costs.
    public static func estimatedCost(bytes: Double, requests: Double, pricePerGB: Double, pricePerThousandReads: Double) -> Double {
        bytes / Double(1 << 30) * pricePerGB + requests / 1000 * pricePerThousandReads
    }

    /// `range` cut at every multiple of the segment size.
    func segments(of range: Range<Int64>) -> [Range<Int64>] {
        let step = Int64(configuration.segmentSize)
        var segments: [Range<Int64>] = []
        var start = range.lowerBound
        while start < range.upperBound {
            let end = min((start / step + 1) * step, range.upperBound)
            segments.append(start..<end)
            start = end
        }
        return segments
    }

    /// The object's metadata, or nil when there is no such object.
    func metadata(of name: String, requests: RequestCounter, logger: Logger) async throws -> GCSObject? {
        let url = objectURL(name)
        let response = try await send(what: "reading the metadata of \(bucketDescription)/\(name)", requests: requests, logger: logger) {
            HTTPClientRequest(url: url)
        }
        switch response.status.code {
        case 200:
            let body = try await response.body.collect(upTo: 1 << 20)
            do {
                return try JSONDecoder().decode(GCSObject.self, from: Data(body.readableBytesView))
            } catch {
                throw CacheTierError(.transient, "\(configuration.endpoint) sent object metadata that is not GCS JSON: \(error)")
            }
        case 404:
            _ = try? await response.body.collect(upTo: 1 << 20)
            return nil
        default:
            throw await failure(response, what: "reading the metadata of \(bucketDescription)/\(name)")
        }
    }

    /// Downloads `range` of the object's media with one request pinned to its
    /// generation, handing each buffer to `deliver` in order. A failure ends it: the
    /// chain's download resumes from the last byte delivered.
    func fetch(
        _ object: GCSObject,
        range: Range<Int64>,
        requests: RequestCounter,
        logger: Logger,
        deliver: (ByteBuffer) async throws -> Void
    ) async throws {
        let url = "\(objectURL(object.name))?alt=media&generation=\(object.generation)&ifGenerationMatch=\(object.generation)"
        let what = "downloading \(bucketDescription)/\(object.name)"
        let whole = range.lowerBound == 0 && range.upperBound == object.size
        let response = try await send(what: what, requests: requests, logger: logger) {
            var request = HTTPClientRequest(url: url)
            if !whole { request.headers.add(name: "Range", value: "bytes=\(range.lowerBound)-\(range.upperBound - 1)") }
            return request
        }
        let replaced = ArchiveReplaced(
            "\(bucketDescription)/\(object.name) was replaced during the download; the next attempt starts over"
        )
        switch response.status.code {
        case 200 where whole, 206 where !whole:
            if let generation = response.headers.first(name: "X-Goog-Generation"), generation != object.generation {
                throw replaced
            }
        case 404, 412:
            throw replaced
        default:
            throw await failure(response, what: what)
        }
        var position = range.lowerBound
        for try await buffer in response.body where position < range.upperBound {
            let wanted = Int(min(Int64(buffer.readableBytes), range.upperBound - position))
            try await deliver(wanted == buffer.readableBytes ? buffer : buffer.getSlice(at: buffer.readerIndex, length: wanted)!)
            position += Int64(wanted)
        }
        if position < range.upperBound {
            throw CacheTierError(.transient, "the response ended at byte \(position) of \(range.upperBound)")
        }
    }

    /// Downloads `segments` with `parallelDownloads` requests in flight and delivers
    /// them in order. The segment at the head streams into the decoder as its bytes
    /// arrive; workers run ahead of it by at most `2 × parallelDownloads` segments, so
    /// no connection idles while the decoder catches up and memory stays bounded.
    private func fetchInParallel(
        _ object: GCSObject,
        segments: [Range<Int64>],
        requests: RequestCounter,
        progress: TransferProgress,
        logger: Logger,
        deliver: (ByteBuffer) async throws -> Void
    ) async throws {
        let parallel = configuration.parallelDownloads
        let schedule = SegmentSchedule(count: segments.count, window: 2 * parallel)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<min(parallel, segments.count) {
                group.addTask {
                    while let index = await schedule.claim() {
                        let pipe = schedule.pipe(index)
                        do {
                            try await self.fetch(object, range: segments[index], requests: requests, logger: logger) { buffer in
                                pipe.push(buffer)
                                // Bytes arriving behind the head are signs of life too.
                                progress.touch()
                            }
                            pipe.finish(throwing: nil)
                        } catch {
                            pipe.finish(throwing: error)
                            return
                        }
                    }
                }
            }
            for index in segments.indices {
                let head = schedule.pipe(index)
                while let buffer = try await head.next() {
                    try await deliver(buffer)
                }
                schedule.delivered(index)
            }
        }
    }

    // MARK: upload retries

    /// Whether a failed upload request is retried on the spot (downloads are resumed by
    /// the chain's ``ArchiveSource`` download instead). A Retry-After longer than the
    /// longest inline backoff (8 s) fails the publish.
    static func isWorthRetrying(_ error: any Error) -> Bool {
        if error is CancellationError { return false }
        if let error = error as? CacheTierError {
            if let retryAfter = error.retryAfter, retryAfter > .seconds(8) { return false }
            return error.kind == .transient || error.kind == .timeout
        }
        if let error = error as? HTTPClientError, error == .cancelled { return false }
        // A connection that dropped while the body streamed.
        return true
    }

    /// Exponential backoff with jitter (0.25 s, 0.5 s, 1 s, … up to 8 s), or the
    /// server's Retry-After when it gave one.
    static func backoff(retry: Int, error: any Error) -> Duration {
        if let retryAfter = (error as? CacheTierError)?.retryAfter { return retryAfter }
        let ceiling = min(8.0, 0.25 * pow(2, Double(retry - 1)))
        return .milliseconds(Int(Double.random(in: ceiling / 2...ceiling) * 1000))
    }

    // MARK: requests

    /// Sends a request with a fresh access token. On 401 the token is invalidated and
    /// the request sent once more; connection failures become tier errors.
    func send(
        what: String,
        requests: RequestCounter,
        logger: Logger,
        body: Int64? = nil,
        _ make: () throws -> HTTPClientRequest
    ) async throws -> HTTPClientResponse {
        var refreshed = false
        while true {
            let token = try await configuration.credentials.token(logger: logger)
            var request = try make()
            request.headers.replaceOrAdd(name: "User-Agent", value: "cachetiers/\(CacheTiersVersion.current)")
            if let token { request.headers.replaceOrAdd(name: "Authorization", value: "Bearer \(token)") }
            requests.increment()
            let response = try await client.executeForTier(
                request, endpoint: configuration.endpoint, connectTimeout: configuration.connectTimeout, what: what,
                logger: logger
            )
            if response.status.code == 401, let token, !refreshed {
                refreshed = true
                logger.notice("GCS refused the access token; refreshing it once", metadata: ["while": "\(what)"])
                await configuration.credentials.invalidate(token)
                continue
            }
            return response
        }
    }

    /// The tier error for an unexpected answer, with the server's own message.
    func failure(_ response: HTTPClientResponse, what: String) async -> CacheTierError {
        let body = try? await response.body.collect(upTo: 16 * 1024)
        let message = GCSErrorBody.message(from: body)
        let detail = message.isEmpty ? "" : ": \(message)"
        let code = Int(response.status.code)
        switch code {
        case 401:
            return CacheTierError(
                .unauthorized,
                "GCS refused the credentials (401) while \(what)\(detail); check gcs.credentials (a token file, a service-account key, or the metadata server)"
            )
        case 403:
            return CacheTierError(
                .unauthorized,
                "GCS denied access (403) while \(what)\(detail); grant the account storage object access on \(bucketDescription)"
            )
        case 408, 429, 500...599:
            return CacheTierError(.transient, "GCS answered \(code) while \(what)\(detail)", retryAfter: response.retryAfter)
        default:
            return CacheTierError(.transient, "GCS answered \(code) while \(what)\(detail)")
        }
    }
}

/// Counts the requests one restore or publish makes, for the report and its cost.
final class RequestCounter: Sendable {
    private let count = Atomic<Int>(0)

    func increment() { count.add(1, ordering: .relaxed) }
    var value: Int { count.load(ordering: .relaxed) }
}
