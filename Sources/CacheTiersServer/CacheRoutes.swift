import CacheTiers
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore

extension HTTPField.Name {
    /// The manifest of a `PUT`, and of a `GET` or `HEAD` answer, as base64 of its JSON.
    static let cacheTiersManifest = HTTPField.Name("X-CacheTiers-Manifest")!
}

/// The HTTP API of the cache master (see Documentation/CacheMasterAPI.md).
struct CacheRoutes: Sendable {
    let server: CacheMasterServer

    var folder: ArchiveFolder { server.folder }

    func register(on router: Router<BasicRequestContext>) {
        router.getAndHead("/healthz") { _, _ in "ok\n" }
        router.getAndHead("/metrics") { _, _ in
            Response(
                status: .ok,
                headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: .init(byteBuffer: ByteBuffer(string: server.metricsText()))
            )
        }
        router.get("/v1/caches/:key") { request, context in try await download(request, context, includeBody: true) }
        router.head("/v1/caches/:key") { request, context in try await download(request, context, includeBody: false) }
        router.get("/v1/caches/:key/manifest") { _, context in try manifest(context) }
        router.put("/v1/caches/:key") { request, context in try await upload(request, context) }
    }

    private func key(_ context: BasicRequestContext) throws -> CacheKey {
        let raw = context.parameters.get("key") ?? ""
        do {
            return try CacheKey(raw)
        } catch {
            throw HTTPError(.badRequest, message: "invalid cache key: \(error)\n")
        }
    }

    private func manifest(_ context: BasicRequestContext) throws -> Response {
        let key = try key(context)
        let manifest: CacheManifest?
        do {
            manifest = try folder.manifest(for: key)
        } catch {
            throw HTTPError(.internalServerError, message: "the manifest of \(key) is unreadable: \(error)\n")
        }
        guard let manifest else { throw HTTPError(.notFound, message: "no cache for \(key)\n") }
        return Response(
            status: .ok,
            headers: [.contentType: "application/json"],
            body: .init(byteBuffer: ByteBuffer(bytes: try manifest.jsonData()))
        )
    }

    private func busy() -> HTTPError {
        HTTPError(
            .serviceUnavailable,
            headers: [.retryAfter: "\(server.configuration.retryAfterSeconds)"],
            message: "the cache master is serving \(server.transfers.limit) transfers; retry shortly\n"
        )
    }

    private func download(_ request: Request, _ context: BasicRequestContext, includeBody: Bool) async throws -> Response {
        let key = try key(context)
        let archive: ArchiveFolder.OpenArchive
        let lookup: ArchiveFolder.Lookup
        do {
            lookup = try folder.lookup(key)
        } catch {
            throw HTTPError(.internalServerError, message: "the archive of \(key) cannot be opened: \(error)\n")
        }
        switch lookup {
        case .missing:
            throw HTTPError(.notFound, message: "no cache for \(key)\n")
        case .changing:
            throw HTTPError(.serviceUnavailable, headers: [.retryAfter: "1"], message: "\(key) is being replaced; retry\n")
        case .inconsistent(let archiveSize, let manifestSize):
            // A miss to clients, so they fall through instead of retrying what will not heal.
            throw HTTPError(
                .notFound,
                message: "no usable cache for \(key): the archive is \(archiveSize) bytes but its manifest says \(manifestSize); publish it again without If-None-Match to replace it\n"
            )
        case .found(let found):
            archive = found
        }
        let etag = "\"\(archive.manifest.archiveSHA256)\""
        // The manifest rides with the body it describes (both from one open archive), so
        // a client can prove the archive is the key's before it promotes the tree.
        var headers: HTTPFields = [
            .contentType: "application/zstd",
            .eTag: etag,
            .acceptRanges: "bytes",
            .cacheTiersManifest: try archive.manifest.jsonData().base64EncodedString(),
        ]
        if let ifMatch = request.headers[.ifMatch], ifMatch != "*",
            !ifMatch.split(separator: ",").contains(where: { $0.trimmingCharacters(in: .whitespaces) == etag })
        {
            throw HTTPError(.preconditionFailed, message: "the archive of \(key) changed; its ETag is now \(etag)\n")
        }

        var byteRange = Int64(0)..<archive.size
        var status = HTTPResponse.Status.ok
        if let header = request.headers[.range] {
            switch ByteRange.parse(header, size: archive.size) {
            case .whole:
                break
            case .unsatisfiable:
                throw HTTPError(
                    .rangeNotSatisfiable, headers: [.contentRange: "bytes */\(archive.size)"],
                    message: "range \(header) is outside the \(archive.size)-byte archive\n"
                )
            case .partial(let partial):
                byteRange = partial
                status = .partialContent
                headers[.contentRange] = "bytes \(partial.lowerBound)-\(partial.upperBound - 1)/\(archive.size)"
            }
        }
        headers[.contentLength] = "\(byteRange.count)"
        guard includeBody else {
            return Response(status: status, headers: headers, body: .init())
        }
        guard server.transfers.acquire() else { throw busy() }
        // MARK: Retention
        // Held until the body is sent (or dropped): retention does not evict what is streamed.
        let use = server.retention.inUse.hold(key)
        if byteRange.lowerBound == 0 { await server.retention.recordHit(archive.manifest) }

        let chunkSize = server.configuration.chunkSize
        let metrics = server.metrics
        let transfers = server.transfers
        let allocator = ByteBufferAllocator()
        let range = byteRange
        let body = ResponseBody(contentLength: Int(range.count)) { writer in
            defer {
                transfers.release()
                use.release()
            }
            var offset = range.lowerBound
            while offset < range.upperBound {
                let length = Int(min(Int64(chunkSize), range.upperBound - offset))
                let chunk = try await archive.read(at: offset, length: length, allocator: allocator)
                try await writer.write(chunk)
                metrics.bytesServed.increment(by: Int64(length))
                offset += Int64(length)
            }
            try await writer.finish(nil)
        }
        return Response(status: status, headers: headers, body: body)
    }

    private func upload(_ request: Request, _ context: BasicRequestContext) async throws -> Response {
        let key = try key(context)
        guard let encoded = request.headers[.cacheTiersManifest], let json = Data(base64Encoded: encoded) else {
            throw HTTPError(.badRequest, message: "a PUT needs the archive's manifest as base64 JSON in X-CacheTiers-Manifest\n")
        }
        let manifest: CacheManifest
        do {
            manifest = try CacheManifest(jsonData: json)
        } catch {
            throw HTTPError(.badRequest, message: "X-CacheTiers-Manifest is not a cache manifest: \(error)\n")
        }
        guard manifest.key == key else {
            throw HTTPError(.badRequest, message: "the manifest is for \(manifest.key), not \(key)\n")
        }
        if let problem = manifest.problem {
            throw HTTPError(.badRequest, message: "X-CacheTiers-Manifest is not a usable manifest: \(problem)\n")
        }
        let createOnly = request.headers[.ifNoneMatch] == "*"
        if createOnly, folder.contains(key) {
            throw HTTPError(.preconditionFailed, message: "\(key) is already published\n")
        }
        // MARK: Retention
        // Before a byte of the body is read: what the manifest says cannot fit is refused.
        guard server.retention.admits(manifest.archiveSize) else { throw insufficientStorage(manifest) }
        guard server.transfers.acquire() else { throw busy() }
        defer { server.transfers.release() }
        let use = server.retention.inUse.hold(key)
        defer { use.release() }

        let upload: ArchiveFolder.Publication
        do {
            upload = try folder.beginPublication(of: key, logger: server.logger)
        } catch {
            throw HTTPError(.internalServerError, message: "\(error)\n")
        }
        for try await buffer in request.body {
            try await upload.append(buffer)
            server.metrics.bytesReceived.increment(by: Int64(buffer.readableBytes))
            if upload.size > manifest.archiveSize {
                throw HTTPError(.badRequest, message: "the upload is longer than the manifest's \(manifest.archiveSize) bytes\n")
            }
        }
        if let mismatch = upload.mismatch(with: manifest) {
            throw HTTPError(.badRequest, message: "the upload \(mismatch)\n")
        }
        // MARK: Retention
        // Room is made before the archive lands, so the archives kept stay under --max-size.
        if server.retention.policy.limitsAnything, let report = await server.retention.enforceOffloaded(incoming: manifest.archiveSize),
            !report.fits
        {
            throw insufficientStorage(manifest)
        }
        let outcome: ArchiveFolder.PublishOutcome
        do {
            outcome = try folder.commit(
                upload, manifest: manifest, mode: createOnly ? .createOnly(orphanAge: server.configuration.orphanGracePeriod) : .replace,
                logger: server.logger
            )
        } catch {
            throw HTTPError(.internalServerError, message: "\(error)\n")
        }
        switch outcome {
        case .exists:
            throw HTTPError(.preconditionFailed, message: "\(key) is already published\n")
        case .created:
            server.retention.recordPublished(manifest)
            server.logger.info("published", metadata: ["key": "\(key)", "bytes": "\(upload.size)"])
            await server.replicateNewArchive(key)
            return Response(status: .created, headers: [.eTag: "\"\(manifest.archiveSHA256)\""])
        case .replaced:
            server.retention.recordPublished(manifest)
            server.logger.info("replaced", metadata: ["key": "\(key)", "bytes": "\(upload.size)"])
            return Response(status: .ok, headers: [.eTag: "\"\(manifest.archiveSHA256)\""])
        }
    }
}

// MARK: Retention
extension HTTPResponse.Status {
    /// RFC 4918's 507, which HTTPTypes does not name.
    static let insufficientStorage = HTTPResponse.Status(code: 507, reasonPhrase: "Insufficient Storage")
}

extension CacheRoutes {
    /// 507: the archive cannot fit under `--max-size` even with every evictable archive gone.
    func insufficientStorage(_ manifest: CacheManifest) -> HTTPError {
        let policy = server.retention.policy
        let limit = policy.maxSize ?? StorageSize(bytes: .max)
        let what = "the cache master cannot store the \(manifest.archiveSize)-byte archive of \(manifest.key) under --max-size \(limit)"
        guard manifest.archiveSize <= limit.bytes else {
            return HTTPError(.insufficientStorage, message: "\(what): it is larger than the limit itself; raise --max-size\n")
        }
        return HTTPError(
            .insufficientStorage,
            message: "\(what): the archives it holds are being served or younger than --min-age \(policy.minAge); retry later, or raise --max-size\n"
        )
    }
}

/// A single `Range: bytes=…` request, as RFC 9110 reads it.
///
/// Every bound comes from the request, so nothing here may trap: positions are parsed
/// as unsigned digits only, and a last-byte-pos past the end is clamped before any
/// arithmetic (`bytes=0-9223372036854775807` is the whole archive, not an overflow).
enum ByteRange: Equatable {
    case whole
    case partial(Range<Int64>)
    case unsatisfiable

    /// Multiple ranges and malformed headers are ignored (the whole archive is sent),
    /// as the RFC allows.
    static func parse(_ header: String, size: Int64) -> ByteRange {
        guard size >= 0, header.hasPrefix("bytes="), !header.contains(",") else { return .whole }
        let spec = header.dropFirst("bytes=".count).trimmingCharacters(in: .whitespaces)
        let parts = spec.split(separator: "-", maxSplits: 1, omittingEmptySubsequences: false)
        guard parts.count == 2 else { return .whole }
        if parts[0].isEmpty {
            guard let suffix = position(parts[1]) else { return .whole }
            guard suffix > 0, size > 0 else { return .unsatisfiable }
            return .partial((suffix >= size ? 0 : size - suffix)..<size)
        }
        guard let start = position(parts[0]) else { return .whole }
        guard start < size else { return .unsatisfiable }
        if parts[1].isEmpty { return .partial(start..<size) }
        guard let end = position(parts[1]), end >= start else { return .whole }
        // `end < size` here, so `end + 1` cannot overflow.
        return .partial(start..<(end >= size ? size : end + 1))
    }

    /// A byte position: ASCII digits only (no sign, no spaces), saturating at `Int64.max`.
    private static func position(_ text: Substring) -> Int64? {
        guard !text.isEmpty, text.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }) else { return nil }
        return Int64(text) ?? .max
    }
}
