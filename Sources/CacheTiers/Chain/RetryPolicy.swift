/// How often, and how patiently, one tier is retried.
///
/// Delays follow exponential backoff with full jitter: before attempt `n + 1` the
/// chain waits a uniformly random time in `0 ... min(maxDelay, initialDelay * multiplier^(n-1))`,
/// which spreads a fleet of VMs that failed together. A server's Retry-After, when
/// longer, is honoured as long as it fits in the time left.
public struct RetryPolicy: Sendable, Hashable {
    /// Attempts in all, the first included; 1 disables retries.
    public var maxAttempts: Int
    public var initialDelay: Duration
    public var multiplier: Double
    public var maxDelay: Duration

    public init(
        maxAttempts: Int = 3,
        initialDelay: Duration = .milliseconds(200),
        multiplier: Double = 2,
        maxDelay: Duration = .seconds(10)
    ) {
        precondition(maxAttempts >= 1, "maxAttempts must be at least 1")
        self.maxAttempts = maxAttempts
        self.initialDelay = initialDelay
        self.multiplier = multiplier
        self.maxDelay = maxDelay
    }

    /// No retries: one attempt.
    public static let none = RetryPolicy(maxAttempts: 1)

    /// The longest backoff before the attempt after `failedAttempt` (1-based).
    public func ceiling(afterAttempt failedAttempt: Int) -> Duration {
        let factor = pow(multiplier, Double(max(0, failedAttempt - 1)))
        let capped = min(initialDelay.inSeconds * factor, maxDelay.inSeconds)
        return .nanoseconds(Int64(capped * 1e9))
    }

    /// The delay before the attempt after `failedAttempt`, given a random fraction in `0..<1`.
    public func delay(afterAttempt failedAttempt: Int, random: Double) -> Duration {
        let ceiling = ceiling(afterAttempt: failedAttempt).inSeconds
        return .nanoseconds(Int64(ceiling * min(max(random, 0), 1) * 1e9))
    }
}

private func pow(_ base: Double, _ exponent: Double) -> Double {
    var result = 1.0
    var remaining = Int(exponent)
    while remaining > 0 {
        result *= base
        remaining -= 1
    }
    return result
}
