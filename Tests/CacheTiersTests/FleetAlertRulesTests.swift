import Foundation
import Testing

@testable import CacheTiersServer

/// The dashboard's alerts: the rules of Deploy/prometheus/cachetiers-rules.yml evaluated
/// on stored reports, each shown firing and held back by its guard, and their numbers
/// checked against the YAML itself.
@Suite struct FleetAlertRulesTests {
    /// A minute boundary, so `now`'s minute is `now` itself.
    static let now = Date(timeIntervalSince1970: 1_800_000_000)
    static let minute = 1_800_000_000

    /// `count` restores `minutesAgo` minutes before now, of `seconds` each.
    static func cell(_ minutesAgo: Int, _ count: Int, seconds: Double, tier: String = "cache-master", failed: Bool = false) -> FleetAlertRules.MinuteCell {
        .init(
            minute: minute - minutesAgo * 60, servedBy: failed ? "none" : tier, failed: failed,
            bucket: FleetMetrics.durationBuckets.firstIndex { seconds <= $0 } ?? FleetMetrics.durationBuckets.count, count: count
        )
    }

    static func firing(_ cells: [FleetAlertRules.MinuteCell], newest: Date? = now, upSince: Date = now.addingTimeInterval(-86_400)) -> [String] {
        FleetAlertRules.firing(cells: cells, now: now, newestArrival: newest, upSince: upSince).map(\.name)
    }

    @Test func slowTransfersNeedTenRestoresAndFiveMinutesOfIt() {
        // Ten restores of 180 s ten minutes ago: p90 is 180 s → 120 + 60 × 0.9 … > 120.
        #expect(Self.firing([Self.cell(10, 10, seconds: 180)]) == ["CacheTiersSlowTransfersP90", "CacheTiersSlowRestore"])
        // Nine: under the 10-restore guard (the single slow ones still alert).
        #expect(Self.firing([Self.cell(10, 9, seconds: 180)]) == ["CacheTiersSlowRestore"])
        // Ten, but only in the current minute: not yet true five minutes ago (`for: 5m`).
        #expect(Self.firing([Self.cell(0, 10, seconds: 180)]) == ["CacheTiersSlowRestore"])
        // Ten slow ones among ninety fast ones: p90 falls in a fast bucket.
        #expect(Self.firing([Self.cell(10, 10, seconds: 180), Self.cell(10, 90, seconds: 40)]) == ["CacheTiersSlowRestore"])
        // 61 minutes ago: out of the hour.
        #expect(Self.firing([Self.cell(61, 50, seconds: 180)]).isEmpty)
    }

    @Test func aSlowRestoreAlertsPerServingTierFailedOnesIncluded() {
        let alerts = FleetAlertRules.firing(
            cells: [Self.cell(3, 1, seconds: 121, tier: "gcs"), Self.cell(3, 2, seconds: 500, failed: true), Self.cell(3, 5, seconds: 120)],
            now: Self.now, newestArrival: Self.now, upSince: Self.now
        )
        #expect(alerts.map(\.name) == ["CacheTiersSlowRestore", "CacheTiersSlowRestore"])
        #expect(alerts.map(\.servedBy) == ["none", "gcs"], "120 s itself is in the le=120 bucket: not over")
        #expect(alerts.allSatisfy { $0.severity == "warning" })
    }

    @Test func theSuccessRateAlertNeedsThreeFailures() {
        // 3 of 10 failed ten minutes ago: 70 % < 90 %, and both burn rates (the short
        // windows are empty, which keeps the long windows' verdict).
        let three = [Self.cell(10, 3, seconds: 5, failed: true), Self.cell(10, 7, seconds: 8)]
        #expect(Self.firing(three) == ["CacheTiersSuccessRateLow", "CacheTiersErrorBudgetBurnFast", "CacheTiersErrorBudgetBurnSlow"])
        // 2 of 4: 50 %, under the 3-failure guard.
        #expect(Self.firing([Self.cell(10, 2, seconds: 5, failed: true), Self.cell(10, 2, seconds: 8)]).isEmpty)
        // 3 of 40: 92.5 % succeeded; 7.5 % failed is past the slow burn (6 %) only.
        #expect(Self.firing([Self.cell(10, 3, seconds: 5, failed: true), Self.cell(10, 37, seconds: 8)]) == ["CacheTiersErrorBudgetBurnSlow"])
        // Failing only since two minutes: not for five minutes yet; the burn rates fire at once.
        #expect(Self.firing([Self.cell(2, 5, seconds: 5, failed: true)]) == ["CacheTiersErrorBudgetBurnFast", "CacheTiersErrorBudgetBurnSlow"])
    }

    @Test func aShortWindowWithRestoresButNoFailureResetsTheBurnRate() {
        // 5 failures 20 minutes ago, then 10 restores in the last 5 minutes: the hour
        // burns (5/15), the 5 m window does not (0/10); the 30 m window (5/15) does.
        let cells = [Self.cell(20, 5, seconds: 5, failed: true), Self.cell(1, 10, seconds: 8)]
        let names = Self.firing(cells)
        #expect(!names.contains("CacheTiersErrorBudgetBurnFast"))
        #expect(names.contains("CacheTiersErrorBudgetBurnSlow"))
    }

    @Test func reportsAreStaleAfterSixHoursOrWhenNoneCameInSixHoursOfServing() {
        #expect(Self.firing([], newest: Self.now.addingTimeInterval(-7 * 3600)) == ["CacheTiersReportsStale"])
        #expect(Self.firing([], newest: Self.now.addingTimeInterval(-5 * 3600)).isEmpty)
        #expect(Self.firing([], newest: nil, upSince: Self.now.addingTimeInterval(-7 * 3600)) == ["CacheTiersReportsStale"])
        #expect(Self.firing([], newest: nil, upSince: Self.now.addingTimeInterval(-3600)).isEmpty, "a master just started is not stale")
    }

    @Test func histogramQuantileInterpolatesInsideTheBucketAsPrometheusDoes() {
        func counts(_ pairs: [Int: Int]) -> [Int] {
            (0...FleetMetrics.durationBuckets.count).map { pairs[$0] ?? 0 }
        }
        // All ten in (90, 120]: rank 9 of 10 → 90 + 30 × 9/10.
        #expect(FleetAlertRules.histogramQuantile(0.9, bucketCounts: counts([9: 10])) == 117)
        // Five in (0, 1], five in (1, 5]: the median is the first bucket's top.
        #expect(FleetAlertRules.histogramQuantile(0.5, bucketCounts: counts([0: 5, 1: 5])) == 1)
        #expect(FleetAlertRules.histogramQuantile(0.75, bucketCounts: counts([0: 5, 1: 5])) == 3)
        // In +Inf: the highest finite bound.
        #expect(FleetAlertRules.histogramQuantile(0.9, bucketCounts: counts([13: 4])) == 600)
        // No observation: NaN, which no comparison satisfies.
        #expect(FleetAlertRules.histogramQuantile(0.9, bucketCounts: counts([:])) == nil)
    }

    /// The YAML's numbers, read from the file: when a threshold or window there changes,
    /// this fails until FleetAlertRules says the same.
    @Test func theSwiftRulesAreTheShippedYAMLs() throws {
        let yaml = try String(contentsOfFile: AlertRules.rulesFile, encoding: .utf8)
        let blocks = yaml.components(separatedBy: "- alert: ").dropFirst()
        var seen: [String] = []
        for block in blocks {
            let name = String(block.prefix { !$0.isNewline })
            seen.append(name)
            let rule = try #require(FleetAlertRules.all.first { $0.name == name }, "\(name) has no Swift rule")
            let expression = block.components(separatedBy: "\n        labels:").first ?? ""
            #expect(Self.windows(in: expression) == rule.windows, "\(name): windows")
            let compared = Self.comparedValues(in: expression)
            #expect(compared.count == rule.comparedValues.count, "\(name): \(compared) vs \(rule.comparedValues)")
            for (a, b) in zip(compared, rule.comparedValues) { #expect(abs(a - b) < 1e-12, "\(name): \(compared) vs \(rule.comparedValues)") }
            let forLine = expression.components(separatedBy: "\n").first { $0.trimmingCharacters(in: .whitespaces).hasPrefix("for: ") }
            #expect(forLine.flatMap { Self.seconds($0.trimmingCharacters(in: .whitespaces).dropFirst(5)) } == rule.forSeconds, "\(name): for")
            #expect(block.contains("severity: \(rule.severity)"), "\(name): severity")
        }
        #expect(seen == FleetAlertRules.all.map(\.name))

        let p90 = try #require(blocks.first { $0.hasPrefix("CacheTiersSlowTransfersP90") })
        #expect(p90.contains("histogram_quantile(\(FleetAlertRules.slowQuantile), "))
        let slow = try #require(blocks.first { $0.hasPrefix("CacheTiersSlowRestore") })
        #expect(slow.contains(#"le=~"\#(Int(FleetAlertRules.slowRestoreSeconds))|"#))
        // The recording rules the ratio alerts read: increase5m … increase6h.
        let recorded = yaml.components(separatedBy: "- record: cachetiers:restores:increase").dropFirst().map { block in
            Self.seconds(block.prefix { $0 != "\n" })!
        }
        #expect(recorded == FleetAlertRules.recordedWindows)
        let fast = try #require(blocks.first { $0.hasPrefix("CacheTiersErrorBudgetBurnFast") })
        #expect(fast.contains("increase\(FleetAlertRules.hour / 3600)h") && fast.contains("increase\(FleetAlertRules.fastShortWindow / 60)m"))
        let slowBurn = try #require(blocks.first { $0.hasPrefix("CacheTiersErrorBudgetBurnSlow") })
        #expect(slowBurn.contains("increase\(FleetAlertRules.slowLongWindow / 3600)h") && slowBurn.contains("increase\(FleetAlertRules.slowShortWindow / 60)m"))
        let successRate = try #require(blocks.first { $0.hasPrefix("CacheTiersSuccessRateLow") })
        #expect(successRate.contains("increase\(FleetAlertRules.hour / 3600)h"))
    }

    /// `5m`, `1h`, `6h` in seconds.
    static func seconds(_ text: some StringProtocol) -> Int? {
        guard let unit = text.last, let count = Int(text.dropLast()) else { return nil }
        switch unit {
        case "s": return count
        case "m": return count * 60
        case "h": return count * 3600
        case "d": return count * 86_400
        default: return nil
        }
    }

    /// The `[1h]` range windows of an expression.
    static func windows(in expression: String) -> [Int] {
        expression.matches(of: /\[(\d+[smhd])\]/).compactMap { seconds($0.output.1) }
    }

    /// The numbers after every comparison (`> 14.4 * 0.01` is 0.144, `> 6 * 3600` 21600).
    static func comparedValues(in expression: String) -> [Double] {
        expression.matches(of: /(?:>=|<=|==|!=|>|<)\s*(-?[0-9.]+)(?:\s*\*\s*([0-9.]+))?/).compactMap { match in
            guard let value = Double(match.output.1) else { return nil }
            return match.output.2.flatMap { Double($0) }.map { value * $0 } ?? value
        }
    }
}
