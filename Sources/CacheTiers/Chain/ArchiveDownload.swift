import Logging
import NIOCore
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Downloads one archive from an ``ArchiveSource`` into a staging directory: the one
/// download every archive tier goes through.
///
/// It finds the archive, refuses one whose manifest names another key, unpacks the
/// bytes as they stream in (hashing, decoding and extracting on the way, memory
/// bounded by ``UnpackSession``), and when a stream fails resumes from the last byte
/// received, after a backoff on the chain's clock, at most ``ArchiveSource/maxResumes``
/// times. Once every byte is in it checks the CRC32C, the size and the SHA-256. It is
/// the one place where the archive engine's errors and a stream's failures become
/// ``CacheTierError``s. The attempt's time limit and stall rules are the chain's, around it.
///
/// It marks the attempt's phases as it passes them (``AttemptPhases``): the tier's answer,
/// the first and the last archive byte, the tree verified.
struct ArchiveDownload<Source: ArchiveSource>: Sendable {
    let source: Source
    let clock: ChainClock
    /// The delays between resumes (Retry-After, when longer and no longer than its
    /// `maxDelay`, is honoured; a longer one ends the attempt, for the chain to honour).
    let backoff: RetryPolicy
    var random: @Sendable () -> Double = { Double.random(in: 0..<1) }
    /// The attempt's timeline; by default one nobody reads.
    var phases: AttemptPhases? = nil

    func run(_ request: RestoreRequest, into staging: FilePath, progress: TransferProgress, logger: Logger) async throws
        -> SourceRestoreOutcome
    {
        let found: FoundArchive<Source.Archive>
        let lookup = try await source.findArchive(request, logger: logger)
        phases?.markAnswered()
        switch lookup {
        case .miss(let reason):
            return .miss(reason)
        case .found(let archive):
            found = archive
        }
        // Whatever the tier, a tree comes only from the key's archive: a misrouted or
        // confused server must not give this VM another key's tree.
        if let manifest = found.manifest, manifest.key != request.key {
            throw CacheTierError(
                .corrupt, "\(found.origin) served the archive of \(manifest.key) when asked for \(request.key); nothing was unpacked"
            )
        }
        progress.setTotal(found.size)
        let session = UnpackSession(
            into: staging,
            options: .init(limits: source.limits, expectedSHA256: found.sha256, expectedSize: found.size),
            progress: progress
        )
        do {
            let streams = try await stream(found, into: session, progress: progress, logger: logger)
            let summary: UnpackSummary
            do {
                summary = try await session.finish()
            } catch {
                throw Self.failure(unpacking: error)
            }
            phases?.markComplete(busy: session.busyDuration)
            source.didRestore(found, logger: logger)
            var details = source.restoreDetails(for: found, bytesTransferred: summary.archiveBytes, streams: streams)
            details.archive = ArchiveSizes(compressedBytes: summary.archiveBytes, uncompressedBytes: summary.uncompressedBytes)
            return .restored(details)
        } catch let error as CacheTierError where error.kind == .miss {
            await session.cancel()
            return .miss(error.message)
        } catch {
            await session.cancel()
            throw error
        }
    }

    /// Feeds every byte of the archive to `session` (an unpack, or a file for a copy),
    /// resuming after failed streams, and checks the CRC32C. Returns the number of
    /// streams opened.
    func stream(
        _ found: FoundArchive<Source.Archive>,
        into session: some DownloadedBytes,
        progress: TransferProgress,
        logger: Logger
    ) async throws -> Int {
        var crc: CRC32C? = found.crc32c == nil ? nil : CRC32C()
        var streams = 0
        var resumes = 0
        var sawFirstByte = false
        while true {
            let offset = session.bytesReceived
            streams += 1
            do {
                try await source.streamArchive(found, from: offset, progress: progress, logger: logger) { buffer in
                    // However the tier streams, a cancelled download stops at the next buffer.
                    try Task.checkCancellation()
                    if !sawFirstByte, buffer.readableBytes > 0 {
                        sawFirstByte = true
                        phases?.markFirstByte()
                    }
                    crc?.update(buffer)
                    do {
                        try await session.write(buffer)
                    } catch {
                        // The archive's verdict, not the stream's: never resumed.
                        throw UnpackFailed(underlying: error)
                    }
                }
                if session.bytesReceived >= found.size {
                    phases?.markLastByte()
                    break
                }
                throw CacheTierError(.transient, "the stream ended at byte \(session.bytesReceived) of \(found.size)")
            } catch let failure as UnpackFailed {
                throw Self.failure(unpacking: failure.underlying)
            } catch {
                // Whatever the transport made of it (a cancelled request, a closed body).
                if Task.isCancelled { throw CancellationError() }
                guard isResumable(error) else { throw Self.failure(streaming: error) }
                guard resumes < source.maxResumes else {
                    if error is CacheTierError { throw error }
                    throw CacheTierError(
                        .transient, "the connection to \(found.origin) dropped \(streams) times; giving up on this attempt",
                        underlying: error
                    )
                }
                resumes += 1
                var delay = backoff.delay(afterAttempt: resumes, random: random())
                if let retryAfter = (error as? CacheTierError)?.retryAfter, retryAfter > delay { delay = retryAfter }
                logger.notice(
                    "the archive's stream failed; resuming from the last byte",
                    metadata: [
                        "origin": "\(found.origin)", "offset": "\(session.bytesReceived)", "of": "\(found.size)",
                        "resume": "\(resumes)", "wait": "\(delay.humanReadable)", "error": "\(error)",
                    ]
                )
                try await clock.sleep(clock.now() + delay)
            }
        }
        try Task.checkCancellation()
        if let crc, let expected = found.crc32c, crc.base64 != expected {
            throw CacheTierError(
                .corrupt, "\(found.origin) failed its CRC32C check (the tier says \(expected), received \(crc.base64))"
            )
        }
        return streams
    }

    /// Whether a failed stream is worth resuming from its last byte: a dropped
    /// connection or a passing refusal, not a cancellation, a replaced archive or an
    /// answer the tier has classified as final. A Retry-After longer than the longest
    /// backoff goes to the chain, which honours it within the restore's deadline or
    /// moves on to the next tier.
    private func isResumable(_ error: any Error) -> Bool {
        switch error {
        case is CancellationError, is ArchiveReplaced, is UnpackError:
            return false
        case let error as CacheTierError:
            guard error.kind == .transient || error.kind == .timeout else { return false }
            return (error.retryAfter ?? .zero) <= backoff.maxDelay
        default:
            // The transport's own error: the connection dropped while the body streamed.
            return true
        }
    }

    /// What a failure of the archive engine means for the restore.
    static func failure(unpacking error: any Error) -> any Error {
        guard let error = error as? UnpackError else { return error }
        switch error.kind {
        case .corrupt, .rejected:
            return CacheTierError(.corrupt, error.message, underlying: error.underlying, offset: error.offset)
        default:
            // No tier can write into a full, over-quota or read-only filesystem.
            let hopeless = error.errno.map { [ENOSPC, EDQUOT, EROFS].contains($0) } ?? false
            return CacheTierError(hopeless ? .fatal : .transient, error.message, underlying: error.underlying)
        }
    }

    /// What a stream's failure, not resumed, means for the restore.
    static func failure(streaming error: any Error) -> any Error {
        switch error {
        case let replaced as ArchiveReplaced:
            return CacheTierError(.transient, replaced.description)
        case let error as UnpackError where error.kind == .filesystem && error.errno == ENOENT:
            // The archive file went away between finding it and reading it.
            return CacheTierError(.miss, error.message)
        default:
            return failure(unpacking: error)
        }
    }
}

/// Where a download's bytes go: the unpack of a restore, or the scratch file of a copy
/// (``ArchiveInventory/fetchArchive(_:to:logger:)``). A resumed stream starts at
/// ``bytesReceived``.
protocol DownloadedBytes: AnyObject {
    /// Bytes taken so far.
    var bytesReceived: Int64 { get }
    /// Takes the next bytes; a throw is the archive's verdict, never resumed.
    func write(_ buffer: ByteBuffer) async throws
}

extension UnpackSession: DownloadedBytes {}

/// The session refused the bytes (the archive is corrupt, the disk full): the verdict
/// ends the download whatever the stream does next.
private struct UnpackFailed: Error {
    let underlying: any Error
}
