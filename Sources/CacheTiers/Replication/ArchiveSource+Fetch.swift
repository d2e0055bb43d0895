import Logging
import NIOCore
import SystemPackage

extension ArchiveSource {
    /// Copies the archive of `key` as the tier stores it into a new file at `file`,
    /// through the chain's own download (``ArchiveDownload``): the same lookup, key
    /// check, resume from the last byte after a dropped stream, and CRC32C check, into a
    /// scratch file beside `file` instead of an unpack; then its size and SHA-256 are
    /// checked against the manifest, it is flushed and renamed into place. On a throw or a
    /// cancellation the scratch file is gone and nothing is at `file`.
    ///
    /// Bytes received advance ``TransferProgress/upload`` when the caller set one, so a
    /// copy run under ``CachePublisher``'s bounds (``TierSync``, the cache master's
    /// replication) is cut when the tier stops sending.
    ///
    /// - Returns: the archive's manifest, or `nil` when the tier does not hold the key.
    /// - Throws: ``CacheTierError`` (`.corrupt` when the archive is not its manifest's,
    ///   or has no manifest to be published with).
    public func fetchArchive(_ key: CacheKey, to file: FilePath, logger: Logger) async throws -> CacheManifest? {
        try await ArchiveDownload(source: self, clock: ChainClock(ContinuousClock()), backoff: RetryPolicy())
            .fetch(RestoreRequest(key: key), to: file, progress: TransferProgress.upload ?? TransferProgress(), logger: logger)
    }
}

extension ArchiveDownload {
    /// The archive of `request.key`, byte for byte, at `file`; `nil` on a miss.
    func fetch(_ request: RestoreRequest, to file: FilePath, progress: TransferProgress, logger: Logger) async throws
        -> CacheManifest?
    {
        guard case .found(let found) = try await source.findArchive(request, logger: logger) else { return nil }
        // A copy is published under its manifest elsewhere: without one, or with another
        // key's or another archive's, there is nothing true to publish it with.
        guard let manifest = found.manifest else {
            throw CacheTierError(
                .corrupt, tier: source.name,
                "\(found.origin) has no CacheTiers manifest (uploaded by another tool?), so it cannot be copied; publish it with cachetiers publish"
            )
        }
        guard manifest.key == request.key else {
            throw CacheTierError(
                .corrupt, tier: source.name, "\(found.origin) holds the archive of \(manifest.key) under the name of \(request.key); not copied"
            )
        }
        guard manifest.archiveSize == found.size, found.sha256 == nil || found.sha256 == manifest.archiveSHA256 else {
            throw CacheTierError(
                .corrupt, tier: source.name,
                "\(found.origin) is \(found.size) bytes (SHA-256 \(found.sha256 ?? "unknown")) but its manifest says \(manifest.archiveSize) bytes (\(manifest.archiveSHA256)); not copied"
            )
        }
        progress.setTotal(found.size)
        let scratch = file.removingLastComponent().appending(
            ScratchName.make(base: file.lastComponent?.string ?? request.key.rawValue, purpose: "fetching")
        )
        let copy: CopiedBytes
        do {
            copy = CopiedBytes(try ArchiveFolder.Publication(key: request.key, path: scratch), progress: progress)
        } catch {
            throw CacheTierError(.fatal, tier: source.name, "cannot copy \(request.key): \(error)", underlying: error)
        }
        _ = try await stream(found, into: copy, progress: progress, logger: logger)
        if let mismatch = copy.file.mismatch(with: manifest) {
            throw CacheTierError(.corrupt, tier: source.name, "the copy of \(request.key) from \(found.origin) \(mismatch); not kept")
        }
        do {
            try copy.file.move(to: file)
        } catch {
            throw CacheTierError(.transient, tier: source.name, error.description, underlying: error)
        }
        return manifest
    }
}

/// A download into a file: the folder's scratch file with its running SHA-256, removed
/// unless moved into place.
private final class CopiedBytes: DownloadedBytes {
    let file: ArchiveFolder.Publication
    let progress: TransferProgress

    init(_ file: ArchiveFolder.Publication, progress: TransferProgress) {
        self.file = file
        self.progress = progress
    }

    var bytesReceived: Int64 { file.size }

    func write(_ buffer: ByteBuffer) async throws {
        do {
            try await file.append(buffer)
        } catch let error as ArchiveFolderError {
            throw CacheTierError(.transient, error.description, underlying: error)
        }
        progress.advance(by: buffer.readableBytes)
    }
}

extension CacheKey {
    /// Whether this key comes before `other` in the order every listing uses: bytewise,
    /// which for the key alphabet is ASCII order.
    package func precedes(_ other: CacheKey) -> Bool {
        rawValue.utf8.lexicographicallyPrecedes(other.rawValue.utf8)
    }
}

/// Runs `operation`, or throws a `.timeout` ``CacheTierError`` saying `what` once `limit`
/// has passed (the operation is cancelled): a listing request to a server that accepts
/// and never answers must not hold a sync for ever.
func withTimeLimit<T: Sendable>(
    _ limit: Duration, tier: String, _ what: String, _ operation: @escaping @Sendable () async throws -> T
) async throws -> T {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await operation() }
        group.addTask {
            try await Task.sleep(for: limit)
            return nil
        }
        defer { group.cancelAll() }
        guard let first = try await group.next(), let value = first else {
            throw CacheTierError(.timeout, tier: tier, "\(what) did not answer within \(limit.humanReadable)")
        }
        return value
    }
}

/// How long one page of a listing may take to arrive.
let listingTimeLimit: Duration = .seconds(60)
