/// The kinds of tar entries CacheTiers writes and accepts.
enum TarEntryKind: Sendable, Equatable {
    case file
    case directory
    case symlink
    case hardLink
}

/// One entry's metadata, as written to or read from a tar header.
struct TarEntry: Sendable, Equatable {
    var path: PathBytes
    var kind: TarEntryKind
    var mode: UInt32
    var size: Int64
    var modificationTime: Int64
    var linkTarget: PathBytes = ""
    var userID: UInt32 = 0
    var groupID: UInt32 = 0
}

/// Encodes POSIX ustar headers, adding a pax extended header whenever a field does
/// not fit: long or non-ASCII paths and link targets, sizes of 8 GiB and more,
/// out-of-range times. GNU tar, bsdtar and Python's tarfile all read the result.
///
/// Paths are bytes: one that is not UTF-8 goes into the pax header as it is, with
/// `hdrcharset=BINARY`, which tells readers not to decode it (POSIX pax).
enum TarHeaderEncoder {
    static let blockSize = 512

    /// Appends the header block(s) for `entry` to `out`.
    static func append(_ entry: TarEntry, to out: inout [UInt8]) {
        var pax: [(String, [UInt8])] = []
        let pathBytes = entry.path.bytes
        let linkBytes = entry.linkTarget.bytes
        let split = splitForUstar(pathBytes)
        if split == nil || !isASCII(pathBytes) { pax.append(("path", pathBytes)) }
        if linkBytes.count > 100 || !isASCII(linkBytes) { pax.append(("linkpath", linkBytes)) }
        if pax.contains(where: { String(validating: $0.1, as: UTF8.self) == nil }) {
            pax.insert(("hdrcharset", Array("BINARY".utf8)), at: 0)
        }
        let maxOctal11: Int64 = 0o77777777777
        if entry.size > maxOctal11 { pax.append(("size", Array(String(entry.size).utf8))) }
        if entry.modificationTime < 0 || entry.modificationTime > maxOctal11 {
            pax.append(("mtime", Array(String(entry.modificationTime).utf8)))
        }

        if !pax.isEmpty {
            var records: [UInt8] = []
            for (key, value) in pax { records += paxRecord(key, value) }
            let baseName = pathBytes.split(separator: UInt8(ascii: "/")).last.map(Array.init) ?? pathBytes
            let paxName = Array("PaxHeaders/".utf8) + Array(asciiOnly(baseName).prefix(89))
            appendBlock(
                name: paxName, prefix: [], mode: 0o644, size: Int64(records.count), mtime: 0,
                typeflag: UInt8(ascii: "x"), link: [], uid: 0, gid: 0, to: &out
            )
            out += records
            pad(&out)
        }

        let (prefix, name) = split ?? ([], asciiOnly(Array(pathBytes.suffix(100))))
        let typeflag: UInt8
        switch entry.kind {
        case .file: typeflag = UInt8(ascii: "0")
        case .directory: typeflag = UInt8(ascii: "5")
        case .symlink: typeflag = UInt8(ascii: "2")
        case .hardLink: typeflag = UInt8(ascii: "1")
        }
        appendBlock(
            name: name, prefix: prefix, mode: entry.mode & 0o7777,
            size: entry.kind == .file ? min(entry.size, maxOctal11) : 0,
            mtime: min(max(entry.modificationTime, 0), maxOctal11), typeflag: typeflag,
            link: asciiOnly(Array(linkBytes.prefix(100))), uid: entry.userID, gid: entry.groupID, to: &out
        )
    }

    /// Appends zeros up to the next block boundary.
    static func pad(_ out: inout [UInt8]) {
        let remainder = out.count % blockSize
        if remainder != 0 { out.append(contentsOf: repeatElement(0, count: blockSize - remainder)) }
    }

    /// Splits a path into ustar's 155-byte prefix and 100-byte name, or nil if it can't be.
    private static func splitForUstar(_ path: [UInt8]) -> (prefix: [UInt8], name: [UInt8])? {
        if path.count <= 100 { return ([], path) }
        guard path.count <= 256 else { return nil }
        // The name part is everything after some '/', at most 100 bytes; the prefix at most 155.
        for index in path.indices.reversed() where path[index] == UInt8(ascii: "/") {
            let prefix = Array(path[..<index])
            let name = Array(path[(index + 1)...])
            if name.count > 100 { return nil }
            if prefix.count <= 155, !name.isEmpty { return (prefix, name) }
        }
        return nil
    }

    private static func isASCII(_ bytes: [UInt8]) -> Bool {
        bytes.allSatisfy { $0 < 0x80 }
    }

    private static func asciiOnly(_ bytes: [UInt8]) -> [UInt8] {
        bytes.map { $0 < 0x80 ? $0 : UInt8(ascii: "_") }
    }

    /// `"<length> key=value\n"`, where length counts the whole record including itself.
    private static func paxRecord(_ key: String, _ value: [UInt8]) -> [UInt8] {
        let body = Array(" \(key)=".utf8) + value + [UInt8(ascii: "\n")]
        var length = body.count + 1
        while String(length).utf8.count + body.count != length { length += 1 }
        return Array(String(length).utf8) + body
    }

    private static func appendBlock(
        name: [UInt8], prefix: [UInt8], mode: UInt32, size: Int64, mtime: Int64, typeflag: UInt8,
        link: [UInt8], uid: UInt32, gid: UInt32, to out: inout [UInt8]
    ) {
        let start = out.count
        out.append(contentsOf: repeatElement(0, count: blockSize))
        out.withUnsafeMutableBufferPointer { buffer in
            let block = UnsafeMutableBufferPointer(rebasing: buffer[start..<(start + blockSize)])
            func put(_ bytes: [UInt8], at offset: Int, width: Int) {
                for (i, byte) in bytes.prefix(width).enumerated() { block[offset + i] = byte }
            }
            /// Zero-padded octal in `width - 1` digits and a NUL, written without allocating.
            func octal(_ value: Int64, at offset: Int, width: Int) {
                var remaining = value
                var index = offset + width - 2
                while index >= offset {
                    block[index] = UInt8(ascii: "0") + UInt8(truncatingIfNeeded: remaining & 7)
                    remaining >>= 3
                    index -= 1
                }
            }
            put(name, at: 0, width: 100)
            octal(Int64(mode), at: 100, width: 8)
            octal(Int64(uid) & 0o7777777, at: 108, width: 8)
            octal(Int64(gid) & 0o7777777, at: 116, width: 8)
            octal(size, at: 124, width: 12)
            octal(mtime, at: 136, width: 12)
            block[156] = typeflag
            put(link, at: 157, width: 100)
            put(Array("ustar\u{0}00".utf8), at: 257, width: 8)
            put(prefix, at: 345, width: 155)
            for i in 148..<156 { block[i] = UInt8(ascii: " ") }
            let sum = block.reduce(0) { $0 + Int64($1) }
            octal(sum, at: 148, width: 7)  // six digits, a NUL, a space
            block[154] = 0
            block[155] = UInt8(ascii: " ")
        }
    }
}

/// A decoded header block, before pax and GNU long-name records are applied.
struct RawTarHeader {
    var name: [UInt8]
    var mode: UInt32
    var userID: UInt32
    var groupID: UInt32
    var size: Int64
    var modificationTime: Int64
    var typeflag: UInt8
    var linkName: [UInt8]

    /// Decodes one 512-byte block.
    /// - Returns: nil for an all-zero block (the end-of-archive marker).
    /// - Throws: a message for a block that is not a valid header.
    static func decode(_ block: UnsafeRawBufferPointer) throws(TarFormatError) -> RawTarHeader? {
        precondition(block.count == TarHeaderEncoder.blockSize)
        // The checksum counts its own field as spaces; some old writers summed signed bytes.
        var unsigned: Int64 = 0
        var signed: Int64 = 0
        for byte in block {
            unsigned &+= Int64(byte)
            signed &+= Int64(Int8(bitPattern: byte))
        }
        if unsigned == 0 { return nil }  // all zero: the end-of-archive marker
        for byte in block[148..<156] {
            unsigned &-= Int64(byte)
            signed &-= Int64(Int8(bitPattern: byte))
        }
        unsigned &+= 8 * Int64(UInt8(ascii: " "))
        signed &+= 8 * Int64(UInt8(ascii: " "))
        let recorded = try number(block, 148, 8, "checksum")
        guard recorded == unsigned || recorded == signed else {
            throw TarFormatError("a tar header's checksum does not match: the archive is corrupt or not a tar archive")
        }

        // GNU's magic is "ustar " and its bytes 345... are not a name prefix.
        let isPOSIX = block[257..<263].elementsEqual("ustar\0".utf8)
        var name = bytes(block, 0, 100)
        if isPOSIX {
            let prefix = bytes(block, 345, 155)
            if !prefix.isEmpty { name = prefix + [UInt8(ascii: "/")] + name }
        }
        return RawTarHeader(
            name: name,
            mode: UInt32(truncatingIfNeeded: try number(block, 100, 8, "mode")),
            userID: UInt32(truncatingIfNeeded: try number(block, 108, 8, "uid")),
            groupID: UInt32(truncatingIfNeeded: try number(block, 116, 8, "gid")),
            size: try number(block, 124, 12, "size"),
            modificationTime: try number(block, 136, 12, "mtime"),
            typeflag: block[156],
            linkName: bytes(block, 157, 100)
        )
    }

    /// A NUL-terminated byte field.
    private static func bytes(_ block: UnsafeRawBufferPointer, _ offset: Int, _ width: Int) -> [UInt8] {
        let field = block[offset..<(offset + width)]
        return Array(field.prefix { $0 != 0 })
    }

    /// An octal field (space or NUL terminated), or GNU's base-256 for large values.
    private static func number(
        _ block: UnsafeRawBufferPointer, _ offset: Int, _ width: Int, _ what: String
    ) throws(TarFormatError) -> Int64 {
        let field = block[offset..<(offset + width)]
        if let first = field.first, first & 0x80 != 0 {
            guard first & 0x40 == 0 else { throw TarFormatError("a tar header has a negative \(what)") }
            var value: Int64 = Int64(first & 0x3F)
            for byte in field.dropFirst() {
                guard value < (Int64.max >> 8) else { throw TarFormatError("a tar header's \(what) is too large") }
                value = value << 8 | Int64(byte)
            }
            return value
        }
        var value: Int64 = 0
        var seenDigit = false
        for byte in field {
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "7"):
                guard value < (Int64.max >> 3) else { throw TarFormatError("a tar header's \(what) is too large") }
                value = value << 3 | Int64(byte - UInt8(ascii: "0"))
                seenDigit = true
            case UInt8(ascii: " ") where !seenDigit:
                continue
            case 0, UInt8(ascii: " "):
                return value
            default:
                throw TarFormatError("a tar header's \(what) field is not a number: the archive is corrupt")
            }
        }
        return value
    }
}

/// A malformed or unsafe tar stream.
struct TarFormatError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
