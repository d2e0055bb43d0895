import Synchronization

/// A token bucket that caps retries across every restore that shares it.
///
/// A retry spends one token; a successful attempt refunds ``Configuration-swift.struct/refundPerSuccess``
/// tokens, up to the capacity. When the bucket is empty, the chain moves to the next
/// tier instead of retrying, so an outage does not multiply into a retry storm from
/// every VM at once (gRPC's retry throttling, the AWS SDKs' retry quota).
///
/// Each ``TierChain`` has its own unless its configuration brings one. There is no
/// process-wide default: a library that restores through its own chain must not spend
/// its host application's retries, nor a test's chain another test's.
public final class RetryBudget: Sendable {
    public struct Configuration: Sendable, Hashable {
        /// Tokens when full, and at start.
        public var capacity: Double
        /// Tokens one retry costs.
        public var costPerRetry: Double
        /// Tokens a successful attempt gives back.
        public var refundPerSuccess: Double

        public init(capacity: Double = 20, costPerRetry: Double = 1, refundPerSuccess: Double = 1) {
            self.capacity = capacity
            self.costPerRetry = costPerRetry
            self.refundPerSuccess = refundPerSuccess
        }
    }

    public let configuration: Configuration
    private let tokens: Mutex<Double>

    public init(configuration: Configuration = .init()) {
        self.configuration = configuration
        self.tokens = Mutex(configuration.capacity)
    }

    /// Takes the tokens for one retry; `false` when the budget is spent.
    public func withdrawRetry() -> Bool {
        tokens.withLock { tokens in
            guard tokens >= configuration.costPerRetry else { return false }
            tokens -= configuration.costPerRetry
            return true
        }
    }

    /// Refunds tokens after a successful attempt.
    public func recordSuccess() {
        tokens.withLock { tokens in
            tokens = min(configuration.capacity, tokens + configuration.refundPerSuccess)
        }
    }

    /// Tokens left now.
    public var available: Double {
        tokens.withLock { $0 }
    }
}
