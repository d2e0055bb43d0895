import ArgumentParser
import AsyncHTTPClient
import CacheTiers
import CacheTiersServer
import Foundation
import NIOCore

/// `cachetiers stats`: the fleet's restores as a cache master counted them, printed the
/// way `ccache -s` prints a compiler cache's.
struct StatsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stats",
        abstract: "Print the fleet's restores, durations, tiers, cost and targets from a cache master.",
        discussion: "Reads GET /v1/stats (Documentation/CacheMasterAPI.md). Exit 0, 1 when the cache master cannot answer, 2 on usage errors."
    )

    @Option(name: .long, help: "The cache master's base URL, e.g. http://10.0.0.5:7420.")
    var peer: String

    @Option(name: .long, help: "The window, by when restores finished: Nm, Nh or Nd, from 1m to 90d.")
    var window = StatsWindow.defaultText

    @Flag(name: .long, help: "Print the cache master's JSON instead of the table.")
    var json = false

    @Option(name: .long, help: "A file holding the cache master's bearer token (the --token-file of serve).")
    var tokenFile: String?

    @OptionGroup var logging: LoggingOptions

    func validate() throws {
        guard peer.hasPrefix("http://") || peer.hasPrefix("https://") else {
            throw ValidationError("--peer must be an http:// or https:// URL")
        }
        guard StatsWindow.seconds(window) != nil else { throw ValidationError("--window: \(StatsWindow.problem)") }
    }

    func run() async throws {
        let token = try tokenFile.map { try readToken($0, option: "--token-file") }
        let body: ByteBuffer
        do {
            body = try await FleetStatsClient(peer: peer).fetch(window: window, token: token)
        } catch {
            throw CommandFailure("stats: \(error)")
        }
        let stats: FleetStats
        do {
            stats = try JSONDecoder().decode(FleetStats.self, from: Data(body.readableBytesView))
        } catch {
            throw CommandFailure("stats: \(peer) answered something that is not fleet stats; is it a cache master?")
        }
        if json {
            print(String(buffer: body))
        } else {
            print(Self.table(stats, window: window), terminator: "")
        }
    }

    /// The stats as `ccache -s` would put them: a label, its value, and the detail. Every
    /// string the master sent (tier names, keys, targets, notes) is printed escaped
    /// (``Swift/String/printableOnOneLine``): a master, or what a VM reported to it, must
    /// not move the cursor, forge a line or reorder what the terminal shows.
    static func table(_ stats: FleetStats, window: String) -> String {
        var lines: [String] = []
        func line(_ label: String, _ value: String) {
            lines.append(label.padding(toLength: 28, withPad: " ", startingAt: 0) + value)
        }
        func percent(_ part: Int) -> String {
            stats.restores > 0 ? " (" + formatPercent(Double(part) / Double(stats.restores)) + ")" : ""
        }
        func durations(_ p50: Double?, _ p90: Double?, _ p99: Double?) -> String {
            [p50, p90, p99].map { $0.map(formatSeconds) ?? "-" }.joined(separator: " / ")
        }
        line("Window:", "\(window) (by when restores finished)")
        line("Restores:", "\(stats.restores)")
        line("  Restored:", "\(stats.restored)\(percent(stats.restored))")
        line("  Failed:", "\(stats.failed)\(percent(stats.failed))")
        line("  Fell back:", "\(stats.fallbacks)")
        line("Duration p50 / p90 / p99:", durations(stats.durationSeconds.p50, stats.durationSeconds.p90, stats.durationSeconds.p99))
        line("Bytes transferred:", formatBytes(stats.bytes))
        line("Estimated cost:", formatUSD(stats.estimatedCostUSD))
        line("  Projected a month:", formatUSD(stats.projectedMonthlyCostUSD))
        lines.append("")

        lines.append("Served by:")
        if stats.byTier.isEmpty { lines.append("  (no restore)") }
        let width = max(4, stats.byTier.map(\.tier.printableOnOneLine.count).max() ?? 0)
        for tier in stats.byTier {
            lines.append(
                "  " + tier.tier.printableOnOneLine.padding(toLength: width, withPad: " ", startingAt: 0)
                    + "  \(tier.restores) (\(formatPercent(tier.share))), p50 / p90 / p99 \(durations(tier.p50, tier.p90, tier.p99)),"
                    + " \(formatBytes(tier.bytes)), \(formatUSD(tier.estimatedCostUSD))"
            )
        }
        for (title, keys) in [("Most restored keys:", stats.topKeys), ("Most missed keys:", stats.topMissedKeys)] {
            lines.append("")
            lines.append(title)
            if keys.isEmpty { lines.append("  (none)") }
            for entry in keys { lines.append("  \(entry.count)  \(entry.key.printableOnOneLine)") }
        }
        lines.append("")
        lines.append("Targets:")
        // Each column as wide as its widest cell: a number is never cut, nor run into the verdict.
        let rows = stats.targets.map { target -> [String] in
            let verdict = target.met.map { $0 ? "met" : "NOT MET" } ?? (target.note ?? "no data")
            let value: String
            switch target.name {
            case "transfer": value = target.value.map(formatSeconds) ?? "-"
            case "successRate": value = target.value.map(formatPercent) ?? "-"
            case "monthlyCost": value = target.value.map(formatUSD) ?? "-"
            default: value = target.value.map { "\($0)" } ?? "-"
            }
            return [target.name, target.target, value, verdict].map(\.printableOnOneLine)
        }
        let widths = zip([12, 22, 12], 0...).map { least, column in max(least, (rows.map { $0[column].count }.max() ?? 0) + 1) }
        for row in rows {
            lines.append("  " + zip(row, widths).map { $0.padding(toLength: $1, withPad: " ", startingAt: 0) }.joined() + row[3])
        }
        return lines.joined(separator: "\n") + "\n"
    }
}

private func formatPercent(_ fraction: Double) -> String { String(format: "%.2f %%", fraction * 100) }
private func formatSeconds(_ seconds: Double) -> String { String(format: "%.1f s", seconds) }
private func formatUSD(_ amount: Double) -> String { String(format: "%.4f USD", amount) }
