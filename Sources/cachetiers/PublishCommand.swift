import ArgumentParser
import CacheTiers
import Foundation
import SystemPackage

struct PublishCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "publish",
        abstract: "Pack DIR and upload it to a cache master under KEY (create-only).",
        discussion: "Exit 0 when published or already present, 1 on failure, 2 on usage errors."
    )

    @Argument(help: "The directory to publish.")
    var directory: String

    @Option(name: .long, help: "The cache key to publish under.")
    var key: String

    @Option(name: .long, help: "The cache master's base URL, e.g. http://10.0.0.5:7420.")
    var peer: String

    @Option(name: .long, help: "A file holding the cache master's bearer token.")
    var tokenFile: String?

    @Option(name: .long, help: "zstd level.")
    var level = 1

    @OptionGroup var logging: LoggingOptions

    func validate() throws {
        do {
            _ = try CacheKey(key)
        } catch {
            throw ValidationError("--key: \(error)")
        }
        guard peer.hasPrefix("http://") || peer.hasPrefix("https://") else {
            throw ValidationError("--peer must be an http:// or https:// URL")
        }
    }

    func run() async throws {
        let logger = logging.makeLogger()
        let cacheKey = try CacheKey(key)
        let token = try tokenFile.map { try readToken($0, option: "--token-file") }
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw CommandFailure("publish: \(directory) is not a directory")
        }
        let scratch = FilePath(NSTemporaryDirectory()).appending("cachetiers-publish-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(atPath: scratch.string, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: scratch.string) }

        let peerSource = VMPeerSource(configuration: .init(peers: [peer], token: token))
        let outcome: PublishOutcome
        let manifest: CacheManifest
        do {
            if try await peerSource.contains(cacheKey, logger: logger) {
                try await peerSource.shutdown()
                print("\(cacheKey) is already on \(peer); nothing to do")
                return
            }
            let file = scratch.appending("\(cacheKey.rawValue).tar.zst")
            manifest = try await ArchivePacker(codec: ZstdCodec(level: level))
                .pack(FilePath(directory), key: cacheKey, to: file, logger: logger)
            outcome = try await peerSource.publish(PackedArchive(file: file, manifest: manifest), logger: logger)
            try await peerSource.shutdown()
        } catch {
            try? await peerSource.shutdown()
            throw CommandFailure("publish: \(error)")
        }
        switch outcome {
        case .published:
            print("published \(cacheKey) to \(peer): \(formatBytes(manifest.archiveSize)), sha256 \(manifest.archiveSHA256)")
        case .exists:
            print("\(cacheKey) was published to \(peer) by someone else meanwhile; nothing to do")
        }
    }
}
