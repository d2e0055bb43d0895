import Foundation

/// A size limit as operators write it: whole bytes with an optional `K`, `M`, `G` or `T`
/// suffix, powers of 1024 (`50G` is 50 × 2³⁰ bytes). What `serve --max-size` and a
/// directory tier's `"maxSize"` take.
public struct StorageSize: Sendable, Hashable, Comparable, CustomStringConvertible {
    public var bytes: Int64

    public init(bytes: Int64) {
        self.bytes = bytes
    }

    /// Parses `50G`, `512M`, `1048576`: digits, then at most one suffix letter (either case).
    /// - Throws: ``RetentionUnitError`` naming the grammar; a size of 0, or one past
    ///   `Int64.max` bytes, is refused too.
    public init(parsing text: String) throws(RetentionUnitError) {
        let grammar = "give whole bytes with an optional K, M, G or T suffix (powers of 1024), like 50G"
        var digits = Substring(text)
        var shift: Int64 = 0
        if let last = digits.last, let power = ["K": 10, "M": 20, "G": 30, "T": 40][last.uppercased()] {
            shift = Int64(power)
            digits = digits.dropLast()
        }
        guard let number = RetentionUnitError.wholeNumber(digits) else {
            throw RetentionUnitError("\(RetentionUnitError.quoted(text)) is not a size: \(grammar)")
        }
        guard number > 0 else { throw RetentionUnitError("a size must be more than 0 bytes; \(grammar)") }
        guard number <= Int64.max >> shift else {
            throw RetentionUnitError("\(RetentionUnitError.quoted(text)) is more bytes than a disk holds; \(grammar)")
        }
        bytes = number << shift
    }

    public static func < (lhs: StorageSize, rhs: StorageSize) -> Bool { lhs.bytes < rhs.bytes }

    /// The largest exact suffix form: `50G`, `1536M`, `1000`.
    public var description: String {
        for (suffix, shift) in [("T", 40), ("G", 30), ("M", 20), ("K", 10)] where bytes % (1 << shift) == 0 {
            return "\(bytes >> shift)\(suffix)"
        }
        return "\(bytes)"
    }
}

/// An age as operators write it: a whole number with `m` (minutes), `h` (hours) or `d`
/// (days), like `30d`. What `serve --max-age-unused`, `--min-age` and a directory
/// tier's `"maxAgeUnused"` and `"minAge"` take. `0m` is allowed (no minimum).
public struct RetentionAge: Sendable, Hashable, Comparable, CustomStringConvertible {
    public var seconds: Int64

    public init(seconds: Int64) {
        self.seconds = seconds
    }

    /// The longest age accepted: 100 years, so every date arithmetic stays finite.
    static let maximumSeconds: Int64 = 100 * 365 * 86_400

    public init(parsing text: String) throws(RetentionUnitError) {
        let grammar = "give a whole number with m (minutes), h (hours) or d (days), like 30d"
        guard let last = text.last, let unit = ["m": Int64(60), "h": 3600, "d": 86_400][String(last)],
            let number = RetentionUnitError.wholeNumber(text.dropLast())
        else {
            throw RetentionUnitError("\(RetentionUnitError.quoted(text)) is not an age: \(grammar)")
        }
        guard number <= Self.maximumSeconds / unit else {
            throw RetentionUnitError("\(RetentionUnitError.quoted(text)) is more than 100 years; \(grammar)")
        }
        seconds = number * unit
    }

    public var duration: Duration { .seconds(seconds) }
    public var timeInterval: TimeInterval { TimeInterval(seconds) }

    public static func < (lhs: RetentionAge, rhs: RetentionAge) -> Bool { lhs.seconds < rhs.seconds }

    /// The largest exact unit: `30d`, `90m`.
    public var description: String {
        if seconds % 86_400 == 0 { return "\(seconds / 86_400)d" }
        if seconds % 3600 == 0 { return "\(seconds / 3600)h" }
        return "\(seconds / 60)m"
    }
}

/// A size or age that does not parse: one line saying what the grammar is.
public struct RetentionUnitError: Error, Hashable, CustomStringConvertible {
    public var description: String

    init(_ description: String) {
        self.description = description
    }

    /// ASCII digits only (no sign, space or fraction), at most 18 of them so the value fits.
    static func wholeNumber(_ text: Substring) -> Int64? {
        guard !text.isEmpty, text.utf8.count <= 18, text.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }) else {
            return nil
        }
        return Int64(text)
    }

    /// `text` quoted for a message, cut at 40 characters so a hostile value cannot flood a log line.
    static func quoted(_ text: String) -> String {
        text.count > 40 ? "\"\(text.prefix(40))…\"" : "\"\(text)\""
    }
}
