/// The rules an entry of a cache archive must follow, in one place: the extractor
/// refuses what breaks them, and the packer refuses (or skips) the same entries before
/// they reach an archive, so `pack`, `publish` and write-back never produce an archive
/// that every restore rejects.
struct EntryRules: Sendable {
    var limits: ExtractionLimits

    /// Why an entry breaks a rule.
    struct Violation: Error, Sendable {
        enum Kind: Sendable {
            /// It could write or point outside the tree.
            case unsafe
            /// It exceeds one of the ``ExtractionLimits``.
            case limit
        }

        var kind: Kind
        var message: String
    }

    /// The path an entry names, relative to the root, with `.` and empty components
    /// removed; nil for the root itself. Refuses absolute paths, `..` components, NUL
    /// bytes and paths over ``ExtractionLimits/maxPathLength``.
    func relativePath(_ path: PathBytes) throws(Violation) -> PathBytes? {
        if path.hasPrefix(PathBytes.slash) {
            throw Violation(kind: .unsafe, message: "the entry '\(path)' has an absolute path; archives must hold relative paths")
        }
        let relative: PathBytes
        if Self.isCanonical(path) {
            relative = path
        } else {
            var components: [ArraySlice<UInt8>] = []
            for component in path.bytes.split(separator: PathBytes.slash, omittingEmptySubsequences: true)
            where !component.elementsEqual([UInt8(ascii: ".")]) {
                if component.elementsEqual([UInt8(ascii: "."), UInt8(ascii: ".")]) {
                    throw Violation(kind: .unsafe, message: "the entry '\(path)' has a '..' component that could escape the destination")
                }
                components.append(component)
            }
            if components.isEmpty { return nil }
            relative = PathBytes(Array(components.joined(separator: [PathBytes.slash])))
        }
        if relative.bytes.contains(0) {
            throw Violation(kind: .unsafe, message: "the entry '\(path)' has a NUL byte in its path")
        }
        try checkPathLength(relative.bytes)
        return relative
    }

    /// Whether `path` has no empty, `.` or `..` component (the common case, checked without allocating).
    private static func isCanonical(_ path: PathBytes) -> Bool {
        var componentLength = 0
        var dots = 0
        for byte in path.bytes {
            if byte == PathBytes.slash {
                if componentLength == 0 || componentLength == dots { return false }
                componentLength = 0
                dots = 0
            } else {
                componentLength += 1
                if byte == UInt8(ascii: ".") { dots += 1 }
            }
        }
        return componentLength > 0 && !(componentLength == dots && dots <= 2)
    }

    /// Refuses a relative path longer than ``ExtractionLimits/maxPathLength`` bytes.
    func checkPathLength(_ relative: some Collection<UInt8>) throws(Violation) {
        guard relative.count <= limits.maxPathLength else {
            throw Violation(
                kind: .limit,
                message: "the entry path '\(Self.display(relative.prefix(80)))…' is \(relative.count) bytes; the limit is \(limits.maxPathLength)"
            )
        }
    }

    /// Accepts relative targets whose `..` components all lead (`../pkg/bin/x`) and do
    /// not climb above the root. Every accepted link then resolves inside the tree,
    /// whatever other links it passes through, since no path climbs after descending.
    func checkSymlink(_ relative: some Collection<UInt8>, target: some Collection<UInt8>) throws(Violation) {
        let slash = UInt8(ascii: "/")
        let dot = UInt8(ascii: ".")
        guard !target.isEmpty else {
            throw Violation(kind: .unsafe, message: "the symlink '\(Self.display(relative))' has an empty target")
        }
        if target.first == slash {
            throw Violation(
                kind: .unsafe,
                message: "the symlink '\(Self.display(relative))' points to the absolute path '\(Self.display(target))', outside the tree"
            )
        }
        let depth = relative.split(separator: slash).count - 1
        var climbs = 0
        var descended = false
        for component in target.split(separator: slash, omittingEmptySubsequences: true) {
            if component.elementsEqual([dot]) { continue }
            if component.elementsEqual([dot, dot]) {
                if descended {
                    throw Violation(
                        kind: .unsafe,
                        message: "the symlink '\(Self.display(relative))' -> '\(Self.display(target))' has '..' after a name; only leading '..' are accepted"
                    )
                }
                climbs += 1
                if climbs > depth {
                    throw Violation(
                        kind: .unsafe,
                        message: "the symlink '\(Self.display(relative))' -> '\(Self.display(target))' points outside the tree"
                    )
                }
            } else {
                descended = true
            }
        }
    }

    /// Refuses the entry that takes the count over ``ExtractionLimits/maxEntries``.
    func checkEntryCount(_ count: Int) throws(Violation) {
        guard count <= limits.maxEntries else {
            throw Violation(kind: .limit, message: "the archive holds more than \(limits.maxEntries) entries, the configured limit")
        }
    }

    /// Adds `count` bytes of contents to `total`, refusing a sum over
    /// ``ExtractionLimits/maxTotalBytes`` (or over what an Int64 holds: sizes come from
    /// the archive).
    func addBytes(_ count: Int64, to total: inout Int64) throws(Violation) {
        let (sum, overflow) = total.addingReportingOverflow(count)
        guard !overflow, sum <= limits.maxTotalBytes else {
            throw Violation(
                kind: .limit,
                message: "the archive unpacks to more than \(limits.maxTotalBytes) bytes, the configured limit (a decompression bomb?)"
            )
        }
        total = sum
    }

    /// A path's bytes for a message: UTF-8 as it is, any other byte as `\xNN`.
    static func display(_ bytes: some Collection<UInt8>) -> String {
        var result = ""
        var index = bytes.startIndex
        while index < bytes.endIndex {
            var iterator = bytes[index...].makeIterator()
            var decoder = UTF8()
            switch decoder.decode(&iterator) {
            case .scalarValue(let scalar):
                result.unicodeScalars.append(scalar)
                index = bytes.index(index, offsetBy: String(scalar).utf8.count)
            case .error, .emptyInput:
                result += "\\x" + String(bytes[index], radix: 16, uppercase: true).leftPadded(to: 2)
                index = bytes.index(after: index)
            }
        }
        return result
    }
}

extension String {
    fileprivate func leftPadded(to width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}
