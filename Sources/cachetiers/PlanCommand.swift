import ArgumentParser
import CacheTiers
import CacheTiersServer
import Foundation
import NIOCore
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// `cachetiers plan`: the production analysis as a command. Which tiers to run at a
/// traffic and a budget, what each way costs and how fast and reliably it restores, and
/// how many cache masters the peak needs (Documentation/Planning.md).
struct PlanCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plan",
        abstract: "Plan the tiers: cost, restore time, success and capacity of each option, and a recommendation.",
        discussion: """
            Every input defaults to the production analysis's figure (Documentation/Planning.md). \
            With --from-stats URL, traffic, archive size, fallback rate and the tiers' times come from \
            a running cache master, and the plan says whether the deployment meets the cost target. \
            Explicit options win over measured figures. Exit 0, 1 when the cache master cannot answer, \
            2 on bad options.
            """
    )

    @Option(name: .long, parsing: .unconditional, help: "Restores a day, one per workspace boot (default 500).")
    var workspacesPerDay: Double?

    @Option(name: .long, parsing: .unconditional, help: "The compressed archive's size in MiB (default 409.6, 0.4 GiB).")
    var archiveMb: Double?

    @Option(name: .long, help: "An archive (.tar.zst) whose size to plan with; its FILE.manifest.json, if any, gives the tree's size.")
    var archive: String?

    @Option(name: .long, parsing: .unconditional, help: "Seconds the peer takes to deliver the archive (default 70).")
    var peerSeconds: Double?

    @Option(name: .long, parsing: .unconditional, help: "Or the peer's link in Mbit/s: time = size / speed.")
    var peerLinkMbps: Double?

    @Option(name: .long, parsing: .unconditional, help: "Seconds GCS takes to deliver the archive (default 55).")
    var gcsSeconds: Double?

    @Option(name: .long, parsing: .unconditional, help: "Or GCS's link in Mbit/s: time = size / speed.")
    var gcsLinkMbps: Double?

    @Option(name: .customLong("gcs-price-per-gb"), parsing: .unconditional, help: "USD a GB (2^30 bytes) downloaded from GCS (default 0.01).")
    var gcsPricePerGB: Double?

    @Option(name: .customLong("gcs-price-per-1000-requests"), parsing: .unconditional, help: "USD per 1,000 GCS reads, Class B (default 0.0004).")
    var gcsPricePerThousandRequests: Double?

    @Option(name: .long, parsing: .unconditional, help: "GCS reads a restore makes (default: 1 + one per 8 MiB segment).")
    var gcsRequestsPerRestore: Int?

    @Option(name: .long, parsing: .unconditional, help: "The share of restores the peer cannot serve, 0 to 1 (default 0.05).")
    var fallbackRate: Double?

    @Option(name: .long, parsing: .unconditional, help: "Seconds a fresh install takes (default 350).")
    var installSeconds: Double?

    @Option(name: .long, parsing: .unconditional, help: "The chance GCS serves a restore it is asked for, 0 to 1 (default 0.999).")
    var gcsAvailability: Double?

    @Option(name: .long, parsing: .unconditional, help: "The chance a fresh install succeeds, 0 to 1 (default 0.99).")
    var installAvailability: Double?

    @Flag(name: .long, help: "Losing a cache master must not slow the fleet.")
    var redundancyCritical = false

    @Option(name: .long, parsing: .unconditional, help: "USD a month that may be spent (default 10).")
    var budgetUsd: Double?

    @Option(name: .long, parsing: .unconditional, help: "The share of a day's boots in its busiest hour (default 0.25).")
    var peakHourShare: Double?

    @Option(name: .long, parsing: .unconditional, help: "Boots a minute at the peak (default: workspaces a day × peak hour share / 60).")
    var peakBootsPerMinute: Double?

    @Option(name: .long, parsing: .unconditional, help: "One cache master's link in Mbit/s (default 1000).")
    var masterLinkMbps: Double?

    @Option(name: .long, parsing: .unconditional, help: "The share of that link to plan for at the peak, 0.05 to 1 (default 0.7).")
    var masterUtilisation: Double?

    @Option(name: .long, help: "Plan from a running cache master's GET /v1/stats, e.g. http://10.0.0.5:7420.")
    var fromStats: String?

    @Option(name: .long, help: "A file holding the cache master's bearer token (with --from-stats).")
    var tokenFile: String?

    @Option(name: .long, help: "The window of --from-stats: Nm, Nh or Nd, from 1m to 90d.")
    var window = "7d"

    @Option(name: .long, help: "The peer tier's name in the reports (with --from-stats).")
    var peerTier = "peer"

    @Option(name: .long, help: "The GCS tier's name in the reports (with --from-stats).")
    var gcsTier = "gcs"

    @Option(name: .long, help: "The fresh-install tier's name in the reports (with --from-stats).")
    var installTier = "install"

    @Flag(name: .long, help: "Print the plan as JSON (Documentation/Planning.md lists its keys).")
    var json = false

    @OptionGroup var logging: LoggingOptions

    func validate() throws {
        if archiveMb != nil, archive != nil { throw ValidationError("give --archive-mb or --archive, not both") }
        if peerSeconds != nil, peerLinkMbps != nil { throw ValidationError("give --peer-seconds or --peer-link-mbps, not both") }
        if gcsSeconds != nil, gcsLinkMbps != nil { throw ValidationError("give --gcs-seconds or --gcs-link-mbps, not both") }
        if let fromStats, !(fromStats.hasPrefix("http://") || fromStats.hasPrefix("https://")) {
            throw ValidationError("--from-stats must be an http:// or https:// URL")
        }
        if fromStats == nil, tokenFile != nil { throw ValidationError("--token-file needs --from-stats") }
        guard StatsWindow.seconds(window) != nil else { throw ValidationError("--window: \(StatsWindow.problem)") }
    }

    func run() async throws {
        var archiveFile: ArchiveFile?
        if let archive { archiveFile = try ArchiveFile(path: archive) }
        let token = try tokenFile.map { try readToken($0, option: "--token-file") }

        // The options are checked before a master is asked: a bad one is exit 2 at once.
        var optionsAlone = PlanInputs()
        _ = try apply(to: &optionsAlone, archiveFile: archiveFile)
        do {
            try optionsAlone.validate()
        } catch {
            throw UsageFailure(error.description)
        }

        var inputs = PlanInputs()
        var measured: Set<String> = []
        var measurement: FleetMeasurement?
        if let fromStats {
            let stats = try await Self.fetchStats(fromStats, window: window, token: token)
            let fleet = FleetMeasurement(stats, peerTier: peerTier, gcsTier: gcsTier, installTier: installTier)
            if let inconsistency = fleet.inconsistency {
                throw CommandFailure(
                    "plan: the stats of \(fromStats) are not a cache master's (\(inconsistency)); check the URL".printableOnOneLine
                )
            }
            (inputs, measured) = fleet.applied(to: inputs)
            measurement = fleet
        }
        let given = try apply(to: &inputs, archiveFile: archiveFile)
        measured.subtract(given)
        // A link speed given replaces a measured time, as a time given does.
        if given.contains("peerLinkMbps") { measured.remove("peerSeconds") }
        if given.contains("gcsLinkMbps") { measured.remove("gcsSeconds") }

        let plan: DeploymentPlan
        do {
            plan = try DeploymentPlan(inputs)
        } catch {
            // A measured figure beyond what can be planned is the master's, not a usage error.
            if measured.contains(error.input) {
                throw CommandFailure(
                    "plan: the stats of \(fromStats ?? "") give \(error.got) for \(error.option), which expects \(error.allowed); give \(error.option) to plan with another figure"
                        .printableOnOneLine
                )
            }
            throw UsageFailure(error.description)
        }
        let deployment = measurement.map { DeploymentCheck($0, plan: plan) }
        let report = PlanReport(
            plan: plan, given: given, measured: measured, archiveFile: archiveFile, fromStats: fromStats,
            window: fromStats == nil ? nil : window, deployment: deployment
        )
        if json {
            print(try report.prettyJSON())
        } else {
            print(report.text(), terminator: "")
        }
    }

    /// Sets every input an option gives; the names of those set.
    func apply(to inputs: inout PlanInputs, archiveFile: ArchiveFile?) throws -> Set<String> {
        var given: Set<String> = []
        func set<Value>(_ value: Value?, _ name: String, _ keyPath: WritableKeyPath<PlanInputs, Value>) {
            guard let value else { return }
            inputs[keyPath: keyPath] = value
            given.insert(name)
        }
        set(workspacesPerDay, "workspacesPerDay", \.workspacesPerDay)
        do {
            set(try archiveMb.map(PlanInputs.archiveBytes(mebibytes:)), "archiveBytes", \.archiveBytes)
        } catch {
            throw UsageFailure(error.description)
        }
        set(archiveFile?.bytes, "archiveBytes", \.archiveBytes)
        set(peerSeconds.map(PlanInputs.TransferTime.seconds), "peerSeconds", \.peerTransfer)
        set(peerLinkMbps.map(PlanInputs.TransferTime.linkMbps), "peerLinkMbps", \.peerTransfer)
        set(gcsSeconds.map(PlanInputs.TransferTime.seconds), "gcsSeconds", \.gcsTransfer)
        set(gcsLinkMbps.map(PlanInputs.TransferTime.linkMbps), "gcsLinkMbps", \.gcsTransfer)
        set(gcsPricePerGB, "gcsPricePerGB", \.gcsPricePerGB)
        set(gcsPricePerThousandRequests, "gcsPricePerThousandRequests", \.gcsPricePerThousandRequests)
        set(gcsRequestsPerRestore.map(Optional.some), "gcsRequestsPerRestore", \.gcsRequestsPerRestore)
        set(fallbackRate, "fallbackRate", \.fallbackRate)
        set(installSeconds, "installSeconds", \.installSeconds)
        set(gcsAvailability, "gcsAvailability", \.gcsAvailability)
        set(installAvailability, "installAvailability", \.installAvailability)
        set(redundancyCritical ? true : nil, "redundancyCritical", \.redundancyCritical)
        set(budgetUsd, "budgetUSD", \.budgetUSD)
        set(peakHourShare, "peakHourShare", \.peakHourShare)
        set(peakBootsPerMinute.map(Optional.some), "peakBootsPerMinute", \.peakBootsPerMinute)
        set(masterLinkMbps, "masterLinkMbps", \.masterLinkMbps)
        set(masterUtilisation, "masterUtilisation", \.masterUtilisation)
        return given
    }

    /// `GET /v1/stats` of the master, decoded; a failure is one line, exit 1.
    static func fetchStats(_ peer: String, window: String, token: String?) async throws -> FleetStats {
        let body: ByteBuffer
        do {
            body = try await FleetStatsClient(peer: peer, option: "--from-stats").fetch(window: window, token: token)
        } catch {
            throw CommandFailure("plan: \(error)")
        }
        do {
            return try JSONDecoder().decode(FleetStats.self, from: Data(body.readableBytesView))
        } catch {
            throw CommandFailure("plan: \(peer) answered something that is not fleet stats; is it a cache master?".printableOnOneLine)
        }
    }
}

/// The archive `--archive` names: its size, and from its manifest beside it (what
/// `cachetiers pack` writes as FILE.manifest.json), the tree's.
struct ArchiveFile {
    var path: String
    var bytes: Int64
    var uncompressedBytes: Int64?
    var entries: Int?

    /// Only a regular file: its size comes from stat(2), so a FIFO, a directory or a
    /// device is refused without being opened, and nothing waits on one.
    init(path: String) throws {
        self.path = path
        var info = stat()
        guard stat(path, &info) == 0 else {
            throw UsageFailure("--archive \(path) cannot be read: \(String(cString: strerror(errno)))".printableOnOneLine)
        }
        switch info.st_mode & S_IFMT {
        case S_IFREG: break
        case S_IFDIR: throw UsageFailure("--archive \(path) is a directory; give the .tar.zst archive".printableOnOneLine)
        default: throw UsageFailure("--archive \(path) is not a regular file (a FIFO, socket or device); give the archive itself".printableOnOneLine)
        }
        guard info.st_size > 0 else { throw UsageFailure("--archive \(path) is empty; give an archive cachetiers pack wrote".printableOnOneLine) }
        bytes = Int64(info.st_size)
        do {
            _ = try PlanInputs.archiveBytes(mebibytes: Double(bytes) / Double(1 << 20))
        } catch {
            throw UsageFailure("--archive \(path) is \(formatBytes(bytes)), more than the 1 TiB a plan allows".printableOnOneLine)
        }
        // The manifest, when it is there and describes this very archive.
        if let data = try? SmallFile.contents(of: FilePath(path + ".manifest.json"), limit: SmallFile.configLimit),
            let manifest = try? CacheManifest(jsonData: data), manifest.archiveSize == bytes
        {
            uncompressedBytes = manifest.uncompressedSize
            entries = manifest.entryCount
        }
    }
}

extension FleetMeasurement {
    /// What the master's stats say, for the tiers named so.
    init(_ stats: FleetStats, peerTier: String, gcsTier: String, installTier: String) {
        self.init(
            windowSeconds: stats.window, restores: stats.restores, restored: stats.restored, fallbacks: stats.fallbacks,
            tiers: stats.byTier.map {
                Tier(name: $0.tier, restores: $0.restores, p50: $0.p50, bytes: $0.bytes, estimatedCostUSD: $0.estimatedCostUSD)
            },
            projectedMonthlyCostUSD: stats.projectedMonthlyCostUSD, peerTier: peerTier, gcsTier: gcsTier, installTier: installTier
        )
    }
}
