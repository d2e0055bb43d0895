import Foundation

/// The windows the dashboard offers, each with the width of its time buckets.
public enum DashboardWindow: String, CaseIterable, Sendable, Codable {
    case hour = "1h"
    case day = "24h"
    case week = "7d"
    case month = "30d"

    public static let `default` = DashboardWindow.day
    /// The line a `window` outside the four answers.
    static let problem = "window: expected 1h, 24h, 7d or 30d"

    public var seconds: Int {
        switch self {
        case .hour: 3600
        case .day: 86_400
        case .week: 7 * 86_400
        case .month: 30 * 86_400
        }
    }

    /// The width of one bar of the charts over time: 60 of them an hour, 48 a day, 56 a
    /// week, 60 a month.
    public var bucketSeconds: Int {
        switch self {
        case .hour: 60
        case .day: 1800
        case .week: 3 * 3600
        case .month: 12 * 3600
        }
    }
}

/// What `GET /v1/dashboard?window=24h` answers and the page at `GET /` draws: the
/// fleet's restores in a window (by `finishedAt`, as `GET /v1/stats` counts them), over
/// time, by tier and by duration, the product's four targets, the slowest restores with
/// their phases, and the alerts of `Deploy/prometheus/cachetiers-rules.yml` evaluated on
/// the stored reports.
public struct DashboardSnapshot: Codable, Sendable, Equatable {
    /// The restores one tier served, or `other` for the tiers beyond ``maximumTiers``.
    public struct Tier: Codable, Sendable, Equatable {
        public var tier: String
        public var restores: Int
        /// Of every restore in the window, failed ones included.
        public var share: Double
        /// Restores it served after an earlier tier did not.
        public var fallbacks: Int
        public var bytes: Int64
        public var estimatedCostUSD: Double
    }

    /// One bar of the charts over time: `[start, start + bucketSeconds)`.
    public struct TimeBucket: Codable, Sendable, Equatable {
        public struct TierCount: Codable, Sendable, Equatable {
            public var tier: String
            public var count: Int
        }
        /// Seconds since 1970, a multiple of ``DashboardSnapshot/bucketSeconds``.
        public var start: Int
        public var restores: Int
        public var failed: Int
        /// Restored restores by the tier that served (the tiers of ``DashboardSnapshot/tiers``).
        public var byTier: [TierCount]
        /// restored / restores; null in a bucket without a restore.
        public var successRate: Double?
    }

    /// Restored restores whose duration is in `(previous bound, upperBound]`.
    public struct DurationBin: Codable, Sendable, Equatable {
        /// Seconds; null for the last bin (over 600 s).
        public var upperBound: Double?
        public var count: Int
    }

    /// A serving attempt's phases and the restore's own, in seconds (null when unknown).
    public struct Breakdown: Codable, Sendable, Equatable {
        public var connect: Double?
        public var firstByte: Double?
        public var transfer: Double?
        public var extract: Double?
        public var extractTail: Double?
        public var promotion: Double?
        public var writeBack: Double?
    }

    public struct SlowRestore: Codable, Sendable, Equatable {
        public var id: String
        public var finishedAt: Date
        public var durationSeconds: Double
        public var outcome: String
        public var servedBy: String?
        public var host: String?
        public var key: String
        /// Of the serving attempt (the last attempt of a failed restore).
        public var breakdown: Breakdown
    }

    public struct Alert: Codable, Sendable, Equatable {
        public var name: String
        public var severity: String
        /// One line: what fired, with its value.
        public var summary: String
        /// The `served_by` label of ``FleetAlertRules/slowRestore`` (one alert per tier).
        public var servedBy: String?
    }

    /// Tiers shown by name; the rest are summed as `other`.
    public static let maximumTiers = 6
    /// Rows of ``slowest``.
    public static let slowestCount = 10

    public var window: DashboardWindow
    public var windowSeconds: Int
    public var bucketSeconds: Int
    public var generatedAt: Date
    public var restores: Int
    public var restored: Int
    public var failed: Int
    /// restored / restores; null when there were none.
    public var successRate: Double?
    /// Restored restores served by a tier other than their first attempt's.
    public var fallbacks: Int
    public var bytes: Int64
    public var estimatedCostUSD: Double
    /// The window's cost scaled to 30 days.
    public var projectedMonthlyCostUSD: Double
    /// Nearest-rank percentiles of the restored restores' durations, exact (as `/v1/stats`).
    public var durationSeconds: FleetStats.Percentiles
    public var tiers: [Tier]
    public var overTime: [TimeBucket]
    /// The buckets of `cachetiers_fleet_restore_duration_seconds` (1 … 600 s, then over).
    public var distribution: [DurationBin]
    public var targets: [FleetStats.Target]
    /// The ``slowestCount`` longest restores of the window, longest first.
    public var slowest: [SlowRestore]
    /// The alerts firing now.
    public var alerts: [Alert]
    /// When the newest stored report arrived (any window).
    public var lastReportReceivedAt: Date?

    /// The JSON the API answers: pretty, keys sorted, dates in ISO 8601.
    public func jsonData() throws -> Data {
        try Self.encoder.encode(self)
    }

    public static func decode(_ data: Data) throws -> DashboardSnapshot {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return try decoder.decode(DashboardSnapshot.self, from: data)
    }

    private static var encoder: JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        encoder.dateEncodingStrategy = .iso8601
        return encoder
    }
}
