#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Writes a tar stream into a fresh directory as the bytes arrive, refusing anything
/// that could write outside it.
///
/// Rejected: absolute paths, `..` components, entries below a symlink or a file,
/// symlinks that are absolute or climb out of the tree, hard links to anything but a
/// file extracted earlier, device and FIFO entries. setuid, setgid and sticky bits are
/// dropped. Ownership is never applied. Directory modes and times are set at the end,
/// deepest first, like GNU tar does.
///
/// Paths are bytes from end to end (``PathBytes``): a name that is not UTF-8 is
/// restored exactly as the archive holds it.
///
/// The extractor coordinates; each job has its own type: ``TarBlockStream`` splits the
/// stream into headers and contents, ``TarExtendedHeaders`` applies pax and GNU headers,
/// ``EntryRules`` decides which names and links are acceptable, ``ParentDirectories``
/// proves every entry's ancestors are real directories, ``DirectoryTimes`` applies
/// directory modes and times once nothing more is written inside, and ``ExtractionTree``
/// makes the system calls. Small files go to a ``FileWriterPool``.
///
/// Not thread-safe: one thread feeds it.
final class TarExtractor {
    /// Where the contents being read go.
    private enum Sink {
        case none
        /// A file streamed to disk.
        case file(descriptor: Int32)
        /// A small file collected in memory for the writer pool.
        case buffered
        case extendedHeader(TarExtendedHeaders.Kind)
    }

    private struct PendingFile {
        var path: PathBytes
        var mode: UInt32
        var modificationTime: Int64
    }

    private let tree: ExtractionTree
    /// Why the root could not be opened; the first call reports it (the initialiser
    /// cannot throw: its caller has not yet set up its error path).
    private let openFailure: ExtractionError?
    private let rules: EntryRules
    private var stream = TarBlockStream()
    private var extendedHeaders = TarExtendedHeaders()
    private var parents: ParentDirectories
    private var directories: DirectoryTimes
    /// Writes small files on other threads; nil to write everything on this one.
    private let pool: FileWriterPool?

    private var sink = Sink.none
    private var currentFile: PendingFile?
    private var fileBuffer: [UInt8] = []
    /// Where the entry being handled starts in the tar stream, for messages.
    private var entryOffset: Int64 = 0

    /// What counts against ``ExtractionLimits/maxTotalBytes``: file contents, and the
    /// bytes that are decompressed all the same, data attached to directories and
    /// symlinks (skipped) and extended headers.
    private var countedBytes: Int64 = 0

    private(set) var summary = UnpackSummary()

    /// - Parameters:
    ///   - root: an existing, empty directory.
    ///   - writerThreads: extra threads that write small files; 0 writes on the caller's.
    init(root: String, limits: ExtractionLimits, writerThreads: Int = 0) {
        let tree: ExtractionTree
        do {
            tree = try ExtractionTree(root: root)
            openFailure = nil
        } catch {
            tree = .closed
            openFailure = error
        }
        self.tree = tree
        self.rules = EntryRules(limits: limits)
        self.parents = ParentDirectories(tree: tree)
        self.directories = DirectoryTimes(tree: tree)
        self.pool = writerThreads > 0 && openFailure == nil ? FileWriterPool(tree: tree, threads: writerThreads) : nil
    }

    deinit {
        abort()
        tree.closeRoot()
    }

    /// Closes anything open and stops the writer threads; the caller removes the partial tree.
    func abort() {
        if case .file(let descriptor) = sink {
            close(descriptor)
        }
        sink = .none
        pool?.stop()
    }

    func consume(_ input: UnsafeRawBufferPointer) throws(ExtractionError) {
        if let openFailure { throw openFailure }
        try stream.consume(input, into: self)
        // The caller may now wait for more input: let the pool write what it holds.
        try pool?.flush()
    }

    /// Checks that the stream ended cleanly, then applies directory modes and times.
    func finish() throws(ExtractionError) -> UnpackSummary {
        if let openFailure { throw openFailure }
        // Some writers omit the end-of-archive blocks; that is fine when every entry arrived whole.
        guard stream.hasEnded || (stream.isBetweenEntries && summary.entries > 0) else {
            throw .corrupt("the archive is truncated: it ends in the middle of an entry", offset: stream.offset)
        }
        if let pool {
            try pool.barrier()
            pool.stop()
        }
        try directories.finish()
        return summary
    }

    private func countOtherBytes(_ count: Int64) throws(ExtractionError) {
        do {
            try rules.addBytes(count, to: &countedBytes)
        } catch {
            throw ExtractionError(error, offset: entryOffset)
        }
    }

    private func submitBufferedFile() throws(ExtractionError) {
        guard let file = currentFile, let pool else { return }
        currentFile = nil
        try pool.submit(relative: file.path, contents: fileBuffer, mode: file.mode, modificationTime: file.modificationTime)
        fileBuffer = []
    }

    /// Sets the streamed file's mode and time and closes it.
    private func closeFile(_ descriptor: Int32) throws(ExtractionError) {
        sink = .none
        guard let file = currentFile else {
            close(descriptor)
            return
        }
        currentFile = nil
        try tree.closeFile(descriptor, file.path, mode: file.mode, modificationTime: file.modificationTime)
    }
}

// MARK: entries

extension TarExtractor: TarBlockReader {
    func header(_ raw: RawTarHeader, at offset: Int64) throws(ExtractionError) -> TarBlockStream.Following {
        entryOffset = offset
        if let kind = TarExtendedHeaders.Kind(typeflag: raw.typeflag) {
            try extendedHeaders.begin(size: raw.size, offset: offset)
            try countOtherBytes(raw.size)
            if raw.size == 0 {
                try extendedHeaders.finish(kind, offset: offset)
                return .nothing
            }
            sink = .extendedHeader(kind)
            return .contents(size: raw.size)
        }

        let kind = try entryKind(raw)
        var entry = try extendedHeaders.resolve(raw, kind: kind, offset: offset)
        if kind == .directory, entry.path.hasSuffix(PathBytes.slash) { entry.path.bytes.removeLast() }
        if entry.path.isEmpty, kind == .directory { entry.path = "." }

        summary.entries += 1
        do {
            try rules.checkEntryCount(summary.entries)
        } catch {
            throw ExtractionError(error, offset: offset)
        }

        let dataSize = kind == .hardLink ? 0 : entry.size
        // Skipped, but decompressed all the same: it counts like file contents.
        if kind == .directory || kind == .symlink { try countOtherBytes(dataSize) }
        let relative = try relativePath(entry.path)
        if let relative { try directories.leave(notContaining: relative, lastSubmitted: pool?.lastSubmittedSequence) }
        if let pool { try directories.applyWritten(through: pool.completedThrough) }

        // An entry written into a directory whose time was already applied (the stream
        // came back to it) must not disturb that time.
        let revisited = relative.flatMap(directories.revisitedParent(of:))
        if let pool, let relative {
            // Anything that could race a file still being written waits for the pool.
            if kind == .hardLink || revisited != nil || pool.isInFlight(relative) {
                try pool.barrier()
            }
        }
        let savedTime = revisited.flatMap(tree.modificationTime(ofDirectory:))
        defer {
            if let revisited, let savedTime { tree.restoreModificationTime(savedTime, of: revisited) }
        }

        switch kind {
        case .directory:
            if let relative {
                try makeDirectory(relative, mode: raw.mode, modificationTime: entry.modificationTime)
            } else {
                directories.setRoot(mode: raw.mode, modificationTime: entry.modificationTime)
            }
            return .skipped(size: dataSize)
        case .file:
            guard let relative else { throw .unsafe("a file entry names the archive's root directory", offset: offset) }
            return try startFile(relative, mode: raw.mode, size: entry.size, modificationTime: entry.modificationTime, buffered: revisited == nil)
        case .symlink:
            guard let relative else { throw .unsafe("a symlink entry names the archive's root directory", offset: offset) }
            do {
                try rules.checkSymlink(relative.bytes, target: entry.linkTarget.bytes)
            } catch {
                throw ExtractionError(error, offset: offset)
            }
            try prepareParent(of: relative)
            try tree.makeSymlink(relative, target: entry.linkTarget, offset: offset)
            summary.symlinks += 1
            return .skipped(size: dataSize)
        case .hardLink:
            guard let relative else { throw .unsafe("a hard link entry names the archive's root directory", offset: offset) }
            while entry.linkTarget.hasSuffix(PathBytes.slash) { entry.linkTarget.bytes.removeLast() }
            try makeHardLink(relative, target: entry.linkTarget)
            summary.hardLinks += 1
            return .nothing
        }
    }

    func contents(_ bytes: UnsafeRawBufferPointer) throws(ExtractionError) {
        switch sink {
        case .file(let descriptor):
            try tree.write(descriptor, bytes, to: currentFile!.path)
        case .buffered:
            fileBuffer.append(contentsOf: bytes)
        case .extendedHeader:
            extendedHeaders.append(bytes)
        case .none:
            preconditionFailure("contents with nowhere to go")
        }
    }

    func contentsEnded(at offset: Int64) throws(ExtractionError) {
        switch sink {
        case .file(let descriptor):
            try closeFile(descriptor)
        case .buffered:
            sink = .none
            try submitBufferedFile()
        case .extendedHeader(let kind):
            sink = .none
            try extendedHeaders.finish(kind, offset: offset)
        case .none:
            preconditionFailure("contents with nowhere to go")
        }
    }

    /// The kind of entry `raw` is, refusing the kinds a cache archive never holds.
    private func entryKind(_ raw: RawTarHeader) throws(ExtractionError) -> TarEntryKind {
        switch raw.typeflag {
        case UInt8(ascii: "0"), 0, UInt8(ascii: "7"): return .file
        case UInt8(ascii: "5"): return .directory
        case UInt8(ascii: "2"): return .symlink
        case UInt8(ascii: "1"): return .hardLink
        case UInt8(ascii: "3"), UInt8(ascii: "4"):
            throw .unsafe("the archive holds a device entry (\(extendedHeaders.displayName(raw))); cache archives never do", offset: entryOffset)
        case UInt8(ascii: "6"):
            throw .unsafe("the archive holds a FIFO entry (\(extendedHeaders.displayName(raw))); cache archives never do", offset: entryOffset)
        case UInt8(ascii: "S"):
            throw .unsafe(
                "the archive holds a GNU sparse file (\(extendedHeaders.displayName(raw))), which is not supported: repack it without tar --sparse",
                offset: entryOffset
            )
        default:
            throw .corrupt(
                "the archive holds an entry of unknown type '\(Character(Unicode.Scalar(raw.typeflag)))' (\(extendedHeaders.displayName(raw)))",
                offset: entryOffset
            )
        }
    }

    /// The path relative to the root; nil for the root itself.
    private func relativePath(_ path: PathBytes) throws(ExtractionError) -> PathBytes? {
        do {
            return try rules.relativePath(path)
        } catch {
            throw ExtractionError(error, offset: entryOffset)
        }
    }

    private func prepareParent(of relative: PathBytes) throws(ExtractionError) {
        summary.directories += try parents.prepare(relative, offset: entryOffset)
    }

    private func makeDirectory(_ relative: PathBytes, mode: UInt32, modificationTime: Int64) throws(ExtractionError) {
        try prepareParent(of: relative)
        if try tree.makeOrReplaceDirectory(relative) { summary.directories += 1 }
        // Its parent is proven and it is a real directory: files inside it need no check.
        parents.proved(relative)
        // Stay writable while extracting; the archived mode is applied when the stream leaves it.
        directories.entered(relative, mode: mode, modificationTime: modificationTime)
    }

    /// Counts a file entry and starts writing it: in memory for the pool when it is
    /// small (and not written into a revisited directory), streamed to disk otherwise.
    private func startFile(
        _ relative: PathBytes, mode: UInt32, size: Int64, modificationTime: Int64, buffered: Bool
    ) throws(ExtractionError) -> TarBlockStream.Following {
        do {
            try rules.addBytes(size, to: &countedBytes)
        } catch {
            throw ExtractionError(error, offset: entryOffset)
        }
        summary.uncompressedBytes += size
        summary.files += 1
        if pool != nil, buffered, size <= Int64(FileWriterPool.maximumFileSize) {
            try prepareParent(of: relative)
            currentFile = PendingFile(path: relative, mode: mode, modificationTime: modificationTime)
            fileBuffer.reserveCapacity(Int(size))
            if size == 0 {
                try submitBufferedFile()
                return .nothing
            }
            sink = .buffered
            return .contents(size: size)
        }
        try prepareParent(of: relative)
        let descriptor = try tree.createFile(relative, mode: mode, offset: entryOffset)
        currentFile = PendingFile(path: relative, mode: mode, modificationTime: modificationTime)
        if size == 0 {
            try closeFile(descriptor)
            return .nothing
        }
        sink = .file(descriptor: descriptor)
        return .contents(size: size)
    }

    private func makeHardLink(_ relative: PathBytes, target: PathBytes) throws(ExtractionError) {
        // Only a file extracted earlier: every parent of the source a real directory, so
        // link(2) follows no symlink.
        guard !target.hasPrefix(PathBytes.slash), let source = try? rules.relativePath(target), tree.isFileBelowDirectories(source)
        else {
            throw .unsafe(
                "the hard link '\(relative)' points to '\(target)', which is not a file extracted earlier from this archive",
                offset: entryOffset
            )
        }
        try prepareParent(of: relative)
        try tree.makeHardLink(relative, to: source, offset: entryOffset)
    }
}

/// Why an extraction stopped.
enum ExtractionError: Error, CustomStringConvertible {
    /// The stream is malformed or truncated.
    case corrupt(String, offset: Int64)
    /// An entry would write outside the tree or is of a forbidden kind.
    case unsafe(String, offset: Int64)
    /// A configured cap was exceeded.
    case limit(String, offset: Int64)
    /// The filesystem refused.
    case io(String, errno: Int32)

    var description: String {
        switch self {
        case .corrupt(let message, _), .unsafe(let message, _), .limit(let message, _): message
        case .io(let message, let code): "\(message): \(String(cString: strerror(code)))"
        }
    }
}

extension ExtractionError {
    init(_ violation: EntryRules.Violation, offset: Int64) {
        switch violation.kind {
        case .unsafe: self = .unsafe(violation.message, offset: offset)
        case .limit: self = .limit(violation.message, offset: offset)
        }
    }
}
