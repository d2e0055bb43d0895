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
        let base = peer.hasSuffix("/") ? String(peer.dropLast()) : peer
        var request = HTTPClientRequest(url: "\(base)/v1/stats?window=\(window)")
        if let token { request.headers.add(name: "Authorization", value: "Bearer \(token)") }
        let body: ByteBuffer
        let status: UInt
        do {
            let response = try await HTTPClient.shared.execute(request, timeout: .seconds(30))
            status = response.status.code
            body = try await response.body.collect(upTo: 4 << 20)
        } catch {
            throw CommandFailure("stats: cannot reach \(peer): \(error)")
        }
        guard status == 200 else {
            let reason = String(buffer: body).trimmingCharacters(in: .whitespacesAndNewlines).printableOnOneLine
            throw CommandFailure("stats: \(peer) answered \(status): \(reason.prefix(300))")
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

    /// The stats as `ccache -s` would put them: a label, its value, and the detail.
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
        let width = max(4, stats.byTier.map(\.tier.count).max() ?? 0)
        for tier in stats.byTier {
            lines.append(
                "  " + tier.tier.padding(toLength: width, withPad: " ", startingAt: 0)
                    + "  \(tier.restores) (\(formatPercent(tier.share))), p50 / p90 / p99 \(durations(tier.p50, tier.p90, tier.p99)),"
                    + " \(formatBytes(tier.bytes)), \(formatUSD(tier.estimatedCostUSD))"
            )
        }
        for (title, keys) in [("Most restored keys:", stats.topKeys), ("Most missed keys:", stats.topMissedKeys)] {
            lines.append("")
            lines.append(title)
            if keys.isEmpty { lines.append("  (none)") }
            for entry in keys { lines.append("  \(entry.count)  \(entry.key)") }
        }
        lines.append("")
        lines.append("Targets:")
        for target in stats.targets {
            let verdict = target.met.map { $0 ? "met" : "NOT MET" } ?? (target.note ?? "no data")
            let value: String
            switch target.name {
            case "transfer": value = target.value.map(formatSeconds) ?? "-"
            case "successRate": value = target.value.map(formatPercent) ?? "-"
            case "monthlyCost": value = target.value.map(formatUSD) ?? "-"
            default: value = target.value.map { "\($0)" } ?? "-"
            }
            lines.append(
                "  " + target.name.padding(toLength: 12, withPad: " ", startingAt: 0)
                    + target.target.padding(toLength: 22, withPad: " ", startingAt: 0)
                    + value.padding(toLength: 12, withPad: " ", startingAt: 0) + verdict
            )
        }
        return lines.joined(separator: "\n") + "\n"
    }
}

private func formatPercent(_ fraction: Double) -> String { String(format: "%.2f %%", fraction * 100) }
private func formatSeconds(_ seconds: Double) -> String { String(format: "%.1f s", seconds) }
private func formatUSD(_ amount: Double) -> String { String(format: "%.4f USD", amount) }
