import Synchronization

/// How far an attempt has come; sources report into it, the chain watches it.
///
/// The chain's stall detection cancels an attempt whose progress has not moved for
/// the tier's stall interval, so a source should report as bytes arrive (every chunk
/// is fine: an update costs one uncontended lock).
public final class TransferProgress: Sendable {
    /// A moment's view of the progress.
    public struct Snapshot: Sendable, Hashable {
        /// Bytes done so far.
        public var completed: Int64
        /// Total bytes expected, once known.
        public var total: Int64?
        /// When `completed` last changed, on the chain's clock (time since it started).
        public var lastAdvance: Duration
    }

    private let state: Mutex<Snapshot>
    private let now: @Sendable () -> Duration
    private let onChange: @Sendable (Snapshot) -> Void

    /// Creates a progress tracker.
    /// - Parameters:
    ///   - now: the current time on the clock used for stall detection.
    ///   - onChange: called after every change, on the reporting task.
    ///   Defaults to the time since the tracker was created.
    public init(
        now: (@Sendable () -> Duration)? = nil,
        onChange: @escaping @Sendable (Snapshot) -> Void = { _ in }
    ) {
        let start = ContinuousClock.now
        let now = now ?? { start.duration(to: .now) }
        self.now = now
        self.onChange = onChange
        self.state = Mutex(Snapshot(completed: 0, total: nil, lastAdvance: now()))
    }

    /// Adds `bytes` to the completed count.
    public func advance(by bytes: Int) {
        guard bytes > 0 else { return }
        let time = now()
        let snapshot = state.withLock { state in
            state.completed += Int64(bytes)
            state.lastAdvance = time
            return state
        }
        onChange(snapshot)
    }

    /// Records the total once known (a Content-Length, an object size).
    public func setTotal(_ total: Int64?) {
        let snapshot = state.withLock { state in
            state.total = total
            return state
        }
        onChange(snapshot)
    }

    /// Counts any sign of life that is not bytes (a phase of a fresh install, say) as progress.
    public func touch() {
        let time = now()
        let snapshot = state.withLock { state in
            state.lastAdvance = time
            return state
        }
        onChange(snapshot)
    }

    /// The progress of the upload the current task is making, set by the publisher for
    /// each sink's `publish` (and `contains`) so its stall rule sees bytes leave. A sink
    /// advances it as its transport takes bytes; `nil` outside a publish.
    @TaskLocal public static var upload: TransferProgress?

    public var snapshot: Snapshot {
        state.withLock { $0 }
    }
}
