import AsyncHTTPClient
import Foundation
import NIOCore

/// What the JSON API's object resource tells a restore (`GET /storage/v1/b/B/o/NAME`).
struct GCSObject: Sendable, Decodable {
    var name: String
    var size: Int64
    var generation: String
    var crc32c: String?
    var metadata: [String: String]?
    /// Moved forward on hits so a lifecycle rule on `daysSinceCustomTime` deletes what is
    /// no longer used; nil when the object has none (or an unreadable one).
    var customTime: Date?
    /// Counts metadata changes; a PATCH pinned to it (`ifMetagenerationMatch`) applies once.
    var metageneration: Int64?

    enum CodingKeys: String, CodingKey { case name, size, generation, crc32c, metadata, customTime, metageneration }

    init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        name = try container.decode(String.self, forKey: .name)
        // The JSON API sends 64-bit numbers as strings.
        let sizeText = try container.decode(String.self, forKey: .size)
        guard let size = Int64(sizeText) else {
            throw DecodingError.dataCorruptedError(forKey: .size, in: container, debugDescription: "not a number: \(sizeText)")
        }
        self.size = size
        generation = try container.decode(String.self, forKey: .generation)
        crc32c = try container.decodeIfPresent(String.self, forKey: .crc32c)
        metadata = try container.decodeIfPresent([String: String].self, forKey: .metadata)
        // Only a hit's customTime refresh reads these: a malformed one costs that, never the restore.
        customTime = (try? container.decodeIfPresent(String.self, forKey: .customTime)).flatMap { $0.flatMap(Date.init(rfc3339:)) }
        metageneration = (try? container.decodeIfPresent(String.self, forKey: .metageneration)).flatMap { $0.flatMap { Int64($0) } }
    }

    /// The manifest CacheTiers stores in the object's custom metadata, if this object has one.
    func manifest() throws -> CacheManifest? {
        guard let text = metadata?[GCSSource.manifestMetadataKey] else { return nil }
        return try CacheManifest(jsonData: Data(text.utf8))
    }
}

/// The JSON API's error body: `{"error":{"code":N,"message":"..."}}`.
struct GCSErrorBody: Decodable {
    struct Detail: Decodable { var code: Int?; var message: String? }
    var error: Detail

    /// The server's message, or the raw body when it is not the JSON error shape.
    static func message(from body: ByteBuffer?) -> String {
        guard let body, body.readableBytes > 0 else { return "" }
        if let decoded = try? JSONDecoder().decode(GCSErrorBody.self, from: Data(body.readableBytesView)),
            let message = decoded.error.message
        {
            return message
        }
        return String(buffer: body).trimmingCharacters(in: .whitespacesAndNewlines)
    }
}

extension Date {
    /// The RFC 3339 timestamp GCS writes (`2026-12-02T01:41:00.123Z`), with or without
    /// fractional seconds; nil for anything else.
    init?(rfc3339 text: String) {
        if let date = try? Date(text, strategy: RestoreReport.timestampStyle) {
            self = date
        } else if let date = try? Date(text, strategy: Date.ISO8601FormatStyle()) {
            self = date
        } else {
            return nil
        }
    }

    /// The date as GCS takes it in `customTime`: RFC 3339 in UTC, to the millisecond.
    var rfc3339: String { formatted(RestoreReport.timestampStyle) }
}

extension String {
    /// Percent-encodes the string as ONE URL path segment, as the JSON API wants object
    /// names (`/` becomes `%2F`).
    var gcsPathSegment: String {
        let unreserved = CharacterSet(
            charactersIn: "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
        )
        return addingPercentEncoding(withAllowedCharacters: unreserved) ?? self
    }
}
