import ArgumentParser
import CacheTiers
import CacheTiersServer
import Foundation
import Logging
import Synchronization
import SystemPackage

struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "A zero-setup tour: peer hit, then the fallbacks when the cache master goes away.",
        discussion: """
            Builds a small node_modules-like workspace in a temporary folder, starts a cache \
            master in-process on loopback, publishes the tree, and restores it three times \
            through the same config a VM would use: from the cache master; with the cache \
            master stopped, by a fresh install (written back to the local directory tier); \
            again, now from the directory tier; and, with the cache master back, from it, \
            which also delivers the reports the VM spooled while it was away. Prints who \
            served and how long each attempt took, and where the cache master's dashboard \
            is (--keep leaves it running until Ctrl-C). Exit 0 when every step did what it \
            should, 1 otherwise.
            """
    )

    @Option(name: .long, help: "Packages in the generated workspace.")
    var packages = 60

    @Flag(name: .long, help: "Keep the temporary folder, and the cache master and its dashboard running until Ctrl-C.")
    var keep = false

    @OptionGroup var logging: LoggingOptions

    /// SIGINT and SIGTERM cancel the tour, from its first step: the restore in progress
    /// stops its install (and the install's process group), the master stops, and the
    /// folder is removed (kept with --keep). During --keep's wait, they end it.
    func run() async throws {
        let scratch = FilePath(NSTemporaryDirectory()).appending("cachetiers-demo-\(UUID().uuidString.prefix(8))")
        let tour = Task { try await self.tour(in: scratch) }
        let keep = keep
        let interrupts = Interrupts(describe: {
            keep ? "the demo stops; its folder \(scratch) is kept" : "the demo stops and removes its folder \(scratch)"
        }) { tour.cancel() }
        defer { interrupts.stop() }
        do {
            try await tour.value
        } catch {
            if let signal = interrupts.interruptedBy { throw CommandFailure("demo stopped by \(signal)") }
            throw error
        }
    }

    private func tour(in scratch: FilePath) async throws {
        let logger = logging.makeLogger()
        defer {
            if keep { print("\nkept \(scratch)") } else { try? FileManager.default.removeItem(atPath: scratch.string) }
        }
        let workspace = scratch.appending("workspace")
        try DemoWorkspace.write(to: workspace, packages: packages)
        // The fresh install is real npm ci (offline, on tarballs of the workspace's
        // packages) where npm is on PATH, a copy of vendor/ where it is not.
        let installer = try await DemoWorkspace.prepareInstall(in: workspace, packages: packages)

        var serverLogger = logger
        serverLogger.logLevel = .error
        let root = scratch.appending("cache-master")
        var server = CacheMasterServer(configuration: .init(root: root, port: 0), logger: serverLogger)
        let peerURL = try await server.start()
        var running = true
        do {
            let configFile = workspace.appending("cachetiers.json")
            try DemoWorkspace.writeConfig(
                to: configFile, peer: peerURL, install: installer.command, spool: scratch.appending("report-spool")
            )
            let settings = try CacheTiersConfig.load(from: configFile)
            let key = try settings.cacheKey()
            print("CacheTiers demo: workspace \(workspace)")
            print("  cache master listening on \(peerURL); key \(key)")
            print("  fresh install: \(installer.description)\n")

            // The tree a fresh install produces, published the way a finished VM would.
            let archive = scratch.appending("published.tar.zst")
            let manifest = try await settings.packer.pack(workspace.appending("vendor"), key: key, to: archive, logger: logger)
            let publisher = VMPeerSource(configuration: .init(peers: [peerURL]))
            let published = try await publisher.publish(PackedArchive(file: archive, manifest: manifest), logger: logger)
            try await publisher.shutdown()
            print("published \(formatBytes(manifest.archiveSize)) (\(manifest.entryCount) entries) to the cache master: \(published.rawValue)\n")

            var table = DemoTable(installNote: installer.name == "npm" ? "npm ci --offline" : "a copy of vendor/ (npm not on PATH)")
            var reported = 0
            let first = try await restore(settings, key: key, reported: &reported, logger: logger)
            table.add(step: "1 peer up", first)
            await server.stop()
            running = false
            let second = try await restore(settings, key: key, reported: &reported, logger: logger)
            table.add(step: "2 peer down", second)
            let third = try await restore(settings, key: key, reported: &reported, logger: logger)
            table.add(step: "3 peer down", third)
            // The same master, on the same port and root, as after a reboot.
            server = CacheMasterServer(configuration: .init(root: root, port: Self.port(of: peerURL)), logger: serverLogger)
            _ = try await server.start()
            running = true
            let fourth = try await restore(settings, key: key, reported: &reported, logger: logger)
            table.add(step: "4 peer back", fourth)
            print(table.render())

            let expected = ["cache-master", "fresh-install", "local", "cache-master"]
            let served = [first, second, third, fourth].map { $0.servedBy ?? "nobody" }
            guard served == expected else {
                throw CommandFailure("demo: expected the restores to be served by \(expected.joined(separator: ", ")), got \(served.joined(separator: ", "))")
            }
            let tree = try DemoWorkspace.fileCount(workspace.appending("node_modules"))
            print("\nnode_modules holds \(tree) files; the peer served restore 1, the fresh install (\(installer.name)) restore 2")
            print("(and wrote it back to the local tier), the local tier restore 3, the peer again restore 4.")
            print("The cache master holds \(reported) of the 4 restores' reports (2 and 3 were spooled while it was down")
            print("and sent with restore 4's).\n")
            if keep {
                print("Dashboard: \(peerURL)/ (the cache master keeps running; Ctrl-C stops it)")
                // Seen now, even when stdout is a pipe or a file (block-buffered): fflush(NULL) flushes every stream.
                fflush(nil)
                // Until SIGINT or SIGTERM cancels the tour.
                while !Task.isCancelled { try? await Task.sleep(for: .seconds(3600)) }
            } else {
                print("Dashboard: \(peerURL)/ while the demo ran (run `cachetiers demo --keep` to leave it open)")
            }
            await server.stop()
        } catch {
            if running { await server.stop() }
            throw error
        }
    }

    private static func port(of url: String) -> Int {
        url.split(separator: ":").last.flatMap { Int($0) } ?? 0
    }

    /// Restores as `cachetiers restore` would, and sends the report (and the spooled ones)
    /// to the fleet, counting those the cache master acknowledged.
    private func restore(_ settings: CacheTiersConfig, key: CacheKey, reported: inout Int, logger: Logger) async throws -> RestoreReport {
        var quiet = logger
        quiet.logLevel = logging.verbose ? .debug : .critical
        guard let destination = settings.destination else {
            throw CommandFailure("demo: the generated config names no destination")
        }
        let report = try await settings.withConfiguredChain(logger: quiet) { chain, _ in
            do {
                return try await chain.restore(key, into: destination).completingWriteBack()
            } catch let failure as RestoreFailure {
                return failure.report
            }
        }
        // A restore cut by the signal is a failure like any other to the chain; the tour stops here.
        try Task.checkCancellation()
        if let reporting = settings.monitoring.report {
            reported += await FleetReporter(configuration: reporting).send(report).delivered.count
        }
        return report
    }
}

/// The table the demo prints: one row per attempt.
struct DemoTable {
    private var rows: [[String]] = [["restore", "tier", "outcome", "bytes", "seconds", "note"]]
    /// What the fresh install ran, for its row.
    let installNote: String

    init(installNote: String) {
        self.installNote = installNote
    }

    mutating func add(step: String, _ report: RestoreReport) {
        for (index, attempt) in report.attempts.enumerated() {
            // The first line of the error, without the tier name the row already shows.
            var note = attempt.error.map { String($0.split(separator: "\n").first ?? "") } ?? ""
            if note.hasPrefix("\(attempt.tier): ") { note.removeFirst(attempt.tier.count + 2) }
            if note.count > 72 { note = String(note.prefix(71)) + "…" }
            if attempt.tier == "fresh-install", note.isEmpty { note = installNote }
            rows.append([
                index == 0 ? step : "", attempt.tier, attempt.outcome.rawValue,
                attempt.bytes > 0 ? formatBytes(attempt.bytes) : "-", String(format: "%.2f", attempt.durationSeconds), note,
            ])
        }
        for record in report.writeBack {
            rows.append(["", "→ \(record.tier)", "write-back \(record.outcome.rawValue)", "", "", ""])
        }
    }

    func render() -> String {
        let widths = rows[0].indices.map { column in rows.map { $0[column].count }.max() ?? 0 }
        return rows.map { row in
            let line = zip(row, widths).map { $0.padding(toLength: $1, withPad: " ", startingAt: 0) }.joined(separator: "  ")
            return String(line.reversed().drop(while: { $0 == " " }).reversed())
        }.joined(separator: "\n")
    }
}

/// A small node_modules-like project for the demo.
enum DemoWorkspace {
    /// Writes package.json, package-lock.json and `vendor/`, the tree the demo's "package
    /// manager" (a copy) installs as node_modules.
    static func write(to workspace: FilePath, packages: Int) throws {
        let files = FileManager.default
        try files.createDirectory(atPath: workspace.string, withIntermediateDirectories: true)
        var dependencies: [String] = []
        for index in 0..<packages {
            let name = "demo-package-\(index)"
            let version = "1.\(index % 7).\(index % 3)"
            dependencies.append("\"\(name)\": \"\(version)\"")
            let root = workspace.appending("vendor/\(name)")
            try files.createDirectory(atPath: root.appending("lib").string, withIntermediateDirectories: true)
            try write(#"{ "name": "\#(name)", "version": "\#(version)", "main": "index.js" }"#, to: root.appending("package.json"))
            try write("module.exports = require('./lib/main');\n", to: root.appending("index.js"))
            try write("# \(name)\n\n" + String(repeating: "Documentation line for \(name).\n", count: 20), to: root.appending("README.md"))
            for part in 0..<4 {
                let body = (0..<(40 + index % 50)).map { "exports.f\(part)_\($0) = (x) => x * \($0 + part) + \(index);" }
                try write(body.joined(separator: "\n") + "\n", to: root.appending("lib/\(part == 0 ? "main" : "part\(part)").js"))
            }
        }
        try write("{\n  \"name\": \"demo-workspace\",\n  \"dependencies\": {\n    \(dependencies.joined(separator: ",\n    "))\n  }\n}\n", to: workspace.appending("package.json"))
        try write("{ \"lockfileVersion\": 3, \"packages\": { \(dependencies.joined(separator: ", ")) } }\n", to: workspace.appending("package-lock.json"))
    }

    /// How the demo's fresh install runs.
    struct Installer {
        /// `npm` or `copy`.
        var name: String
        var command: [String]
        var description: String
    }

    /// With npm on PATH: packs every package of `vendor/` into `tarballs/` (GNU tar,
    /// the layout `npm pack` makes, far faster than 60 runs of it), points package.json
    /// at them as `file:` dependencies, and has npm write the lockfile, so the fresh
    /// install is `npm ci --offline`. Without npm: a copy of vendor/, and the demo says so.
    static func prepareInstall(in workspace: FilePath, packages: Int) async throws -> Installer {
        let copy = Installer(
            name: "copy", command: ["/bin/sh", "-c", "mkdir -p node_modules && cp -R vendor/. node_modules/"],
            description: "a copy of vendor/ (npm is not on PATH; install it to see npm ci here)"
        )
        guard let npmVersion = try? await run(["npm", "--version"], in: workspace), npmVersion.status == 0 else { return copy }
        let tarballs = workspace.appending("tarballs")
        try FileManager.default.createDirectory(atPath: tarballs.string, withIntermediateDirectories: true)
        var dependencies: [String] = []
        for index in 0..<packages {
            let name = "demo-package-\(index)"
            let version = "1.\(index % 7).\(index % 3)"
            let tarball = "tarballs/\(name)-\(version).tgz"
            let packed = try await run(
                ["tar", "-czf", tarball, "-C", "vendor", "--transform", "s,^\(name),package,", name], in: workspace
            )
            guard packed.status == 0 else { throw CommandFailure("demo: cannot pack \(name) for npm: \(packed.output)") }
            dependencies.append("\"\(name)\": \"file:\(tarball)\"")
        }
        try write(
            "{\n  \"name\": \"demo-workspace\",\n  \"version\": \"1.0.0\",\n  \"private\": true,\n  \"dependencies\": {\n    \(dependencies.joined(separator: ",\n    "))\n  }\n}\n",
            to: workspace.appending("package.json")
        )
        try? FileManager.default.removeItem(atPath: workspace.appending("package-lock.json").string)
        let locked = try await run(
            ["npm", "install", "--package-lock-only", "--offline", "--no-audit", "--no-fund", "--loglevel=error"], in: workspace
        )
        guard locked.status == 0 else { throw CommandFailure("demo: npm could not write the lockfile: \(locked.output)") }
        let version = npmVersion.output.trimmingCharacters(in: .whitespacesAndNewlines)
        return Installer(
            name: "npm", command: ["npm", "ci", "--offline", "--no-audit", "--no-fund", "--loglevel=error"],
            description: "npm ci --offline (npm \(version), on tarballs of the workspace's \(packages) packages)"
        )
    }

    /// Runs a program to completion off the cooperative pool; its stdout and stderr together.
    /// Runs a preparation step (tar, npm). Foundation starts it in a process group of its
    /// own, which a terminal's Ctrl-C does not reach: cancelling the task (the demo's
    /// signal handling does) ends the whole group.
    private static func run(_ arguments: [String], in directory: FilePath) async throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = arguments
        process.currentDirectoryURL = URL(fileURLWithPath: directory.string)
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        process.standardInput = FileHandle.nullDevice
        let box = ProcessBox(process)
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                Thread {
                    do {
                        try box.start()
                        let output = pipe.fileHandleForReading.readDataToEndOfFile()
                        box.process.waitUntilExit()
                        continuation.resume(returning: (box.process.terminationStatus, String(decoding: output, as: UTF8.self)))
                    } catch {
                        continuation.resume(throwing: error)
                    }
                }.start()
            }
        } onCancel: {
            box.terminateGroup()
        }
    }

    /// A process shared with the cancellation handler: a cancellation before the start
    /// is remembered, one after it signals the group.
    private final class ProcessBox: @unchecked Sendable {
        let process: Process
        private let lock = NSLock()
        private var started = false
        private var cancelled = false

        init(_ process: Process) { self.process = process }

        func start() throws {
            try lock.withLock {
                guard !cancelled else { throw CancellationError() }
                try process.run()
                started = true
            }
        }

        /// SIGTERM to the process's group (it leads one of its own).
        func terminateGroup() {
            lock.withLock {
                cancelled = true
                if started, process.isRunning, process.processIdentifier > 0 { kill(-process.processIdentifier, SIGTERM) }
            }
        }
    }

    /// The config a VM of this workspace would use: the cache master, a local directory
    /// tier, and the fresh install.
    static func writeConfig(to file: FilePath, peer: String, install: [String], spool: FilePath) throws {
        let command = "[" + install.map { "\"\($0.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\""))\"" }
            .joined(separator: ", ") + "]"
        let config = """
            {
              "key": { "prefix": "demo-node-modules", "files": ["package-lock.json"], "platform": true },
              "destination": "node_modules",
              "deadlineSeconds": 120,
              "tiers": [
                { "kind": "peer", "name": "cache-master", "urls": ["\(peer)"],
                  "connectTimeoutSeconds": 1, "timeoutSeconds": 30, "maxAttempts": 1 },
                { "kind": "directory", "name": "local", "path": "../local-cache" },
                { "kind": "install", "name": "fresh-install",
                  "command": \(command),
                  "produces": "node_modules", "timeoutSeconds": 120 }
              ],
              "writeBack": { "enabled": true, "wait": true },
              "monitoring": { "report": { "spoolDirectory": "\(spool)" } }
            }
            """
        try write(config, to: file)
    }

    static func fileCount(_ directory: FilePath) throws -> Int {
        var count = 0
        let enumerator = FileManager.default.enumerator(atPath: directory.string)
        while let path = enumerator?.nextObject() as? String {
            _ = path
            if (enumerator?.fileAttributes?[.type] as? FileAttributeType) == .typeRegular { count += 1 }
        }
        return count
    }

    private static func write(_ text: String, to path: FilePath) throws {
        try Data(text.utf8).write(to: URL(fileURLWithPath: path.string))
    }
}
