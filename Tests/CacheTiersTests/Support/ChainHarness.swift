import CacheTiers
import CacheTiersTesting
import Foundation
import Logging
import MetricsTestKit
import Synchronization
import SystemPackage

/// A scratch folder, a destination in it, a manual clock, and recorders for what a
/// chain reports, so each test reads as the behaviour it proves.
final class ChainHarness: Sendable {
    let scratch: TemporaryDirectory
    let destination: FilePath
    let clock = ManualClock()
    let metrics = TestMetrics()
    let budget: RetryBudget
    private let recorded = EventLog()

    init(budget: RetryBudget = RetryBudget()) throws {
        self.scratch = try TemporaryDirectory(prefix: "chain")
        self.destination = scratch.path.appending("node_modules")
        self.budget = budget
    }

    deinit {
        scratch.remove()
    }

    var events: [RestoreEvent] { recorded.events }

    static let key = try! CacheKey("node-modules-test")

    static var logger: Logger {
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        return logger
    }

    func configuration(
        deadline: Duration = .seconds(600),
        hedging: TierChain.Hedging? = nil,
        writeBack: TierChain.WriteBack = .disabled,
        random: Double = 0
    ) -> TierChain.Configuration {
        TierChain.Configuration(
            deadline: deadline,
            hedging: hedging,
            writeBack: writeBack,
            retryBudget: budget,
            metricsFactory: metrics,
            observer: { [recorded] event in recorded.append(event) },
            random: { random }
        )
    }

    func chain(_ tiers: [TierChain.Tier], configuration: TierChain.Configuration? = nil) -> TierChain {
        TierChain(tiers: tiers, configuration: configuration ?? self.configuration(), clock: clock, logger: Self.logger)
    }

    /// Writes a tree to the destination, as if an earlier restore had left it there.
    func seedDestination() throws -> TreeSnapshot {
        try SampleTree.write(to: destination, seed: 99, files: 6)
        return try TreeSnapshot(of: destination)
    }

    /// Names in the destination's parent other than the destination itself: staging
    /// or scratch directories a restore failed to clean up.
    func leftovers() throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: scratch.path.string)
            .filter { $0 != "node_modules" && $0 != "fixtures" }
    }

    func restore(_ chain: TierChain) async throws -> RestoreReport {
        try await chain.restore(Self.key, into: destination)
    }

    func fileInDestination(_ name: String) -> String? {
        try? String(contentsOfFile: destination.appending(name).string, encoding: .utf8)
    }
}

/// A tier policy with no stall detection and no breaker, so a test sees only what it sets.
func policy(
    timeout: Duration = .seconds(60),
    stall: Duration? = nil,
    attempts: Int = 1,
    initialDelay: Duration = .seconds(1),
    breaker: CircuitBreaker.Configuration = .disabled
) -> TierChain.TierPolicy {
    TierChain.TierPolicy(
        timeout: timeout,
        stallTimeout: stall,
        retry: RetryPolicy(maxAttempts: attempts, initialDelay: initialDelay, maxDelay: .seconds(30)),
        circuitBreaker: breaker
    )
}

extension RestoreFailure {
    var outcomes: [String] { report.attempts.map { "\($0.tier):\($0.outcome.rawValue)" } }
}

extension RestoreReport {
    var outcomes: [String] { attempts.map { "\($0.tier):\($0.outcome.rawValue)" } }
}

/// Runs `body` and returns the RestoreFailure it throws, or nil.
func expectFailure(_ body: () async throws -> RestoreReport) async -> RestoreFailure? {
    do {
        _ = try await body()
        return nil
    } catch let failure as RestoreFailure {
        return failure
    } catch {
        return nil
    }
}

final class EventLog: Sendable {
    private let storage = Mutex<[RestoreEvent]>([])

    func append(_ event: RestoreEvent) {
        storage.withLock { $0.append(event) }
    }

    var events: [RestoreEvent] { storage.withLock { $0 } }
}
