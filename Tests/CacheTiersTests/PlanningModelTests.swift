@testable import CacheTiers
import Foundation
import Testing

/// The planning model behind `cachetiers plan`: the production analysis's numbers, its
/// decision tree's every branch, the capacity sum, what a master's stats turn into, and
/// the inputs it refuses.
@Suite struct PlanningModelTests {
    static func plan(_ change: (inout PlanInputs) -> Void = { _ in }) throws -> DeploymentPlan {
        var inputs = PlanInputs()
        change(&inputs)
        return try DeploymentPlan(inputs)
    }

    /// What one GCS transfer costs with the defaults, by hand: 0.4 GiB at 0.01 USD a
    /// GiB, plus 53 reads (1 metadata, 52 segments of 8 MiB) at 0.0004 USD per 1,000.
    static let transferUSD = Double(archiveBytes) / 1_073_741_824 * 0.01 + 53 * 0.0004 / 1000
    /// The default archive, 0.4 GiB.
    static let archiveBytes: Int64 = 429_496_730
    /// GCS is asked, serves 99.9 % of the time, and a miss is one metadata read.
    static func gcsUSD(perMonth restores: Double) -> Double {
        restores * (0.999 * transferUSD + 0.001 * 0.0004 / 1000)
    }

    /// `value` is `expected` give or take 1 %: the analysis's figures are rounded, and
    /// leave out GCS's reads (53 a restore at 0.0004 USD per 1,000: 0.5 % of a transfer).
    static func about(_ value: Double, _ expected: Double) -> Bool {
        abs(value - expected) <= expected * 0.01
    }

    @Test func gcsOnEveryRestoreCostsTheAnalysisFigures() throws {
        for (perDay, analysis) in [(100.0, 12.0), (500, 60), (1_000, 120)] {
            let plan = try Self.plan { $0.workspacesPerDay = perDay }
            let gcs = try #require(plan.option("gcs-every-restore"))
            #expect(Self.about(gcs.monthlyCostUSD, analysis), "\(perDay) a day: \(gcs.monthlyCostUSD) USD, the analysis said \(analysis)")
            #expect(abs(gcs.monthlyCostUSD - Self.gcsUSD(perMonth: perDay * 30)) < 1e-9)
        }
        let plan = try Self.plan()
        #expect(abs(plan.gcsCostPerTransferUSD - Self.transferUSD) < 1e-12)
        #expect(Self.about(plan.gcsCostPerTransferUSD, 0.004), "about 0.004 USD a transfer")
        #expect(plan.gcsRequestsPerRestore == 53, "52 segments of 8 MiB and the object's metadata")
    }

    @Test func hybridCostsThreeToSixAndPeerOnlyNothing() throws {
        for (rate, analysis) in [(0.05, 3.0), (0.10, 6.0)] {
            let plan = try Self.plan { $0.fallbackRate = rate }
            let hybrid = try #require(plan.option("hybrid"))
            #expect(Self.about(hybrid.monthlyCostUSD, analysis), "\(rate): \(hybrid.monthlyCostUSD) USD")
            #expect(abs(hybrid.monthlyCostUSD - Self.gcsUSD(perMonth: 500 * 30 * rate)) < 1e-9)
            #expect(plan.option("peer-only")?.monthlyCostUSD == 0)
            #expect(plan.option("fresh-install")?.monthlyCostUSD == 0)
        }
    }

    @Test func timesSuccessAndWaitingFollowTheChains() throws {
        let plan = try Self.plan()
        #expect(plan.options.map(\.name) == ["peer-only", "gcs-every-restore", "hybrid", "fresh-install"])
        #expect(plan.options.map(\.tiers) == [["peer", "install"], ["gcs", "install"], ["peer", "gcs", "install"], ["install"]])
        let peerOnly = try #require(plan.option("peer-only"))
        // 95 % at 70 s; 5 % to a 350 s install, failed or not.
        #expect(abs(peerOnly.expectedRestoreSeconds - 84) < 1e-9)
        #expect(abs(peerOnly.successRate - 0.9995) < 1e-12)
        #expect(abs(peerOnly.waitingHoursPerDay - 500 * 84 / 3600) < 1e-9)
        let hybrid = try #require(plan.option("hybrid"))
        #expect(abs(hybrid.expectedRestoreSeconds - (0.95 * 70 + 0.05 * (0.999 * 55 + 0.001 * 350))) < 1e-9)
        #expect(abs(hybrid.successRate - (1 - 0.05 * 0.001 * 0.01)) < 1e-12)
        #expect(abs((hybrid.servedShares["gcs"] ?? 0) - 0.05 * 0.999) < 1e-12)
        let gcs = try #require(plan.option("gcs-every-restore"))
        #expect(abs(gcs.expectedRestoreSeconds - 55.295) < 1e-9)
        #expect(gcs.meetsTargets == ["transfer": true, "successRate": true, "monthlyCost": false])
        let install = try #require(plan.option("fresh-install"))
        #expect(install.expectedRestoreSeconds == 350 && install.successRate == 0.99)
        #expect(install.meetsTargets == ["transfer": false, "successRate": false, "monthlyCost": true])

        // A link speed gives the time: 400 MiB over 100 Mbit/s.
        let linked = try Self.plan { $0.peerTransfer = .linkMbps(100) }
        #expect(abs(linked.peerSeconds - Double(Self.archiveBytes) * 8 / 100e6) < 1e-9)
    }

    // MARK: the decision tree

    @Test func underAThousandWithBudgetConcernsChoosesTheHybrid() throws {
        let plan = try Self.plan()
        #expect(plan.recommendation.option == "hybrid")
        let reasons = plan.recommendation.reasons
        #expect(reasons[0] == "Traffic is 500 workspaces a day, under 1,000: the question is what GCS costs, not how to scale the peer.")
        #expect(
            reasons[1]
                == "Budget concern: GCS on every restore would cost 60.26 USD a month, over the 10.00 USD budget; the peer first with GCS for the 5.00 % it misses costs 3.01 USD (restores 69.3 s, success 99.999 %)."
        )
        #expect(reasons.last?.hasPrefix("A fresh install stays last in the chain: 350.0 s a restore") == true)
    }

    @Test func underAThousandWithoutBudgetConcernsChoosesGCSAlone() throws {
        let plan = try Self.plan { $0.budgetUSD = 100 }
        #expect(plan.recommendation.option == "gcs-every-restore")
        #expect(plan.recommendation.reasons[1].hasPrefix("No budget concern: GCS on every restore costs 60.26 USD a month, within the 100.00 USD budget"))
        #expect(!plan.recommendation.reasons.contains { $0.contains("cache master") && $0.hasPrefix("The peer needs") })
    }

    @Test func aBudgetEvenTheHybridExceedsLeavesThePeerAlone() throws {
        let plan = try Self.plan { $0.budgetUSD = 2 }
        #expect(plan.recommendation.option == "peer-only")
        #expect(plan.recommendation.reasons[1].contains("even GCS for the 5.00 % the peer misses 3.01 USD, both over the 2.00 USD budget"))
    }

    @Test func aThousandOrMoreAsksWhetherRedundancyIsCritical() throws {
        let plain = try Self.plan { $0.workspacesPerDay = 1_000 }
        #expect(plain.recommendation.option == "peer-only")
        #expect(plain.recommendation.reasons[0].hasPrefix("Traffic is 1,000 workspaces a day, 1,000 or more: GCS on every restore would cost 120.52 USD a month"))
        #expect(plain.recommendation.reasons[1].hasPrefix("Redundancy is not critical: the peer alone costs 0.00 USD a month"))
        #expect(plain.capacity.masters == 1)

        let critical = try Self.plan {
            $0.workspacesPerDay = 1_000
            $0.redundancyCritical = true
        }
        #expect(critical.recommendation.option == "hybrid")
        #expect(critical.recommendation.reasons[1].hasPrefix("Redundancy is critical: GCS behind the peer serves the 5.00 % it misses and any master outage for 6.03 USD a month, within the 10.00 USD budget, and 2 masters"))
        #expect(critical.capacity.masters == 2, "one spare")

        let below = try Self.plan { $0.workspacesPerDay = 999 }
        #expect(below.recommendation.reasons[0].contains("under 1,000"))
    }

    @Test func aRecommendationMissingATargetSaysSo() throws {
        let plan = try Self.plan {
            $0.peerTransfer = .seconds(200)
            $0.budgetUSD = 2
        }
        #expect(plan.recommendation.option == "peer-only")
        #expect(plan.recommendation.reasons.last == "Even so, peer-only misses the target of a restore under 90 s with these inputs.")
    }

    // MARK: capacity

    @Test func capacityIsThePeakBurstAgainstTheMastersLinks() throws {
        let small = try Self.plan()
        #expect(abs(small.capacity.peakBootsPerMinute - 500 * 0.25 / 60) < 1e-12)
        #expect(abs(small.capacity.neededMbps - 500 * 0.25 / 60 * 0.95 * Double(Self.archiveBytes) * 8 / 60 / 1e6) < 1e-9)
        #expect(small.capacity.usableMbpsPerMaster == 700)
        #expect(small.capacity.masters == 1)

        // 83.3 boots a minute, 95 % from the peer: 4,427 Mbit/s over 700 a master.
        let large = try Self.plan { $0.workspacesPerDay = 20_000 }
        #expect(Int(large.capacity.neededMbps) == 4_533)
        #expect(large.capacity.masters == 7)
        let spare = try Self.plan {
            $0.workspacesPerDay = 20_000
            $0.redundancyCritical = true
        }
        #expect(spare.capacity.masters == 8)
        #expect(spare.capacity.notes.count == 2)

        // Transfer slots bind when the link does not: 10 a second for 70 s is 665 at once.
        let slots = try Self.plan {
            $0.peakBootsPerMinute = 600
            $0.archiveBytes = 1 << 20
            $0.masterLinkMbps = 100_000
        }
        #expect(slots.capacity.masters == Int((600.0 * 0.95 / 60 * 70 / 64).rounded(.up)))
    }

    // MARK: validation

    @Test func everyAbsurdInputIsRefusedNamingItsOptionAndRange() throws {
        func problem(_ change: (inout PlanInputs) -> Void) -> String? {
            var inputs = PlanInputs()
            change(&inputs)
            do {
                _ = try DeploymentPlan(inputs)
                return nil
            } catch {
                return error.description
            }
        }
        #expect(problem { _ in } == nil)
        #expect(problem { $0.workspacesPerDay = 0 } == "--workspaces-per-day: expected a number from 0.01 to 10000000, got 0")
        #expect(problem { $0.workspacesPerDay = -1 } == "--workspaces-per-day: expected a number from 0.01 to 10000000, got -1")
        #expect(problem { $0.workspacesPerDay = .nan } == "--workspaces-per-day: expected a number from 0.01 to 10000000, got nan")
        #expect(problem { $0.workspacesPerDay = .infinity } == "--workspaces-per-day: expected a number from 0.01 to 10000000, got inf")
        #expect(problem { $0.workspacesPerDay = 1e-300 } == "--workspaces-per-day: expected a number from 0.01 to 10000000, got 1e-300")
        #expect(problem { $0.workspacesPerDay = 1e308 } == "--workspaces-per-day: expected a number from 0.01 to 10000000, got 1e+308")
        #expect(problem { $0.peerTransfer = .seconds(0) } == "--peer-seconds: expected a number more than 0 to 86400 s, got 0")
        #expect(problem { $0.gcsTransfer = .linkMbps(-5) } == "--gcs-link-mbps: expected a number from 0.001 to 1000000 Mbit/s, got -5")
        #expect(problem { $0.fallbackRate = 1.5 } == "--fallback-rate: expected a number from 0 to 1, got 1.5")
        #expect(problem { $0.gcsAvailability = -0.1 } == "--gcs-availability: expected a number from 0 to 1, got -0.1")
        #expect(problem { $0.gcsPricePerGB = .nan } == "--gcs-price-per-gb: expected a number from 0 to 1000 USD, got nan")
        #expect(problem { $0.gcsRequestsPerRestore = 0 } == "--gcs-requests-per-restore: expected a number from 1 to 1000000, got 0")
        #expect(problem { $0.budgetUSD = -.infinity } == "--budget-usd: expected a number from 0 to 1000000000 USD, got -inf")
        #expect(problem { $0.masterUtilisation = 0 } == "--master-utilisation: expected a number from 0.05 to 1, got 0")
        #expect(problem { $0.peakBootsPerMinute = 0 } == "--peak-boots-per-minute: expected a number more than 0 to 1000000, got 0")
        #expect(problem { $0.archiveBytes = 0 } == "--archive-mb: expected a number more than 0 to 1048576 MiB, got 0")
        #expect(throws: PlanInputs.Problem.self) { try PlanInputs.archiveBytes(mebibytes: 2e6) }
        #expect(try PlanInputs.archiveBytes(mebibytes: 400) == 400 << 20)

        // The extremes that are allowed still give finite figures.
        let extreme = try? DeploymentPlan({
            var inputs = PlanInputs()
            inputs.workspacesPerDay = 10_000_000
            inputs.archiveBytes = 1 << 40
            inputs.peerTransfer = .linkMbps(0.001)
            inputs.peakBootsPerMinute = 1_000_000
            inputs.masterLinkMbps = 1
            inputs.masterUtilisation = 0.05
            return inputs
        }())
        #expect(extreme.map { $0.options.allSatisfy { $0.monthlyCostUSD.isFinite && $0.expectedRestoreSeconds.isFinite } } == true)
        #expect((extreme?.capacity.masters ?? 0) > 1_000_000)
    }

    // MARK: from a master's stats

    static func fleet(gcsRestores: Int, projected: Double) -> FleetMeasurement {
        FleetMeasurement(
            windowSeconds: 7 * 86_400, restores: 3_500, restored: 3_500, fallbacks: gcsRestores,
            tiers: [
                .init(name: "peer", restores: 3_500 - gcsRestores, p50: 65, bytes: Int64(3_500 - gcsRestores) * 300_000_000, estimatedCostUSD: 0),
                .init(name: "gcs", restores: gcsRestores, p50: 50, bytes: Int64(gcsRestores) * 300_000_000, estimatedCostUSD: projected * 7 / 30),
            ],
            projectedMonthlyCostUSD: projected, peerTier: "peer", gcsTier: "gcs", installTier: "install"
        )
    }

    @Test func aMastersStatsBecomeTheInputs() throws {
        let fleet = Self.fleet(gcsRestores: 350, projected: 3.9)
        let (inputs, measured) = fleet.applied(to: PlanInputs())
        #expect(inputs.workspacesPerDay == 500)
        #expect(inputs.archiveBytes == 300_000_000)
        #expect(abs(inputs.fallbackRate - 0.1) < 1e-12)
        #expect(inputs.peerTransfer == .seconds(65) && inputs.gcsTransfer == .seconds(50))
        #expect(inputs.installSeconds == 350, "no install served: the default stays")
        #expect(measured == ["workspacesPerDay", "archiveBytes", "fallbackRate", "peerSeconds", "gcsSeconds", "gcsPricePerGB"])
        // 0.91 USD for 350 × 300 MB, less 350 × 37 reads: the price the VMs count.
        let reads = 350.0 * 37 * 0.0004 / 1000
        #expect(abs(inputs.gcsPricePerGB - (3.9 * 7 / 30 - reads) * Double(1 << 30) / (350 * 300_000_000)) < 1e-12)

        let check = DeploymentCheck(fleet, plan: try DeploymentPlan(inputs))
        #expect(check.meetsCostTarget == true)
        #expect(check.findings == ["The deployment meets the cost target: 3.90 USD a month projected from the last 7.0 days, within the 10.00 USD budget."])
    }

    /// The peer moved 1 MiB a restore (resumed ranges, small keys), GCS 100 MiB at 0.12 USD
    /// a GiB: a GCS transfer is planned at what GCS billed, not at a size averaged with
    /// the peer's (attack 15, F6).
    @Test func aMeasuredGCSTransferIsPricedOnGCSsOwnBytes() throws {
        let fleet = FleetMeasurement(
            windowSeconds: 86_400, restores: 11, restored: 8, fallbacks: 2,
            tiers: [
                .init(name: "peer", restores: 5, p50: 3, bytes: 5 << 20, estimatedCostUSD: 0),
                .init(name: "gcs", restores: 2, p50: 40, bytes: 200 << 20, estimatedCostUSD: 2 * (100.0 / 1024 * 0.12)),
            ],
            projectedMonthlyCostUSD: 22.5, peerTier: "peer", gcsTier: "gcs", installTier: "install"
        )
        #expect(fleet.archiveBytes == 100 << 20)
        let (inputs, _) = fleet.applied(to: PlanInputs())
        let plan = try DeploymentPlan(inputs)
        let billed = 100.0 / 1024 * 0.12
        #expect(abs(plan.gcsCostPerTransferUSD - billed) < billed * 0.01, "\(plan.gcsCostPerTransferUSD) against \(billed) billed")
    }

    /// Figures as a person reads them; a negative zero (`--fallback-rate -0`) is 0
    /// (attack 15, F8).
    @Test func figuresAreFormattedForPeople() {
        #expect(PlanFormat.percent(-0.0) == "0.00 %")
        #expect(PlanFormat.usd(-0.0) == "0.00 USD")
        #expect(PlanFormat.percent(0.99999, digits: 3) == "99.999 %", "rounded down: never 100 % when it is not")
        #expect(PlanFormat.count(1_234_567.891, digits: 1) == "1,234,567.9")
        #expect(PlanFormat.seconds(84) == "84.0 s" && PlanFormat.seconds(750) == "12.5 min")
    }

    @Test func aDeploymentOverBudgetIsToldWhatToChange() throws {
        // GCS serves everything: no peer in the chain.
        let gcsOnly = FleetMeasurement(
            windowSeconds: 86_400, restores: 500, restored: 500, fallbacks: 0,
            tiers: [.init(name: "gcs", restores: 500, p50: 52, bytes: 500 * Int64(400 << 20), estimatedCostUSD: 1.96)],
            projectedMonthlyCostUSD: 58.8, peerTier: "peer", gcsTier: "gcs", installTier: "install"
        )
        let (inputs, measured) = gcsOnly.applied(to: PlanInputs())
        #expect(!measured.contains("fallbackRate"), "no peer served: its fallback rate is not measured")
        let check = DeploymentCheck(gcsOnly, plan: try DeploymentPlan(inputs))
        #expect(check.meetsCostTarget == false)
        #expect(check.gcsShare == 1)
        #expect(check.findings[0] == "The deployment does not meet the cost target: 58.80 USD a month projected from the last 1.0 days, over the 10.00 USD budget.")
        #expect(check.findings[1].hasPrefix("GCS served 100.00 % of restores and the peer 0.00 %; to fit the budget GCS may serve at most 17.00 % (0.0039 USD a transfer at 500 restores a day)."), "\(check.findings[1])")
        #expect(check.findings[2] == "Put a cache master first in the chain (a peer tier before gcs): the hybrid at a 5.00 % fallback rate would cost 2.94 USD a month.")
        #expect(check.findings.last == "Or raise --budget-usd if 58.80 USD a month is acceptable.")

        // A peer that misses too often: lower the fallback rate.
        let leaky = Self.fleet(gcsRestores: 2_100, projected: 35)
        let leakyCheck = DeploymentCheck(leaky, plan: try DeploymentPlan(leaky.applied(to: PlanInputs()).inputs))
        #expect(leakyCheck.meetsCostTarget == false)
        #expect(leakyCheck.findings.contains { $0.hasPrefix("Lower the fallback rate: keep the cache master filled") })

        // Nothing in the window: nothing to judge.
        let empty = FleetMeasurement(
            windowSeconds: 86_400, restores: 0, restored: 0, fallbacks: 0, tiers: [], projectedMonthlyCostUSD: 0,
            peerTier: "peer", gcsTier: "gcs", installTier: "install"
        )
        #expect(empty.applied(to: PlanInputs()).measured.isEmpty)
        #expect(DeploymentCheck(empty, plan: try Self.plan()).meetsCostTarget == nil)
    }

    @Test func aHostileMastersNumbersNeitherCrashNorPassAsInputs() throws {
        let hostile = FleetMeasurement(
            windowSeconds: 0, restores: Int.max, restored: -4, fallbacks: Int.max,
            tiers: [
                .init(name: "peer", restores: Int.max, p50: -3, bytes: Int64.max, estimatedCostUSD: 1e308),
                .init(name: "gcs", restores: Int.max, p50: 1e308, bytes: Int64.max, estimatedCostUSD: 1e308),
            ],
            projectedMonthlyCostUSD: 1e308, peerTier: "peer", gcsTier: "gcs", installTier: "install"
        )
        let (inputs, measured) = hostile.applied(to: PlanInputs())
        #expect(!measured.contains("workspacesPerDay") && !measured.contains("fallbackRate") && !measured.contains("peerSeconds"))
        #expect(measured.contains("gcsSeconds"))
        #expect(throws: PlanInputs.Problem.self) { try DeploymentPlan(inputs) }

        // A tier name that would clear the screen, 100,000 characters long, costing the most.
        let name = "<script>\u{1B}[2J" + String(repeating: "x", count: 100_000)
        let forged = FleetMeasurement(
            windowSeconds: 86_400, restores: 10, restored: 10, fallbacks: 0,
            tiers: [.init(name: name, restores: 10, p50: 60, bytes: 10 * Int64(400 << 20), estimatedCostUSD: 5)],
            projectedMonthlyCostUSD: 150, peerTier: "peer", gcsTier: "gcs", installTier: "install"
        )
        let check = DeploymentCheck(forged, plan: try DeploymentPlan(forged.applied(to: PlanInputs()).inputs))
        let line = try #require(check.findings.first { $0.hasPrefix("Most of the cost is the tier") })
        #expect(line.hasPrefix("Most of the cost is the tier \"<script>\\u{1B}[2Jxxxxx"), "\(line)")
        #expect(!line.contains("\u{1B}") && line.count < 300)
    }
}
