import CacheTiers
import CacheTiersServer
import CacheTiersTesting
import Foundation
import NIOHTTP1
import SystemPackage
import Testing

/// `GET /v1/caches`: the master's listing, page by page, and what it refuses.
@Suite(.serialized) struct CacheListRouteTests {
    static let keys = ["b-key", "A-key", "c.key", "a_key", "9-key"]

    func publishAll(_ peer: PeerHarness, token: String? = nil) async throws {
        let tree = peer.scratch.path.appending("tree")
        try SampleTree.write(to: tree, files: 5)
        for key in Self.keys { try await peer.publish(tree, as: try CacheKey(key), token: token) }
    }

    func page(_ response: (status: Int, headers: HTTPHeaders, body: [UInt8])) throws -> ArchivePage {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return try decoder.decode(ArchivePage.self, from: Data(response.body))
    }

    @Test func pagesFollowNextInKeyOrderUntilNull() async throws {
        try await PeerHarness.with { peer in
            try await publishAll(peer)
            var seen: [String] = []
            var path = "/v1/caches?limit=2"
            var pages = 0
            while true {
                let response = try await peer.send(.GET, path)
                #expect(response.status == 200)
                #expect(response.headers.first(name: "Content-Type") == "application/json")
                #expect(response.headers.first(name: "Cache-Control") == "no-store")
                let page = try page(response)
                #expect(page.archives.count <= 2)
                seen += page.archives.map(\.key.rawValue)
                pages += 1
                guard let next = page.next else { break }
                #expect(next == page.archives.last?.key)
                path = "/v1/caches?limit=2&after=\(next)"
            }
            #expect(seen == ["9-key", "A-key", "a_key", "b-key", "c.key"])
            #expect(pages == 3)

            let whole = try page(try await peer.send(.GET, "/v1/caches"))
            #expect(whole.archives.map(\.key.rawValue) == seen, "the default limit holds all five")
            #expect(whole.next == nil)
            let folder = ArchiveFolder(root: peer.server.configuration.root)
            for listing in whole.archives {
                let manifest = try #require(try folder.manifest(for: listing.key))
                #expect(listing.size == manifest.archiveSize)
                #expect(listing.sha256 == manifest.archiveSHA256)
            }
            // Every field present, null where unknown, as the API documents.
            let raw = String(decoding: try await peer.send(.GET, "/v1/caches?limit=1").body, as: UTF8.self)
            #expect(raw.hasPrefix(#"{"caches":[{"createdAt":""#))
            #expect(raw.contains(#""key":"9-key","lastServedAt":"#))
            #expect(raw.hasSuffix(#""next":"9-key"}"#))
        }
    }

    @Test func absurdLimitsAndKeysAreOneLine400sNamingTheParameter() async throws {
        try await PeerHarness.with { peer in
            try await publishAll(peer)
            let cases: [(String, String)] = [
                ("limit=0", "limit"), ("limit=1001", "limit"), ("limit=-1", "limit"), ("limit=%2B5", "limit"),
                ("limit=abc", "limit"), ("limit=", "limit"), ("limit=99999999999999999999999", "limit"),
                ("limit=1&limit=2", "limit"), ("after=..%2Fetc", "after"), ("after=", "after"),
                ("after=.hidden", "after"), ("after=" + String(repeating: "k", count: 5000), "after"),
                ("after=a&after=b", "after"), ("after=%FF%FE", "after"), ("after=a%1B%5B31m%00b", "after"),
            ]
            for (query, parameter) in cases {
                let response = try await peer.send(.GET, "/v1/caches?\(query)")
                let text = String(decoding: response.body, as: UTF8.self)
                #expect(response.status == 400, "\(query)")
                #expect(text.hasPrefix(parameter + " "), "\(query): \(text)")
                #expect(text.filter { $0 == "\n" }.count == 1 && text.hasSuffix("\n"), "\(query): one line")
                #expect(text.utf8.count < 300, "\(query): the echo is bounded")
                #expect(!text.dropLast().unicodeScalars.contains { $0.properties.generalCategory == .control }, "\(query): no raw control bytes")
            }
            // The largest page and an `after` past every key are fine.
            #expect(try page(try await peer.send(.GET, "/v1/caches?limit=1000")).archives.count == Self.keys.count)
            let past = try page(try await peer.send(.GET, "/v1/caches?after=zzz"))
            #expect(past.archives.isEmpty && past.next == nil)
        }
    }

    @Test func theListingNeedsTheMainTokenAndAnswersHead() async throws {
        try await PeerHarness.with(token: "main", reportToken: "vm") { peer in
            try await publishAll(peer, token: "main")
            #expect(try await peer.send(.GET, "/v1/caches").status == 401)
            #expect(try await peer.send(.GET, "/v1/caches", headers: [("Authorization", "Bearer vm")]).status == 403)
            #expect(try await peer.send(.GET, "/v1/caches", headers: [("Authorization", "Bearer wrong")]).status == 401)
            let get = try await peer.send(.GET, "/v1/caches", headers: [("Authorization", "Bearer main")])
            #expect(get.status == 200)
            #expect(try page(get).archives.count == Self.keys.count)
            let head = try await peer.send(.HEAD, "/v1/caches", headers: [("Authorization", "Bearer main")])
            #expect(head.status == 200)
            #expect(head.body.isEmpty)
            #expect(head.headers.first(name: "Content-Length") == "\(get.body.count)")
            #expect(head.headers.first(name: "Content-Type") == "application/json")
            #expect(try await peer.send(.HEAD, "/v1/caches?limit=0", headers: [("Authorization", "Bearer main")]).status == 400)
        }
    }
}
