import CacheTiers
import Foundation
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import ServiceLifecycle
import Synchronization
import SystemPackage

/// The cache master: serves archives to peer VMs over HTTP and accepts new ones.
///
/// Archives live in ``Configuration-swift.struct/root`` in the layout
/// ``DirectorySource`` reads (`KEY.tar.zst` beside `KEY.tar.zst.manifest.json`), so
/// a directory tier and the cache master can share one folder. The API is documented in
/// `Documentation/CacheMasterAPI.md`.
///
/// It is a service-lifecycle `Service`: put it in a `ServiceGroup` beside the host
/// application's other services, and ``run()`` serves until the group shuts down
/// gracefully (`cachetiers serve` runs it so, with SIGTERM and SIGINT as the signals).
/// Or start it in-process with ``start()`` (tests, the demo, examples) and stop it with
/// ``stop()``.
public final class CacheMasterServer: Service, Sendable {
    public struct Configuration: Sendable {
        /// The folder holding the archives; created if missing.
        public var root: FilePath
        public var host: String
        /// 0 picks a free port.
        public var port: Int
        /// When set, every request but `/healthz` needs `Authorization: Bearer <token>`.
        public var token: String?
        /// A token that may only `POST /v1/reports` (what VMs hold): 403 on every other
        /// route. Meant beside ``token``: set alone, no token can reach the other routes.
        public var reportToken: String?
        /// The SQLite database of fleet reports; `nil` is `ROOT/.cachetiers/reports.sqlite`
        /// (a hidden folder the archive folder's recovery leaves alone).
        public var reportsDatabase: FilePath?
        /// Reports that finished longer ago are deleted, at start and every ten minutes.
        public var reportRetention: Duration
        /// Beyond this many stored reports the oldest are deleted.
        public var maxReports: Int
        /// Beyond this many bytes of database pages in use, the oldest reports are deleted
        /// (a report is up to 256 KiB, so the row cap alone does not bound the disk).
        public var maxReportsDatabaseBytes: Int64
        /// Archive downloads and uploads served at once; more get 503 with Retry-After.
        public var maxConcurrentTransfers: Int
        /// What 503 answers put in Retry-After, in seconds.
        public var retryAfterSeconds: Int
        /// Bytes read from disk per chunk when streaming an archive.
        public var chunkSize: Int
        /// How long a connection may go without a complete request head or body part
        /// from the client before it is closed: an idle keep-alive connection, a client
        /// that sends nothing, half a request line, or an upload that stops. A response
        /// being streamed to a slow reader is not idle; one that cannot take a byte of
        /// its response for this long (the client stopped reading) is closed too.
        public var idleTimeout: Duration
        /// Connections open at once; beyond it the server stops accepting until one
        /// closes (new ones wait in the listen backlog), so no client can exhaust the
        /// process's file descriptors.
        public var maxConnections: Int
        /// At start, files left without their pair are only moved aside once this old: a
        /// younger one may still be being written. A create-only PUT also replaces an
        /// archive that has stood this long without its manifest.
        public var orphanGracePeriod: Duration
        /// How long the whole body of a `POST /v1/reports` (at most 256 KiB) or of a
        /// `POST /login` (at most 4 KiB) may take; past it the answer is 408 and the
        /// connection closes, so clients dripping bodies cannot hold every connection.
        /// Archive uploads have no such deadline.
        public var reportBodyDeadline: Duration
        // MARK: Retention
        /// What the root may keep (`serve --max-size --max-age-unused --min-age`); the
        /// default limits nothing, though hits are tracked all the same.
        public var retention: RetentionPolicy

        // MARK: Replication
        /// Tiers every archive newly published here is copied to in the background (a
        /// bucket, other masters, a directory): `serve --replicate-to`. None by default.
        /// The caller owns them (and shuts their clients down after the server stops).
        public var replicationTargets: [any CacheSink] = []
        /// The replication queue; `nil` is `ROOT/.cachetiers/replication.sqlite`.
        public var replicationDatabase: FilePath? = nil
        /// The bounds of one copy: an upload that moves no byte for the stall window is
        /// cut and retried later; no total bound, since an archive may be large.
        public var replicationLimits = CachePublisher.Limits(timeout: nil, stallTimeout: .seconds(30))

        /// Where the replication queue is: ``replicationDatabase``, or its default in the root.
        public var replicationDatabasePath: FilePath {
            replicationDatabase ?? root.appending(CacheMasterServer.reportsFolderName).appending("replication.sqlite")
        }

        public init(
            root: FilePath,
            host: String = "127.0.0.1",
            port: Int = 7420,
            token: String? = nil,
            reportToken: String? = nil,
            reportsDatabase: FilePath? = nil,
            reportRetention: Duration = .seconds(30 * 86_400),
            maxReports: Int = 1_000_000,
            maxReportsDatabaseBytes: Int64 = 2 << 30,
            maxConcurrentTransfers: Int = 64,
            retryAfterSeconds: Int = 1,
            chunkSize: Int = 256 * 1024,
            idleTimeout: Duration = .seconds(30),
            maxConnections: Int = 512,
            orphanGracePeriod: Duration = .seconds(600),
            reportBodyDeadline: Duration = .seconds(10),
            retention: RetentionPolicy = RetentionPolicy()  // MARK: Retention
        ) {
            self.root = root
            self.host = host
            self.port = port
            self.token = token
            self.reportToken = reportToken
            self.reportsDatabase = reportsDatabase
            self.reportRetention = reportRetention
            self.maxReports = max(1, maxReports)
            self.maxReportsDatabaseBytes = max(1 << 20, maxReportsDatabaseBytes)
            self.maxConcurrentTransfers = maxConcurrentTransfers
            self.retryAfterSeconds = retryAfterSeconds
            self.chunkSize = chunkSize
            self.idleTimeout = idleTimeout
            self.maxConnections = maxConnections
            self.orphanGracePeriod = orphanGracePeriod
            self.reportBodyDeadline = reportBodyDeadline
            self.retention = retention  // MARK: Retention
        }

        /// Where the report database is: ``reportsDatabase``, or its default in the root.
        public var reportsDatabasePath: FilePath {
            reportsDatabase ?? root.appending(CacheMasterServer.reportsFolderName).appending("reports.sqlite")
        }
    }

    /// The hidden folder in the root that holds the report database by default.
    public static let reportsFolderName = ".cachetiers"
    /// How often reports past the retention or the cap are deleted while serving.
    static let pruneInterval = Duration.seconds(600)

    public let configuration: Configuration
    let logger: Logger
    let metrics: ServerMetrics
    let folder: ArchiveFolder
    let transfers: TransferLimiter
    // MARK: Retention
    let retention: MasterRetention
    private let onServerRunning: @Sendable (String) async -> Void

    private struct Running {
        var group: ServiceGroup
        var task: Task<Void, any Error>
    }

    /// The group ``start()`` runs the server in, until ``stop()``.
    private let running = Mutex<Running?>(nil)
    /// Told the address once the server listens, for ``start()``.
    private let listeningObserver = Mutex<(@Sendable (String) -> Void)?>(nil)
    /// The report store while ``run()`` serves, for the `/metrics` gauges.
    private let reports = Mutex<ReportStore?>(nil)
    // MARK: Replication
    /// The replicator while ``run()`` serves, when there are replication targets.
    private let replicator = Mutex<Replicator?>(nil)

    /// - Parameter onServerRunning: called with the base URL (`http://127.0.0.1:41234`)
    ///   once ``run()`` listens.
    public init(
        configuration: Configuration,
        logger: Logger,
        onServerRunning: @escaping @Sendable (_ url: String) async -> Void = { _ in }
    ) {
        self.configuration = configuration
        self.logger = logger
        self.metrics = ServerMetrics()
        self.folder = ArchiveFolder(root: configuration.root)
        self.transfers = TransferLimiter(limit: configuration.maxConcurrentTransfers)
        // MARK: Retention
        self.retention = MasterRetention(folder: folder, policy: configuration.retention, metrics: metrics.retention, logger: logger)
        self.onServerRunning = onServerRunning
    }

    /// Serves until the service group it runs in shuts down gracefully, or the task is
    /// cancelled: first clears what a crash left half-published in the folder (see
    /// `Documentation/CacheMasterAPI.md`) and opens the report database, then listens;
    /// on shutdown it stops accepting, lets in-flight requests finish, and returns.
    public func run() async throws {
        do {
            try folder.prepare(gracePeriod: configuration.orphanGracePeriod, logger: logger)
        } catch {
            throw CacheMasterError(error.description)
        }
        // MARK: Retention
        try retention.open()
        defer { retention.close() }
        let store: ReportStore
        do {
            store = try ReportStore.open(
                at: configuration.reportsDatabasePath, retention: configuration.reportRetention,
                maxReports: configuration.maxReports, maxBytes: configuration.maxReportsDatabaseBytes, logger: logger
            )
            // Series of the tiers the fleet already reported exist at 0 from the start, so
            // after a restart rate() sees their next restore (a new series' first sample
            // counts as no increase).
            metrics.fleet.prepareSeries(servedBy: (try? store.servingTiers(limit: FleetMetrics.maximumTierLabels)) ?? [])
        } catch {
            throw CacheMasterError(error.description)
        }
        reports.withLock { $0 = store }
        defer {
            reports.withLock { $0 = nil }
            store.close()
        }
        // MARK: Replication
        let replicator = try openReplicator()
        self.replicator.withLock { $0 = replicator }
        defer {
            self.replicator.withLock { $0 = nil }
            replicator?.queue.close()
        }
        let host = urlHost
        let application = makeApplication(store: store) { port in
            let url = "http://\(host):\(port)"
            self.listeningObserver.withLock { $0 }?(url)
            await self.onServerRunning(url)
        }
        try await withThrowingDiscardingTaskGroup { group in
            group.addTask { [logger] in await store.pruneEvery(Self.pruneInterval, logger: logger) }
            if let replicator { group.addTask { await replicator.run() } }
            // MARK: Retention
            group.addTask { [retention] in await retention.enforceEvery(MasterRetention.interval) }
            // Hummingbird runs its server in a service group of its own, which follows the
            // graceful shutdown of the group this service runs in.
            try await application.run()
            group.cancelAll()
        }
    }

    // MARK: Replication

    /// The replicator over the durable queue, when the configuration names targets.
    private func openReplicator() throws(CacheMasterError) -> Replicator? {
        guard !configuration.replicationTargets.isEmpty else { return nil }
        let queue = try ReplicationQueue.open(at: configuration.replicationDatabasePath)
        return Replicator(
            queue: queue, folder: folder, targets: configuration.replicationTargets, registry: metrics.registry,
            limits: configuration.replicationLimits, logger: logger
        )
    }

    /// Queues a copy of a newly created archive for every replication target, durably,
    /// before the publish is answered (nothing without targets).
    func replicateNewArchive(_ key: CacheKey) async {
        await replicator.withLock { $0 }?.enqueue(key)
    }

    /// Starts serving in the background, in a service group of its own.
    /// - Returns: the base URL it listens on, e.g. `http://127.0.0.1:41234`.
    public func start() async throws -> String {
        let (stream, continuation) = AsyncStream.makeStream(of: String.self)
        listeningObserver.withLock { observer in observer = { url in continuation.yield(url) } }
        let group = ServiceGroup(configuration: .init(services: [self], gracefulShutdownSignals: [], logger: logger))
        let task = Task {
            defer { continuation.finish() }
            try await group.run()
        }
        running.withLock { $0 = Running(group: group, task: task) }

        for await url in stream {
            return url
        }
        // The stream ends only if the server stopped before it bound.
        _ = try await task.value
        throw CacheMasterError("the cache master stopped before it started listening")
    }

    /// Stops what ``start()`` started: in-flight transfers finish or are cut, uploads
    /// leave nothing behind.
    public func stop() async {
        guard let current = running.withLock({ state -> Running? in
            defer { state = nil }
            return state
        }) else { return }
        await current.group.triggerGracefulShutdown()
        _ = try? await current.task.value
    }

    private var urlHost: String {
        configuration.host.contains(":") ? "[\(configuration.host)]" : configuration.host
    }

    private func makeApplication(store: ReportStore, onPort: @escaping @Sendable (Int) async -> Void) -> some ApplicationProtocol {
        let router = Router(context: BasicRequestContext.self)
        router.add(middleware: MetricsMiddleware(metrics: metrics))
        router.add(middleware: OneLineErrorMiddleware())
        let authentication = BearerTokenMiddleware<BasicRequestContext>(token: configuration.token, reportToken: configuration.reportToken)
        router.add(middleware: authentication)
        let databaseErrors = RateLimitedLog(logger: logger)
        CacheRoutes(server: self).register(on: router)
        // MARK: Retention
        CacheListRoutes(server: self).register(on: router)
        ReportRoutes(
            store: store, metrics: metrics.fleet, retryAfterSeconds: configuration.retryAfterSeconds,
            bodyDeadline: configuration.reportBodyDeadline, databaseErrors: databaseErrors
        ).register(on: router)
        DashboardRoutes(
            store: store, tokens: authentication.tokens, throttle: LoginThrottle(), upSince: Date(),
            loginDeadline: configuration.reportBodyDeadline, databaseErrors: databaseErrors
        ).register(on: router)
        let idle = configuration.idleTimeout.components
        let idleTimeout = TimeAmount.nanoseconds(idle.seconds * 1_000_000_000 + idle.attoseconds / 1_000_000_000)
        return Application(
            router: router,
            server: .http1(
                configuration: .init(
                    additionalChannelHandlers: [WriteStallHandler(timeout: idleTimeout)],
                    idleTimeout: idleTimeout
                )
            ),
            configuration: .init(
                address: .hostname(configuration.host, port: configuration.port),
                serverName: "cachetiers/\(CacheTiersVersion.current)",
                availableConnectionsDelegate: MaximumAvailableConnections(max(1, configuration.maxConnections), logger: logger)
            ),
            onServerRunning: { channel in await onPort(channel.localAddress?.port ?? 0) },
            logger: logger
        )
    }

    /// The Prometheus text exposition of the server's metrics.
    public func metricsText() -> String {
        if let store = reports.withLock({ $0 }) { metrics.fleet.refresh(store.summary, now: Date()) }
        return metrics.exposition(activeTransfers: transfers.active)
    }
}

/// A cache master failure that is not an HTTP answer.
public struct CacheMasterError: Error, CustomStringConvertible {
    public var description: String
    init(_ description: String) { self.description = description }
}

/// Counts transfers in flight and refuses beyond a limit.
final class TransferLimiter: Sendable {
    private let count = Atomic<Int>(0)
    let limit: Int

    init(limit: Int) {
        self.limit = max(1, limit)
    }

    /// Takes a slot; false when all are busy.
    func acquire() -> Bool {
        while true {
            let current = count.load(ordering: .relaxed)
            guard current < limit else { return false }
            if count.compareExchange(expected: current, desired: current + 1, ordering: .acquiringAndReleasing).exchanged {
                return true
            }
        }
    }

    func release() {
        count.subtract(1, ordering: .acquiringAndReleasing)
    }

    var active: Int { count.load(ordering: .relaxed) }
}
