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
    /// What `lstat` says is at `path`, or `nil` when nothing is there.
    static func kind(of path: FilePath) -> FileKind? {
        var info = stat()
        guard lstat(path.string, &info) == 0 else { return nil }
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
        guard mkdir(path.string, mode) == 0 else { throw Errno(rawValue: errno) }
    }

    static func rename(_ from: FilePath, to: FilePath) throws(Errno) {
        guard Foundation.rename(from.string, to.string) == 0 else { throw Errno(rawValue: errno) }
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
        if kind != .directory {
            guard unlink(path.string) == 0 || errno == ENOENT else {
                throw Errno(rawValue: errno)
            }
            return
        }
        let descriptor = open(path.string, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard descriptor >= 0 else {
            if errno == ENOENT { return }
            throw Errno(rawValue: errno)
        }
        try removeContents(of: descriptor)
        guard rmdir(path.string) == 0 || errno == ENOENT else { throw Errno(rawValue: errno) }
    }

    /// Empties the directory open at `directory` (and closes it), entry by entry relative
    /// to its descriptor: a tree of 100,000 entries goes in a fraction of the time
    /// FileManager takes, which a restore that replaces a tree waits for.
    private static func removeContents(of directory: Int32) throws {
        guard let stream = fdopendir(directory) else {
            let code = errno
            close(directory)
            throw Errno(rawValue: code)
        }
        defer { closedir(stream) }
        var subdirectories: [[CChar]] = []
        var madeWritable = false
        /// unlinkat; in a read-only directory (from the archive) it makes the directory
        /// ours to empty and tries once more. False when the entry is a directory.
        func remove(_ name: [CChar], flags: Int32) throws -> Bool {
            while unlinkat(directory, name, flags) != 0 {
                switch errno {
                case ENOENT:
                    return true
                case EISDIR:
                    return false
                case EACCES where !madeWritable, EPERM where !madeWritable:
                    madeWritable = true
                    guard fchmod(directory, 0o700) == 0 else { throw Errno(rawValue: errno) }
                default:
                    throw Errno(rawValue: errno)
                }
            }
            return true
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
            let child = openat(directory, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            if child < 0 {
                if errno == ENOENT { continue }
                throw Errno(rawValue: errno)
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
