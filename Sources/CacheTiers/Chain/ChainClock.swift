/// A clock erased to what the chain needs: the time since it started, and sleeping
/// until a moment. Tests pass a manual clock; production uses `ContinuousClock`.
struct ChainClock: Sendable {
    let now: @Sendable () -> Duration
    let sleep: @Sendable (_ until: Duration) async throws -> Void

    init<C: Clock>(_ clock: C) where C.Duration == Duration {
        let epoch = clock.now
        self.now = { epoch.duration(to: clock.now) }
        self.sleep = { deadline in
            try await clock.sleep(until: epoch.advanced(by: deadline), tolerance: nil)
        }
    }
}

extension Duration {
    /// The duration in seconds as a `Double`, for reports, logs and APIs that take seconds.
    package var inSeconds: Double {
        let (seconds, attoseconds) = components
        return Double(seconds) + Double(attoseconds) / 1e18
    }

    /// A readable rendering for messages: `2 s`, `250 ms`.
    var humanReadable: String {
        let value = inSeconds
        if value >= 1 || value == 0 {
            let rounded = (value * 10).rounded() / 10
            return rounded == rounded.rounded() ? "\(Int(rounded)) s" : "\(rounded) s"
        }
        return "\(Int((value * 1000).rounded())) ms"
    }
}
