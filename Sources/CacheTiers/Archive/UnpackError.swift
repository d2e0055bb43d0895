#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Why the archive engine could not unpack an archive, in the engine's own terms.
///
/// What a failure means for a restore (a full disk stops the chain, a damaged archive
/// is retried, an archive that vanished is a miss) is not the engine's call: a
/// ``TierChain`` decides it, once, for every tier.
public struct UnpackError: Error, CustomStringConvertible {
    /// What went wrong.
    public struct Kind: Hashable, Sendable, CustomStringConvertible {
        enum Code: String, Sendable {
            case corrupt, rejected, filesystem
        }

        let code: Code

        /// The bytes are not a valid archive (truncated, malformed), or not the one
        /// expected (size, SHA-256).
        public static let corrupt = Kind(code: .corrupt)
        /// The archive is well formed but refused: an unsafe entry, or one past a
        /// configured limit.
        public static let rejected = Kind(code: .rejected)
        /// The filesystem refused, writing the tree or reading the archive file; ``UnpackError/errno`` says why.
        public static let filesystem = Kind(code: .filesystem)

        public var description: String { code.rawValue }
    }

    public var kind: Kind
    /// A sentence a person can act on.
    public var message: String
    /// For corrupt and rejected archives: the byte offset in the stream where it was found.
    public var offset: Int64?
    /// For filesystem failures: the `errno` the system call set.
    public var errno: Int32?
    /// The engine's own error that caused this one, if any.
    public var underlying: (any Error)?

    public init(_ kind: Kind, _ message: String, offset: Int64? = nil, errno: Int32? = nil, underlying: (any Error)? = nil) {
        self.kind = kind
        self.message = message
        self.offset = offset
        self.errno = errno
        self.underlying = underlying
    }

    public var description: String {
        guard let offset, !message.contains("offset") else { return message }
        return "\(message) (at byte offset \(offset))"
    }
}

extension UnpackError {
    /// The extractor's and the decoders' errors, described for the person reading them.
    init(_ error: ExtractionError) {
        switch error {
        case .corrupt(let message, let offset):
            self.init(.corrupt, "the archive is corrupt: \(message)", offset: offset, underlying: error)
        case .unsafe(let message, let offset), .limit(let message, let offset):
            self.init(.rejected, "the archive was rejected: \(message)", offset: offset, underlying: error)
        case .io(_, let code):
            self.init(.filesystem, "cannot write the restored tree: \(error)", errno: code, underlying: error)
        }
    }

    init(_ error: CompressionError) {
        self.init(.corrupt, "the archive is corrupt: \(error.message)", offset: error.offset, underlying: error)
    }

    /// `error` as an ``UnpackError`` when it is one of the engine's own; other errors
    /// (cancellation) pass through.
    static func describing(_ error: any Error) -> any Error {
        switch error {
        case let error as ExtractionError: return UnpackError(error)
        case let error as CompressionError: return UnpackError(error)
        default: return error
        }
    }
}
