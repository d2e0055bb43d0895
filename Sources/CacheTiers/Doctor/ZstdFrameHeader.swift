/// What the header of a zstd frame (RFC 8878, section 3.1.1.1) says about the memory a
/// decoder needs: the window, read from the first bytes of an archive without
/// decoding anything.
struct ZstdFrameHeader: Sendable, Hashable {
    /// The longest header: magic (4), descriptor (1), window (1), dictionary ID (4) and content size (8).
    static let maximumSize = 18
    /// The largest window the decoder accepts (libzstd's default limit, `--long=27`).
    static let decoderWindowLimit: Int64 = 128 << 20

    /// The bytes of history the decoder keeps.
    var windowSize: Int64
    /// The frame's uncompressed size, when the header records it.
    var contentSize: Int64?

    struct Problem: Error, Hashable, CustomStringConvertible {
        var description: String
        init(_ description: String) { self.description = description }
    }

    init(_ bytes: [UInt8]) throws(Problem) {
        guard bytes.count >= 5 else { throw Problem("the archive is \(bytes.count) bytes, too short for a zstd frame header") }
        let magic = UInt32(bytes[0]) | UInt32(bytes[1]) << 8 | UInt32(bytes[2]) << 16 | UInt32(bytes[3]) << 24
        if magic & 0xFFFF_FFF0 == 0x184D_2A50 {
            throw Problem("the archive starts with a skippable frame, so its window is not in the first bytes")
        }
        guard magic == 0xFD2F_B528 else {
            throw Problem("the archive does not start with a zstd frame (magic 0x\(String(magic, radix: 16)))")
        }
        let descriptor = bytes[4]
        let singleSegment = descriptor & 0x20 != 0
        let dictionaryIDSize = [0, 1, 2, 4][Int(descriptor & 0x03)]
        let contentSizeSize = [singleSegment ? 1 : 0, 2, 4, 8][Int(descriptor >> 6)]
        var position = 5
        var window: Int64?
        if !singleSegment {
            guard bytes.count > position else { throw Problem("the zstd frame header is cut short") }
            let descriptor = bytes[position]
            let log = 10 + Int64(descriptor >> 3)
            guard log <= 41 else { throw Problem("the zstd frame declares a window of 2^\(log) bytes, beyond what zstd allows") }
            let base: Int64 = 1 << log
            window = base + base / 8 * Int64(descriptor & 0x07)
            position += 1
        }
        position += dictionaryIDSize
        if contentSizeSize > 0 {
            guard bytes.count >= position + contentSizeSize else { throw Problem("the zstd frame header is cut short") }
            var size: UInt64 = 0
            for index in (0..<contentSizeSize).reversed() {
                size = size << 8 | UInt64(bytes[position + index])
            }
            // The two-byte form is offset by 256 (RFC 8878, Frame_Content_Size).
            if contentSizeSize == 2 { size += 256 }
            contentSize = size > UInt64(Int64.max) ? Int64.max : Int64(size)
        }
        // A single-segment frame's window is its whole content.
        guard let windowSize = window ?? contentSize else { throw Problem("the zstd frame header declares no window") }
        self.windowSize = windowSize
    }
}
