import Logging
import SystemPackage

extension RestoreRun {
    /// Runs every attempt of one tier: timeouts, stall detection, breaker, retries, budget.
    func runTier(_ index: Int, deadline: Duration, activity: TierActivity) async -> TierRunResult {
        let tier = chain.tiers[index]
        let breaker = chain.breakers[index]
        let policy = tier.policy

        for attempt in 1...policy.retry.maxAttempts {
            if Task.isCancelled { return .cancelled }
            let remaining = deadline - clock.now()
            guard remaining > .zero else {
                skip(tier.name, attempt: attempt, because: "the restore's deadline of \(configuration.deadline.humanReadable) was reached before its turn")
                return .exhausted
            }
            guard let permit = breaker.acquire() else {
                skip(tier.name, attempt: attempt, because: "circuit breaker open after repeated failures; skipped until it probes again")
                return .exhausted
            }

            let tree: StagingDirectory
            do {
                tree = try StagingDirectory(beside: staging, logger: logger)
            } catch {
                breaker.record(.abandoned, for: permit)
                return .fatal(error)
            }

            emit(.attemptStarted(tier: tier.name, attempt: attempt))
            let started = clock.now()
            let phases = AttemptPhases(clock: clock)
            let limitedByDeadline = remaining < policy.timeout
            let outcome = await runAttempt(
                tier,
                attempt: attempt,
                phases: phases,
                staging: tree.path,
                limit: limitedByDeadline ? remaining : policy.timeout,
                limitedByDeadline: limitedByDeadline,
                activity: activity
            )
            let duration = clock.now() - started
            let conclude = { (outcome: AttemptRecord.Outcome, bytes: Int64, error: String?) in
                self.finish(tier.name, attempt, outcome, duration, bytes, error, timings: phases.timings)
            }

            switch outcome {
            case .restored(let details, let bytes):
                breaker.record(.success, for: permit)
                chain.retryBudget.recordSuccess()
                conclude(.hit, bytes, nil)
                return .restored(staging: tree, details: details, tierIndex: index)

            case .miss(let reason, let bytes):
                await tree.discard(logger: logger)
                breaker.record(.success, for: permit)
                conclude(.miss, bytes, reason)
                return .exhausted

            case .cancelled(let bytes):
                await tree.discard(logger: logger)
                breaker.record(.abandoned, for: permit)
                conclude(.cancelled, bytes, "cancelled before it finished")
                return .cancelled

            case .failed(let error, let bytes):
                await tree.discard(logger: logger)
                breaker.record(error.kind == .fatal ? .abandoned : .failure, for: permit)
                conclude(AttemptRecord.Outcome(error.kind), bytes, error.description)
                if error.kind == .fatal { return .fatal(error) }
                guard error.kind.isRetryable, attempt < policy.retry.maxAttempts else { return .exhausted }
                if error.kind == .timeout || error.kind == .stalled, bytes < deadTierBytes(policy) {
                    // Silent (connect or first byte never came) or dripping: another
                    // attempt would wait just as long. Fall through to the next tier now.
                    logger.info(
                        "not retrying a tier that sent almost nothing before it timed out or stalled",
                        metadata: ["tier": "\(tier.name)", "bytes": "\(bytes)"]
                    )
                    return .exhausted
                }

                var delay = policy.retry.delay(afterAttempt: attempt, random: configuration.random())
                if let retryAfter = error.retryAfter, retryAfter > delay { delay = retryAfter }
                guard clock.now() + delay < deadline else {
                    logger.info("no time left for a retry", metadata: ["tier": "\(tier.name)"])
                    return .exhausted
                }
                guard chain.retryBudget.withdrawRetry() else {
                    skip(tier.name, attempt: attempt + 1, because: "the chain's retry budget is spent; moving on instead of retrying")
                    return .exhausted
                }
                logger.debug("retrying after backoff", metadata: ["tier": "\(tier.name)", "delay": "\(delay.humanReadable)"])
                do {
                    try await clock.sleep(clock.now() + delay)
                } catch {
                    return .cancelled
                }
            }
        }
        return .exhausted
    }

    /// Under this many bytes, a timed-out or stalled attempt means the tier is dead or
    /// dripping rather than briefly interrupted: one stall window at the throughput floor
    /// (at least one byte).
    private func deadTierBytes(_ policy: TierChain.TierPolicy) -> Int64 {
        let window = policy.stallTimeout?.inSeconds ?? 0
        return max(1, Int64(exactly: (Double(max(0, policy.minimumThroughput ?? 0)) * window).rounded(.up)) ?? .max)
    }

    private func skip(_ tier: String, attempt: Int, because reason: String) {
        finish(tier, attempt, .skipped, .zero, 0, reason)
    }

    private func finish(
        _ tier: String,
        _ attempt: Int,
        _ outcome: AttemptRecord.Outcome,
        _ duration: Duration,
        _ bytes: Int64,
        _ error: String?,
        timings: AttemptTimings? = nil
    ) {
        let record = AttemptRecord(
            tier: tier, attempt: attempt, outcome: outcome, durationSeconds: duration.inSeconds, bytes: bytes, error: error,
            timings: timings
        )
        attempts.append(record)
        chain.metrics.recordAttempt(record, duration: duration)
        emit(.attemptFinished(record))
        var metadata: Logger.Metadata = [
            "tier": "\(tier)", "attempt": "\(attempt)", "outcome": "\(outcome.rawValue)",
            "seconds": "\(duration.inSeconds)", "bytes": "\(bytes)",
        ]
        if let error { metadata["error"] = "\(error)" }
        logger.log(level: outcome == .hit || outcome == .miss ? .info : .warning, "attempt finished", metadata: metadata)
    }

    enum AttemptOutcome: Sendable {
        case restored(RestoreDetails, bytes: Int64)
        case miss(String, bytes: Int64)
        case failed(CacheTierError, bytes: Int64)
        case cancelled(bytes: Int64)
    }

    enum AttemptSignal: Sendable {
        case finished(Result<SourceRestoreOutcome, any Error>)
        case timedOut
        case stalled(StallWatchdog.Verdict)
        case timerStopped
    }

    /// One attempt, raced against its time limit and the stall watchdog.
    func runAttempt(
        _ tier: TierChain.Tier,
        attempt: Int,
        phases: AttemptPhases,
        staging stagingPath: FilePath,
        limit: Duration,
        limitedByDeadline: Bool,
        activity: TierActivity
    ) async -> AttemptOutcome {
        let name = tier.name
        let observer = configuration.observer
        let progress = TransferProgress(now: clock.now) { snapshot in
            activity.record(snapshot.completed)
            observer?(.progress(tier: name, attempt: attempt, completed: snapshot.completed, total: snapshot.total))
        }
        let request = RestoreRequest(key: key, attempt: attempt)
        var tierLogger = logger
        tierLogger[metadataKey: "tier"] = "\(name)"
        let sourceLogger = tierLogger
        let clock = self.clock
        let endsAt = clock.now() + limit

        let verdict = await withTaskGroup(of: AttemptSignal.self) { group -> AttemptSignal in
            group.addTask {
                do {
                    return .finished(
                        .success(
                            try await restore(
                                request, from: tier, into: stagingPath, progress: progress, phases: phases, logger: sourceLogger
                            )
                        )
                    )
                } catch {
                    return .finished(.failure(error))
                }
            }
            group.addTask {
                do {
                    try await clock.sleep(endsAt)
                    return .timedOut
                } catch {
                    return .timerStopped
                }
            }
            if let stallTimeout = tier.policy.stallTimeout, stallTimeout > .zero {
                let floor = tier.source.traits.reportsBytes ? max(0, tier.policy.minimumThroughput ?? 0) : 0
                group.addTask {
                    await StallWatchdog(
                        progress: progress, clock: clock, window: stallTimeout, minimumBytesPerSecond: floor
                    ).watch()
                }
            }
            var verdict: AttemptSignal?
            while let signal = await group.next() {
                switch signal {
                case .timerStopped:
                    continue
                case .finished, .timedOut, .stalled:
                    // The first verdict stands; the rest are the cancelled racers winding down.
                    if verdict == nil { verdict = signal }
                    group.cancelAll()
                }
            }
            return verdict ?? .timerStopped
        }

        let snapshot = progress.snapshot
        switch verdict {
        case .finished(.success(.restored(let details))):
            return .restored(details, bytes: max(details.bytesTransferred, snapshot.completed))
        case .finished(.success(.miss(let reason))):
            return .miss(reason, bytes: snapshot.completed)
        case .finished(.failure(let error)):
            if let tierError = error as? CacheTierError {
                if tierError.kind == .miss { return .miss(tierError.message, bytes: snapshot.completed) }
                return .failed(tierError.attributed(to: name), bytes: snapshot.completed)
            }
            if error is CancellationError || Task.isCancelled {
                return .cancelled(bytes: snapshot.completed)
            }
            return .failed(
                CacheTierError(.transient, tier: name, "failed: \(error)", underlying: error),
                bytes: snapshot.completed
            )
        case .timedOut:
            let message =
                limitedByDeadline
                ? "timed out after \(limit.humanReadable): the restore's deadline of \(configuration.deadline.humanReadable) ran out"
                : "timed out after \(limit.humanReadable) (the tier's timeout)"
            return .failed(CacheTierError(.timeout, tier: name, message), bytes: snapshot.completed)
        case .stalled(let stall):
            let of = snapshot.total.map { " of \($0)" } ?? ""
            let window = tier.policy.stallTimeout?.humanReadable ?? "?"
            let message: String
            switch stall {
            case .noProgress:
                message = "stalled: no progress for \(window) at \(snapshot.completed)\(of) bytes"
            case .tooSlow(let bytes, let minimum):
                message =
                    "stalled: \(bytes) bytes in the last \(window), under the floor of \(minimum) bytes/s, at \(snapshot.completed)\(of) bytes"
            }
            return .failed(CacheTierError(.stalled, tier: name, message), bytes: snapshot.completed)
        case .timerStopped:
            return .cancelled(bytes: snapshot.completed)
        }
    }
}

extension RestoreRun {
    /// One attempt's work: an archive tier's archive goes through the chain's
    /// ``ArchiveDownload``, on the chain's clock; any other source restores by itself.
    func restore(
        _ request: RestoreRequest,
        from tier: TierChain.Tier,
        into staging: FilePath,
        progress: TransferProgress,
        phases: AttemptPhases,
        logger: Logger
    ) async throws -> SourceRestoreOutcome {
        guard let archives = tier.source as? any ArchiveSource else {
            return try await tier.source.restore(request, into: staging, progress: progress, logger: logger)
        }
        return try await download(
            request, from: archives, policy: tier.policy, into: staging, progress: progress, phases: phases, logger: logger
        )
    }

    private func download<Source: ArchiveSource>(
        _ request: RestoreRequest,
        from source: Source,
        policy: TierChain.TierPolicy,
        into staging: FilePath,
        progress: TransferProgress,
        phases: AttemptPhases,
        logger: Logger
    ) async throws -> SourceRestoreOutcome {
        try await ArchiveDownload(source: source, clock: clock, backoff: policy.retry, random: configuration.random, phases: phases)
            .run(request, into: staging, progress: progress, logger: logger)
    }
}

extension AttemptRecord.Outcome {
    init(_ kind: CacheTierError.Kind) {
        switch kind {
        case .miss: self = .miss
        case .timeout: self = .timeout
        case .stalled: self = .stalled
        case .corrupt: self = .corrupt
        case .unauthorized: self = .unauthorized
        default: self = .error
        }
    }
}

/// Watches an attempt's progress and returns when it stalls: no progress for a whole
/// window, or, with a floor, fewer bytes in a window than the floor allows. Once the
/// progress has reached its known total it stops judging.
struct StallWatchdog: Sendable {
    enum Verdict: Sendable, Hashable {
        case noProgress
        case tooSlow(bytes: Int64, minimumBytesPerSecond: Int64)
    }

    let progress: TransferProgress
    let clock: ChainClock
    let window: Duration
    /// 0 for no floor.
    let minimumBytesPerSecond: Int64

    /// The attempt's racer: `.stalled` on a verdict, `.timerStopped` when cancelled.
    func watch() async -> RestoreRun.AttemptSignal {
        let floor = Int64(exactly: (Double(minimumBytesPerSecond) * window.inSeconds).rounded(.up)) ?? .max
        var observed = progress.snapshot
        var windowStart = clock.now()
        var windowBytes = observed.completed
        while true {
            let silenceEnds = observed.lastAdvance + window
            let windowEnds = windowStart + window
            do {
                try await clock.sleep(floor > 0 ? min(silenceEnds, windowEnds) : silenceEnds)
            } catch {
                return .timerStopped
            }
            let now = clock.now()
            let current = progress.snapshot
            if let total = current.total, total > 0, current.completed >= total {
                // Every byte is in (or out): what is left (extraction's last writes, a
                // server verifying and syncing an upload) makes no byte of progress,
                // and the step's own time limit bounds it.
                do {
                    while true { try await clock.sleep(now + .seconds(86_400)) }
                } catch {
                    return .timerStopped
                }
            }
            if current.lastAdvance == observed.lastAdvance, now >= silenceEnds {
                return .stalled(.noProgress)
            }
            if floor > 0, now >= windowEnds {
                let moved = current.completed - windowBytes
                if moved < floor { return .stalled(.tooSlow(bytes: moved, minimumBytesPerSecond: minimumBytesPerSecond)) }
                windowStart = now
                windowBytes = current.completed
            }
            observed = current
        }
    }
}
