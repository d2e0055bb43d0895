import Foundation

/// What `cachetiers plan` plans from: the fleet's traffic, its archive, how fast and how
/// reliably each tier serves, what GCS charges and what may be spent. Every default is
/// the production analysis's figure, or, where it gave none, a documented assumption
/// (Documentation/Planning.md lists each and where it comes from).
public struct PlanInputs: Sendable, Hashable, Codable {
    /// How long a tier takes to deliver the archive: measured or assumed seconds, or the
    /// archive's size over a link's speed.
    public enum TransferTime: Sendable, Hashable, Codable {
        case seconds(Double)
        /// Megabits (10^6 bits) a second: the time is the archive's bits over it.
        case linkMbps(Double)

        /// The seconds to move `bytes`.
        public func seconds(for bytes: Int64) -> Double {
            switch self {
            case .seconds(let seconds): seconds
            case .linkMbps(let mbps): Double(bytes) * 8 / (mbps * 1_000_000)
            }
        }
    }

    /// Restores a month are restores a day × 30, as the analysis and `GET /v1/stats`'s
    /// projection count a month.
    public static let daysPerMonth = 30.0
    /// The analysis's threshold of its first question, "traffic under 1,000 a day?".
    public static let highTrafficPerDay = 1_000.0
    /// What `cachetiers serve --max-transfers` allows by default: transfers one cache
    /// master serves at once.
    public static let transfersPerMaster = 64

    /// Restores a day: one per workspace boot (500). From 0.01 (one in the longest
    /// window, 90 days, measures 0.011) to 10 million.
    public var workspacesPerDay = 500.0
    /// The compressed archive a restore downloads, in bytes (0.4 GiB, 409.6 MiB: at
    /// 0.01 USD a GB, GCS's GB being 2^30 bytes, exactly the analysis's 0.004 USD a
    /// transfer before the reads, so its 12, 60 and 120 USD a month come out as it said).
    public var archiveBytes: Int64 = 429_496_730
    /// The peer's delivery (70 s, the middle of the analysis's 60-80 s).
    public var peerTransfer = TransferTime.seconds(70)
    /// GCS's delivery (55 s, the middle of the analysis's 50-60 s).
    public var gcsTransfer = TransferTime.seconds(55)
    /// USD a GB (2^30 bytes) downloaded from GCS (0.01: the analysis's same-region figure;
    /// internet egress is 0.12, the GCS tier's own default).
    public var gcsPricePerGB = 0.01
    /// USD per 1,000 reads, Class B operations (0.0004: GCS Standard storage's list price).
    public var gcsPricePerThousandRequests = 0.0004
    /// Reads one GCS restore makes; nil: as the GCS tier makes them, one metadata read
    /// then one per 8 MiB segment (one stream when the archive is at most two segments).
    public var gcsRequestsPerRestore: Int?
    /// Of the restores the peer is asked for, the share it cannot serve (a new key, an
    /// evicted one, a master down), which fall to the next tier (0.05, the low end of the
    /// analysis's 5-10 %: a warm master with write-back misses little but new keys).
    public var fallbackRate = 0.05
    /// A fresh install (`npm ci`), the floor (350 s, the middle of the analysis's 300-400 s).
    public var installSeconds = 350.0
    /// The chance GCS serves a restore it is asked for (0.999: the Standard class's
    /// regional 99.9 % availability SLA; its objects are kept filled by publishing).
    public var gcsAvailability = 0.999
    /// The chance a fresh install succeeds (0.99: an assumption for a package registry
    /// and the network to it; the analysis names none).
    public var installAvailability = 0.99
    /// Whether losing the cache master must not slow the fleet: the third question.
    public var redundancyCritical = false
    /// The monthly spend allowed (10 USD, the product's cost target).
    public var budgetUSD = 10.0
    /// The share of a day's boots that come in its busiest hour (0.25: a team starting
    /// its working day within the same hour or so).
    public var peakHourShare = 0.25
    /// Boots a minute at the peak; nil: workspaces a day × ``peakHourShare`` / 60.
    public var peakBootsPerMinute: Double?
    /// One cache master's network link in megabits a second (1,000: a 1 Gbit/s VM).
    public var masterLinkMbps = 1_000.0
    /// The share of that link planned to be used at the peak (0.7: headroom for
    /// uploads, retries and other traffic).
    public var masterUtilisation = 0.7

    public init() {}

    /// Reads a GCS restore makes: ``gcsRequestsPerRestore``, or as the GCS tier makes them.
    public var effectiveGCSRequestsPerRestore: Int {
        if let gcsRequestsPerRestore { return gcsRequestsPerRestore }
        let segment = Int64(GCSSource.Configuration.defaultSegmentSize)
        let segments = (archiveBytes + segment - 1) / segment
        return 1 + (segments <= 2 ? 1 : Int(segments))
    }

    /// Boots a minute at the peak: ``peakBootsPerMinute``, or derived from the day's.
    public var effectivePeakBootsPerMinute: Double {
        peakBootsPerMinute ?? workspacesPerDay * peakHourShare / 60
    }

    // MARK: validation

    /// An input outside what can be planned: one line naming the option that sets it,
    /// the range it allows and what it got.
    public struct Problem: Error, CustomStringConvertible, Equatable {
        public var option: String
        /// The input's name, as `--json` and ``FleetMeasurement/applied(to:)`` name it.
        public var input: String
        public var allowed: String
        public var got: String
        public var description: String { "\(option): expected \(allowed), got \(got)" }
    }

    /// A number's allowed range, by the option that sets it.
    struct Bounds {
        var option: String
        var input: String
        var lower: Double
        var lowerIncluded: Bool
        var upper: Double
        var unit: String

        func check(_ value: Double) throws(Problem) {
            let low = lowerIncluded ? value >= lower : value > lower
            guard value.isFinite, low, value <= upper else {
                let from = lowerIncluded ? "from \(Self.text(lower))" : "more than \(Self.text(lower))"
                throw Problem(option: option, input: input, allowed: "a number \(from) to \(Self.text(upper))\(unit)", got: Self.text(value))
            }
        }

        static func text(_ value: Double) -> String {
            guard value.isFinite else { return value.isNaN ? "nan" : (value < 0 ? "-inf" : "inf") }
            if value == value.rounded(), abs(value) < 1e15 { return String(Int64(value)) }
            return String(format: "%g", value)
        }
    }

    static let workspacesRange = Bounds(option: "--workspaces-per-day", input: "workspacesPerDay", lower: 0.01, lowerIncluded: true, upper: 10_000_000, unit: "")
    static let archiveRange = Bounds(option: "--archive-mb", input: "archiveBytes", lower: 0, lowerIncluded: false, upper: 1_048_576, unit: " MiB")
    static let secondsUpper = 86_400.0
    static let linkUpper = 1_000_000.0

    /// The archive size in MiB as `--archive-mb` gives it, in bytes, or the problem.
    public static func archiveBytes(mebibytes: Double) throws(Problem) -> Int64 {
        try archiveRange.check(mebibytes)
        return max(1, Int64((mebibytes * Double(1 << 20)).rounded()))
    }

    /// Checks every input, as the option that sets it names it; the first problem found.
    public func validate() throws(Problem) {
        try Self.workspacesRange.check(workspacesPerDay)
        try Self.archiveRange.check(Double(archiveBytes) / Double(1 << 20))
        for (transfer, name) in [(peerTransfer, "peer"), (gcsTransfer, "gcs")] {
            switch transfer {
            case .seconds(let seconds):
                try Bounds(option: "--\(name)-seconds", input: "\(name)Seconds", lower: 0, lowerIncluded: false, upper: Self.secondsUpper, unit: " s").check(seconds)
            case .linkMbps(let mbps):
                try Bounds(option: "--\(name)-link-mbps", input: "\(name)LinkMbps", lower: 0.001, lowerIncluded: true, upper: Self.linkUpper, unit: " Mbit/s").check(mbps)
            }
        }
        try Bounds(option: "--gcs-price-per-gb", input: "gcsPricePerGB", lower: 0, lowerIncluded: true, upper: 1_000, unit: " USD").check(gcsPricePerGB)
        try Bounds(option: "--gcs-price-per-1000-requests", input: "gcsPricePerThousandRequests", lower: 0, lowerIncluded: true, upper: 1_000, unit: " USD")
            .check(gcsPricePerThousandRequests)
        if let gcsRequestsPerRestore {
            try Bounds(option: "--gcs-requests-per-restore", input: "gcsRequestsPerRestore", lower: 1, lowerIncluded: true, upper: 1_000_000, unit: "")
                .check(Double(gcsRequestsPerRestore))
        }
        try Bounds(option: "--fallback-rate", input: "fallbackRate", lower: 0, lowerIncluded: true, upper: 1, unit: "").check(fallbackRate)
        try Bounds(option: "--install-seconds", input: "installSeconds", lower: 0, lowerIncluded: false, upper: Self.secondsUpper, unit: " s").check(installSeconds)
        try Bounds(option: "--gcs-availability", input: "gcsAvailability", lower: 0, lowerIncluded: true, upper: 1, unit: "").check(gcsAvailability)
        try Bounds(option: "--install-availability", input: "installAvailability", lower: 0, lowerIncluded: true, upper: 1, unit: "").check(installAvailability)
        try Bounds(option: "--budget-usd", input: "budgetUSD", lower: 0, lowerIncluded: true, upper: 1_000_000_000, unit: " USD").check(budgetUSD)
        try Bounds(option: "--peak-hour-share", input: "peakHourShare", lower: 0, lowerIncluded: false, upper: 1, unit: "").check(peakHourShare)
        if let peakBootsPerMinute {
            try Bounds(option: "--peak-boots-per-minute", input: "peakBootsPerMinute", lower: 0, lowerIncluded: false, upper: 1_000_000, unit: "").check(peakBootsPerMinute)
        }
        try Bounds(option: "--master-link-mbps", input: "masterLinkMbps", lower: 1, lowerIncluded: true, upper: Self.linkUpper, unit: " Mbit/s").check(masterLinkMbps)
        try Bounds(option: "--master-utilisation", input: "masterUtilisation", lower: 0.05, lowerIncluded: true, upper: 1, unit: "").check(masterUtilisation)
    }
}
