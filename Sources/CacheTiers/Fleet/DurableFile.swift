import Foundation
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Replaces a small file so that a reader sees the old contents or the new ones, never
/// a part, and a crash leaves one of them: the bytes go to `NAME.tmp-PID` in the same
/// folder (the same filesystem), are synced, and the file is renamed onto the path
/// (node_exporter's textfile convention, and the report spool's).
enum DurableFile {
    /// Why a file could not be written: the path and the system's words.
    struct Failure: Error, CustomStringConvertible {
        var path: FilePath
        var reason: String

        var description: String { "cannot write \(path): \(reason)" }
    }

    /// The suffix of the temporary files this process writes.
    static var temporarySuffix: String { ".tmp-\(getpid())" }

    /// The file a temporary file named `name` was to become, when the process writing it
    /// no longer exists (killed between its open and its rename): `nil` for any other name.
    static func abandonedTemporary(_ name: String) -> Substring? {
        guard let range = name.range(of: ".tmp-", options: .backwards), let owner = pid_t(name[range.upperBound...]), owner > 0,
            kill(owner, 0) != 0, errno == ESRCH
        else { return nil }
        return name[..<range.lowerBound]
    }

    /// Removes what writers of `path` killed before their rename left beside it.
    static func sweepAbandoned(besides path: FilePath) {
        let folder = path.removingLastComponent()
        guard let name = path.lastComponent?.string,
            let names = try? FileManager.default.contentsOfDirectory(atPath: folder.string.isEmpty ? "." : folder.string)
        else { return }
        for candidate in names where abandonedTemporary(candidate) == name[...] {
            unlink(folder.appending(candidate).string)
        }
    }

    /// Throws unless `path` does not exist or is a regular file: a rename onto a device,
    /// a FIFO or a symbolic link (`/dev/full`, `/dev/stdout`) would replace it with a file,
    /// a system file when run as root. The link itself is looked at, never followed.
    static func requireReplaceable(_ path: FilePath) throws(Failure) {
        var info = stat()
        guard lstat(path.string, &info) == 0 else {
            if errno == ENOENT { return }
            throw Failure(path: path, reason: "lstat: \(String(cString: strerror(errno)))")
        }
        let kind: String
        switch info.st_mode & S_IFMT {
        case S_IFREG: return
        case S_IFLNK: kind = "a symbolic link"
        case S_IFDIR: kind = "a directory"
        case S_IFIFO: kind = "a FIFO"
        case S_IFSOCK: kind = "a socket"
        default: kind = "a device"
        }
        throw Failure(path: path, reason: "it is \(kind), not a regular file; left as it is")
    }

    /// Writes `bytes` to `path` durably and atomically, with `mode` (the umask applies),
    /// when `path` is a regular file or does not exist (``requireReplaceable(_:)``).
    static func replace(_ path: FilePath, with bytes: some Collection<UInt8>, mode: mode_t = 0o644) throws(Failure) {
        try requireReplaceable(path)
        let temporary = FilePath(path.string + temporarySuffix)
        func failure(_ call: String, _ code: Int32) -> Failure {
            Failure(path: path, reason: "\(call): \(String(cString: strerror(code)))")
        }
        let descriptor = open(temporary.string, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode)
        guard descriptor >= 0 else { throw failure("open", errno) }
        var written = true
        var code: Int32 = 0
        var call = ""
        let data = Array(bytes)
        data.withUnsafeBytes { buffer in
            var offset = 0
            while offset < buffer.count {
                let count = write(descriptor, buffer.baseAddress! + offset, buffer.count - offset)
                if count < 0 {
                    if errno == EINTR { continue }
                    (written, code, call) = (false, errno, "write")
                    return
                }
                offset += count
            }
        }
        if written, fsync(descriptor) != 0 { (written, code, call) = (false, errno, "fsync") }
        if close(descriptor) != 0, written { (written, code, call) = (false, errno, "close") }
        guard written else {
            unlink(temporary.string)
            throw failure(call, code)
        }
        guard rename(temporary.string, path.string) == 0 else {
            let code = errno
            unlink(temporary.string)
            throw failure("rename", code)
        }
        // The rename itself survives a crash once the folder is synced.
        let folder = open(path.removingLastComponent().string.isEmpty ? "." : path.removingLastComponent().string, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if folder >= 0 {
            _ = fsync(folder)
            close(folder)
        }
    }
}
