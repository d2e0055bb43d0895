import AsyncHTTPClient
import Foundation
import Logging

extension GCSSource: ArchiveInventory {
    /// The bucket's archives under the prefix after `after`, in key order, each from the
    /// object list's own answer (size, and the manifest in its metadata): no request per
    /// object.
    ///
    /// Object names sort differently from keys (`a.b.tar.zst` before `a.tar.zst`), so
    /// one page reads the list from `{prefix}{after}` (every later key's name sorts at or
    /// past it) to its end and keeps the `limit` smallest keys: memory stays one page's.
    /// Objects that are not `{prefix}KEY.tar.zst` for a valid key, or carry no usable
    /// manifest, are left out (they cannot be copied as CacheTiers archives).
    public func listArchives(after: CacheKey?, limit: Int, logger: Logger) async throws -> ArchivePage {
        let limit = min(max(1, limit), ArchivePage.maximumLimit)
        var kept: [ArchiveListing] = []
        var more = false
        var pageToken: String?
        repeat {
            let token = pageToken
            let list = try await withTimeLimit(listingTimeLimit, tier: name, "\(bucketDescription) asked for a page of its objects") {
                try await self.objectsPage(startOffset: after.map { self.configuration.prefix + $0.rawValue }, pageToken: token, logger: logger)
            }
            for object in list.items ?? [] {
                guard let listing = listing(of: object) else { continue }
                if let after, !after.precedes(listing.key) { continue }
                let index = kept.partitioningIndex { listing.key.precedes($0.key) }
                if index == limit {
                    more = true
                    continue
                }
                kept.insert(listing, at: index)
                if kept.count > limit {
                    kept.removeLast()
                    more = true
                }
            }
            // A server that hands back the token it was given would page for ever.
            pageToken = list.nextPageToken == pageToken ? nil : list.nextPageToken
        } while pageToken != nil
        return ArchivePage(archives: kept, next: more ? kept.last?.key : nil)
    }

    /// One page of the JSON API's object list under the prefix.
    private func objectsPage(startOffset: String?, pageToken: String?, logger: Logger) async throws -> ObjectList {
        var components = URLComponents(string: "\(configuration.endpoint)/storage/v1/b/\(configuration.bucket.gcsPathSegment)/o")!
        var query = [URLQueryItem(name: "maxResults", value: "\(ArchivePage.maximumLimit)")]
        if !configuration.prefix.isEmpty { query.append(URLQueryItem(name: "prefix", value: configuration.prefix)) }
        if let startOffset { query.append(URLQueryItem(name: "startOffset", value: startOffset)) }
        if let pageToken { query.append(URLQueryItem(name: "pageToken", value: pageToken)) }
        components.queryItems = query
        // `+` is a space to some servers in a query: the key alphabet has none, but a prefix may.
        components.percentEncodedQuery = components.percentEncodedQuery?.replacingOccurrences(of: "+", with: "%2B")
        let url = components.url!.absoluteString
        let what = "listing \(bucketDescription)/\(configuration.prefix)"
        let response = try await send(what: what, requests: RequestCounter(), logger: logger) { HTTPClientRequest(url: url) }
        guard response.status.code == 200 else { throw await failure(response, what: what) }
        let body = try await response.body.collect(upTo: 64 << 20)
        do {
            return try JSONDecoder().decode(ObjectList.self, from: Data(body.readableBytesView))
        } catch {
            throw CacheTierError(.transient, tier: name, "\(configuration.endpoint) answered \(what) with something that is not a GCS object list: \(error)")
        }
    }

    /// The listing of one listed object, or nil when it is not a CacheTiers archive.
    private func listing(of object: GCSObject) -> ArchiveListing? {
        guard object.name.hasPrefix(configuration.prefix), object.name.hasSuffix(ArchiveFolder.archiveSuffix) else { return nil }
        let stem = object.name.dropFirst(configuration.prefix.count).dropLast(ArchiveFolder.archiveSuffix.count)
        guard let key = try? CacheKey(String(stem)), let manifest = try? object.manifest(), manifest.key == key,
            manifest.problem == nil, manifest.archiveSize == object.size
        else { return nil }
        return ArchiveListing(key: key, size: object.size, sha256: manifest.archiveSHA256, createdAt: manifest.createdAt)
    }

    /// The JSON API's answer to `GET …/o`.
    private struct ObjectList: Decodable {
        var items: [GCSObject]?
        var nextPageToken: String?
    }
}

extension Array {
    /// The first index whose element satisfies `belongsAfter`, for an array already
    /// partitioned by it (a binary search).
    func partitioningIndex(where belongsAfter: (Element) -> Bool) -> Int {
        var low = 0
        var high = count
        while low < high {
            let middle = (low + high) / 2
            if belongsAfter(self[middle]) { high = middle } else { low = middle + 1 }
        }
        return low
    }
}
