import Logging
import SystemPackage

/// Offers a restored tree to the writable tiers above the one that served it.
///
/// Tiers that already hold the key are left alone; for the rest the tree is packed
/// once and published to each, create-only. A failure is logged and reported, never
/// thrown: the restore has already succeeded.
struct WriteBackJob: Sendable {
    let run: RestoreRun
    let sinks: [any CacheSink]

    func run() async -> [WriteBackRecord] {
        let logger = run.logger
        let key = run.key
        var records: [String: WriteBackRecord] = [:]
        var needed: [any CacheSink] = []
        for sink in sinks {
            do {
                if try await sink.contains(key, logger: logger) {
                    records[sink.name] = WriteBackRecord(tier: sink.name, outcome: .exists)
                } else {
                    needed.append(sink)
                }
            } catch {
                // Publishing is create-only, so trying anyway is safe.
                logger.notice("could not ask a tier whether it holds the key; publishing anyway",
                              metadata: ["tier": "\(sink.name)", "error": "\(error)"])
                needed.append(sink)
            }
        }

        if !needed.isEmpty {
            for record in await publish(to: needed) {
                records[record.tier] = record
            }
        }

        let ordered = sinks.compactMap { records[$0.name] }
        for record in ordered {
            run.chain.metrics.recordWriteBack(record)
            run.emit(.writeBackFinished(record))
            var metadata: Logger.Metadata = ["tier": "\(record.tier)", "outcome": "\(record.outcome.rawValue)"]
            if let error = record.error { metadata["error"] = "\(error)" }
            logger.log(level: record.outcome == .failed ? .warning : .info, "write-back finished", metadata: metadata)
        }
        return ordered
    }

    private func publish(to sinks: [any CacheSink]) async -> [WriteBackRecord] {
        let logger = run.logger
        func failedAll(_ message: String) -> [WriteBackRecord] {
            sinks.map { WriteBackRecord(tier: $0.name, outcome: .failed, error: message) }
        }
        guard let packer = run.configuration.writeBack.packer else {
            return failedAll("no packer is configured for write-back")
        }
        let scratch: FilePath
        do {
            scratch = try run.staging.makeStagingDirectory(purpose: "writeback")
        } catch {
            return failedAll("cannot create a scratch directory to pack into: \(error)")
        }
        defer { run.staging.discard(scratch, logger: logger) }

        let archive: PackedArchive
        do {
            let file = scratch.appending("\(run.key.rawValue).tar.zst")
            let manifest = try await packer.pack(run.staging.destination, key: run.key, to: file, logger: logger)
            archive = PackedArchive(file: file, manifest: manifest)
        } catch {
            return failedAll("packing the restored tree failed: \(error)")
        }

        return await withTaskGroup(of: WriteBackRecord.self) { group in
            for sink in sinks {
                group.addTask {
                    do {
                        let outcome = try await sink.publish(archive, logger: logger)
                        return WriteBackRecord(tier: sink.name, outcome: outcome == .published ? .published : .exists)
                    } catch {
                        return WriteBackRecord(tier: sink.name, outcome: .failed, error: "\(error)")
                    }
                }
            }
            var records: [WriteBackRecord] = []
            for await record in group { records.append(record) }
            return records
        }
    }
}
