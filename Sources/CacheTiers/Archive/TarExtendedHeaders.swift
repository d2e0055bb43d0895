/// The pax and GNU extended headers that precede an entry (`x`, `g`, `L`, `K`): their
/// contents collected as they arrive, bounded, and applied to the next entry's header.
///
/// Names are taken as bytes, whatever `hdrcharset` says: they are restored as the
/// archive holds them, as GNU tar does.
struct TarExtendedHeaders {
    enum Kind {
        case pax, globalPax, longName, longLink

        /// The extended header a typeflag announces; nil for an entry.
        init?(typeflag: UInt8) {
            switch typeflag {
            case UInt8(ascii: "x"): self = .pax
            case UInt8(ascii: "g"): self = .globalPax
            case UInt8(ascii: "L"): self = .longName
            case UInt8(ascii: "K"): self = .longLink
            default: return nil
            }
        }
    }

    /// An entry's name, link target, size and time once its extended headers are applied.
    struct Resolved {
        var path: PathBytes
        var linkTarget: PathBytes
        var size: Int64
        var modificationTime: Int64
    }

    /// What the extended headers of one entry may add up to, header blocks included.
    static let maximumBytes: Int64 = 1 << 20

    private var pax: [String: [UInt8]] = [:]
    private var longName: [UInt8]?
    private var longLink: [UInt8]?
    /// The contents of the extended header being read.
    private var buffer: [UInt8] = []
    /// Extended headers read since the last entry, header blocks included.
    private var pendingBytes: Int64 = 0

    /// Starts an extended header of `size` bytes, refusing one larger than any real
    /// entry needs.
    mutating func begin(size: Int64, offset: Int64) throws(ExtractionError) {
        guard size <= Self.maximumBytes else {
            throw .corrupt("an extended header of \(size) bytes is larger than any real path needs", offset: offset)
        }
        pendingBytes += Int64(TarHeaderEncoder.blockSize) + size
        guard pendingBytes <= Self.maximumBytes else {
            throw .corrupt("the extended headers of one entry add up to more than any real entry needs", offset: offset)
        }
        buffer.removeAll(keepingCapacity: true)
    }

    /// The next bytes of the extended header's contents.
    mutating func append(_ bytes: UnsafeRawBufferPointer) {
        buffer.append(contentsOf: bytes)
    }

    /// Records the extended header whose contents are all read.
    mutating func finish(_ kind: Kind, offset: Int64) throws(ExtractionError) {
        switch kind {
        case .pax:
            do {
                pax.merge(try PaxRecords.parse(buffer)) { $1 }
            } catch {
                throw .corrupt(error.description, offset: offset)
            }
        case .globalPax:
            break  // global defaults carry nothing CacheTiers applies
        case .longName:
            longName = Array(buffer.prefix { $0 != 0 })
        case .longLink:
            longLink = Array(buffer.prefix { $0 != 0 })
        }
        buffer.removeAll(keepingCapacity: true)
    }

    /// The name `raw` stands for, for a message.
    func displayName(_ raw: RawTarHeader) -> String {
        EntryRules.display(pax["path"] ?? longName ?? raw.name)
    }

    /// Applies the pending extended headers to the entry `raw`, then forgets them.
    /// - Throws: for a GNU sparse file in pax format, which would restore as the wrong
    ///   file, and for a pax size that is not a size.
    mutating func resolve(_ raw: RawTarHeader, kind: TarEntryKind, offset: Int64) throws(ExtractionError) -> Resolved {
        // GNU tar's pax sparse formats (0.0, 0.1, 1.0) look like a plain file holding the
        // sparse map; restoring it as such would give the wrong file.
        if kind == .file, pax.keys.contains(where: { $0.hasPrefix("GNU.sparse.") }) {
            let name = pax["GNU.sparse.name"].map { EntryRules.display($0) } ?? displayName(raw)
            throw .unsafe(
                "the archive holds a sparse file (\(name), GNU tar --sparse in pax format), which is not supported: repack it without --sparse",
                offset: offset
            )
        }
        var resolved = Resolved(
            path: PathBytes(pax["path"] ?? longName ?? raw.name),
            linkTarget: PathBytes(pax["linkpath"] ?? longLink ?? raw.linkName),
            size: raw.size,
            modificationTime: raw.modificationTime
        )
        if let bytes = pax["size"] {
            let value = String(decoding: bytes, as: UTF8.self)
            guard let parsed = Int64(value), parsed >= 0 else { throw .corrupt("a pax size '\(value)' is not a size", offset: offset) }
            resolved.size = parsed
        }
        if let bytes = pax["mtime"], let parsed = Double(String(decoding: bytes, as: UTF8.self)), parsed.isFinite,
            abs(parsed) < 1e17
        {
            resolved.modificationTime = Int64(parsed.rounded(.down))
        }
        pax = [:]
        longName = nil
        longLink = nil
        pendingBytes = 0
        return resolved
    }
}

/// Parses pax extended header records (`"<len> key=value\n"`). Values stay bytes:
/// `path` and `linkpath` are names, which need not be UTF-8 (`hdrcharset=BINARY`, or a
/// writer that did not say).
enum PaxRecords {
    static func parse(_ data: [UInt8]) throws(TarFormatError) -> [String: [UInt8]] {
        var result: [String: [UInt8]] = [:]
        var index = 0
        while index < data.count {
            if data[index] == 0 { break }  // trailing padding
            guard let space = data[index...].firstIndex(of: UInt8(ascii: " ")),
                let length = Int(String(decoding: data[index..<space], as: UTF8.self)),
                length > space - index, index + length <= data.count,
                data[index + length - 1] == UInt8(ascii: "\n")
            else {
                throw TarFormatError("a pax extended header is malformed: the archive is corrupt")
            }
            let record = data[(space + 1)..<(index + length - 1)]
            guard let equals = record.firstIndex(of: UInt8(ascii: "=")) else {
                throw TarFormatError("a pax extended header record has no '=': the archive is corrupt")
            }
            let key = String(decoding: record[record.startIndex..<equals], as: UTF8.self)
            let value = Array(record[(equals + 1)...])
            result[key] = value
            index += length
        }
        return result
    }
}
