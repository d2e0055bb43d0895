import CacheTiers
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdCore
import NIOCore

/// `GET /v1/caches?limit=N&after=KEY` (and HEAD): one page of the archives the master
/// holds, in ascending key order (Documentation/CacheMasterAPI.md).
struct CacheListRoutes: Sendable {
    let server: CacheMasterServer

    func register(on router: Router<BasicRequestContext>) {
        router.getAndHead("/v1/caches") { request, _ in try list(request) }
    }

    private func list(_ request: Request) throws -> Response {
        let query = try CacheListQuery(request.uri.queryParameters)
        let page = server.retention.listArchives(after: query.after, limit: query.limit)
        let body: Data
        do {
            body = try CacheListQuery.encoder.encode(page)
        } catch {
            throw HTTPError(.internalServerError, message: "the listing could not be encoded: \(error)\n")
        }
        return Response(
            status: .ok,
            headers: [.contentType: "application/json", .cacheControl: "no-store", .contentLength: "\(body.count)"],
            body: .init(byteBuffer: ByteBuffer(bytes: body))
        )
    }
}

/// The query of `GET /v1/caches`, checked: `limit` 1…``ArchivePage/maximumLimit``
/// (default ``ArchivePage/defaultLimit``), `after` a valid key, each at most once.
/// Anything else is a 400 naming the parameter; other parameters are ignored.
struct CacheListQuery: Equatable {
    var limit: Int
    var after: CacheKey?

    /// How a page is encoded: the contract's `.iso8601` dates and sorted keys.
    static let encoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        encoder.dateEncodingStrategy = .iso8601
        return encoder
    }()

    init(_ parameters: FlatDictionary<Substring, Substring>) throws {
        let range = 1...ArchivePage.maximumLimit
        limit = ArchivePage.defaultLimit
        if let text = try Self.single("limit", in: parameters) {
            // Digits only, at most four of them, so no sign, space or overflow gets through.
            guard text.count <= 4, text.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }),
                let value = Int(text), range.contains(value)
            else {
                throw HTTPError(.badRequest, message: "limit must be a whole number from 1 to \(range.upperBound)\n")
            }
            limit = value
        }
        after = nil
        if let text = try Self.single("after", in: parameters) {
            do {
                after = try CacheKey(String(text))
            } catch {
                throw HTTPError(.badRequest, message: "after must be a cache key: \(error)\n")
            }
        }
    }

    /// The parameter's value when given once, nil when not given.
    private static func single(_ name: Substring, in parameters: FlatDictionary<Substring, Substring>) throws -> Substring? {
        let values = parameters[values: name]
        guard values.count <= 1 else { throw HTTPError(.badRequest, message: "\(name) is given more than once\n") }
        return values.first
    }
}
