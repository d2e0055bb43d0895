#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The directory an extraction writes into, and every system call made on it: each
/// names its entry relative to a descriptor of the root (`openat`, `mkdirat`...), so the
/// kernel never walks the root's own path again and an entry path may be as long as the
/// limit allows however deep the root lies. A failure becomes the ``ExtractionError`` a
/// user reads, with the entry's path in it.
///
/// A value holding no state but the descriptor, so the ``TarExtractor`` and the threads
/// of its ``FileWriterPool`` share it; its opener closes it (``close()``). Nothing here
/// decides what an archive may hold; the one refusal it makes is the one only the disk
/// can tell: an entry never replaces a directory.
struct ExtractionTree: Sendable {
    /// The root, open.
    private let descriptor: Int32
    /// The process's umask, so a file gets an explicit mode only when creating it did not
    /// already give it the archived one.
    let umaskBits: UInt32

    /// Opens `root`, an existing directory.
    init(root: String) throws(ExtractionError) {
        do {
            descriptor = try syscall("open") { open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
        } catch {
            throw .io("cannot open \(root), the directory to unpack into", errno: error.errnoCode)
        }
        umaskBits = currentUmask()
    }

    private init(descriptor: Int32) {
        self.descriptor = descriptor
        umaskBits = 0o022
    }

    /// A tree whose root could not be opened: every call fails (EBADF), none is made.
    static let closed = ExtractionTree(descriptor: -1)

    /// Closes the root; no call may follow.
    func closeRoot() {
        if descriptor >= 0 { close(descriptor) }
    }

    /// The mode mkdir gives a directory here (0o755 less the umask).
    var createdDirectoryMode: UInt32 { 0o755 & ~umaskBits }

    /// The file type bits of what is at `relative` (not following a symlink), or 0.
    func kind(of relative: PathBytes) -> mode_t {
        var info = stat()
        guard fstatat(descriptor, name(relative), &info, AT_SYMLINK_NOFOLLOW) == 0 else { return 0 }
        return info.st_mode & S_IFMT
    }

    /// Whether `relative` is a regular file reached through real directories only, so a
    /// link(2) to it follows no symlink.
    func isFileBelowDirectories(_ relative: PathBytes) -> Bool {
        var ancestor: PathBytes = ""
        for component in relative.bytes.split(separator: PathBytes.slash).dropLast() {
            ancestor = ancestor.appending(PathBytes(component))
            guard kind(of: ancestor) == S_IFDIR else { return false }
        }
        return kind(of: relative) == S_IFREG
    }

    // MARK: directories

    /// mkdir(2) with mode 0o755: true when it made the directory, false when something is
    /// already there.
    func makeDirectory(_ relative: PathBytes) throws(ExtractionError) -> Bool {
        try makeDirectory(name(relative), relative)
    }

    private func makeDirectory(_ full: [CChar], _ relative: PathBytes) throws(ExtractionError) -> Bool {
        do {
            try syscall("mkdirat") { mkdirat(descriptor, full, 0o755) }
            return true
        } catch let error where error.errnoCode == EEXIST {
            return false
        } catch {
            throw .io("cannot create the directory \(relative)", errno: error.errnoCode)
        }
    }

    /// Makes `relative` a directory, replacing a file or symlink an earlier entry left
    /// there: true when it made one, false when a directory was there already.
    func makeOrReplaceDirectory(_ relative: PathBytes) throws(ExtractionError) -> Bool {
        let full = name(relative)
        if try makeDirectory(full, relative) { return true }
        if kind(of: relative) == S_IFDIR { return false }
        do {
            try syscall("unlinkat") { unlinkat(descriptor, full, 0) }
            try syscall("mkdirat") { mkdirat(descriptor, full, 0o755) }
        } catch {
            throw .io("cannot replace \(relative) with a directory", errno: error.errnoCode)
        }
        return true
    }

    /// The modification time of the directory at `relative`; nil when it is not one.
    func modificationTime(ofDirectory relative: PathBytes) -> timespec? {
        var info = stat()
        guard fstatat(descriptor, name(relative), &info, AT_SYMLINK_NOFOLLOW) == 0, info.st_mode & S_IFMT == S_IFDIR else {
            return nil
        }
        return info.st_mtim
    }

    /// Puts a time read by ``modificationTime(ofDirectory:)`` back, as far as it can.
    func restoreModificationTime(_ time: timespec, of relative: PathBytes) {
        let full = name(relative)
        var times = (time, time)
        _ = withUnsafePointer(to: &times) {
            $0.withMemoryRebound(to: timespec.self, capacity: 2) { times in
                try? syscall("utimensat") { utimensat(descriptor, full, times, AT_SYMLINK_NOFOLLOW) }
            }
        }
    }

    /// Gives the directory at `relative` (the root when empty) a mode and a modification
    /// time; `mode` nil leaves the mode alone.
    func setDirectory(_ relative: PathBytes, mode: UInt32?, modificationTime: Int64) throws(ExtractionError) {
        let full = name(relative)
        var display: String { relative.isEmpty ? "the restored root" : relative.description }
        if let mode {
            do {
                try syscall("fchmodat") { fchmodat(descriptor, full, mode_t(mode & 0o777), 0) }
            } catch {
                throw .io("cannot set the mode of \(display)", errno: error.errnoCode)
            }
        }
        do {
            try withTimes(modificationTime) { times throws(SystemCallError) in
                _ = try syscall("utimensat") { utimensat(descriptor, full, times, AT_SYMLINK_NOFOLLOW) }
            }
        } catch {
            throw .io("cannot set the modification time of \(display)", errno: error.errnoCode)
        }
    }

    // MARK: files, links

    /// Creates the file at `relative` for writing, replacing a file or symlink an
    /// earlier entry left there; never a directory.
    func createFile(_ relative: PathBytes, mode: UInt32, offset: Int64) throws(ExtractionError) -> Int32 {
        let permissions = mode_t(mode & 0o777)
        let flags = O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC
        let full = name(relative)
        return try replacingEarlierEntry(relative, offset: offset, "cannot create") { () throws(SystemCallError) in
            try syscall("openat") { openat(descriptor, full, flags, permissions) }
        }
    }

    /// Writes all of `bytes` to the file `relative` open at `descriptor`.
    func write(_ descriptor: Int32, _ bytes: UnsafeRawBufferPointer, to relative: PathBytes) throws(ExtractionError) {
        do {
            try writeAll(descriptor, bytes)
        } catch {
            throw .io("cannot write \(relative)", errno: error.errnoCode)
        }
    }

    /// Gives the file `relative` open at `descriptor` its archived mode and modification
    /// time, then closes it, whatever happens.
    func closeFile(_ descriptor: Int32, _ relative: PathBytes, mode: UInt32, modificationTime: Int64) throws(ExtractionError) {
        defer { close(descriptor) }
        let permissions = mode & 0o777
        if permissions & umaskBits != 0 || permissions & 0o200 == 0 {
            do {
                try syscall("fchmod") { fchmod(descriptor, mode_t(permissions)) }
            } catch {
                throw .io("cannot set the mode of \(relative)", errno: error.errnoCode)
            }
        }
        do {
            try withTimes(modificationTime) { times throws(SystemCallError) in
                _ = try syscall("futimens") { futimens(descriptor, times) }
            }
        } catch {
            throw .io("cannot set the modification time of \(relative)", errno: error.errnoCode)
        }
    }

    /// Creates the symlink `relative` to `target`, replacing an earlier entry's file or symlink.
    func makeSymlink(_ relative: PathBytes, target: PathBytes, offset: Int64) throws(ExtractionError) {
        let full = name(relative)
        let target = target.cString
        _ = try replacingEarlierEntry(relative, offset: offset, "cannot create the symlink") { () throws(SystemCallError) in
            try syscall("symlinkat") { symlinkat(target, descriptor, full) }
        }
    }

    /// Creates the hard link `relative` to the file `source`, replacing an earlier
    /// entry's file or symlink.
    func makeHardLink(_ relative: PathBytes, to source: PathBytes, offset: Int64) throws(ExtractionError) {
        let from = name(source)
        let to = name(relative)
        _ = try replacingEarlierEntry(relative, offset: offset, "cannot create the hard link") { () throws(SystemCallError) in
            try syscall("linkat") { linkat(descriptor, from, descriptor, to, 0) }
        }
    }

    /// Runs `create`; when an earlier entry holds the name, removes it and runs it again.
    private func replacingEarlierEntry<Result>(
        _ relative: PathBytes,
        offset: Int64,
        _ failure: StaticString,
        _ create: () throws(SystemCallError) -> Result
    ) throws(ExtractionError) -> Result {
        do {
            return try create()
        } catch let error where error.errnoCode == EEXIST {
            try removeEarlierEntry(relative, offset: offset)
        } catch {
            throw .io("\(failure) \(relative)", errno: error.errnoCode)
        }
        do {
            return try create()
        } catch {
            throw .io("\(failure) \(relative)", errno: error.errnoCode)
        }
    }

    /// Removes an earlier entry at `relative` (archives may repeat a path); never a directory.
    func removeEarlierEntry(_ relative: PathBytes, offset: Int64) throws(ExtractionError) {
        if kind(of: relative) == S_IFDIR {
            throw .unsafe("the entry '\(relative)' would replace a directory of the same name", offset: offset)
        }
        do {
            let full = name(relative)
            try syscall("unlinkat") { unlinkat(descriptor, full, 0) }
        } catch let error where error.errnoCode == ENOENT {
            return
        } catch {
            throw .io("cannot replace \(relative)", errno: error.errnoCode)
        }
    }

    /// `relative` NUL-terminated, for a call relative to the root's descriptor; `.` for
    /// the root itself.
    private func name(_ relative: PathBytes) -> [CChar] {
        relative.isEmpty ? Self.dot : relative.cString
    }

    private static let dot: [CChar] = [CChar(UInt8(ascii: ".")), 0]

    /// Lends `[atime, mtime]`, both `seconds`, as utimensat(2) and futimens(2) take them,
    /// without allocating.
    private func withTimes(
        _ seconds: Int64,
        _ body: (UnsafePointer<timespec>) throws(SystemCallError) -> Void
    ) throws(SystemCallError) {
        var times = (timespec(tv_sec: Int(seconds), tv_nsec: 0), timespec(tv_sec: Int(seconds), tv_nsec: 0))
        var failure: SystemCallError?
        withUnsafePointer(to: &times) {
            $0.withMemoryRebound(to: timespec.self, capacity: 2) { times in
                do throws(SystemCallError) { try body(times) } catch { failure = error }
            }
        }
        if let failure { throw failure }
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
