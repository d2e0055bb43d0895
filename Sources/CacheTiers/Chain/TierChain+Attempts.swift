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

            let stagingPath: FilePath
            do {
                stagingPath = try staging.makeStagingDirectory()
            } catch {
                breaker.record(.abandoned, for: permit)
                return .fatal(error)
            }

            emit(.attemptStarted(tier: tier.name, attempt: attempt))
            let started = clock.now()
            let limitedByDeadline = remaining < policy.timeout
            let outcome = await runAttempt(
                tier,
                attempt: attempt,
                staging: stagingPath,
                limit: limitedByDeadline ? remaining : policy.timeout,
                limitedByDeadline: limitedByDeadline,
                activity: activity
            )
            let duration = clock.now() - started

            switch outcome {
            case .restored(let details, let bytes):
                breaker.record(.success, for: permit)
                configuration.retryBudget.recordSuccess()
                finish(tier.name, attempt, .hit, duration, bytes, nil)
                return .restored(staging: stagingPath, details: details, tierIndex: index)

            case .miss(let reason, let bytes):
                await staging.discard(stagingPath, logger: logger)
                breaker.record(.success, for: permit)
                finish(tier.name, attempt, .miss, duration, bytes, reason)
                return .exhausted

            case .cancelled(let bytes):
                await staging.discard(stagingPath, logger: logger)
                breaker.record(.abandoned, for: permit)
                finish(tier.name, attempt, .cancelled, duration, bytes, "cancelled before it finished")
                return .cancelled

            case .failed(let error, let bytes):
                await staging.discard(stagingPath, logger: logger)
                breaker.record(error.kind == .fatal ? .abandoned : .failure, for: permit)
                finish(tier.name, attempt, AttemptRecord.Outcome(error.kind), duration, bytes, error.description)
                if error.kind == .fatal { return .fatal(error) }
                guard error.kind.isRetryable, attempt < policy.retry.maxAttempts else { return .exhausted }

                var delay = policy.retry.delay(afterAttempt: attempt, random: configuration.random())
                if let retryAfter = error.retryAfter, retryAfter > delay { delay = retryAfter }
                guard clock.now() + delay < deadline else {
                    logger.info("no time left for a retry", metadata: ["tier": "\(tier.name)"])
                    return .exhausted
                }
                guard configuration.retryBudget.withdrawRetry() else {
                    skip(tier.name, attempt: attempt + 1, because: "the process's retry budget is spent; moving on instead of retrying")
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

    private func skip(_ tier: String, attempt: Int, because reason: String) {
        finish(tier, attempt, .skipped, .zero, 0, reason)
    }

    private func finish(
        _ tier: String,
        _ attempt: Int,
        _ outcome: AttemptRecord.Outcome,
        _ duration: Duration,
        _ bytes: Int64,
        _ error: String?
    ) {
        let record = AttemptRecord(
            tier: tier, attempt: attempt, outcome: outcome, durationSeconds: duration.inSeconds, bytes: bytes, error: error
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

    private enum AttemptSignal: Sendable {
        case finished(Result<SourceRestoreOutcome, any Error>)
        case timedOut
        case stalled
        case timerStopped
    }

    /// One attempt, raced against its time limit and the stall watchdog.
    func runAttempt(
        _ tier: TierChain.Tier,
        attempt: Int,
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
                        .success(try await tier.source.restore(request, into: stagingPath, progress: progress, logger: sourceLogger))
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
            if let stallTimeout = tier.policy.stallTimeout {
                group.addTask {
                    var observed = progress.snapshot.lastAdvance
                    while true {
                        do {
                            try await clock.sleep(observed + stallTimeout)
                        } catch {
                            return .timerStopped
                        }
                        let current = progress.snapshot.lastAdvance
                        if current == observed { return .stalled }
                        observed = current
                    }
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
        case .stalled:
            let of = snapshot.total.map { " of \($0)" } ?? ""
            let message =
                "stalled: no progress for \(tier.policy.stallTimeout?.humanReadable ?? "?") at \(snapshot.completed)\(of) bytes"
            return .failed(CacheTierError(.stalled, tier: name, message), bytes: snapshot.completed)
        case .timerStopped:
            return .cancelled(bytes: snapshot.completed)
        }
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
