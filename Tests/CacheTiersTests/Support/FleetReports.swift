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
            "timings": ["promotionSeconds": 0.004, "oldTreeRemovalSeconds": NSNull(), "writeBackSeconds": NSNull()] as [String: Any],
            "attempts": attempts.map { attempt -> [String: Any] in
                [
                    "tier": attempt.0, "attempt": 1, "outcome": attempt.1, "durationSeconds": 1.0,
                    "bytes": attempt.1 == "hit" ? bytes : 0, "error": attempt.1 == "hit" ? NSNull() : "no cache" as Any,
                    "timings": ["connectSeconds": 0.1, "firstByteSeconds": NSNull()] as [String: Any],
                ]
            },
            "writeBack": [] as [Any],
        ]
    }

    var body: [UInt8] { Self.encode(json) }

    static func encode(_ object: [String: Any]) -> [UInt8] {
        [UInt8](try! JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]))
    }
}
