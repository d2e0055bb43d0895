import Foundation
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// What a directory tree holds, for comparing trees in tests: every entry's type,
/// permission bits, contents or link target (and, optionally, mtime).
public struct TreeSnapshot: Sendable, Hashable, CustomStringConvertible {
    public enum Entry: Sendable, Hashable {
        case directory(mode: UInt16)
        case file(mode: UInt16, contents: [UInt8])
        case symlink(target: String)
        case other
    }

    /// Entries by path relative to the root, with `/` separators.
    public var entries: [String: Entry]
    /// Modification times in whole seconds, by path (files and directories).
    public var modificationTimes: [String: Int]

    /// Reads the tree below `root` (the root itself is not an entry).
    public init(of root: FilePath) throws {
        var entries: [String: Entry] = [:]
        var times: [String: Int] = [:]
        func walk(_ relative: String) throws {
            let directory = relative.isEmpty ? root.string : root.string + "/" + relative
            let names = try FileManager.default.contentsOfDirectory(atPath: directory).sorted()
            for name in names {
                let path = relative.isEmpty ? name : relative + "/" + name
                let full = root.string + "/" + path
                var info = stat()
                guard lstat(full, &info) == 0 else { throw POSIXError(.init(rawValue: errno) ?? .EIO) }
                let mode = UInt16(info.st_mode & 0o7777)
                switch info.st_mode & S_IFMT {
                case S_IFDIR:
                    entries[path] = .directory(mode: mode)
                    times[path] = Int(info.st_mtim.tv_sec)
                    try walk(path)
                case S_IFREG:
                    let data = try Data(contentsOf: URL(fileURLWithPath: full))
                    entries[path] = .file(mode: mode, contents: Array(data))
                    times[path] = Int(info.st_mtim.tv_sec)
                case S_IFLNK:
                    entries[path] = .symlink(target: try FileManager.default.destinationOfSymbolicLink(atPath: full))
                default:
                    entries[path] = .other
                }
            }
        }
        try walk("")
        self.entries = entries
        self.modificationTimes = times
    }

    public var fileCount: Int {
        entries.values.filter { if case .file = $0 { true } else { false } }.count
    }

    /// The paths that differ from `other`, with what differs; empty when equal.
    public func differences(from other: TreeSnapshot, comparingTimes: Bool = false) -> [String] {
        var out: [String] = []
        for path in Set(entries.keys).union(other.entries.keys).sorted() {
            switch (entries[path], other.entries[path]) {
            case (nil, _): out.append("\(path): only in the other tree")
            case (_, nil): out.append("\(path): missing from the other tree")
            case let (mine?, theirs?) where mine != theirs:
                out.append("\(path): \(Self.summary(mine)) vs \(Self.summary(theirs))")
            default:
                if comparingTimes, modificationTimes[path] != other.modificationTimes[path] {
                    out.append("\(path): mtime \(modificationTimes[path] ?? -1) vs \(other.modificationTimes[path] ?? -1)")
                }
            }
        }
        return out
    }

    private static func summary(_ entry: Entry) -> String {
        switch entry {
        case .directory(let mode): "directory \(String(mode, radix: 8))"
        case .file(let mode, let contents): "file \(String(mode, radix: 8)) \(contents.count) bytes"
        case .symlink(let target): "symlink -> \(target)"
        case .other: "special file"
        }
    }

    public var description: String {
        "TreeSnapshot(\(entries.count) entries, \(fileCount) files)"
    }
}
