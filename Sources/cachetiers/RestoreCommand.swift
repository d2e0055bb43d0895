import ArgumentParser
import CacheTiers
import Foundation
import Logging
import Synchronization
import SystemPackage

struct RestoreCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "restore",
        abstract: "Restore the destination through the config's tiers, in order.",
        discussion: """
            Exit 0 when some tier restored, 1 when every tier failed (the destination is \
            untouched), 2 on usage or config errors. Progress goes to stderr: a live line on a \
            terminal, plain lines on a pipe, nothing with --quiet.
            """
    )

    @Option(name: .long, help: "The JSON config file.")
    var config: String

    @Option(name: .long, help: "The cache key (default: computed from the config's key inputs).")
    var key: String?

    @Option(name: .long, help: "The directory to restore (default: the config's destination).")
    var into: String?

    @Option(name: .long, help: "Write the JSON report to FILE, or - for stdout.")
    var report: String?

    @Option(
        name: .long,
        help: "Write the restore's gauges to FILE for node_exporter's textfile collector (default: the config's monitoring.metricsFile)."
    )
    var metricsFile: String?

    @Flag(name: .long, help: "Print nothing but errors.")
    var quiet = false

    @OptionGroup var logging: LoggingOptions

    func run() async throws {
        var settings = try CacheTiersConfig.load(from: FilePath(config))
        let cacheKey: CacheKey
        if let key {
            do { cacheKey = try CacheKey(key) } catch { throw UsageFailure("--key: \(error)") }
        } else {
            cacheKey = try settings.cacheKey()
        }
        guard let destination = into.map({ FilePath(FileManager.default.currentDirectoryPath).pushing(FilePath($0)) })
            ?? settings.destination
        else {
            // A restore load requires it; the guard is for the type.
            throw ConfigError(path: "destination", "required", file: settings.file?.string)
        }
        let reportFile = try report.map { try ReportFile(path: $0) }
        if let reportFile, reportFile.path != "-",
            ProtectedPath.isInside(FilePath(reportFile.path), destination)
                || ProtectedPath.isInside(FilePath(reportFile.target), destination)
        {
            // The report would be packed into the cache by write-back, and served to every VM.
            throw UsageFailure("--report \(reportFile.path) is inside the destination \(destination); write it elsewhere")
        }
        let textfile = try metricsTextfile(settings, destination: destination)
        if settings.chainConfiguration.writeBack.detach, let file = settings.file {
            let log = settings.chainConfiguration.writeBack.logFile ?? DetachedWriteBackLauncher.defaultLog()
            try DetachedWriteBackLauncher.checkLog(log, destination: destination)
            let launcher = DetachedWriteBackLauncher(config: file, log: log, verbose: logging.verbose)
            settings.chainConfiguration.writeBack.handOff = { try launcher.start($0) }
        }

        let console = ProgressConsole(mode: quiet ? .quiet : (isatty(STDERR_FILENO) == 1 ? .terminal : .lines))
        var logger = logging.makeLogger()
        // The console already says how every attempt ended; the log adds detail with --verbose.
        if !logging.verbose { logger.logLevel = quiet ? .critical : .error }
        let finished = AttemptCollector()
        let observer: @Sendable (RestoreEvent) -> Void = { event in
            console.handle(event)
            finished.record(event)
        }
        let (outcome, failure) = try await settings.withConfiguredChain(logger: logger, observer: observer) {
            chain, _ throws -> (RestoreReport, String?) in
            // Before any tier runs: a destination that would delete what the user needs.
            do throws(CacheTierError) {
                _ = try DestinationStaging(destination: destination, protecting: chain.protectedPaths)
            } catch {
                throw UsageFailure("restore: \(error.message)")
            }
            console.line("restoring \(cacheKey) into \(destination) (tiers: \(chain.tiers.map(\.name).joined(separator: ", ")))")

            let phase = Mutex(RestorePhase.restoring)
            let started = ContinuousClock.now
            // Signals are watched before the restore starts, so a SIGTERM at any moment
            // stops it the same way (never the default action, which would leave staging).
            let running = Mutex<Task<RestoreReport, any Error>?>(nil)
            let interrupts = Interrupts(describe: {
                switch phase.withLock({ $0 }) {
                case .restoring: "the destination is left as it was"
                case .restored(let tier): "\(destination) was restored from \(tier) and stays; the write-back to the tiers above is cut short"
                }
            }) { running.withLock { $0 }?.cancel() }
            let restore = Task {
                let report = try await chain.restore(cacheKey, into: destination)
                phase.withLock { $0 = .restored(tier: report.servedBy ?? "?") }
                // The tree is in place: the report file says so now, whatever the write-back
                // does (stdout, a stream, gets the final report only).
                if report.pendingWriteBack != nil, let reportFile, reportFile.path != "-" { try? reportFile.write(report) }
                return await report.completingWriteBack()
            }
            running.withLock { $0 = restore }
            if interrupts.interruptedBy != nil { restore.cancel() }
            let result = await restore.result
            interrupts.stop()
            console.finish()
            switch result {
            case .success(let report):
                return (report, nil)
            case .failure(let error as RestoreFailure):
                return (error.report, error.description)
            case .failure(let error):
                if let signal = interrupts.interruptedBy {
                    // The report, as on any failure: the attempts that ended before the signal.
                    let stopped = RestoreReport(
                        key: cacheKey, outcome: .failed, servedBy: nil, destination: destination.string,
                        durationSeconds: (ContinuousClock.now - started).inSeconds, bytesTransferred: 0,
                        estimatedCostUSD: nil, attempts: finished.records, writeBack: []
                    )
                    try? reportFile?.write(stopped)
                    textfile?.write(stopped)
                    throw CommandFailure("restore of \(cacheKey) stopped by \(signal); \(destination) is as it was")
                }
                throw CommandFailure("restore: \(error)")
            }
        }

        if let reportFile {
            do {
                try reportFile.write(outcome)
            } catch {
                // The restore's outcome stands; the exit status says what happened to the destination.
                FileHandle.standardError.write(Data("cachetiers: \(error)\n".utf8))
            }
        }
        // The tree is in place (or the destination as it was) and the write-back done:
        // the result leaves the VM. Neither changes the exit status.
        textfile?.write(outcome)
        if let reporting = settings.monitoring.report {
            for warning in await FleetReporter(configuration: reporting).send(outcome).warnings {
                warn(warning)
            }
        }
        if let failure {
            throw CommandFailure(failure)
        }
        let bytes = outcome.bytesTransferred > 0 ? ", \(formatBytes(outcome.bytesTransferred))" : ""
        let cost = outcome.estimatedCostUSD.map { String(format: ", about %.4f USD", $0) } ?? ""
        console.line(
            "restored \(cacheKey) from \(outcome.servedBy ?? "?") in \(String(format: "%.2f", outcome.durationSeconds)) s\(bytes)\(cost)"
        )
    }
}

extension RestoreCommand {
    /// The metrics file of `--metrics-file` (relative to the current folder) or of the
    /// config's `monitoring.metricsFile`; never inside the destination, where write-back
    /// would pack it into the cache.
    func metricsTextfile(_ settings: CacheTiersConfig, destination: FilePath) throws -> MetricsTextfile? {
        let option = metricsFile.map { (FilePath(FileManager.default.currentDirectoryPath).pushing(FilePath($0)), "--metrics-file") }
        guard let chosen = option ?? settings.monitoring.metricsFile.map({ ($0, "monitoring.metricsFile") }) else { return nil }
        let (path, source) = chosen
        guard path.lastComponent != nil, metricsFile?.isEmpty != true else { throw UsageFailure("\(source) needs a file path") }
        if ProtectedPath.isInside(path, destination) {
            throw UsageFailure("\(source) \(path) is inside the destination \(destination); write it elsewhere")
        }
        return MetricsTextfile(file: RestoreTextfile(path: path, tiers: settings.tiers.map(\.name)), warn: warn)
    }

    /// One `cachetiers: warning:` line on stderr, unless --quiet (nothing but errors).
    var warn: @Sendable (String) -> Void {
        let quiet = quiet
        return { warning in
            guard !quiet else { return }
            FileHandle.standardError.write(Data("cachetiers: warning: \(warning)\n".utf8))
        }
    }
}

/// The metrics file of one restore: a failure to write it is one warning line, and the
/// restore's outcome stands.
struct MetricsTextfile: Sendable {
    let file: RestoreTextfile
    let warn: @Sendable (String) -> Void

    func write(_ report: RestoreReport) {
        do {
            try file.write(report)
        } catch {
            warn("metrics file not written: \(error)")
        }
    }
}

/// The attempts that have ended, for the report of a restore stopped by a signal.
final class AttemptCollector: Sendable {
    private let storage = Mutex<[AttemptRecord]>([])

    func record(_ event: RestoreEvent) {
        if case .attemptFinished(let record) = event { storage.withLock { $0.append(record) } }
    }

    var records: [AttemptRecord] { storage.withLock { $0 } }
}

/// Where a restore is, for what an interrupt can truthfully say.
enum RestorePhase: Sendable {
    case restoring
    case restored(tier: String)
}

/// The `--report` destination, checked before any tier runs so that a typo costs a
/// usage error, not a replaced destination with exit 1.
struct ReportFile: Sendable {
    /// The path as given, for messages and the destination check.
    let path: String
    /// Where the JSON goes: the file itself, a symbolic link's target.
    let target: String
    /// A device, FIFO or socket (`/dev/stdout`, `/dev/null`, a pipe) is written in place;
    /// a regular file is replaced atomically, so a reader never sees half a report.
    private let inPlace: Bool

    /// - Throws: ``UsageFailure`` naming the path when it cannot be written.
    init(path: String) throws {
        self.path = path
        guard path != "-" else {
            (target, inPlace) = (path, true)
            return
        }
        guard !path.isEmpty else { throw UsageFailure("--report needs a file path, or - for stdout") }
        // A link is followed: replacing it would leave its target stale, and replacing
        // `/dev/stdout` (a link to the process's descriptor) would break the caller's pipe.
        let resolved = (try? FileManager.default.destinationOfSymbolicLink(atPath: path)).map { link in
            URL(fileURLWithPath: link, relativeTo: URL(fileURLWithPath: path).deletingLastPathComponent()).resolvingSymlinksInPath().path
        } ?? path
        self.target = resolved
        var info = stat()
        if stat(resolved, &info) == 0 {
            switch info.st_mode & S_IFMT {
            case S_IFDIR:
                throw UsageFailure("--report \(path) is a directory; give a file path")
            case S_IFREG:
                inPlace = false
            default:
                // Never replaced by a file: as root, `--report /dev/null` would replace the system's.
                inPlace = true
            }
            guard access(resolved, W_OK) == 0 else { throw UsageFailure("--report \(path) is not writable") }
            if inPlace { return }
        } else {
            inPlace = false
        }
        let folder = URL(fileURLWithPath: resolved).deletingLastPathComponent().path
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: resolved) {
            // Checked above.
        } else if !FileManager.default.fileExists(atPath: folder, isDirectory: &isDirectory) || !isDirectory.boolValue {
            throw UsageFailure("--report \(path): the folder \(folder) does not exist; create it or choose another path")
        } else if access(folder, W_OK) != 0 {
            throw UsageFailure("--report \(path): the folder \(folder) is not writable")
        }
        // access() says yes to root everywhere, and /proc or a read-only mount still
        // refuse: create (and remove) a file beside it to be sure.
        let probe = folder + "/.cachetiers-report-check-\(getpid())"
        let descriptor = open(probe, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else {
            let code = errno
            throw UsageFailure("--report \(path): cannot create a file in \(folder): \(String(cString: strerror(code)))")
        }
        close(descriptor)
        unlink(probe)
    }

    /// Writes `report` as pretty JSON: to stdout for `-`, in place for a device or pipe,
    /// else to a temporary file renamed onto the path (a link's target).
    func write(_ report: RestoreReport) throws {
        let json = try report.prettyJSON()
        if path == "-" {
            print(json)
            return
        }
        let bytes = Data((json + "\n").utf8)
        do {
            if inPlace {
                // Non-blocking open: a FIFO nobody reads fails at once (ENXIO) instead of
                // holding the command after the tree is in place; then blocking writes.
                let descriptor = open(target, O_WRONLY | O_NONBLOCK | O_CLOEXEC)
                guard descriptor >= 0 else {
                    let code = errno
                    throw CommandFailure("cannot write the report to \(path): \(String(cString: strerror(code)))")
                }
                _ = fcntl(descriptor, F_SETFL, fcntl(descriptor, F_GETFL) & ~O_NONBLOCK)
                let handle = FileHandle(fileDescriptor: descriptor, closeOnDealloc: true)
                try handle.write(contentsOf: bytes)
            } else {
                try bytes.write(to: URL(fileURLWithPath: target), options: .atomic)
            }
        } catch let failure as CommandFailure {
            throw failure
        } catch {
            throw CommandFailure("cannot write the report to \(path): \((error as NSError).localizedDescription)")
        }
    }
}

/// Progress on stderr: a live line on a terminal, plain lines on a pipe, or nothing.
final class ProgressConsole: Sendable {
    enum Mode: Sendable { case quiet, lines, terminal }

    private struct Live {
        var tier = ""
        var attemptStart = ContinuousClock.now
        var lastDraw = ContinuousClock.now - .seconds(1)
        var drawn = false
    }

    let mode: Mode
    private let live = Mutex(Live())

    init(mode: Mode) {
        self.mode = mode
    }

    /// A line for the log (never for --quiet).
    func line(_ text: String) {
        guard mode != .quiet else { return }
        live.withLock { state in
            clear(&state)
            write("\(text)\n")
        }
    }

    func handle(_ event: RestoreEvent) {
        guard mode != .quiet else { return }
        switch event {
        case .attemptStarted(let tier, let attempt):
            live.withLock { state in
                state.tier = tier
                state.attemptStart = .now
            }
            if mode == .lines { line("\(tier): attempt \(attempt) started") }
        case .progress(let tier, _, let completed, let total):
            guard mode == .terminal else { return }
            live.withLock { state in
                let now = ContinuousClock.now
                guard now - state.lastDraw >= .milliseconds(100) else { return }
                state.lastDraw = now
                state.drawn = true
                write("\r\u{1B}[K" + Self.progressText(tier: tier, completed: completed, total: total, since: state.attemptStart))
            }
        case .attemptFinished(let record):
            let error = record.error.map { ": \($0.split(separator: "\n").first ?? "")" } ?? ""
            line(
                "\(record.tier): attempt \(record.attempt) \(record.outcome.rawValue) after \(String(format: "%.2f", record.durationSeconds)) s"
                    + (record.bytes > 0 ? " (\(formatBytes(record.bytes)))" : "") + error
            )
        case .hedgeStarted(let tier, let after):
            line("\(tier): started as a hedge, \(after) is slow")
        case .restored:
            break
        case .writeBackFinished(let record):
            line("write-back to \(record.tier): \(record.outcome.rawValue)" + (record.error.map { ": \($0)" } ?? ""))
        @unknown default:
            break
        }
    }

    /// Clears a live line before the process exits.
    func finish() {
        live.withLock { clear(&$0) }
    }

    private func clear(_ state: inout Live) {
        if state.drawn {
            write("\r\u{1B}[K")
            state.drawn = false
        }
    }

    private func write(_ text: String) {
        FileHandle.standardError.write(Data(text.utf8))
    }

    static func progressText(tier: String, completed: Int64, total: Int64?, since start: ContinuousClock.Instant) -> String {
        let seconds = max(0.001, (ContinuousClock.now - start).inSeconds)
        let rate = Double(completed) / seconds
        var text = "\(tier): \(formatBytes(completed))"
        if let total, total > 0 {
            text += " of \(formatBytes(total)) (\(Int(Double(completed) / Double(total) * 100))%)"
        }
        text += ", \(formatBytes(Int64(rate)))/s"
        if let total, rate > 0, total > completed {
            text += ", ETA \(Int((Double(total - completed) / rate).rounded(.up))) s"
        }
        return text
    }
}
