import Synchronization

/// Stops sending restores to a tier that keeps failing, then probes it once in a while.
///
/// One breaker per tier, shared by every restore through the same ``TierChain``. It
/// opens after ``Configuration-swift.struct/consecutiveFailures`` failures in a row, or
/// when the failure ratio over the last ``Configuration-swift.struct/windowSize`` calls
/// reaches ``Configuration-swift.struct/failureRatio`` (once at least
/// ``Configuration-swift.struct/minimumCalls`` were made). While open, the tier is
/// skipped. After ``Configuration-swift.struct/breakInterval`` exactly one call goes
/// through as a probe: success closes the breaker, failure reopens it. A probe that
/// ends without an outcome (cancelled, say) lets the next call probe at once, so the
/// breaker never stays half-open.
public final class CircuitBreaker: Sendable {
    public struct Configuration: Sendable, Hashable {
        public var consecutiveFailures: Int
        public var failureRatio: Double
        public var minimumCalls: Int
        public var windowSize: Int
        public var breakInterval: Duration

        public init(
            consecutiveFailures: Int = 5,
            failureRatio: Double = 0.5,
            minimumCalls: Int = 10,
            windowSize: Int = 20,
            breakInterval: Duration = .seconds(30)
        ) {
            self.consecutiveFailures = consecutiveFailures
            self.failureRatio = failureRatio
            self.minimumCalls = minimumCalls
            self.windowSize = max(1, windowSize)
            self.breakInterval = breakInterval
        }

        /// A breaker that never opens.
        public static let disabled = Configuration(
            consecutiveFailures: .max,
            failureRatio: 2,
            minimumCalls: .max,
            windowSize: 1
        )
    }

    /// Where the breaker stands.
    public enum State: Sendable, Hashable {
        case closed
        case open(until: Duration)
        case halfOpen
    }

    /// Permission to make one call; report its result with `record(_:for:)`.
    struct Permit: Sendable, Hashable {
        let isProbe: Bool
    }

    /// How a call through the breaker ended.
    enum CallResult: Sendable, Hashable {
        case success
        case failure
        /// Ended with no verdict on the tier's health (cancelled by the caller, lost a hedge).
        case abandoned
    }

    private struct Storage {
        var state: State = .closed
        var consecutiveFailures = 0
        var window: [Bool] = []  // true = failure, most recent last
    }

    public let configuration: Configuration
    private let now: @Sendable () -> Duration
    private let storage = Mutex(Storage())

    /// Creates a breaker measuring its break interval on `clock`. A ``TierChain`` makes
    /// one per tier (``TierChain/circuitBreaker(forTier:)`` shows it).
    convenience init(configuration: Configuration, clock: some Clock<Duration> = ContinuousClock()) {
        self.init(configuration: configuration, now: ChainClock(clock).now)
    }

    init(configuration: Configuration, now: @escaping @Sendable () -> Duration) {
        self.configuration = configuration
        self.now = now
    }

    public var state: State {
        storage.withLock { $0.state }
    }

    /// Asks to make a call; `nil` when the tier must be skipped.
    func acquire() -> Permit? {
        let time = now()
        return storage.withLock { storage in
            switch storage.state {
            case .closed:
                return Permit(isProbe: false)
            case .open(let until) where time >= until:
                storage.state = .halfOpen
                return Permit(isProbe: true)
            case .open, .halfOpen:
                return nil
            }
        }
    }

    /// Reports how a permitted call ended. Every permit must be reported exactly once.
    func record(_ result: CallResult, for permit: Permit) {
        let time = now()
        storage.withLock { storage in
            if permit.isProbe {
                switch result {
                case .success:
                    storage = Storage()
                case .failure:
                    storage.state = .open(until: time + configuration.breakInterval)
                case .abandoned:
                    // No verdict: let the very next call probe.
                    storage.state = .open(until: time)
                }
                return
            }
            guard result != .abandoned else { return }
            let failed = result == .failure
            storage.window.append(failed)
            if storage.window.count > configuration.windowSize {
                storage.window.removeFirst(storage.window.count - configuration.windowSize)
            }
            storage.consecutiveFailures = failed ? storage.consecutiveFailures + 1 : 0
            guard case .closed = storage.state, failed else { return }
            let failures = storage.window.lazy.filter { $0 }.count
            let ratioTripped =
                storage.window.count >= configuration.minimumCalls
                && Double(failures) / Double(storage.window.count) >= configuration.failureRatio
            if storage.consecutiveFailures >= configuration.consecutiveFailures || ratioTripped {
                storage.state = .open(until: time + configuration.breakInterval)
                storage.consecutiveFailures = 0
                storage.window.removeAll()
            }
        }
    }
}
