import Foundation
import SystemPackage

/// The JSON config file of `cachetiers restore`, `key` and `publish --config`, as
/// Documentation/Contract.md defines it. Services can load the same file and run
/// the same chain with ``withConfiguredChain(logger:observer:metricsFactory:isolation:_:)``.
///
/// Each part of the file is read by the configuration type it describes
/// (`VMPeerSource.Configuration`, `GCSSource.Configuration`,
/// `FreshInstallSource.Configuration`, ``TierChain/TierPolicy``,
/// ``TierChain/Configuration``, ``ZstdCodec``), starting from that type's defaults, so
/// a default is written once, in the type. Files a tier needs (a token, a
/// service-account key) are read while loading: a missing or empty one is a config
/// error naming its field.
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

    /// One tier of the file: what it restores from, and how patiently the chain uses it.
    public struct Tier: Sendable {
        /// The source a tier describes, as the configuration its type is built from.
        public enum Source: Sendable {
            case peer(VMPeerSource.Configuration)
            case gcs(GCSSource.Configuration)
            /// A ``DirectorySource`` on this folder.
            case directory(root: FilePath)
            case install(FreshInstallSource.Configuration)
        }

        /// What reports and metrics call the tier; unique in a config.
        public var name: String
        public var source: Source
        public var policy: TierChain.TierPolicy
        // MARK: Retention
        /// A directory tier's `maxSize`, `maxAgeUnused` and `minAge`; nil when none is given.
        public var retention: RetentionPolicy?

        public init(name: String, source: Source, policy: TierChain.TierPolicy) {
            self.name = name
            self.source = source
            self.policy = policy
        }
    }

    /// The file this config came from, if any.
    public var file: FilePath?
    /// The token and key files the tiers read while the config loaded.
    public var secretFiles: [FilePath]
    /// Whether they were read (see ``load(from:readingSecrets:)``).
    public let secretsRead: Bool
    /// The folder relative paths resolve against.
    public var baseDirectory: FilePath
    /// What the file is loaded for: a ``Purpose/tiers`` load may leave out `key` and
    /// `destination`.
    public let purpose: Purpose
    /// The `key` object; `nil` only in a ``Purpose/tiers`` load of a file without one.
    public var keyInputs: KeyInputs?
    /// The directory that is restored, absolute; `nil` only in a ``Purpose/tiers`` load
    /// of a file without one.
    public var destination: FilePath?

    /// What a command needs of the file.
    public enum Purpose: Sendable, Hashable {
        /// Restoring or publishing a tree: `key` and `destination` are required.
        case restore
        /// Working on the tiers alone (`sync`, `prune`, `serve --replicate-to`): `key`
        /// and `destination` may be left out, and are checked when present.
        case tiers
    }
    public var tiers: [Tier]
    /// The chain's deadline and write-back, as `deadlineSeconds` and `writeBack` set
    /// them; ``withConfiguredChain(logger:observer:metricsFactory:isolation:_:)`` adds
    /// the observer, the metrics factory and ``protectedPaths``.
    public var chainConfiguration: TierChain.Configuration
    /// The `compression` object: the codec of ``packer``, which `cachetiers publish`
    /// uses; loading gives ``chainConfiguration``'s write-back a packer with it too.
    public var compression: ZstdCodec
    /// The `monitoring` object: the metrics file and the report to the fleet.
    public var monitoring: Monitoring

    /// Reads and checks a config file.
    /// - Parameter readingSecrets: false to check the file without reading its token and
    ///   key files, for a command that builds no tier (`cachetiers key`); such a config
    ///   cannot build a chain.
    ///   - purpose: ``Purpose/tiers`` for a command that needs only the tiers.
    public static func load(
        from path: FilePath, readingSecrets: Bool = true, purpose: Purpose = .restore
    ) throws(ConfigError) -> CacheTiersConfig {
        let absolute = path.isAbsolute ? path : FilePath(FileManager.default.currentDirectoryPath).pushing(path)
        let data: Data
        do {
            data = try SmallFile.contents(of: absolute, limit: SmallFile.configLimit)
        } catch {
            throw ConfigError(path: "(file)", "cannot read the config file: \(error.reason)", file: absolute.string)
        }
        do {
            var config = try CacheTiersConfig(
                json: data, baseDirectory: absolute.removingLastComponent(), readingSecrets: readingSecrets, purpose: purpose
            )
            config.file = absolute
            return config
        } catch {
            var located = error
            located.file = absolute.string
            throw located
        }
    }

    /// Parses config JSON, resolving relative paths against `baseDirectory`.
    public init(json: Data, baseDirectory: FilePath, readingSecrets: Bool = true, purpose: Purpose = .restore) throws(ConfigError) {
        let root: JSONValue
        do {
            root = try JSONDecoder().decode(JSONValue.self, from: json)
        } catch {
            throw Self.configError(decoding: error, json: json)
        }
        self.baseDirectory = baseDirectory
        self.purpose = purpose
        var reader = try ConfigObjectReader(
            root, path: "", baseDirectory: baseDirectory, inputs: ConfigObjectReader.InputFiles(areRead: readingSecrets)
        )

        if var keyReader = try reader.object("key") {
            keyInputs = KeyInputs(
                prefix: try keyReader.requiredString("prefix"),
                files: (try keyReader.strings("files") ?? []).map { baseDirectory.pushing(FilePath($0)) },
                includesPlatform: try keyReader.bool("platform") ?? true,
                salt: try keyReader.string("salt") ?? "",
                runtimeVersions: try keyReader.strings("runtimeVersions") ?? []
            )
            try keyReader.finish()
        } else if purpose == .restore {
            throw ConfigError(path: "key", "required")
        }
        destination = purpose == .restore ? try reader.requiredFilePath("destination") : try reader.filePath("destination")

        guard let tierReaders = try reader.objects("tiers") else { throw ConfigError(path: "tiers", "required") }
        guard !tierReaders.isEmpty else { throw ConfigError(path: "tiers", "must list at least one tier") }
        var tiers: [Tier] = []
        for var tierReader in tierReaders {
            tiers.append(try Tier(configReader: &tierReader))
            try tierReader.finish()
        }
        var names = Set<String>()
        for (index, tier) in tiers.enumerated() where !names.insert(tier.name).inserted {
            throw ConfigError(path: "tiers[\(index)].name", "\"\(tier.name)\" is already the name of another tier")
        }
        self.tiers = tiers

        compression = ZstdCodec()
        if var compressionReader = try reader.object("compression") {
            compression = try ZstdCodec(configReader: &compressionReader)
            try compressionReader.finish()
        }
        chainConfiguration = try TierChain.Configuration(configReader: &reader, packer: ArchivePacker(codec: compression))
        let peer = tiers.lazy.compactMap { tier -> VMPeerSource.Configuration? in
            if case .peer(let configuration) = tier.source { return configuration }
            return nil
        }.first
        if var monitoringReader = try reader.object("monitoring") {
            monitoring = try Monitoring(configReader: &monitoringReader, peer: peer)
            try monitoringReader.finish()
        } else {
            monitoring = Monitoring(peer: peer)
        }
        try reader.finish()
        secretFiles = reader.inputs.all
        secretsRead = readingSecrets
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
        guard let key = keyInputs else {
            throw ConfigError(path: "key", "required: a cache key needs the key object (or pass --key)", file: file?.string)
        }
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

extension CacheTiersConfig.Tier {
    /// Reads one element of `tiers`: `kind` picks the source, whose configuration reads
    /// its own fields, then `name` (the kind by default) and the policy fields, over
    /// the kind's preset (``TierChain/TierPolicy/peer`` and its siblings).
    init(configReader reader: inout ConfigObjectReader) throws(ConfigError) {
        let kind = try reader.requiredString("kind")
        let preset: TierChain.TierPolicy
        switch kind {
        case "peer":
            source = .peer(try VMPeerSource.Configuration(configReader: &reader))
            preset = .peer
        case "gcs":
            source = .gcs(try GCSSource.Configuration(configReader: &reader))
            preset = .gcs
        case "directory":
            source = .directory(root: try reader.requiredFilePath("path"))
            // MARK: Retention
            retention = try RetentionPolicy(configReader: &reader)
            preset = .directory
        case "install":
            source = .install(try FreshInstallSource.Configuration(configReader: &reader))
            preset = .install
        default:
            throw ConfigError(path: reader.path(of: "kind"), "expected peer, gcs, directory or install, got \"\(kind)\"")
        }
        name = try reader.string("name") ?? kind
        // It names the tier in every log line, report and metric label.
        guard !name.isEmpty, name.count <= 64, name.unicodeScalars.allSatisfy({ $0.value > 0x20 && $0.value != 0x7F }) else {
            throw ConfigError(path: reader.path(of: "name"), "must be 1 to 64 characters with no spaces or control characters, like \"cache-master\"")
        }
        policy = try TierChain.TierPolicy(configReader: &reader, defaults: preset)
    }
}
