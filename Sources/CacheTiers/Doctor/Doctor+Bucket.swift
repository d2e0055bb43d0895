import AsyncHTTPClient
import Foundation
import Logging
import NIOCore

/// The checks of one GCS tier, through the tier's own requests (its token, its refresh
/// on 401): the credentials give a token, the bucket lists under the prefix, and where
/// write-back reaches it, a create-only probe object is written and deleted at once.
struct BucketProbe: ArchiveSampling {
    let tier: String
    let source: GCSSource
    let doctor: Doctor.Configuration
    let field: String

    init(tier: String, configuration: GCSSource.Configuration, doctor: Doctor.Configuration, field: String) {
        self.tier = tier
        self.source = GCSSource(name: tier, configuration: configuration)
        self.doctor = doctor
        self.field = field
    }

    var tierName: String { tier }
    private var configuration: GCSSource.Configuration { source.configuration }
    private var bound: Duration { doctor.bound(connect: configuration.connectTimeout) }
    private var place: String {
        configuration.prefix.isEmpty ? source.bucketDescription : "\(source.bucketDescription)/\(configuration.prefix)"
    }

    func close() async {
        try? await source.shutdown()
    }

    /// One request through the tier, with its body's first 1 MiB; a `String` failure is the line to show.
    private func send(
        _ what: String, logger: Logger, _ make: @escaping @Sendable () throws -> HTTPClientRequest
    ) async -> Result<(status: Int, body: ByteBuffer), BucketFailure> {
        do {
            let answer = try await withTimeLimit(bound) { [source] in
                let response = try await source.send(what: what, requests: RequestCounter(), logger: logger, make)
                return (Int(response.status.code), try await response.body.collect(upTo: 1 << 20))
            }
            guard let answer else { return .failure(BucketFailure("GCS gave no answer within \(bound.inSeconds.formatted()) s while \(what)")) }
            return .success(answer)
        } catch let error as CacheTierError {
            return .failure(BucketFailure(error.message))
        } catch {
            return .failure(BucketFailure("\(what) failed: \(error)"))
        }
    }

    struct BucketFailure: Error, CustomStringConvertible {
        var description: String
        init(_ description: String) { self.description = description }
    }

    private func listURL(maxResults: Int, pageToken: String? = nil) -> String {
        var url = "\(configuration.endpoint)/storage/v1/b/\(configuration.bucket.gcsPathSegment)/o?maxResults=\(maxResults)"
        if !configuration.prefix.isEmpty { url += "&prefix=\(configuration.prefix.gcsPathSegment)" }
        if let pageToken { url += "&pageToken=\(pageToken.gcsPathSegment)" }
        return url
    }

    func check(writeBack: Bool, logger: Logger) async -> [DoctorCheck] {
        let id = "tier.\(tier)"
        let credentials = await self.credentials(id: "\(id).credentials", logger: logger)
        guard credentials.status == .ok else { return [credentials] }
        var checks = [credentials]
        let what = "listing \(place)"
        switch await send(what, logger: logger, { [listURL = listURL(maxResults: 1)] in HTTPClientRequest(url: listURL) }) {
        case .failure(let failure):
            checks.append(
                .fail(id, failure.description, fix: "check \(field).endpoint and the network: this VM must reach \(configuration.endpoint)")
            )
            return checks
        case .success(let answer) where answer.status == 200:
            checks.append(.ok(id, "\(place) is readable (listing it answered 200)"))
        case .success(let answer):
            let message = GCSErrorBody.message(from: answer.body)
            let detail = message.isEmpty ? "" : ": \(message)"
            switch answer.status {
            case 404:
                checks.append(
                    .fail(id, "the bucket \(source.bucketDescription) does not exist (404\(detail))", fix: "create the bucket, or correct \(field).bucket")
                )
            case 401, 403:
                checks.append(
                    .fail(
                        id, "GCS refused listing \(place) (\(answer.status)\(detail))",
                        fix: "grant the account roles/storage.objectViewer (or objectAdmin for write-back) on \(source.bucketDescription)"
                    )
                )
            default:
                checks.append(.fail(id, "GCS answered \(answer.status) while \(what)\(detail)", fix: "retry; if it persists, check the GCS status page"))
            }
            return checks
        }
        if writeBack { checks.append(await probeWrite(id: "\(id).write", logger: logger)) }
        return checks
    }

    private func credentials(id: String, logger: Logger) async -> DoctorCheck {
        if configuration.credentials is NoAccessToken {
            return .ok(id, "no credentials (credentials kind none): requests go unauthenticated, as to an emulator or a public bucket")
        }
        do {
            guard let token = try await withTimeLimit(bound, { [configuration] in try await configuration.credentials.token(logger: logger) }) else {
                return .fail(
                    id, "fetching an access token got no answer within \(bound.inSeconds.formatted()) s",
                    fix: "check that this VM reaches the token endpoint (the metadata server, or the key's token_uri)"
                )
            }
            return .ok(id, token == nil ? "the credentials need no token" : "the credentials gave an access token")
        } catch {
            let message = (error as? CacheTierError)?.message ?? "\(error)"
            return .fail(
                id, "the credentials gave no access token: \(message)",
                fix: "check \(field).credentials: the key file's account, the token file, or the VM's service account and scopes"
            )
        }
    }

    /// A create-only, empty probe object beside the archives (its name is not an
    /// archive's, so nothing lists it as one), deleted at once by its generation.
    private func probeWrite(id: String, logger: Logger) async -> DoctorCheck {
        let name = "\(configuration.prefix)cachetiers-doctor-probe-\(ScratchName.hostName)-\(getpid())-\(FileSystem.uniqueSuffix())"
        let described = "\(source.bucketDescription)/\(name)"
        let boundary = "cachetiers-doctor-\(FileSystem.uniqueSuffix())"
        var body = ByteBuffer()
        body.writeString("--\(boundary)\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n")
        body.writeString(#"{"name":"\#(name)","contentType":"application/octet-stream"}"#)
        body.writeString("\r\n--\(boundary)\r\nContent-Type: application/octet-stream\r\n\r\n\r\n--\(boundary)--\r\n")
        let uploadURL = "\(configuration.endpoint)/upload/storage/v1/b/\(configuration.bucket.gcsPathSegment)/o?uploadType=multipart&ifGenerationMatch=0"
        let grant = "grant the account roles/storage.objectCreator (or objectAdmin) on \(source.bucketDescription), or set \(field).writeBack to false"
        let created = await send("writing the probe object \(described)", logger: logger) { [body] in
            var request = HTTPClientRequest(url: uploadURL)
            request.method = .POST
            request.headers.add(name: "Content-Type", value: "multipart/related; boundary=\(boundary)")
            request.body = .bytes(body)
            return request
        }
        let generation: String
        switch created {
        case .failure(let failure):
            return .fail(id, failure.description, fix: grant)
        case .success(let answer) where (200..<300).contains(answer.status):
            struct Created: Decodable { var generation: String }
            guard let object = try? JSONDecoder().decode(Created.self, from: Data(answer.body.readableBytesView)) else {
                return .warn(id, "wrote the probe object \(described), but the answer named no generation to delete it by", fix: "delete \(described) by hand")
            }
            generation = object.generation
        case .success(let answer):
            let message = GCSErrorBody.message(from: answer.body)
            return .fail(id, "GCS refused writing the probe object \(described) (\(answer.status)\(message.isEmpty ? "" : ": \(message)")), so write-back to it fails", fix: grant)
        }
        let objectURL = source.objectURL(name) + "?ifGenerationMatch=\(generation)"
        let deleted = await send("deleting the probe object \(described)", logger: logger) {
            var request = HTTPClientRequest(url: objectURL)
            request.method = .DELETE
            return request
        }
        if case .success(let answer) = deleted, (200..<300).contains(answer.status) {
            return .ok(id, "\(place) is writable (wrote and deleted the empty probe object \(name))")
        }
        let why: String
        switch deleted {
        case .failure(let failure): why = failure.description
        case .success(let answer): why = "GCS answered \(answer.status)"
        }
        return .warn(
            id, "\(place) is writable, but the probe object \(name) could not be deleted (\(why))",
            fix: "delete \(described) by hand; write-back itself needs no delete permission"
        )
    }

    // MARK: ArchiveSampling

    func manifest(of key: CacheKey, logger: Logger) async throws -> CacheManifest? {
        try await source.metadata(of: source.objectName(for: key), requests: RequestCounter(), logger: logger)?.manifest()
    }

    func newestKey(logger: Logger) async throws -> CacheKey? {
        struct Page: Decodable {
            var items: [GCSObject]?
            var nextPageToken: String?
        }
        var newest: ArchiveListing?
        var pageToken: String?
        for _ in 0..<Self.maximumPages {
            let url = listURL(maxResults: ArchivePage.maximumLimit, pageToken: pageToken)
            guard case .success(let answer) = await send("listing \(place)", logger: logger, { HTTPClientRequest(url: url) }),
                answer.status == 200, let page = try? JSONDecoder().decode(Page.self, from: Data(answer.body.readableBytesView))
            else { break }
            let listings = (page.items ?? []).compactMap { object -> ArchiveListing? in
                guard let manifest = try? object.manifest(), object.name == source.objectName(for: manifest.key) else { return nil }
                return ArchiveListing(key: manifest.key, size: object.size, sha256: manifest.archiveSHA256, createdAt: manifest.createdAt)
            }
            newest = Self.newest(listings + (newest.map { [$0] } ?? []))
            guard let next = page.nextPageToken, !next.isEmpty else { break }
            pageToken = next
        }
        return newest?.key
    }

    func firstBytes(of key: CacheKey, count: Int, logger: Logger) async throws -> [UInt8] {
        let url = source.objectURL(source.objectName(for: key)) + "?alt=media"
        guard case .success(let answer) = await send("reading the start of \(key)", logger: logger, {
            var request = HTTPClientRequest(url: url)
            request.headers.add(name: "Range", value: "bytes=0-\(count - 1)")
            return request
        }), answer.status == 200 || answer.status == 206 else { return [] }
        return Array(answer.body.readableBytesView.prefix(count))
    }
}
