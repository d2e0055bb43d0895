import Foundation

/// Restore reports as a VM posts them to `POST /v1/reports` (the contract's report JSON),
/// built field by field so a test can set exactly the numbers it then expects back.
struct FleetReport {
    var id = UUID().uuidString.lowercased()
    var finishedAt = Date().addingTimeInterval(-60)
    var key = "node-modules-aaa"
    var servedBy: String? = "cache-master"
    var durationSeconds = 10.0
    var bytes: Int64 = 1000
    var costUSD: Double? = nil
    /// (tier, outcome) of each attempt, in order; the last one serves when restored.
    var attempts: [(String, String)] = [("cache-master", "hit")]
    /// When set, the serving attempt takes the whole duration, split into its phases as a
    /// real restore measures them (connect, first byte, transfer, extract, extract tail);
    /// otherwise every attempt takes 1 s and only its connect time is known.
    var measuredPhases = false

    var json: [String: Any] {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return [
            "id": id,
            "finishedAt": formatter.string(from: finishedAt),
            "host": "workspace-vm-17",
            "key": key,
            "outcome": servedBy == nil ? "failed" : "restored",
            "servedBy": servedBy.map { $0 as Any } ?? NSNull(),
            "destination": "/workspace/node_modules",
            "durationSeconds": durationSeconds,
            "bytesTransferred": bytes,
            "estimatedCostUSD": costUSD.map { $0 as Any } ?? NSNull(),
            "archive": servedBy == nil ? NSNull() : ["compressedBytes": bytes, "uncompressedBytes": bytes * 4] as [String: Any],
            "throughputBytesPerSecond": NSNull(),
            "timings": [
                "promotionSeconds": 0.004, "oldTreeRemovalSeconds": NSNull(),
                // A fresh install's tree is packed and written back to the tiers above it.
                "writeBackSeconds": measuredPhases && servedBy == "fresh-install" ? 6.5 as Any : NSNull(),
            ] as [String: Any],
            "attempts": attempts.map { attempt -> [String: Any] in
                let serving = measuredPhases && attempt.1 == "hit"
                // An install downloads no archive: it has no transfer phases.
                let transferred = serving && attempt.0 != "fresh-install"
                return [
                    "tier": attempt.0, "attempt": 1, "outcome": attempt.1,
                    "durationSeconds": serving ? durationSeconds * 0.98 : 1.0,
                    "bytes": attempt.1 == "hit" ? bytes : 0, "error": attempt.1 == "hit" ? NSNull() : "no cache" as Any,
                    "timings": transferred ? phases : ["connectSeconds": serving ? NSNull() : 0.1 as Any, "firstByteSeconds": NSNull()] as [String: Any],
                ]
            },
            "writeBack": [] as [Any],
        ]
    }

    /// The serving attempt's phases for ``measuredPhases``: a transfer of most of the time,
    /// extraction overlapping it, and a short tail after the last byte.
    private var phases: [String: Any] {
        let attempt = durationSeconds * 0.98
        return [
            "connectSeconds": 0.004, "firstByteSeconds": 0.02 + attempt * 0.002,
            "transferSeconds": attempt * 0.93, "extractSeconds": attempt * 0.9, "extractTailSeconds": attempt * 0.05,
        ]
    }

    var body: [UInt8] { Self.encode(json) }

    static func encode(_ object: [String: Any]) -> [UInt8] {
        [UInt8](try! JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]))
    }
}
