import Logging
import SystemPackage

extension CacheTiersConfig {
    /// Runs a write-back that a restore handed off (`writeBack.detach`): publishes the tree
    /// at `request.tree` as `request.key` to the config's tiers named in `request.tiers`,
    /// through the same ``CachePublisher`` and limits as an in-process write-back (asked
    /// first, packed once, create-only, bounded by `writeBack.timeoutSeconds` and
    /// `stallSeconds`).
    ///
    /// The archive is packed in a scratch folder beside the tree
    /// (`.NAME.writeback-PID@HOST-XXXX`), removed when this returns; one left by a process
    /// that was killed is removed here first, and by the next restore of that destination.
    ///
    /// - Returns: one record per requested tier, in the request's order; a name the config
    ///   has no writable tier for is a failed record saying so.
    public func runDetachedWriteBack(_ request: DetachedWriteBack, logger: Logger) async -> [WriteBackRecord] {
        func failedAll(_ message: String) -> [WriteBackRecord] {
            request.tiers.map { WriteBackRecord(tier: $0, outcome: .failed, error: message) }
        }
        guard let packer = chainConfiguration.writeBack.packer else { return failedAll("no packer is configured for write-back") }
        let staging: DestinationStaging
        let scratch: StagingDirectory
        do {
            staging = try DestinationStaging(destination: request.tree, protecting: protectedPaths)
            await staging.sweepLeftovers(logger: logger)
            scratch = try StagingDirectory(beside: staging, purpose: "writeback", logger: logger)
        } catch {
            return failedAll("cannot pack beside \(request.tree): \(error.message)")
        }
        let limits = chainConfiguration.writeBack.limits
        let records = await withConfiguredChain(logger: logger) { _, sinks -> [WriteBackRecord] in
            var chosen: [any CacheSink] = []
            var unknown: [WriteBackRecord] = []
            for name in request.tiers {
                if let sink = sinks.first(where: { $0.name == name }) {
                    chosen.append(sink)
                } else {
                    unknown.append(WriteBackRecord(tier: name, outcome: .failed, error: "the config has no tier named \(name) that accepts archives"))
                }
            }
            let published = chosen.isEmpty
                ? []
                : await CachePublisher(packer: packer, limits: limits)
                    .publish(request.tree, as: request.key, to: chosen, scratch: scratch.path, logger: logger).records
            return request.tiers.compactMap { name in
                published.first { $0.tier == name } ?? unknown.first { $0.tier == name }
            }
        }
        await scratch.discard(logger: logger)
        return records
    }
}
