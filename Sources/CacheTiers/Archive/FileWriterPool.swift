import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Threads that write small files for a ``TarExtractor``, so file creation (the cost of
/// a dependency tree: tens of thousands of open/write/close) runs beside parsing and
/// decoding.
///
/// The extractor stays in charge of everything that has an order: directories, links,
/// replacing an earlier entry. It hands over only regular files whose contents are
/// complete in memory, and waits (``barrier()``) before touching a path still in
/// flight. Jobs carry increasing sequence numbers; ``completedThrough`` says up to which
/// one every job is done, so a directory's time is applied only after its files exist.
///
/// Files are small and many, so the two sides meet rarely: jobs are handed over in
/// batches, a worker takes a batch at a time, and the submitting thread reads progress
/// from an atomic. ``submit(relative:contents:mode:modificationTime:)``,
/// ``isInFlight(_:)``, ``lastSubmittedSequence``, ``flush()`` and ``barrier()`` are
/// called from one thread.
final class FileWriterPool: @unchecked Sendable {
    struct Job {
        var relative: PathBytes
        var contents: [UInt8]
        var mode: UInt32
        var modificationTime: Int64
        var sequence: Int
    }

    // Owned by the submitting thread.
    private var outbox: [Job] = []
    private var outboxBytes = 0
    private var lastSubmitted = 0
    /// Paths submitted and maybe not yet written, with their last job's sequence, and the
    /// same in submission order for pruning: as long as the queue, not the archive.
    private var submittedPaths: [PathBytes: Int] = [:]
    private var submissionOrder: [(sequence: Int, relative: PathBytes)] = []
    private var submissionOrderHead = 0

    // Guarded by `condition`.
    private let condition = NSCondition()
    private var queue: [Job] = []
    private var head = 0
    private var queuedBytes = 0
    private var working: [Int: Int] = [:]  // worker index -> oldest sequence of its batch
    private var lastHandedOver = 0
    private var failure: ExtractionError?
    private var stopping = false
    private var running = 0
    /// Workers waiting for jobs, and threads waiting for a worker to finish a batch: a
    /// wake-up is a system call, so nobody is woken who is not waiting.
    private var idleWorkers = 0
    private var waitingForWorkers = 0

    /// Every job up to this sequence number is written.
    private let completed = Atomic<Int>(0)

    private let tree: ExtractionTree
    private let maxQueuedJobs = 256
    private let maxQueuedBytes = 2 << 20
    /// Jobs gathered before they are handed over (and an idle worker woken): meeting
    /// once per small file costs more than writing it.
    private let batchSize = 32

    init(tree: ExtractionTree, threads: Int) {
        self.tree = tree
        running = threads
        for index in 0..<threads {
            let thread = Thread { [self] in work(index) }
            thread.name = "cachetiers-write-\(index)"
            thread.start()
        }
    }

    /// Files up to this size are handed to the pool; larger ones stream to disk inline.
    static let maximumFileSize = 1 << 20

    /// Queues a file. Jobs go to the workers in batches; call ``flush()`` before waiting
    /// on anything else.
    /// - Throws: the first failure of any worker.
    func submit(relative: PathBytes, contents: [UInt8], mode: UInt32, modificationTime: Int64) throws(ExtractionError) {
        lastSubmitted += 1
        outbox.append(Job(relative: relative, contents: contents, mode: mode, modificationTime: modificationTime, sequence: lastSubmitted))
        outboxBytes += contents.count
        submittedPaths[relative] = lastSubmitted
        submissionOrder.append((lastSubmitted, relative))
        if outbox.count >= batchSize || outboxBytes >= Self.maximumFileSize {
            try flush()
        }
    }

    /// The sequence number of the last job submitted.
    var lastSubmittedSequence: Int { lastSubmitted }

    /// Whether a job for `relative` is queued or being written.
    func isInFlight(_ relative: PathBytes) -> Bool {
        guard let sequence = submittedPaths[relative] else { return false }
        return sequence > completedThrough
    }

    /// Every job up to this sequence number is written.
    var completedThrough: Int {
        completed.load(ordering: .acquiring)
    }

    /// Hands the gathered jobs to the workers, waiting while their queue is full.
    /// - Throws: the first failure of any worker.
    func flush() throws(ExtractionError) {
        pruneSubmittedPaths()
        guard !outbox.isEmpty else { return }
        condition.lock()
        defer { condition.unlock() }
        while failure == nil && (queue.count - head >= maxQueuedJobs || queuedBytes >= maxQueuedBytes) {
            wakeWorkers()
            waitForWorkers()
        }
        if let failure { throw failure }
        queue.append(contentsOf: outbox)
        queuedBytes += outboxBytes
        lastHandedOver = lastSubmitted
        outbox.removeAll(keepingCapacity: true)
        outboxBytes = 0
        wakeWorkers()
    }

    /// Waits until every submitted job is written.
    /// - Throws: the first failure of any worker.
    func barrier() throws(ExtractionError) {
        try flush()
        condition.lock()
        defer { condition.unlock() }
        while failure == nil && (head < queue.count || !working.isEmpty) {
            wakeWorkers()
            waitForWorkers()
        }
        if let failure { throw failure }
    }

    /// Stops the workers and waits for them; queued jobs are dropped.
    func stop() {
        condition.lock()
        stopping = true
        condition.broadcast()
        while running > 0 { condition.wait() }
        condition.unlock()
    }

    /// Forgets submitted paths whose jobs are written.
    private func pruneSubmittedPaths() {
        let done = completedThrough
        while submissionOrderHead < submissionOrder.count, submissionOrder[submissionOrderHead].sequence <= done {
            let (sequence, relative) = submissionOrder[submissionOrderHead]
            if submittedPaths[relative] == sequence { submittedPaths[relative] = nil }
            submissionOrderHead += 1
        }
        if submissionOrderHead > 1024 {
            submissionOrder.removeFirst(submissionOrderHead)
            submissionOrderHead = 0
        }
    }

    /// Called with the lock held.
    private func wakeWorkers() {
        if idleWorkers > 0 && head < queue.count { condition.broadcast() }
    }

    /// Called with the lock held.
    private func waitForWorkers() {
        waitingForWorkers += 1
        condition.wait()
        waitingForWorkers -= 1
    }

    /// Called with the lock held: publishes how far every job is written.
    private func publishProgress() {
        var oldestPending = head < queue.count ? queue[head].sequence : lastHandedOver + 1
        for sequence in working.values { oldestPending = min(oldestPending, sequence) }
        completed.store(oldestPending - 1, ordering: .releasing)
    }

    private func work(_ index: Int) {
        var batch: [Job] = []
        condition.lock()
        while true {
            while !stopping && failure == nil && head >= queue.count {
                idleWorkers += 1
                condition.wait()
                idleWorkers -= 1
            }
            if stopping || failure != nil { break }
            // Take a share of the queue, so other workers get some too.
            let available = queue.count - head
            var take = min(available, max(1, min(batchSize, available / max(1, running))))
            // And at most about 1 MiB of contents: a batch is memory held outside the
            // queue's bound, and files just under `maximumFileSize` would make a batch of
            // 32 weigh 32 MiB.
            var batchBytes = 0
            for (offset, job) in queue[head..<head + take].enumerated() {
                batchBytes += job.contents.count
                if batchBytes >= Self.maximumFileSize {
                    take = offset + 1
                    break
                }
            }
            batch.append(contentsOf: queue[head..<head + take])
            for position in head..<head + take { queue[position].contents = [] }
            head += take
            if head > 1024 {
                queue.removeFirst(head)
                head = 0
            }
            for job in batch { queuedBytes -= job.contents.count }
            working[index] = batch[0].sequence
            if waitingForWorkers > 0 { condition.broadcast() }  // room in the queue
            condition.unlock()

            var outcome: ExtractionError?
            for job in batch where outcome == nil {
                do { try write(job) } catch { outcome = error }
            }
            batch.removeAll(keepingCapacity: true)

            condition.lock()
            working[index] = nil
            if let outcome, failure == nil { failure = outcome }
            publishProgress()
            if waitingForWorkers > 0 || outcome != nil { condition.broadcast() }
        }
        running -= 1
        condition.broadcast()
        condition.unlock()
    }

    private func write(_ job: Job) throws(ExtractionError) {
        let descriptor = try tree.createFile(job.relative, mode: job.mode, offset: 0)
        var failure: ExtractionError?
        job.contents.withUnsafeBytes { bytes in
            do throws(ExtractionError) { try tree.write(descriptor, bytes, to: job.relative) } catch { failure = error }
        }
        if let failure {
            close(descriptor)
            throw failure
        }
        try tree.closeFile(descriptor, job.relative, mode: job.mode, modificationTime: job.modificationTime)
    }
}
