extension RestoreRun {
    /// Runs tier `index`; if it has received no bytes after `delay`, starts tier
    /// `index + 1` beside it. The first to restore wins and the other is cancelled (its
    /// staging directory removed before this returns).
    func runHedged(
        _ index: Int,
        delay: Duration,
        deadline: Duration
    ) async -> (result: TierRunResult, secondaryStarted: Bool) {
        enum Event: Sendable {
            case primary(TierRunResult)
            case secondary(TierRunResult)
            case hedgeDue
            case timerStopped
        }

        let primaryActivity = TierActivity()
        let clock = self.clock
        let hedgeAt = clock.now() + delay

        return await withTaskGroup(of: Event.self) { group in
            group.addTask { .primary(await runTier(index, deadline: deadline, activity: primaryActivity)) }
            group.addTask {
                do {
                    try await clock.sleep(hedgeAt)
                    return .hedgeDue
                } catch {
                    return .timerStopped
                }
            }

            var secondaryStarted = false
            var primaryResult: TierRunResult?
            var secondaryResult: TierRunResult?
            var decided: TierRunResult?

            race: while let event = await group.next() {
                switch event {
                case .timerStopped:
                    continue
                case .hedgeDue:
                    guard primaryResult == nil, !primaryActivity.hasProgress, !Task.isCancelled else { continue }
                    secondaryStarted = true
                    let primaryName = chain.tiers[index].name
                    let secondaryName = chain.tiers[index + 1].name
                    logger.notice(
                        "hedging: no bytes yet, starting the next tier in parallel",
                        metadata: ["tier": "\(primaryName)", "hedge": "\(secondaryName)", "after": "\(delay.humanReadable)"]
                    )
                    emit(.hedgeStarted(tier: secondaryName, after: primaryName))
                    group.addTask { .secondary(await runTier(index + 1, deadline: deadline, activity: TierActivity())) }
                case .primary(let result):
                    primaryResult = result
                    if result.endsRace || !secondaryStarted {
                        decided = result
                        break race
                    }
                    if let secondaryResult {
                        decided = secondaryResult
                        break race
                    }
                case .secondary(let result):
                    secondaryResult = result
                    if result.endsRace {
                        decided = result
                        break race
                    }
                    if let primaryResult {
                        decided = primaryResult
                        break race
                    }
                }
            }
            // The loser is cancelled, but it may restore all the same (it ignored the
            // cancellation, or finished in the same instant): its staged tree is nobody's
            // and goes now. The sweep of leftovers spares this process's own folders, so
            // in a long-running service nothing else would ever remove it.
            group.cancelAll()
            while let event = await group.next() {
                switch event {
                case .primary(.restored(let tree, _, _)), .secondary(.restored(let tree, _, _)):
                    await tree.discard(logger: logger)
                default:
                    break
                }
            }
            // Without a decision, both finished without a winner (only through cancellation).
            return (decided ?? primaryResult ?? secondaryResult ?? .cancelled, secondaryStarted)
        }
    }
}

extension TierRunResult {
    /// A result that decides the race: a restore, or a reason to stop the chain.
    var endsRace: Bool {
        switch self {
        case .restored, .fatal: true
        case .exhausted, .cancelled: false
        }
    }
}
