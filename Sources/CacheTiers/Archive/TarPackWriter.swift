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
    private var linkedInodes: [Inode: String] = [:]

    static let bufferSize = 1 << 20

    init(root: String, options: ArchivePacker.Options, encoder: any StreamEncoder, output: Int32, cancellation: CancellationFlag?) {
        self.root = root.hasSuffix("/") && root.count > 1 ? String(root.dropLast()) : root
        self.options = options
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
        let rootDescriptor = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard rootDescriptor >= 0 else {
            if errno == ENOTDIR { throw PackError.notADirectory(root) }
            throw PackError.io("cannot open \(root)", errno: errno)
        }
        try walk(rootDescriptor, "")
        // End of archive: two zero blocks.
        header.removeAll(keepingCapacity: true)
        header.append(contentsOf: repeatElement(0, count: 2 * TarHeaderEncoder.blockSize))
        try append(header)
        try flush()
        try encoder.finish { try emit($0) }
        return Result(
            archiveSHA256: hasher.finalize().hexString, archiveBytes: archiveBytes,
            uncompressedBytes: uncompressedBytes, entries: entries, skipped: skipped
        )
    }

    /// Archives the entries of the open directory `descriptor` (which it closes), named
    /// relative to the root. Everything is opened relative to its directory, so the
    /// kernel never walks a long path twice.
    private func walk(_ descriptor: Int32, _ relative: String) throws {
        if cancellation?.isCancelled == true {
            close(descriptor)
            throw CancellationError()
        }
        guard let handle = fdopendir(descriptor) else {
            close(descriptor)
            throw PackError.io("cannot list \(relative.isEmpty ? root : relative)", errno: errno)
        }
        defer { closedir(handle) }
        for name in try listDirectory(handle, relative) {
            let path = relative.isEmpty ? name : relative + "/" + name
            var info = stat()
            guard fstatat(descriptor, name, &info, AT_SYMLINK_NOFOLLOW) == 0 else {
                throw PackError.io("cannot read \(path)", errno: errno)
            }
            let mtime = options.fixedModificationTime ?? Int64(info.st_mtim.tv_sec)
            var entry = TarEntry(
                path: path, kind: .file, mode: UInt32(info.st_mode & 0o7777), size: 0, modificationTime: mtime,
                userID: options.deterministic ? 0 : info.st_uid, groupID: options.deterministic ? 0 : info.st_gid
            )
            switch info.st_mode & S_IFMT {
            case S_IFDIR:
                entry.kind = .directory
                entry.path = path + "/"
                try appendHeader(entry)
                let child = openat(descriptor, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                guard child >= 0 else { throw PackError.io("cannot open \(path)", errno: errno) }
                try walk(child, path)
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
                let file = openat(descriptor, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
                guard file >= 0 else { throw PackError.io("cannot open \(path)", errno: errno) }
                defer { close(file) }
                try appendContents(of: file, path: path, size: entry.size)
                uncompressedBytes += entry.size
            case S_IFLNK:
                entry.kind = .symlink
                entry.linkTarget = try readLink(descriptor, name, path: path)
                try appendHeader(entry)
            default:
                skipped.append(path)
            }
        }
    }

    private func listDirectory(_ handle: OpaquePointer, _ relative: String) throws -> [String] {
        var names: [String] = []
        errno = 0
        while let entry = readdir(handle) {
            let name = withUnsafePointer(to: &entry.pointee.d_name) { pointer in
                pointer.withMemoryRebound(to: CChar.self, capacity: 256) { String(validatingCString: $0) ?? "" }
            }
            if name != "." && name != ".." && !name.isEmpty { names.append(name) }
        }
        if errno != 0 { throw PackError.io("cannot list \(relative.isEmpty ? root : relative)", errno: errno) }
        return names.sorted { $0.utf8.lexicographicallyPrecedes($1.utf8) }
    }

    private func readLink(_ directory: Int32, _ name: String, path: String) throws -> String {
        var target = [UInt8](repeating: 0, count: 4096)
        let length = target.withUnsafeMutableBytes {
            readlinkat(directory, name, $0.baseAddress!.assumingMemoryBound(to: CChar.self), 4096)
        }
        guard length >= 0 else { throw PackError.io("cannot read the symlink \(path)", errno: errno) }
        return String(decoding: target[..<length], as: UTF8.self)
    }

    private func appendHeader(_ entry: TarEntry) throws {
        header.removeAll(keepingCapacity: true)
        TarHeaderEncoder.append(entry, to: &header)
        try append(header)
        entries += 1
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
    private func appendContents(of descriptor: Int32, path: String, size: Int64) throws {
        var remaining = size
        while remaining > 0 {
            if fill == buffer.count { try flush() }
            let want = Int(min(Int64(buffer.count - fill), remaining))
            let got = read(descriptor, buffer.baseAddress! + fill, want)
            if got < 0 {
                if errno == EINTR { continue }
                throw PackError.io("cannot read \(path)", errno: errno)
            }
            if got == 0 { throw PackError.changed(path) }
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

    private func flush() throws {
        guard fill > 0 else { return }
        if cancellation?.isCancelled == true { throw CancellationError() }
        try encoder.encode(UnsafeRawBufferPointer(rebasing: buffer[..<fill])) { try emit($0) }
        fill = 0
    }

    private func emit(_ bytes: UnsafeRawBufferPointer) throws {
        hasher.update(bufferPointer: bytes)
        archiveBytes += Int64(bytes.count)
        var written = 0
        while written < bytes.count {
            let result = write(output, bytes.baseAddress! + written, bytes.count - written)
            if result < 0 {
                if errno == EINTR { continue }
                throw PackError.io("cannot write the archive", errno: errno)
            }
            written += result
        }
    }
}

/// Why packing failed.
public enum PackError: Error, CustomStringConvertible {
    case notADirectory(String)
    case changed(String)
    case io(String, errno: Int32)

    public var description: String {
        switch self {
        case .notADirectory(let path): "\(path) is not a directory; pack takes the directory to archive"
        case .changed(let path): "\(path) shrank while it was being packed; pack a tree nothing is writing to"
        case .io(let message, let code): "\(message): \(String(cString: strerror(code)))"
        }
    }
}
