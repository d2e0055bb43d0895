import Logging
import SystemPackage

/// Publishes a tree to several sinks the way a burst of VMs should: ask each sink first,
/// pack once only if some sink lacks the key, then publish create-only to those, all at
/// once. Both the chain's write-back and `cachetiers publish` go through it.
///
/// Failures become records, never thrown errors: one unreachable tier must not stop the
/// others from getting the archive.
public struct CachePublisher: Sendable {
    /// What a publish did: one record per sink, in the sinks' order, and the manifest
    /// of the archive when one was packed.
    public struct Result: Sendable {
        public var records: [WriteBackRecord]
        public var manifest: CacheManifest?
    }

    public var packer: any CachePacker

    public init(packer: any CachePacker) {
        self.packer = packer
    }

    /// - Parameter scratch: an existing directory to pack the archive into; the caller
    ///   removes it.
    public func publish(
        _ tree: FilePath,
        as key: CacheKey,
        to sinks: [any CacheSink],
        scratch: FilePath,
        logger: Logger
    ) async -> Result {
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
                logger.notice(
                    "could not ask a tier whether it holds the key; publishing anyway",
                    metadata: ["tier": "\(sink.name)", "error": "\(error)"]
                )
                needed.append(sink)
            }
        }
        var manifest: CacheManifest?
        if !needed.isEmpty {
            let file = scratch.appending("\(key.rawValue).tar.zst")
            do {
                let packed = try await packer.pack(tree, key: key, to: file, logger: logger)
                manifest = packed
                for record in await publish(PackedArchive(file: file, manifest: packed), to: needed, logger: logger) {
                    records[record.tier] = record
                }
            } catch {
                for sink in needed {
                    records[sink.name] = WriteBackRecord(tier: sink.name, outcome: .failed, error: "packing \(tree) failed: \(error)")
                }
            }
        }
        return Result(records: sinks.compactMap { records[$0.name] }, manifest: manifest)
    }

    private func publish(_ archive: PackedArchive, to sinks: [any CacheSink], logger: Logger) async -> [WriteBackRecord] {
        await withTaskGroup(of: WriteBackRecord.self) { group in
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
