import ArgumentParser
import CCacheTiersShims
import CacheTiers
import Foundation
import Logging
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// `cachetiers write-back`: the detached half of a restore with `writeBack.detach`. The
/// restore starts it (``DetachedWriteBackLauncher``) and exits; it publishes the tree to
/// the tiers the restore names, logs to its log file, and ends within its bound.
struct WriteBackCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "write-back",
        abstract: "Publish a restored tree to the tiers above the one that served it (started by restore with writeBack.detach).",
        shouldDisplay: false
    )

    @Option(name: .long, help: "The config file the restore read.")
    var config: String

    @Option(name: .long, help: "The cache key the tree was restored as.")
    var key: String

    @Option(name: .long, help: "The restored tree.")
    var tree: String

    @Option(name: .long, help: "A tier to publish to (repeat for each).")
    var tier: [String] = []

    @OptionGroup var logging: LoggingOptions

    func run() async throws {
        let settings = try CacheTiersConfig.load(from: FilePath(config))
        let cacheKey: CacheKey
        do { cacheKey = try CacheKey(key) } catch { throw UsageFailure("--key: \(error)") }
        guard !tier.isEmpty else { throw UsageFailure("write-back needs at least one --tier") }
        let limits = settings.chainConfiguration.writeBack.limits
        // The publisher ends by its bound; the alarm ends the process even if something
        // below it does not (SIGALRM's default action), so no detached process outlives
        // its boot by more than the bound and a margin.
        alarm(UInt32(Self.hardBound(limits).components.seconds))
        var logger = logging.makeLogger(label: "cachetiers.write-back")
        logger.logLevel = logging.verbose ? .debug : .notice
        let request = DetachedWriteBack(key: cacheKey, tree: FilePath(tree), tiers: tier)
        Self.log("write-back of \(cacheKey) from \(tree) to \(tier.joined(separator: ", ")) started (pid \(getpid()))")
        let records = await settings.runDetachedWriteBack(request, logger: logger)
        for record in records {
            Self.log("write-back to \(record.tier): \(record.outcome.rawValue)" + (record.error.map { ": \($0)" } ?? ""))
        }
        let failed = records.filter { $0.outcome == .failed }.map(\.tier)
        Self.log("write-back of \(cacheKey) finished" + (failed.isEmpty ? "" : "; failed for \(failed.joined(separator: ", "))"))
        if !failed.isEmpty { throw ExitCode.failure }
    }

    /// The write-back's own bound (`writeBack.timeoutSeconds`) plus a minute, or an hour
    /// when the config sets none.
    static func hardBound(_ limits: CachePublisher.Limits) -> Duration {
        (limits.timeout ?? .seconds(3540)) + .seconds(60)
    }

    /// One timestamped line on stdout, which the launcher points at the log file; a log
    /// that takes no more writes (a full disk) loses the line, never the write-back.
    static func log(_ line: String) {
        let text = "\(timestamp()) \(line)\n"
        _ = text.utf8.withContiguousStorageIfAvailable { write(STDOUT_FILENO, $0.baseAddress, $0.count) }
    }

    static func timestamp() -> String {
        Date().formatted(.iso8601)
    }
}

/// Starts `cachetiers write-back` as a detached process: a session of its own (no
/// terminal, so a closing shell does not take it along), default signal actions (the
/// restore ignores SIGINT and SIGTERM while it watches them), stdin from /dev/null, and
/// stdout and stderr appended to the log file. The restore does not wait for it.
struct DetachedWriteBackLauncher: Sendable {
    /// The config file, absolute.
    let config: FilePath
    let log: FilePath
    let verbose: Bool

    /// Beyond this size the log is moved to `LOG.1` before a new write-back appends to it.
    static let logRotationBytes: Int64 = 1 << 20

    /// The log when the config names none: `/var/log/cachetiers/write-back.log` when this
    /// user can write there, else under `$XDG_STATE_HOME` or `~/.local/state`.
    static func defaultLog(environment: [String: String] = ProcessInfo.processInfo.environment) -> FilePath {
        StatePath.resolve(system: "/var/log/cachetiers", name: "write-back.log", environment: environment)
    }

    func start(_ request: DetachedWriteBack) throws -> String {
        let executable = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
        rotateLog()
        let descriptor = try Self.openLog(log)
        defer { close(descriptor) }
        // The first line is the parent's: a log that takes no write is said here, where the
        // report can record it, not lost in a child that cannot say anything.
        let line = "\(WriteBackCommand.timestamp()) restore \(getpid()) hands the write-back of \(request.key) to a detached process\n"
        guard line.utf8.withContiguousStorageIfAvailable({ write(descriptor, $0.baseAddress, $0.count) }) == line.utf8.count else {
            throw CommandFailure("writeBack.logFile \(log) takes no write: \(String(cString: strerror(errno)))")
        }
        var arguments = [
            executable, "write-back", "--config", config.string, "--key", request.key.rawValue, "--tree", request.tree.string,
        ]
        for tier in request.tiers { arguments += ["--tier", tier] }
        if verbose { arguments.append("--verbose") }
        let argv = arguments.map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var processID: pid_t = 0
        let result = cachetiers_spawn_detached(&processID, executable, argv, environ, descriptor)
        guard result == 0 else {
            throw CommandFailure("cannot start \(executable) write-back: \(String(cString: strerror(result)))")
        }
        return "pid \(processID), log \(log)"
    }

    /// Opens the log for appending, created 0640: never through a symbolic link, never
    /// blocking (a FIFO without a reader would hold the boot), and only a regular file.
    /// - Throws: one line naming `writeBack.logFile` and what is wrong with it.
    static func openLog(_ log: FilePath) throws -> Int32 {
        var existing = stat()
        if lstat(log.string, &existing) == 0 {
            switch existing.st_mode & S_IFMT {
            case S_IFREG: break
            case S_IFLNK: throw UsageFailure("writeBack.logFile \(log) cannot be opened for appending: it is a symbolic link; name the file itself")
            default: throw UsageFailure("writeBack.logFile \(log) is not a regular file (a FIFO, a device or a folder); name a file")
            }
        }
        // The same rules again as it opens, for what changed since the lstat.
        let descriptor = open(log.string, O_WRONLY | O_CREAT | O_APPEND | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC, 0o640)
        guard descriptor >= 0 else {
            let reason = errno == ELOOP ? "it is a symbolic link; name the file itself" : String(cString: strerror(errno))
            throw UsageFailure("writeBack.logFile \(log) cannot be opened for appending: \(reason)")
        }
        var info = stat()
        guard fstat(descriptor, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG else {
            close(descriptor)
            throw UsageFailure("writeBack.logFile \(log) is not a regular file (a FIFO, a device or a folder); name a file")
        }
        return descriptor
    }

    /// Checks the log before any tier runs: its folder can be made, it is not inside the
    /// destination (where write-back would pack it into the cache), and it opens as a
    /// regular file.
    static func checkLog(_ log: FilePath, destination: FilePath) throws {
        let folder = log.removingLastComponent()
        do {
            try FileManager.default.createDirectory(atPath: folder.string, withIntermediateDirectories: true)
        } catch {
            throw UsageFailure("writeBack.logFile \(log): cannot create its folder: \((error as NSError).localizedDescription)")
        }
        // Resolved through symbolic links in its folders; a link as the file itself is
        // refused by openLog.
        if ProtectedPath.isInside(log, destination) {
            throw UsageFailure("writeBack.logFile \(log) is inside the destination \(destination); write it elsewhere")
        }
        close(try openLog(log))
    }

    /// Moves a log past ``logRotationBytes`` to `LOG.1`.
    private func rotateLog() {
        var info = stat()
        if lstat(log.string, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG, Int64(info.st_size) > Self.logRotationBytes {
            rename(log.string, log.string + ".1")
        }
    }
}
