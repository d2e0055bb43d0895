import Foundation
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Thin helpers over POSIX calls, with errors that name the path.
enum FileSystem {
    /// What `lstat` says is at `path` (`stat`, through symbolic links, with
    /// `followingLinks`), or `nil` when nothing is there.
    static func kind(of path: FilePath, followingLinks: Bool = false) -> FileKind? {
        var info = stat()
        guard (followingLinks ? stat(path.string, &info) : lstat(path.string, &info)) == 0 else { return nil }
        switch info.st_mode & S_IFMT {
        case S_IFDIR: return .directory
        case S_IFREG: return .regular
        case S_IFLNK: return .symlink
        default: return .other
        }
    }

    enum FileKind {
        case directory, regular, symlink, other
    }

    static func makeDirectory(_ path: FilePath, mode: mode_t = 0o755) throws(Errno) {
        let path = path.string
        try call { () throws(SystemCallError) in try syscall("mkdir") { mkdir(path, mode) } }
    }

    static func rename(_ from: FilePath, to: FilePath) throws(Errno) {
        let (from, to) = (from.string, to.string)
        try call { () throws(SystemCallError) in try syscall("rename") { Foundation.rename(from, to) } }
    }

    /// Runs `body`, its failure as the `Errno` these helpers throw.
    @inline(__always)
    @discardableResult
    private static func call<Result>(_ body: () throws(SystemCallError) -> Result) throws(Errno) -> Result {
        do {
            return try body()
        } catch {
            throw Errno(rawValue: error.errnoCode)
        }
    }

    /// ``removeTree(_:)`` on a thread of its own: removing a dependency tree takes
    /// seconds of system calls, which must not hold one of the few threads of Swift's
    /// cooperative pool. It runs to the end even if the calling task is cancelled.
    static func removeTreeOffThePool(_ path: FilePath) async throws {
        try await DedicatedThread.run(name: "cachetiers-remove") { _ in try removeTree(path) }
    }

    /// Removes `path` and everything below it, without following symlinks. Missing is fine.
    static func removeTree(_ path: FilePath) throws {
        guard let kind = kind(of: path) else { return }
        let path = path.string
        do {
            if kind != .directory {
                try syscall("unlink") { unlink(path) }
                return
            }
            let descriptor = try syscall("open") { open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) }
            try removeContents(of: descriptor)
            try syscall("rmdir") { rmdir(path) }
        } catch let error as SystemCallError {
            // Removed meanwhile: what this was asked for.
            if error.errnoCode == ENOENT { return }
            throw Errno(rawValue: error.errnoCode)
        }
    }

    /// Empties the directory open at `directory` (and closes it), entry by entry relative
    /// to its descriptor: a tree of 100,000 entries goes in a fraction of the time
    /// FileManager takes, which a restore that replaces a tree waits for.
    private static func removeContents(of directory: Int32) throws {
        let stream: OpaquePointer
        do {
            stream = try syscall("fdopendir") { fdopendir(directory) }
        } catch {
            close(directory)
            throw Errno(rawValue: error.errnoCode)
        }
        defer { closedir(stream) }
        var subdirectories: [[CChar]] = []
        var madeWritable = false
        /// unlinkat; in a read-only directory (from the archive) it makes the directory
        /// ours to empty and tries once more. False when the entry is a directory.
        func remove(_ name: [CChar], flags: Int32) throws(Errno) -> Bool {
            while true {
                do {
                    try syscall("unlinkat") { unlinkat(directory, name, flags) }
                    return true
                } catch {
                    switch error.errnoCode {
                    case ENOENT:
                        return true
                    case EISDIR:
                        return false
                    case EACCES where !madeWritable, EPERM where !madeWritable:
                        madeWritable = true
                        try call { () throws(SystemCallError) in try syscall("fchmod") { fchmod(directory, 0o700) } }
                    default:
                        throw Errno(rawValue: error.errnoCode)
                    }
                }
            }
        }
        while let entry = readdir(stream) {
            // The name's bytes as they are: a name that is not UTF-8 must be removed
            // too, not turned into U+FFFD and missed.
            let name = withUnsafeBytes(of: entry.pointee.d_name) { bytes in
                Array(bytes.prefix { $0 != 0 }.map { CChar(bitPattern: $0) }) + [0]
            }
            if name == [0x2E, 0] || name == [0x2E, 0x2E, 0] { continue }
            // Without a d_type (some filesystems), unlinkat says EISDIR for a directory.
            let isDirectory = entry.pointee.d_type == UInt8(DT_DIR)
            if isDirectory {
                subdirectories.append(name)
            } else if try !remove(name, flags: 0) {
                subdirectories.append(name)
            }
        }
        for name in subdirectories {
            let child: Int32
            do {
                child = try syscall("openat") { openat(directory, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) }
            } catch {
                if error.errnoCode == ENOENT { continue }
                throw Errno(rawValue: error.errnoCode)
            }
            try removeContents(of: child)
            _ = try remove(name, flags: AT_REMOVEDIR)
        }
    }

    /// Whether the process may create entries in the directory at `path`.
    /// Whether `path` is, or is a symbolic link to, a directory this process can write
    /// (a destination's parent reached through `/srv/app/current → releases/42` is fine:
    /// staging and promotion happen inside the directory it names).
    static func isWritableDirectory(_ path: FilePath) -> Bool {
        var info = stat()
        return stat(path.string, &info) == 0 && (info.st_mode & S_IFMT) == S_IFDIR && access(path.string, W_OK | X_OK) == 0
    }

    /// A name unlikely to collide, for staging and scratch entries.
    static func uniqueSuffix() -> String {
        String(UInt64.random(in: 0 ... .max), radix: 36)
    }

    /// The absolute, lexically normalised form of `path`.
    static func absolute(_ path: FilePath) -> FilePath {
        if path.isAbsolute { return path.lexicallyNormalized() }
        let cwd = FilePath(FileManager.default.currentDirectoryPath)
        return cwd.pushing(path).lexicallyNormalized()
    }
}
