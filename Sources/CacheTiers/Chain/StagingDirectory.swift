import Logging
import Synchronization
import SystemPackage

/// One staging directory beside a destination, and the duty to remove it.
///
/// Exactly one thing happens to it: ``promote(logger:)`` moves its tree into the
/// destination, or ``discard(logger:)`` removes it. Either consumes it; a later
/// `discard` does nothing, a second `promote` is a programming error. Whoever holds the
/// value owns the directory: a failed, cancelled or losing attempt discards it, and one
/// dropped with neither (a result nobody read) is removed when its last reference goes,
/// so no path through the chain can leave a tree behind in a long-running process.
///
/// A class, not a non-copyable value, because it travels through task groups as part
/// of a tier's result, and their results must be copyable.
final class StagingDirectory: Sendable {
    /// The directory the source fills.
    let path: FilePath
    private let staging: DestinationStaging
    private let logger: Logger
    private let owned = Atomic<Bool>(true)

    /// Creates an empty staging directory beside `staging`'s destination.
    init(beside staging: DestinationStaging, purpose: String = "staging", logger: Logger) throws(CacheTierError) {
        self.path = try staging.makeStagingDirectory(purpose: purpose)
        self.staging = staging
        self.logger = logger
    }

    /// Consumes the directory; true for the one caller that gets to dispose of it.
    private func take() -> Bool {
        owned.compareExchange(expected: true, desired: false, ordering: .acquiringAndReleasing).exchanged
    }

    /// Replaces the destination with this tree atomically. On failure the tree is
    /// removed and the destination is as it was.
    /// - Parameter now: the clock that times the promotion (the continuous clock by default).
    @discardableResult
    func promote(
        now: @Sendable () -> Duration = ChainClock(ContinuousClock()).now,
        logger: Logger
    ) async throws(CacheTierError) -> DestinationStaging.Promotion {
        precondition(take(), "a staging directory was promoted after it was promoted or discarded")
        do {
            return try await staging.promote(path, now: now, logger: logger)
        } catch {
            await staging.discard(path, logger: logger)
            throw error
        }
    }

    /// Removes the tree, unless it was promoted or removed already.
    func discard(logger: Logger) async {
        guard take() else { return }
        await staging.discard(path, logger: logger)
    }

    deinit {
        guard take() else { return }
        // Dropped without a decision: the safety net, not the plan. Removed on a thread of
        // its own, as every tree is.
        let path = path
        let logger = logger
        logger.notice("removing a staging directory nobody promoted or discarded", metadata: ["path": "\(path)"])
        Task.detached {
            do {
                try await FileSystem.removeTreeOffThePool(path)
            } catch {
                logger.warning(
                    "could not remove a staging directory; remove it by hand", metadata: ["path": "\(path)", "error": "\(error)"]
                )
            }
        }
    }
}
