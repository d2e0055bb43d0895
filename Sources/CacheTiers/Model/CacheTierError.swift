/// A failure of one tier, classified so the ``TierChain`` knows what to do next.
///
/// The chain acts on ``kind``: it retries transient, timeout, stalled and corrupt
/// failures, moves to the next tier on a miss or unauthorized, and stops on fatal.
/// ``message`` is written for the person reading the log at 3 a.m.: what failed,
/// where, and what to do about it.
public struct CacheTierError: Error, CustomStringConvertible {
    /// What kind of failure this is. New kinds may be added; switch with a default.
    public struct Kind: Hashable, Sendable, CustomStringConvertible {
        enum Code: String, Sendable {
            case miss, transient, timeout, stalled, corrupt, unauthorized, fatal
        }

        let code: Code

        /// The tier does not have the key.
        public static let miss = Kind(code: .miss)
        /// A failure that may pass: connection refused or reset, 5xx, 429.
        public static let transient = Kind(code: .transient)
        /// The attempt ran out of time.
        public static let timeout = Kind(code: .timeout)
        /// The attempt stopped making progress and was cancelled.
        public static let stalled = Kind(code: .stalled)
        /// The bytes failed verification: a checksum, a truncated or malformed archive.
        public static let corrupt = Kind(code: .corrupt)
        /// Credentials were missing or refused; retrying will not help.
        public static let unauthorized = Kind(code: .unauthorized)
        /// Nothing any tier can do will help (the destination is not writable, say).
        public static let fatal = Kind(code: .fatal)

        /// Whether the chain retries a failure of this kind within the same tier.
        public var isRetryable: Bool {
            switch code {
            case .transient, .timeout, .stalled, .corrupt: true
            case .miss, .unauthorized, .fatal: false
            }
        }

        public var description: String { code.rawValue }
    }

    public var kind: Kind
    /// The name of the tier that failed, when the failure belongs to one.
    public var tier: String?
    /// A sentence a person can act on.
    public var message: String
    /// The error that caused this one, if any.
    public var underlying: (any Error)?
    /// How long the server asked us to wait before trying again (HTTP Retry-After).
    public var retryAfter: Duration?
    /// For corrupt input: the byte offset in the archive stream where it was detected.
    public var offset: Int64?

    public init(
        _ kind: Kind,
        tier: String? = nil,
        _ message: String,
        underlying: (any Error)? = nil,
        retryAfter: Duration? = nil,
        offset: Int64? = nil
    ) {
        self.kind = kind
        self.tier = tier
        self.message = message
        self.underlying = underlying
        self.retryAfter = retryAfter
        self.offset = offset
    }

    /// One line of printable text, whatever the message quotes: a hostile server's error
    /// body, a file name, a cause's description. Control characters are shown as
    /// `\u{1B}` and line breaks as spaces, so neither a terminal escape nor a forged log
    /// line reaches the operator's screen, the log or the report.
    public var description: String {
        var text = tier.map { "\($0): " } ?? ""
        text += message
        if let offset, !message.contains("offset") { text += " (at byte offset \(offset))" }
        if let underlying, !(underlying is CancellationError) {
            let cause = String(describing: underlying)
            if !message.contains(cause) { text += " [cause: \(cause)]" }
        }
        return text.printableOnOneLine
    }

    /// Returns a copy naming `tier`, unless a tier is already named.
    func attributed(to tier: String) -> CacheTierError {
        var copy = self
        if copy.tier == nil { copy.tier = tier }
        return copy
    }
}

extension String {
    /// The string with line breaks as spaces and every other control character (C0, DEL,
    /// C1), line or paragraph separator (U+2028, U+2029) and invisible format character
    /// (bidi overrides such as U+202E, zero-width ones such as U+200B) written out as `\u{XX}`.
    package var printableOnOneLine: String {
        guard unicodeScalars.contains(where: \.isControl) else { return self }
        var result = String.UnicodeScalarView()
        for scalar in unicodeScalars {
            if !scalar.isControl {
                result.append(scalar)
            } else if scalar == "\n" || scalar == "\r" || scalar == "\t" {
                result.append(" ")
            } else {
                result.append(contentsOf: "\\u{\(String(scalar.value, radix: 16, uppercase: true))}".unicodeScalars)
            }
        }
        return String(result)
    }
}

extension Unicode.Scalar {
    fileprivate var isControl: Bool {
        value < 0x20 || (0x7F...0x9F).contains(value)
            || [.format, .lineSeparator, .paragraphSeparator].contains(properties.generalCategory)
    }
}
