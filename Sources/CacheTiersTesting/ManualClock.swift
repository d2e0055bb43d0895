import Synchronization

/// A clock that moves only when a test advances it, so timeouts, backoff and breaker
/// intervals are proven without sleeping on the wall clock.
///
/// Sleepers whose deadline is reached by ``advance(by:)`` are resumed; a cancelled
/// sleeper throws `CancellationError` at once. ``waitForSleepers(_:)`` lets a test
/// wait until the code under test has armed its timers before advancing.
public final class ManualClock: Clock, Sendable {
    public struct Instant: InstantProtocol, Hashable, Comparable, Sendable {
        /// Time since the clock was created.
        public var offset: Duration

        public init(offset: Duration) {
            self.offset = offset
        }

        public func advanced(by duration: Duration) -> Instant {
            Instant(offset: offset + duration)
        }

        public func duration(to other: Instant) -> Duration {
            other.offset - offset
        }

        public static func < (lhs: Instant, rhs: Instant) -> Bool {
            lhs.offset < rhs.offset
        }
    }

    private struct Sleeper {
        var deadline: Instant
        var continuation: CheckedContinuation<Void, any Error>
    }

    private struct State {
        var now = Instant(offset: .zero)
        var nextID = 0
        var live: Set<Int> = []
        var parked: [Int: Sleeper] = [:]
        var cancelledEarly: Set<Int> = []
    }

    private let state = Mutex(State())

    public init() {}

    public var now: Instant {
        state.withLock { $0.now }
    }

    public var minimumResolution: Duration { .zero }

    /// How many tasks are asleep on this clock now.
    public var sleeperCount: Int {
        state.withLock { $0.parked.count }
    }

    /// The deadlines of the sleepers now, earliest first.
    public var deadlines: [Instant] {
        state.withLock { $0.parked.values.map(\.deadline).sorted() }
    }

    public func sleep(until deadline: Instant, tolerance: Duration? = nil) async throws {
        try Task.checkCancellation()
        let id = state.withLock { state in
            let id = state.nextID
            state.nextID += 1
            state.live.insert(id)
            return id
        }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let immediate = state.withLock { state -> Result<Void, any Error>? in
                    if state.cancelledEarly.remove(id) != nil {
                        state.live.remove(id)
                        return .failure(CancellationError())
                    }
                    if deadline <= state.now {
                        state.live.remove(id)
                        return .success(())
                    }
                    state.parked[id] = Sleeper(deadline: deadline, continuation: continuation)
                    return nil
                }
                if let immediate { continuation.resume(with: immediate) }
            }
        } onCancel: {
            let continuation = state.withLock { state -> CheckedContinuation<Void, any Error>? in
                guard state.live.contains(id) else { return nil }
                guard let sleeper = state.parked.removeValue(forKey: id) else {
                    state.cancelledEarly.insert(id)
                    return nil
                }
                state.live.remove(id)
                return sleeper.continuation
            }
            continuation?.resume(throwing: CancellationError())
        }
    }

    /// Moves time forward and wakes every sleeper whose deadline has come, earliest first.
    public func advance(by duration: Duration) {
        let woken = state.withLock { state -> [CheckedContinuation<Void, any Error>] in
            state.now = state.now.advanced(by: duration)
            let due = state.parked.filter { $0.value.deadline <= state.now }.sorted { $0.value.deadline < $1.value.deadline }
            for (id, _) in due {
                state.parked.removeValue(forKey: id)
                state.live.remove(id)
            }
            return due.map(\.value.continuation)
        }
        for continuation in woken {
            continuation.resume()
        }
    }

    /// Waits (on the real clock, polling) until at least `count` tasks sleep on this clock.
    ///
    /// - Throws: ``ManualClockError`` when they do not within `limit`, so a test fails
    ///   instead of hanging. The limit only guards against a hang: it is generous, since
    ///   tests running in parallel on a busy machine can hold the cooperative pool.
    public func waitForSleepers(_ count: Int, limit: Duration = .seconds(120)) async throws {
        let start = ContinuousClock.now
        while sleeperCount < count {
            if ContinuousClock.now - start > limit {
                throw ManualClockError(
                    description: "expected \(count) sleepers on the manual clock within \(limit), have \(sleeperCount)"
                )
            }
            try await Task.sleep(for: .milliseconds(1))
        }
    }
}

extension ManualClock {
    /// Waits (on the real clock, polling) until some task sleeps until exactly `deadline`.
    ///
    /// - Throws: ``ManualClockError`` naming the deadlines it saw instead.
    public func waitForSleeper(until deadline: Instant, limit: Duration = .seconds(120)) async throws {
        let start = ContinuousClock.now
        while !deadlines.contains(deadline) {
            if ContinuousClock.now - start > limit {
                throw ManualClockError(
                    description: "expected a sleeper until \(deadline.offset) within \(limit), saw \(deadlines.map(\.offset))"
                )
            }
            try await Task.sleep(for: .milliseconds(1))
        }
    }
}

/// A test expectation about a ``ManualClock`` that was not met.
public struct ManualClockError: Error, CustomStringConvertible {
    public var description: String
}
