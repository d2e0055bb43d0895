import Foundation

/// Everything that happened during one restore: which tier served, every attempt and
/// what it cost. Its JSON form is the `--report` contract of the command line, and the
/// body a restore sends to the fleet (`POST /v1/reports`).
public struct RestoreReport: Sendable, Codable {
    public enum Outcome: String, Sendable, Codable, Hashable, CaseIterable {
        case restored
        case failed
    }

    /// New for every restore: the fleet counts a report sent twice (spooled, resent) once.
    public var id: UUID
    /// When the restore ended: the tree in place, or the chain given up.
    public var finishedAt: Date
    /// The machine that restored (`gethostname`), when known.
    public var host: String?
    public var key: CacheKey
    public var outcome: Outcome
    /// The name of the tier that restored, or `nil` when every tier failed.
    public var servedBy: String?
    /// The absolute path of the restored directory.
    public var destination: String
    public var durationSeconds: Double
    /// Bytes received by the tier that served.
    public var bytesTransferred: Int64
    /// What the serving tier reported the restore cost, when it charges.
    public var estimatedCostUSD: Double?
    /// The served archive's sizes; `nil` when no archive served (a fresh install, a failure).
    public var archive: ArchiveSizes?
    /// The archive's compressed bytes over the serving attempt's transfer time; `nil`
    /// when unknown (no archive, or every byte arrived at once).
    public var throughputBytesPerSecond: Double?
    /// The restore's own phases after the attempts.
    public var timings: RestoreTimings
    public var attempts: [AttemptRecord]
    public var writeBack: [WriteBackRecord]

    /// Finishes when the background write-back does; `nil` when there was none.
    public var pendingWriteBack: WriteBackCompletion? {
        get { _pendingWriteBack }
        set { _pendingWriteBack = newValue }
    }
    private var _pendingWriteBack: WriteBackCompletion?

    enum CodingKeys: String, CodingKey {
        case id, finishedAt, host, key, outcome, servedBy, destination, durationSeconds, bytesTransferred, estimatedCostUSD,
            archive, throughputBytesPerSecond, timings, attempts, writeBack
    }

    /// - Parameters:
    ///   - id: a new one by default; give one only to rebuild a report.
    ///   - finishedAt: now by default.
    ///   - host: this machine's name by default.
    public init(
        id: UUID = UUID(),
        finishedAt: Date = Date(),
        host: String? = RestoreReport.hostName,
        key: CacheKey,
        outcome: Outcome,
        servedBy: String?,
        destination: String,
        durationSeconds: Double,
        bytesTransferred: Int64,
        estimatedCostUSD: Double?,
        archive: ArchiveSizes? = nil,
        throughputBytesPerSecond: Double? = nil,
        timings: RestoreTimings = RestoreTimings(),
        attempts: [AttemptRecord],
        writeBack: [WriteBackRecord]
    ) {
        self.id = id
        self.finishedAt = finishedAt
        self.host = host
        self.key = key
        self.outcome = outcome
        self.servedBy = servedBy
        self.destination = destination
        self.durationSeconds = durationSeconds
        self.bytesTransferred = bytesTransferred
        self.estimatedCostUSD = estimatedCostUSD
        self.archive = archive
        self.throughputBytesPerSecond = throughputBytesPerSecond
        self.timings = timings
        self.attempts = attempts
        self.writeBack = writeBack
    }

    /// Reads a report as ``encode(to:)`` writes it. The fields this version added to the
    /// contract (all but `id` and `finishedAt`) may be missing.
    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        id = try container.decode(UUID.self, forKey: .id)
        let finished = try container.decode(String.self, forKey: .finishedAt)
        guard let date = try? Date(finished, strategy: Self.timestampStyle) else {
            throw DecodingError.dataCorruptedError(
                forKey: .finishedAt, in: container, debugDescription: "expected an RFC 3339 UTC time, got \"\(finished.prefix(64))\""
            )
        }
        finishedAt = date
        host = try container.decodeIfPresent(String.self, forKey: .host)
        key = try container.decode(CacheKey.self, forKey: .key)
        outcome = try container.decode(Outcome.self, forKey: .outcome)
        servedBy = try container.decodeIfPresent(String.self, forKey: .servedBy)
        destination = try container.decode(String.self, forKey: .destination)
        durationSeconds = try container.decode(Double.self, forKey: .durationSeconds)
        bytesTransferred = try container.decode(Int64.self, forKey: .bytesTransferred)
        estimatedCostUSD = try container.decodeIfPresent(Double.self, forKey: .estimatedCostUSD)
        archive = try container.decodeIfPresent(ArchiveSizes.self, forKey: .archive)
        throughputBytesPerSecond = try container.decodeIfPresent(Double.self, forKey: .throughputBytesPerSecond)
        timings = try container.decodeIfPresent(RestoreTimings.self, forKey: .timings) ?? RestoreTimings()
        attempts = try container.decode([AttemptRecord].self, forKey: .attempts)
        writeBack = try container.decode([WriteBackRecord].self, forKey: .writeBack)
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        // Lowercase, as RFC 9562 writes it (Foundation's own encoding is uppercase).
        try container.encode(id.uuidString.lowercased(), forKey: .id)
        try container.encode(finishedAt.formatted(Self.timestampStyle), forKey: .finishedAt)
        try container.encode(host, forKey: .host)
        try container.encode(key, forKey: .key)
        try container.encode(outcome, forKey: .outcome)
        try container.encode(servedBy, forKey: .servedBy)  // null when failed, as the contract shows
        try container.encode(destination, forKey: .destination)
        try container.encode(durationSeconds, forKey: .durationSeconds)
        try container.encode(bytesTransferred, forKey: .bytesTransferred)
        try container.encode(estimatedCostUSD, forKey: .estimatedCostUSD)
        try container.encode(archive, forKey: .archive)
        try container.encode(throughputBytesPerSecond, forKey: .throughputBytesPerSecond)
        try container.encode(timings, forKey: .timings)
        try container.encode(attempts, forKey: .attempts)
        try container.encode(writeBack, forKey: .writeBack)
    }

    /// `2026-12-01T18:40:12.345Z`: RFC 3339 in UTC, to the millisecond.
    static let timestampStyle = Date.ISO8601FormatStyle(includingFractionalSeconds: true, timeZone: .gmt)

    /// This machine's name (`gethostname`), or `nil` when it has none.
    public static var hostName: String? { systemHostName }

    /// Waits for a background write-back and returns the report with its final outcomes
    /// and ``RestoreTimings/writeBackSeconds``.
    public func completingWriteBack() async -> RestoreReport {
        guard let pending = pendingWriteBack else { return self }
        var copy = self
        let finished = await pending.finished()
        copy.writeBack = finished.records
        copy.timings.writeBackSeconds = finished.duration.inSeconds
        copy.pendingWriteBack = nil
        return copy
    }
}

/// The served archive's size on the wire and unpacked.
public struct ArchiveSizes: Sendable, Codable, Hashable {
    /// The archive as received.
    public var compressedBytes: Int64
    /// The file contents it unpacked to.
    public var uncompressedBytes: Int64

    public init(compressedBytes: Int64, uncompressedBytes: Int64) {
        self.compressedBytes = compressedBytes
        self.uncompressedBytes = uncompressedBytes
    }
}

/// The phases of a restore after its serving attempt, in seconds; each `nil` when it
/// did not happen. They follow one another: promotion, removal, write-back.
public struct RestoreTimings: Sendable, Codable, Hashable {
    /// The rename (or two) that put the staged tree in place.
    public var promotionSeconds: Double?
    /// Removing the tree it replaced; `nil` when the destination was empty.
    public var oldTreeRemovalSeconds: Double?
    /// From the tree in place (the old one removed) to the last write-back's end; `nil`
    /// without a write-back.
    public var writeBackSeconds: Double?

    public init(promotionSeconds: Double? = nil, oldTreeRemovalSeconds: Double? = nil, writeBackSeconds: Double? = nil) {
        self.promotionSeconds = promotionSeconds
        self.oldTreeRemovalSeconds = oldTreeRemovalSeconds
        self.writeBackSeconds = writeBackSeconds
    }

    enum CodingKeys: String, CodingKey {
        case promotionSeconds, oldTreeRemovalSeconds, writeBackSeconds
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(promotionSeconds, forKey: .promotionSeconds)
        try container.encode(oldTreeRemovalSeconds, forKey: .oldTreeRemovalSeconds)
        try container.encode(writeBackSeconds, forKey: .writeBackSeconds)
    }
}

/// Where one attempt's time went, in seconds; each `nil` when the attempt did not get
/// there or the phase does not apply (a fresh install has none of them).
public struct AttemptTimings: Sendable, Codable, Hashable {
    /// Attempt start to the tier's first answer about the key (name lookup, connect,
    /// one round trip).
    public var connectSeconds: Double?
    /// Attempt start to the first archive byte.
    public var firstByteSeconds: Double?
    /// First archive byte to the last.
    public var transferSeconds: Double?
    /// How long decoding and extracting were busy (alongside the transfer).
    public var extractSeconds: Double?
    /// Last archive byte to the tree complete and verified in staging.
    public var extractTailSeconds: Double?

    public init(
        connectSeconds: Double? = nil,
        firstByteSeconds: Double? = nil,
        transferSeconds: Double? = nil,
        extractSeconds: Double? = nil,
        extractTailSeconds: Double? = nil
    ) {
        self.connectSeconds = connectSeconds
        self.firstByteSeconds = firstByteSeconds
        self.transferSeconds = transferSeconds
        self.extractSeconds = extractSeconds
        self.extractTailSeconds = extractTailSeconds
    }

    enum CodingKeys: String, CodingKey {
        case connectSeconds, firstByteSeconds, transferSeconds, extractSeconds, extractTailSeconds
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(connectSeconds, forKey: .connectSeconds)
        try container.encode(firstByteSeconds, forKey: .firstByteSeconds)
        try container.encode(transferSeconds, forKey: .transferSeconds)
        try container.encode(extractSeconds, forKey: .extractSeconds)
        try container.encode(extractTailSeconds, forKey: .extractTailSeconds)
    }
}

/// One attempt of one tier.
public struct AttemptRecord: Sendable, Codable, Hashable {
    /// How an attempt ended. The raw values are part of the report contract.
    public enum Outcome: String, Sendable, Codable, Hashable {
        case hit, miss, timeout, stalled, corrupt, unauthorized, error, skipped
        /// Stopped by the chain with no verdict: it lost a hedge race, or the caller gave up.
        case cancelled
    }

    public var tier: String
    /// 1-based within the tier; 0 for a tier that was skipped.
    public var attempt: Int
    public var outcome: Outcome
    public var durationSeconds: Double
    public var bytes: Int64
    /// What went wrong, for anything but a hit.
    public var error: String?
    /// Where its time went; `nil` for a skipped attempt.
    public var timings: AttemptTimings?

    public init(
        tier: String, attempt: Int, outcome: Outcome, durationSeconds: Double, bytes: Int64, error: String?,
        timings: AttemptTimings? = nil
    ) {
        self.tier = tier
        self.attempt = attempt
        self.outcome = outcome
        self.durationSeconds = durationSeconds
        self.bytes = bytes
        self.error = error
        self.timings = timings
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(tier, forKey: .tier)
        try container.encode(attempt, forKey: .attempt)
        try container.encode(outcome, forKey: .outcome)
        try container.encode(durationSeconds, forKey: .durationSeconds)
        try container.encode(bytes, forKey: .bytes)
        try container.encode(error, forKey: .error)
        try container.encode(timings, forKey: .timings)
    }
}

/// What happened when the chain offered a restored tree to a tier above the one that served.
public struct WriteBackRecord: Sendable, Codable, Hashable {
    public enum Outcome: String, Sendable, Codable, Hashable {
        case published, exists, failed, pending
        /// Handed to a detached process (`writeBack.detach`), whose log says how it ended.
        case detached
    }

    public var tier: String
    public var outcome: Outcome
    public var error: String?

    public init(tier: String, outcome: Outcome, error: String? = nil) {
        self.tier = tier
        self.outcome = outcome
        self.error = error
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(tier, forKey: .tier)
        try container.encode(outcome, forKey: .outcome)
        try container.encode(error, forKey: .error)
    }
}

/// A handle on a write-back running in the background.
public struct WriteBackCompletion: Sendable {
    let task: Task<FinishedWriteBack, Never>

    /// Waits for the write-back to finish and returns its outcomes. Cancelling the
    /// caller cancels the write-back (its records then say so).
    public func records() async -> [WriteBackRecord] {
        await finished().records
    }

    func finished() async -> FinishedWriteBack {
        await withTaskCancellationHandler {
            await task.value
        } onCancel: {
            task.cancel()
        }
    }
}

/// A write-back's outcomes and how long it took.
struct FinishedWriteBack: Sendable {
    var records: [WriteBackRecord]
    var duration: Duration
}

/// Why a restore threw: every tier failed, or a fatal error stopped the chain. The
/// report lists every attempt; the destination is as it was before the restore.
public struct RestoreFailure: Error, CustomStringConvertible {
    public var report: RestoreReport
    /// The failure that stopped the chain, when it was fatal rather than exhausted.
    public var fatalError: CacheTierError?

    public var description: String {
        if let fatalError {
            return "restore of \(report.key) stopped: \(fatalError)"
        }
        let tried = report.attempts.map { attempt in
            "\(attempt.tier) \(attempt.outcome.rawValue)" + (attempt.error.map { " (\($0))" } ?? "")
        }
        return "every tier failed to restore \(report.key): " + tried.joined(separator: "; ")
    }
}

/// What the chain tells an observer as a restore unfolds.
public enum RestoreEvent: Sendable {
    case attemptStarted(tier: String, attempt: Int)
    case progress(tier: String, attempt: Int, completed: Int64, total: Int64?)
    case attemptFinished(AttemptRecord)
    case hedgeStarted(tier: String, after: String)
    case restored(tier: String)
    case writeBackFinished(WriteBackRecord)
}
