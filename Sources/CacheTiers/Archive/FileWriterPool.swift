import Foundation

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
final class FileWriterPool: @unchecked Sendable {
    struct Job {
        var relative: String
        var contents: [UInt8]
        var mode: UInt32
        var modificationTime: Int64
        var sequence: Int
    }

    // All guarded by `condition`.
    private let condition = NSCondition()
    private var queue: [Job] = []
    private var head = 0
    private var queuedBytes = 0
    private var working: [Int: Int] = [:]  // worker index -> sequence
    private var inFlight: [String: Int] = [:]  // path -> jobs
    private var lastSubmitted = 0
    private var failure: ExtractionError?
    private var stopping = false
    private var running = 0

    private let root: String
    private let umaskBits: UInt32
    private let maxQueuedJobs = 256
    private let maxQueuedBytes = 8 << 20

    init(root: String, umaskBits: UInt32, threads: Int) {
        self.root = root
        self.umaskBits = umaskBits
        running = threads
        for index in 0..<threads {
            let thread = Thread { [self] in work(index) }
            thread.name = "cachetiers-write-\(index)"
            thread.start()
        }
    }

    /// Files up to this size are handed to the pool; larger ones stream to disk inline.
    static let maximumFileSize = 1 << 20

    /// Queues a file, waiting while the queue is full.
    /// - Throws: the first failure of any worker.
    func submit(relative: String, contents: [UInt8], mode: UInt32, modificationTime: Int64) throws(ExtractionError) {
        condition.lock()
        defer { condition.unlock() }
        while failure == nil && (queue.count - head >= maxQueuedJobs || queuedBytes >= maxQueuedBytes) {
            condition.wait()
        }
        if let failure { throw failure }
        lastSubmitted += 1
        queue.append(Job(relative: relative, contents: contents, mode: mode, modificationTime: modificationTime, sequence: lastSubmitted))
        queuedBytes += contents.count
        inFlight[relative, default: 0] += 1
        condition.broadcast()
    }

    /// Whether a job for `relative` is queued or being written.
    func isInFlight(_ relative: String) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        return inFlight[relative] != nil
    }

    /// The sequence number of the last job submitted.
    var lastSubmittedSequence: Int {
        condition.lock()
        defer { condition.unlock() }
        return lastSubmitted
    }

    /// Every job up to this sequence number is written.
    var completedThrough: Int {
        condition.lock()
        defer { condition.unlock() }
        let pending = (head < queue.count ? [queue[head].sequence] : []) + Array(working.values)
        return (pending.min() ?? (lastSubmitted + 1)) - 1
    }

    /// Waits until every submitted job is written.
    /// - Throws: the first failure of any worker.
    func barrier() throws(ExtractionError) {
        condition.lock()
        defer { condition.unlock() }
        while failure == nil && (head < queue.count || !working.isEmpty) {
            condition.wait()
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

    private func work(_ index: Int) {
        condition.lock()
        while true {
            while !stopping && failure == nil && head >= queue.count { condition.wait() }
            if stopping || failure != nil { break }
            let job = queue[head]
            queue[head].contents = []
            head += 1
            if head > 1024 {
                queue.removeFirst(head)
                head = 0
            }
            queuedBytes -= job.contents.count
            working[index] = job.sequence
            condition.broadcast()
            condition.unlock()

            var outcome: ExtractionError?
            do { try write(job) } catch { outcome = error }

            condition.lock()
            working[index] = nil
            if let count = inFlight[job.relative] {
                inFlight[job.relative] = count > 1 ? count - 1 : nil
            }
            if let outcome, failure == nil { failure = outcome }
            condition.broadcast()
        }
        running -= 1
        condition.broadcast()
        condition.unlock()
    }

    private func write(_ job: Job) throws(ExtractionError) {
        let full = root + "/" + job.relative
        let permissions = mode_t(job.mode & 0o777)
        let flags = O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC
        var descriptor = open(full, flags, permissions)
        if descriptor < 0 && errno == EEXIST {
            var info = stat()
            if lstat(full, &info) == 0 && info.st_mode & S_IFMT == S_IFDIR {
                throw .unsafe("the entry '\(job.relative)' would replace a directory of the same name", offset: 0)
            }
            unlink(full)
            descriptor = open(full, flags, permissions)
        }
        guard descriptor >= 0 else { throw .io("cannot create \(job.relative)", errno: errno) }
        defer { close(descriptor) }
        let code: Int32 = job.contents.withUnsafeBytes { bytes in
            var done = 0
            while done < bytes.count {
                let result = Glibc.write(descriptor, bytes.baseAddress! + done, bytes.count - done)
                if result < 0 {
                    if errno == EINTR { continue }
                    return errno
                }
                done += result
            }
            return 0
        }
        if code != 0 { throw .io("cannot write \(job.relative)", errno: code) }
        let mode = job.mode & 0o777
        if mode & umaskBits != 0 || mode & 0o200 == 0 {
            guard fchmod(descriptor, mode_t(mode)) == 0 else { throw .io("cannot set the mode of \(job.relative)", errno: errno) }
        }
        var times = [
            timespec(tv_sec: Int(job.modificationTime), tv_nsec: 0), timespec(tv_sec: Int(job.modificationTime), tv_nsec: 0),
        ]
        guard futimens(descriptor, &times) == 0 else {
            throw .io("cannot set the modification time of \(job.relative)", errno: errno)
        }
    }
}
