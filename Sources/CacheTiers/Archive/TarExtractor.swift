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
/// Not thread-safe: one thread feeds it.
final class TarExtractor {
    private enum Phase {
        case header
        case fileData(remaining: Int64, descriptor: Int32, padding: Int)
        /// A small file collected in memory for the writer pool.
        case bufferedFile(remaining: Int64, padding: Int)
        case metadata(MetadataKind, remaining: Int64, padding: Int)
        case skip(remaining: Int64)
        case ended
    }

    private enum MetadataKind {
        case pax, globalPax, longName, longLink
    }

    private struct PendingFile {
        var path: PathBytes
        var mode: UInt32
        var modificationTime: Int64
    }

    private let root: PathBytes
    private let rules: EntryRules
    private let umaskBits: UInt32

    private var phase = Phase.header
    private var headerBuffer: [UInt8] = []
    private var metadataBuffer: [UInt8] = []
    private var pendingPax: [String: [UInt8]] = [:]
    private var pendingLongName: [UInt8]?
    private var pendingLongLink: [UInt8]?
    private var currentFile: PendingFile?
    private var fileBuffer: [UInt8] = []
    /// Writes small files on other threads; nil to write everything on this one.
    private let pool: FileWriterPool?
    /// Directories the stream has left whose files may still be in the pool: their
    /// times are applied once the pool has written every job up to `sequence`.
    private var awaitingDirectories: [(directory: PendingDirectory, sequence: Int)] = []

    /// The last parent directory proven to be a chain of real directories. Directories
    /// are never replaced during an extraction, so its prefixes stay proven; anything
    /// else is checked on disk, where a symlink cannot pass for a directory. Memory stays
    /// flat however many entries the archive holds.
    private var lastVerifiedParent: PathBytes = ""

    private struct PendingDirectory {
        var path: PathBytes
        var mode: UInt32
        var modificationTime: Int64
    }

    /// Directories whose archived mode and time wait until their contents are written:
    /// the ancestors of the current entry, applied as the stream leaves them (as GNU tar
    /// does), so the list is as long as the tree is deep.
    private var openDirectories: [PendingDirectory] = []
    /// Directories the archive makes unwritable: applied at the very end, so a later
    /// entry inside them can still be written.
    private var readOnlyDirectories: [PendingDirectory] = []
    /// The mode and time the archive gives the root (its `./` entry), if any: applied
    /// after everything else, since every top-level entry changes the root's time.
    private var rootDirectory: PendingDirectory?

    /// The mode mkdir gives a directory here (0o755 less the umask).
    private var createdDirectoryMode: UInt32 { 0o755 & ~umaskBits }
    /// Directories whose mode was set to something other than ``createdDirectoryMode``.
    private var directoriesWithOtherModes: Set<PathBytes> = []

    /// What counts against ``ExtractionLimits/maxTotalBytes``: file contents, and the
    /// bytes that are decompressed all the same, data attached to directories and
    /// symlinks (skipped) and extended headers.
    private var countedBytes: Int64 = 0
    /// Extended headers (pax, GNU long names) read since the last entry, header blocks included.
    private var pendingMetadataBytes: Int64 = 0
    /// Bytes after the end-of-archive marker.
    private var trailingBytes: Int64 = 0
    /// What may follow the end-of-archive marker: GNU tar pads to its record size
    /// (10 KiB by default).
    static let maximumTrailingBytes: Int64 = 1 << 20
    /// What the extended headers of one entry may add up to.
    static let maximumMetadataBytes: Int64 = 1 << 20

    private(set) var summary = UnpackSummary()
    /// Offset in the tar stream of the next byte to consume.
    private(set) var offset: Int64 = 0

    /// - Parameters:
    ///   - root: an existing, empty directory.
    ///   - writerThreads: extra threads that write small files; 0 writes on the caller's.
    init(root: String, limits: ExtractionLimits, writerThreads: Int = 0) {
        self.root = PathBytes(root.hasSuffix("/") ? String(root.dropLast()) : root)
        self.rules = EntryRules(limits: limits)
        let umaskBits = currentUmask()
        self.umaskBits = umaskBits
        self.pool = writerThreads > 0 ? FileWriterPool(root: self.root, umaskBits: umaskBits, threads: writerThreads) : nil
    }

    deinit {
        abort()
    }

    /// Closes anything open and stops the writer threads; the caller removes the partial tree.
    func abort() {
        if case .fileData(_, let descriptor, _) = phase {
            close(descriptor)
        }
        phase = .ended
        pool?.stop()
    }

    func consume(_ input: UnsafeRawBufferPointer) throws(ExtractionError) {
        var rest = input[...]
        while !rest.isEmpty {
            switch phase {
            case .header:
                if headerBuffer.isEmpty && rest.count >= TarHeaderEncoder.blockSize {
                    let block = UnsafeRawBufferPointer(rebasing: rest.prefix(TarHeaderEncoder.blockSize))
                    rest = rest.dropFirst(TarHeaderEncoder.blockSize)
                    try header(block)
                    offset += Int64(TarHeaderEncoder.blockSize)
                } else {
                    let take = min(TarHeaderEncoder.blockSize - headerBuffer.count, rest.count)
                    headerBuffer.append(contentsOf: rest.prefix(take))
                    rest = rest.dropFirst(take)
                    if headerBuffer.count == TarHeaderEncoder.blockSize {
                        let block = headerBuffer
                        headerBuffer.removeAll(keepingCapacity: true)
                        var failure: ExtractionError?
                        block.withUnsafeBytes { bytes in
                            do throws(ExtractionError) { try header(bytes) } catch { failure = error }
                        }
                        if let failure { throw failure }
                        offset += Int64(TarHeaderEncoder.blockSize)
                    }
                }

            case .fileData(let remaining, let descriptor, let padding):
                let take = Int(min(remaining, Int64(rest.count)))
                try writeAll(descriptor, UnsafeRawBufferPointer(rebasing: rest.prefix(take)))
                rest = rest.dropFirst(take)
                offset += Int64(take)
                if Int64(take) == remaining {
                    try closeFile(descriptor)
                    phase = padding > 0 ? .skip(remaining: Int64(padding)) : .header
                } else {
                    phase = .fileData(remaining: remaining - Int64(take), descriptor: descriptor, padding: padding)
                }

            case .bufferedFile(let remaining, let padding):
                let take = Int(min(remaining, Int64(rest.count)))
                fileBuffer.append(contentsOf: rest.prefix(take))
                rest = rest.dropFirst(take)
                offset += Int64(take)
                if Int64(take) == remaining {
                    try submitBufferedFile()
                    phase = padding > 0 ? .skip(remaining: Int64(padding)) : .header
                } else {
                    phase = .bufferedFile(remaining: remaining - Int64(take), padding: padding)
                }

            case .metadata(let kind, let remaining, let padding):
                let take = Int(min(remaining, Int64(rest.count)))
                metadataBuffer.append(contentsOf: rest.prefix(take))
                rest = rest.dropFirst(take)
                offset += Int64(take)
                if Int64(take) == remaining {
                    try finishMetadata(kind)
                    phase = padding > 0 ? .skip(remaining: Int64(padding)) : .header
                } else {
                    phase = .metadata(kind, remaining: remaining - Int64(take), padding: padding)
                }

            case .skip(let remaining):
                let take = Int(min(remaining, Int64(rest.count)))
                rest = rest.dropFirst(take)
                offset += Int64(take)
                phase = Int64(take) == remaining ? .header : .skip(remaining: remaining - Int64(take))

            case .ended:
                // GNU tar pads archives with zero blocks to a record size; the rest is
                // ignored, up to a bound: endless zeros would be a bomb of another shape.
                offset += Int64(rest.count)
                trailingBytes += Int64(rest.count)
                rest = rest[rest.endIndex...]
                guard trailingBytes <= Self.maximumTrailingBytes else {
                    throw .limit(
                        "the archive goes on for more than \(Self.maximumTrailingBytes >> 20) MiB after its end-of-archive marker (a decompression bomb?)",
                        offset: offset
                    )
                }
            }
        }
        // The caller may now wait for more input: let the pool write what it holds.
        try pool?.flush()
    }

    /// Checks that the stream ended cleanly, then applies directory modes and times.
    func finish() throws(ExtractionError) -> UnpackSummary {
        switch phase {
        case .ended:
            break
        case .header where headerBuffer.isEmpty && summary.entries > 0:
            // Some writers omit the end-of-archive blocks; every entry arrived whole.
            break
        default:
            throw .corrupt("the archive is truncated: it ends in the middle of an entry", offset: offset)
        }
        if let pool {
            try pool.barrier()
            pool.stop()
        }
        for (directory, _) in awaitingDirectories {
            try apply(directory)
        }
        awaitingDirectories.removeAll()
        while let directory = openDirectories.popLast() {
            try apply(directory)
        }
        for directory in readOnlyDirectories.sorted(by: { $0.path > $1.path }) {
            try apply(directory)
        }
        if let rootDirectory { try apply(rootDirectory) }
        return summary
    }

    /// Sets a finished directory's archived mode and modification time.
    private func apply(_ directory: PendingDirectory) throws(ExtractionError) {
        if directory.mode & 0o200 == 0 && !directory.path.isEmpty && !readOnlyDirectories.contains(where: { $0.path == directory.path }) {
            readOnlyDirectories.append(directory)
            return
        }
        let full = directory.path.cString(under: root)
        // Directories are made with the mode most archives hold; chmod only the others,
        // one set to another mode by an earlier entry of the same name, and the root,
        // which was made by someone else.
        if directory.mode != createdDirectoryMode || directory.path.isEmpty
            || directoriesWithOtherModes.remove(directory.path) != nil
        {
            if chmod(full, mode_t(directory.mode & 0o777)) != 0 {
                throw .io("cannot set the mode of \(directory.path.isEmpty ? "the restored root" : directory.path)", errno: errno)
            }
            if directory.mode != createdDirectoryMode { directoriesWithOtherModes.insert(directory.path) }
        }
        var times = [
            timespec(tv_sec: Int(directory.modificationTime), tv_nsec: 0),
            timespec(tv_sec: Int(directory.modificationTime), tv_nsec: 0),
        ]
        if utimensat(AT_FDCWD, full, &times, AT_SYMLINK_NOFOLLOW) != 0 {
            throw .io(
                "cannot set the modification time of \(directory.path.isEmpty ? "the restored root" : directory.path)", errno: errno
            )
        }
    }

    /// The parent of `relative` when it is a directory whose archived time is already in
    /// place (not the current pending one, and not the root).
    private func revisitedParent(of relative: PathBytes) -> PathBytes? {
        guard let parent = relative.parent else { return nil }
        return openDirectories.last?.path == parent ? nil : parent
    }

    private func modificationTime(of relative: PathBytes) -> timespec? {
        var info = stat()
        guard lstat(relative.cString(under: root), &info) == 0, info.st_mode & S_IFMT == S_IFDIR else { return nil }
        return info.st_mtim
    }

    private func restoreModificationTime(_ time: timespec, of relative: PathBytes) {
        var times = [time, time]
        _ = utimensat(AT_FDCWD, relative.cString(under: root), &times, AT_SYMLINK_NOFOLLOW)
    }

    /// Applies the pending directories that `relative` is not inside: the stream has left them.
    private func leaveDirectories(notContaining relative: PathBytes) throws(ExtractionError) {
        while let last = openDirectories.last {
            if relative.isInside(last.path) { return }
            openDirectories.removeLast()
            if let pool {
                awaitingDirectories.append((last, pool.lastSubmittedSequence))
            } else {
                try apply(last)
            }
        }
    }

    /// Applies the times of left directories whose files the pool has all written.
    private func applyWrittenDirectories() throws(ExtractionError) {
        guard let pool, !awaitingDirectories.isEmpty else { return }
        let written = pool.completedThrough
        var applied = 0
        while applied < awaitingDirectories.count, awaitingDirectories[applied].sequence <= written {
            try apply(awaitingDirectories[applied].directory)
            applied += 1
        }
        if applied > 0 { awaitingDirectories.removeFirst(applied) }
    }

    private func submitBufferedFile() throws(ExtractionError) {
        guard let file = currentFile, let pool else { return }
        currentFile = nil
        try pool.submit(relative: file.path, contents: fileBuffer, mode: file.mode, modificationTime: file.modificationTime)
        fileBuffer = []
    }

    // MARK: headers

    private func header(_ block: UnsafeRawBufferPointer) throws(ExtractionError) {
        let raw: RawTarHeader
        do {
            guard let decoded = try RawTarHeader.decode(block) else {
                phase = .ended
                return
            }
            raw = decoded
        } catch {
            throw .corrupt(error.description, offset: offset)
        }

        let padding = { (size: Int64) in Int((512 - size % 512) % 512) }
        switch raw.typeflag {
        case UInt8(ascii: "x"), UInt8(ascii: "g"), UInt8(ascii: "L"), UInt8(ascii: "K"):
            guard raw.size <= Self.maximumMetadataBytes else {
                throw .corrupt("an extended header of \(raw.size) bytes is larger than any real path needs", offset: offset)
            }
            pendingMetadataBytes += Int64(TarHeaderEncoder.blockSize) + raw.size
            guard pendingMetadataBytes <= Self.maximumMetadataBytes else {
                throw .corrupt("the extended headers of one entry add up to more than any real entry needs", offset: offset)
            }
            try countOtherBytes(raw.size)
            let kind: MetadataKind =
                switch raw.typeflag {
                case UInt8(ascii: "x"): .pax
                case UInt8(ascii: "g"): .globalPax
                case UInt8(ascii: "L"): .longName
                default: .longLink
                }
            metadataBuffer.removeAll(keepingCapacity: true)
            phase = raw.size == 0 ? .header : .metadata(kind, remaining: raw.size, padding: padding(raw.size))
            if raw.size == 0 { try finishMetadata(kind) }
            return
        default:
            break
        }

        let kind: TarEntryKind
        switch raw.typeflag {
        case UInt8(ascii: "0"), 0, UInt8(ascii: "7"): kind = .file
        case UInt8(ascii: "5"): kind = .directory
        case UInt8(ascii: "2"): kind = .symlink
        case UInt8(ascii: "1"): kind = .hardLink
        case UInt8(ascii: "3"), UInt8(ascii: "4"):
            throw .unsafe("the archive holds a device entry (\(displayName(raw))); cache archives never do", offset: offset)
        case UInt8(ascii: "6"):
            throw .unsafe("the archive holds a FIFO entry (\(displayName(raw))); cache archives never do", offset: offset)
        case UInt8(ascii: "S"):
            throw .unsafe(
                "the archive holds a GNU sparse file (\(displayName(raw))), which is not supported: repack it without tar --sparse",
                offset: offset
            )
        default:
            throw .corrupt(
                "the archive holds an entry of unknown type '\(Character(Unicode.Scalar(raw.typeflag)))' (\(displayName(raw)))",
                offset: offset
            )
        }

        // GNU tar's pax sparse formats (0.0, 0.1, 1.0) look like a plain file holding the
        // sparse map; restoring it as such would give the wrong file.
        if kind == .file, pendingPax.keys.contains(where: { $0.hasPrefix("GNU.sparse.") }) {
            let name = pendingPax["GNU.sparse.name"].map { EntryRules.display($0) } ?? displayName(raw)
            throw .unsafe(
                "the archive holds a sparse file (\(name), GNU tar --sparse in pax format), which is not supported: repack it without --sparse",
                offset: offset
            )
        }
        // Names are taken as bytes, whatever `hdrcharset` says: they are restored as
        // the archive holds them, as GNU tar does.
        var path = PathBytes(pendingPax["path"] ?? pendingLongName ?? raw.name)
        var linkTarget = PathBytes(pendingPax["linkpath"] ?? pendingLongLink ?? raw.linkName)
        var size = raw.size
        var mtime = raw.modificationTime
        if let bytes = pendingPax["size"] {
            let value = String(decoding: bytes, as: UTF8.self)
            guard let parsed = Int64(value), parsed >= 0 else { throw .corrupt("a pax size '\(value)' is not a size", offset: offset) }
            size = parsed
        }
        if let bytes = pendingPax["mtime"], let parsed = Double(String(decoding: bytes, as: UTF8.self)), parsed.isFinite,
            abs(parsed) < 1e17
        {
            mtime = Int64(parsed.rounded(.down))
        }
        pendingPax = [:]
        pendingLongName = nil
        pendingLongLink = nil
        pendingMetadataBytes = 0
        if kind == .directory, path.hasSuffix(PathBytes.slash) { path.bytes.removeLast() }
        if path.isEmpty, kind == .directory { path = "." }

        summary.entries += 1
        do {
            try rules.checkEntryCount(summary.entries)
        } catch {
            throw ExtractionError(error, offset: offset)
        }

        let dataSize = kind == .file ? size : (kind == .hardLink ? 0 : size)
        // Skipped, but decompressed all the same: it counts like file contents.
        if kind == .directory || kind == .symlink { try countOtherBytes(dataSize) }
        let relative = try sanitize(path)
        if let relative { try leaveDirectories(notContaining: relative) }
        try applyWrittenDirectories()

        // An entry written into a directory whose time was already applied (the stream
        // came back to it) must not disturb that time.
        let revisited = relative.flatMap(revisitedParent(of:))
        if let pool, let relative {
            // Anything that could race a file still being written waits for the pool.
            if kind == .hardLink || revisited != nil || pool.isInFlight(relative) {
                try pool.barrier()
            }
        }
        let savedTime = revisited.flatMap(modificationTime(of:))
        defer {
            if let revisited, let savedTime { restoreModificationTime(savedTime, of: revisited) }
        }

        switch kind {
        case .directory:
            if let relative {
                try makeDirectory(relative, mode: raw.mode, mtime: mtime)
            } else {
                // The archive's `./`: the root's own mode and time, applied last, as GNU tar does.
                rootDirectory = PendingDirectory(path: PathBytes([]), mode: raw.mode & 0o777, modificationTime: mtime)
            }
            phase = dataSize > 0 ? .skip(remaining: dataSize + Int64(padding(dataSize))) : .header
        case .file:
            guard let relative else { throw .unsafe("a file entry names the archive's root directory", offset: offset) }
            do {
                try rules.addBytes(size, to: &countedBytes)
            } catch {
                throw ExtractionError(error, offset: offset)
            }
            summary.uncompressedBytes += size
            summary.files += 1
            if pool != nil, revisited == nil, size <= Int64(FileWriterPool.maximumFileSize) {
                try prepareParent(of: relative)
                currentFile = PendingFile(path: relative, mode: raw.mode, modificationTime: mtime)
                fileBuffer.reserveCapacity(Int(size))
                if size == 0 {
                    try submitBufferedFile()
                    phase = .header
                } else {
                    phase = .bufferedFile(remaining: size, padding: padding(size))
                }
                return
            }
            let descriptor = try createFile(relative, mode: raw.mode)
            currentFile = PendingFile(path: relative, mode: raw.mode, modificationTime: mtime)
            if size == 0 {
                try closeFile(descriptor)
                phase = .header
            } else {
                phase = .fileData(remaining: size, descriptor: descriptor, padding: padding(size))
            }
        case .symlink:
            guard let relative else { throw .unsafe("a symlink entry names the archive's root directory", offset: offset) }
            try makeSymlink(relative, target: linkTarget)
            summary.symlinks += 1
            phase = dataSize > 0 ? .skip(remaining: dataSize + Int64(padding(dataSize))) : .header
        case .hardLink:
            guard let relative else { throw .unsafe("a hard link entry names the archive's root directory", offset: offset) }
            while linkTarget.hasSuffix(PathBytes.slash) { linkTarget.bytes.removeLast() }
            try makeHardLink(relative, target: linkTarget)
            summary.hardLinks += 1
            phase = .header
        }
    }

    private func countOtherBytes(_ count: Int64) throws(ExtractionError) {
        do {
            try rules.addBytes(count, to: &countedBytes)
        } catch {
            throw ExtractionError(error, offset: offset)
        }
    }

    private func finishMetadata(_ kind: MetadataKind) throws(ExtractionError) {
        switch kind {
        case .pax:
            do {
                pendingPax.merge(try PaxRecords.parse(metadataBuffer)) { $1 }
            } catch {
                throw .corrupt(error.description, offset: offset)
            }
        case .globalPax:
            break  // global defaults carry nothing CacheTiers applies
        case .longName:
            pendingLongName = Array(metadataBuffer.prefix { $0 != 0 })
        case .longLink:
            pendingLongLink = Array(metadataBuffer.prefix { $0 != 0 })
        }
        metadataBuffer.removeAll(keepingCapacity: true)
    }

    private func displayName(_ raw: RawTarHeader) -> String {
        EntryRules.display(pendingPax["path"] ?? pendingLongName ?? raw.name)
    }

    // MARK: paths

    /// The path relative to the root with `.` and empty components removed; nil for the root itself.
    private func sanitize(_ path: PathBytes) throws(ExtractionError) -> PathBytes? {
        if path.hasPrefix(PathBytes.slash) {
            throw .unsafe("the entry '\(path)' has an absolute path; archives must hold relative paths", offset: offset)
        }
        let relative: PathBytes
        if isCanonical(path) {
            relative = path
        } else {
            var components: [ArraySlice<UInt8>] = []
            for component in path.bytes.split(separator: PathBytes.slash, omittingEmptySubsequences: true)
            where !component.elementsEqual([UInt8(ascii: ".")]) {
                if component.elementsEqual([UInt8(ascii: "."), UInt8(ascii: ".")]) {
                    throw .unsafe("the entry '\(path)' has a '..' component that could escape the destination", offset: offset)
                }
                components.append(component)
            }
            if components.isEmpty { return nil }
            relative = PathBytes(Array(components.joined(separator: [PathBytes.slash])))
        }
        if relative.bytes.contains(0) {
            throw .unsafe("the entry '\(path)' has a NUL byte in its path", offset: offset)
        }
        do {
            try rules.checkPathLength(relative.bytes)
        } catch {
            throw ExtractionError(error, offset: offset)
        }
        return relative
    }

    /// Whether `path` has no empty, `.` or `..` component (the common case, checked without allocating).
    private func isCanonical(_ path: PathBytes) -> Bool {
        var componentLength = 0
        var dots = 0
        for byte in path.bytes {
            if byte == PathBytes.slash {
                if componentLength == 0 || componentLength == dots { return false }
                componentLength = 0
                dots = 0
            } else {
                componentLength += 1
                if byte == UInt8(ascii: ".") { dots += 1 }
            }
        }
        return componentLength > 0 && !(componentLength == dots && dots <= 2)
    }

    /// Makes sure every ancestor of `relative` is a real directory, creating missing
    /// ones, so nothing is ever written through a symlink or below a file.
    private func prepareParent(of relative: PathBytes) throws(ExtractionError) {
        guard let parent = relative.parent else { return }
        if parent == lastVerifiedParent { return }
        // The prefix shared with the last proven parent is proven already.
        let bytes = parent.bytes
        let proven = commonDirectoryPrefixLength(bytes, lastVerifiedParent.bytes)
        var start = proven == 0 ? 0 : min(proven + 1, bytes.count)
        while start < bytes.count {
            let next = bytes[start...].firstIndex(of: PathBytes.slash) ?? bytes.count
            try ensureDirectory(PathBytes(Array(bytes[..<next])), for: relative)
            if next == bytes.count { break }
            start = next + 1
        }
        lastVerifiedParent = parent
    }

    /// The length in bytes of the longest common prefix of two paths that ends at a
    /// component boundary.
    private func commonDirectoryPrefixLength(_ a: [UInt8], _ b: [UInt8]) -> Int {
        a.withUnsafeBufferPointer { a in
            b.withUnsafeBufferPointer { b in
                let slash = PathBytes.slash
                var index = 0
                var boundary = 0
                let shorter = min(a.count, b.count)
                while index < shorter, a[index] == b[index] {
                    if a[index] == slash { boundary = index }
                    index += 1
                }
                let aEnds = index == a.count || a[index] == slash
                let bEnds = index == b.count || b[index] == slash
                return aEnds && bEnds ? index : boundary
            }
        }
    }

    /// Creates `ancestor` as a directory, or proves on disk that it is one.
    private func ensureDirectory(_ ancestor: PathBytes, for relative: PathBytes) throws(ExtractionError) {
        if mkdir(ancestor.cString(under: root), 0o755) == 0 {
            summary.directories += 1
            return
        }
        let code = errno
        guard code == EEXIST else { throw .io("cannot create the directory \(ancestor)", errno: code) }
        switch kind(of: ancestor) {
        case S_IFDIR:
            return
        case S_IFLNK:
            throw .unsafe("the entry '\(relative)' would be written through the symlink '\(ancestor)'", offset: offset)
        default:
            throw .unsafe("the entry '\(relative)' would be written below the file '\(ancestor)'", offset: offset)
        }
    }

    /// The file type bits of what is at `relative` (not following a symlink), or 0.
    private func kind(of relative: PathBytes) -> mode_t {
        var info = stat()
        guard lstat(relative.cString(under: root), &info) == 0 else { return 0 }
        return info.st_mode & S_IFMT
    }

    /// Removes an earlier entry at `relative` (archives may repeat a path); never a directory.
    private func removeEarlierEntry(_ relative: PathBytes) throws(ExtractionError) {
        if kind(of: relative) == S_IFDIR {
            throw .unsafe("the entry '\(relative)' would replace a directory of the same name", offset: offset)
        }
        if unlink(relative.cString(under: root)) != 0 && errno != ENOENT {
            throw .io("cannot replace \(relative)", errno: errno)
        }
    }

    // MARK: entries

    private func makeDirectory(_ relative: PathBytes, mode: UInt32, mtime: Int64) throws(ExtractionError) {
        try prepareParent(of: relative)
        let full = relative.cString(under: root)
        if mkdir(full, 0o755) == 0 {
            summary.directories += 1
        } else {
            guard errno == EEXIST else { throw .io("cannot create the directory \(relative)", errno: errno) }
            if kind(of: relative) != S_IFDIR {
                // An earlier file or symlink of the same name: a directory replaces it.
                guard unlink(full) == 0, mkdir(full, 0o755) == 0 else {
                    throw .io("cannot replace \(relative) with a directory", errno: errno)
                }
                summary.directories += 1
            }
        }
        // Its parent is proven and it is a real directory: files inside it need no check.
        lastVerifiedParent = relative
        // Stay writable while extracting; the archived mode is applied when the stream leaves it.
        openDirectories.append(PendingDirectory(path: relative, mode: mode & 0o777, modificationTime: mtime))
    }

    private func createFile(_ relative: PathBytes, mode: UInt32) throws(ExtractionError) -> Int32 {
        try prepareParent(of: relative)
        let permissions = mode_t(mode & 0o777)
        let flags = O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC
        let full = relative.cString(under: root)
        var descriptor = open(full, flags, permissions)
        if descriptor < 0 && errno == EEXIST {
            try removeEarlierEntry(relative)
            descriptor = open(full, flags, permissions)
        }
        guard descriptor >= 0 else { throw .io("cannot create \(relative)", errno: errno) }
        return descriptor
    }

    private func closeFile(_ descriptor: Int32) throws(ExtractionError) {
        guard let file = currentFile else { return }
        currentFile = nil
        defer { close(descriptor) }
        let permissions = file.mode & 0o777
        if permissions & umaskBits != 0 || permissions & 0o200 == 0 {
            guard fchmod(descriptor, mode_t(permissions)) == 0 else { throw .io("cannot set the mode of \(file.path)", errno: errno) }
        }
        var times = [
            timespec(tv_sec: Int(file.modificationTime), tv_nsec: 0),
            timespec(tv_sec: Int(file.modificationTime), tv_nsec: 0),
        ]
        guard futimens(descriptor, &times) == 0 else {
            throw .io("cannot set the modification time of \(file.path)", errno: errno)
        }
    }

    private func makeSymlink(_ relative: PathBytes, target: PathBytes) throws(ExtractionError) {
        try checkSymlinkTarget(relative, target)
        try prepareParent(of: relative)
        let full = relative.cString(under: root)
        let target = target.cString
        if symlink(target, full) != 0 {
            guard errno == EEXIST else { throw .io("cannot create the symlink \(relative)", errno: errno) }
            try removeEarlierEntry(relative)
            guard symlink(target, full) == 0 else {
                throw .io("cannot create the symlink \(relative)", errno: errno)
            }
        }
    }

    private func checkSymlinkTarget(_ relative: PathBytes, _ target: PathBytes) throws(ExtractionError) {
        do {
            try rules.checkSymlink(relative.bytes, target: target.bytes)
        } catch {
            throw ExtractionError(error, offset: offset)
        }
    }

    private func makeHardLink(_ relative: PathBytes, target: PathBytes) throws(ExtractionError) {
        let rejection = ExtractionError.unsafe(
            "the hard link '\(relative)' points to '\(target)', which is not a file extracted earlier from this archive",
            offset: offset
        )
        guard !target.hasPrefix(PathBytes.slash), let source = try? sanitize(target) else { throw rejection }
        // Every parent of the source must be a real directory, so link(2) follows no symlink.
        var ancestor: PathBytes = ""
        for component in source.bytes.split(separator: PathBytes.slash).dropLast() {
            ancestor = ancestor.appending(PathBytes(component))
            guard kind(of: ancestor) == S_IFDIR else { throw rejection }
        }
        guard kind(of: source) == S_IFREG else { throw rejection }
        try prepareParent(of: relative)
        let from = source.cString(under: root)
        let to = relative.cString(under: root)
        if link(from, to) != 0 {
            guard errno == EEXIST else { throw .io("cannot create the hard link \(relative)", errno: errno) }
            try removeEarlierEntry(relative)
            guard link(from, to) == 0 else {
                throw .io("cannot create the hard link \(relative)", errno: errno)
            }
        }
    }

    private func writeAll(_ descriptor: Int32, _ bytes: UnsafeRawBufferPointer) throws(ExtractionError) {
        var written = 0
        while written < bytes.count {
            let result = write(descriptor, bytes.baseAddress! + written, bytes.count - written)
            if result < 0 {
                if errno == EINTR { continue }
                throw .io("cannot write \(currentFile.map { $0.path.description } ?? "a file")", errno: errno)
            }
            written += result
        }
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

/// The process's umask, read without changing it (Linux), or the common 022.
private func currentUmask() -> UInt32 {
    #if os(Linux)
    if let file = fopen("/proc/self/status", "r") {
        defer { fclose(file) }
        var line = [CChar](repeating: 0, count: 256)
        while fgets(&line, Int32(line.count), file) != nil {
            let text = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            if text.hasPrefix("Umask:") {
                let value = text.dropFirst(6).trimmingCharacters(in: " \t\n")
                return UInt32(value, radix: 8) ?? 0o022
            }
        }
    }
    #endif
    return 0o022
}

extension Substring {
    fileprivate func trimmingCharacters(in set: String) -> String {
        String(drop { set.contains($0) }.reversed().drop { set.contains($0) }.reversed())
    }
}
