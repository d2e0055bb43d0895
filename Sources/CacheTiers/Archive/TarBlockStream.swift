/// What a ``TarBlockStream`` hands its reader: each header block decoded, and the
/// contents the reader asks for.
protocol TarBlockReader: AnyObject {
    /// The header of the next entry (or extended header), which starts at `offset`.
    /// - Returns: what to do with the bytes that follow it.
    func header(_ header: RawTarHeader, at offset: Int64) throws(ExtractionError) -> TarBlockStream.Following
    /// The next bytes of the contents asked for with ``TarBlockStream/Following/contents(size:)``.
    func contents(_ bytes: UnsafeRawBufferPointer) throws(ExtractionError)
    /// The contents asked for are all delivered; `offset` is the stream's after them.
    func contentsEnded(at offset: Int64) throws(ExtractionError)
}

/// The block structure of a tar stream, as the bytes arrive in chunks of any size:
/// 512-byte header blocks, each entry's contents padded to a whole block, the
/// end-of-archive marker (a zero block) and the padding some writers add after it.
///
/// It decodes headers and says where contents are; what an entry means is its reader's
/// business. Memory is one block, whatever the archive.
struct TarBlockStream {
    /// What follows a header.
    enum Following {
        /// Nothing: the next block is a header.
        case nothing
        /// `size` bytes of contents for the reader, then padding to a block.
        case contents(size: Int64)
        /// `size` bytes the reader does not want, then padding to a block.
        case skipped(size: Int64)
    }

    private enum State {
        case header
        case contents(remaining: Int64, padding: Int)
        case skip(remaining: Int64)
        case ended
    }

    /// What may follow the end-of-archive marker: GNU tar pads to its record size
    /// (10 KiB by default).
    static let maximumTrailingBytes: Int64 = 1 << 20

    private var state = State.header
    /// A header block split across chunks.
    private var headerBuffer: [UInt8] = []
    /// Bytes after the end-of-archive marker.
    private var trailingBytes: Int64 = 0
    /// Offset in the tar stream of the next byte to consume.
    private(set) var offset: Int64 = 0

    /// Whether the end-of-archive marker has been read.
    var hasEnded: Bool {
        if case .ended = state { true } else { false }
    }

    /// Whether the stream stands between two entries: every entry so far arrived whole.
    var isBetweenEntries: Bool {
        if case .header = state { headerBuffer.isEmpty } else { false }
    }

    /// Consumes the next bytes of the stream, handing headers and contents to `reader`.
    /// The reader must not touch this stream while it is called.
    mutating func consume(_ input: UnsafeRawBufferPointer, into reader: some TarBlockReader) throws(ExtractionError) {
        let blockSize = TarHeaderEncoder.blockSize
        var rest = input[...]
        while !rest.isEmpty {
            switch state {
            case .header:
                if headerBuffer.isEmpty && rest.count >= blockSize {
                    let block = UnsafeRawBufferPointer(rebasing: rest.prefix(blockSize))
                    rest = rest.dropFirst(blockSize)
                    try header(block, reader)
                } else {
                    let take = min(blockSize - headerBuffer.count, rest.count)
                    headerBuffer.append(contentsOf: rest.prefix(take))
                    rest = rest.dropFirst(take)
                    if headerBuffer.count == blockSize {
                        let block = headerBuffer
                        headerBuffer.removeAll(keepingCapacity: true)
                        var failure: ExtractionError?
                        block.withUnsafeBytes { bytes in
                            do throws(ExtractionError) { try header(bytes, reader) } catch { failure = error }
                        }
                        if let failure { throw failure }
                    }
                }

            case .contents(let remaining, let padding):
                let take = Int(min(remaining, Int64(rest.count)))
                try reader.contents(UnsafeRawBufferPointer(rebasing: rest.prefix(take)))
                rest = rest.dropFirst(take)
                offset += Int64(take)
                if Int64(take) == remaining {
                    state = padding > 0 ? .skip(remaining: Int64(padding)) : .header
                    try reader.contentsEnded(at: offset)
                } else {
                    state = .contents(remaining: remaining - Int64(take), padding: padding)
                }

            case .skip(let remaining):
                let take = Int(min(remaining, Int64(rest.count)))
                rest = rest.dropFirst(take)
                offset += Int64(take)
                state = Int64(take) == remaining ? .header : .skip(remaining: remaining - Int64(take))

            case .ended:
                // GNU tar pads archives with zero blocks to a record size; the rest is
                // ignored, up to a bound: endless zeros would be a bomb of another shape.
                offset += Int64(rest.count)
                trailingBytes += Int64(rest.count)
                rest = rest[rest.endIndex...]
                guard trailingBytes <= Self.maximumTrailingBytes else {
                    throw .limit(
                        "the archive goes on for more than \(Self.maximumTrailingBytes >> 20) MiB after its end-of-archive marker (a decompression bomb?)",
                        offset: offset
                    )
                }
            }
        }
    }

    private mutating func header(_ block: UnsafeRawBufferPointer, _ reader: some TarBlockReader) throws(ExtractionError) {
        let decoded: RawTarHeader?
        do {
            decoded = try RawTarHeader.decode(block)
        } catch {
            throw .corrupt(error.description, offset: offset)
        }
        guard let decoded else {
            state = .ended
            offset += Int64(TarHeaderEncoder.blockSize)
            return
        }
        let following = try reader.header(decoded, at: offset)
        offset += Int64(TarHeaderEncoder.blockSize)
        switch following {
        case .nothing:
            state = .header
        case .contents(let size):
            state = size > 0 ? .contents(remaining: size, padding: Self.padding(size)) : .header
        case .skipped(let size):
            state = size > 0 ? .skip(remaining: size + Int64(Self.padding(size))) : .header
        }
    }

    /// The zeros that take `size` bytes of contents to a whole block.
    private static func padding(_ size: Int64) -> Int {
        Int((512 - size % 512) % 512)
    }
}
