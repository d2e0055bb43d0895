import CacheTiers
import Foundation
import Logging
import Synchronization
import SystemPackage

/// Something the conformance suite can test: a source, and a way to put a tree in it.
public protocol ConformanceSubject: Sendable {
    /// The source under test.
    var source: any CacheSource { get }
    /// Makes `source` hold the tree at `directory` under `key` (publish it, seed it…).
    func seed(_ key: CacheKey, from directory: FilePath) async throws
    /// The sink under test, when the source also accepts publishing.
    var sink: (any CacheSink)? { get }
    /// A packer that writes the archives the sink accepts; required when `sink` is set.
    var packer: (any CachePacker)? { get }
}

extension ConformanceSubject {
    public var sink: (any CacheSink)? { nil }
    public var packer: (any CachePacker)? { nil }
}

/// The behaviour every ``CacheSource`` must show, checked against a real subject.
///
/// Run it from the implementation's own tests:
/// ```swift
/// @Test func conformance() async throws {
///     try await CacheSourceConformance(subject: MySubject()).run()
/// }
/// ```
/// It checks that a seeded tree restores identically (files, modes, empty
/// directories, symlinks, long and non-ASCII names), that an unknown key is a miss and
/// not an error, that progress is reported, that concurrent restores do not interfere,
/// that a restore cancelled while its bytes flow stops there and throws
/// `CancellationError`, and, for sinks, that publishing is create-only.
public struct CacheSourceConformance: Sendable {
    public let subject: any ConformanceSubject
    public var logger: Logger

    public init(subject: any ConformanceSubject, logger: Logger = Logger(label: "cachetiers.conformance")) {
        self.subject = subject
        self.logger = logger
    }

    /// Runs every check.
    /// - Throws: ``ConformanceFailure`` listing every check that failed.
    public func run() async throws {
        let scratch = try TemporaryDirectory(prefix: "conformance")
        defer { scratch.remove() }
        var failures: [String] = []
        func check(_ name: String, _ body: () async throws -> [String]) async {
            do {
                failures += try await body().map { "\(name): \($0)" }
            } catch {
                failures.append("\(name): threw \(error)")
            }
        }

        let tree = scratch.path.appending("tree")
        try SampleTree.write(to: tree, seed: 7)
        let expected = try TreeSnapshot(of: tree)
        let key = try CacheKey("conformance-\(UInt32.random(in: 0 ... .max))")
        try await subject.seed(key, from: tree)
        let source = subject.source

        await check("restores a seeded tree exactly") {
            let staging = try scratch.makeDirectory("restore-1")
            let progress = TransferProgress()
            let outcome = try await source.restore(
                RestoreRequest(key: key), into: staging, progress: progress, logger: logger
            )
            guard case .restored = outcome else { return ["expected .restored, got \(outcome)"] }
            var problems = try TreeSnapshot(of: staging).differences(from: expected)
            if progress.snapshot.completed <= 0 { problems.append("reported no progress while restoring") }
            return problems
        }

        await check("reports an unknown key as a miss") {
            let staging = try scratch.makeDirectory("miss")
            let unknown = try CacheKey("conformance-absent-\(UInt32.random(in: 0 ... .max))")
            let outcome = try await source.restore(
                RestoreRequest(key: unknown), into: staging, progress: TransferProgress(), logger: logger
            )
            guard case .miss = outcome else { return ["expected .miss, got \(outcome)"] }
            return []
        }

        await check("restores concurrently without interference") {
            let stagings = try (0..<3).map { try scratch.makeDirectory("concurrent-\($0)") }
            let outcomes = try await withThrowingTaskGroup(of: Bool.self) { group in
                for staging in stagings {
                    group.addTask {
                        let outcome = try await source.restore(
                            RestoreRequest(key: key), into: staging, progress: TransferProgress(), logger: logger
                        )
                        if case .restored = outcome { return true }
                        return false
                    }
                }
                return try await group.reduce(into: [Bool]()) { $0.append($1) }
            }
            var problems = outcomes.contains(false) ? ["a concurrent restore did not restore"] : []
            for staging in stagings {
                problems += try TreeSnapshot(of: staging).differences(from: expected).map { "\(staging): \($0)" }
            }
            return problems
        }

        // Big and incompressible, so its bytes arrive in many pieces and the
        // cancellation lands in the middle of the transfer.
        let large = scratch.path.appending("large-tree")
        let largeBytes = try Self.writeIncompressibleTree(to: large)
        let largeKey = try CacheKey("conformance-large-\(UInt32.random(in: 0 ... .max))")
        try await subject.seed(largeKey, from: large)

        await check("stops when cancelled during the transfer") {
            let staging = try scratch.makeDirectory("cancelled")
            let canceller = Canceller()
            let progress = TransferProgress(onChange: { snapshot in
                if snapshot.completed > 0 { canceller.cancel(atByte: snapshot.completed) }
            })
            let restore = Task {
                try await source.restore(RestoreRequest(key: largeKey), into: staging, progress: progress, logger: logger)
            }
            canceller.watch(restore)
            let result = await restore.result
            guard let cancelledAt = canceller.cancelledAt else {
                return ["reported no bytes before it returned \(result), so it could not be cancelled during the transfer"]
            }
            var problems: [String] = []
            switch result {
            case .success(let outcome):
                problems.append("returned \(outcome) after it was cancelled at byte \(cancelledAt), instead of throwing CancellationError")
            case .failure(let error) where !(error is CancellationError):
                problems.append("threw \(error) after it was cancelled at byte \(cancelledAt), instead of CancellationError")
            case .failure:
                break
            }
            let completed = progress.snapshot.completed
            if completed >= largeBytes {
                problems.append("went on to transfer \(completed) bytes after it was cancelled at byte \(cancelledAt)")
            }
            return problems
        }

        if let sink = subject.sink {
            await check("publishes create-only") {
                guard let packer = subject.packer else { return ["a subject with a sink must provide a packer"] }
                let fresh = try CacheKey("conformance-published-\(UInt32.random(in: 0 ... .max))")
                var problems: [String] = []
                if try await sink.contains(fresh, logger: logger) { problems.append("contains() is true before publishing") }
                let file = scratch.path.appending("published.tar.zst")
                let manifest = try await packer.pack(tree, key: fresh, to: file, logger: logger)
                let archive = PackedArchive(file: file, manifest: manifest)
                let first = try await sink.publish(archive, logger: logger)
                if first != .published { problems.append("first publish answered \(first)") }
                if try await !sink.contains(fresh, logger: logger) { problems.append("contains() is false after publishing") }
                let second = try await sink.publish(archive, logger: logger)
                if second != .exists { problems.append("second publish answered \(second), expected exists") }
                let staging = try scratch.makeDirectory("published")
                let outcome = try await source.restore(
                    RestoreRequest(key: fresh), into: staging, progress: TransferProgress(), logger: logger
                )
                guard case .restored = outcome else { return problems + ["restoring the published key gave \(outcome)"] }
                return problems + (try TreeSnapshot(of: staging).differences(from: expected))
            }
        }

        if !failures.isEmpty {
            throw ConformanceFailure(source: source.name, failures: failures)
        }
    }
}

extension CacheSourceConformance {
    /// Writes four files of 1 MiB of random bytes; returns their total size.
    static func writeIncompressibleTree(to root: FilePath) throws -> Int64 {
        try FileManager.default.createDirectory(atPath: root.string, withIntermediateDirectories: true)
        var generator = SystemRandomNumberGenerator()
        let size = 1 << 20
        var words = [UInt64](repeating: 0, count: size / 8)
        for index in 0..<4 {
            for word in words.indices { words[word] = generator.next() }
            try words.withUnsafeBytes { try Data($0).write(to: URL(fileURLWithPath: root.appending("blob-\(index).bin").string)) }
        }
        return Int64(4 * size)
    }
}

/// Cancels a restore the first time its progress reports bytes, from whichever task
/// reports them.
private final class Canceller: Sendable {
    private struct State {
        var task: Task<SourceRestoreOutcome, any Error>?
        var cancelledAt: Int64?
    }

    private let state = Mutex(State())

    /// The byte count at which the restore was cancelled, if it was.
    var cancelledAt: Int64? { state.withLock { $0.cancelledAt } }

    func watch(_ task: Task<SourceRestoreOutcome, any Error>) {
        let cancelNow = state.withLock { state in
            state.task = task
            return state.cancelledAt != nil
        }
        if cancelNow { task.cancel() }
    }

    func cancel(atByte completed: Int64) {
        let task = state.withLock { state -> Task<SourceRestoreOutcome, any Error>? in
            guard state.cancelledAt == nil else { return nil }
            state.cancelledAt = completed
            return state.task
        }
        task?.cancel()
    }
}

/// The checks a source failed.
public struct ConformanceFailure: Error, CustomStringConvertible {
    public var source: String
    public var failures: [String]

    public var description: String {
        "\(source) fails \(failures.count) conformance check(s):\n- " + failures.joined(separator: "\n- ")
    }
}

/// A directory under the system's temporary folder, removed by ``remove()``.
public struct TemporaryDirectory: Sendable {
    public let path: FilePath

    /// Creates a new, empty directory.
    public init(prefix: String = "cachetiers") throws {
        let base = ProcessInfo.processInfo.environment["TMPDIR"] ?? "/tmp"
        let path = FilePath(base).appending("\(prefix)-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(atPath: path.string, withIntermediateDirectories: true)
        self.path = path
    }

    /// Creates a subdirectory and returns its path.
    public func makeDirectory(_ name: String) throws -> FilePath {
        let sub = path.appending(name)
        try FileManager.default.createDirectory(atPath: sub.string, withIntermediateDirectories: true)
        return sub
    }

    public func remove() {
        try? FileManager.default.removeItem(atPath: path.string)
    }
}
