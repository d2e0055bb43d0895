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

    /// One timestamped line on stdout, which the launcher points at the log file.
    static func log(_ line: String) {
        let stamp = Date().formatted(.iso8601)
        FileHandle.standardOutput.write(Data("\(stamp) \(line)\n".utf8))
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
        try prepareLog()
        var arguments = [
            executable, "write-back", "--config", config.string, "--key", request.key.rawValue, "--tree", request.tree.string,
        ]
        for tier in request.tiers { arguments += ["--tier", tier] }
        if verbose { arguments.append("--verbose") }

        let argv = arguments.map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var processID: pid_t = 0
        let result = cachetiers_spawn_detached(&processID, executable, argv, environ, log.string)
        guard result == 0 else {
            throw CommandFailure("cannot start \(executable) write-back: \(String(cString: strerror(result)))")
        }
        return "pid \(processID), log \(log)"
    }

    /// Creates the log's folder, and moves a log past ``logRotationBytes`` to `LOG.1`.
    private func prepareLog() throws {
        let folder = log.removingLastComponent()
        do {
            try FileManager.default.createDirectory(atPath: folder.string, withIntermediateDirectories: true)
        } catch {
            throw CommandFailure("cannot create the write-back log's folder \(folder): \((error as NSError).localizedDescription)")
        }
        var info = stat()
        if stat(log.string, &info) == 0, Int64(info.st_size) > Self.logRotationBytes {
            rename(log.string, log.string + ".1")
        }
    }
}
