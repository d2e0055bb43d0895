import CacheTiers
import Foundation
import GRDB
import Logging
import Synchronization
import SystemPackage

/// The cache master's durable store of fleet reports: SQLite through GRDB, one row per
/// report keyed by its id, its attempts in a child table, and the report's JSON as it
/// arrived.
///
/// Durability: a `DatabasePool` in WAL mode with `synchronous = FULL`, so a commit has
/// reached the disk (the WAL is fsynced) before ``insert(_:json:receivedAt:)`` returns;
/// `NORMAL` would survive a killed process but not a power cut, and the route answers
/// 2xx only once this returns. Concurrent inserts are committed together (group commit:
/// whoever reaches the writer takes every report waiting), so one fsync acknowledges
/// many reports.
///
/// Bounds: reports older than the retention (by `finishedAt`) are deleted at
/// ``open(at:retention:maxReports:logger:)`` and by ``prune(now:)``, which the server
/// runs periodically; beyond `maxReports` rows the oldest go, checked after every
/// commit with a little slack so the deletion is batched.
final class ReportStore: Sendable {
    enum InsertOutcome: Sendable, Equatable {
        /// A new report, committed.
        case stored
        /// A report with this id was already stored: counted once.
        case duplicate
    }

    /// How many rows and the newest arrival, for the `/metrics` gauges.
    struct Summary: Sendable, Equatable {
        var count: Int
        var newestArrival: Date?
    }

    let path: FilePath
    let retention: Duration
    let maxReports: Int
    /// Database pages in use (not free) beyond this make the oldest reports go.
    let maxBytes: Int64
    private let pool: DatabasePool
    private let summaryState: Mutex<Summary>
    private let pending = Mutex<[Pending]>([])

    private struct Pending: Sendable {
        var report: ReceivedReport
        var json: String
        var receivedAt: Date
        var continuation: CheckedContinuation<InsertOutcome, any Error>
    }

    /// Rows allowed above `maxReports` before the oldest are deleted, so the deletion
    /// runs once per batch of inserts, not after each one.
    private var slack: Int { max(1, min(1000, maxReports / 100)) }

    private init(path: FilePath, pool: DatabasePool, retention: Duration, maxReports: Int, maxBytes: Int64, summary: Summary) {
        self.path = path
        self.pool = pool
        self.retention = retention
        self.maxReports = maxReports
        self.maxBytes = maxBytes
        self.summaryState = Mutex(summary)
    }

    /// Opens (creating when missing) the database at `path`, migrates its schema, and
    /// deletes what the retention and the row cap no longer allow.
    static func open(
        at path: FilePath, retention: Duration, maxReports: Int, maxBytes: Int64 = 2 << 30, logger: Logger
    ) throws(ReportStoreError) -> ReportStore {
        let folder = path.removingLastComponent()
        do {
            try FileManager.default.createDirectory(atPath: folder.string, withIntermediateDirectories: true)
        } catch {
            throw ReportStoreError("cannot create the folder \(folder) for the report database: \(error.localizedDescription)")
        }
        var configuration = Configuration()
        configuration.label = "cachetiers.reports"
        // Another process holding the database (an operator's sqlite3) delays a write, not fails it.
        configuration.busyMode = .timeout(5)
        configuration.prepareDatabase { db in
            try db.execute(sql: "PRAGMA synchronous = FULL")
            // The WAL is truncated back to 64 MiB after a checkpoint, so it cannot keep
            // the size of the largest burst for good.
            try db.execute(sql: "PRAGMA journal_size_limit = 67108864")
        }
        let existed = FileManager.default.fileExists(atPath: path.string)
        do {
            let pool = try DatabasePool(path: path.string, configuration: configuration)
            try migrator.migrate(pool)
            let summary = try pool.read { db in
                Summary(
                    count: try Int.fetchOne(db, sql: "SELECT count(*) FROM report") ?? 0,
                    newestArrival: try Double.fetchOne(db, sql: "SELECT max(receivedAt) FROM report").map(Date.init(timeIntervalSince1970:))
                )
            }
            let store = ReportStore(
                path: path, pool: pool, retention: retention, maxReports: maxReports, maxBytes: maxBytes, summary: summary
            )
            // A prune that fails (a full disk) leaves every report where it was: the store
            // still serves, and the next periodic prune tries again.
            var removed = 0
            do {
                removed = try store.pruneNow(Date())
            } catch {
                logger.warning(
                    "cannot prune the report database at start; serving without pruning until the next try",
                    metadata: ["database": "\(path)", "error": "\(Self.describe(error))"]
                )
            }
            logger.info(
                "report store open",
                metadata: ["database": "\(path)", "reports": "\(store.summary.count)", "pruned": "\(removed)"]
            )
            return store
        } catch {
            guard existed else {
                throw ReportStoreError(
                    "the report database \(path) cannot be created: \(Self.describe(error)); make its folder writable, or give another --reports-db"
                )
            }
            throw ReportStoreError(
                "the report database \(path) cannot be used: \(Self.describe(error)); move it aside to start a new one, or give another --reports-db"
            )
        }
    }

    /// The rows now and the newest arrival.
    var summary: Summary { summaryState.withLock { $0 } }

    /// Stores a report, once: returns when the row is committed to disk (or was there).
    /// `finishedAt` is clamped to `receivedAt`, so a VM with a clock ahead cannot put
    /// reports in the future of every window.
    func insert(_ report: ReceivedReport, json: String, receivedAt: Date) async throws -> InsertOutcome {
        try await withCheckedThrowingContinuation { continuation in
            pending.withLock {
                $0.append(Pending(report: report, json: json, receivedAt: receivedAt, continuation: continuation))
            }
            pool.asyncWriteWithoutTransaction { db in self.commitPending(db) }
        }
    }

    /// Writes every report waiting, in one transaction, then answers each: on the
    /// writer's queue, so batches never interleave. A batch an earlier call took is
    /// already answered, and an empty one costs nothing.
    private func commitPending(_ db: Database) {
        let batch = pending.withLock { queue in
            defer { queue = [] }
            return queue
        }
        guard !batch.isEmpty else { return }
        do {
            var outcomes: [InsertOutcome] = []
            var added = 0
            var newest: Date?
            var removed = 0
            try db.inTransaction {
                for entry in batch {
                    let stored = try Self.insertRow(entry.report, json: entry.json, receivedAt: entry.receivedAt, db)
                    outcomes.append(stored ? .stored : .duplicate)
                    if stored {
                        added += 1
                        // As the column holds it (seconds since 1970, a REAL), so the newest
                        // arrival reads the same before and after a restart.
                        let arrival = Date(timeIntervalSince1970: entry.receivedAt.timeIntervalSince1970)
                        newest = max(newest ?? arrival, arrival)
                    }
                }
                let count = summaryState.withLock { $0.count } + added
                if count > maxReports + slack {
                    removed = try deleteOldest(count - maxReports, db)
                }
                removed += try shrinkToByteBound(count: count - removed, db)
                return .commit
            }
            summaryState.withLock { summary in
                summary.count += added - removed
                if let newest { summary.newestArrival = max(summary.newestArrival ?? newest, newest) }
            }
            for (entry, outcome) in zip(batch, outcomes) { entry.continuation.resume(returning: outcome) }
        } catch {
            for entry in batch { entry.continuation.resume(throwing: ReportStoreError("the report was not stored: \(Self.describe(error))")) }
        }
    }

    /// - Returns: whether the row is new.
    private static func insertRow(_ report: ReceivedReport, json: String, receivedAt: Date, _ db: Database) throws -> Bool {
        try db.execute(
            sql: """
                INSERT INTO report (id, finishedAt, receivedAt, host, key, outcome, servedBy, firstTier,
                                    durationSeconds, bytes, estimatedCostUSD, json)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (id) DO NOTHING
                """,
            arguments: [
                report.id, min(report.finishedAt, receivedAt).timeIntervalSince1970, receivedAt.timeIntervalSince1970,
                report.host, report.key.rawValue, report.outcome.rawValue, report.servedBy, report.firstTier,
                report.durationSeconds, report.bytesTransferred, report.estimatedCostUSD, json,
            ]
        )
        guard db.changesCount == 1 else { return false }
        let row = db.lastInsertedRowID
        for (position, attempt) in report.attempts.enumerated() {
            try db.execute(
                sql: """
                    INSERT INTO attempt (report, position, tier, attempt, outcome, durationSeconds, bytes)
                    VALUES (?, ?, ?, ?, ?, ?, ?)
                    """,
                arguments: [
                    row, position, attempt.tier, attempt.attempt, attempt.outcome.rawValue, attempt.durationSeconds,
                    attempt.bytes,
                ]
            )
        }
        return true
    }

    /// Deletes the reports the retention no longer allows and the oldest beyond the cap.
    /// - Returns: how many were deleted.
    @discardableResult
    func prune(now: Date) async throws -> Int {
        try await pool.writeWithoutTransaction { db in try self.prune(now: now, db) }
    }

    private func pruneNow(_ now: Date) throws -> Int {
        try pool.writeWithoutTransaction { db in try prune(now: now, db) }
    }

    private func prune(now: Date, _ db: Database) throws -> Int {
        var removed = 0
        try db.inTransaction {
            let cutoff = now.timeIntervalSince1970 - Double(retention.components.seconds)
            try db.execute(sql: "DELETE FROM report WHERE finishedAt < ?", arguments: [cutoff])
            removed = db.changesCount
            let count = summaryState.withLock { $0.count } - removed
            if count > maxReports { removed += try deleteOldest(count - maxReports, db) }
            removed += try shrinkToByteBound(count: count - removed, db)
            return .commit
        }
        let newest = try Double.fetchOne(db, sql: "SELECT max(receivedAt) FROM report").map(Date.init(timeIntervalSince1970:))
        summaryState.withLock { summary in
            summary.count -= removed
            summary.newestArrival = newest
        }
        return removed
    }

    /// The bytes of database pages holding data (free pages, which SQLite reuses before
    /// it grows the file, do not count).
    private static func bytesInUse(_ db: Database) throws -> Int64 {
        let pages = try Int64.fetchOne(db, sql: "PRAGMA page_count") ?? 0
        let free = try Int64.fetchOne(db, sql: "PRAGMA freelist_count") ?? 0
        let size = try Int64.fetchOne(db, sql: "PRAGMA page_size") ?? 4096
        return (pages - free) * size
    }

    /// While the pages in use exceed ``maxBytes``, deletes the oldest hundredth of the
    /// reports (their pages become free and are reused), a bounded number of rounds.
    /// - Returns: how many were deleted.
    private func shrinkToByteBound(count: Int, _ db: Database) throws -> Int {
        var removed = 0
        var remaining = count
        for _ in 0..<16 where remaining > 0 {
            guard try Self.bytesInUse(db) > maxBytes else { break }
            let batch = try deleteOldest(max(1, remaining / 100), db)
            guard batch > 0 else { break }
            removed += batch
            remaining -= batch
        }
        return removed
    }

    /// The names of the tiers that served the most stored reports, most first: by
    /// volume, so a burst of reports naming new tiers cannot push the fleet's real ones
    /// out of the label slots a restart pre-creates.
    func servingTiers(limit: Int) throws -> [String] {
        try pool.read { db in
            try String.fetchAll(
                db,
                sql: """
                    SELECT servedBy FROM report WHERE servedBy IS NOT NULL
                    GROUP BY servedBy ORDER BY count(*) DESC, servedBy LIMIT ?
                    """,
                arguments: [limit]
            )
        }
    }

    /// Deletes the `count` reports that finished first (their attempts go with them).
    private func deleteOldest(_ count: Int, _ db: Database) throws -> Int {
        try db.execute(
            sql: "DELETE FROM report WHERE seq IN (SELECT seq FROM report ORDER BY finishedAt, seq LIMIT ?)",
            arguments: [count]
        )
        return db.changesCount
    }

    /// Prunes every `interval` until the task is cancelled.
    func pruneEvery(_ interval: Duration, logger: Logger) async {
        while (try? await Task.sleep(for: interval)) != nil {
            do {
                let removed = try await prune(now: Date())
                if removed > 0 { logger.info("pruned old reports", metadata: ["removed": "\(removed)"]) }
            } catch {
                logger.error("cannot prune the report database", metadata: ["error": "\(Self.describe(error))"])
            }
        }
    }

    /// Runs a read in a snapshot of the database (readers never wait for the writer).
    func read<T: Sendable>(_ body: @escaping @Sendable (Database) throws -> T) async throws -> T {
        try await pool.read(body)
    }

    /// Closes the database: in-flight writes finish, the WAL is checkpointed.
    func close() {
        try? pool.close()
    }

    static func describe(_ error: any Error) -> String {
        ArchiveIndex.describe(error)  // MARK: Retention: the one SQLite error line
    }

    private static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1: reports and their attempts") { db in
            try db.execute(
                sql: """
                    CREATE TABLE report (
                        seq INTEGER PRIMARY KEY,
                        id TEXT NOT NULL UNIQUE,
                        finishedAt REAL NOT NULL,
                        receivedAt REAL NOT NULL,
                        host TEXT,
                        key TEXT NOT NULL,
                        outcome TEXT NOT NULL CHECK (outcome IN ('restored', 'failed')),
                        servedBy TEXT,
                        firstTier TEXT,
                        durationSeconds REAL NOT NULL,
                        bytes INTEGER NOT NULL,
                        estimatedCostUSD REAL,
                        json TEXT NOT NULL
                    );
                    -- Every column the statistics read, so each of their queries is one range scan
                    -- of this index over the window and never visits the rows.
                    CREATE INDEX report_window ON report (
                        finishedAt, outcome, servedBy, durationSeconds, firstTier, bytes, estimatedCostUSD, key
                    );
                    CREATE INDEX report_by_arrival ON report (receivedAt);
                    CREATE TABLE attempt (
                        report INTEGER NOT NULL REFERENCES report (seq) ON DELETE CASCADE,
                        position INTEGER NOT NULL,
                        tier TEXT NOT NULL,
                        attempt INTEGER NOT NULL,
                        outcome TEXT NOT NULL,
                        durationSeconds REAL NOT NULL,
                        bytes INTEGER NOT NULL,
                        PRIMARY KEY (report, position)
                    ) WITHOUT ROWID;
                    """
            )
        }
        migrator.registerMigration("v2: the dashboard's rollup of reports", migrate: { db in try createRollup(db) })
        return migrator
    }
}

/// The report database cannot be opened or written: one line saying what to do.
struct ReportStoreError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
