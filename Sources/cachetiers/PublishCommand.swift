import ArgumentParser
import CacheTiers
import Foundation
import Logging
import SystemPackage

struct PublishCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "publish",
        abstract: "Pack DIR and upload it, create-only, to the config's writable tiers or to one cache master.",
        discussion: "Exit 0 when published or already present everywhere, 1 on failure, 2 on usage or config errors."
    )

    @Argument(help: "The directory to publish.")
    var directory: String

    @Option(name: .long, help: "The cache key to publish under (with --config: default computed from the config).")
    var key: String?

    @Option(name: .long, help: "Publish to the peer, gcs and directory tiers of this JSON config.")
    var config: String?

    @Option(name: .long, help: "The cache master's base URL, e.g. http://10.0.0.5:7420.")
    var peer: String?

    @Option(name: .long, help: "A file holding the cache master's bearer token.")
    var tokenFile: String?

    @Option(name: .long, parsing: .unconditional, help: "zstd level: \(ZstdCodec.levelRange) (default: the config's, else 1).")
    var level: Int?

    @Flag(name: .long, help: "Leave out, and report, entries every restore would refuse instead of failing (as pack --skip-unsafe).")
    var skipUnsafe = false

    @OptionGroup var logging: LoggingOptions

    func validate() throws {
        if let level, !ZstdCodec.isValidLevel(level) {
            throw ValidationError("--level \(level) is out of range; use \(ZstdCodec.levelRange)")
        }
        if let key {
            do { _ = try CacheKey(key) } catch { throw ValidationError("--key: \(error)") }
        }
        switch (config, peer) {
        case (nil, nil): throw ValidationError("give --config FILE or --peer URL")
        case (.some, .some): throw ValidationError("give --config or --peer, not both")
        case (nil, .some(let peer)):
            guard key != nil else { throw ValidationError("--key is required with --peer") }
            guard peer.hasPrefix("http://") || peer.hasPrefix("https://") else {
                throw ValidationError("--peer must be an http:// or https:// URL")
            }
        case (.some, nil):
            guard tokenFile == nil else { throw ValidationError("--token-file goes with --peer; the config names its own") }
        }
    }

    func run() async throws {
        let logger = logging.makeLogger()
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw CommandFailure("publish: \(directory) is not a directory")
        }

        var packer = ArchivePacker(codec: ZstdCodec(level: level ?? 1))
        packer.options.skipUnsafeEntries = skipUnsafe
        let cacheKey: CacheKey
        let result: CachePublisher.Result
        if let config {
            let settings = try CacheTiersConfig.load(from: FilePath(config))
            cacheKey = try key.map { try CacheKey($0) } ?? settings.cacheKey()
            if level == nil { packer.codec = settings.compression }
            let publisher = CachePublisher(packer: packer, limits: settings.chainConfiguration.writeBack.limits)
            result = try await settings.withConfiguredChain(logger: logger) { _, sinks in
                guard !sinks.isEmpty else { throw UsageFailure("publish: the config has no peer, gcs or directory tier to publish to") }
                return try await publish(with: publisher, as: cacheKey, to: sinks, logger: logger)
            }
        } else {
            cacheKey = try CacheKey(key!)
            let token = try tokenFile.map { try readToken($0, option: "--token-file") }
            let source = VMPeerSource(name: peer!, configuration: .init(peers: [peer!], token: token))
            do {
                result = try await publish(with: CachePublisher(packer: packer), as: cacheKey, to: [source], logger: logger)
            } catch {
                try? await source.shutdown()
                throw error
            }
            try? await source.shutdown()
        }

        var failures: [String] = []
        for record in result.records {
            switch record.outcome {
            case .published:
                let size = result.manifest.map { ", \(formatBytes($0.archiveSize)), sha256 \($0.archiveSHA256)" } ?? ""
                print("\(record.tier): published \(cacheKey)\(size)")
            case .exists:
                print("\(record.tier): \(cacheKey) is already there")
            case .failed, .pending, .detached:
                failures.append("\(record.tier): \(record.error ?? "failed")")
            }
        }
        if !failures.isEmpty {
            throw CommandFailure("publish: \(failures.joined(separator: "; "))")
        }
    }

    /// Packs the directory in a scratch folder of its own and uploads it to every sink.
    private func publish(
        with publisher: CachePublisher, as key: CacheKey, to sinks: [any CacheSink], logger: Logger
    ) async throws -> CachePublisher.Result {
        let scratch = FilePath(NSTemporaryDirectory()).appending("cachetiers-publish-\(UUID().uuidString.prefix(8))")
        defer { try? FileManager.default.removeItem(atPath: scratch.string) }
        do {
            try FileManager.default.createDirectory(atPath: scratch.string, withIntermediateDirectories: true)
        } catch {
            throw CommandFailure("publish: cannot create a scratch folder: \(error.localizedDescription)")
        }
        return await publisher.publish(FilePath(directory), as: key, to: sinks, scratch: scratch, logger: logger)
    }
}
