import CacheTiers
import CacheTiersTesting
import Foundation
import Logging
import Synchronization
import SystemPackage
import Testing

/// However a hedged race ends, every staging directory is promoted or removed before the
/// restore returns. Each test runs several restores through one chain, as a long-running
/// service does, and lists the destination's parent after each: the leftover sweep spares
/// this process's own folders, so nothing else would ever remove a tree left there.
@Suite struct StagingOwnershipTests {
    static let policy = TierChain.TierPolicy(timeout: .seconds(60), stallTimeout: nil, retry: .none)

    /// What is beside the destination, the destination included.
    static func parentListing(_ h: ChainHarness) throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: h.scratch.path.string).sorted()
    }

    @Test func whenBothHedgedTiersRestoreAtTheSameInstantOnlyTheWinnersTreeRemains() async throws {
        let h = try ChainHarness()
        let meeting = Meeting(of: 2)
        let peer = MeetingSource(name: "peer", meeting: meeting)
        let gcs = MeetingSource(name: "gcs", meeting: meeting)
        let chain = h.chain(
            [.init(peer, policy: Self.policy), .init(gcs, policy: Self.policy)],
            configuration: h.configuration(hedging: .init(delay: .seconds(3)))
        )
        for round in 1...3 {
            let restore = Task { try await h.restore(chain) }
            try await h.clock.waitForSleepers(2)  // the peer's timeout, the hedge timer
            h.clock.advance(by: .seconds(3))
            let report = try await restore.value
            #expect(peer.restored == round && gcs.restored == round, "both tiers restored a tree in round \(round)")
            let winner = try #require(report.servedBy)
            #expect(h.fileInDestination("from.txt") == winner)
            #expect(try Self.parentListing(h) == ["node_modules"], "round \(round): the loser's tree is removed")
        }
    }

    @Test func aHedgedLoserThatIgnoresCancellationHasItsTreeRemoved() async throws {
        let h = try ChainHarness()
        let peer = ScriptedSource("peer", steps: [.delay(.seconds(5), then: .restore(files: ["from.txt": "peer"]))], clock: h.clock)
        let gcs = IgnoresCancellationSource(name: "gcs")
        let chain = h.chain(
            [.init(peer, policy: Self.policy), .init(gcs, policy: Self.policy)],
            configuration: h.configuration(hedging: .init(delay: .seconds(3)))
        )
        for round in 1...3 {
            let restore = Task { try await h.restore(chain) }
            try await h.clock.waitForSleepers(3)  // the peer's delay and timeout, the hedge timer
            h.clock.advance(by: .seconds(3))
            try await gcs.waitForAttempts(round)
            h.clock.advance(by: .seconds(2))  // the peer restores and wins; gcs is cancelled
            let report = try await restore.value
            #expect(report.servedBy == "peer")
            #expect(gcs.restored == round, "the cancelled loser restored its tree anyway in round \(round)")
            #expect(h.fileInDestination("from.txt") == "peer")
            #expect(try Self.parentListing(h) == ["node_modules"], "round \(round): the loser's tree is removed")
        }
    }
}

/// Holds each arrival until `size` have arrived, then lets them all go at once.
final class Meeting: Sendable {
    private let size: Int
    private let waiting = Mutex<[CheckedContinuation<Void, Never>]>([])

    init(of size: Int) {
        self.size = size
    }

    func arrive() async {
        await withCheckedContinuation { continuation in
            let released: [CheckedContinuation<Void, Never>] = waiting.withLock { waiting in
                waiting.append(continuation)
                guard waiting.count == size else { return [] }
                defer { waiting = [] }
                return waiting
            }
            for waiter in released { waiter.resume() }
        }
    }
}

/// Writes its tree, then returns only once the other tier of the race has written its
/// own: both results are ready in the same instant. Reports no bytes, so the race is
/// hedged; ignores cancellation.
final class MeetingSource: CacheSource {
    let name: String
    let meeting: Meeting
    private let count = Mutex(0)
    var traits: CacheSourceTraits { .download }

    /// Restores returned so far.
    var restored: Int { count.withLock { $0 } }

    init(name: String, meeting: Meeting) {
        self.name = name
        self.meeting = meeting
    }

    func restore(_ request: RestoreRequest, into staging: FilePath, progress: TransferProgress, logger: Logger) async throws
        -> SourceRestoreOutcome
    {
        try Data(name.utf8).write(to: URL(fileURLWithPath: staging.appending("from.txt").string))
        await meeting.arrive()
        count.withLock { $0 += 1 }
        return .restored(RestoreDetails(bytesTransferred: 1))
    }
}

/// Waits to be cancelled, then restores its tree all the same, as a source that cannot
/// stop mid-write would.
final class IgnoresCancellationSource: CacheSource {
    let name: String
    private let counts = Mutex((started: 0, restored: 0))
    var traits: CacheSourceTraits { .download }

    var restored: Int { counts.withLock { $0.restored } }

    init(name: String) {
        self.name = name
    }

    /// Waits (polling) until `count` restores have started.
    func waitForAttempts(_ count: Int) async throws {
        while counts.withLock({ $0.started }) < count {
            try await Task.sleep(for: .milliseconds(1))
        }
    }

    func restore(_ request: RestoreRequest, into staging: FilePath, progress: TransferProgress, logger: Logger) async throws
        -> SourceRestoreOutcome
    {
        counts.withLock { $0.started += 1 }
        while !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(5))
        }
        try Data(name.utf8).write(to: URL(fileURLWithPath: staging.appending("from.txt").string))
        counts.withLock { $0.restored += 1 }
        return .restored(RestoreDetails(bytesTransferred: 1))
    }
}
