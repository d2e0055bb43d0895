import Foundation

/// What a running cache master measured over a window (`GET /v1/stats`), as
/// `cachetiers plan --from-stats` plans from it: traffic, archive size, fallback rate,
/// the serving tiers' times, GCS's price as the VMs count it, and the cost the fleet is
/// on course for.
public struct FleetMeasurement: Sendable, Hashable, Codable {
    /// What one tier served in the window.
    public struct Tier: Sendable, Hashable, Codable {
        public var name: String
        public var restores: Int
        public var p50: Double?
        public var bytes: Int64
        public var estimatedCostUSD: Double

        public init(name: String, restores: Int, p50: Double?, bytes: Int64, estimatedCostUSD: Double) {
            (self.name, self.restores, self.p50, self.bytes, self.estimatedCostUSD) = (name, restores, p50, bytes, estimatedCostUSD)
        }
    }

    public var windowSeconds: Int
    public var restores: Int
    public var restored: Int
    /// Restored reports whose serving tier was not the first one asked.
    public var fallbacks: Int
    public var tiers: [Tier]
    public var projectedMonthlyCostUSD: Double
    /// The config's names of the peer, GCS and install tiers.
    public var peerTier: String
    public var gcsTier: String
    public var installTier: String

    public init(
        windowSeconds: Int, restores: Int, restored: Int, fallbacks: Int, tiers: [Tier], projectedMonthlyCostUSD: Double,
        peerTier: String, gcsTier: String, installTier: String
    ) {
        self.windowSeconds = windowSeconds
        self.restores = restores
        self.restored = restored
        self.fallbacks = fallbacks
        self.tiers = tiers
        self.projectedMonthlyCostUSD = projectedMonthlyCostUSD
        self.peerTier = peerTier
        self.gcsTier = gcsTier
        self.installTier = installTier
    }

    public func tier(_ name: String) -> Tier? { tiers.first { $0.name == name } }

    /// What makes these figures impossible for a cache master's stats (a window of no
    /// time, negative counts, more fallbacks than restores, a cost that is negative or
    /// not finite), or nil when they can be planned with. A hostile or broken master is
    /// refused, not planned around.
    public var inconsistency: String? {
        if windowSeconds <= 0 { return "a window of \(windowSeconds) s" }
        if restores < 0 || restored < 0 || fallbacks < 0 { return "a negative count of restores" }
        if restored > restores { return "\(restored) restored of \(restores) restores" }
        if fallbacks > restored { return "\(fallbacks) fallbacks of \(restored) restored" }
        if !projectedMonthlyCostUSD.isFinite || projectedMonthlyCostUSD < 0 || projectedMonthlyCostUSD > 1e12 {
            return "a projected monthly cost of \(projectedMonthlyCostUSD) USD"
        }
        for tier in tiers {
            if tier.restores < 0 || tier.bytes < 0 || !tier.estimatedCostUSD.isFinite || tier.estimatedCostUSD < 0 {
                return "impossible figures for the tier \(tier.name)"
            }
        }
        return nil
    }

    /// Restores a day: the window's restores scaled to 86,400 s; nil with none.
    public var restoresPerDay: Double? {
        restores > 0 && windowSeconds > 0 ? Double(restores) * 86_400 / Double(windowSeconds) : nil
    }

    /// Bytes per restore of a tier that transfers an archive: GCS's when it served (the
    /// price per GB is measured on those same bytes, so a GCS transfer is priced as it was
    /// billed), else the peer's; a fresh install moves none, so counting its restores
    /// would shrink the archive. Every restored restore's bytes when neither served; nil
    /// when nothing was moved.
    public var archiveBytes: Int64? {
        // Divided as doubles: a master's numbers are not trusted not to overflow.
        let mover = [gcsTier, peerTier].compactMap(tier).first { $0.restores > 0 && $0.bytes > 0 }
        let all = tiers.filter { $0.bytes > 0 }.reduce(0.0) { $0 + Double($1.bytes) }
        let perRestore = mover.map { Double($0.bytes) / Double($0.restores) }
            ?? (restored > 0 && all > 0 ? all / Double(restored) : nil)
        guard let perRestore, perRestore >= 1, perRestore < 9e18 else { return nil }
        return Int64(perRestore)
    }

    /// fallbacks / restored; nil with none restored.
    public var fallbackRate: Double? {
        restored > 0 ? min(1, Double(fallbacks) / Double(restored)) : nil
    }

    /// The inputs with every measured figure in place of its default; what was not
    /// measured (a tier that served nothing in the window) keeps `inputs`'s value.
    /// The names of the inputs set, for the plan to say where each came from.
    public func applied(to inputs: PlanInputs) -> (inputs: PlanInputs, measured: Set<String>) {
        var inputs = inputs
        var measured: Set<String> = []
        if let perDay = restoresPerDay {
            inputs.workspacesPerDay = perDay
            measured.insert("workspacesPerDay")
        }
        if let bytes = archiveBytes {
            inputs.archiveBytes = bytes
            measured.insert("archiveBytes")
        }
        // The peer's misses, measured only where a peer served: a chain without one
        // falls back from GCS, which is not what the plan's fallback rate means.
        if let rate = fallbackRate, (tier(peerTier)?.restores ?? 0) > 0 {
            inputs.fallbackRate = rate
            measured.insert("fallbackRate")
        }
        if let p50 = tier(peerTier)?.p50, p50 > 0 {
            inputs.peerTransfer = .seconds(p50)
            measured.insert("peerSeconds")
        }
        if let p50 = tier(gcsTier)?.p50, p50 > 0 {
            inputs.gcsTransfer = .seconds(p50)
            measured.insert("gcsSeconds")
        }
        if let p50 = tier(installTier)?.p50, p50 > 0 {
            inputs.installSeconds = p50
            measured.insert("installSeconds")
        }
        // The price the VMs' GCS tier charges (its pricePerGB, 0.12 by default, may not be
        // the plan's 0.01): its cost less the reads, over its bytes.
        if let gcs = tier(gcsTier), gcs.restores > 0, gcs.bytes > 0, gcs.estimatedCostUSD.isFinite {
            let reads = Double(gcs.restores) * Double(inputs.effectiveGCSRequestsPerRestore) / 1000 * inputs.gcsPricePerThousandRequests
            inputs.gcsPricePerGB = max(0, gcs.estimatedCostUSD - reads) * Double(1 << 30) / Double(gcs.bytes)
            measured.insert("gcsPricePerGB")
        }
        return (inputs, measured)
    }
}

/// Whether the running deployment meets the cost target, and what to change if not.
public struct DeploymentCheck: Sendable, Hashable, Codable {
    public var projectedMonthlyCostUSD: Double
    public var budgetUSD: Double
    /// nil when the window held no restore to judge by.
    public var meetsCostTarget: Bool?
    /// The share of restores the GCS tier served in the window.
    public var gcsShare: Double?
    /// Each a sentence with its figures: why it is within or over, and what to change.
    public var findings: [String]

    /// Every key, null when there is no value (`--json`'s keys are stable).
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(projectedMonthlyCostUSD, forKey: .projectedMonthlyCostUSD)
        try container.encode(budgetUSD, forKey: .budgetUSD)
        try container.encode(meetsCostTarget, forKey: .meetsCostTarget)
        try container.encode(gcsShare, forKey: .gcsShare)
        try container.encode(findings, forKey: .findings)
    }

    public init(_ measurement: FleetMeasurement, plan: DeploymentPlan) {
        let budget = plan.inputs.budgetUSD
        projectedMonthlyCostUSD = measurement.projectedMonthlyCostUSD
        budgetUSD = budget
        let projected = PlanFormat.usd(measurement.projectedMonthlyCostUSD)
        let window = PlanFormat.count(Double(measurement.windowSeconds) / 86_400, digits: 1)
        guard measurement.restores > 0 else {
            meetsCostTarget = nil
            gcsShare = nil
            findings = ["No restore finished in the \(window)-day window: nothing to judge the cost by; the plan uses the defaults and options given."]
            return
        }
        let gcs = measurement.tier(measurement.gcsTier)
        let share = Double(gcs?.restores ?? 0) / Double(measurement.restores)
        gcsShare = share
        let meets = measurement.projectedMonthlyCostUSD <= budget
        meetsCostTarget = meets
        var findings: [String] = []
        if meets {
            findings.append("The deployment meets the cost target: \(projected) a month projected from the last \(window) days, within the \(PlanFormat.usd(budget)) budget.")
            self.findings = findings
            return
        }
        findings.append(
            "The deployment does not meet the cost target: \(projected) a month projected from the last \(window) days, over the \(PlanFormat.usd(budget)) budget."
        )
        let gcsCost = gcs?.estimatedCostUSD ?? 0
        let allCost = measurement.tiers.reduce(0) { $0 + $1.estimatedCostUSD }
        if let costliest = measurement.tiers.max(by: { $0.estimatedCostUSD < $1.estimatedCostUSD }), allCost > 0,
            costliest.name != measurement.gcsTier
        {
            let name = String(costliest.name.printableOnOneLine.prefix(40))
            findings.append(
                "Most of the cost is the tier \"\(name)\" (\(PlanFormat.percent(costliest.estimatedCostUSD / allCost)) of it), not --gcs-tier \(measurement.gcsTier): check its price in the config, or name it with --gcs-tier."
            )
        }
        let peerShare = Double(measurement.tier(measurement.peerTier)?.restores ?? 0) / Double(measurement.restores)
        // GCS may serve at most this share of restores to stay within the budget.
        let perTransfer = plan.gcsCostPerTransferUSD
        let monthly = plan.inputs.workspacesPerDay * PlanInputs.daysPerMonth
        if gcsCost > 0 || share > 0 {
            let ceiling = perTransfer > 0 ? min(1, budget / (monthly * perTransfer)) : 1
            findings.append(
                "GCS served \(PlanFormat.percent(share)) of restores and the peer \(PlanFormat.percent(peerShare)); to fit the budget GCS may serve at most \(PlanFormat.percent(ceiling)) (\(PlanFormat.usd(perTransfer, digits: 4)) a transfer at \(PlanFormat.perDay(plan.inputs.workspacesPerDay)) restores a day)."
            )
            if peerShare == 0 {
                let hybrid = plan.option("hybrid")!
                findings.append(
                    "Put a cache master first in the chain (a peer tier before gcs): the hybrid at a \(PlanFormat.percent(plan.inputs.fallbackRate)) fallback rate would cost \(PlanFormat.usd(hybrid.monthlyCostUSD)) a month."
                )
            } else {
                findings.append(
                    "Lower the fallback rate: keep the cache master filled (write-back on every tier after it, publish new keys before the boots that need them), and add masters if it is short of capacity (\(plan.capacity.masters) needed at the peak)."
                )
            }
        }
        findings.append("Or raise --budget-usd if \(projected) a month is acceptable.")
        self.findings = findings
    }
}
