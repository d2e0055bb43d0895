import Logging
import Metrics
import Synchronization
import SystemPackage

/// Restores a cached tree through an ordered list of tiers: the first that has it wins.
///
/// For each tier in turn the chain makes attempts bounded by the tier's timeout and
/// by what is left of the overall deadline, retries the failures worth retrying with
/// jittered backoff (within a shared retry budget), skips tiers whose circuit breaker
/// is open, and can hedge a silent tier with the next one. The destination is only
/// ever replaced by a complete tree, by atomic rename.
///
/// One chain serves many restores: its circuit breakers and single-flight table are
/// shared by every restore made through it, so create it once and keep it.
public final class TierChain: Sendable {
    public let tiers: [Tier]
    public let configuration: Configuration

    let clock: ChainClock
    let breakers: [CircuitBreaker]
    /// The configuration's budget, or the chain's own.
    public let retryBudget: RetryBudget
    let logger: Logger
    let metrics: ChainMetrics
    private let flights = SingleFlight<String, RestoreReport>()

    /// - Parameters:
    ///   - tiers: tried in order; names must be unique.
    ///   - clock: measures timeouts, backoff and breaker intervals.
    ///   - logger: every attempt is logged with its tier, outcome and duration.
    public init(
        tiers: [Tier],
        configuration: Configuration = .init(),
        clock: some Clock<Duration> = ContinuousClock(),
        logger: Logger
    ) {
        precondition(!tiers.isEmpty, "a TierChain needs at least one tier")
        precondition(Set(tiers.map(\.name)).count == tiers.count, "tier names must be unique: \(tiers.map(\.name))")
        self.tiers = tiers
        self.configuration = configuration
        let chainClock = ChainClock(clock)
        self.clock = chainClock
        self.retryBudget = configuration.retryBudget ?? RetryBudget()
        self.breakers = tiers.map { CircuitBreaker(configuration: $0.policy.circuitBreaker, now: chainClock.now) }
        self.logger = logger
        self.metrics = ChainMetrics(factory: configuration.metricsFactory ?? MetricsSystem.factory)
    }

    /// What no restore through this chain may replace: every tier's
    /// ``CacheSource/protectedPaths`` and ``Configuration/protectedPaths``.
    public var protectedPaths: [ProtectedPath] {
        tiers.flatMap(\.source.protectedPaths) + configuration.protectedPaths
    }

    /// The circuit breaker of the tier called `name`.
    public func circuitBreaker(forTier name: String) -> CircuitBreaker? {
        tiers.firstIndex { $0.name == name }.map { breakers[$0] }
    }

    /// Restores `key` into `destination`, replacing what is there only with a complete tree.
    ///
    /// Concurrent calls for the same key and destination share one execution.
    /// - Returns: the report of a successful restore.
    /// - Throws: ``RestoreFailure`` (with the report) when every tier failed or a fatal
    ///   error stopped the chain; `CancellationError` when the caller was cancelled.
    ///   Either way the destination is as it was.
    public func restore(_ key: CacheKey, into destination: FilePath) async throws -> RestoreReport {
        let staging: DestinationStaging
        do {
            staging = try DestinationStaging(destination: destination, protecting: protectedPaths)
        } catch {
            let report = RestoreReport(
                key: key, outcome: .failed, servedBy: nil, destination: FileSystem.absolute(destination).string,
                durationSeconds: 0, bytesTransferred: 0, estimatedCostUSD: nil, attempts: [], writeBack: []
            )
            // Thrown to the caller, who reports it: logged at notice, not a second error.
            logger.notice("restore cannot start", metadata: ["key": "\(key)", "error": "\(error)"])
            throw RestoreFailure(report: report, fatalError: error)
        }
        return try await flights.run("\(key.rawValue)\u{0}\(staging.destination.string)") {
            try await RestoreRun(chain: self, key: key, staging: staging).execute()
        }
    }
}

/// What running one tier (all its attempts) came to.
enum TierRunResult: Sendable {
    /// `staging` holds the verified tree; whoever receives this result owns it and
    /// promotes or discards it.
    case restored(staging: StagingDirectory, details: RestoreDetails, tierIndex: Int)
    /// Move on to the next tier.
    case exhausted
    /// Stop the chain.
    case fatal(CacheTierError)
    /// Stopped by cancellation (the caller's or a hedge's).
    case cancelled
}

/// The state of one restore through a chain.
struct RestoreRun: Sendable {
    let chain: TierChain
    let key: CacheKey
    let staging: DestinationStaging
    let attempts = AttemptLog()
    let logger: Logger

    init(chain: TierChain, key: CacheKey, staging: DestinationStaging) {
        self.chain = chain
        self.key = key
        self.staging = staging
        var logger = chain.logger
        logger[metadataKey: "cache.key"] = "\(key)"
        self.logger = logger
    }

    var configuration: TierChain.Configuration { chain.configuration }
    var clock: ChainClock { chain.clock }

    func emit(_ event: RestoreEvent) {
        configuration.observer?(event)
    }

    func execute() async throws -> RestoreReport {
        let start = clock.now()
        let deadline = start + configuration.deadline
        logger.info("restore started", metadata: ["destination": "\(staging.destination)"])
        // Before anything is written: a killed earlier restore may have left whole trees.
        await staging.sweepLeftovers(logger: logger)

        var index = 0
        tiers: while index < chain.tiers.count {
            if Task.isCancelled { break tiers }
            let result: TierRunResult
            var nextIndex = index + 1
            if let hedging = configuration.hedging, index + 1 < chain.tiers.count,
                chain.tiers[index + 1].source.traits.isHedgeTarget
            {
                let hedged = await runHedged(index, delay: hedging.delay, deadline: deadline)
                result = hedged.result
                if hedged.secondaryStarted { nextIndex = index + 2 }
            } else {
                result = await runTier(index, deadline: deadline, activity: TierActivity())
            }

            switch result {
            case .restored(let tree, let details, let tierIndex):
                if Task.isCancelled {
                    await tree.discard(logger: logger)
                    break tiers
                }
                let promotion: DestinationStaging.Promotion
                do {
                    promotion = try await tree.promote(now: clock.now, logger: logger)
                } catch {
                    throw failure(start: start, fatal: error)
                }
                return await finishRestored(tierIndex: tierIndex, details: details, promotion: promotion, start: start)
            case .fatal(let error):
                throw failure(start: start, fatal: error)
            case .cancelled:
                break tiers
            case .exhausted:
                index = nextIndex
            }
        }
        if Task.isCancelled {
            logger.notice("restore cancelled by the caller; the destination is unchanged")
            throw CancellationError()
        }
        throw failure(start: start, fatal: nil)
    }

    private func failure(start: Duration, fatal: CacheTierError?) -> RestoreFailure {
        let elapsed = clock.now() - start
        let duration = elapsed.inSeconds
        chain.metrics.recordRestore(servedBy: nil, duration: elapsed)
        let report = RestoreReport(
            key: key, outcome: .failed, servedBy: nil, destination: staging.destination.string,
            durationSeconds: duration, bytesTransferred: 0, estimatedCostUSD: nil,
            attempts: attempts.records, writeBack: []
        )
        let failure = RestoreFailure(report: report, fatalError: fatal)
        // Thrown to the caller, who reports it: logged at notice, not a second error.
        logger.notice("restore failed; the destination is unchanged", metadata: ["reason": "\(failure)"])
        return failure
    }

    private func finishRestored(
        tierIndex: Int,
        details: RestoreDetails,
        promotion: DestinationStaging.Promotion,
        start: Duration
    ) async -> RestoreReport {
        let tier = chain.tiers[tierIndex]
        let duration = clock.now() - start
        chain.metrics.recordRestore(servedBy: tier.name, duration: duration)
        emit(.restored(tier: tier.name))
        logger.info(
            "restored",
            metadata: [
                "tier": "\(tier.name)", "seconds": "\(duration.inSeconds)", "bytes": "\(details.bytesTransferred)",
            ]
        )
        let records = attempts.records
        let transfer = records.last { $0.tier == tier.name && $0.outcome == .hit }?.timings?.transferSeconds
        var report = RestoreReport(
            key: key, outcome: .restored, servedBy: tier.name, destination: staging.destination.string,
            durationSeconds: duration.inSeconds, bytesTransferred: details.bytesTransferred,
            estimatedCostUSD: details.estimatedCostUSD, archive: details.archive,
            throughputBytesPerSecond: details.archive.flatMap { archive in
                transfer.flatMap { $0 > 0 ? Double(archive.compressedBytes) / $0 : nil }
            },
            timings: RestoreTimings(promotionSeconds: promotion.rename.inSeconds, oldTreeRemovalSeconds: promotion.removal?.inSeconds),
            attempts: records, writeBack: []
        )
        let sinks = writeBackTargets(above: tierIndex)
        guard !sinks.isEmpty else { return report }
        if configuration.writeBack.detach, let handOff = configuration.writeBack.handOff {
            report.writeBack = handingOff(sinks, to: handOff)
            return report
        }
        let writeBack = WriteBackJob(run: self, sinks: sinks)
        if configuration.writeBack.waitForCompletion {
            let finished = await writeBack.run()
            report.writeBack = finished.records
            report.timings.writeBackSeconds = finished.duration.inSeconds
        } else {
            report.writeBack = sinks.map { WriteBackRecord(tier: $0.name, outcome: .pending) }
            report.pendingWriteBack = WriteBackCompletion(task: Task { await writeBack.run() })
        }
        return report
    }

    /// Hands the write-back to another process: each tier's record says `detached`, or
    /// `failed` with why when it could not be started.
    private func handingOff(
        _ sinks: [any CacheSink], to handOff: @Sendable (DetachedWriteBack) throws -> String
    ) -> [WriteBackRecord] {
        let request = DetachedWriteBack(key: key, tree: staging.destination, tiers: sinks.map(\.name))
        let records: [WriteBackRecord]
        do {
            let whereItRuns = try handOff(request)
            logger.info("write-back detached", metadata: ["tiers": "\(request.tiers)", "process": "\(whereItRuns)"])
            records = sinks.map { WriteBackRecord(tier: $0.name, outcome: .detached) }
        } catch {
            logger.warning("could not start the detached write-back", metadata: ["error": "\(error)"])
            records = sinks.map { WriteBackRecord(tier: $0.name, outcome: .failed, error: "could not start the detached write-back: \(error)") }
        }
        for record in records {
            chain.metrics.recordWriteBack(record)
            emit(.writeBackFinished(record))
        }
        return records
    }

    private func writeBackTargets(above tierIndex: Int) -> [any CacheSink] {
        guard configuration.writeBack.isEnabled else { return [] }
        return chain.tiers[..<tierIndex].compactMap { tier in
            tier.policy.acceptsWriteBack ? tier.source as? any CacheSink : nil
        }
    }
}

/// The attempts of one restore, in the order they ended.
final class AttemptLog: Sendable {
    private let storage = Mutex<[AttemptRecord]>([])

    func append(_ record: AttemptRecord) {
        storage.withLock { $0.append(record) }
    }

    var records: [AttemptRecord] {
        storage.withLock { $0 }
    }
}

/// Whether any attempt of a tier has received bytes; hedging watches it.
final class TierActivity: Sendable {
    private let bytes = Mutex<Int64>(0)

    func record(_ completed: Int64) {
        bytes.withLock { $0 = max($0, completed) }
    }

    var hasProgress: Bool {
        bytes.withLock { $0 > 0 }
    }
}
