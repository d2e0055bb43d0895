import Foundation
import SystemPackage
import Synchronization

/// A parsed JSON value that keeps booleans and numbers apart, so a config reader can
/// say "expected a number, got a boolean".
enum JSONValue: Sendable, Decodable {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() {
            self = .null
        } else if let value = try? container.decode(Bool.self) {
            self = .bool(value)
        } else if let value = try Self.number(container) {
            self = .number(value)
        } else if let value = try? container.decode(String.self) {
            self = .string(value)
        } else if let value = try? container.decode([JSONValue].self) {
            self = .array(value)
        } else {
            self = .object(try container.decode([String: JSONValue].self))
        }
    }

    /// The value as a number; nil when it is not one. A number no Double can hold
    /// (`1e999`) is an error of its own, not "not a number": otherwise the last attempt,
    /// an object, would report a type mismatch for it.
    private static func number(_ container: any SingleValueDecodingContainer) throws -> Double? {
        do {
            return try container.decode(Double.self)
        } catch let error as DecodingError {
            if case .dataCorrupted = error { throw error }
            return nil
        }
    }

    /// What the value is, for error messages.
    var kind: String {
        switch self {
        case .null: "null"
        case .bool: "a boolean"
        case .number: "a number"
        case .string: "a string"
        case .array: "an array"
        case .object: "an object"
        }
    }
}

/// Reads one JSON object field by field. Every error names the field's path
/// (`tiers[1].bucket: required`); ``finish()`` rejects the fields nobody asked for.
///
/// A configuration type reads itself from one (`init(configReader:)`): it starts from
/// its own defaults and overrides only the fields the file sets.
struct ConfigObjectReader {
    let path: String
    /// The folder relative paths resolve against: the config file's.
    let baseDirectory: FilePath
    /// The files (tokens, keys) read through this reader and every reader below it.
    let inputs: InputFiles
    private let fields: [String: JSONValue]
    private var read: Set<String> = []

    init(_ value: JSONValue, path: String, baseDirectory: FilePath, inputs: InputFiles = InputFiles()) throws(ConfigError) {
        guard case .object(let fields) = value else {
            throw ConfigError(path: path.isEmpty ? "(top level)" : path, "expected an object, got \(value.kind)")
        }
        self.path = path
        self.baseDirectory = baseDirectory
        self.inputs = inputs
        self.fields = fields
    }

    /// The files a config reads besides itself: a restore must never replace them.
    final class InputFiles: Sendable {
        /// Whether token and key files are read (false: only named, for a command such as
        /// `cachetiers key` that builds no tier and must work without credentials).
        let areRead: Bool
        private let files = Mutex<[FilePath]>([])

        init(areRead: Bool = true) {
            self.areRead = areRead
        }

        func append(_ file: FilePath) { files.withLock { $0.append(file) } }
        var all: [FilePath] { files.withLock { $0 } }
    }

    func path(of key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }

    /// The raw value of `key`, nil when absent or null.
    mutating func value(_ key: String) -> JSONValue? {
        read.insert(key)
        guard let value = fields[key] else { return nil }
        if case .null = value { return nil }
        return value
    }

    mutating func string(_ key: String) throws(ConfigError) -> String? {
        guard let value = value(key) else { return nil }
        guard case .string(let text) = value else { throw ConfigError(path: path(of: key), "expected a string, got \(value.kind)") }
        return text
    }

    mutating func requiredString(_ key: String) throws(ConfigError) -> String {
        guard let text = try string(key) else { throw ConfigError(path: path(of: key), "required") }
        guard !text.isEmpty else { throw ConfigError(path: path(of: key), "must not be empty") }
        return text
    }

    mutating func bool(_ key: String) throws(ConfigError) -> Bool? {
        guard let value = value(key) else { return nil }
        guard case .bool(let flag) = value else { throw ConfigError(path: path(of: key), "expected true or false, got \(value.kind)") }
        return flag
    }

    mutating func number(_ key: String, atLeast minimum: Double? = nil, atMost maximum: Double? = nil) throws(ConfigError) -> Double? {
        guard let value = value(key) else { return nil }
        guard case .number(let number) = value, number.isFinite else {
            throw ConfigError(path: path(of: key), "expected a number, got \(value.kind)")
        }
        if let minimum, number < minimum { throw ConfigError(path: path(of: key), "must be at least \(minimum.formatted())") }
        if let maximum, number > maximum { throw ConfigError(path: path(of: key), "must be at most \(maximum.formatted())") }
        return number
    }

    /// A duration in seconds: at least 1 ms and at most 30 days, so converting it to
    /// milliseconds can never overflow and a typo (`1e300`) is a config error.
    mutating func seconds(_ key: String) throws(ConfigError) -> Double? {
        try number(key, atLeast: 0.001, atMost: 30 * 86_400)
    }

    /// A duration given in seconds (``seconds(_:)``), to the millisecond.
    mutating func duration(_ key: String) throws(ConfigError) -> Duration? {
        try seconds(key).map { .milliseconds(Int64(($0 * 1000).rounded())) }
    }

    /// A path, resolved against ``baseDirectory`` when relative.
    mutating func filePath(_ key: String) throws(ConfigError) -> FilePath? {
        try string(key).map(resolve)
    }

    /// A path that must be given and not empty, resolved as ``filePath(_:)``.
    mutating func requiredFilePath(_ key: String) throws(ConfigError) -> FilePath {
        resolve(try requiredString(key))
    }

    private func resolve(_ path: String) -> FilePath {
        baseDirectory.pushing(FilePath(path)).lexicallyNormalized()
    }

    /// The trimmed contents of the file `key` names, such as a bearer token: read now,
    /// so that a missing or empty file is a config error before anything runs.
    mutating func secret(fromFileAt key: String) throws(ConfigError) -> String? {
        guard let name = try string(key) else { return nil }
        guard !name.isEmpty else { throw ConfigError(path: path(of: key), "must not be empty") }
        let file = resolve(name)
        inputs.append(file)
        // Named but not read: an empty token, never sent (a chain is not built from such a config).
        guard inputs.areRead else { return "" }
        do {
            return try SmallFile.token(at: file)
        } catch {
            throw ConfigError(path: path(of: key), error.description)
        }
    }

    mutating func integer(_ key: String, atLeast minimum: Int? = nil, atMost maximum: Int? = nil) throws(ConfigError) -> Int? {
        guard let number = try number(key) else { return nil }
        guard number.rounded() == number, abs(number) < 1e15 else {
            throw ConfigError(path: path(of: key), "expected a whole number, got \(number.formatted())")
        }
        if let minimum, Int(number) < minimum { throw ConfigError(path: path(of: key), "must be at least \(minimum)") }
        if let maximum, Int(number) > maximum { throw ConfigError(path: path(of: key), "must be at most \(maximum)") }
        return Int(number)
    }

    mutating func strings(_ key: String) throws(ConfigError) -> [String]? {
        guard let value = value(key) else { return nil }
        guard case .array(let items) = value else { throw ConfigError(path: path(of: key), "expected an array of strings, got \(value.kind)") }
        var result: [String] = []
        for (index, item) in items.enumerated() {
            guard case .string(let text) = item else {
                throw ConfigError(path: "\(path(of: key))[\(index)]", "expected a string, got \(item.kind)")
            }
            result.append(text)
        }
        return result
    }

    mutating func stringMap(_ key: String) throws(ConfigError) -> [String: String]? {
        guard let value = value(key) else { return nil }
        guard case .object(let fields) = value else { throw ConfigError(path: path(of: key), "expected an object of strings, got \(value.kind)") }
        var result: [String: String] = [:]
        for (name, item) in fields {
            guard case .string(let text) = item else { throw ConfigError(path: "\(path(of: key)).\(name)", "expected a string, got \(item.kind)") }
            result[name] = text
        }
        return result
    }

    mutating func object(_ key: String) throws(ConfigError) -> ConfigObjectReader? {
        guard let value = value(key) else { return nil }
        return try ConfigObjectReader(value, path: path(of: key), baseDirectory: baseDirectory, inputs: inputs)
    }

    /// An array of objects, one reader each (`tiers[2]`).
    mutating func objects(_ key: String) throws(ConfigError) -> [ConfigObjectReader]? {
        guard let value = value(key) else { return nil }
        guard case .array(let items) = value else { throw ConfigError(path: path(of: key), "expected an array, got \(value.kind)") }
        var readers: [ConfigObjectReader] = []
        for (index, item) in items.enumerated() {
            readers.append(try ConfigObjectReader(item, path: "\(path(of: key))[\(index)]", baseDirectory: baseDirectory, inputs: inputs))
        }
        return readers
    }

    /// Rejects fields that were never read: a typo must not be silently ignored.
    func finish() throws(ConfigError) {
        if let unknown = fields.keys.sorted().first(where: { !read.contains($0) }) {
            throw ConfigError(path: path(of: unknown), "unknown field")
        }
    }
}

/// The whole file, with the system's reason when it cannot be read (it does not exist,
/// permission denied, it is a directory).
/// A config file that cannot be used: the field's path and what is wrong with it.
public struct ConfigError: Error, CustomStringConvertible, Sendable, Hashable {
    /// Where in the file, e.g. `tiers[1].bucket`.
    public var path: String
    public var message: String
    /// The config file, when known.
    public var file: String?

    public init(path: String, _ message: String, file: String? = nil) {
        self.path = path
        self.message = message
        self.file = file
    }

    public var description: String {
        file.map { "\($0): \(path): \(message)" } ?? "\(path): \(message)"
    }
}
