import Foundation
import Logging
import Metrics
import SystemPackage

/// A ``TierChain`` built from a ``CacheTiersConfig``, with the network sources it owns.
/// Call ``shutdown()`` when done.
public struct ConfiguredChain: Sendable {
    public let chain: TierChain
    /// The tiers in order, as built.
    public let tiers: [TierChain.Tier]
    /// The tiers that accept archives, for `publish --config`.
    public let sinks: [any CacheSink]
    private let owned: [any OwnedClient]

    init(chain: TierChain, tiers: [TierChain.Tier], sinks: [any CacheSink], owned: [any OwnedClient]) {
        self.chain = chain
        self.tiers = tiers
        self.sinks = sinks
        self.owned = owned
    }

    /// Closes the HTTP clients of the peer and GCS tiers.
    public func shutdown() async {
        for client in owned { try? await client.shutdown() }
    }
}

/// A source that owns connections.
protocol OwnedClient: Sendable {
    func shutdown() async throws
}

extension VMPeerSource: OwnedClient {}
extension GCSSource: OwnedClient {}

extension CacheTiersConfig {
    /// The packer the config's `compression` asks for.
    public var packer: ArchivePacker {
        ArchivePacker(codec: ZstdCodec(level: compressionLevel, threads: compressionThreads))
    }

    /// The config file's folder and the lockfiles: a destination must not be or contain them.
    public var protectedPaths: [ProtectedPath] {
        var paths = key.files.map { ProtectedPath($0, role: "the lockfile") }
        if let file { paths.append(ProtectedPath(file.removingLastComponent(), role: "the folder of the config file")) }
        return paths
    }

    /// The bounds of write-back (and of `cachetiers publish`).
    public var writeBackLimits: CachePublisher.Limits {
        CachePublisher.Limits(
            timeout: .milliseconds(Int64(writeBackTimeoutSeconds * 1000)),
            stallTimeout: .milliseconds(Int64(writeBackStallSeconds * 1000))
        )
    }

    /// Builds the sources and the chain. Files the tiers need (tokens, keys) are read
    /// now, so a missing one is a config error before anything runs.
    public func makeChain(
        logger: Logger,
        observer: (@Sendable (RestoreEvent) -> Void)? = nil,
        metricsFactory: (any MetricsFactory)? = nil
    ) throws(ConfigError) -> ConfiguredChain {
        var tiers: [TierChain.Tier] = []
        var sinks: [any CacheSink] = []
        var owned: [any OwnedClient] = []
        func policy(_ limits: Limits) -> TierChain.TierPolicy {
            TierChain.TierPolicy(
                timeout: .milliseconds(Int64(limits.timeoutSeconds * 1000)),
                stallTimeout: limits.stallSeconds.map { .milliseconds(Int64($0 * 1000)) },
                minimumThroughput: limits.minBytesPerSecond,
                retry: RetryPolicy(maxAttempts: limits.maxAttempts),
                acceptsWriteBack: limits.acceptsWriteBack
            )
        }
        func secret(_ file: FilePath, field: String) throws(ConfigError) -> String {
            guard let data = FileManager.default.contents(atPath: file.string),
                let text = String(data: data, encoding: .utf8)?.trimmingCharacters(in: .whitespacesAndNewlines), !text.isEmpty
            else { throw ConfigError(path: field, "cannot read a token from \(file)", file: self.file?.string) }
            return text
        }

        for (index, tier) in self.tiers.enumerated() {
            switch tier {
            case .peer(let peer):
                let source = VMPeerSource(
                    name: peer.name,
                    configuration: .init(
                        peers: peer.urls,
                        selection: peer.rendezvous ? .rendezvous : .ordered,
                        token: try peer.tokenFile.map { file throws(ConfigError) in
                            try secret(file, field: "tiers[\(index)].tokenFile")
                        },
                        connectTimeout: .milliseconds(Int64(peer.connectTimeoutSeconds * 1000))
                    )
                )
                tiers.append(.init(source, policy: policy(peer.limits)))
                sinks.append(source)
                owned.append(source)
            case .gcs(let gcs):
                let credentials: any AccessTokenProvider
                switch gcs.credentials {
                case .none:
                    credentials = NoAccessToken()
                case .metadata:
                    credentials = GoogleCredentials.metadataServer()
                case .token(let file):
                    credentials = StaticAccessToken(try secret(file, field: "tiers[\(index)].credentials.file"))
                case .serviceAccount(let file):
                    do {
                        credentials = try GoogleCredentials.serviceAccount(ServiceAccountKey.load(from: file.string))
                    } catch {
                        throw ConfigError(path: "tiers[\(index)].credentials.file", "\(error)", file: self.file?.string)
                    }
                }
                let source = GCSSource(
                    name: gcs.name,
                    configuration: .init(
                        bucket: gcs.bucket,
                        prefix: gcs.prefix,
                        endpoint: gcs.endpoint,
                        credentials: credentials,
                        connectTimeout: .milliseconds(Int64(gcs.connectTimeoutSeconds * 1000)),
                        parallelDownloads: gcs.parallelDownloads,
                        segmentSize: gcs.segmentBytes,
                        pricePerGB: gcs.pricePerGB
                    )
                )
                tiers.append(.init(source, policy: policy(gcs.limits)))
                sinks.append(source)
                owned.append(source)
            case .directory(let directory):
                let source = DirectorySource(name: directory.name, root: directory.path)
                tiers.append(.init(source, policy: policy(directory.limits)))
                sinks.append(source)
            case .install(let install):
                let source = FreshInstallSource(
                    name: install.name,
                    configuration: .init(
                        command: install.command,
                        workingDirectory: install.workingDirectory,
                        produces: install.produces,
                        environment: install.environment
                    )
                )
                tiers.append(.init(source, policy: policy(install.limits)))
            }
        }
        var configuration = TierChain.Configuration(
            deadline: .milliseconds(Int64(deadlineSeconds * 1000)),
            writeBack: .init(
                isEnabled: writeBackEnabled, waitForCompletion: writeBackWaits, packer: packer, limits: writeBackLimits
            ),
            metricsFactory: metricsFactory,
            observer: observer
        )
        configuration.protectedPaths = protectedPaths
        let chain = TierChain(tiers: tiers, configuration: configuration, logger: logger)
        return ConfiguredChain(chain: chain, tiers: tiers, sinks: sinks, owned: owned)
    }
}
