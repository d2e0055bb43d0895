import Foundation

/// What `GET /v1/stats?window=24h` answers and `cachetiers stats` prints: the fleet's
/// restores in a window (by `finishedAt`), their durations, who served them, what they
/// cost, and the product's four targets. Durations are over restored reports;
/// percentiles are nearest-rank (the value at rank ⌈p·n⌉ of the sorted durations).
public struct FleetStats: Codable, Sendable, Equatable {
    public struct Percentiles: Codable, Sendable, Equatable {
        public var p50: Double?
        public var p90: Double?
        public var p99: Double?

        public func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(p50, forKey: .p50)
            try container.encode(p90, forKey: .p90)
            try container.encode(p99, forKey: .p99)
        }
    }

    /// The restored reports one tier served.
    public struct Tier: Codable, Sendable, Equatable {
        public var tier: String
        public var restores: Int
        /// Of every restore in the window, failed ones included.
        public var share: Double
        public var p50: Double?
        public var p90: Double?
        public var p99: Double?
        public var bytes: Int64
        public var estimatedCostUSD: Double

        public func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(tier, forKey: .tier)
            try container.encode(restores, forKey: .restores)
            try container.encode(share, forKey: .share)
            try container.encode(p50, forKey: .p50)
            try container.encode(p90, forKey: .p90)
            try container.encode(p99, forKey: .p99)
            try container.encode(bytes, forKey: .bytes)
            try container.encode(estimatedCostUSD, forKey: .estimatedCostUSD)
        }
    }

    public struct KeyCount: Codable, Sendable, Equatable {
        public var key: String
        public var count: Int
    }

    /// One of the product's success metrics: its number in the window and whether it
    /// holds (both null when there is nothing to judge it by).
    public struct Target: Codable, Sendable, Equatable {
        public var name: String
        public var target: String
        public var value: Double?
        public var met: Bool?
        public var note: String?

        public func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(name, forKey: .name)
            try container.encode(target, forKey: .target)
            try container.encode(value, forKey: .value)
            try container.encode(met, forKey: .met)
            try container.encode(note, forKey: .note)
        }
    }

    /// Tiers named in ``byTier`` before the rest become one `other` row.
    public static let maximumTierRows = 20

    /// The window, in seconds.
    public var window: Int
    public var restores: Int
    public var restored: Int
    public var failed: Int
    /// restored / restores; null when there were none.
    public var successRate: Double?
    public var durationSeconds: Percentiles
    /// The ``maximumTierRows`` tiers with the most restores, then, when more served,
    /// one row `other` summing the rest (its percentiles null).
    public var byTier: [Tier]
    /// Restored reports whose serving tier is not the first attempt's.
    public var fallbacks: Int
    public var bytes: Int64
    public var estimatedCostUSD: Double
    /// The window's cost scaled to 30 days.
    public var projectedMonthlyCostUSD: Double
    public var topKeys: [KeyCount]
    /// The keys with the most `miss` attempts.
    public var topMissedKeys: [KeyCount]
    public var targets: [Target]

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(window, forKey: .window)
        try container.encode(restores, forKey: .restores)
        try container.encode(restored, forKey: .restored)
        try container.encode(failed, forKey: .failed)
        try container.encode(successRate, forKey: .successRate)
        try container.encode(durationSeconds, forKey: .durationSeconds)
        try container.encode(byTier, forKey: .byTier)
        try container.encode(fallbacks, forKey: .fallbacks)
        try container.encode(bytes, forKey: .bytes)
        try container.encode(estimatedCostUSD, forKey: .estimatedCostUSD)
        try container.encode(projectedMonthlyCostUSD, forKey: .projectedMonthlyCostUSD)
        try container.encode(topKeys, forKey: .topKeys)
        try container.encode(topMissedKeys, forKey: .topMissedKeys)
        try container.encode(targets, forKey: .targets)
    }

    /// The JSON the API answers: pretty, keys sorted.
    public func jsonData() throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return try encoder.encode(self)
    }

    /// The targets the product was built for, judged on the window's numbers.
    static func targets(p90: Double?, successRate: Double?, projectedMonthlyCostUSD: Double, restores: Int) -> [Target] {
        [
            Target(name: "transfer", target: "p90 under 90 s", value: p90, met: p90.map { $0 < 90 }),
            Target(name: "successRate", target: "over 99 %", value: successRate, met: successRate.map { $0 > 0.99 }),
            Target(
                name: "monthlyCost", target: "under 10 USD", value: restores > 0 ? projectedMonthlyCostUSD : nil,
                met: restores > 0 ? projectedMonthlyCostUSD < 10 : nil
            ),
            Target(
                name: "maintenance", target: "under 1 hour a month", value: nil, met: nil,
                note: "not measurable from restore reports"
            ),
        ]
    }
}

/// The `window` of `GET /v1/stats` and `cachetiers stats --window`: `Nm`, `Nh` or `Nd`,
/// from one minute to 90 days.
public enum StatsWindow {
    public static let defaultText = "24h"
    public static let problem = "expected a window such as 30m, 24h or 7d, from 1m to 90d"

    /// The window in seconds, or nil when `text` is not one.
    public static func seconds(_ text: String) -> Int? {
        guard let unit = text.last, text.count >= 2, text.count <= 8 else { return nil }
        let digits = text.dropLast()
        guard digits.allSatisfy(\.isASCII), digits.allSatisfy(\.isNumber), let count = Int(digits) else { return nil }
        let scale: Int
        switch unit {
        case "m": scale = 60
        case "h": scale = 3600
        case "d": scale = 86_400
        default: return nil
        }
        let (seconds, overflow) = count.multipliedReportingOverflow(by: scale)
        guard !overflow, (60...90 * 86_400).contains(seconds) else { return nil }
        return seconds
    }
}
