import CacheTiers
import Foundation
import Logging
import Synchronization
import SystemPackage

/// A mock tier that follows a script, one step per attempt, for unit tests of the chain.
///
/// After the script runs out, the last step repeats. Steps that take time sleep on the
/// clock given at creation (a ``ManualClock`` in tests). It is also a ``CacheSink`` that
/// records what is published to it.
public final class ScriptedSource: CacheSource, CacheSink, Sendable {
    public indirect enum Step: Sendable {
        /// Writes `files` (path → contents) into the staging directory and succeeds.
        case restore(files: [String: String] = ["restored.txt": "restored"], bytes: Int64 = 1024)
        /// Reports that the key is not here.
        case miss
        /// Throws a ``CacheTierError`` of `kind`.
        case fail(CacheTierError.Kind, String = "scripted failure", retryAfter: Duration? = nil)
        /// Throws an error that is not a ``CacheTierError``.
        case throwUntyped(String)
        /// Writes part of a tree, then throws a transient error: the chain must discard it.
        case writePartialThenFail(files: [String: String])
        /// Reports `bytes` of progress, then waits until cancelled.
        case stall(afterBytes: Int64)
        /// Waits until cancelled, reporting nothing.
        case hang
        /// Sleeps on the clock, then performs `then`.
        case delay(Duration, then: Step)
        /// Reports `bytes` every `interval` on the clock, `times` times, then performs `then`.
        case trickle(bytes: Int, every: Duration, times: Int, then: Step)
        /// Reports `bytes` of progress at once, then performs `then`.
        case progress(bytes: Int64, then: Step)
    }

    /// What publishing to this sink does.
    public enum PublishBehaviour: Sendable {
        case accept
        case fail(String)
    }

    public let name: String
    public let traits: CacheSourceTraits
    private let steps: [Step]
    private let clock: (any Clock<Duration>)?
    private let publishBehaviour: PublishBehaviour

    private struct State {
        var attempts = 0
        var finished = 0
        var published: [CacheManifest] = []
        var held: Set<CacheKey> = []
        var containsQueries = 0
    }

    private let state = Mutex(State())

    /// - Parameters:
    ///   - clock: what `delay` and `trickle` sleep on; required when the script uses them.
    ///   - holds: keys that `contains` reports as present from the start.
    public init(
        _ name: String,
        traits: CacheSourceTraits = .download,
        steps: [Step],
        clock: (any Clock<Duration>)? = nil,
        holds: Set<CacheKey> = [],
        publish: PublishBehaviour = .accept
    ) {
        precondition(!steps.isEmpty, "a script needs at least one step")
        self.name = name
        self.traits = traits
        self.steps = steps
        self.clock = clock
        self.publishBehaviour = publish
        self.state.withLock { $0.held = holds }
    }

    /// Attempts started so far.
    public var attempts: Int { state.withLock { $0.attempts } }
    /// Attempts that have returned or thrown.
    public var finishedAttempts: Int { state.withLock { $0.finished } }
    /// Manifests of the archives published to this sink, in order.
    public var published: [CacheManifest] { state.withLock { $0.published } }
    /// Calls to `contains` so far.
    public var containsQueries: Int { state.withLock { $0.containsQueries } }

    /// Waits (polling the real clock) until `count` attempts have started.
    public func waitForAttempts(_ count: Int, limit: Duration = .seconds(120)) async throws {
        let start = ContinuousClock.now
        while attempts < count {
            guard ContinuousClock.now - start < limit else {
                throw ManualClockError(description: "\(name): expected \(count) attempts, saw \(attempts)")
            }
            try await Task.sleep(for: .milliseconds(1))
        }
    }

    public func restore(
        _ request: RestoreRequest,
        into staging: FilePath,
        progress: TransferProgress,
        logger: Logger
    ) async throws -> SourceRestoreOutcome {
        let index = state.withLock { state in
            state.attempts += 1
            return state.attempts - 1
        }
        defer { state.withLock { $0.finished += 1 } }
        return try await perform(steps[min(index, steps.count - 1)], staging: staging, progress: progress)
    }

    private func perform(_ step: Step, staging: FilePath, progress: TransferProgress) async throws
        -> SourceRestoreOutcome
    {
        switch step {
        case .restore(let files, let bytes):
            try write(files, into: staging)
            progress.advance(by: Int(bytes))
            return .restored(RestoreDetails(bytesTransferred: bytes))
        case .miss:
            return .miss("\(name) does not hold the key")
        case .fail(let kind, let message, let retryAfter):
            throw CacheTierError(kind, tier: name, message, retryAfter: retryAfter)
        case .throwUntyped(let message):
            throw UntypedFailure(description: message)
        case .writePartialThenFail(let files):
            try write(files, into: staging)
            throw CacheTierError(.transient, tier: name, "connection reset after a partial write")
        case .stall(let bytes):
            progress.advance(by: Int(bytes))
            try await waitForCancellation()
        case .hang:
            try await waitForCancellation()
        case .delay(let duration, let then):
            try await sleep(for: duration)
            return try await perform(then, staging: staging, progress: progress)
        case .progress(let bytes, let then):
            progress.advance(by: Int(bytes))
            return try await perform(then, staging: staging, progress: progress)
        case .trickle(let bytes, let interval, let times, let then):
            for _ in 0..<times {
                try await sleep(for: interval)
                progress.advance(by: bytes)
            }
            return try await perform(then, staging: staging, progress: progress)
        }
    }

    private func sleep(for duration: Duration) async throws {
        guard let clock else { preconditionFailure("\(name): a script with delays needs a clock") }
        try await clock.sleep(for: duration)
    }

    private func waitForCancellation() async throws -> Never {
        while true {
            try await Task.sleep(for: .seconds(3600))
        }
    }

    private func write(_ files: [String: String], into staging: FilePath) throws {
        for (path, contents) in files {
            let url = URL(fileURLWithPath: staging.appending(path).string)
            try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
            try Data(contents.utf8).write(to: url)
        }
    }

    public func contains(_ key: CacheKey, logger: Logger) async throws -> Bool {
        state.withLock { state in
            state.containsQueries += 1
            return state.held.contains(key)
        }
    }

    public func publish(_ archive: PackedArchive, logger: Logger) async throws -> PublishOutcome {
        if case .fail(let message) = publishBehaviour {
            throw CacheTierError(.transient, tier: name, message)
        }
        return state.withLock { state in
            guard state.held.insert(archive.key).inserted else { return .exists }
            state.published.append(archive.manifest)
            return .published
        }
    }
}

/// An error that is not a ``CacheTierError``, as a careless tier might throw.
public struct UntypedFailure: Error, CustomStringConvertible {
    public var description: String
}
