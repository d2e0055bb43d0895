import AsyncHTTPClient
import Foundation
import Logging
import NIOCore

extension GCSSource {
    public func contains(_ key: CacheKey, logger: Logger) async throws -> Bool {
        try await metadata(of: objectName(for: key), requests: RequestCounter(), logger: logger) != nil
    }

    /// Uploads the archive create-only (`ifGenerationMatch=0`) with its manifest in the
    /// object's custom metadata, `customTime` set to now, and its CRC32C, which the server checks before the
    /// object becomes visible.
    ///
    /// Archives up to one `uploadChunkSize` go up in one multipart request; larger ones
    /// through a resumable session in chunks of that size, resumed after a failed chunk
    /// by asking the session how much it holds. Only a completed upload becomes an
    /// object, so a failure leaves nothing behind (the session is cancelled too).
    public func publish(_ archive: PackedArchive, logger: Logger) async throws -> PublishOutcome {
        let name = objectName(for: archive.key)
        let path = archive.file.string
        guard let attributes = try? FileManager.default.attributesOfItem(atPath: path),
            let size = (attributes[.size] as? NSNumber)?.int64Value
        else {
            throw CacheTierError(.fatal, "cannot read the archive to publish at \(path)")
        }
        guard size == archive.manifest.archiveSize else {
            throw CacheTierError(
                .corrupt, "the archive at \(path) has \(size) bytes but its manifest says \(archive.manifest.archiveSize)"
            )
        }
        let resource = ObjectResource(
            name: name,
            contentType: "application/zstd",
            crc32c: try CRC32C.ofFile(at: path).base64,
            customTime: Date().rfc3339,
            metadata: [Self.manifestMetadataKey: String(decoding: try archive.manifest.compactJSONData(), as: UTF8.self)]
        )
        let requests = RequestCounter()
        let outcome: PublishOutcome
        TransferProgress.upload?.setTotal(size)
        if size <= Int64(configuration.uploadChunkSize) {
            outcome = try await multipartUpload(path: path, resource: resource, requests: requests, logger: logger)
        } else {
            do {
                outcome = try await resumableUpload(path: path, size: size, resource: resource, requests: requests, logger: logger)
            } catch let wrong as WrongObjectCompleted {
                // The bad object is gone again; one fresh session, from byte 0.
                logger.notice("GCS completed an upload with the wrong bytes; removed it and uploading again", metadata: ["detail": "\(wrong)"])
                outcome = try await resumableUpload(path: path, size: size, resource: resource, requests: requests, logger: logger)
            }
        }
        logger.debug(
            "published to GCS",
            metadata: ["object": "\(name)", "outcome": "\(outcome)", "bytes": "\(size)", "requests": "\(requests.value)"]
        )
        return outcome
    }

    struct ObjectResource: Encodable {
        var name: String
        var contentType: String
        var crc32c: String
        /// The upload's time: every object CacheTiers writes carries one, so a lifecycle
        /// rule on `daysSinceCustomTime` applies to it from the start.
        var customTime: String
        var metadata: [String: String]
    }

    private var uploadBase: String {
        "\(configuration.endpoint)/upload/storage/v1/b/\(configuration.bucket.gcsPathSegment)/o"
    }

    /// One request: JSON metadata and media as `multipart/related`.
    private func multipartUpload(
        path: String,
        resource: ObjectResource,
        requests: RequestCounter,
        logger: Logger
    ) async throws -> PublishOutcome {
        guard let media = FileManager.default.contents(atPath: path) else {
            throw CacheTierError(.fatal, "cannot read the archive to publish at \(path)")
        }
        let boundary = "cachetiers-\(UUID().uuidString)"
        var body = ByteBuffer()
        body.writeString("--\(boundary)\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n")
        body.writeBytes(try JSONEncoder().encode(resource))
        body.writeString("\r\n--\(boundary)\r\nContent-Type: application/zstd\r\n\r\n")
        body.writeBytes(media)
        body.writeString("\r\n--\(boundary)--\r\n")
        let url = "\(uploadBase)?uploadType=multipart&ifGenerationMatch=0"
        let what = "uploading \(bucketDescription)/\(resource.name)"
        var retries = 0
        while true {
            do {
                let response = try await send(what: what, requests: requests, logger: logger) {
                    var request = HTTPClientRequest(url: url)
                    request.method = .POST
                    request.headers.add(name: "Content-Type", value: "multipart/related; boundary=\(boundary)")
                    request.body = .progressReporting(body, to: TransferProgress.upload)
                    return request
                }
                switch response.status.code {
                case 200, 201:
                    _ = try? await response.body.collect(upTo: 1 << 20)
                    return .published
                case 412:
                    return .exists
                default: throw await failure(response, what: what)
                }
            } catch let error where Self.isWorthRetrying(error) && retries < configuration.retriesPerRequest {
                // Safe to repeat: ifGenerationMatch=0 makes a second insert a 412.
                retries += 1
                try await Task.sleep(for: Self.backoff(retry: retries, error: error))
            }
        }
    }

    /// A resumable session: initiate, then PUT chunks; after a failure ask the session
    /// what it holds and go on from there.
    private func resumableUpload(
        path: String,
        size: Int64,
        resource: ObjectResource,
        requests: RequestCounter,
        logger: Logger
    ) async throws -> PublishOutcome {
        let what = "uploading \(bucketDescription)/\(resource.name)"
        let metadata = try JSONEncoder().encode(resource)
        let initiation = try await send(what: what, requests: requests, logger: logger) {
            var request = HTTPClientRequest(url: "\(uploadBase)?uploadType=resumable&ifGenerationMatch=0")
            request.method = .POST
            request.headers.add(name: "Content-Type", value: "application/json; charset=UTF-8")
            request.headers.add(name: "X-Upload-Content-Type", value: "application/zstd")
            request.headers.add(name: "X-Upload-Content-Length", value: "\(size)")
            request.body = .bytes(ByteBuffer(bytes: metadata))
            return request
        }
        switch initiation.status.code {
        case 200, 201: break
        case 412: return .exists
        default: throw await failure(initiation, what: what)
        }
        guard let session = initiation.headers.first(name: "Location") else {
            throw CacheTierError(.transient, "GCS started an upload session without a Location header while \(what)")
        }
        guard let file = FileHandle(forReadingAtPath: path) else {
            throw CacheTierError(.fatal, "cannot read the archive to publish at \(path)")
        }
        defer { try? file.close() }

        var offset: Int64 = 0
        var retries = 0
        let progress = TransferProgress.upload
        do {
            while true {
                try Task.checkCancellation()
                do {
                    let end = min(offset + Int64(configuration.uploadChunkSize), size)
                    try file.seek(toOffset: UInt64(offset))
                    let chunk = try file.read(upToCount: Int(end - offset)) ?? Data()
                    guard chunk.count == Int(end - offset) else {
                        throw CacheTierError(.fatal, "the archive at \(path) shrank while it was being uploaded")
                    }
                    let range = "bytes \(offset)-\(end - 1)/\(size)"
                    let response = try await send(what: what, requests: requests, logger: logger) {
                        var request = HTTPClientRequest(url: session)
                        request.method = .PUT
                        request.headers.add(name: "Content-Range", value: range)
                        request.body = .progressReporting(ByteBuffer(bytes: chunk), to: progress)
                        return request
                    }
                    switch try await sessionState(
                        response, size: size, resource: resource, what: what, requests: requests, logger: logger
                    ) {
                    case .complete(let outcome): return outcome
                    case .persisted(let persisted):
                        if persisted > offset { retries = 0 }
                        offset = persisted
                    }
                } catch let error where Self.isWorthRetrying(error) && retries < configuration.retriesPerRequest {
                    retries += 1
                    let wait = Self.backoff(retry: retries, error: error)
                    logger.notice(
                        "GCS upload chunk failed; asking the session what it holds",
                        metadata: ["object": "\(resource.name)", "offset": "\(offset)", "wait": "\(wait)", "error": "\(error)"]
                    )
                    try await Task.sleep(for: wait)
                    let status = try await send(what: what, requests: requests, logger: logger) {
                        var request = HTTPClientRequest(url: session)
                        request.method = .PUT
                        request.headers.add(name: "Content-Range", value: "bytes */\(size)")
                        request.headers.add(name: "Content-Length", value: "0")
                        return request
                    }
                    switch try await sessionState(
                        status, size: size, resource: resource, what: what, requests: requests, logger: logger
                    ) {
                    case .complete(let outcome): return outcome
                    case .persisted(let persisted): offset = persisted
                    }
                }
            }
        } catch let error as WrongObjectCompleted {
            throw error
        } catch {
            // Cancel the session so no upload lingers for the week GCS keeps it.
            var cancel = HTTPClientRequest(url: session)
            cancel.method = .DELETE
            _ = try? await client.execute(cancel, timeout: .seconds(10))
            throw error
        }
    }

    private enum SessionState {
        case complete(PublishOutcome)
        case persisted(Int64)
    }

    /// Reads a resumable session's answer: done, or how many bytes it holds.
    private func sessionState(
        _ response: HTTPClientResponse,
        size: Int64,
        resource: ObjectResource,
        what: String,
        requests: RequestCounter,
        logger: Logger
    ) async throws -> SessionState {
        switch response.status.code {
        case 200, 201:
            // The object the session made must be ours: a server that completes a
            // session early (fake-gcs-server does on a status query) would otherwise
            // leave a truncated archive under the key.
            let body = try? await response.body.collect(upTo: 1 << 20)
            if let body, let object = try? JSONDecoder().decode(GCSObject.self, from: Data(body.readableBytesView)),
                object.size != size || (object.crc32c != nil && object.crc32c != resource.crc32c)
            {
                await delete(object, requests: requests, logger: logger)
                throw WrongObjectCompleted(
                    description: "\(bucketDescription)/\(object.name) was completed with \(object.size) bytes (CRC32C \(object.crc32c ?? "none")) instead of \(size) (\(resource.crc32c))"
                )
            }
            return .complete(.published)
        case 412:
            return .complete(.exists)
        case 308:
            // Read the small body so the connection goes back to the pool.
            _ = try? await response.body.collect(upTo: 1 << 20)
            // `Range: bytes=0-N` means N+1 bytes are stored; absent means none. GCS
            // stores whole 256 KiB units until the last chunk, so any other count is
            // not to be trusted (an emulator claims one byte of an empty session).
            guard let header = response.headers.first(name: "Range"),
                let last = header.split(separator: "-").last.flatMap({ Int64($0) })
            else { return .persisted(0) }
            let persisted = last + 1
            return .persisted(persisted % Int64(256 << 10) == 0 || persisted == size ? persisted : 0)
        case 404, 410:
            throw CacheTierError(.transient, "the GCS upload session expired while \(what); the next attempt starts a new one")
        default:
            throw await failure(response, what: what)
        }
    }

    /// Deletes exactly this generation of an object (never one another VM wrote since).
    private func delete(_ object: GCSObject, requests: RequestCounter, logger: Logger) async {
        let url = "\(objectURL(object.name))?ifGenerationMatch=\(object.generation)"
        let response = try? await send(what: "removing \(object.name)", requests: requests, logger: logger) {
            var request = HTTPClientRequest(url: url)
            request.method = .DELETE
            return request
        }
        if let response, !(200..<300).contains(response.status.code) {
            logger.warning(
                "could not remove a wrongly completed object",
                metadata: ["object": "\(object.name)", "status": "\(response.status.code)"]
            )
        }
        _ = try? await response?.body.collect(upTo: 1 << 20)
    }
}

/// A resumable session completed, but not with our bytes; the object was removed.
struct WrongObjectCompleted: Error, CustomStringConvertible {
    var description: String
}
