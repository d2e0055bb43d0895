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

    /// Removes `path` and everything below it, without following symlinks. Missing is fine.
    static func removeTree(_ path: FilePath) throws {
        guard let kind = kind(of: path) else { return }
        if kind != .directory {
            guard unlink(path.string) == 0 || errno == ENOENT else {
                throw Errno(rawValue: errno)
            }
            return
        }
        try FileManager.default.removeItem(atPath: path.string)
    }

    /// Whether the process may create entries in the directory at `path`.
    static func isWritableDirectory(_ path: FilePath) -> Bool {
        kind(of: path) == .directory && access(path.string, W_OK | X_OK) == 0
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
