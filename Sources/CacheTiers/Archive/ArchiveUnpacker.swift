import Foundation
import Logging
import NIOCore
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Unpacks archives safely: from a file, or from any async sequence of byte chunks,
/// into a staging directory, or atomically replacing a destination. Failures are
/// ``UnpackError``s, the engine's own; a ``TierChain`` decides what they mean for a restore.
///
/// Accepts zstd (any level, single or multi-frame, as `zstd -T0` writes) and plain
/// tar, whatever tool wrote them: POSIX/pax and GNU tar formats.
public struct ArchiveUnpacker: Sendable {
    public var options: UnpackSession.Options

    public init(options: UnpackSession.Options = .init()) {
        self.options = options
    }

    /// Unpacks a stream of chunks into `staging`, an existing empty directory.
    ///
    /// On failure `staging` holds a partial tree; remove it (a ``TierChain`` does).
    public func unpack<Chunks: AsyncSequence>(
        _ chunks: Chunks,
        into staging: FilePath,
        progress: TransferProgress? = nil
    ) async throws -> UnpackSummary where Chunks.Element: ContiguousBytes {
        let session = UnpackSession(into: staging, options: options, progress: progress)
        do {
            for try await chunk in chunks {
                try await session.write(chunk)
            }
            return try await session.finish()
        } catch {
            await session.cancel()
            throw error
        }
    }

    /// Unpacks the archive file at `archive` into `staging`, an existing empty directory.
    /// - Throws: ``UnpackError`` (a filesystem one when the file cannot be read).
    public func unpack(file archive: FilePath, into staging: FilePath, progress: TransferProgress? = nil)
        async throws -> UnpackSummary
    {
        let session = UnpackSession(into: staging, options: options, progress: progress)
        do {
            // The session is done with each buffer when write returns, so one buffer serves every read.
            try await ArchiveFile(archive).stream(from: 0) { buffer in try await session.write(buffer) }
            return try await session.finish()
        } catch {
            await session.cancel()
            throw error
        }
    }

    /// What unpacking `archive` must not replace: the archive and the manifest beside it.
    public static func protectedPaths(for archive: FilePath) -> [ProtectedPath] {
        [
            ProtectedPath(archive, role: "the archive being unpacked"),
            ProtectedPath(FilePath(archive.string + ".manifest.json"), role: "the archive's manifest"),
        ]
    }

    /// Unpacks `archive` into a staging directory beside `destination`, then swaps it
    /// in atomically. On any failure the destination is exactly as it was.
    /// - Throws: ``UnpackError`` for the archive; a fatal ``CacheTierError`` when the
    ///   destination cannot be staged or replaced.
    public func unpack(file archive: FilePath, replacing destination: FilePath, logger: Logger) async throws
        -> UnpackSummary
    {
        let staging = try DestinationStaging(destination: destination, protecting: Self.protectedPaths(for: archive))
        // Before anything is written: an unpack or restore killed earlier may have left whole trees.
        await staging.sweepLeftovers(logger: logger)
        let tree = try StagingDirectory(beside: staging, logger: logger)
        do {
            let summary = try await unpack(file: archive, into: tree.path)
            try await tree.promote(logger: logger)
            return summary
        } catch {
            await tree.discard(logger: logger)
            throw error
        }
    }
}

/// An archive file read from an offset to its end, one buffer at a time.
struct ArchiveFile: Sendable {
    static let bufferSize = 1 << 20

    let path: FilePath

    init(_ path: FilePath) {
        self.path = path
    }

    /// Hands the bytes from `offset` on to `deliver`, in order, in one reused buffer of
    /// 1 MiB: `deliver` must be done with it when it returns.
    /// - Throws: a filesystem ``UnpackError`` when the file cannot be opened or read
    ///   (`errno` ENOENT: it is gone), or what `deliver` throws.
    func stream(from offset: Int64, deliver: (ByteBuffer) async throws -> Void) async throws {
        let descriptor: Int32
        do {
            descriptor = try syscall("open") { open(path.string, O_RDONLY | O_CLOEXEC) }
        } catch {
            throw UnpackError(.filesystem, "cannot open the archive \(path): \(error.reason)", errno: error.errnoCode)
        }
        defer { close(descriptor) }
        var buffer = ByteBufferAllocator().buffer(capacity: Self.bufferSize)
        do {
            // Sequential reads from there: the archive may be a pipe (`cachetiers unpack` of a FIFO).
            if offset > 0 { try syscall("lseek") { lseek(descriptor, off_t(offset), SEEK_SET) } }
            while true {
                try Task.checkCancellation()
                buffer.clear()
                let count = try buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: Self.bufferSize) { space throws(SystemCallError) in
                    try syscall("read") { read(descriptor, space.baseAddress, Self.bufferSize) }
                }
                if count == 0 { return }
                try await deliver(buffer)
            }
        } catch let error as SystemCallError {
            throw UnpackError(.filesystem, "cannot read the archive \(path): \(error.reason)", errno: error.errnoCode)
        }
    }
}
