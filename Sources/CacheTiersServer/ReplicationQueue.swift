import CacheTiers
import Foundation
import GRDB
import SystemPackage

/// The cache master's replication queue: one row per (key, target) copy still to make,
/// in `ROOT/.cachetiers/replication.sqlite` (GRDB, WAL, `synchronous = FULL`), so a copy
/// queued before a crash or a SIGKILL is made after the restart.
///
/// A row stays until its copy succeeds (or the target already had the key), the key is
/// gone from the folder, or it has failed for ``Replicator/giveUpAfter``.
final class ReplicationQueue: Sendable {
    struct Row: Sendable, Hashable {
        var key: CacheKey
        var target: String
        var enqueuedAt: Date
        var attempts: Int
    }

    /// Per target: copies queued and when the oldest was queued.
    struct Backlog: Sendable, Equatable {
        var count: Int
        var oldest: Date?
    }

    let path: FilePath
    private let pool: DatabasePool

    private init(path: FilePath, pool: DatabasePool) {
        self.path = path
        self.pool = pool
    }

    static func open(at path: FilePath) throws(CacheMasterError) -> ReplicationQueue {
        let folder = path.removingLastComponent()
        do {
            try FileManager.default.createDirectory(atPath: folder.string, withIntermediateDirectories: true)
            var configuration = Configuration()
            configuration.label = "cachetiers.replication"
            configuration.busyMode = .timeout(5)
            configuration.prepareDatabase { db in try db.execute(sql: "PRAGMA synchronous = FULL") }
            let pool = try DatabasePool(path: path.string, configuration: configuration)
            var migrator = DatabaseMigrator()
            migrator.registerMigration("v1: pending copies") { db in
                try db.execute(
                    sql: """
                        CREATE TABLE pending (
                            key TEXT NOT NULL,
                            target TEXT NOT NULL,
                            enqueuedAt REAL NOT NULL,
                            attempts INTEGER NOT NULL DEFAULT 0,
                            nextAttemptAt REAL NOT NULL,
                            lastError TEXT,
                            PRIMARY KEY (key, target)
                        );
                        CREATE INDEX pending_due ON pending (nextAttemptAt);
                        """
                )
            }
            try migrator.migrate(pool)
            return ReplicationQueue(path: path, pool: pool)
        } catch {
            throw CacheMasterError(
                "the replication queue \(path) cannot be opened: \(error); make its folder writable, or move it aside to start an empty queue"
            )
        }
    }

    /// Queues a copy of `key` to each target (a copy already queued keeps its place and
    /// its backoff); returns once committed to disk, off the caller's thread.
    func enqueue(_ key: CacheKey, to targets: [String], at now: Date) async throws {
        try await pool.write { db in
            for target in targets {
                try db.execute(
                    sql: "INSERT OR IGNORE INTO pending (key, target, enqueuedAt, nextAttemptAt) VALUES (?, ?, ?, ?)",
                    arguments: [key.rawValue, target, now.timeIntervalSince1970, now.timeIntervalSince1970]
                )
            }
        }
    }

    /// Up to `limit` copies due by `now`, oldest due first, leaving out `busy` ones and
    /// rows of targets that are not `targets` (a target removed from the config).
    func due(at now: Date, limit: Int, excluding busy: Set<Row.ID>) throws -> [Row] {
        try pool.read { db in
            let rows = try GRDB.Row.fetchAll(
                db, sql: "SELECT key, target, enqueuedAt, attempts FROM pending WHERE nextAttemptAt <= ? ORDER BY nextAttemptAt LIMIT ?",
                arguments: [now.timeIntervalSince1970, limit + busy.count]
            )
            return rows.compactMap { row -> Row? in
                guard let key = try? CacheKey(row["key"] as String) else { return nil }
                let entry = Row(
                    key: key, target: row["target"], enqueuedAt: Date(timeIntervalSince1970: row["enqueuedAt"]), attempts: row["attempts"]
                )
                return busy.contains(entry.id) ? nil : entry
            }.prefix(limit).map { $0 }
        }
    }

    func remove(_ row: Row) async throws {
        try await pool.write { db in
            try db.execute(sql: "DELETE FROM pending WHERE key = ? AND target = ?", arguments: [row.key.rawValue, row.target])
        }
    }

    func reschedule(_ row: Row, at next: Date, error: String) async throws {
        try await pool.write { db in
            try db.execute(
                sql: "UPDATE pending SET attempts = attempts + 1, nextAttemptAt = ?, lastError = ? WHERE key = ? AND target = ?",
                arguments: [next.timeIntervalSince1970, error, row.key.rawValue, row.target]
            )
        }
    }

    /// Removes the rows of targets not in `targets` (dropped from the config): nothing
    /// would ever copy them. Returns how many.
    func removeRows(notFor targets: [String]) throws -> Int {
        try pool.write { db in
            let placeholders = targets.map { _ in "?" }.joined(separator: ", ")
            try db.execute(sql: "DELETE FROM pending WHERE target NOT IN (\(placeholders))", arguments: StatementArguments(targets))
            return db.changesCount
        }
    }

    func backlog() throws -> [String: Backlog] {
        try pool.read { db in
            var backlog: [String: Backlog] = [:]
            for row in try GRDB.Row.fetchAll(db, sql: "SELECT target, count(*) AS n, min(enqueuedAt) AS oldest FROM pending GROUP BY target") {
                backlog[row["target"]] = Backlog(count: row["n"], oldest: (row["oldest"] as Double?).map(Date.init(timeIntervalSince1970:)))
            }
            return backlog
        }
    }

    func close() {
        try? pool.close()
    }
}

extension ReplicationQueue.Row: Identifiable {
    var id: String { "\(key.rawValue)\u{0}\(target)" }
}
