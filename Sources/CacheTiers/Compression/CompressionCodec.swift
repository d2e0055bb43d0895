/// A streaming compression format: feed chunks in, receive chunks out, finish.
///
/// Encoders and decoders are single-owner objects: use one from one task or thread
/// at a time. They hand their output to a closure as they produce it, so a tier can
/// decode while bytes arrive and never holds a whole archive in memory.
public protocol CompressionCodec: Sendable {
    /// The name recorded in manifests: `zstd`, `identity`.
    var name: String { get }
    /// The level recorded in manifests, when the codec has levels.
    var level: Int? { get }

    func makeEncoder() throws(CompressionError) -> any StreamEncoder
    func makeDecoder() throws(CompressionError) -> any StreamDecoder
}

/// Compresses a stream.
public protocol StreamEncoder: AnyObject {
    /// Compresses `input`, passing any compressed bytes ready so far to `output`.
    func encode(_ input: UnsafeRawBufferPointer, output: (UnsafeRawBufferPointer) throws -> Void) throws
    /// Flushes everything and ends the stream.
    func finish(output: (UnsafeRawBufferPointer) throws -> Void) throws
}

/// Decompresses a stream.
public protocol StreamDecoder: AnyObject {
    /// Decompresses `input`, passing decompressed bytes to `output` as they come.
    /// - Throws: ``CompressionError`` for malformed input, with the offset in the stream.
    func decode(_ input: UnsafeRawBufferPointer, output: (UnsafeRawBufferPointer) throws -> Void) throws
    /// Decompresses from the start of `input` until at least `budget` bytes came out or
    /// no more can come without more input, so a few compressed bytes never turn into
    /// gigabytes at once.
    /// - Returns: how many bytes of `input` it used, and whether it stopped for the
    ///   budget with output still to come (call again, with the rest of the input or
    ///   none).
    func decode(_ input: UnsafeRawBufferPointer, budget: Int, output: (UnsafeRawBufferPointer) throws -> Void) throws
        -> DecodeStep
    /// Checks that the stream ended where a stream may end.
    /// - Throws: ``CompressionError`` when the input stopped in the middle of a frame.
    func finish() throws
}

/// What one bounded ``StreamDecoder/decode(_:budget:output:)`` call did.
public struct DecodeStep: Sendable, Hashable {
    /// Bytes of the input used.
    public var consumed: Int
    /// Whether output is still to come from the input used so far.
    public var hasMoreOutput: Bool

    public init(consumed: Int, hasMoreOutput: Bool) {
        self.consumed = consumed
        self.hasMoreOutput = hasMoreOutput
    }
}

extension StreamDecoder {
    /// For decoders that cannot stop early: decodes all of `input` (unbounded).
    public func decode(_ input: UnsafeRawBufferPointer, budget: Int, output: (UnsafeRawBufferPointer) throws -> Void) throws
        -> DecodeStep
    {
        try decode(input, output: output)
        return DecodeStep(consumed: input.count, hasMoreOutput: false)
    }
}

/// A failure of a codec, with the library's own message.
public struct CompressionError: Error, CustomStringConvertible, Hashable {
    public var message: String
    /// Where in the compressed stream it was detected, when known.
    public var offset: Int64?

    public init(_ message: String, offset: Int64? = nil) {
        self.message = message
        self.offset = offset
    }

    public var description: String {
        offset.map { "\(message) (at compressed byte offset \($0))" } ?? message
    }
}

/// The formats an archive stream can arrive in, recognised from its first bytes.
public enum CompressionFormat: String, Sendable, Hashable {
    case zstd
    /// An uncompressed tar stream.
    case identity

    /// Bytes needed to tell the formats apart.
    public static let detectionLength = 4

    /// Recognises the format from the first bytes of a stream.
    /// - Throws: ``CompressionError`` naming what the bytes look like instead.
    public static func detect(_ prefix: UnsafeRawBufferPointer) throws(CompressionError) -> CompressionFormat {
        guard prefix.count >= 4 else {
            throw CompressionError("the archive is only \(prefix.count) bytes long; too short to be a cache archive")
        }
        let magic = UInt32(prefix[0]) | UInt32(prefix[1]) << 8 | UInt32(prefix[2]) << 16 | UInt32(prefix[3]) << 24
        if magic == 0xFD2F_B528 || magic & 0xFFFF_FFF0 == 0x184D_2A50 {
            return .zstd
        }
        if prefix[0] == 0x1F && prefix[1] == 0x8B {
            throw CompressionError("the archive is gzip-compressed; CacheTiers reads zstd or plain tar: repack it with `tar --zstd -cf`")
        }
        if magic == 0x587A_37FD || (prefix[0] == 0x42 && prefix[1] == 0x5A && prefix[2] == 0x68) {
            throw CompressionError("the archive is xz- or bzip2-compressed; CacheTiers reads zstd or plain tar: repack it with `tar --zstd -cf`")
        }
        // Anything else is taken as plain tar; the tar reader verifies header checksums.
        return .identity
    }

    /// A decoder for this format.
    public func makeDecoder() throws(CompressionError) -> any StreamDecoder {
        switch self {
        case .zstd: try ZstdDecoder()
        case .identity: IdentityCoder()
        }
    }
}

/// No compression: bytes pass through unchanged.
public struct IdentityCodec: CompressionCodec {
    public init() {}
    public var name: String { "identity" }
    public var level: Int? { nil }
    public func makeEncoder() -> any StreamEncoder { IdentityCoder() }
    public func makeDecoder() -> any StreamDecoder { IdentityCoder() }
}

final class IdentityCoder: StreamEncoder, StreamDecoder {
    func encode(_ input: UnsafeRawBufferPointer, output: (UnsafeRawBufferPointer) throws -> Void) throws {
        if !input.isEmpty { try output(input) }
    }

    func finish(output: (UnsafeRawBufferPointer) throws -> Void) throws {}

    func decode(_ input: UnsafeRawBufferPointer, output: (UnsafeRawBufferPointer) throws -> Void) throws {
        if !input.isEmpty { try output(input) }
    }

    func decode(_ input: UnsafeRawBufferPointer, budget: Int, output: (UnsafeRawBufferPointer) throws -> Void) throws
        -> DecodeStep
    {
        let take = min(input.count, max(1, budget))
        if take > 0 { try output(UnsafeRawBufferPointer(rebasing: input[..<take])) }
        return DecodeStep(consumed: take, hasMoreOutput: false)
    }

    func finish() throws {}
}
