import Foundation
import SystemPackage

/// The JSON config file of `cachetiers restore`, `key` and `publish --config`, as
/// Documentation/Contract.md defines it. Services can load the same file and
/// build the same chain with ``makeChain(logger:observer:metricsFactory:)``.
///
/// Relative paths resolve against the folder holding the file. Unknown fields, wrong
/// types and missing required fields are ``ConfigError``s naming the field's path.
public struct CacheTiersConfig: Sendable {
    /// What feeds the cache key.
    public struct KeyInputs: Sendable, Hashable {
        public var prefix: String
        /// Lockfiles, absolute (resolved against the config's folder).
        public var files: [FilePath]
        public var includesPlatform: Bool
        public var salt: String
        /// Extra inputs such as a Node.js or Python version.
        public var runtimeVersions: [String]
    }

    /// Timeouts and retries of one tier.
    public struct Limits: Sendable, Hashable {
        public var timeoutSeconds: Double
        public var stallSeconds: Double?
        /// The throughput floor over each stall window, bytes per second; `nil` for none.
        public var minBytesPerSecond: Int64?
        public var maxAttempts: Int
        /// Whether the chain may write back to the tier (for sinks).
        public var acceptsWriteBack: Bool
    }

    public struct PeerTier: Sendable, Hashable {
        public var name: String
        public var urls: [String]
        public var tokenFile: FilePath?
        public var connectTimeoutSeconds: Double
        public var rendezvous: Bool
        public var limits: Limits
    }

    public enum GCSCredentials: Sendable, Hashable {
        case none
        case metadata
        case serviceAccount(FilePath)
        case token(FilePath)
    }

    public struct GCSTier: Sendable, Hashable {
        public var name: String
        public var bucket: String
        public var prefix: String
        /// nil: `STORAGE_EMULATOR_HOST` or the real service.
        public var endpoint: String?
        public var credentials: GCSCredentials
        public var connectTimeoutSeconds: Double
        public var parallelDownloads: Int
        public var segmentBytes: Int
        public var pricePerGB: Double
        public var limits: Limits
    }

    public struct DirectoryTier: Sendable, Hashable {
        public var name: String
        public var path: FilePath
        public var limits: Limits
    }

    public struct InstallTier: Sendable, Hashable {
        public var name: String
        public var command: [String]
        public var workingDirectory: FilePath
        public var produces: FilePath
        public var environment: [String: String]
        public var limits: Limits
    }

    public enum Tier: Sendable, Hashable {
        case peer(PeerTier)
        case gcs(GCSTier)
        case directory(DirectoryTier)
        case install(InstallTier)

        public var name: String {
            switch self {
            case .peer(let tier): tier.name
            case .gcs(let tier): tier.name
            case .directory(let tier): tier.name
            case .install(let tier): tier.name
            }
        }
    }

    /// The file this config came from, if any.
    public var file: FilePath?
    /// The folder relative paths resolve against.
    public var baseDirectory: FilePath
    public var key: KeyInputs
    /// The directory that is restored, absolute.
    public var destination: FilePath
    public var deadlineSeconds: Double
    public var tiers: [Tier]
    public var writeBackEnabled: Bool
    public var writeBackWaits: Bool
    /// The write-back's bound after promotion, and its stall window, in seconds.
    public var writeBackTimeoutSeconds: Double
    public var writeBackStallSeconds: Double
    public var compressionLevel: Int
    public var compressionThreads: Int

    /// Reads and checks a config file.
    public static func load(from path: FilePath) throws(ConfigError) -> CacheTiersConfig {
        let absolute = path.isAbsolute ? path : FilePath(FileManager.default.currentDirectoryPath).pushing(path)
        let data: Data
        do {
            data = try readFile(absolute)
        } catch {
            let reason = (error as? Errno)?.description ?? "\(error)"
            throw ConfigError(path: "(file)", "cannot read the config file: \(reason)", file: absolute.string)
        }
        do {
            var config = try CacheTiersConfig(json: data, baseDirectory: absolute.removingLastComponent())
            config.file = absolute
            return config
        } catch {
            var located = error
            located.file = absolute.string
            throw located
        }
    }

    /// The whole file, with the system's reason when it cannot be read (it does not
    /// exist, permission denied, it is a directory).
    private static func readFile(_ path: FilePath) throws -> Data {
        let descriptor = try FileDescriptor.open(path, .readOnly, options: .closeOnExec)
        defer { try? descriptor.close() }
        var data = Data()
        var buffer = [UInt8](repeating: 0, count: 64 << 10)
        while true {
            let count = try buffer.withUnsafeMutableBytes { try descriptor.read(into: $0) }
            if count == 0 { return data }
            data.append(contentsOf: buffer[..<count])
        }
    }

    /// Parses config JSON, resolving relative paths against `baseDirectory`.
    public init(json: Data, baseDirectory: FilePath) throws(ConfigError) {
        let root: JSONValue
        do {
            root = try JSONDecoder().decode(JSONValue.self, from: json)
        } catch {
            throw Self.configError(decoding: error, json: json)
        }
        self.baseDirectory = baseDirectory
        var reader = try ConfigObjectReader(root, path: "")

        guard var keyReader = try reader.object("key") else { throw ConfigError(path: "key", "required") }
        key = KeyInputs(
            prefix: try keyReader.requiredString("prefix"),
            files: (try keyReader.strings("files") ?? []).map { baseDirectory.pushing(FilePath($0)) },
            includesPlatform: try keyReader.bool("platform") ?? true,
            salt: try keyReader.string("salt") ?? "",
            runtimeVersions: try keyReader.strings("runtimeVersions") ?? []
        )
        try keyReader.finish()

        destination = baseDirectory.pushing(FilePath(try reader.requiredString("destination"))).lexicallyNormalized()
        deadlineSeconds = try reader.seconds("deadlineSeconds") ?? 600

        guard let tierValues = try reader.array("tiers") else { throw ConfigError(path: "tiers", "required") }
        guard !tierValues.isEmpty else { throw ConfigError(path: "tiers", "must list at least one tier") }
        var tiers: [Tier] = []
        for (index, value) in tierValues.enumerated() {
            var tier = try ConfigObjectReader(value, path: "tiers[\(index)]")
            tiers.append(try Self.tier(&tier, baseDirectory: baseDirectory))
            try tier.finish()
        }
        var names = Set<String>()
        for (index, tier) in tiers.enumerated() where !names.insert(tier.name).inserted {
            throw ConfigError(path: "tiers[\(index)].name", "\"\(tier.name)\" is already the name of another tier")
        }
        self.tiers = tiers

        var writeBack = try reader.object("writeBack")
        writeBackEnabled = try writeBack?.bool("enabled") ?? true
        writeBackWaits = try writeBack?.bool("wait") ?? false
        writeBackTimeoutSeconds = try writeBack?.seconds("timeoutSeconds") ?? 120
        writeBackStallSeconds = try writeBack?.seconds("stallSeconds") ?? 30
        try writeBack?.finish()

        var compression = try reader.object("compression")
        compressionLevel = try compression?.integer("level") ?? 1
        if !ZstdCodec.isValidLevel(compressionLevel) {
            throw ConfigError(
                path: "compression.level",
                "\(compressionLevel) is out of range; use \(ZstdCodec.levelRange) (1 is the cache-transfer sweet spot)"
            )
        }
        compressionThreads = try compression?.integer("threads", atLeast: 0, atMost: 256) ?? 0
        try compression?.finish()
        try reader.finish()
    }

    private static func tier(_ reader: inout ConfigObjectReader, baseDirectory: FilePath) throws(ConfigError) -> Tier {
        let kind = try reader.requiredString("kind")
        func limits(
            timeout: Double, stall: Double?, attempts: Int,
            floor: Int64? = TierChain.TierPolicy.defaultMinimumThroughput
        ) throws(ConfigError) -> Limits {
            Limits(
                timeoutSeconds: try reader.seconds("timeoutSeconds") ?? timeout,
                stallSeconds: try reader.seconds("stallSeconds") ?? stall,
                minBytesPerSecond: try reader.integer("minBytesPerSecond", atLeast: 0, atMost: 10_000_000_000).map(Int64.init) ?? floor,
                maxAttempts: try reader.integer("maxAttempts", atLeast: 1, atMost: 100) ?? attempts,
                acceptsWriteBack: try reader.bool("writeBack") ?? true
            )
        }
        func path(_ text: String) -> FilePath { baseDirectory.pushing(FilePath(text)).lexicallyNormalized() }

        switch kind {
        case "peer":
            let urls = try reader.strings("urls") ?? []
            guard !urls.isEmpty else { throw ConfigError(path: reader.path(of: "urls"), "required: at least one cache master URL") }
            for (index, url) in urls.enumerated() where !(url.hasPrefix("http://") || url.hasPrefix("https://")) {
                throw ConfigError(path: "\(reader.path(of: "urls"))[\(index)]", "expected an http:// or https:// URL, got \"\(url)\"")
            }
            let selection = try reader.string("selection") ?? "ordered"
            guard selection == "ordered" || selection == "rendezvous" else {
                throw ConfigError(path: reader.path(of: "selection"), "expected \"ordered\" or \"rendezvous\", got \"\(selection)\"")
            }
            return .peer(
                PeerTier(
                    name: try reader.string("name") ?? "peer",
                    urls: urls,
                    tokenFile: try reader.string("tokenFile").map(path),
                    connectTimeoutSeconds: try reader.seconds("connectTimeoutSeconds") ?? 2,
                    rendezvous: selection == "rendezvous",
                    limits: try limits(timeout: 120, stall: 15, attempts: 3)
                )
            )
        case "gcs":
            let credentials: GCSCredentials
            if var reader = try reader.object("credentials") {
                let credentialKind = try reader.requiredString("kind")
                switch credentialKind {
                case "none": credentials = .none
                case "metadata": credentials = .metadata
                case "serviceAccount": credentials = .serviceAccount(path(try reader.requiredString("file")))
                case "token": credentials = .token(path(try reader.requiredString("file")))
                default:
                    throw ConfigError(
                        path: reader.path(of: "kind"),
                        "expected none, metadata, serviceAccount or token, got \"\(credentialKind)\""
                    )
                }
                try reader.finish()
            } else {
                credentials = .none
            }
            let endpoint = try reader.string("endpoint")
            if let endpoint, !(endpoint.hasPrefix("http://") || endpoint.hasPrefix("https://")) {
                throw ConfigError(path: reader.path(of: "endpoint"), "expected an http:// or https:// URL, got \"\(endpoint)\"")
            }
            return .gcs(
                GCSTier(
                    name: try reader.string("name") ?? "gcs",
                    bucket: try reader.requiredString("bucket"),
                    prefix: try reader.string("prefix") ?? "",
                    endpoint: endpoint,
                    credentials: credentials,
                    connectTimeoutSeconds: try reader.seconds("connectTimeoutSeconds") ?? 5,
                    parallelDownloads: try reader.integer("parallelDownloads", atLeast: 1, atMost: 64) ?? 4,
                    segmentBytes: (try reader.integer("segmentMiB", atLeast: 1, atMost: 1024) ?? 8) << 20,
                    pricePerGB: try reader.number("pricePerGB", atLeast: 0) ?? 0.12,
                    limits: try limits(timeout: 180, stall: 30, attempts: 3)
                )
            )
        case "directory":
            return .directory(
                DirectoryTier(
                    name: try reader.string("name") ?? "directory",
                    path: path(try reader.requiredString("path")),
                    limits: try limits(timeout: 120, stall: 30, attempts: 2)
                )
            )
        case "install":
            let command = try reader.strings("command") ?? []
            guard !command.isEmpty, !command[0].isEmpty else {
                throw ConfigError(path: reader.path(of: "command"), "required: the argv to run, e.g. [\"npm\", \"ci\"]")
            }
            let produces = FilePath(try reader.requiredString("produces"))
            guard !produces.isAbsolute, !produces.components.contains(where: { $0.kind == .parentDirectory }) else {
                throw ConfigError(path: reader.path(of: "produces"), "must be a path inside workingDirectory, like \"node_modules\"")
            }
            return .install(
                InstallTier(
                    name: try reader.string("name") ?? "install",
                    command: command,
                    workingDirectory: path(try reader.string("workingDirectory") ?? "."),
                    produces: produces,
                    environment: try reader.stringMap("environment") ?? [:],
                    limits: try limits(timeout: 900, stall: nil, attempts: 1, floor: nil)
                )
            )
        default:
            throw ConfigError(path: reader.path(of: "kind"), "expected peer, gcs, directory or install, got \"\(kind)\"")
        }
    }

    /// A JSON failure where a person can find it: Foundation names no line or column.
    private static func configError(decoding error: any Error, json: Data) -> ConfigError {
        if let problem = JSONSyntaxCheck.firstProblem(in: Array(json)) {
            return ConfigError(path: "(file)", problem.isSyntax ? "not valid JSON: \(problem)" : "\(problem)")
        }
        guard case DecodingError.dataCorrupted(let context) = error else {
            return ConfigError(path: "(file)", "not valid JSON: \(error)")
        }
        return ConfigError(path: "(file)", "not valid JSON: \(context.debugDescription)")
    }

    /// The cache key from the lockfiles, platform, runtime versions and salt.
    public func cacheKey() throws(ConfigError) -> CacheKey {
        guard !key.files.isEmpty else {
            throw ConfigError(
                path: "key.files",
                "a computed cache key needs at least one lockfile, e.g. [\"package-lock.json\"] (or pass --key)",
                file: file?.string
            )
        }
        var lockfiles: [Lockfile] = []
        for (index, file) in key.files.enumerated() {
            guard let data = FileManager.default.contents(atPath: file.string) else {
                throw ConfigError(path: "key.files[\(index)]", "cannot read \(file)", file: self.file?.string)
            }
            let name = file.string.hasPrefix(baseDirectory.string + "/")
                ? String(file.string.dropFirst(baseDirectory.string.count + 1)) : file.string
            lockfiles.append(Lockfile(name: name, contents: Array(data)))
        }
        do {
            return try CacheKey.derive(
                prefix: key.prefix, lockfiles: lockfiles, platform: key.includesPlatform ? .current : nil,
                runtimeVersions: key.runtimeVersions, salt: key.salt
            )
        } catch {
            throw ConfigError(path: "key.prefix", error.description, file: file?.string)
        }
    }
}
