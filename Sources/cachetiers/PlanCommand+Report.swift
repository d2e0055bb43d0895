import CacheTiers
import Foundation

/// What `cachetiers plan` prints: the plan with where each input came from, as a table
/// for people or as JSON with stable keys (Documentation/Planning.md lists them).
struct PlanReport: Encodable {
    var plan: DeploymentPlan
    /// Inputs an option gave, and inputs the master measured, by their JSON key.
    var given: Set<String>
    var measured: Set<String>
    var archiveFile: ArchiveFile?
    var fromStats: String?
    var window: String?
    var deployment: DeploymentCheck?

    /// Every input by its JSON key, in the plan's units.
    var inputs: [(key: String, value: Double?)] {
        let inputs = plan.inputs
        func link(_ transfer: PlanInputs.TransferTime) -> Double? {
            if case .linkMbps(let mbps) = transfer { return mbps }
            return nil
        }
        return [
            ("workspacesPerDay", inputs.workspacesPerDay),
            ("archiveBytes", Double(inputs.archiveBytes)),
            ("peerSeconds", plan.peerSeconds),
            ("peerLinkMbps", link(inputs.peerTransfer)),
            ("gcsSeconds", plan.gcsSeconds),
            ("gcsLinkMbps", link(inputs.gcsTransfer)),
            ("gcsPricePerGB", inputs.gcsPricePerGB),
            ("gcsPricePerThousandRequests", inputs.gcsPricePerThousandRequests),
            ("gcsRequestsPerRestore", Double(plan.gcsRequestsPerRestore)),
            ("fallbackRate", inputs.fallbackRate),
            ("installSeconds", inputs.installSeconds),
            ("gcsAvailability", inputs.gcsAvailability),
            ("installAvailability", inputs.installAvailability),
            ("budgetUSD", inputs.budgetUSD),
            ("peakHourShare", inputs.peakHourShare),
            ("peakBootsPerMinute", plan.capacity.peakBootsPerMinute),
            ("masterLinkMbps", inputs.masterLinkMbps),
            ("masterUtilisation", inputs.masterUtilisation),
        ]
    }

    /// `option`, `measured`, `derived` (computed from other inputs) or `default`.
    func source(of key: String) -> String {
        if given.contains(key) { return "option" }
        if measured.contains(key) { return "measured" }
        if key == "archiveBytes", archiveFile != nil { return "option" }
        switch key {
        case "peerSeconds" where given.contains("peerLinkMbps"), "gcsSeconds" where given.contains("gcsLinkMbps"): return "derived"
        case "gcsRequestsPerRestore", "peakBootsPerMinute": return "derived"
        case "peerLinkMbps", "gcsLinkMbps": return "none"
        default: return "default"
        }
    }

    // MARK: JSON

    struct DynamicKey: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(_ string: String) { stringValue = string }
        init?(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: DynamicKey.self)
        var values = container.nestedContainer(keyedBy: DynamicKey.self, forKey: DynamicKey("inputs"))
        var sources = container.nestedContainer(keyedBy: DynamicKey.self, forKey: DynamicKey("sources"))
        for (key, value) in inputs {
            try values.encode(value, forKey: DynamicKey(key))
            try sources.encode(source(of: key), forKey: DynamicKey(key))
        }
        try values.encode(plan.inputs.redundancyCritical, forKey: DynamicKey("redundancyCritical"))
        try sources.encode(source(of: "redundancyCritical"), forKey: DynamicKey("redundancyCritical"))
        var archive = container.nestedContainer(keyedBy: DynamicKey.self, forKey: DynamicKey("archive"))
        try archive.encode(archiveFile?.path, forKey: DynamicKey("file"))
        try archive.encode(archiveFile?.uncompressedBytes, forKey: DynamicKey("uncompressedBytes"))
        try archive.encode(archiveFile?.entries, forKey: DynamicKey("entries"))
        try container.encode(plan.gcsCostPerTransferUSD, forKey: DynamicKey("gcsCostPerTransferUSD"))
        try container.encode(plan.options, forKey: DynamicKey("options"))
        try container.encode(plan.recommendation, forKey: DynamicKey("recommendation"))
        try container.encode(plan.capacity, forKey: DynamicKey("capacity"))
        if let fromStats, let window, let deployment {
            var stats = container.nestedContainer(keyedBy: DynamicKey.self, forKey: DynamicKey("fromStats"))
            try stats.encode(fromStats, forKey: DynamicKey("url"))
            try stats.encode(window, forKey: DynamicKey("window"))
            try stats.encode(deployment, forKey: DynamicKey("deployment"))
        } else {
            try container.encodeNil(forKey: DynamicKey("fromStats"))
        }
    }

    // MARK: text

    /// The width every line is wrapped to.
    static let width = 100

    func text() -> String {
        let inputs = plan.inputs
        var lines: [String] = []
        func mark(_ key: String) -> String { source(of: key) == "measured" ? " (measured)" : "" }
        let size = archiveFile.map { file -> String in
            var text = "\(Self.mebibytes(file.bytes)) (\(file.path.printableOnOneLine))"
            if let tree = file.uncompressedBytes { text += ", \(formatBytes(tree)) unpacked" }
            return text
        } ?? Self.mebibytes(inputs.archiveBytes) + mark("archiveBytes")
        lines += Self.wrap(
            "Inputs: \(PlanFormat.perDay(inputs.workspacesPerDay)) workspaces a day\(mark("workspacesPerDay")), archive \(size); "
                + "peer \(PlanFormat.seconds(plan.peerSeconds))\(mark("peerSeconds")), GCS \(PlanFormat.seconds(plan.gcsSeconds))\(mark("gcsSeconds")), "
                + "fresh install \(PlanFormat.seconds(inputs.installSeconds))\(mark("installSeconds")); "
                + "fallback \(PlanFormat.percent(inputs.fallbackRate))\(mark("fallbackRate")); "
                + "GCS \(String(format: "%g", inputs.gcsPricePerGB)) USD a GB\(mark("gcsPricePerGB")) and \(String(format: "%g", inputs.gcsPricePerThousandRequests)) USD per 1,000 reads "
                + "(\(PlanFormat.count(Double(plan.gcsRequestsPerRestore))) a restore): \(PlanFormat.usd(plan.gcsCostPerTransferUSD, digits: 4)) a transfer; "
                + "availability GCS \(PlanFormat.percent(inputs.gcsAvailability, digits: 3)), fresh install \(PlanFormat.percent(inputs.installAvailability, digits: 3)); "
                + "budget \(PlanFormat.usd(inputs.budgetUSD)) a month.",
            indent: ""
        )
        lines.append("")

        let header = ["Option", "Cost a month", "Restore", "Success", "Waiting a day", "Targets"]
        let rows = plan.options.map { option -> [String] in
            let unmet = [("transfer", "time"), ("successRate", "success"), ("monthlyCost", "cost")]
                .filter { option.meetsTargets[$0.0] == false }.map(\.1)
            return [
                option.name, PlanFormat.usd(option.monthlyCostUSD), PlanFormat.seconds(option.expectedRestoreSeconds),
                PlanFormat.percent(option.successRate, digits: 3), PlanFormat.count(option.waitingHoursPerDay, digits: 1) + " h",
                unmet.isEmpty ? "all met" : "missed: " + unmet.joined(separator: ", "),
            ]
        }
        let widths = header.indices.map { column in ([header] + rows).map { $0[column].count }.max() ?? 0 }
        // Names and targets to the left, figures to the right.
        func row(_ cells: [String]) -> String {
            cells.enumerated().map { column, cell in
                let pad = String(repeating: " ", count: widths[column] - cell.count)
                if column == cells.count - 1 { return cell }
                return (column == 0 ? cell + pad : pad + cell) + "  "
            }.joined()
        }
        lines.append(row(header))
        for cells in rows { lines.append(row(cells)) }
        lines += Self.wrap(
            "Tiers in order: " + plan.options.map { "\($0.name) = \($0.tiers.joined(separator: ", "))" }.joined(separator: "; ")
                + ". Targets: restore under 90 s, success over 99 %, cost within the budget.",
            indent: ""
        )
        lines.append("")

        lines.append("Recommendation: \(plan.recommendation.option)")
        for (index, reason) in plan.recommendation.reasons.enumerated() {
            lines += Self.wrap("\(index + 1). \(reason)", indent: "   ")
        }
        lines.append("")

        let capacity = plan.capacity
        lines.append("Capacity at the peak:")
        let peakSource =
            inputs.peakBootsPerMinute == nil
            ? " (\(PlanFormat.percent(inputs.peakHourShare)) of a day's boots in its busiest hour)" : ""
        let capacityRows = [
            ("Boots a minute", PlanFormat.count(capacity.peakBootsPerMinute, digits: 1) + peakSource),
            (
                "Peer transfers",
                "\(PlanFormat.percent(capacity.peerShare)) of them: \(PlanFormat.count(capacity.neededMbps, digits: 1)) Mbit/s, "
                    + "\(PlanFormat.count(capacity.concurrentTransfers, digits: 1)) at once"
            ),
            (
                "One master",
                "\(PlanFormat.count(inputs.masterLinkMbps)) Mbit/s at \(PlanFormat.percent(inputs.masterUtilisation)): "
                    + "\(PlanFormat.count(capacity.usableMbpsPerMaster, digits: 1)) Mbit/s, \(PlanInputs.transfersPerMaster) transfers (serve --max-transfers)"
            ),
            ("Cache masters", "\(capacity.masters), at rendezvous hashing"),
        ]
        for (label, value) in capacityRows {
            lines += Self.wrap("  " + label.padding(toLength: 16, withPad: " ", startingAt: 0) + value, indent: String(repeating: " ", count: 18))
        }
        for note in capacity.notes { lines += Self.wrap("  " + note, indent: "  ") }

        if let deployment, let fromStats {
            lines.append("")
            lines.append("Deployment (\(fromStats.printableOnOneLine), last \(window ?? "")):")
            for finding in deployment.findings { lines += Self.wrap("  " + finding, indent: "  ") }
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// `400.0 MiB`.
    static func mebibytes(_ bytes: Int64) -> String {
        let mib = Double(bytes) / Double(1 << 20)
        if mib >= 1024 { return PlanFormat.count(mib / 1024, digits: 1) + " GiB" }
        return mib >= 1 ? String(format: "%.1f MiB", mib) : String(format: "%.1f KiB", Double(bytes) / 1024)
    }

    /// The units a number is never parted from at a line break.
    static let units: Set<Substring> = ["%", "USD", "s", "min", "h", "KiB", "MiB", "GiB", "Mbit/s"]

    /// `text`'s words, a unit (`99.000 %`, `2.94 USD`) kept with the number before it.
    static func words(_ text: Substring) -> [Substring] {
        var words: [Substring] = []
        for word in text.split(separator: " ", omittingEmptySubsequences: false) {
            let bare = word.prefix { !",.;:)".contains($0) }
            if let last = words.last, !last.isEmpty, units.contains(bare), last.last?.isNumber == true {
                words[words.count - 1] = text[last.startIndex..<word.endIndex]
            } else {
                words.append(word)
            }
        }
        return words
    }

    /// `text` in lines of at most ``width`` columns, broken at spaces, the first keeping
    /// `text`'s leading spaces and the later ones starting with `indent`; a word longer
    /// than a line is cut.
    static func wrap(_ text: String, indent: String) -> [String] {
        let leading = String(text.prefix { $0 == " " })
        var lines: [String] = []
        var line = leading
        var empty = true
        for word in Self.words(text.dropFirst(leading.count)) {
            if empty {
                line += word
            } else if line.count + 1 + word.count <= width {
                line += " " + word
            } else {
                lines.append(line)
                line = indent + word
            }
            empty = false
            while line.count > width {
                lines.append(String(line.prefix(width)))
                line = indent + line.dropFirst(width)
            }
        }
        lines.append(line)
        return lines
    }
}
