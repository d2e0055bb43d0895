import Foundation
import Logging
import NIOCore

extension VMPeerSource: ArchiveInventory {
    /// The union of every master's archives after `after`, in key order: each master's
    /// `GET /v1/caches?after=&limit=` page, merged by key (a key several masters hold is
    /// listed once, as the first master in the configured order describes it). A master
    /// that cannot answer is left out with a warning naming it, so one master down does
    /// not stop a sync (nor does one that accepts and never answers: each page has
    /// a minute); when none answers, the last failure is thrown.
    ///
    /// A page holds the `limit` smallest keys of the merge, and `next` is set whenever a
    /// master had more, so the next page (after the last key here) misses none.
    public func listArchives(after: CacheKey?, limit: Int, logger: Logger) async throws -> ArchivePage {
        let limit = min(max(1, limit), ArchivePage.maximumLimit)
        let answers = await withTaskGroup(of: (Int, Result<ArchivePage, any Error>).self) { group in
            for (index, peer) in configuration.peers.enumerated() {
                group.addTask {
                    do {
                        let page = try await withTimeLimit(listingTimeLimit, tier: self.name, "\(peer) asked for its listing") {
                            try await self.page(on: peer, after: after, limit: limit, logger: logger)
                        }
                        return (index, .success(page))
                    } catch {
                        return (index, .failure(error))
                    }
                }
            }
            var answers: [(Int, Result<ArchivePage, any Error>)] = []
            for await answer in group { answers.append(answer) }
            return answers.sorted { $0.0 < $1.0 }.map(\.1)
        }
        var merged: [CacheKey: ArchiveListing] = [:]
        var more = false
        var lastError: (any Error)?
        var answered = 0
        for (peer, answer) in zip(configuration.peers, answers) {
            switch answer {
            case .success(let page):
                answered += 1
                more = more || page.next != nil
                for listing in page.archives where merged[listing.key] == nil { merged[listing.key] = listing }
            case .failure(let error):
                try Task.checkCancellation()
                lastError = error
                logger.warning("a cache master did not answer its listing; it is left out", metadata: ["peer": "\(peer)", "error": "\(error)"])
            }
        }
        if answered == 0, let lastError { throw lastError }
        var archives = merged.values.sorted { $0.key.precedes($1.key) }
        if archives.count > limit {
            archives.removeLast(archives.count - limit)
            more = true
        }
        return ArchivePage(archives: archives, next: more ? archives.last?.key : nil)
    }

    /// One master's page.
    private func page(on peer: String, after: CacheKey?, limit: Int, logger: Logger) async throws -> ArchivePage {
        let query = "limit=\(limit)" + (after.map { "&after=\($0.rawValue)" } ?? "")
        let response = try await execute(request("\(peer)/v1/caches?\(query)"), peer: peer, logger: logger)
        guard response.status.code == 200 else {
            throw await failure(for: response, peer: peer, what: "GET /v1/caches")
        }
        let body: ByteBuffer
        do {
            // A page of 1,000 entries is under 400 KB; anything far larger is not one.
            body = try await response.body.collect(upTo: 8 << 20)
        } catch {
            throw CacheTierError(.transient, tier: name, "\(peer) sent a listing over 8 MiB or broke it off: \(error)")
        }
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        let page: ArchivePage
        do {
            page = try decoder.decode(ArchivePage.self, from: Data(body.readableBytesView))
        } catch {
            throw CacheTierError(.transient, tier: name, "\(peer) answered GET /v1/caches with something that is not a listing: \(error)")
        }
        // A hostile or confused master must not make the merge unbounded or disordered.
        guard page.archives.count <= limit,
            zip(page.archives, page.archives.dropFirst()).allSatisfy({ $0.key.precedes($1.key) }),
            after.map({ after in page.archives.allSatisfy { after.precedes($0.key) } }) ?? true
        else {
            throw CacheTierError(.transient, tier: name, "\(peer) answered GET /v1/caches with a page out of order or over its limit")
        }
        return page
    }
}
