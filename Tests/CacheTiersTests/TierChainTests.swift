@testable import CacheTiers
import CacheTiersTesting
import Foundation
import Logging
import Synchronization
import SystemPackage
import Testing

/// The chain's behaviours, each proven against scripted tiers and a manual clock.
@Suite struct TierChainTests {
    // MARK: fallback and destination safety

    @Test func fallsThroughOnMissToTheNextTier() async throws {
        let h = try ChainHarness()
        let peer = ScriptedSource("peer", steps: [.miss])
        let gcs = ScriptedSource("gcs", steps: [.restore(files: ["from.txt": "gcs"])])
        let report = try await h.restore(h.chain([.init(peer, policy: policy(attempts: 3)), .init(gcs, policy: policy())]))
        #expect(report.servedBy == "gcs")
        #expect(report.outcomes == ["peer:miss", "gcs:hit"])
        #expect(peer.attempts == 1, "a miss is never retried")
        #expect(h.fileInDestination("from.txt") == "gcs")
    }

    @Test func successReplacesTheOldTreeWhole() async throws {
        let h = try ChainHarness()
        _ = try h.seedDestination()
        let tier = ScriptedSource("peer", steps: [.restore(files: ["fresh.txt": "new"])])
        _ = try await h.restore(h.chain([.init(tier, policy: policy())]))
        let after = try TreeSnapshot(of: h.destination)
        #expect(Array(after.entries.keys) == ["fresh.txt"], "nothing of the old tree may survive")
        #expect(try h.leftovers().isEmpty)
    }

    @Test func whatAKilledRestoreLeftBehindIsRemovedAndNothingElse() async throws {
        let h = try ChainHarness()
        let host = Fixtures.hostName
        let gone = try Fixtures.processIDOfAFinishedProcess()
        let swept = [
            ".node_modules.staging-\(gone)@\(host)-k3j5h",
            ".node_modules.previous-\(gone)@\(host)-a81b",
            ".node_modules.writeback-\(gone)@\(host)-zz01",
        ]
        let kept = [
            ".node_modules.staging-1@\(host)-p1",  // a process that is running (init)
            ".node_modules.staging-\(gone)@another-host-7q",  // another machine sharing the folder
            ".node_modules.staging-7a0c",  // not a name CacheTiers makes
            ".other.staging-\(gone)@\(host)-x1",  // another destination's
        ]
        for name in swept + kept {
            try SampleTree.write(to: h.scratch.path.appending(name), files: 3)
        }
        let tier = ScriptedSource("peer", steps: [.restore(files: ["fresh.txt": "new"])])
        _ = try await h.restore(h.chain([.init(tier, policy: policy())]))
        #expect(h.fileInDestination("fresh.txt") == "new")
        #expect(try h.leftovers().sorted() == kept.sorted())
    }

    @Test func failureLeavesTheDestinationExactlyAsItWas() async throws {
        let h = try ChainHarness()
        let before = try h.seedDestination()
        let peer = ScriptedSource("peer", steps: [.writePartialThenFail(files: ["half.js": "partial"])])
        let gcs = ScriptedSource("gcs", steps: [.fail(.corrupt, "checksum mismatch")])
        let failure = try #require(await expectFailure { try await h.restore(h.chain([.init(peer, policy: policy()), .init(gcs, policy: policy())])) })
        #expect(failure.outcomes == ["peer:error", "gcs:corrupt"])
        #expect(try TreeSnapshot(of: h.destination).differences(from: before).isEmpty)
        #expect(try h.leftovers().isEmpty, "partial staging directories must be removed")
    }

    @Test func unwritableParentIsFatalBeforeAnyTierRuns() async throws {
        let h = try ChainHarness()
        let tier = ScriptedSource("peer", steps: [.restore()])
        let chain = h.chain([.init(tier, policy: policy())])
        let missingParent = h.scratch.path.appending("no/such/dir/node_modules")
        let failure = try #require(await expectFailure { try await chain.restore(ChainHarness.key, into: missingParent) })
        #expect(failure.fatalError?.kind == .fatal)
        #expect(failure.description.contains("does not exist"))
        #expect(tier.attempts == 0)
    }

    // MARK: 1. deadline and per-tier timeout

    @Test func tierTimeoutCancelsTheAttemptAndMovesOn() async throws {
        let h = try ChainHarness()
        let peer = ScriptedSource("peer", steps: [.hang])
        let gcs = ScriptedSource("gcs", steps: [.restore()])
        let chain = h.chain([.init(peer, policy: policy(timeout: .seconds(10))), .init(gcs, policy: policy())])
        let restore = Task { try await h.restore(chain) }
        try await h.clock.waitForSleeper(until: .init(offset: .seconds(10)))
        // A task woken by `advance` may not have run when the next line looks, so the
        // proof that nothing fires early is the clock's own state: no timer is due before
        // 10 s, and after 9 s the timeout is still armed.
        #expect(h.clock.deadlines.first == .init(offset: .seconds(10)), "no timer is armed before the tier's timeout")
        h.clock.advance(by: .seconds(9))
        #expect(h.clock.deadlines.contains(.init(offset: .seconds(10))), "the timeout is still armed after 9 s")
        #expect(gcs.attempts == 0)
        h.clock.advance(by: .seconds(1))
        let report = try await restore.value
        #expect(report.outcomes == ["peer:timeout", "gcs:hit"])
        #expect(report.attempts[0].durationSeconds == 10)
        #expect(report.attempts[0].error?.contains("timed out after 10 s") == true)
        #expect(peer.finishedAttempts == 1, "the timed-out attempt was cancelled and returned")
    }

    @Test func aTierNeverGetsMoreThanTheTimeLeft() async throws {
        let h = try ChainHarness()
        let peer = ScriptedSource("peer", steps: [.hang])
        let gcs = ScriptedSource("gcs", steps: [.restore()])
        let chain = h.chain(
            [.init(peer, policy: policy(timeout: .seconds(120))), .init(gcs, policy: policy())],
            configuration: h.configuration(deadline: .seconds(5))
        )
        let restore = Task { try await h.restore(chain) }
        try await h.clock.waitForSleeper(until: .init(offset: .seconds(5)))
        h.clock.advance(by: .seconds(5))
        let failure = try #require(await expectFailure { try await restore.value })
        #expect(failure.outcomes == ["peer:timeout", "gcs:skipped"])
        #expect(failure.report.attempts[0].error?.contains("deadline of 5 s") == true)
        #expect(failure.report.attempts[1].error?.contains("deadline") == true)
        #expect(gcs.attempts == 0)
    }

    // MARK: 2. retry policy

    @Test(arguments: [CacheTierError.Kind.transient, .timeout, .stalled, .corrupt])
    func retryableFailuresAreRetried(kind: CacheTierError.Kind) async throws {
        let h = try ChainHarness()
        // A timeout or stall is retried when the attempt had moved real bytes first: a
        // healthy tier briefly interrupted.
        let failure = ScriptedSource.Step.progress(bytes: 1 << 20, then: .fail(kind))
        let peer = ScriptedSource("peer", steps: [failure, failure, .restore()])
        let report = try await h.restore(h.chain([.init(peer, policy: policy(attempts: 3))]))
        #expect(peer.attempts == 3)
        #expect(report.attempts.map(\.attempt) == [1, 2, 3])
        #expect(report.attempts.last?.outcome == .hit)
    }

    @Test(arguments: [CacheTierError.Kind.timeout, .stalled])
    func aTierThatTimesOutOrStallsHavingSentAlmostNothingIsNotRetried(kind: CacheTierError.Kind) async throws {
        let h = try ChainHarness()
        let peer = ScriptedSource("peer", steps: [.progress(bytes: 100, then: .fail(kind)), .restore()])
        let gcs = ScriptedSource("gcs", steps: [.restore()])
        // Under one stall window at the floor (15 s × 16 KiB/s): silent or dripping.
        let chain = h.chain([.init(peer, policy: policy(stall: .seconds(15), attempts: 3)), .init(gcs, policy: policy())])
        let report = try await h.restore(chain)
        #expect(peer.attempts == 1, "a silent or dripping tier would only wait as long again")
        #expect(report.attempts.map(\.tier) == ["peer", "gcs"])
        #expect(report.servedBy == "gcs")
    }

    @Test func backoffWaitsAJitteredExponentialDelay() async throws {
        let h = try ChainHarness()
        let peer = ScriptedSource("peer", steps: [.fail(.transient), .fail(.transient), .restore()])
        // random 0.5 with initial 2 s: 1 s before attempt 2, 2 s before attempt 3.
        let chain = h.chain(
            [.init(peer, policy: policy(attempts: 3, initialDelay: .seconds(2)))],
            configuration: h.configuration(random: 0.5)
        )
        let restore = Task { try await h.restore(chain) }
        try await h.clock.waitForSleeper(until: .init(offset: .seconds(1)))
        // The clock's state, not the attempt count (a woken task may not have run yet),
        // proves the retry waits: after 999 ms the backoff still sleeps until 1 s.
        #expect(h.clock.deadlines == [.init(offset: .seconds(1))], "the backoff is the only timer, due at 1 s")
        h.clock.advance(by: .milliseconds(999))
        #expect(h.clock.deadlines == [.init(offset: .seconds(1))], "the backoff still sleeps after 999 ms")
        #expect(peer.attempts == 1)
        h.clock.advance(by: .milliseconds(1))
        try await peer.waitForAttempts(2)
        try await h.clock.waitForSleeper(until: .init(offset: .seconds(3)))
        h.clock.advance(by: .seconds(2))
        let report = try await restore.value
        #expect(report.outcomes == ["peer:error", "peer:error", "peer:hit"])
    }

    @Test func retryAfterIsHonouredWhenLongerThanTheBackoff() async throws {
        let h = try ChainHarness()
        let peer = ScriptedSource("peer", steps: [.fail(.transient, "503", retryAfter: .seconds(7)), .restore()])
        let restore = Task { try await h.restore(h.chain([.init(peer, policy: policy(attempts: 2))])) }
        try await h.clock.waitForSleeper(until: .init(offset: .seconds(7)))
        h.clock.advance(by: .seconds(7))
        #expect(try await restore.value.servedBy == "peer")
    }

    @Test func unauthorizedMovesOnWithoutRetry() async throws {
        let h = try ChainHarness()
        let peer = ScriptedSource("peer", steps: [.fail(.unauthorized, "401: token refused")])
        let gcs = ScriptedSource("gcs", steps: [.restore()])
        let report = try await h.restore(h.chain([.init(peer, policy: policy(attempts: 5)), .init(gcs, policy: policy())]))
        #expect(peer.attempts == 1)
        #expect(report.outcomes == ["peer:unauthorized", "gcs:hit"])
    }

    @Test func fatalStopsTheChain() async throws {
        let h = try ChainHarness()
        let peer = ScriptedSource("peer", steps: [.fail(.fatal, "disk full")])
        let gcs = ScriptedSource("gcs", steps: [.restore()])
        let failure = try #require(await expectFailure {
            try await h.restore(h.chain([.init(peer, policy: policy(attempts: 3)), .init(gcs, policy: policy())]))
        })
        #expect(failure.fatalError?.message == "disk full")
        #expect(gcs.attempts == 0)
        #expect(peer.attempts == 1)
    }

    @Test func anUntypedErrorCountsAsTransient() async throws {
        let h = try ChainHarness()
        let peer = ScriptedSource("peer", steps: [.throwUntyped("socket closed"), .restore()])
        let report = try await h.restore(h.chain([.init(peer, policy: policy(attempts: 2))]))
        #expect(report.outcomes == ["peer:error", "peer:hit"])
        #expect(report.attempts[0].error?.contains("socket closed") == true)
    }

    // MARK: 3. stall detection

    @Test func aStalledAttemptIsCancelledAndCountedAsStalled() async throws {
        let h = try ChainHarness()
        let peer = ScriptedSource("peer", steps: [.stall(afterBytes: 4096)])
        let gcs = ScriptedSource("gcs", steps: [.restore()])
        let chain = h.chain([.init(peer, policy: policy(stall: .seconds(15))), .init(gcs, policy: policy())])
        let restore = Task { try await h.restore(chain) }
        try await h.clock.waitForSleepers(2)  // timeout and watchdog
        h.clock.advance(by: .seconds(15))
        let report = try await restore.value
        #expect(report.outcomes == ["peer:stalled", "gcs:hit"])
        #expect(report.attempts[0].bytes == 4096)
        #expect(report.attempts[0].error?.contains("no progress for 15 s at 4096 bytes") == true)
    }

    @Test func steadyProgressIsNeverMistakenForAStall() async throws {
        let h = try ChainHarness()
        let peer = ScriptedSource(
            "peer", steps: [.trickle(bytes: 100 << 10, every: .seconds(2), times: 10, then: .restore())], clock: h.clock
        )
        // 50 KiB/s: above the default floor of 16 KiB/s.
        let chain = h.chain([.init(peer, policy: policy(stall: .seconds(5)))])
        let restore = Task { try await h.restore(chain) }
        for tick in 1...10 {
            try await h.clock.waitForSleeper(until: .init(offset: .seconds(2 * tick)))  // the trickle's next chunk
            h.clock.advance(by: .seconds(2))
        }
        let report = try await restore.value
        #expect(report.outcomes == ["peer:hit"], "20 s of steady progress outlives a 5 s stall timer")
    }

    @Test func progressBelowTheThroughputFloorIsAStallAtTheEndOfTheWindow() async throws {
        let h = try ChainHarness()
        // 50 bytes/s: never silent for 5 s, and useless.
        let peer = ScriptedSource(
            "peer", steps: [.trickle(bytes: 100, every: .seconds(2), times: 100, then: .restore())], clock: h.clock
        )
        let gcs = ScriptedSource("gcs", steps: [.restore()])
        let chain = h.chain([.init(peer, policy: policy(stall: .seconds(5), attempts: 3)), .init(gcs, policy: policy())])
        let restore = Task { try await h.restore(chain) }
        for tick in 1...2 {
            try await h.clock.waitForSleeper(until: .init(offset: .seconds(2 * tick)))
            h.clock.advance(by: .seconds(2))
        }
        try await h.clock.waitForSleeper(until: .init(offset: .seconds(5)))  // the end of the first window
        h.clock.advance(by: .seconds(1))
        let report = try await restore.value
        #expect(report.outcomes == ["peer:stalled", "gcs:hit"], "cut after one window, and not retried")
        #expect(report.attempts[0].error?.contains("200 bytes in the last 5 s, under the floor of 16384 bytes/s") == true)
    }

    @Test func aBuildTierIsNeverHeldToTheThroughputFloor() async throws {
        let h = try ChainHarness()
        let install = ScriptedSource(
            "install", traits: .build, steps: [.trickle(bytes: 1, every: .seconds(2), times: 5, then: .restore())], clock: h.clock
        )
        let chain = h.chain([.init(install, policy: policy(stall: .seconds(5)))])
        let restore = Task { try await h.restore(chain) }
        for tick in 1...5 {
            try await h.clock.waitForSleeper(until: .init(offset: .seconds(2 * tick)))
            h.clock.advance(by: .seconds(2))
        }
        let report = try await restore.value
        #expect(report.outcomes == ["install:hit"], "a package manager's signs of life are not bytes")
    }

    // MARK: 4. retry budget

    @Test func aSpentBudgetMovesOnInsteadOfRetrying() async throws {
        let h = try ChainHarness(budget: RetryBudget(configuration: .init(capacity: 1, costPerRetry: 1, refundPerSuccess: 1)))
        let peer = ScriptedSource("peer", steps: [.fail(.transient)])
        let gcs = ScriptedSource("gcs", steps: [.restore()])
        let report = try await h.restore(h.chain([.init(peer, policy: policy(attempts: 5)), .init(gcs, policy: policy())]))
        #expect(peer.attempts == 2, "one token: one retry")
        #expect(report.outcomes == ["peer:error", "peer:error", "peer:skipped", "gcs:hit"])
        #expect(report.attempts[2].error?.contains("retry budget") == true)
        #expect(h.budget.available == 1, "the success refunded a token")
    }

    @Test func theBudgetIsSharedByRestoresThroughDifferentChains() async throws {
        let budget = RetryBudget(configuration: .init(capacity: 2, costPerRetry: 1, refundPerSuccess: 0))
        let first = try ChainHarness(budget: budget)
        let second = try ChainHarness(budget: budget)
        let failing = { ScriptedSource("peer", steps: [.fail(.transient)]) }
        let a = failing()
        _ = await expectFailure { try await first.restore(first.chain([.init(a, policy: policy(attempts: 3))])) }
        let b = failing()
        _ = await expectFailure { try await second.restore(second.chain([.init(b, policy: policy(attempts: 3))])) }
        #expect(a.attempts == 3)
        #expect(b.attempts == 1, "the first chain spent the shared budget")
    }

    @Test func withoutABudgetOfItsOwnEachChainHasOneNoOtherChainSpends() async throws {
        let h = try ChainHarness()
        func chain(_ source: ScriptedSource) -> TierChain {
            var configuration = h.configuration()
            configuration.retryBudget = nil
            return h.chain([.init(source, policy: policy(attempts: 3, initialDelay: .zero))], configuration: configuration)
        }
        let spender = chain(ScriptedSource("peer", steps: [.fail(.transient)]))
        let bystander = chain(ScriptedSource("peer", steps: [.restore()]))
        let full = bystander.retryBudget.available
        _ = await expectFailure { try await h.restore(spender) }
        #expect(spender.retryBudget.available == full - 2, "the two retries came out of the spender's own budget")
        #expect(bystander.retryBudget.available == full, "another chain's retries cost this one nothing")
        #expect(h.budget.available == full, "nor do they touch a budget the chain was not given")
    }

    // MARK: 5. circuit breaker

    @Test func anOpenBreakerSkipsTheTierThenLetsExactlyOneProbeThrough() async throws {
        let h = try ChainHarness()
        let peer = ScriptedSource("peer", steps: [.fail(.transient), .fail(.transient), .hang, .restore()])
        let gcs = ScriptedSource("gcs", steps: [.restore()])
        let breaker = CircuitBreaker.Configuration(consecutiveFailures: 2, breakInterval: .seconds(30))
        let chain = h.chain([
            .init(peer, policy: policy(timeout: .seconds(10), breaker: breaker)), .init(gcs, policy: policy()),
        ])
        _ = try await h.restore(chain)
        _ = try await h.restore(chain)
        #expect(chain.circuitBreaker(forTier: "peer")?.state == .open(until: .seconds(30)))

        let skipped = try await h.restore(chain)
        #expect(skipped.outcomes == ["peer:skipped", "gcs:hit"])
        #expect(skipped.attempts[0].error?.contains("circuit breaker open") == true)
        #expect(peer.attempts == 2)

        h.clock.advance(by: .seconds(30))
        let probe = Task { try await h.restore(chain) }  // peer hangs: the probe is in flight
        try await peer.waitForAttempts(3)
        let concurrent = try await chain.restore(ChainHarness.key, into: h.scratch.path.appending("other"))
        #expect(concurrent.outcomes == ["peer:skipped", "gcs:hit"], "only one probe while half-open")
        #expect(chain.circuitBreaker(forTier: "peer")?.state == .halfOpen)

        try await h.clock.waitForSleeper(until: .init(offset: .seconds(40)))  // the probe's timeout
        h.clock.advance(by: .seconds(10))  // the probe times out: reopen
        #expect(try await probe.value.outcomes == ["peer:timeout", "gcs:hit"])
        #expect(chain.circuitBreaker(forTier: "peer")?.state == .open(until: .seconds(70)))

        h.clock.advance(by: .seconds(30))
        let healed = try await h.restore(chain)  // this probe succeeds: closed
        #expect(healed.outcomes == ["peer:hit"])
        #expect(chain.circuitBreaker(forTier: "peer")?.state == .closed)
    }

    @Test func aCancelledProbeNeverLeavesTheBreakerHalfOpen() async throws {
        let h = try ChainHarness()
        let peer = ScriptedSource("peer", steps: [.fail(.transient), .hang, .restore()])
        let chain = h.chain([.init(peer, policy: policy(breaker: .init(consecutiveFailures: 1, breakInterval: .seconds(5))))])
        _ = await expectFailure { try await h.restore(chain) }
        h.clock.advance(by: .seconds(5))
        let probe = Task { try await h.restore(chain) }
        try await peer.waitForAttempts(2)
        probe.cancel()
        _ = await probe.result
        let breaker = try #require(chain.circuitBreaker(forTier: "peer"))
        #expect(breaker.state != .halfOpen)
        #expect(try await h.restore(chain).outcomes == ["peer:hit"], "the next call probes at once")
    }

    @Test func aProbeThatThrowsReopensTheBreaker() async throws {
        let h = try ChainHarness()
        let peer = ScriptedSource("peer", steps: [.fail(.transient), .throwUntyped("boom")])
        let chain = h.chain([.init(peer, policy: policy(breaker: .init(consecutiveFailures: 1, breakInterval: .seconds(5))))])
        _ = await expectFailure { try await h.restore(chain) }
        h.clock.advance(by: .seconds(5))
        _ = await expectFailure { try await h.restore(chain) }
        #expect(chain.circuitBreaker(forTier: "peer")?.state == .open(until: .seconds(10)))
    }

    @Test func theBreakerOpensOnAFailureRatio() {
        let clock = ManualClock()
        let breaker = CircuitBreaker(
            configuration: .init(consecutiveFailures: 100, failureRatio: 0.5, minimumCalls: 4, windowSize: 4),
            clock: clock
        )
        for result in [CircuitBreaker.CallResult.success, .failure, .success] {
            breaker.record(result, for: breaker.acquire()!)
        }
        #expect(breaker.state == .closed, "three calls are under the minimum")
        breaker.record(.failure, for: breaker.acquire()!)
        #expect(breaker.state == .open(until: .seconds(30)), "2 of 4 failed")
        #expect(breaker.acquire() == nil)
    }

    // MARK: 6. hedging

    @Test func aSilentTierIsHedgedAndTheWinnerTakesAll() async throws {
        let h = try ChainHarness()
        let peer = ScriptedSource("peer", steps: [.hang])
        let gcs = ScriptedSource("gcs", steps: [.restore(files: ["from.txt": "gcs"])])
        let chain = h.chain(
            [.init(peer, policy: policy()), .init(gcs, policy: policy())],
            configuration: h.configuration(hedging: .init(delay: .seconds(3)))
        )
        let restore = Task { try await h.restore(chain) }
        try await h.clock.waitForSleepers(2)  // peer's timeout, the hedge timer
        #expect(gcs.attempts == 0)
        h.clock.advance(by: .seconds(3))
        let report = try await restore.value
        #expect(report.servedBy == "gcs")
        #expect(Set(report.outcomes) == ["peer:cancelled", "gcs:hit"])
        #expect(peer.finishedAttempts == 1, "the loser was cancelled and returned")
        #expect(h.fileInDestination("from.txt") == "gcs")
        #expect(try h.leftovers().isEmpty, "the loser's staging directory is removed")
        #expect(h.events.contains { if case .hedgeStarted(tier: "gcs", after: "peer") = $0 { true } else { false } })
    }

    /// A source that ignores cancellation: it waits until it is cancelled, then restores
    /// anyway, as a source that cannot stop mid-write would.
    struct StubbornSource: CacheSource {
        let name: String
        var traits: CacheSourceTraits { .download }

        func restore(_ request: RestoreRequest, into staging: FilePath, progress: TransferProgress, logger: Logger) async throws
            -> SourceRestoreOutcome
        {
            while !Task.isCancelled { try? await Task.sleep(for: .milliseconds(5)) }
            try Data("stubborn".utf8).write(to: URL(fileURLWithPath: staging.appending("from.txt").string))
            return .restored(RestoreDetails(bytesTransferred: 1))
        }
    }

    @Test func aLoserThatRestoresAnywayHasItsTreeRemoved() async throws {
        let h = try ChainHarness()
        let peer = StubbornSource(name: "peer")
        let gcs = ScriptedSource("gcs", steps: [.restore(files: ["from.txt": "gcs"])])
        let chain = h.chain(
            [.init(peer, policy: policy()), .init(gcs, policy: policy())],
            configuration: h.configuration(hedging: .init(delay: .seconds(3)))
        )
        let restore = Task { try await h.restore(chain) }
        try await h.clock.waitForSleepers(2)  // peer's timeout, the hedge timer
        h.clock.advance(by: .seconds(3))
        let report = try await restore.value
        #expect(report.servedBy == "gcs")
        #expect(h.fileInDestination("from.txt") == "gcs")
        #expect(try h.leftovers().isEmpty, "the loser's restored tree is removed, not left beside the destination")
    }

    @Test func aTierThatIsMovingBytesIsNotHedged() async throws {
        let h = try ChainHarness()
        let peer = ScriptedSource("peer", steps: [.trickle(bytes: 10, every: .seconds(1), times: 5, then: .restore())], clock: h.clock)
        let gcs = ScriptedSource("gcs", steps: [.restore()])
        let chain = h.chain(
            [.init(peer, policy: policy()), .init(gcs, policy: policy())],
            configuration: h.configuration(hedging: .init(delay: .milliseconds(2500)))
        )
        let restore = Task { try await h.restore(chain) }
        for tick in 1...5 {
            try await h.clock.waitForSleeper(until: .init(offset: .seconds(tick)))  // the trickle's next chunk
            h.clock.advance(by: .seconds(1))
        }
        #expect(try await restore.value.outcomes == ["peer:hit"])
        #expect(gcs.attempts == 0)
    }

    @Test func neverHedgesIntoAFreshInstall() async throws {
        let h = try ChainHarness()
        let peer = ScriptedSource("peer", steps: [.hang])
        let install = ScriptedSource("install", traits: .build, steps: [.restore()])
        let chain = h.chain(
            [.init(peer, policy: policy(timeout: .seconds(20))), .init(install, policy: policy())],
            configuration: h.configuration(hedging: .init(delay: .seconds(3)))
        )
        let restore = Task { try await h.restore(chain) }
        try await h.clock.waitForSleeper(until: .init(offset: .seconds(20)))  // the peer's timeout
        // No hedge timer at 3 s: the peer's timeout is the only thing that can start the install.
        #expect(h.clock.deadlines == [.init(offset: .seconds(20))], "no hedge is armed towards a fresh install")
        h.clock.advance(by: .seconds(10))
        #expect(h.clock.deadlines == [.init(offset: .seconds(20))])
        #expect(install.attempts == 0, "past the hedge delay, still no install")
        h.clock.advance(by: .seconds(10))
        #expect(try await restore.value.outcomes == ["peer:timeout", "install:hit"])
    }

    // MARK: 7. write-back

    @Test func aLowerTierHitIsWrittenBackInTheBackground() async throws {
        let h = try ChainHarness()
        let packer = CountingPacker()
        let peer = ScriptedSource("peer", steps: [.miss])
        let gcs = ScriptedSource("gcs", steps: [.miss])
        let install = ScriptedSource("install", traits: .build, steps: [.restore()])
        let chain = h.chain(
            [.init(peer, policy: policy()), .init(gcs, policy: policy()), .init(install, policy: policy())],
            configuration: h.configuration(writeBack: .init(packer: packer))
        )
        let report = try await h.restore(chain)
        #expect(report.writeBack.map(\.outcome) == [.pending, .pending])
        let completed = await report.completingWriteBack()
        #expect(completed.writeBack == [.init(tier: "peer", outcome: .published), .init(tier: "gcs", outcome: .published)])
        #expect(packer.packs == 1, "packed once for both tiers")
        #expect(peer.published.map(\.key) == [ChainHarness.key])
        #expect(try h.leftovers().isEmpty, "the write-back scratch archive is removed")
    }

    @Test func writeBackCanBeAwaitedAndSkipsTiersThatHoldTheKey() async throws {
        let h = try ChainHarness()
        let peer = ScriptedSource("peer", steps: [.miss], holds: [ChainHarness.key])
        let gcs = ScriptedSource("gcs", steps: [.restore()])
        let chain = h.chain(
            [.init(peer, policy: policy()), .init(gcs, policy: policy())],
            configuration: h.configuration(writeBack: .init(waitForCompletion: true, packer: CountingPacker()))
        )
        let report = try await h.restore(chain)
        #expect(report.writeBack == [.init(tier: "peer", outcome: .exists)])
        #expect(report.pendingWriteBack == nil)
        #expect(peer.published.isEmpty)
    }

    @Test func aFailedWriteBackIsReportedButNeverFailsTheRestore() async throws {
        let h = try ChainHarness()
        let peer = ScriptedSource("peer", steps: [.miss], publish: .fail("503 from the cache master"))
        let gcs = ScriptedSource("gcs", steps: [.restore()])
        let chain = h.chain(
            [.init(peer, policy: policy()), .init(gcs, policy: policy())],
            configuration: h.configuration(writeBack: .init(waitForCompletion: true, packer: CountingPacker()))
        )
        let report = try await h.restore(chain)
        #expect(report.outcome == .restored)
        #expect(report.writeBack.first?.outcome == .failed)
        #expect(report.writeBack.first?.error?.contains("503 from the cache master") == true)
        #expect(try h.metrics.expectCounter("cachetiers_write_backs_total", [("tier", "peer"), ("outcome", "failed")]).totalValue == 1)
    }

    // MARK: 8. single-flight

    @Test func concurrentRestoresOfOneKeyShareOneExecution() async throws {
        let h = try ChainHarness()
        let peer = ScriptedSource("peer", steps: [.delay(.seconds(5), then: .restore())], clock: h.clock)
        let chain = h.chain([.init(peer, policy: policy())])
        let first = Task { try await h.restore(chain) }
        let second = Task { try await h.restore(chain) }
        try await peer.waitForAttempts(1)
        try await h.clock.waitForSleeper(until: .init(offset: .seconds(5)))  // the scripted delay
        h.clock.advance(by: .seconds(5))
        let (a, b) = try await (first.value, second.value)
        #expect(peer.attempts == 1)
        #expect(a.servedBy == "peer" && b.servedBy == "peer")
        #expect(a.durationSeconds == b.durationSeconds)
    }

    @Test func differentDestinationsDoNotShareAnExecution() async throws {
        let h = try ChainHarness()
        let peer = ScriptedSource("peer", steps: [.restore()])
        let chain = h.chain([.init(peer, policy: policy())])
        _ = try await chain.restore(ChainHarness.key, into: h.scratch.path.appending("a"))
        _ = try await chain.restore(ChainHarness.key, into: h.scratch.path.appending("b"))
        #expect(peer.attempts == 2)
    }

    // MARK: 9. caller cancellation

    @Test func callerCancellationStopsPromptlyAndLeavesTheDestination() async throws {
        let h = try ChainHarness()
        let before = try h.seedDestination()
        let peer = ScriptedSource("peer", steps: [.stall(afterBytes: 10)])
        let gcs = ScriptedSource("gcs", steps: [.restore()])
        let chain = h.chain([.init(peer, policy: policy(attempts: 3)), .init(gcs, policy: policy())])
        let restore = Task { try await h.restore(chain) }
        try await peer.waitForAttempts(1)
        restore.cancel()
        await #expect(throws: CancellationError.self) { try await restore.value }
        #expect(peer.finishedAttempts == 1, "the attempt was stopped, not abandoned")
        #expect(gcs.attempts == 0, "no further tier starts")
        #expect(try TreeSnapshot(of: h.destination).differences(from: before).isEmpty)
        #expect(try h.leftovers().isEmpty)
    }

    // MARK: 10. report, events, metrics

    @Test func theReportEventsAndMetricsTellTheWholeStory() async throws {
        let h = try ChainHarness()
        let peer = ScriptedSource("peer", steps: [.fail(.transient, "connection refused")])
        let gcs = ScriptedSource("gcs", steps: [.restore(bytes: 5000)])
        let chain = h.chain([.init(peer, policy: policy(attempts: 2)), .init(gcs, policy: policy())])
        let report = try await h.restore(chain)

        #expect(report.outcome == .restored)
        #expect(report.servedBy == "gcs")
        #expect(report.bytesTransferred == 5000)
        #expect(report.destination == h.destination.string)
        // A source that is no archive source has none of a download's phases.
        let none = AttemptTimings()
        #expect(report.attempts == [
            AttemptRecord(tier: "peer", attempt: 1, outcome: .error, durationSeconds: 0, bytes: 0, error: "peer: connection refused", timings: none),
            AttemptRecord(tier: "peer", attempt: 2, outcome: .error, durationSeconds: 0, bytes: 0, error: "peer: connection refused", timings: none),
            AttemptRecord(tier: "gcs", attempt: 1, outcome: .hit, durationSeconds: 0, bytes: 5000, error: nil, timings: none),
        ])

        let json = try JSONSerialization.jsonObject(with: JSONEncoder().encode(report)) as? [String: Any]
        #expect(Set(json?.keys.map { $0 } ?? []) == [
            "key", "outcome", "servedBy", "destination", "durationSeconds", "bytesTransferred", "estimatedCostUSD",
            "attempts", "writeBack",
            // The fleet's extensions.
            "id", "finishedAt", "host", "archive", "throughputBytesPerSecond", "timings",
        ])

        let started = h.events.compactMap { if case .attemptStarted(let tier, let attempt) = $0 { "\(tier)#\(attempt)" } else { nil } }
        #expect(started == ["peer#1", "peer#2", "gcs#1"])
        #expect(h.events.contains { if case .restored(tier: "gcs") = $0 { true } else { false } })

        #expect(try h.metrics.expectCounter("cachetiers_attempts_total", [("tier", "peer"), ("outcome", "error")]).totalValue == 2)
        #expect(try h.metrics.expectCounter("cachetiers_attempts_total", [("tier", "gcs"), ("outcome", "hit")]).totalValue == 1)
        #expect(try h.metrics.expectTimer("cachetiers_restore_duration_seconds", [("tier", "gcs")]).values.count == 1)
    }
}

/// A packer that writes a placeholder archive and counts how often it was asked.
final class CountingPacker: CachePacker {
    private let count = Mutex(0)
    var packs: Int { count.withLock { $0 } }

    func pack(_ directory: FilePath, key: CacheKey, to archive: FilePath, logger: Logger) async throws -> CacheManifest {
        count.withLock { $0 += 1 }
        try Data("archive of \(directory)".utf8).write(to: URL(fileURLWithPath: archive.string))
        return CacheManifest(
            key: key, archiveSHA256: String(repeating: "0", count: 64), archiveSize: 10, codec: "identity",
            level: nil, uncompressedSize: 10, entryCount: 1
        )
    }
}
