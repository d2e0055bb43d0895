import Foundation
import SystemPackage

/// The `cachetiers_restore_*` gauges of the last restore, in the Prometheus text format
/// that node_exporter's textfile collector reads (`--metrics-file`,
/// `monitoring.metricsFile`).
///
/// Every known series is written on every run, 0 when it does not apply, so a series
/// never goes missing between runs; no sample carries a timestamp (the collector
/// refuses them). The last success timestamp is carried over from the file this one
/// replaces when this run failed.
public struct RestoreTextfile: Sendable {
    /// Where the file goes; it is replaced atomically (``DurableFile``).
    public var path: FilePath
    /// Every tier of the chain, for the `served_by` series.
    public var tiers: [String]

    public init(path: FilePath, tiers: [String]) {
        self.path = path
        self.tiers = tiers
    }

    /// The name of the success-timestamp series, the one value kept between runs.
    static let lastSuccessName = "cachetiers_restore_last_success_timestamp_seconds"

    /// Writes the gauges of `report`.
    /// - Throws: a one-line description of what went wrong, naming the path.
    public func write(_ report: RestoreReport) throws {
        // Before the old contents are read: a FIFO would be opened, a link followed.
        try DurableFile.requireReplaceable(path)
        try DurableFile.replace(path, with: Array(render(report, previousSuccess: previousSuccess()).utf8))
        // node_exporter ignores them (not `*.prom`), but they would pile up.
        DurableFile.sweepAbandoned(besides: path)
    }

    /// The last success timestamp of the file in place, 0 when there is none (or it is
    /// not a file this wrote).
    func previousSuccess() -> Double {
        guard let data = try? SmallFile.contents(of: path, limit: 1 << 20) else { return 0 }
        for line in String(decoding: data, as: UTF8.self).split(separator: "\n") {
            let fields = line.split(separator: " ")
            if fields.count == 2, fields[0] == Self.lastSuccessName, let value = Double(fields[1]), value.isFinite, value >= 0 {
                return value
            }
        }
        return 0
    }

    /// The file's text for `report`.
    func render(_ report: RestoreReport, previousSuccess: Double) -> String {
        let finished = report.finishedAt.timeIntervalSince1970
        let restored = report.outcome == .restored
        var text = ""
        func gauge(_ name: String, _ help: String, _ samples: [(labels: String, value: String)]) {
            text += "# HELP \(name) \(help)\n# TYPE \(name) gauge\n"
            for sample in samples { text += "\(name)\(sample.labels) \(sample.value)\n" }
        }
        func number(_ value: Double) -> String { value.isFinite ? "\(value)" : "0" }
        gauge("cachetiers_restore_last_duration_seconds", "How long the last restore took.", [("", number(report.durationSeconds))])
        gauge(
            "cachetiers_restore_last_run_timestamp_seconds", "When the last restore ended, in seconds since the epoch.",
            [("", number(finished))]
        )
        gauge(
            Self.lastSuccessName, "When the last successful restore ended, in seconds since the epoch; 0 if none.",
            [("", number(restored ? finished : previousSuccess))]
        )
        gauge(
            "cachetiers_restore_last_outcome", "1 for the last restore's outcome, 0 for the other.",
            RestoreReport.Outcome.allCases.map { ("{outcome=\"\($0.rawValue)\"}", $0 == report.outcome ? "1" : "0") }
        )
        gauge(
            "cachetiers_restore_last_served_by", "1 for the tier that served the last restore, 0 for every other.",
            tiers.map { ("{tier=\"\(Self.escape($0))\"}", $0 == report.servedBy ? "1" : "0") }
        )
        gauge("cachetiers_restore_last_bytes", "Bytes the serving tier transferred in the last restore.", [("", "\(report.bytesTransferred)")])
        gauge(
            "cachetiers_restore_last_estimated_cost_usd", "What the last restore cost, as its tier estimated it; 0 if free.",
            [("", number(report.estimatedCostUSD ?? 0))]
        )
        gauge(
            "cachetiers_restore_last_attempts", "Attempts the last restore made (a skipped tier makes none).",
            [("", "\(report.attempts.count(where: { $0.outcome != .skipped }))")]
        )
        return text
    }

    /// A label value as the text format writes it: backslash, quote and line feed escaped.
    static func escape(_ value: String) -> String {
        value.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
            .replacingOccurrences(of: "\n", with: "\\n")
    }
}
