/// A path or name as the bytes the file system holds. On Linux a name is any bytes but
/// `/` and NUL, not necessarily UTF-8 (a Latin-1 `café.js` from an old tool), so the
/// archive engine never turns one into a `String`: that would drop it or replace its
/// bytes with U+FFFD, and two names could become one.
struct PathBytes: Hashable, Comparable, Sendable, CustomStringConvertible, ExpressibleByStringLiteral {
    var bytes: [UInt8]

    init(_ bytes: [UInt8]) {
        self.bytes = bytes
    }

    init<Bytes: Sequence<UInt8>>(_ bytes: Bytes) {
        self.bytes = Array(bytes)
    }

    init(_ string: String) {
        self.bytes = Array(string.utf8)
    }

    init(stringLiteral value: String) {
        self.init(value)
    }

    static let slash = UInt8(ascii: "/")

    var isEmpty: Bool { bytes.isEmpty }
    var count: Int { bytes.count }

    /// For messages: UTF-8 as it is, any other byte as `\xNN`.
    var description: String { EntryRules.display(bytes) }

    /// Byte order, as `ls` in the C locale sorts.
    static func < (a: PathBytes, b: PathBytes) -> Bool {
        a.bytes.lexicographicallyPrecedes(b.bytes)
    }

    /// `self/component`, or `component` when `self` is empty.
    func appending(_ component: PathBytes) -> PathBytes {
        if bytes.isEmpty { return component }
        var joined = bytes
        joined.reserveCapacity(bytes.count + 1 + component.bytes.count)
        joined.append(Self.slash)
        joined.append(contentsOf: component.bytes)
        return PathBytes(joined)
    }

    /// Everything before the last `/`, or nil for a single component.
    var parent: PathBytes? {
        guard let slash = bytes.lastIndex(of: Self.slash) else { return nil }
        return PathBytes(Array(bytes[..<slash]))
    }

    /// Whether `ancestor` is a proper ancestor of `self`, component-wise.
    func isInside(_ ancestor: PathBytes) -> Bool {
        bytes.count > ancestor.bytes.count && bytes.starts(with: ancestor.bytes) && bytes[ancestor.bytes.count] == Self.slash
    }

    func hasPrefix(_ prefix: UInt8) -> Bool { bytes.first == prefix }
    func hasSuffix(_ suffix: UInt8) -> Bool { bytes.last == suffix }

    /// Hashes the bytes in one go, not byte by byte: paths are the keys of the writer
    /// pool's table of files in flight.
    func hash(into hasher: inout Hasher) {
        bytes.withUnsafeBytes { hasher.combine(bytes: $0) }
    }

    /// NUL-terminated, for a system call.
    var cString: [CChar] {
        Self.cString(bytes.count + 1) { raw in
            bytes.withUnsafeBytes { raw.copyMemory(from: $0) }
        }
    }

    /// `count` bytes filled by `fill` (which leaves the last one), then a NUL.
    private static func cString(_ count: Int, _ fill: (UnsafeMutableRawBufferPointer) -> Void) -> [CChar] {
        [CChar](unsafeUninitializedCapacity: count) { buffer, initialized in
            let raw = UnsafeMutableRawBufferPointer(buffer)
            fill(raw)
            raw[count - 1] = 0
            initialized = count
        }
    }
}
