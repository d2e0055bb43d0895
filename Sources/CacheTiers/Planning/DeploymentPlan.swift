import Foundation

/// The production analysis as a computation: each way to run the tiers with what it
/// costs a month, how long a restore takes, how often one succeeds and how much compute
/// waits for it; the decision tree's recommendation and why; and the cache masters the
/// peak needs. Pure: the same inputs give the same plan.
public struct DeploymentPlan: Sendable, Hashable, Codable {
    /// One way to run the tiers: an ordered chain, ending with a fresh install.
    public struct Option: Sendable, Hashable, Codable {
        /// `peer-only`, `gcs-every-restore`, `hybrid` or `fresh-install`.
        public var name: String
        /// The chain's tiers in order: `peer`, `gcs`, `install`.
        public var tiers: [String]
        public var monthlyCostUSD: Double
        /// Mean seconds from asking the first tier to a tree in place, over every
        /// restore (a failed one counted for the install it ran).
        public var expectedRestoreSeconds: Double
        /// The chance a restore ends with a tree in place, whichever tier served it
        /// (a fresh install included), as `GET /v1/stats` counts `restored`.
        public var successRate: Double
        /// Hours of workspace time spent waiting for restores, a day.
        public var waitingHoursPerDay: Double
        /// The share of restores each tier serves, by tier.
        public var servedShares: [String: Double]
        /// Each target and whether this option meets it: `transfer` (the expected restore
        /// under 90 s), `successRate` (over 99 %), `monthlyCost` (within the budget).
        public var meetsTargets: [String: Bool]
    }

    /// What the decision tree chose and the answers that led there.
    public struct Recommendation: Sendable, Hashable, Codable {
        /// One of the option names.
        public var option: String
        /// Each a sentence with its figures, in the order the tree asked.
        public var reasons: [String]
    }

    /// What the cache masters carry at the peak.
    public struct Capacity: Sendable, Hashable, Codable {
        public var peakBootsPerMinute: Double
        /// Of those, the share the peer serves (1 − fallback rate).
        public var peerShare: Double
        /// Megabits a second the peer's share needs at the peak.
        public var neededMbps: Double
        /// One master's link × its planned utilisation.
        public var usableMbpsPerMaster: Double
        /// Peer transfers in flight at once at the peak (arrivals × peer time).
        public var concurrentTransfers: Double
        /// Masters at rendezvous hashing: enough link and transfer slots, plus one
        /// when redundancy is critical.
        public var masters: Int
        public var notes: [String]
    }

    public var inputs: PlanInputs
    /// Seconds the peer and GCS take for the archive (from seconds or link speeds).
    public var peerSeconds: Double
    public var gcsSeconds: Double
    /// What GCS charges for one restore it serves: egress plus its reads.
    public var gcsCostPerTransferUSD: Double
    public var gcsRequestsPerRestore: Int
    public var options: [Option]
    public var recommendation: Recommendation
    public var capacity: Capacity

    /// The option named `name`.
    public func option(_ name: String) -> Option? { options.first { $0.name == name } }

    /// The plan for `inputs`, after checking them.
    public init(_ inputs: PlanInputs) throws(PlanInputs.Problem) {
        try inputs.validate()
        self.inputs = inputs
        peerSeconds = inputs.peerTransfer.seconds(for: inputs.archiveBytes)
        gcsSeconds = inputs.gcsTransfer.seconds(for: inputs.archiveBytes)
        gcsRequestsPerRestore = inputs.effectiveGCSRequestsPerRestore
        gcsCostPerTransferUSD = GCSSource.estimatedCost(
            bytes: Double(inputs.archiveBytes), requests: Double(gcsRequestsPerRestore), pricePerGB: inputs.gcsPricePerGB,
            pricePerThousandReads: inputs.gcsPricePerThousandRequests
        )
        let missCost = GCSSource.estimatedCost(bytes: 0, requests: 1, pricePerGB: 0, pricePerThousandReads: inputs.gcsPricePerThousandRequests)
        let peer = Stage(tier: "peer", serves: 1 - inputs.fallbackRate, seconds: peerSeconds, costServed: 0, costMissed: 0)
        let gcs = Stage(tier: "gcs", serves: inputs.gcsAvailability, seconds: gcsSeconds, costServed: gcsCostPerTransferUSD, costMissed: missCost)
        let install = Stage(tier: "install", serves: inputs.installAvailability, seconds: inputs.installSeconds, costServed: 0, costMissed: 0)
        let chains: [(String, [Stage])] = [
            ("peer-only", [peer, install]), ("gcs-every-restore", [gcs, install]), ("hybrid", [peer, gcs, install]),
            ("fresh-install", [install]),
        ]
        options = chains.map { Self.evaluate($0.0, $0.1, inputs) }
        capacity = Self.capacity(inputs, peerSeconds: peerSeconds)
        recommendation = Recommendation(option: "", reasons: [])
        recommendation = decide()
    }

    // MARK: the options

    /// A tier as the model sees it: the chance it serves a restore that reaches it, how
    /// long it takes when it does, what it costs when it serves and when it misses.
    struct Stage {
        var tier: String
        var serves: Double
        var seconds: Double
        var costServed: Double
        var costMissed: Double
    }

    /// Walks the chain: each tier serves its chance of what reaches it; the rest falls
    /// through. A cache tier's miss is taken as answered at once (a 404, a metadata read);
    /// a failed install is counted for the time it ran.
    static func evaluate(_ name: String, _ stages: [Stage], _ inputs: PlanInputs) -> Option {
        var reaching = 1.0
        var seconds = 0.0
        var cost = 0.0
        var shares: [String: Double] = [:]
        for stage in stages {
            let served = reaching * stage.serves
            shares[stage.tier] = served
            seconds += served * stage.seconds
            cost += served * stage.costServed + (reaching - served) * stage.costMissed
            reaching -= served
        }
        seconds += reaching * inputs.installSeconds
        let success = 1 - reaching
        let monthly = cost * inputs.workspacesPerDay * PlanInputs.daysPerMonth
        return Option(
            name: name, tiers: stages.map(\.tier), monthlyCostUSD: monthly, expectedRestoreSeconds: seconds,
            successRate: success, waitingHoursPerDay: inputs.workspacesPerDay * seconds / 3600,
            servedShares: shares,
            meetsTargets: ["transfer": seconds < 90, "successRate": success > 0.99, "monthlyCost": monthly <= inputs.budgetUSD]
        )
    }

    // MARK: capacity

    static func capacity(_ inputs: PlanInputs, peerSeconds: Double) -> Capacity {
        let peak = inputs.effectivePeakBootsPerMinute
        let share = 1 - inputs.fallbackRate
        let needed = peak * share * Double(inputs.archiveBytes) * 8 / 60 / 1_000_000
        let usable = inputs.masterLinkMbps * inputs.masterUtilisation
        let concurrent = peak * share / 60 * peerSeconds
        let forLink = (needed / usable).rounded(.up)
        let forSlots = (concurrent / Double(PlanInputs.transfersPerMaster)).rounded(.up)
        let forPeak = Int(min(max(1, forLink, forSlots), 1e15))
        let masters = forPeak + (inputs.redundancyCritical ? 1 : 0)
        var notes = [
            masters == 1
                ? "One master carries the peak. Rendezvous hashing gives each master about an equal share of the keys, so more masters share a load only when it spreads over many keys; one key's burst always lands on one master."
                : "Rendezvous hashing gives each of the \(masters) masters about an equal share of the keys, so they share the peak only when its restores spread over at least \(masters) keys of similar size; one key's burst always lands on one master."
        ]
        if inputs.redundancyCritical {
            notes.append("That is one more master than the peak needs (\(forPeak)), as redundancy is critical: the peak still fits with one master down.")
        }
        return Capacity(
            peakBootsPerMinute: peak, peerShare: share, neededMbps: needed, usableMbpsPerMaster: usable,
            concurrentTransfers: concurrent, masters: masters, notes: notes
        )
    }

    // MARK: the decision tree

    /// The analysis's tree: traffic under 1,000 a day? Then budget concerns (does GCS
    /// on every restore cost more than the budget)? decide between GCS alone and the
    /// hybrid. At 1,000 a day or more: is redundancy critical? decides between the hybrid
    /// with a spare master and the peer alone.
    func decide() -> Recommendation {
        let gcs = option("gcs-every-restore")!
        let hybrid = option("hybrid")!
        let peerOnly = option("peer-only")!
        let install = option("fresh-install")!
        let perDay = PlanFormat.perDay(inputs.workspacesPerDay)
        let budget = PlanFormat.usd(inputs.budgetUSD)
        var reasons: [String] = []
        let choice: String
        let fallback = PlanFormat.percent(inputs.fallbackRate)
        if inputs.workspacesPerDay < PlanInputs.highTrafficPerDay {
            reasons.append(
                "Traffic is \(perDay) workspaces a day, under 1,000: the question is what GCS costs, not how to scale the peer."
            )
            if gcs.monthlyCostUSD <= inputs.budgetUSD {
                choice = gcs.name
                reasons.append(
                    "No budget concern: GCS on every restore costs \(PlanFormat.usd(gcs.monthlyCostUSD)) a month, within the \(budget) budget, restores take \(PlanFormat.seconds(gcs.expectedRestoreSeconds)) and there is no cache master to run."
                )
            } else if hybrid.monthlyCostUSD <= inputs.budgetUSD {
                choice = hybrid.name
                reasons.append(
                    "Budget concern: GCS on every restore would cost \(PlanFormat.usd(gcs.monthlyCostUSD)) a month, over the \(budget) budget; the peer first with GCS for the \(fallback) it misses costs \(PlanFormat.usd(hybrid.monthlyCostUSD)) (restores \(PlanFormat.seconds(hybrid.expectedRestoreSeconds)), success \(PlanFormat.percent(hybrid.successRate, digits: 3)))."
                )
            } else {
                choice = peerOnly.name
                reasons.append(
                    "Budget concern: GCS on every restore would cost \(PlanFormat.usd(gcs.monthlyCostUSD)) a month and even GCS for the \(fallback) the peer misses \(PlanFormat.usd(hybrid.monthlyCostUSD)), both over the \(budget) budget; the peer alone costs \(PlanFormat.usd(peerOnly.monthlyCostUSD)), its misses going to a fresh install (success \(PlanFormat.percent(peerOnly.successRate, digits: 3)))."
                )
            }
        } else {
            reasons.append(
                "Traffic is \(perDay) workspaces a day, 1,000 or more: GCS on every restore would cost \(PlanFormat.usd(gcs.monthlyCostUSD)) a month, so the peer serves first and the question is what happens when it cannot."
            )
            if inputs.redundancyCritical {
                choice = hybrid.name
                let over = hybrid.monthlyCostUSD > inputs.budgetUSD ? ", over the \(budget) budget: the price of the redundancy" : ", within the \(budget) budget"
                reasons.append(
                    "Redundancy is critical: GCS behind the peer serves the \(fallback) it misses and any master outage for \(PlanFormat.usd(hybrid.monthlyCostUSD)) a month\(over), and \(capacity.masters) masters keep the peak served with one down."
                )
            } else {
                choice = peerOnly.name
                reasons.append(
                    "Redundancy is not critical: the peer alone costs \(PlanFormat.usd(peerOnly.monthlyCostUSD)) a month; the \(fallback) it misses take a fresh install (restores \(PlanFormat.seconds(peerOnly.expectedRestoreSeconds)) on average, success \(PlanFormat.percent(peerOnly.successRate, digits: 3)))."
                )
            }
        }
        if choice != gcs.name {
            reasons.append(
                "The peer needs \(capacity.masters) cache master\(capacity.masters == 1 ? "" : "s") at the peak of \(PlanFormat.count(capacity.peakBootsPerMinute, digits: 1)) boots a minute (see Capacity); keep it filled by write-back, and GCS too where it is a tier."
            )
        }
        reasons.append(
            "A fresh install stays last in the chain: \(PlanFormat.seconds(install.expectedRestoreSeconds)) a restore and \(PlanFormat.percent(install.successRate, digits: 3)) success alone, it runs only when every cache misses."
        )
        let chosen = option(choice)!
        let unmet = [("transfer", "a restore under 90 s"), ("successRate", "success over 99 %"), ("monthlyCost", "a cost within the budget")]
            .filter { chosen.meetsTargets[$0.0] == false }.map(\.1)
        if !unmet.isEmpty {
            reasons.append("Even so, \(choice) misses the target\(unmet.count == 1 ? "" : "s") of \(unmet.joined(separator: " and ")) with these inputs.")
        }
        return Recommendation(option: choice, reasons: reasons)
    }
}

// MARK: formatting for people

/// Numbers as `cachetiers plan` prints them, in its reasons and its table.
package enum PlanFormat {
    /// `12.35 USD`, or with `digits` decimals (`0.0039 USD` a transfer).
    package static func usd(_ amount: Double, digits: Int = 2) -> String { count(amount, digits: digits) + " USD" }

    /// `84.0 s` under ten minutes, else `12.5 min`.
    package static func seconds(_ seconds: Double) -> String {
        seconds < 600 ? String(format: "%.1f s", seconds) : count(seconds / 60, digits: 1) + " min"
    }

    /// `5.00 %`, or with `digits` decimals; rounded down, so never 100 % when it is not.
    package static func percent(_ fraction: Double, digits: Int = 2) -> String {
        let scale = pow(10, Double(digits))
        let percent = fraction < 1 ? (fraction * 100 * scale).rounded(.down) / scale : fraction * 100
        // + 0 makes a negative zero (`--fallback-rate -0`) print as 0.
        return String(format: "%.\(digits)f %%", percent + 0)
    }

    /// Restores a day: whole ones as `1,250`, a measured fraction under 100 as `1.4`.
    package static func perDay(_ value: Double) -> String {
        count(value, digits: value < 100 && value != value.rounded() ? 1 : 0)
    }

    /// `1,250`, or with `digits` decimals `2.1`.
    package static func count(_ value: Double, digits: Int = 0) -> String {
        let text = String(format: "%.\(digits)f", value + 0)
        let parts = text.split(separator: ".", maxSplits: 1)
        var whole = String(parts[0])
        let sign = whole.hasPrefix("-") ? "-" : ""
        if !sign.isEmpty { whole.removeFirst() }
        var grouped = ""
        for (index, digit) in whole.reversed().enumerated() {
            if index > 0, index % 3 == 0 { grouped.append(",") }
            grouped.append(digit)
        }
        return sign + String(grouped.reversed()) + (parts.count > 1 ? "." + parts[1] : "")
    }
}
