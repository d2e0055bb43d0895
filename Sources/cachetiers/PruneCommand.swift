import ArgumentParser
import CacheTiers
import Foundation
import Logging
import SystemPackage

struct PruneCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "prune",
        abstract: "Apply the retention limits of the config's tiers (maxSize, maxAgeUnused, minAge) now.",
        discussion: """
            Directory tiers evict their least recently served archives (Documentation/Retention.md); a cache master \
            prunes itself (serve --max-size) and a bucket through its lifecycle rule (Deploy/gcs/lifecycle.json). \
            Exit 0 when every tier is within its limits, 1 when one could not be pruned, 2 on usage or config errors.
            """
    )

    @Option(name: .long, help: "The JSON config whose tiers to prune (key and destination may be left out).")
    var config: String

    @Flag(name: .long, help: "Say what would be evicted, and evict nothing.")
    var dryRun = false

    @Flag(name: .long, help: "Print the outcome as JSON on stdout.")
    var json = false

    @OptionGroup var logging: LoggingOptions

    /// What prune did with one tier, as `--json` prints it.
    struct TierOutcome: Encodable {
        struct Eviction: Encodable {
            var key: String
            var size: Int64
            var reason: String
            var lastUsedAt: Date
        }

        var tier: String
        var kind: String
        /// What was done, or why nothing is: one line.
        var summary: String
        var evicted: [Eviction] = []
        var evictedBytes: Int64 = 0
        var storedArchives: Int?
        var storedBytes: Int64?
        var error: String?
    }

    struct Outcome: Encodable {
        var dryRun: Bool
        var tiers: [TierOutcome]
    }

    func run() async throws {
        let logger = logging.makeLogger()
        // No tier is contacted: the credentials are not needed.
        let settings = try CacheTiersConfig.load(from: FilePath(config), readingSecrets: false, purpose: .tiers)
        var outcomes: [TierOutcome] = []
        for tier in settings.tiers {
            outcomes.append(prune(tier, logger: logger))
        }
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
            encoder.dateEncodingStrategy = .iso8601
            FileHandle.standardOutput.write(try encoder.encode(Outcome(dryRun: dryRun, tiers: outcomes)) + Data("\n".utf8))
        } else {
            for outcome in outcomes { print("\(outcome.tier): \(outcome.error ?? outcome.summary)") }
        }
        let failed = outcomes.filter { $0.error != nil }
        if !failed.isEmpty {
            throw ExitCode.failure
        }
    }

    private func prune(_ tier: CacheTiersConfig.Tier, logger: Logger) -> TierOutcome {
        switch tier.source {
        case .peer:
            return TierOutcome(tier: tier.name, kind: "peer", summary: "the cache master prunes itself: serve --max-size (see Documentation/Retention.md)")
        case .gcs:
            return TierOutcome(tier: tier.name, kind: "gcs", summary: "bucket lifecycle: see Deploy/gcs/lifecycle.json")
        case .install:
            return TierOutcome(tier: tier.name, kind: "install", summary: "stores nothing to prune")
        case .directory(let root):
            var outcome = TierOutcome(tier: tier.name, kind: "directory", summary: "")
            guard let policy = tier.retention, policy.limitsAnything else {
                outcome.summary = "no maxSize or maxAgeUnused: nothing to prune"
                return outcome
            }
            do {
                let report = try ArchiveRetention.prune(ArchiveFolder(root: root), policy: policy, dryRun: dryRun, logger: logger)
                outcome.evicted = report.evicted.map {
                    .init(key: $0.entry.key.rawValue, size: $0.entry.size, reason: $0.reason.rawValue, lastUsedAt: $0.entry.lastUsed)
                }
                outcome.evictedBytes = report.evictedBytes
                outcome.storedArchives = report.storedArchives
                outcome.storedBytes = report.storedBytes
                let (evicted, kept) = dryRun ? ("would evict", "would keep") : ("evicted", "kept")
                outcome.summary = "\(evicted) \(report.evicted.count) archives, \(formatBytes(report.evictedBytes)); "
                    + "\(kept) \(report.storedArchives) archives, \(formatBytes(report.storedBytes))"
                    + (policy.maxSize.map { " (maxSize \($0))" } ?? "")
            } catch {
                outcome.error = "cannot prune \(root): \(error)"
            }
            return outcome
        }
    }
}
