import Foundation
internal import CZstd

/// Zstandard through libzstd: fast levels, multithreaded compression, frame checksums.
///
/// Level 1 is the default for a reason: the production analysis behind CacheTiers saw
/// a cache transfer take 171 s at level 19 and 60-80 s at level 1, for about 10 % more
/// bytes, because level 19 costs minutes of CPU.
public struct ZstdCodec: CompressionCodec, Hashable {
    /// 1 to ``maximumLevel`` (22), or a fast negative level down to ``minimumLevel``
    /// (-131072); 0 is not a level. See ``levelRange``.
    public var compressionLevel: Int
    /// Compression worker threads; 0 means one per core.
    public var threads: Int
    /// log2 of the long-distance-matching window (e.g. 27 for 128 MiB); `nil` for off.
    /// Decoders need a window at least this large; the default limit is 27.
    public var longDistanceWindowLog: Int?

    public init(level: Int = 1, threads: Int = 0, longDistanceWindowLog: Int? = nil) {
        self.compressionLevel = level
        self.threads = threads
        self.longDistanceWindowLog = longDistanceWindowLog
    }

    public var name: String { "zstd" }
    public var level: Int? { compressionLevel }

    /// The fastest (most negative) level libzstd accepts.
    public static var minimumLevel: Int { Int(ZSTD_minCLevel()) }
    /// The strongest level libzstd accepts.
    public static var maximumLevel: Int { Int(ZSTD_maxCLevel()) }
    /// Whether libzstd accepts `level` (CacheTiers records the level in manifests, so
    /// libzstd's 0, "the default", is refused rather than recorded as 0).
    public static func isValidLevel(_ level: Int) -> Bool {
        level != 0 && (minimumLevel...maximumLevel).contains(level)
    }

    /// The levels ``isValidLevel(_:)`` accepts, as every message and help text says them:
    /// `1 to 22, or -131072 to -1 for the fast levels`.
    public static var levelRange: String { "1 to \(maximumLevel), or \(minimumLevel) to -1 for the fast levels" }
    /// The libzstd version in use, e.g. `1.5.4`.
    public static var libraryVersion: String { String(cString: ZSTD_versionString()) }

    public func makeEncoder() throws(CompressionError) -> any StreamEncoder {
        guard Self.isValidLevel(compressionLevel) else {
            throw CompressionError("zstd level \(compressionLevel) is out of range; use \(Self.levelRange)")
        }
        let workers = threads == 0 ? ProcessInfo.processInfo.activeProcessorCount : threads
        return try ZstdEncoder(level: compressionLevel, workers: workers, longWindowLog: longDistanceWindowLog)
    }

    public func makeDecoder() throws(CompressionError) -> any StreamDecoder {
        try ZstdDecoder()
    }
}

/// Maps a libzstd return code to an error carrying the library's message.
@inline(__always)
private func check(_ code: Int, _ what: String, offset: Int64? = nil) throws(CompressionError) -> Int {
    if ZSTD_isError(code) != 0 {
        throw CompressionError("zstd \(what) failed: \(String(cString: ZSTD_getErrorName(code)))", offset: offset)
    }
    return code
}

/// Owns one `ZSTD_CCtx`, freed in deinit.
final class ZstdEncoder: StreamEncoder {
    private let context: OpaquePointer
    private let buffer: UnsafeMutableRawBufferPointer

    init(level: Int, workers: Int, longWindowLog: Int?) throws(CompressionError) {
        guard let context = ZSTD_createCCtx() else { throw CompressionError("zstd could not allocate a compression context") }
        self.context = context
        self.buffer = .allocate(byteCount: ZSTD_CStreamOutSize() * 4, alignment: 16)
        try set(ZSTD_c_compressionLevel, level, "setting the level")
        try set(ZSTD_c_checksumFlag, 1, "enabling frame checksums")
        if workers > 0 {
            // Fails only where libzstd was built without threads; compression still works.
            _ = ZSTD_CCtx_setParameter(context, ZSTD_c_nbWorkers, Int32(workers))
        }
        if let longWindowLog {
            try set(ZSTD_c_enableLongDistanceMatching, 1, "enabling long-distance matching")
            try set(ZSTD_c_windowLog, longWindowLog, "setting the window log")
        }
    }

    deinit {
        ZSTD_freeCCtx(context)
        buffer.deallocate()
    }

    private func set(_ parameter: ZSTD_cParameter, _ value: Int, _ what: String) throws(CompressionError) {
        _ = try check(ZSTD_CCtx_setParameter(context, parameter, Int32(value)), what)
    }

    func encode(_ input: UnsafeRawBufferPointer, output: (UnsafeRawBufferPointer) throws -> Void) throws {
        var source = ZSTD_inBuffer(src: input.baseAddress, size: input.count, pos: 0)
        while source.pos < source.size {
            var target = ZSTD_outBuffer(dst: buffer.baseAddress, size: buffer.count, pos: 0)
            _ = try check(ZSTD_compressStream2(context, &target, &source, ZSTD_e_continue), "compression")
            if target.pos > 0 { try output(UnsafeRawBufferPointer(rebasing: buffer[..<target.pos])) }
        }
    }

    func finish(output: (UnsafeRawBufferPointer) throws -> Void) throws {
        var source = ZSTD_inBuffer(src: nil, size: 0, pos: 0)
        var remaining = 0
        repeat {
            var target = ZSTD_outBuffer(dst: buffer.baseAddress, size: buffer.count, pos: 0)
            remaining = try check(ZSTD_compressStream2(context, &target, &source, ZSTD_e_end), "finishing the frame")
            if target.pos > 0 { try output(UnsafeRawBufferPointer(rebasing: buffer[..<target.pos])) }
        } while remaining != 0
    }
}

/// Owns one `ZSTD_DCtx`, freed in deinit. Reads any standard zstd stream, including
/// the multi-frame output of `zstd -T0` and skippable frames.
final class ZstdDecoder: StreamDecoder {
    private let context: OpaquePointer
    private let buffer: UnsafeMutableRawBufferPointer
    private var consumed: Int64 = 0
    /// libzstd's last hint: 0 exactly when the input so far ends on a frame boundary.
    private var pending = 0
    private var sawInput = false
    /// The last call filled the output buffer: libzstd may hold more output.
    private var outputFull = false

    init() throws(CompressionError) {
        guard let context = ZSTD_createDCtx() else { throw CompressionError("zstd could not allocate a decompression context") }
        self.context = context
        self.buffer = .allocate(byteCount: ZSTD_DStreamOutSize() * 8, alignment: 16)
    }

    deinit {
        ZSTD_freeDCtx(context)
        buffer.deallocate()
    }

    func decode(_ input: UnsafeRawBufferPointer, output: (UnsafeRawBufferPointer) throws -> Void) throws {
        _ = try decode(input, budget: .max, output: output)
    }

    func decode(_ input: UnsafeRawBufferPointer, budget: Int, output: (UnsafeRawBufferPointer) throws -> Void) throws
        -> DecodeStep
    {
        if !input.isEmpty { sawInput = true }
        var source = ZSTD_inBuffer(src: input.baseAddress, size: input.count, pos: 0)
        var produced = 0
        // A full output buffer may mean more output without more input.
        while source.pos < source.size || outputFull {
            if produced >= budget { return DecodeStep(consumed: source.pos, hasMoreOutput: outputFull) }
            var target = ZSTD_outBuffer(dst: buffer.baseAddress, size: buffer.count, pos: 0)
            let before = source.pos
            pending = try check(
                ZSTD_decompressStream(context, &target, &source), "decompression", offset: consumed + Int64(source.pos)
            )
            consumed += Int64(source.pos - before)
            outputFull = target.pos == target.size
            produced += target.pos
            if target.pos > 0 { try output(UnsafeRawBufferPointer(rebasing: buffer[..<target.pos])) }
        }
        return DecodeStep(consumed: source.pos, hasMoreOutput: false)
    }

    func finish() throws {
        guard sawInput else { throw CompressionError("the zstd stream is empty", offset: 0) }
        guard pending == 0 else {
            throw CompressionError(
                "the zstd stream is truncated: it ends in the middle of a frame", offset: consumed
            )
        }
    }
}
