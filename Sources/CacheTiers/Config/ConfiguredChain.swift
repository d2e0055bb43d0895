import Logging
import Metrics

extension CacheTiersConfig {
    /// Builds the config's sources and chain, runs `body` with the chain and the sinks
    /// (the tiers that accept archives, in order: what `publish --config` uploads to),
    /// and shuts the HTTP clients of the peer and GCS sources down when `body` returns,
    /// throws or is cancelled.
    ///
    /// Everything that uses the sources belongs inside `body`, a background write-back
    /// included: await ``RestoreReport/completingWriteBack()`` (or the report's
    /// ``RestoreReport/pendingWriteBack``) before returning.
    ///
    /// - Parameters:
    ///   - observer: Called for every ``RestoreEvent``; `nil` keeps ``chainConfiguration``'s.
    ///   - metricsFactory: Where counters and timers go; `nil` keeps ``chainConfiguration``'s.
    public func withConfiguredChain<Result, Failure: Error>(
        logger: Logger,
        observer: (@Sendable (RestoreEvent) -> Void)? = nil,
        metricsFactory: (any MetricsFactory)? = nil,
        isolation: isolated (any Actor)? = #isolation,
        _ body: (_ chain: TierChain, _ sinks: [any CacheSink]) async throws(Failure) -> Result
    ) async throws(Failure) -> Result {
        precondition(secretsRead, "a chain needs the config's credentials: load it with readingSecrets: true")
        var tiers: [TierChain.Tier] = []
        var sinks: [any CacheSink] = []
        var clients: [any OwnedClient] = []
        for tier in self.tiers {
            switch tier.source {
            case .peer(let configuration):
                let source = VMPeerSource(name: tier.name, configuration: configuration)
                tiers.append(.init(source, policy: tier.policy))
                sinks.append(source)
                clients.append(source)
            case .gcs(let configuration):
                let source = GCSSource(name: tier.name, configuration: configuration)
                tiers.append(.init(source, policy: tier.policy))
                sinks.append(source)
                clients.append(source)
            case .directory(let root):
                var source = DirectorySource(name: tier.name, root: root)
                source.retention = tier.retention  // MARK: Retention
                tiers.append(.init(source, policy: tier.policy))
                sinks.append(source)
            case .install(let configuration):
                tiers.append(.init(FreshInstallSource(name: tier.name, configuration: configuration), policy: tier.policy))
            }
        }
        var configuration = chainConfiguration
        if let observer { configuration.observer = observer }
        if let metricsFactory { configuration.metricsFactory = metricsFactory }
        configuration.protectedPaths += protectedPaths
        let chain = TierChain(tiers: tiers, configuration: configuration, logger: logger)

        let result: Result
        do {
            result = try await body(chain, sinks)
        } catch {
            await Self.shutdown(clients)
            throw error
        }
        await Self.shutdown(clients)
        return result
    }

    private static func shutdown(_ clients: [any OwnedClient]) async {
        for client in clients { try? await client.shutdown() }
    }

    /// The packer the config's `compression` asks for, as write-back uses it.
    public var packer: ArchivePacker {
        ArchivePacker(codec: compression)
    }

    /// The config file's folder, the lockfiles and the token and key files: a destination
    /// must not be or contain them.
    public var protectedPaths: [ProtectedPath] {
        var paths = (keyInputs?.files ?? []).map { ProtectedPath($0, role: "the lockfile") }
        paths += secretFiles.map { ProtectedPath($0, role: "a token or key file of the config") }
        if let file { paths.append(ProtectedPath(file.removingLastComponent(), role: "the folder of the config file")) }
        return paths
    }
}

/// A source that owns connections.
protocol OwnedClient: Sendable {
    func shutdown() async throws
}

extension VMPeerSource: OwnedClient {}
extension GCSSource: OwnedClient {}
