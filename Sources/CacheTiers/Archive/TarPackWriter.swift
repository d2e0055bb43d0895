import Crypto

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Walks a directory tree and writes it as a compressed tar stream to a file
/// descriptor, reading file contents straight into the tar buffer.
///
/// Entries are sorted by name within each directory, so the same tree gives the same
/// stream. Sockets, FIFOs and devices are skipped (and reported); hard links within
/// the tree are kept as links. Blocking: run it on a dedicated thread.
final class TarPackWriter {
    struct Result {
        var archiveSHA256: String
        var archiveBytes: Int64
        var uncompressedBytes: Int64
        var entries: Int
        var skipped: [String]
        var skippedUnsafe: [ArchivePacker.SkippedEntry]
    }

    private struct Inode: Hashable {
        var device: UInt64
        var inode: UInt64
    }

    private let root: String
    private let options: ArchivePacker.Options
    private let encoder: any StreamEncoder
    private let output: Int32
    private let cancellation: CancellationFlag?
    private let buffer: UnsafeMutableRawBufferPointer
    private var fill = 0
    private var header: [UInt8] = []
    private var hasher = SHA256()
    private var archiveBytes: Int64 = 0
    private var uncompressedBytes: Int64 = 0
    private var entries = 0
    private var skipped: [String] = []
    private var skippedUnsafe: [ArchivePacker.SkippedEntry] = []
    private let rules: EntryRules
    private var linkedInodes: [Inode: PathBytes] = [:]

    static let bufferSize = 1 << 20

    init(root: String, options: ArchivePacker.Options, encoder: any StreamEncoder, output: Int32, cancellation: CancellationFlag?) {
        self.root = root.hasSuffix("/") && root.count > 1 ? String(root.dropLast()) : root
        self.options = options
        self.rules = EntryRules(limits: options.limits)
        self.encoder = encoder
        self.output = output
        self.cancellation = cancellation
        self.buffer = .allocate(byteCount: Self.bufferSize, alignment: 4096)
        header.reserveCapacity(2048)
    }

    deinit {
        buffer.deallocate()
    }

    func run() throws -> Result {
        let rootDescriptor: Int32
        do {
            rootDescriptor = try syscall("open") { open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
        } catch {
            if error.errnoCode == ENOTDIR { throw PackError.notADirectory(root) }
            throw PackError.io("cannot open \(root)", errno: error.errnoCode)
        }
        try walk(rootDescriptor, PathBytes([]))
        // End of archive: two zero blocks.
        header.removeAll(keepingCapacity: true)
        header.append(contentsOf: repeatElement(0, count: 2 * TarHeaderEncoder.blockSize))
        try append(header)
        try flush()
        try encoder.finish { try emit($0) }
        return Result(
            archiveSHA256: hasher.finalize().hexString, archiveBytes: archiveBytes,
            uncompressedBytes: uncompressedBytes, entries: entries, skipped: skipped,
            skippedUnsafe: skippedUnsafe
        )
    }

    /// Archives the entries of the open directory `descriptor` (which it closes), named
    /// relative to the root. Everything is opened relative to its directory, so the
    /// kernel never walks a long path twice.
    private func walk(_ descriptor: Int32, _ relative: PathBytes) throws {
        if cancellation?.isCancelled == true {
            close(descriptor)
            throw CancellationError()
        }
        let handle: OpaquePointer
        do {
            handle = try syscall("fdopendir") { fdopendir(descriptor) }
        } catch {
            close(descriptor)
            throw PackError.io("cannot list \(relative.isEmpty ? root : relative.description)", errno: error.errnoCode)
        }
        defer { closedir(handle) }
        for component in try listDirectory(handle, relative) {
            let path = relative.appending(component)
            let name = component.cString
            var info = stat()
            do {
                try syscall("fstatat") { fstatat(descriptor, name, &info, AT_SYMLINK_NOFOLLOW) }
            } catch {
                throw PackError.io("cannot read \(path)", errno: error.errnoCode)
            }
            let mtime = options.fixedModificationTime ?? Int64(info.st_mtim.tv_sec)
            var entry = TarEntry(
                path: path, kind: .file, mode: UInt32(info.st_mode & 0o7777), size: 0, modificationTime: mtime,
                userID: options.deterministic ? 0 : info.st_uid, groupID: options.deterministic ? 0 : info.st_gid
            )
            let type = info.st_mode & S_IFMT
            if type == S_IFDIR || type == S_IFREG || type == S_IFLNK {
                do {
                    try rules.checkPathLength(path.bytes)
                } catch {
                    try refuse(path, error)
                    continue
                }
            }
            switch type {
            case S_IFDIR:
                entry.kind = .directory
                entry.path = PathBytes(path.bytes + [PathBytes.slash])
                try appendHeader(entry)
                try walk(try openEntry(descriptor, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC, path), path)
            case S_IFREG:
                let inode = Inode(device: UInt64(info.st_dev), inode: UInt64(info.st_ino))
                if info.st_nlink > 1, let first = linkedInodes[inode] {
                    entry.kind = .hardLink
                    entry.linkTarget = first
                    try appendHeader(entry)
                    continue
                }
                if info.st_nlink > 1 { linkedInodes[inode] = path }
                entry.size = Int64(info.st_size)
                try appendHeader(entry)
                let file = try openEntry(descriptor, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC, path)
                defer { close(file) }
                try appendContents(of: file, path: path, size: entry.size)
                try checkUnchanged(file, path: path, since: info)
                try check { () throws(EntryRules.Violation) in try rules.addBytes(entry.size, to: &uncompressedBytes) }
            case S_IFLNK:
                entry.kind = .symlink
                entry.linkTarget = try readLink(descriptor, name, path: path)
                do {
                    try rules.checkSymlink(path.bytes, target: entry.linkTarget.bytes)
                } catch {
                    try refuse(path, error)
                    continue
                }
                try appendHeader(entry)
            default:
                skipped.append(path.description)
            }
        }
    }

    /// The entry `name` of the open directory `directory`, opened with `flags`.
    private func openEntry(_ directory: Int32, _ name: [CChar], _ flags: Int32, _ path: PathBytes) throws -> Int32 {
        do {
            return try syscall("openat") { openat(directory, name, flags) }
        } catch {
            throw PackError.io("cannot open \(path)", errno: error.errnoCode)
        }
    }

    /// The names in a directory as the kernel gives them, bytes that need not be UTF-8,
    /// in byte order.
    private func listDirectory(_ handle: OpaquePointer, _ relative: PathBytes) throws -> [PathBytes] {
        var names: [PathBytes] = []
        while true {
            // readdir says nothing but errno about a failure, and keeping a name
            // allocates: errno is cleared before each call and read right after it.
            errno = 0
            guard let entry = readdir(handle) else {
                let code = errno
                if code != 0 { throw PackError.io("cannot list \(relative.isEmpty ? root : relative.description)", errno: code) }
                break
            }
            let name = withUnsafeBytes(of: entry.pointee.d_name) { PathBytes($0.prefix { $0 != 0 }) }
            if name != "." && name != ".." && !name.isEmpty { names.append(name) }
        }
        return names.sorted()
    }

    private func readLink(_ directory: Int32, _ name: [CChar], path: PathBytes) throws -> PathBytes {
        var target = [UInt8](repeating: 0, count: 4096)
        let length: Int
        do {
            length = try target.withUnsafeMutableBytes { buffer in
                try syscall("readlinkat") { readlinkat(directory, name, buffer.baseAddress!.assumingMemoryBound(to: CChar.self), 4096) }
            }
        } catch let error as SystemCallError {
            throw PackError.io("cannot read the symlink \(path)", errno: error.errnoCode)
        }
        return PathBytes(target[..<length])
    }

    private func appendHeader(_ entry: TarEntry) throws {
        entries += 1
        try check { () throws(EntryRules.Violation) in try rules.checkEntryCount(entries) }
        header.removeAll(keepingCapacity: true)
        TarHeaderEncoder.append(entry, to: &header)
        try append(header)
    }

    /// An entry every restore would refuse: skipped and reported when the options say
    /// so, otherwise the end of the pack.
    private func refuse(_ path: PathBytes, _ violation: EntryRules.Violation) throws {
        guard options.skipUnsafeEntries else { throw PackError.unsafe(violation.message) }
        skippedUnsafe.append(ArchivePacker.SkippedEntry(path: path.description, reason: violation.message))
    }

    /// A rule about the whole archive (its size, its entry count), which skipping an
    /// entry does not fix.
    private func check(_ rule: () throws(EntryRules.Violation) -> Void) throws {
        do {
            try rule()
        } catch {
            throw PackError.tooLarge(error.message)
        }
    }

    private func append(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { source in
            var offset = 0
            while offset < source.count {
                if fill == buffer.count { try flush() }
                let take = min(buffer.count - fill, source.count - offset)
                (buffer.baseAddress! + fill).copyMemory(from: source.baseAddress! + offset, byteCount: take)
                fill += take
                offset += take
            }
        }
    }

    /// Reads the file straight into the tar buffer, then pads to a block boundary.
    private func appendContents(of descriptor: Int32, path: PathBytes, size: Int64) throws {
        var remaining = size
        while remaining > 0 {
            if fill == buffer.count { try flush() }
            let want = Int(min(Int64(buffer.count - fill), remaining))
            let got: Int
            do {
                got = try syscall("read") { read(descriptor, buffer.baseAddress! + fill, want) }
            } catch {
                throw PackError.io("cannot read \(path)", errno: error.errnoCode)
            }
            if got == 0 { throw PackError.changed(path.description, detail: "it shrank to \(size - remaining) bytes") }
            fill += got
            remaining -= Int64(got)
        }
        let padding = Int((512 - size % 512) % 512)
        if padding > 0 {
            if buffer.count - fill < padding { try flush() }
            (buffer.baseAddress! + fill).initializeMemory(as: UInt8.self, repeating: 0, count: padding)
            fill += padding
        }
    }

    /// Fails when the file read is not the one stat'ed, or was written to while read: the
    /// archive would hold a copy of it that never existed (a prefix of a growing file).
    private func checkUnchanged(_ descriptor: Int32, path: PathBytes, since before: stat) throws {
        var after = stat()
        do {
            try syscall("fstat") { fstat(descriptor, &after) }
        } catch {
            throw PackError.io("cannot read \(path)", errno: error.errnoCode)
        }
        if after.st_size != before.st_size {
            throw PackError.changed(path.description, detail: "its size went from \(before.st_size) to \(after.st_size) bytes")
        }
        if after.st_ino != before.st_ino || after.st_dev != before.st_dev
            || after.st_mtim.tv_sec != before.st_mtim.tv_sec || after.st_mtim.tv_nsec != before.st_mtim.tv_nsec
        {
            throw PackError.changed(path.description, detail: "it was modified or replaced")
        }
    }

    private func flush() throws {
        guard fill > 0 else { return }
        if cancellation?.isCancelled == true { throw CancellationError() }
        try encoder.encode(UnsafeRawBufferPointer(rebasing: buffer[..<fill])) { try emit($0) }
        fill = 0
    }

    private func emit(_ bytes: UnsafeRawBufferPointer) throws {
        hasher.update(bufferPointer: bytes)
        archiveBytes += Int64(bytes.count)
        do {
            try writeAll(output, bytes)
        } catch {
            throw PackError.io("cannot write the archive", errno: error.errnoCode)
        }
    }
}

/// Why packing failed.
public enum PackError: Error, CustomStringConvertible {
    case notADirectory(String)
    /// A file changed while it was read, so its copy would be neither the old nor the new file.
    case changed(String, detail: String)
    /// An entry every restore would refuse (an absolute symlink, one that climbs out of
    /// the tree, a path over the extraction limit).
    case unsafe(String)
    /// The tree exceeds the extraction limits as a whole.
    case tooLarge(String)
    case io(String, errno: Int32)

    public var description: String {
        switch self {
        case .notADirectory(let path): "\(path) is not a directory; pack takes the directory to archive"
        case .changed(let path, let detail):
            "\(path) changed while it was being packed (\(detail)); pack a tree nothing is writing to"
        case .io(let message, let code): "\(message): \(String(cString: strerror(code)))"
        case .unsafe(let message):
            "\(message): every restore would refuse this archive; change the entry, or skip such entries (pack --skip-unsafe)"
        case .tooLarge(let message): "\(message): every restore would refuse this archive"
        }
    }
}
