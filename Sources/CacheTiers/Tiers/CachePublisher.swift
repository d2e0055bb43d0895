import Logging
import SystemPackage

/// Publishes a tree to several sinks the way a burst of VMs should: ask each sink first,
/// pack once only if some sink lacks the key, then publish create-only to those, all at
/// once. Both the chain's write-back and `cachetiers publish` go through it.
///
/// Failures become records, never thrown errors: one unreachable tier must not stop the
/// others from getting the archive.
///
/// Every sink's work is bounded (``Limits``): asking whether it holds the key must be
/// answered within the stall window, an upload that moves no byte for that window is
/// cut, and the whole publish, packing included, ends by the total bound, whatever a
/// stopped or black-holed server does. A sink still working then is cancelled and
/// recorded as failed.
public struct CachePublisher: Sendable {
    /// How long a publish may take.
    public struct Limits: Sendable, Hashable {
        /// The whole publish: asking, packing and uploading to every sink; `nil` for no bound.
        public var timeout: Duration?
        /// A sink that answers nothing (to its `contains`) or whose upload moves no byte
        /// for this long is given up; `nil` for never.
        public var stallTimeout: Duration?

        public init(timeout: Duration? = .seconds(120), stallTimeout: Duration? = .seconds(30)) {
            self.timeout = timeout
            self.stallTimeout = stallTimeout
        }

        /// No bounds: each sink takes as long as it takes.
        public static let unbounded = Limits(timeout: nil, stallTimeout: nil)
    }

    /// What a publish did: one record per sink, in the sinks' order, and the manifest
    /// of the archive when one was packed.
    public struct Result: Sendable {
        public var records: [WriteBackRecord]
        public var manifest: CacheManifest?
    }

    public var packer: any CachePacker
    public var limits: Limits
    let clock: ChainClock

    public init(packer: any CachePacker, limits: Limits = .init()) {
        self.init(packer: packer, limits: limits, clock: ChainClock(ContinuousClock()))
    }

    init(packer: any CachePacker, limits: Limits, clock: ChainClock) {
        self.packer = packer
        self.limits = limits
        self.clock = clock
    }

    /// - Parameter scratch: an existing directory to pack the archive into; the caller
    ///   removes it.
    public func publish(
        _ tree: FilePath,
        as key: CacheKey,
        to sinks: [any CacheSink],
        scratch: FilePath,
        logger: Logger
    ) async -> Result {
        let deadline = limits.timeout.map { clock.now() + $0 }
        return await publish(tree, as: key, to: sinks, scratch: scratch, deadline: deadline, logger: logger)
    }

    private func publish(
        _ tree: FilePath,
        as key: CacheKey,
        to sinks: [any CacheSink],
        scratch: FilePath,
        deadline: Duration?,
        logger: Logger
    ) async -> Result {
        let asked = await ask(sinks, whetherTheyHold: key, deadline: deadline, logger: logger)
        var records = asked.records
        let needed = asked.needed
        var manifest: CacheManifest?
        if !needed.isEmpty {
            let file = scratch.appending("\(key.rawValue).tar.zst")
            do {
                let packer = self.packer
                let packed: CacheManifest = try await Bounded<Swift.Result<CacheManifest, any Error>>.runThrowing(
                    deadline: deadline, stallTimeout: nil, clock: clock
                ) {
                    try await packer.pack(tree, key: key, to: file, logger: logger)
                }.value(limits: limits, what: "packing")
                manifest = packed
                let archive = PackedArchive(file: file, manifest: packed)
                for record in await publish(archive, to: needed, deadline: deadline, logger: logger) {
                    records[record.tier] = record
                }
            } catch {
                for sink in needed {
                    records[sink.name] = WriteBackRecord(tier: sink.name, outcome: .failed, error: "packing \(tree) failed: \(error)")
                }
            }
        }
        return Result(records: sinks.compactMap { records[$0.name] }, manifest: manifest)
    }

    /// Asks each sink whether it holds `key`: the records of those that do (or cannot
    /// answer in time), and the sinks to publish to.
    private func ask(
        _ sinks: [any CacheSink],
        whetherTheyHold key: CacheKey,
        deadline: Duration?,
        logger: Logger
    ) async -> (records: [String: WriteBackRecord], needed: [any CacheSink]) {
        var records: [String: WriteBackRecord] = [:]
        var needed: [any CacheSink] = []
        for sink in sinks {
            let answer = await Bounded<Swift.Result<Bool, any Error>>.runThrowing(
                deadline: deadline, stallTimeout: limits.stallTimeout, clock: clock
            ) {
                try await sink.contains(key, logger: logger)
            }
            switch answer {
            case .timedOut, .stalled, .cancelled:
                // A sink that cannot answer a HEAD in time would not take an upload either.
                let reason = answer.failureReason(limits: limits)
                records[sink.name] = WriteBackRecord(tier: sink.name, outcome: .failed, error: reason)
                continue
            case .finished:
                break
            }
            do {
                if try answer.value(limits: limits, what: "did not answer whether it holds \(key)") {
                    records[sink.name] = WriteBackRecord(tier: sink.name, outcome: .exists)
                } else {
                    needed.append(sink)
                }
            } catch {
                // Publishing is create-only, so trying anyway is safe.
                logger.notice(
                    "could not ask a tier whether it holds the key; publishing anyway",
                    metadata: ["tier": "\(sink.name)", "error": "\(error)"]
                )
                needed.append(sink)
            }
        }
        return (records, needed)
    }

    /// Publishes an archive already packed (a copy taken from another tier, as
    /// `cachetiers sync` and the cache master's replication make) to every sink at once,
    /// create-only, each upload under ``limits``' stall rule and all of them under its
    /// total bound. With `askingFirst`, each sink is asked whether it holds the key
    /// first (as a write-back does), and only those that lack it are sent the archive;
    /// without, the caller knows they lack it (from a listing), and an
    /// ``PublishOutcome/exists`` is recorded as such.
    /// - Returns: one record per sink, in the sinks' order.
    public func publish(
        _ archive: PackedArchive, to sinks: [any CacheSink], askingFirst: Bool = false, logger: Logger
    ) async -> [WriteBackRecord] {
        let deadline = limits.timeout.map { clock.now() + $0 }
        let asked: (records: [String: WriteBackRecord], needed: [any CacheSink]) = askingFirst
            ? await ask(sinks, whetherTheyHold: archive.key, deadline: deadline, logger: logger) : ([:], sinks)
        var records = asked.records
        for record in await publish(archive, to: asked.needed, deadline: deadline, logger: logger) {
            records[record.tier] = record
        }
        return sinks.compactMap { records[$0.name] }
    }

    private func publish(
        _ archive: PackedArchive,
        to sinks: [any CacheSink],
        deadline: Duration?,
        logger: Logger
    ) async -> [WriteBackRecord] {
        let limits = self.limits
        let clock = self.clock
        return await withTaskGroup(of: WriteBackRecord.self) { group in
            for sink in sinks {
                group.addTask {
                    let outcome = await Bounded<Swift.Result<PublishOutcome, any Error>>.runThrowing(
                        deadline: deadline, stallTimeout: limits.stallTimeout, clock: clock
                    ) {
                        try await sink.publish(archive, logger: logger)
                    }
                    do {
                        let published = try outcome.value(limits: limits, what: "moved no byte of the upload")
                        return WriteBackRecord(tier: sink.name, outcome: published == .published ? .published : .exists)
                    } catch {
                        return WriteBackRecord(tier: sink.name, outcome: .failed, error: "\(error)")
                    }
                }
            }
            var records: [WriteBackRecord] = []
            for await record in group { records.append(record) }
            return records
        }
    }
}

/// Runs one step of a publish under a deadline and a stall watchdog. The step reports
/// progress through ``TransferProgress/upload``, which it finds set for its task.
enum Bounded<Value: Sendable>: Sendable {
    case finished(Value)
    case timedOut
    case stalled
    case cancelled

    private enum Signal: Sendable {
        case finished(Value)
        case timedOut
        case stalled
        case stopped
    }

    static func run(
        deadline: Duration?,
        stallTimeout: Duration?,
        clock: ChainClock,
        _ operation: @escaping @Sendable () async -> Value
    ) async -> Bounded<Value> {
        if deadline == nil && stallTimeout == nil { return .finished(await operation()) }
        let progress = TransferProgress(now: clock.now)
        let signal = await withTaskGroup(of: Signal.self) { group -> Signal in
            group.addTask {
                .finished(await TransferProgress.$upload.withValue(progress) { await operation() })
            }
            if let deadline {
                group.addTask {
                    do { try await clock.sleep(deadline) } catch { return .stopped }
                    return .timedOut
                }
            }
            if let stallTimeout, stallTimeout > .zero {
                group.addTask {
                    let watchdog = StallWatchdog(progress: progress, clock: clock, window: stallTimeout, minimumBytesPerSecond: 0)
                    if case .stalled = await watchdog.watch() { return .stalled }
                    return .stopped
                }
            }
            var verdict: Signal?
            while let next = await group.next() {
                if case .stopped = next { continue }
                if verdict == nil { verdict = next }
                group.cancelAll()
            }
            return verdict ?? .stopped
        }
        switch signal {
        case .finished(let value): return .finished(value)
        case .timedOut: return .timedOut
        case .stalled: return .stalled
        case .stopped: return .cancelled
        }
    }

    func failureReason(limits: CachePublisher.Limits) -> String {
        switch self {
        case .finished: "finished"
        case .timedOut: "gave up when the publish's bound of \(limits.timeout?.humanReadable ?? "?") ran out"
        case .stalled: "gave up: no answer and no upload progress for \(limits.stallTimeout?.humanReadable ?? "?") (is the server stopped?)"
        case .cancelled: "cancelled before it finished"
        }
    }
}

extension Bounded {
    /// The step's result, or the bound that stopped it as an error.
    func value<T>(limits: CachePublisher.Limits, what: String) throws -> T where Value == Swift.Result<T, any Error> {
        switch self {
        case .finished(let result): return try result.get()
        case .timedOut: throw CacheTierError(.timeout, failureReason(limits: limits))
        case .stalled: throw CacheTierError(.stalled, "\(what) for \(limits.stallTimeout?.humanReadable ?? "?"); gave up")
        case .cancelled: throw CancellationError()
        }
    }

    static func runThrowing<T: Sendable>(
        deadline: Duration?,
        stallTimeout: Duration?,
        clock: ChainClock,
        _ operation: @escaping @Sendable () async throws -> T
    ) async -> Bounded<Swift.Result<T, any Error>> where Value == Swift.Result<T, any Error> {
        await run(deadline: deadline, stallTimeout: stallTimeout, clock: clock) { () async -> Swift.Result<T, any Error> in
            do { return .success(try await operation()) } catch { return .failure(error) }
        }
    }
}
