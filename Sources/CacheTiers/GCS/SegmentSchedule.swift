import NIOCore
import Synchronization

// The parts of a parallel ranged download (GCSSource.fetchInParallel): workers claim
// segments from a schedule and fill one pipe each; the decoder reads the pipes in order.

/// Which segment a download worker takes next: in order, and no further than `window`
/// segments ahead of the one the decoder is reading.
final class SegmentSchedule: Sendable {
    private struct State {
        var next = 0
        var delivered = 0
        var pipes: [Int: SegmentPipe] = [:]
        var waiters: [UInt64: CheckedContinuation<Int?, Never>] = [:]
        var nextWaiter: UInt64 = 0
        var cancelled: Set<UInt64> = []
    }

    private let count: Int
    private let window: Int
    private let state = Mutex(State())

    init(count: Int, window: Int) {
        self.count = count
        self.window = window
    }

    /// The pipe of segment `index`, shared by its worker and the decoder.
    func pipe(_ index: Int) -> SegmentPipe {
        state.withLock { state in
            if let pipe = state.pipes[index] { return pipe }
            let pipe = SegmentPipe()
            state.pipes[index] = pipe
            return pipe
        }
    }

    /// The next segment to fetch, waiting while the workers are `window` ahead; nil
    /// when every segment is taken or the task is cancelled.
    func claim() async -> Int? {
        let id = state.withLock { state in
            defer { state.nextWaiter += 1 }
            return state.nextWaiter
        }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                let ready: Int?? = state.withLock { state in
                    if state.cancelled.contains(id) || state.next >= count { return .some(nil) }
                    if state.next < state.delivered + window {
                        defer { state.next += 1 }
                        return .some(state.next)
                    }
                    state.waiters[id] = continuation
                    return .none
                }
                if let ready { continuation.resume(returning: ready) }
            }
        } onCancel: {
            let waiter = state.withLock { state in
                state.cancelled.insert(id)
                return state.waiters.removeValue(forKey: id)
            }
            waiter?.resume(returning: nil)
        }
    }

    /// The decoder finished segment `index`: its memory is free and workers may run on.
    func delivered(_ index: Int) {
        let resumed = state.withLock { state -> [(CheckedContinuation<Int?, Never>, Int?)] in
            state.pipes[index] = nil
            state.delivered = index + 1
            var resumed: [(CheckedContinuation<Int?, Never>, Int?)] = []
            for id in state.waiters.keys.sorted() {
                if state.next >= count {
                    resumed.append((state.waiters.removeValue(forKey: id)!, nil))
                } else if state.next < state.delivered + window {
                    resumed.append((state.waiters.removeValue(forKey: id)!, state.next))
                    state.next += 1
                }
            }
            return resumed
        }
        for (continuation, index) in resumed { continuation.resume(returning: index) }
    }
}

/// The bytes of one download segment, from the task fetching it to the decoder: the
/// head segment is read while it arrives, later ones queue up (at most a segment each).
final class SegmentPipe: Sendable {
    private struct State {
        var chunks = CircularBuffer<ByteBuffer>()
        var finished = false
        var error: (any Error)?
        var waiter: CheckedContinuation<Void, Never>?
    }

    private let state = Mutex(State())

    func push(_ buffer: ByteBuffer) {
        let waiter = state.withLock { state in
            state.chunks.append(buffer)
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume()
    }

    /// Ends the segment; `error` is what `next()` throws once the chunks before it are read.
    func finish(throwing error: (any Error)?) {
        let waiter = state.withLock { state in
            state.finished = true
            state.error = error
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume()
    }

    /// The next chunk, or nil at the end of the segment. One reader only.
    func next() async throws -> ByteBuffer? {
        while true {
            let ready: Result<ByteBuffer?, any Error>? = state.withLock { state in
                if !state.chunks.isEmpty { return .success(state.chunks.removeFirst()) }
                if state.finished { return state.error.map { .failure($0) } ?? .success(nil) }
                return nil
            }
            if let ready { return try ready.get() }
            await withCheckedContinuation { continuation in
                let resumeNow = state.withLock { state in
                    if !state.chunks.isEmpty || state.finished { return true }
                    state.waiter = continuation
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        }
    }
}
