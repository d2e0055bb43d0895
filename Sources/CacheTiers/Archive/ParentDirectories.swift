#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Proves that every ancestor of an entry is a real directory, creating the missing
/// ones, so nothing is ever written through a symlink or below a file.
///
/// It remembers the last parent it proved. Directories are never replaced during an
/// extraction, so that parent's prefixes stay proven; anything else is checked on disk,
/// where a symlink cannot pass for a directory. Memory stays flat however many entries
/// the archive holds, and a tree written in order costs one comparison per entry.
struct ParentDirectories {
    private let tree: ExtractionTree
    private var lastVerified: PathBytes = ""

    init(tree: ExtractionTree) {
        self.tree = tree
    }

    /// Makes sure every ancestor of `relative` is a real directory.
    /// - Returns: how many directories it created.
    mutating func prepare(_ relative: PathBytes, offset: Int64) throws(ExtractionError) -> Int {
        guard let parent = relative.parent else { return 0 }
        if parent == lastVerified { return 0 }
        // The prefix shared with the last proven parent is proven already.
        let bytes = parent.bytes
        let proven = Self.commonDirectoryPrefixLength(bytes, lastVerified.bytes)
        var start = proven == 0 ? 0 : min(proven + 1, bytes.count)
        var created = 0
        while start < bytes.count {
            let next = bytes[start...].firstIndex(of: PathBytes.slash) ?? bytes.count
            if try ensureDirectory(PathBytes(Array(bytes[..<next])), for: relative, offset: offset) { created += 1 }
            if next == bytes.count { break }
            start = next + 1
        }
        lastVerified = parent
        return created
    }

    /// Records that `directory` is a real directory whose ancestors are proven (the
    /// extractor just made it), so the entries inside it need no check.
    mutating func proved(_ directory: PathBytes) {
        lastVerified = directory
    }

    /// Creates `ancestor` as a directory, or proves on disk that it is one.
    /// - Returns: whether it created it.
    private func ensureDirectory(_ ancestor: PathBytes, for relative: PathBytes, offset: Int64) throws(ExtractionError) -> Bool {
        if try tree.makeDirectory(ancestor) { return true }
        switch tree.kind(of: ancestor) {
        case S_IFDIR:
            return false
        case S_IFLNK:
            throw .unsafe("the entry '\(relative)' would be written through the symlink '\(ancestor)'", offset: offset)
        default:
            throw .unsafe("the entry '\(relative)' would be written below the file '\(ancestor)'", offset: offset)
        }
    }

    /// The length in bytes of the longest common prefix of two paths that ends at a
    /// component boundary.
    private static func commonDirectoryPrefixLength(_ a: [UInt8], _ b: [UInt8]) -> Int {
        a.withUnsafeBufferPointer { a in
            b.withUnsafeBufferPointer { b in
                let slash = PathBytes.slash
                var index = 0
                var boundary = 0
                let shorter = min(a.count, b.count)
                while index < shorter, a[index] == b[index] {
                    if a[index] == slash { boundary = index }
                    index += 1
                }
                let aEnds = index == a.count || a[index] == slash
                let bEnds = index == b.count || b[index] == slash
                return aEnds && bEnds ? index : boundary
            }
        }
    }
}
