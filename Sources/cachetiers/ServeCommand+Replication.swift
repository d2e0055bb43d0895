import CacheTiers
import SystemPackage

/// The tiers `serve --replicate-to CONFIG [--replicate-tier NAME]...` copies new archives
/// to: the config's peer, gcs and directory tiers that accept write-back, or the named
/// ones. They own their HTTP clients until ``shutdown()``.
struct ReplicationTargets {
    private let built: ConfiguredInventories?

    var sinks: [any CacheSink] { built?.inventories ?? [] }

    /// - Throws: a config error (exit 2) or a usage error naming the tier.
    init(config: String?, tiers names: [String]) throws {
        guard let config else {
            built = nil
            return
        }
        let settings = try CacheTiersConfig.load(from: FilePath(config), purpose: .tiers)
        var chosen: [CacheTiersConfig.Tier] = []
        do {
            for tier in try names.isEmpty
                ? settings.replicationTargets() : names.map({ try settings.inventoryTier(named: $0, option: "--replicate-tier") })
            where !chosen.contains(where: { $0.name == tier.name }) {
                chosen.append(tier)
            }
        } catch {
            throw UsageFailure("serve: \(error)")
        }
        guard !chosen.isEmpty else {
            throw UsageFailure(
                "serve: --replicate-to \(config) has no peer, gcs or directory tier that accepts write-back; name one with --replicate-tier"
            )
        }
        built = settings.inventories(of: chosen)
    }

    func shutdown() async {
        await built?.shutdown()
    }
}
