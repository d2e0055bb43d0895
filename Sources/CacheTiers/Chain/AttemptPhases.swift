import Synchronization

/// When one attempt reached each phase of a download, on the chain's clock: the chain
/// starts it with the attempt, ``ArchiveDownload`` marks the phases as it passes them,
/// and the attempt's record carries what came of it (``AttemptTimings``).
///
/// A source that is not an archive source marks nothing: its timings stay `nil`.
final class AttemptPhases: Sendable {
    private struct Marks {
        var answered: Duration?
        var firstByte: Duration?
        var lastByte: Duration?
        var complete: Duration?
        var busy: Duration?
    }

    private let clock: ChainClock
    private let started: Duration
    private let marks = Mutex(Marks())

    /// Starts the attempt's timeline now.
    init(clock: ChainClock) {
        self.clock = clock
        self.started = clock.now()
    }

    /// The tier answered about the key (found or not).
    func markAnswered() {
        let now = clock.now()
        marks.withLock { $0.answered = $0.answered ?? now }
    }

    /// The first archive byte arrived.
    func markFirstByte() {
        let now = clock.now()
        marks.withLock { $0.firstByte = $0.firstByte ?? now }
    }

    /// The last archive byte arrived.
    func markLastByte() {
        let now = clock.now()
        marks.withLock { $0.lastByte = now }
    }

    /// The tree is complete and verified; `busy` is how long unpacking was at work.
    func markComplete(busy: Duration) {
        let now = clock.now()
        marks.withLock { marks in
            marks.complete = now
            marks.busy = busy
        }
    }

    var timings: AttemptTimings {
        let marks = marks.withLock { $0 }
        func between(_ from: Duration?, _ to: Duration?) -> Double? {
            guard let from, let to else { return nil }
            return max(.zero, to - from).inSeconds
        }
        return AttemptTimings(
            connectSeconds: between(started, marks.answered),
            firstByteSeconds: between(started, marks.firstByte),
            transferSeconds: between(marks.firstByte, marks.lastByte),
            extractSeconds: marks.busy?.inSeconds,
            extractTailSeconds: between(marks.lastByte, marks.complete)
        )
    }
}
