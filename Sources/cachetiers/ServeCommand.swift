import ArgumentParser
import CacheTiers
import CacheTiersServer
import Foundation
import NIOCore
import ServiceLifecycle
import SystemPackage

struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Run the cache master: serve archives from DIR to peer VMs and accept new ones.",
        discussion: "The HTTP API is in Documentation/CacheMasterAPI.md. Stops cleanly on SIGINT or SIGTERM."
    )

    @Option(name: .long, help: "The folder of archives (KEY.tar.zst beside KEY.tar.zst.manifest.json); created if missing.")
    var root: String

    @Option(name: .long, help: "The address to listen on.")
    var host = "127.0.0.1"

    @Option(name: .long, parsing: .unconditional, help: "The port to listen on; 0 picks a free one.")
    var port = 7420

    @Option(name: .long, help: "A file holding the bearer token every request but /healthz must present.")
    var tokenFile: String?

    @Option(name: .long, help: "A file holding a token that may only send reports (POST /v1/reports); needs --token-file.")
    var reportTokenFile: String?

    @Option(name: .long, help: "The SQLite database of fleet reports (default: ROOT/.cachetiers/reports.sqlite).")
    var reportsDb: String?

    @Option(name: .long, parsing: .unconditional, help: "Days a report is kept (by when its restore finished).")
    var reportRetentionDays = 30

    @Option(name: .long, parsing: .unconditional, help: "Reports kept at most; beyond it the oldest are deleted.")
    var maxReports = 1_000_000

    @Option(name: .long, parsing: .unconditional, help: "MiB of database pages the reports may use; beyond it the oldest are deleted.")
    var maxReportsDbMb = 2048

    @Option(name: .long, parsing: .unconditional, help: "Downloads and uploads served at once; beyond it, 503 with Retry-After.")
    var maxTransfers = 64

    @Option(name: .long, help: "Seconds a connection may send nothing (no request, or half of one) before it is closed.")
    var idleTimeout = 30.0

    @Option(name: .long, help: "Connections open at once; beyond it new ones wait until one closes.")
    var maxConnections = 512

    @Option(name: .long, help: "Seconds transfers in flight may take to finish after SIGTERM or SIGINT; then they are cut.")
    var shutdownGrace = 30

    // MARK: Replication
    @Option(name: .long, help: "A JSON config whose peer, gcs and directory tiers that accept write-back get a copy of every archive newly published here, in the background.")
    var replicateTo: String?

    @Option(name: .long, help: "A tier of --replicate-to to copy to (default: every one that accepts write-back); repeat for several.")
    var replicateTier: [String] = []

    // MARK: Retention
    @Option(name: .long, parsing: .unconditional, help: "Keep the archives in ROOT under this size, evicting the least recently served first (50G: K, M, G, T are powers of 1024).")
    var maxSize: String?

    @Option(name: .long, parsing: .unconditional, help: "Evict archives not served for this long (30d: m, h or d).")
    var maxAgeUnused: String?

    @Option(name: .long, parsing: .unconditional, help: "Never evict an archive stored less than this long ago (m, h or d).")
    var minAge = "\(RetentionPolicy.defaultMinAge)"

    /// The retention options, parsed with the library's size and age grammar.
    func retentionPolicy() throws -> RetentionPolicy {
        func parse<T>(_ option: String, _ body: () throws(RetentionUnitError) -> T) throws -> T {
            do {
                return try body()
            } catch {
                throw ValidationError("\(option): \(error)")
            }
        }
        return RetentionPolicy(
            maxSize: try maxSize.map { text in try parse("--max-size") { () throws(RetentionUnitError) in try StorageSize(parsing: text) } },
            maxAgeUnused: try maxAgeUnused.map { text in
                try parse("--max-age-unused") { () throws(RetentionUnitError) in try RetentionAge(parsing: text) }
            },
            minAge: try parse("--min-age") { () throws(RetentionUnitError) in try RetentionAge(parsing: minAge) }
        )
    }

    @OptionGroup var logging: LoggingOptions

    func validate() throws {
        _ = try retentionPolicy()
        guard (0...65535).contains(port) else { throw ValidationError("--port must be 0 to 65535") }
        guard maxTransfers >= 1 else { throw ValidationError("--max-transfers must be at least 1") }
        guard idleTimeout.isFinite, (0.1...86_400).contains(idleTimeout) else {
            throw ValidationError("--idle-timeout must be 0.1 to 86400 seconds")
        }
        guard (0...3600).contains(shutdownGrace) else { throw ValidationError("--shutdown-grace must be 0 to 3600 seconds") }
        guard (1...1_000_000).contains(maxConnections) else { throw ValidationError("--max-connections must be 1 to 1000000") }
        guard (1...3650).contains(reportRetentionDays) else { throw ValidationError("--report-retention-days must be 1 to 3650") }
        guard (1...100_000_000).contains(maxReports) else { throw ValidationError("--max-reports must be 1 to 100000000") }
        guard (1...1_048_576).contains(maxReportsDbMb) else { throw ValidationError("--max-reports-db-mb must be 1 to 1048576") }
        guard reportTokenFile == nil || tokenFile != nil else {
            throw ValidationError("--report-token-file needs --token-file: without it every route is open to anyone")
        }
        if let reportsDb, reportsDb.isEmpty { throw ValidationError("--reports-db must name a file") }
        // MARK: Replication
        guard replicateTier.isEmpty || replicateTo != nil else { throw ValidationError("--replicate-tier needs --replicate-to CONFIG") }
        guard maxTransfers <= maxConnections else {
            throw ValidationError("--max-transfers (\(maxTransfers)) cannot exceed --max-connections (\(maxConnections))")
        }
    }

    /// Below this many characters a token draws a warning at start.
    static let minimumTokenLength = 16

    func run() async throws {
        var logger = logging.makeLogger(label: "cachetiers.serve")
        if !logging.verbose { logger.logLevel = .info }
        let token = try tokenFile.map { try readToken($0, option: "--token-file") }
        let reportToken = try reportTokenFile.map { try readToken($0, option: "--report-token-file") }
        if let reportToken, reportToken == token {
            throw UsageFailure("--report-token-file holds the same token as --token-file; give VMs a token of their own")
        }
        // The bearer header is not rate-limited (only the dashboard's login form is): a
        // token's length is what keeps guessing hopeless, so a short one is said at start.
        for (option, file, value) in [("--token-file", tokenFile, token), ("--report-token-file", reportTokenFile, reportToken)] {
            if let file, let value, value.utf8.count < Self.minimumTokenLength {
                FileHandle.standardError.write(Data(
                    "cachetiers: warning: the token in \(option) \(file) is \(value.utf8.count) characters, which a client on the network can guess; use at least \(Self.minimumTokenLength) random ones (head -c 32 /dev/urandom | base64 > \(file))\n".utf8
                ))
            }
        }
        // MARK: Replication
        let replication = try ReplicationTargets(config: replicateTo, tiers: replicateTier)
        var serverConfiguration = CacheMasterServer.Configuration(
                root: FilePath(root), host: host, port: port, token: token, reportToken: reportToken,
                reportsDatabase: reportsDb.map { FilePath($0) }, reportRetention: .seconds(reportRetentionDays * 86_400),
                maxReports: maxReports, maxReportsDatabaseBytes: Int64(maxReportsDbMb) << 20, maxConcurrentTransfers: maxTransfers,
                idleTimeout: .milliseconds(Int64(idleTimeout * 1000)), maxConnections: maxConnections,
                retention: try retentionPolicy()
            )
        serverConfiguration.replicationTargets = replication.sinks
        let server = CacheMasterServer(
            configuration: serverConfiguration,
            logger: logger,
            onServerRunning: { url in
                // The first line an operator's script waits for; written unbuffered.
                FileHandle.standardOutput.write(Data("listening on \(url)\n".utf8))
            }
        )
        var configuration = ServiceGroupConfiguration(
            services: [server], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger
        )
        // Transfers in flight get this long to finish; then the group cancels the server,
        // which closes them (an upload's scratch file is removed), so an upload trickling in
        // from a hostile or dying client cannot hold the stop until systemd's SIGKILL.
        configuration.maximumGracefulShutdownDuration = .seconds(shutdownGrace)
        let group = ServiceGroup(configuration: configuration)
        do {
            try await group.run()
            await replication.shutdown()
        } catch let error as IOError where error.errnoCode == EADDRINUSE {
            await replication.shutdown()
            throw CommandFailure("serve: cannot listen on \(host):\(port): the port is in use; stop what holds it or choose another --port")
        } catch {
            await replication.shutdown()
            throw CommandFailure("serve: \(error)")
        }
    }
}

/// Reads a token file, trimming the trailing newline editors add. A file that cannot
/// be used is a usage error (exit 2), as a config's `tokenFile` is a config error.
func readToken(_ path: String, option: String) throws -> String {
    do {
        return try SmallFile.token(at: FilePath(path))
    } catch {
        switch error.kind {
        case .unreadable: throw UsageFailure("\(option) \(path) cannot be read: \(error.reason)")
        case .empty: throw UsageFailure("\(option) \(path) is empty; put the bearer token in it")
        case .notOneLine: throw UsageFailure("\(option) \(path) holds more than one line; put only the bearer token in it")
        }
    }
}
