internal import CCacheTiersShims
import Foundation
import NIOCore

/// A running CRC-32C (Castagnoli), the checksum Google Cloud Storage keeps for every
/// object. Hardware-accelerated where the CPU has SSE4.2.
struct CRC32C: Sendable, Hashable {
    private(set) var value: UInt32 = 0

    init() {}

    mutating func update(_ bytes: UnsafeRawBufferPointer) {
        guard let base = bytes.baseAddress else { return }
        value = cachetiers_crc32c(value, base, bytes.count)
    }

    mutating func update(_ bytes: some ContiguousBytes) {
        bytes.withUnsafeBytes { update($0) }
    }

    mutating func update(_ buffer: ByteBuffer) {
        buffer.withUnsafeReadableBytes { update($0) }
    }

    /// The form GCS uses in `crc32c` fields and `x-goog-hash`: base64 of the four
    /// big-endian bytes.
    var base64: String {
        withUnsafeBytes(of: value.bigEndian) { Data($0).base64EncodedString() }
    }

    /// The CRC-32C of a whole file.
    static func ofFile(at path: String) throws -> CRC32C {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw CocoaError(.fileReadNoSuchFile, userInfo: [NSFilePathErrorKey: path])
        }
        defer { try? handle.close() }
        var crc = CRC32C()
        while let chunk = try handle.read(upToCount: 1 << 20), !chunk.isEmpty {
            crc.update(chunk)
        }
        return crc
    }
}
