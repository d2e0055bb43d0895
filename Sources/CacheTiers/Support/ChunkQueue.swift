import Foundation

/// A bounded hand-off from async code to one consumer thread.
///
/// The async producer suspends (never blocks) while the queue is full; the consumer
/// thread blocks while it is empty. Either side can fail the queue, which wakes the
/// other: the producer then throws, the consumer sees the end.
final class ChunkQueue: @unchecked Sendable {
    // Guarded by `condition`.
    private let condition = NSCondition()
    private var items: [[UInt8]] = []
    private var head = 0
    private var finished = false
    private var failure: (any Error)?
    private var waitingProducer: CheckedContinuation<Void, any Error>?
    private var spares: [[UInt8]] = []
    private let capacity: Int

    init(capacity: Int) {
        self.capacity = capacity
    }

    private var count: Int { items.count - head }

    /// Enqueues `chunk`, waiting for room.
    /// - Throws: the error the queue was failed with.
    func send(_ chunk: [UInt8]) async throws {
        while try !enqueue(chunk) {
            try await withTaskCancellationHandler {
                try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                    park(continuation)
                }
            } onCancel: {
                fail(CancellationError())
            }
        }
    }

    /// Appends `chunk` if there is room.
    private func enqueue(_ chunk: [UInt8]) throws -> Bool {
        condition.lock()
        defer { condition.unlock() }
        if let failure { throw failure }
        guard count < capacity else { return false }
        items.append(chunk)
        condition.signal()
        return true
    }

    /// Parks the producer until there is room or a failure.
    private func park(_ continuation: CheckedContinuation<Void, any Error>) {
        condition.lock()
        if let failure {
            condition.unlock()
            continuation.resume(throwing: failure)
        } else if count < capacity {
            condition.unlock()
            continuation.resume()
        } else {
            waitingProducer = continuation
            condition.unlock()
        }
    }

    /// Hands back a consumed chunk's storage so the producer can reuse it instead of
    /// allocating: memory stays flat however long the stream.
    func recycle(_ chunk: inout [UInt8]) {
        chunk.removeAll(keepingCapacity: true)
        condition.lock()
        if spares.count < capacity { spares.append(chunk) }
        condition.unlock()
        chunk = []
    }

    /// Empty storage from a recycled chunk, if any.
    func takeSpare() -> [UInt8]? {
        condition.lock()
        defer { condition.unlock() }
        return spares.popLast()
    }

    /// Says no more chunks will come.
    func finish() {
        condition.lock()
        finished = true
        condition.broadcast()
        condition.unlock()
    }

    /// Stops both sides with `error`; the first failure wins.
    func fail(_ error: any Error) {
        condition.lock()
        if failure == nil { failure = error }
        let producer = waitingProducer
        waitingProducer = nil
        condition.broadcast()
        condition.unlock()
        producer?.resume(throwing: error)
    }

    /// The next chunk, blocking while none is ready; nil at the end.
    /// - Throws: the error the queue was failed with.
    func next() throws -> [UInt8]? {
        condition.lock()
        while count == 0 && !finished && failure == nil {
            condition.wait()
        }
        if let failure {
            condition.unlock()
            throw failure
        }
        if count == 0 {
            condition.unlock()
            return nil
        }
        let chunk = items[head]
        items[head] = []
        head += 1
        if head > 64 {
            items.removeFirst(head)
            head = 0
        }
        let producer = waitingProducer
        waitingProducer = nil
        condition.unlock()
        producer?.resume()
        return chunk
    }
}
