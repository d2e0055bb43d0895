import Foundation
import Logging

/// A tier ``Doctor`` can ask about the archives it holds, to size the destination and
/// the memory a restore needs.
protocol ArchiveSampling: Sendable {
    var tierName: String { get }
    /// The manifest of `key`, or `nil` when the tier does not hold it.
    func manifest(of key: CacheKey, logger: Logger) async throws -> CacheManifest?
    /// The key of the most recently created archive the tier lists (a bounded number of pages).
    func newestKey(logger: Logger) async throws -> CacheKey?
    /// Up to `count` bytes from the start of the archive of `key`.
    func firstBytes(of key: CacheKey, count: Int, logger: Logger) async throws -> [UInt8]
    /// Lets go of the tier's connections.
    func close() async
}

extension ArchiveSampling {
    /// The newest of `listings`.
    static func newest(_ listings: [ArchiveListing]) -> ArchiveListing? {
        listings.max { $0.createdAt < $1.createdAt }
    }

    /// How many pages of a listing ``newestKey(logger:)`` reads at most: 10,000 archives.
    static var maximumPages: Int { 10 }
}

/// The archive a restore would most likely fetch: the one of the config's key from the
/// first tier that has it, else the newest any tier lists, with its manifest and zstd
/// window.
struct ArchiveSample: Sendable {
    var tier: String
    var key: CacheKey
    var manifest: CacheManifest
    /// Whether it is the config's current key, rather than the newest listed.
    var isCurrentKey: Bool
    /// The window its first zstd frame declares; `nil` when the first bytes could not be
    /// read, or the codec is not zstd.
    var window: Result<ZstdFrameHeader, ZstdFrameHeader.Problem>?

    /// How the checks name it: `the archive of KEY on TIER` or `the newest archive on TIER (KEY)`.
    var description: String {
        isCurrentKey ? "the archive of the current key on \(tier)" : "the newest archive on \(tier) (\(key), the current key is on no tier)"
    }

    /// Asks the tiers in order, each bounded by `limit`; a tier that fails is passed over
    /// (its own check has said why).
    static func find(key: CacheKey?, in tiers: [any ArchiveSampling], within limit: Duration, logger: Logger) async -> ArchiveSample? {
        func ask<T: Sendable>(_ body: @escaping @Sendable () async throws -> T?) async -> T? {
            (try? await withTimeLimit(limit, body)) ?? nil
        }
        var found: (tier: any ArchiveSampling, key: CacheKey, manifest: CacheManifest, current: Bool)?
        if let key {
            for tier in tiers {
                if let manifest = await ask({ try await tier.manifest(of: key, logger: logger) }) {
                    found = (tier, key, manifest, true)
                    break
                }
            }
        }
        if found == nil {
            for tier in tiers {
                if let newest = await ask({ try await tier.newestKey(logger: logger) }),
                    let manifest = await ask({ try await tier.manifest(of: newest, logger: logger) })
                {
                    found = (tier, newest, manifest, false)
                    break
                }
            }
        }
        guard let found else { return nil }
        var sample = ArchiveSample(
            tier: found.tier.tierName, key: found.key, manifest: found.manifest, isCurrentKey: found.current, window: nil
        )
        if found.manifest.codec == "zstd",
            let bytes = await ask({ try await found.tier.firstBytes(of: found.key, count: ZstdFrameHeader.maximumSize, logger: logger) })
        {
            do {
                sample.window = .success(try ZstdFrameHeader(bytes))
            } catch {
                sample.window = .failure(error)
            }
        }
        return sample
    }
}
