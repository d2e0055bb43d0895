/// Everything that happened during one restore: which tier served, every attempt and
/// what it cost. Its JSON form is the `--report` contract of the command line.
public struct RestoreReport: Sendable, Codable {
    public enum Outcome: String, Sendable, Codable, Hashable {
        case restored
        case failed
    }

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
    public var attempts: [AttemptRecord]
    public var writeBack: [WriteBackRecord]

    /// Finishes when the background write-back does; `nil` when there was none.
    public var pendingWriteBack: WriteBackCompletion? {
        get { _pendingWriteBack }
        set { _pendingWriteBack = newValue }
    }
    private var _pendingWriteBack: WriteBackCompletion?

    enum CodingKeys: String, CodingKey {
        case key, outcome, servedBy, destination, durationSeconds, bytesTransferred, estimatedCostUSD,
            attempts, writeBack
    }

    public init(
        key: CacheKey,
        outcome: Outcome,
        servedBy: String?,
        destination: String,
        durationSeconds: Double,
        bytesTransferred: Int64,
        estimatedCostUSD: Double?,
        attempts: [AttemptRecord],
        writeBack: [WriteBackRecord]
    ) {
        self.key = key
        self.outcome = outcome
        self.servedBy = servedBy
        self.destination = destination
        self.durationSeconds = durationSeconds
        self.bytesTransferred = bytesTransferred
        self.estimatedCostUSD = estimatedCostUSD
        self.attempts = attempts
        self.writeBack = writeBack
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(key, forKey: .key)
        try container.encode(outcome, forKey: .outcome)
        try container.encode(servedBy, forKey: .servedBy)  // null when failed, as the contract shows
        try container.encode(destination, forKey: .destination)
        try container.encode(durationSeconds, forKey: .durationSeconds)
        try container.encode(bytesTransferred, forKey: .bytesTransferred)
        try container.encode(estimatedCostUSD, forKey: .estimatedCostUSD)
        try container.encode(attempts, forKey: .attempts)
        try container.encode(writeBack, forKey: .writeBack)
    }

    /// Waits for a background write-back and returns the report with its final outcomes.
    public func completingWriteBack() async -> RestoreReport {
        guard let pending = pendingWriteBack else { return self }
        var copy = self
        copy.writeBack = await pending.records()
        copy.pendingWriteBack = nil
        return copy
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

    public init(tier: String, attempt: Int, outcome: Outcome, durationSeconds: Double, bytes: Int64, error: String?) {
        self.tier = tier
        self.attempt = attempt
        self.outcome = outcome
        self.durationSeconds = durationSeconds
        self.bytes = bytes
        self.error = error
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(tier, forKey: .tier)
        try container.encode(attempt, forKey: .attempt)
        try container.encode(outcome, forKey: .outcome)
        try container.encode(durationSeconds, forKey: .durationSeconds)
        try container.encode(bytes, forKey: .bytes)
        try container.encode(error, forKey: .error)
    }
}

/// What happened when the chain offered a restored tree to a tier above the one that served.
public struct WriteBackRecord: Sendable, Codable, Hashable {
    public enum Outcome: String, Sendable, Codable, Hashable {
        case published, exists, failed, pending
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
    let task: Task<[WriteBackRecord], Never>

    /// Waits for the write-back to finish and returns its outcomes. Cancelling the
    /// caller cancels the write-back (its records then say so).
    public func records() async -> [WriteBackRecord] {
        await withTaskCancellationHandler {
            await task.value
        } onCancel: {
            task.cancel()
        }
    }
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
