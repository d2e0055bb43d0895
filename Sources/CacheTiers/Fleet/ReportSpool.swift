import Foundation
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The reports this VM has not yet delivered to the fleet: one file per report, named
/// by its id (`<id>.json`), written atomically (``DurableFile``), at most
/// ``maxReports`` of them (the newest by when they were spooled), and none over
/// ``RestoreReport/maxWireBytes`` is ever read, so what a run reads is bounded in count
/// and bytes, whatever else lands in the folder.
///
/// Only files named like a report are ever touched: one that is not a valid report (cut
/// short, foreign, of another id) is removed when the spool is read, and a temporary file
/// of a process that no longer exists goes too. Anything else in the folder is left alone.
struct ReportSpool: Sendable {
    /// A spooled report and where it lies.
    struct Entry: Sendable {
        var report: RestoreReport
        /// The file's bytes, sent as they are.
        var json: [UInt8]
        var file: FilePath
    }

    let directory: FilePath
    let maxReports: Int

    /// The spool folder to use when the config names none: `/var/lib/cachetiers/report-spool`
    /// when this user can write there, else `$XDG_STATE_HOME/cachetiers/report-spool`, else
    /// `~/.local/state/cachetiers/report-spool`.
    static func defaultDirectory(environment: [String: String] = ProcessInfo.processInfo.environment) -> FilePath {
        StatePath.resolve(system: "/var/lib/cachetiers", name: "report-spool", environment: environment)
    }

    /// Creates the folder (and its parents) when missing.
    /// - Throws: one line saying why the folder cannot hold reports.
    func prepare() throws(DurableFile.Failure) {
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: directory.string, isDirectory: &isDirectory) {
            guard isDirectory.boolValue else { throw DurableFile.Failure(path: directory, reason: "it is not a folder") }
        } else {
            do {
                try FileManager.default.createDirectory(
                    atPath: directory.string, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700]
                )
            } catch {
                throw DurableFile.Failure(path: directory, reason: "cannot create the folder: \((error as NSError).localizedDescription)")
            }
        }
        guard access(directory.string, W_OK | X_OK) == 0 else {
            throw DurableFile.Failure(path: directory, reason: String(cString: strerror(errno)))
        }
    }

    func file(for id: UUID) -> FilePath {
        directory.appending("\(id.uuidString.lowercased()).json")
    }

    /// Writes `json` (the encoded `report`) as the report's file.
    func add(_ report: RestoreReport, json: [UInt8]) throws(DurableFile.Failure) {
        try DurableFile.replace(file(for: report.id), with: json, mode: 0o600)
    }

    func remove(_ id: UUID) {
        unlink(file(for: id).string)
    }

    /// The report files, newest first (by when they were spooled); temporary files of
    /// writers that no longer exist removed on the way. Only names and times are read.
    private func files() -> [(path: FilePath, spooled: Double)] {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: directory.string) else { return [] }
        var files: [(path: FilePath, spooled: Double)] = []
        for name in names {
            let path = directory.appending(name)
            if let stem = DurableFile.abandonedTemporary(name) {
                // A writer killed between open and rename (a live one is still writing).
                if Self.isReportName(stem) { unlink(path.string) }
                continue
            }
            var info = stat()
            // Only regular files: a link named like a report is never followed.
            guard Self.isReportName(name), lstat(path.string, &info) == 0, info.st_mode & S_IFMT == S_IFREG else { continue }
            files.append((path, Double(info.st_mtim.tv_sec) + Double(info.st_mtim.tv_nsec) / 1e9))
        }
        return files.sorted { $0.spooled > $1.spooled }
    }

    /// How many reports wait, by their names.
    var count: Int { files().count }

    /// The spooled reports, newest first, at most ``maxReports`` of them; a file that is
    /// not a valid report is removed.
    func entries() -> [Entry] {
        var entries: [Entry] = []
        for (path, _) in files().prefix(maxReports) {
            guard let data = try? SmallFile.contents(of: path, limit: RestoreReport.maxWireBytes),
                let report = try? JSONDecoder().decode(RestoreReport.self, from: data),
                file(for: report.id) == path
            else {
                unlink(path.string)
                continue
            }
            entries.append(Entry(report: report, json: Array(data), file: path))
        }
        return entries
    }

    /// Removes the oldest reports beyond ``maxReports`` (unread), once the newest files
    /// that are no report are gone (they do not count).
    /// - Returns: how many reports were removed.
    @discardableResult
    func trim() -> Int {
        _ = entries()
        let files = files()
        guard files.count > maxReports else { return 0 }
        for (path, _) in files[maxReports...] { unlink(path.string) }
        return files.count - maxReports
    }

    /// `<lowercase uuid>.json`.
    static func isReportName(_ name: some StringProtocol) -> Bool {
        guard name.hasSuffix(".json") else { return false }
        let stem = name.dropLast(5)
        return stem.count == 36 && UUID(uuidString: String(stem)) != nil && stem == stem.lowercased()
    }
}

extension RestoreReport {
    /// The largest report the fleet accepts (256 KiB of JSON).
    static let maxWireBytes = 256 << 10

    /// The report as it goes on the wire: compact JSON, keys sorted.
    func wireJSON() throws -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return Array(try encoder.encode(self))
    }
}
