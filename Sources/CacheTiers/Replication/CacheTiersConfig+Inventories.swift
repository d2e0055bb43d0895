import Logging

extension CacheTiersConfig.Tier {
    /// Whether the tier's archives can be listed and copied: a cache master, a bucket or
    /// a directory; not a fresh install.
    public var isInventory: Bool {
        if case .install = source { return false }
        return true
    }
}

/// A config's inventory tiers, built: they own their HTTP clients until ``shutdown()``.
public struct ConfiguredInventories: Sendable {
    /// In the config's order.
    public let inventories: [any ArchiveInventory]
    private let clients: [any OwnedClient]

    init(_ tiers: [CacheTiersConfig.Tier]) {
        var inventories: [any ArchiveInventory] = []
        var clients: [any OwnedClient] = []
        for tier in tiers {
            switch tier.source {
            case .peer(let configuration):
                let source = VMPeerSource(name: tier.name, configuration: configuration)
                inventories.append(source)
                clients.append(source)
            case .gcs(let configuration):
                let source = GCSSource(name: tier.name, configuration: configuration)
                inventories.append(source)
                clients.append(source)
            case .directory(let root):
                inventories.append(DirectorySource(name: tier.name, root: root))
            case .install:
                continue
            }
        }
        self.inventories = inventories
        self.clients = clients
    }

    /// The inventory of the tier called `name`.
    public subscript(name: String) -> (any ArchiveInventory)? {
        inventories.first { $0.name == name }
    }

    /// Closes the peer and GCS tiers' connections. Call once, when done with them.
    public func shutdown() async {
        for client in clients { try? await client.shutdown() }
    }
}

extension CacheTiersConfig {
    /// Builds `tiers` (by default every tier of the config) that are inventories: a cache
    /// master, a bucket or a directory; a fresh install is left out. What `cachetiers
    /// sync` and `serve --replicate-to` work with; call ``ConfiguredInventories/shutdown()``
    /// when done.
    public func inventories(of tiers: [Tier]? = nil) -> ConfiguredInventories {
        precondition(secretsRead, "inventories need the config's credentials: load it with readingSecrets: true")
        return ConfiguredInventories(tiers ?? self.tiers)
    }

    /// Runs `body` with ``inventories(of:)`` and shuts them down when it returns or throws.
    public func withInventories<Result>(
        of tiers: [Tier]? = nil,
        isolation: isolated (any Actor)? = #isolation,
        _ body: (_ inventories: ConfiguredInventories) async throws -> Result
    ) async throws -> Result {
        let inventories = inventories(of: tiers)
        do {
            let result = try await body(inventories)
            await inventories.shutdown()
            return result
        } catch {
            await inventories.shutdown()
            throw error
        }
    }
}

/// A tier named on the command line that the config lacks or that cannot be listed: a
/// usage error, in one line.
public struct TierSelectionError: Error, CustomStringConvertible {
    public var description: String
}

extension CacheTiersConfig {
    /// The inventory tier called `name`, for the option `option`.
    public func inventoryTier(named name: String, option: String) throws(TierSelectionError) -> Tier {
        guard let tier = tiers.first(where: { $0.name == name }) else {
            throw TierSelectionError(
                description: "\(option) \(name): the config has no tier of that name (its tiers: \(tiers.map(\.name).joined(separator: ", ")))"
            )
        }
        guard tier.isInventory else {
            throw TierSelectionError(
                description: "\(option) \(name): a fresh install holds no archives to list or copy; name a peer, gcs or directory tier"
            )
        }
        return tier
    }

    /// What `cachetiers sync` copies from and to: `from` (default the first inventory
    /// tier) and `to` (default every other inventory tier that accepts write-back).
    public func syncTiers(from: String?, to: [String]) throws(TierSelectionError) -> (source: Tier, targets: [Tier]) {
        let source: Tier
        if let from {
            source = try inventoryTier(named: from, option: "--from")
        } else if let first = tiers.first(where: \.isInventory) {
            source = first
        } else {
            throw TierSelectionError(description: "the config has no peer, gcs or directory tier to sync from")
        }
        var targets: [Tier] = []
        for name in to {
            let tier = try inventoryTier(named: name, option: "--to")
            guard tier.name != source.name else {
                throw TierSelectionError(description: "--to \(name): it is the tier synced from; name another")
            }
            if !targets.contains(where: { $0.name == name }) { targets.append(tier) }
        }
        if to.isEmpty { targets = replicationTargets(excluding: source.name) }
        guard !targets.isEmpty else {
            throw TierSelectionError(
                description: "no tier to sync \(source.name) to: the config has no other peer, gcs or directory tier that accepts write-back; name one with --to"
            )
        }
        return (source, targets)
    }

    /// The inventory tiers that accept write-back, but `excluded`: where copies go by
    /// default (`sync` without `--to`, `serve --replicate-to` without `--replicate-tier`).
    public func replicationTargets(excluding excluded: String? = nil) -> [Tier] {
        tiers.filter { $0.isInventory && $0.policy.acceptsWriteBack && $0.name != excluded }
    }
}
