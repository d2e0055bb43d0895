import Crypto

/// The name of one cached dependency tree.
///
/// A key is derived from the bytes of the lockfiles that pin the tree, so a change to
/// any dependency changes the key. Its string form is `PREFIX-HEX`, where `HEX` is the
/// SHA-256 of every input; it is safe as a URL path segment and as an object name.
public struct CacheKey: Sendable, Hashable, Codable, CustomStringConvertible {
    /// The longest key accepted, in bytes.
    public static let maximumLength = 200

    /// The key's string form, e.g. `node-modules-3f2a…`.
    public let rawValue: String

    /// Validates a key given as a string (for example on the command line or in a URL).
    ///
    /// - Throws: ``CacheKeyError`` when the string is empty, too long, or holds a
    ///   character outside `A-Z a-z 0-9 . _ -`, or does not start with a letter or digit.
    public init(_ rawValue: String) throws(CacheKeyError) {
        try Self.validate(rawValue, what: "key")
        self.rawValue = rawValue
    }

    public var description: String { rawValue }

    /// Derives a key from lockfile contents and the environment that shapes the tree.
    ///
    /// - Parameters:
    ///   - prefix: a readable name for the kind of cache, such as `node-modules`.
    ///   - lockfiles: the files whose bytes pin the dependencies; at least one. Their
    ///     order does not matter: they are sorted by name before hashing.
    ///   - platform: the OS and CPU architecture, folded in because native modules
    ///     differ between them; `nil` to share one cache across platforms.
    ///   - runtimeVersions: versions of the tools that build the tree (`node 20.11`),
    ///     folded in order.
    ///   - salt: any string; changing it invalidates every key at once.
    public static func derive(
        prefix: String,
        lockfiles: [Lockfile],
        platform: Platform? = .current,
        runtimeVersions: [String] = [],
        salt: String = ""
    ) throws(CacheKeyError) -> CacheKey {
        try validate(prefix, what: "key prefix", maximumLength: 64)
        guard !lockfiles.isEmpty else {
            throw CacheKeyError("a cache key needs at least one lockfile (for example package-lock.json)")
        }
        let names = lockfiles.map(\.name)
        if let duplicate = Dictionary(grouping: names, by: { $0 }).first(where: { $0.value.count > 1 })?.key {
            throw CacheKeyError("lockfile '\(duplicate)' is listed twice")
        }

        var hasher = SHA256()
        func feed(_ bytes: some Collection<UInt8>) {
            var length = UInt64(bytes.count).bigEndian
            withUnsafeBytes(of: &length) { hasher.update(bufferPointer: $0) }
            hasher.update(data: Array(bytes))
        }
        feed(Array("cachetiers-key-v1".utf8))
        feed(Array(prefix.utf8))
        feed(Array((platform.map { "\($0.operatingSystem)/\($0.architecture)" } ?? "any").utf8))
        feed(Array(runtimeVersions.joined(separator: "\u{0}").utf8))
        feed(Array(salt.utf8))
        for lockfile in lockfiles.sorted(by: { $0.name < $1.name }) {
            feed(Array(lockfile.name.utf8))
            feed(lockfile.contents)
        }
        let hex = hasher.finalize().hexString
        // The prefix was validated and the digest is hex, so the result is valid.
        return CacheKey(unchecked: "\(prefix)-\(hex)")
    }

    init(unchecked rawValue: String) {
        self.rawValue = rawValue
    }

    static func validate(
        _ value: String,
        what: String,
        maximumLength: Int = CacheKey.maximumLength
    ) throws(CacheKeyError) {
        guard !value.isEmpty else { throw CacheKeyError("\(what) is empty") }
        let bytes = Array(value.utf8)
        guard bytes.count <= maximumLength else {
            throw CacheKeyError("\(what) is \(bytes.count) bytes long; the limit is \(maximumLength)")
        }
        func allowed(_ byte: UInt8) -> Bool {
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
                UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "-"):
                return true
            default:
                return false
            }
        }
        if let bad = bytes.firstIndex(where: { !allowed($0) }) {
            let character = String(decoding: [bytes[bad]], as: UTF8.self)
            throw CacheKeyError(
                "\(what) '\(value)' has '\(character)' at position \(bad + 1); use only letters, digits, '.', '_' and '-'"
            )
        }
        guard bytes[0] != UInt8(ascii: "."), bytes[0] != UInt8(ascii: "-"), bytes[0] != UInt8(ascii: "_") else {
            throw CacheKeyError("\(what) '\(value)' must start with a letter or a digit")
        }
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        let raw = try container.decode(String.self)
        do {
            try self.init(raw)
        } catch {
            throw DecodingError.dataCorruptedError(in: container, debugDescription: error.description)
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(rawValue)
    }
}

/// One input to a ``CacheKey``: a lockfile's name and its bytes.
public struct Lockfile: Sendable, Hashable {
    /// The name the file is known by (a path relative to the project, or a base name).
    public var name: String
    public var contents: [UInt8]

    public init(name: String, contents: [UInt8]) {
        self.name = name
        self.contents = contents
    }
}

/// The operating system and CPU architecture a tree was built for.
public struct Platform: Sendable, Hashable {
    public var operatingSystem: String
    public var architecture: String

    public init(operatingSystem: String, architecture: String) {
        self.operatingSystem = operatingSystem
        self.architecture = architecture
    }

    /// The platform this process runs on.
    public static var current: Platform {
        #if os(Linux)
        let os = "linux"
        #elseif os(macOS)
        let os = "macos"
        #else
        let os = "unknown"
        #endif
        #if arch(x86_64)
        let arch = "x86_64"
        #elseif arch(arm64)
        let arch = "arm64"
        #else
        let arch = "unknown"
        #endif
        return Platform(operatingSystem: os, architecture: arch)
    }
}

/// Why a key or one of its inputs was rejected.
public struct CacheKeyError: Error, Hashable, CustomStringConvertible {
    public var description: String

    init(_ description: String) {
        self.description = description
    }
}

extension Sequence<UInt8> {
    /// Lowercase hexadecimal, two digits a byte.
    var hexString: String {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(underestimatedCount * 2)
        for byte in self {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 0x0f)])
        }
        return String(decoding: out, as: UTF8.self)
    }
}
