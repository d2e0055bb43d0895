import Foundation
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Reads the small files an operator names (a config file, a bearer token, a
/// service-account key) with the rules every such read needs, in one place: only a
/// regular file, never more than a limit, and never waiting.
///
/// Opened with `O_NONBLOCK`, so a FIFO in its place is refused at once instead of
/// blocking the boot until someone writes to it; `/dev/zero` or a multi-gigabyte file
/// is refused by its type or size before a byte is read, so it cannot exhaust memory.
package enum SmallFile {
    /// Why a file could not be used.
    package struct Failure: Error, CustomStringConvertible {
        package enum Kind: Sendable { case unreadable, empty, notOneLine }
        package var kind: Kind
        package var path: FilePath
        /// For ``Kind/unreadable``: the system's words, or what is wrong with the file.
        package var reason: String

        init(_ kind: Kind, _ path: FilePath, _ reason: String = "") {
            (self.kind, self.path, self.reason) = (kind, path, reason)
        }

        package var description: String {
            switch kind {
            case .unreadable: "cannot read \(path): \(reason)"
            case .empty: "\(path) is empty; put the token in it"
            case .notOneLine: "\(path) holds more than one line (or a control character); put only the token in it"
            }
        }
    }

    /// A bearer token is a line of a few hundred bytes; a service-account key a few KiB.
    package static let secretLimit = 64 << 10
    /// A config file is a few KiB; 4 MiB is more than any real one.
    package static let configLimit = 4 << 20

    /// The whole contents of the regular file at `path`, at most `limit` bytes.
    package static func contents(of path: FilePath, limit: Int) throws(Failure) -> Data {
        let descriptor: Int32
        do {
            descriptor = try syscall("open") { open(path.string, O_RDONLY | O_NONBLOCK | O_CLOEXEC) }
        } catch {
            throw Failure(.unreadable, path, error.reason)
        }
        defer { close(descriptor) }
        var info = stat()
        guard fstat(descriptor, &info) == 0 else { throw Failure(.unreadable, path, String(cString: strerror(errno))) }
        switch info.st_mode & S_IFMT {
        case S_IFREG:
            break
        case S_IFDIR:
            throw Failure(.unreadable, path, String(cString: strerror(EISDIR)))
        default:
            throw Failure(.unreadable, path, "not a regular file (a FIFO, socket or device); give the file itself")
        }
        guard info.st_size <= limit else {
            throw Failure(.unreadable, path, "it is \(info.st_size) bytes, more than the \(limit >> 10) KiB such a file can be")
        }
        var data = Data()
        var buffer = [UInt8](repeating: 0, count: 64 << 10)
        while true {
            let count: Int
            do {
                count = try buffer.withUnsafeMutableBytes { bytes throws(SystemCallError) in
                    try syscall("read") { read(descriptor, bytes.baseAddress, bytes.count) }
                }
            } catch {
                throw Failure(.unreadable, path, (error as? SystemCallError)?.reason ?? "\(error)")
            }
            if count == 0 { return data }
            data.append(contentsOf: buffer[..<count])
            // It grew since fstat (a log being written, say).
            guard data.count <= limit else { throw Failure(.unreadable, path, "it is more than the \(limit >> 10) KiB such a file can be") }
        }
    }

    /// The token in the file at `path`: its one line, trimmed.
    package static func token(at path: FilePath) throws(Failure) -> String {
        let data = try contents(of: path, limit: secretLimit)
        let token = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard !token.isEmpty else { throw Failure(.empty, path) }
        // Sent as a header: a second line or a control character would break the request,
        // and the HTTP client's error would print the token into every log line.
        guard token.unicodeScalars.allSatisfy({ $0.value >= 0x20 && $0.value != 0x7F }) else {
            throw Failure(.notOneLine, path)
        }
        return token
    }
}
