import Foundation
import Logging
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Unpacks archives safely: from a file, or from any async sequence of byte chunks,
/// into a staging directory, or atomically replacing a destination.
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
    public func unpack(file archive: FilePath, into staging: FilePath, progress: TransferProgress? = nil)
        async throws -> UnpackSummary
    {
        let descriptor = open(archive.string, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else {
            let code = errno
            throw CacheTierError(
                code == ENOENT ? .miss : .fatal, "cannot open the archive \(archive): \(String(cString: strerror(code)))"
            )
        }
        defer { close(descriptor) }
        let session = UnpackSession(into: staging, options: options, progress: progress)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
        defer { buffer.deallocate() }
        do {
            while true {
                try Task.checkCancellation()
                let count: Int
                do {
                    count = try syscall("read") { read(descriptor, buffer.baseAddress, buffer.count) }
                } catch {
                    throw CacheTierError(.transient, "cannot read the archive \(archive): \(error.reason)")
                }
                if count == 0 { break }
                // The session is done with the bytes when write returns, so one buffer serves every read.
                try await session.write(UnsafeRawBufferPointer(rebasing: buffer[..<count]))
            }
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
    public func unpack(file archive: FilePath, replacing destination: FilePath, logger: Logger) async throws
        -> UnpackSummary
    {
        let staging = try DestinationStaging(destination: destination, protecting: Self.protectedPaths(for: archive))
        // Before anything is written: an unpack or restore killed earlier may have left whole trees.
        await staging.sweepLeftovers(logger: logger)
        let directory = try staging.makeStagingDirectory()
        do {
            let summary = try await unpack(file: archive, into: directory)
            try await staging.promote(directory, logger: logger)
            return summary
        } catch {
            await staging.discard(directory, logger: logger)
            throw error
        }
    }
}
