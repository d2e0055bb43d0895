#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The directory an extraction writes into, and every system call made on it: entries
/// are named relative to the root, and a failure becomes the ``ExtractionError`` a user
/// reads, with the path in it.
///
/// Stateless, so the ``TarExtractor`` and the threads of its ``FileWriterPool`` share it.
/// Nothing here decides what an archive may hold; the one refusal it makes is the one
/// only the disk can tell: an entry never replaces a directory.
struct ExtractionTree: Sendable {
    let root: PathBytes
    /// The process's umask, so a file gets an explicit mode only when creating it did not
    /// already give it the archived one.
    let umaskBits: UInt32

    /// - Parameter root: an existing directory, with or without a trailing slash.
    init(root: String) {
        self.root = PathBytes(root.hasSuffix("/") ? String(root.dropLast()) : root)
        self.umaskBits = currentUmask()
    }

    /// The mode mkdir gives a directory here (0o755 less the umask).
    var createdDirectoryMode: UInt32 { 0o755 & ~umaskBits }

    /// The file type bits of what is at `relative` (not following a symlink), or 0.
    func kind(of relative: PathBytes) -> mode_t {
        var info = stat()
        guard lstat(relative.cString(under: root), &info) == 0 else { return 0 }
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
        try makeDirectory(relative.cString(under: root), relative)
    }

    private func makeDirectory(_ full: [CChar], _ relative: PathBytes) throws(ExtractionError) -> Bool {
        do {
            try syscall("mkdir") { mkdir(full, 0o755) }
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
        let full = relative.cString(under: root)
        if try makeDirectory(full, relative) { return true }
        if kind(of: relative) == S_IFDIR { return false }
        do {
            try syscall("unlink") { unlink(full) }
            try syscall("mkdir") { mkdir(full, 0o755) }
        } catch {
            throw .io("cannot replace \(relative) with a directory", errno: error.errnoCode)
        }
        return true
    }

    /// The modification time of the directory at `relative`; nil when it is not one.
    func modificationTime(ofDirectory relative: PathBytes) -> timespec? {
        var info = stat()
        guard lstat(relative.cString(under: root), &info) == 0, info.st_mode & S_IFMT == S_IFDIR else { return nil }
        return info.st_mtim
    }

    /// Puts a time read by ``modificationTime(ofDirectory:)`` back, as far as it can.
    func restoreModificationTime(_ time: timespec, of relative: PathBytes) {
        let full = relative.cString(under: root)
        var times = (time, time)
        _ = withUnsafePointer(to: &times) {
            $0.withMemoryRebound(to: timespec.self, capacity: 2) { times in
                try? syscall("utimensat") { utimensat(AT_FDCWD, full, times, AT_SYMLINK_NOFOLLOW) }
            }
        }
    }

    /// Gives the directory at `relative` (the root when empty) a mode and a modification
    /// time; `mode` nil leaves the mode alone.
    func setDirectory(_ relative: PathBytes, mode: UInt32?, modificationTime: Int64) throws(ExtractionError) {
        let full = relative.cString(under: root)
        var name: String { relative.isEmpty ? "the restored root" : relative.description }
        if let mode {
            do {
                try syscall("chmod") { chmod(full, mode_t(mode & 0o777)) }
            } catch {
                throw .io("cannot set the mode of \(name)", errno: error.errnoCode)
            }
        }
        do {
            try withTimes(modificationTime) { times throws(SystemCallError) in
                _ = try syscall("utimensat") { utimensat(AT_FDCWD, full, times, AT_SYMLINK_NOFOLLOW) }
            }
        } catch {
            throw .io("cannot set the modification time of \(name)", errno: error.errnoCode)
        }
    }

    // MARK: files, links

    /// Creates the file at `relative` for writing, replacing a file or symlink an
    /// earlier entry left there; never a directory.
    func createFile(_ relative: PathBytes, mode: UInt32, offset: Int64) throws(ExtractionError) -> Int32 {
        let permissions = mode_t(mode & 0o777)
        let flags = O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC
        let full = relative.cString(under: root)
        return try replacingEarlierEntry(relative, offset: offset, "cannot create") { () throws(SystemCallError) in
            try syscall("open") { open(full, flags, permissions) }
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
        let full = relative.cString(under: root)
        let target = target.cString
        _ = try replacingEarlierEntry(relative, offset: offset, "cannot create the symlink") { () throws(SystemCallError) in
            try syscall("symlink") { symlink(target, full) }
        }
    }

    /// Creates the hard link `relative` to the file `source`, replacing an earlier
    /// entry's file or symlink.
    func makeHardLink(_ relative: PathBytes, to source: PathBytes, offset: Int64) throws(ExtractionError) {
        let from = source.cString(under: root)
        let to = relative.cString(under: root)
        _ = try replacingEarlierEntry(relative, offset: offset, "cannot create the hard link") { () throws(SystemCallError) in
            try syscall("link") { link(from, to) }
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
            try syscall("unlink") { unlink(relative.cString(under: root)) }
        } catch let error where error.errnoCode == ENOENT {
            return
        } catch {
            throw .io("cannot replace \(relative)", errno: error.errnoCode)
        }
    }

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
