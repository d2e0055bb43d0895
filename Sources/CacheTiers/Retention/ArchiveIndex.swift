import Foundation
import GRDB
import Logging
import SystemPackage

/// What a folder of archives knows of each archive's use: when it was stored, when it
/// was last served and how often, in `ROOT/.cachetiers/archives.sqlite` (SQLite through
/// GRDB, WAL). The cache master and ``DirectorySource`` record here, and retention picks
/// its victims from it, because the filesystem's atime cannot be trusted (`noatime`
/// never updates it, `relatime` at most once a day).
///
/// The folder stays the truth of what is stored: ``reconcile(with:)`` gives an archive
/// copied in by hand (or stored before this index existed) a row with the manifest's
/// `createdAt` and no use, and drops the rows of archives gone from the folder.
///
/// Durability: `synchronous = NORMAL` in WAL mode, so a killed process loses nothing
/// committed and a power cut at most the last hits, which only makes an archive look a
/// little less recently used.
package final class ArchiveIndex: Sendable {
    /// One archive's row.
    package struct Entry: Sendable, Hashable {
        package var key: CacheKey
        package var size: Int64
        package var sha256: String?
        package var createdAt: Date
        package var lastServedAt: Date?
        package var hits: Int

        package init(key: CacheKey, size: Int64, sha256: String?, createdAt: Date, lastServedAt: Date? = nil, hits: Int) {
            self.key = key
            self.size = size
            self.sha256 = sha256
            self.createdAt = createdAt
            self.lastServedAt = lastServedAt
            self.hits = hits
        }

        /// When it was last of use: served, or else stored.
        package var lastUsed: Date { lastServedAt ?? createdAt }
    }

    /// The file of a folder's index.
    package static func path(in root: FilePath) -> FilePath {
        root.appending(stateFolderName).appending("archives.sqlite")
    }

    /// The folder's hidden state folder, which the folder's recovery leaves alone.
    package static let stateFolderName = ".cachetiers"

    package let path: FilePath
    private let pool: DatabasePool

    private init(path: FilePath, pool: DatabasePool) {
        self.path = path
        self.pool = pool
    }

    /// Opens (creating when missing) the index of the folder at `root`.
    /// - Parameter busyTimeout: how long a write waits for another process's (a cache
    ///   master and a directory tier sharing the folder).
    package static func open(root: FilePath, busyTimeout: Duration = .seconds(5)) throws(ArchiveIndexError) -> ArchiveIndex {
        let path = path(in: root)
        let folder = path.removingLastComponent()
        do {
            try FileManager.default.createDirectory(atPath: folder.string, withIntermediateDirectories: true)
        } catch {
            throw ArchiveIndexError("cannot create \(folder) for the archive index: \(error.localizedDescription)")
        }
        var configuration = Configuration()
        configuration.label = "cachetiers.archives"
        let timeout = busyTimeout.components
        configuration.busyMode = .timeout(TimeInterval(timeout.seconds) + TimeInterval(timeout.attoseconds) / 1e18)
        configuration.prepareDatabase { db in try db.execute(sql: "PRAGMA synchronous = NORMAL") }
        do {
            let pool = try DatabasePool(path: path.string, configuration: configuration)
            try migrator.migrate(pool)
            return ArchiveIndex(path: path, pool: pool)
        } catch {
            throw ArchiveIndexError(
                "the archive index \(path) cannot be used: \(describe(error)); make the folder writable, or move the file aside to rebuild it"
            )
        }
    }

    /// Adds a row for every archive of `folder` the index lacks (created = the manifest's
    /// `createdAt`, never served) and removes the rows of archives the folder no longer has.
    @discardableResult
    package func reconcile(with folder: ArchiveFolder) throws(ArchiveIndexError) -> (added: Int, removed: Int) {
        let keys = folder.keys()
        let stored = Set(keys.map(\.rawValue))
        let known = try read { db in Set(try String.fetchAll(db, sql: "SELECT key FROM archive")) }
        var rows: [Entry] = []
        for key in keys where !known.contains(key.rawValue) {
            // A manifest that cannot be read is not served either; recovery moves it aside.
            guard let manifest = try? folder.manifest(for: key) else { continue }
            rows.append(Entry(key: key, size: manifest.archiveSize, sha256: manifest.archiveSHA256, createdAt: manifest.createdAt, hits: 0))
        }
        let gone = known.subtracting(stored)
        guard !rows.isEmpty || !gone.isEmpty else { return (0, 0) }
        try run { db in
            for row in rows {
                try db.execute(
                    sql: "INSERT OR IGNORE INTO archive (key, size, sha256, createdAt, lastServedAt, hits) VALUES (?, ?, ?, ?, NULL, 0)",
                    arguments: [row.key.rawValue, row.size, row.sha256, row.createdAt.timeIntervalSince1970]
                )
            }
            for key in gone { try db.execute(sql: "DELETE FROM archive WHERE key = ?", arguments: [key]) }
        }
        return (rows.count, gone.count)
    }

    /// A publish stored `manifest`'s archive now: created now, its use so far kept (a
    /// replaced key is as much in use as before).
    package func recordPublished(_ manifest: CacheManifest, at now: Date) throws(ArchiveIndexError) {
        try run { db in
            try db.execute(
                sql: """
                    INSERT INTO archive (key, size, sha256, createdAt, lastServedAt, hits) VALUES (?, ?, ?, ?, NULL, 0)
                    ON CONFLICT (key) DO UPDATE SET size = excluded.size, sha256 = excluded.sha256, createdAt = excluded.createdAt
                    """,
                arguments: [manifest.key.rawValue, manifest.archiveSize, manifest.archiveSHA256, now.timeIntervalSince1970]
            )
        }
    }

    /// The archive of `manifest` was served from its first byte: one more hit, last served now.
    package func recordHit(_ manifest: CacheManifest, at now: Date) throws(ArchiveIndexError) {
        try run { db in try Self.hit(manifest, at: now, db) }
    }

    /// ``recordHit(_:at:)`` without blocking the caller's thread.
    package func recordHitAsync(_ manifest: CacheManifest, at now: Date) async throws {
        try await pool.write { db in try Self.hit(manifest, at: now, db) }
    }

    private static func hit(_ manifest: CacheManifest, at now: Date, _ db: Database) throws {
        try db.execute(
            sql: """
                INSERT INTO archive (key, size, sha256, createdAt, lastServedAt, hits) VALUES (?, ?, ?, ?, ?, 1)
                ON CONFLICT (key) DO UPDATE SET lastServedAt = excluded.lastServedAt, hits = hits + 1
                """,
            arguments: [
                manifest.key.rawValue, manifest.archiveSize, manifest.archiveSHA256, manifest.createdAt.timeIntervalSince1970,
                now.timeIntervalSince1970,
            ]
        )
    }

    package func remove(_ key: CacheKey) throws(ArchiveIndexError) {
        try run { db in try db.execute(sql: "DELETE FROM archive WHERE key = ?", arguments: [key.rawValue]) }
    }

    /// Every row.
    package func entries() throws(ArchiveIndexError) -> [Entry] {
        try read { db in try Self.entries(db, sql: "SELECT * FROM archive", arguments: []) }
    }

    /// The rows of `keys` (a listing's page), by key.
    package func entries(for keys: [CacheKey]) throws(ArchiveIndexError) -> [CacheKey: Entry] {
        guard !keys.isEmpty else { return [:] }
        let marks = Array(repeating: "?", count: keys.count).joined(separator: ",")
        let rows = try read { db in
            try Self.entries(db, sql: "SELECT * FROM archive WHERE key IN (\(marks))", arguments: StatementArguments(keys.map(\.rawValue)))
        }
        return Dictionary(rows.map { ($0.key, $0) }, uniquingKeysWith: { first, _ in first })
    }

    /// How many archives the index holds and their bytes.
    package func totals() throws(ArchiveIndexError) -> (archives: Int, bytes: Int64) {
        try read { db in
            let row = try Row.fetchOne(db, sql: "SELECT count(*) AS archives, coalesce(sum(size), 0) AS bytes FROM archive")
            return (row?["archives"] ?? 0, row?["bytes"] ?? 0)
        }
    }

    /// Closes the database; in-flight writes finish.
    package func close() {
        try? pool.close()
    }

    private static func entries(_ db: Database, sql: String, arguments: StatementArguments) throws -> [Entry] {
        try Row.fetchAll(db, sql: sql, arguments: arguments).compactMap { row -> Entry? in
            // A row whose key is no longer valid (edited by hand) is not an archive this code can name.
            guard let key = try? CacheKey(row["key"] as String) else { return nil }
            let served: Double? = row["lastServedAt"]
            return Entry(
                key: key, size: row["size"], sha256: row["sha256"], createdAt: Date(timeIntervalSince1970: row["createdAt"]),
                lastServedAt: served.map(Date.init(timeIntervalSince1970:)), hits: row["hits"]
            )
        }
    }

    private func run<T>(_ body: (Database) throws -> T) throws(ArchiveIndexError) -> T {
        do {
            return try pool.write(body)
        } catch {
            throw ArchiveIndexError("cannot write the archive index \(path): \(Self.describe(error))")
        }
    }

    private func read<T>(_ body: (Database) throws -> T) throws(ArchiveIndexError) -> T {
        do {
            return try pool.read(body)
        } catch {
            throw ArchiveIndexError("cannot read the archive index \(path): \(Self.describe(error))")
        }
    }

    /// A database error as one line: SQLite's message, else the error.
    package static func describe(_ error: any Error) -> String {
        if let error = error as? DatabaseError { return error.message ?? "SQLite error \(error.resultCode.rawValue)" }
        return "\(error)"
    }

    private static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1: archives and their use") { db in
            try db.execute(
                sql: """
                    CREATE TABLE archive (
                        key TEXT PRIMARY KEY NOT NULL,
                        size INTEGER NOT NULL,
                        sha256 TEXT,
                        createdAt REAL NOT NULL,
                        lastServedAt REAL,
                        hits INTEGER NOT NULL DEFAULT 0
                    ) WITHOUT ROWID
                    """
            )
        }
        return migrator
    }
}

/// The archive index cannot be opened, read or written: one line saying what to do.
package struct ArchiveIndexError: Error, CustomStringConvertible {
    package var description: String
    init(_ description: String) { self.description = description }
}
