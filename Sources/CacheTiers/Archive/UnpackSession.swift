import Crypto
import Foundation
import Logging
import NIOCore
import Synchronization
import SystemPackage

/// Unpacks one archive arriving in pieces: hash and decompress as bytes come in, write
/// files on a thread of its own.
///
/// Feed it with ``write(_:)`` in order (the bytes of one archive, possibly across
/// several HTTP responses when a download resumes), then call ``finish()``, which
/// verifies everything and returns the summary. On any error, or if the task is
/// cancelled, call ``cancel()``; the staging directory then holds a partial tree that
/// the caller removes (a ``TierChain`` does this itself). Failures are ``UnpackError``s
/// (or `CancellationError`): what they mean for a restore is the caller's decision.
///
/// Memory stays bounded whatever the archive's size or compression ratio: bytes are
/// decoded one 1 MiB chunk at a time, each handed to the writer thread before the next
/// is decoded, and at most 8 chunks wait for it (see the memory bound in
/// Documentation/Archives.md). The bytes passed to ``write(_:)`` are read before it
/// returns and not kept.
public final class UnpackSession {
    public struct Options: Sendable {
        public var limits: ExtractionLimits
        /// The archive's SHA-256 as published; a mismatch fails ``finish()`` as corrupt.
        public var expectedSHA256: String?
        /// The archive's size as published; a mismatch fails ``finish()`` as corrupt.
        public var expectedSize: Int64?
        /// Threads that write small files beside the one that parses the archive; 0
        /// writes every file on that one.
        public var writerThreads: Int

        /// One extra writer thread: decoding, parsing and two writers keep two cores busy.
        public static var defaultWriterThreads: Int { 1 }

        public init(
            limits: ExtractionLimits = .init(),
            expectedSHA256: String? = nil,
            expectedSize: Int64? = nil,
            writerThreads: Int = Options.defaultWriterThreads
        ) {
            self.limits = limits
            self.expectedSHA256 = expectedSHA256?.lowercased()
            self.expectedSize = expectedSize
            self.writerThreads = max(0, writerThreads)
        }
    }

    static let chunkSize = 1 << 20
    /// Decompressed chunks that may wait for the writer thread.
    static let queueCapacity = 8

    private let options: Options
    private let progress: TransferProgress?
    private let queue = ChunkQueue(capacity: UnpackSession.queueCapacity)
    private let busy = BusyTime()
    private let writer: Task<UnpackSummary, any Error>
    private var hasher = SHA256()
    private var decoder: (any StreamDecoder)?
    private var format: CompressionFormat?
    private var detection: [UInt8] = []
    private var pending: [UInt8] = []
    /// Full chunks decoded and not yet handed to the writer: at most two, since a step
    /// stops once the current chunk is full.
    private var ready: [[UInt8]] = []
    private var received: Int64 = 0
    private var done = false

    /// Starts the writer thread for `staging`, an existing empty directory.
    public init(into staging: FilePath, options: Options = .init(), progress: TransferProgress? = nil) {
        self.options = options
        self.progress = progress
        let queue = self.queue
        let root = staging.string
        let limits = options.limits
        let writerThreads = options.writerThreads
        let busy = self.busy
        self.writer = Task {
            try await DedicatedThread.run(name: "cachetiers-unpack") { _ in
                let extractor = TarExtractor(root: root, limits: limits, writerThreads: writerThreads)
                do {
                    while var chunk = try queue.next() {
                        do {
                            // Not in a closure: one capturing `chunk` could keep its buffer
                            // from coming back to the queue unshared, to be reused.
                            busy.enter()
                            defer { busy.leave() }
                            try chunk.withUnsafeBytes { bytes in try extractor.consume(bytes) }
                        }
                        queue.recycle(&chunk)
                    }
                    return try busy.measure { try extractor.finish() }
                } catch {
                    extractor.abort()
                    queue.fail(error)
                    throw error
                }
            }
        }
        pending.reserveCapacity(Self.chunkSize)
    }

    /// Bytes received so far.
    public var bytesReceived: Int64 { received }

    /// How long hashing, decoding or extracting kept at least one of the session's
    /// threads at work so far (they overlap each other and the transfer; waiting for
    /// bytes is not counted). Complete once ``finish()`` has returned.
    public var busyDuration: Duration { busy.total }

    /// Hashes, decompresses and hands on the next bytes of the archive.
    /// - Throws: an ``UnpackError`` as soon as the problem is found.
    public func write(_ bytes: some ContiguousBytes) async throws {
        try await ingest { body in try bytes.withUnsafeBytes(body) }
    }

    /// Hashes, decompresses and hands on the next bytes of the archive, as they come
    /// from a network client.
    public func write(_ buffer: ByteBuffer) async throws {
        try await ingest { body in try buffer.withUnsafeReadableBytes(body) }
    }

    /// Hashes the input that `withInput` lends, then decodes it one chunk of output at a
    /// time, handing each full chunk to the writer (waiting while its queue is full)
    /// before decoding more: a small archive that decompresses to gigabytes holds no
    /// more memory than any other.
    private func ingest(_ withInput: (_ body: (UnsafeRawBufferPointer) throws -> Int) throws -> Int) async throws {
        precondition(!done, "write(_:) after finish() or cancel()")
        busy.enter()
        defer { busy.leave() }
        let count = try withInput { buffer in
            guard !buffer.isEmpty else { return 0 }
            hasher.update(bufferPointer: buffer)
            received += Int64(buffer.count)
            progress?.advance(by: buffer.count)
            if decoder == nil { detection.append(contentsOf: buffer) }
            return buffer.count
        }
        guard count > 0 else { return }
        if decoder == nil {
            guard detection.count >= CompressionFormat.detectionLength else { return }
            do {
                let format = try detection.withUnsafeBytes { try CompressionFormat.detect($0) }
                self.format = format
                decoder = try format.makeDecoder()
            } catch let error as CompressionError {
                // Not a format this reads (gzip, say): the message says what it is instead.
                throw UnpackError(.corrupt, error.message, offset: 0, underlying: error)
            }
            // Everything so far, this input included, is in `detection`.
            let first = detection
            detection = []
            try await decode(count: first.count) { body in try first.withUnsafeBytes(body) }
        } else {
            try await decode(count: count, withInput)
        }
    }

    /// Decodes the `count` bytes `withInput` lends in bounded steps.
    private func decode(count: Int, _ withInput: (_ body: (UnsafeRawBufferPointer) throws -> Int) throws -> Int) async throws {
        var used = 0
        var hasMoreOutput = false
        while used < count || hasMoreOutput {
            var step = DecodeStep(consumed: 0, hasMoreOutput: false)
            _ = try withInput { buffer in
                step = try decodeStep(UnsafeRawBufferPointer(rebasing: buffer[used...]))
                return 0
            }
            used += step.consumed
            hasMoreOutput = step.hasMoreOutput
            while !ready.isEmpty {
                try await send(ready.removeFirst())
            }
        }
    }

    /// Decodes until the current chunk is full (or the input is used up), and moves full
    /// chunks to `ready`.
    private func decodeStep(_ input: UnsafeRawBufferPointer) throws -> DecodeStep {
        do {
            return try decoder!.decode(input, budget: Self.chunkSize - pending.count) { output in
                var rest = output[...]
                while !rest.isEmpty {
                    let take = min(Self.chunkSize - pending.count, rest.count)
                    pending.append(contentsOf: rest.prefix(take))
                    rest = rest.dropFirst(take)
                    if pending.count == Self.chunkSize {
                        ready.append(pending)
                        pending = queue.takeSpare() ?? []
                        pending.reserveCapacity(Self.chunkSize)
                    }
                }
            }
        } catch let error as CompressionError {
            throw UnpackError(error)
        }
    }

    private func send(_ chunk: [UInt8]) async throws {
        do {
            try await queue.send(chunk)
        } catch is CancellationError {
            throw CancellationError()
        } catch {
            // The writer failed: its error, described, is the one to report.
            throw await writerFailure(fallback: error)
        }
    }

    /// Ends the archive: checks the compressed stream ended cleanly, waits for the
    /// writer, and verifies size and SHA-256.
    public func finish() async throws -> UnpackSummary {
        precondition(!done, "finish() called twice")
        busy.enter()
        defer { busy.leave() }
        if decoder == nil {
            done = true
            queue.fail(CancellationError())
            _ = try? await writer.value
            let message = received == 0 ? "the archive is empty" : "the archive is only \(received) bytes long"
            throw UnpackError(.corrupt, message, offset: received)
        }
        do {
            try decoder!.finish()
        } catch let error as CompressionError {
            done = true
            queue.fail(error)
            _ = try? await writer.value
            throw UnpackError(error)
        }
        if !pending.isEmpty {
            try await send(pending)
            pending = []
        }
        done = true
        queue.finish()
        var summary: UnpackSummary
        do {
            summary = try await writer.value
        } catch {
            throw UnpackError.describing(error)
        }
        let digest = hasher.finalize().hexString
        summary.archiveBytes = received
        summary.archiveSHA256 = digest
        summary.format = format?.rawValue ?? ""
        if let expected = options.expectedSize, expected != received {
            throw UnpackError(.corrupt, "the archive is \(received) bytes but its manifest says \(expected)", offset: received)
        }
        if let expected = options.expectedSHA256, expected != digest {
            throw UnpackError(
                .corrupt, "the archive's SHA-256 is \(digest) but \(expected) was expected: the bytes were altered in transit or at rest"
            )
        }
        return summary
    }

    /// Stops the writer thread and waits for it; the staging directory keeps whatever
    /// was written so far.
    public func cancel() async {
        guard !done else { return }
        done = true
        queue.fail(CancellationError())
        _ = try? await writer.value
    }

    private func writerFailure(fallback: any Error) async -> any Error {
        do {
            _ = try await writer.value
            return UnpackError.describing(fallback)
        } catch {
            return UnpackError.describing(error)
        }
    }
}

/// The time during which at least one of several threads was at work: the union of
/// their busy intervals, measured on the continuous clock.
final class BusyTime: Sendable {
    private struct State {
        var active = 0
        var since = ContinuousClock.now
        var total = Duration.zero
    }

    private let state = Mutex(State())

    func enter() {
        let now = ContinuousClock.now
        state.withLock { state in
            if state.active == 0 { state.since = now }
            state.active += 1
        }
    }

    func leave() {
        let now = ContinuousClock.now
        state.withLock { state in
            state.active -= 1
            if state.active == 0 { state.total += now - state.since }
        }
    }

    func measure<T>(_ body: () throws -> T) rethrows -> T {
        enter()
        defer { leave() }
        return try body()
    }

    /// The busy time so far, the interval still open included.
    var total: Duration {
        let now = ContinuousClock.now
        return state.withLock { $0.active > 0 ? $0.total + (now - $0.since) : $0.total }
    }
}
