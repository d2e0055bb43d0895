import Logging
import SystemPackage

/// Offers a restored tree to the writable tiers above the one that served it, through a
/// ``CachePublisher``: tiers that already hold the key are left alone, the tree is
/// packed once for the rest. A failure is logged and reported, never thrown: the restore
/// has already succeeded.
struct WriteBackJob: Sendable {
    let run: RestoreRun
    let sinks: [any CacheSink]

    /// Publishes, and times it from now (the tree in place) to the last sink's end.
    func run() async -> FinishedWriteBack {
        let logger = run.logger
        let started = run.clock.now()
        let records = await publish()
        let duration = run.clock.now() - started
        for record in records {
            run.chain.metrics.recordWriteBack(record)
            run.emit(.writeBackFinished(record))
            var metadata: Logger.Metadata = ["tier": "\(record.tier)", "outcome": "\(record.outcome.rawValue)"]
            if let error = record.error { metadata["error"] = "\(error)" }
            logger.log(level: record.outcome == .failed ? .warning : .info, "write-back finished", metadata: metadata)
        }
        return FinishedWriteBack(records: records, duration: duration)
    }

    private func publish() async -> [WriteBackRecord] {
        let logger = run.logger
        func failedAll(_ message: String) -> [WriteBackRecord] {
            sinks.map { WriteBackRecord(tier: $0.name, outcome: .failed, error: message) }
        }
        guard let packer = run.configuration.writeBack.packer else {
            return failedAll("no packer is configured for write-back")
        }
        let scratch: StagingDirectory
        do {
            scratch = try StagingDirectory(beside: run.staging, purpose: "writeback", logger: logger)
        } catch {
            return failedAll("cannot create a scratch directory to pack into: \(error)")
        }
        let records = await CachePublisher(packer: packer, limits: run.configuration.writeBack.limits, clock: run.clock)
            .publish(run.staging.destination, as: run.key, to: sinks, scratch: scratch.path, logger: logger)
            .records
        await scratch.discard(logger: logger)
        return records
    }
}
