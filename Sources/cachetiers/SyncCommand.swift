import ArgumentParser
import CacheTiers
import Foundation
import Logging
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

struct SyncCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sync",
        abstract: "Copy every archive one tier holds and others lack, as it is: verified on arrival, create-only.",
        discussion: """
            Defaults: --from the config's first peer, gcs or directory tier; --to every other such tier that accepts \
            write-back. Progress on stderr, the summary on stdout. A second run while one is going says so and exits 0. \
            Exit 0 when everything was copied or nothing was missing, 1 when a copy failed, 2 on usage or config errors. \
            See Documentation/Replication.md.
            """
    )

    @Option(name: .long, help: "The JSON config whose tiers to sync (key and destination may be left out).")
    var config: String

    @Option(name: .long, help: "The tier to copy from (a tier name of the config).")
    var from: String?

    @Option(name: .long, help: "A tier to copy to; repeat for several.")
    var to: [String] = []

    @Flag(name: .long, help: "List what would be copied; copy nothing.")
    var dryRun = false

    @Flag(name: .long, help: "Print the summary as JSON.")
    var json = false

    @Option(name: .long, help: "A folder for the archives in flight, two at most (default: the system's temporary folder).")
    var scratch: String?

    @OptionGroup var logging: LoggingOptions

    func run() async throws {
        let logger = logging.makeLogger(label: "cachetiers.sync")
        let settings = try CacheTiersConfig.load(from: FilePath(config), purpose: .tiers)
        let selection: (source: CacheTiersConfig.Tier, targets: [CacheTiersConfig.Tier])
        do {
            selection = try settings.syncTiers(from: from, to: to)
        } catch {
            throw UsageFailure("sync: \(error)")
        }
        let scratch = FilePath(self.scratch ?? NSTemporaryDirectory())
        guard let lock = try SyncLock(in: scratch) else {
            FileHandle.standardError.write(Data(
                "cachetiers: sync: another sync is running (it holds \(SyncLock.path(in: scratch))); this one does nothing\n".utf8
            ))
            return
        }
        defer { lock.release() }

        let summary: TierSync.Summary
        do {
            summary = try await settings.withInventories(of: [selection.source] + selection.targets) { built in
                let sync = TierSync(
                    from: built.inventories[0], to: Array(built.inventories.dropFirst()),
                    options: .init(dryRun: dryRun, scratch: scratch), onEvent: Self.tell
                )
                return try await sync.run(logger: logger)
            }
        } catch {
            // A listing that cannot be read (the source or a target down, a refused token).
            throw CommandFailure("sync: \(error)")
        }
        if json {
            print(try summary.prettyJSON())
        } else {
            print(Self.describe(summary, from: selection.source.name))
        }
        if summary.failed > 0 { throw ExitCode(1) }
    }

    /// A progress line on stderr.
    @Sendable static func tell(_ event: TierSync.Event) {
        let line: String
        switch event {
        case .copying(let listing, let targets):
            line = "copying \(listing.key) (\(formatBytes(listing.size))) to \(targets.joined(separator: ", "))…"
        case .wouldCopy(let listing, let targets):
            line = "would copy \(listing.key) (\(formatBytes(listing.size))) to \(targets.joined(separator: ", "))"
        case .finished(let key, let record):
            switch record.outcome {
            case .published: line = "copied \(key) to \(record.tier)"
            case .exists: line = "\(key) was already on \(record.tier)"
            case .failed, .pending, .detached: line = "failed to copy \(key) to \(record.tier): \(record.error ?? "failed")"
            }
        }
        FileHandle.standardError.write(Data((line + "\n").utf8))
    }

    static func describe(_ summary: TierSync.Summary, from source: String) -> String {
        let time = String(format: "%.1f s", summary.seconds)
        if summary.dryRun {
            return "dry run from \(source): would copy \(summary.planned) (\(formatBytes(summary.plannedBytes))), already there \(summary.alreadyThere), in \(time)"
        }
        return "sync from \(source): copied \(summary.copied) (\(formatBytes(summary.bytes))), already there \(summary.alreadyThere), failed \(summary.failed), in \(time)"
    }
}

/// Keeps two syncs from overlapping (cron starting one while the last still runs):
/// `flock(2)` on a file in the scratch folder, released when the process ends however it
/// ends.
final class SyncLock {
    private let descriptor: Int32

    static func path(in folder: FilePath) -> FilePath {
        folder.appending("cachetiers-sync.lock")
    }

    /// Takes the lock; nil when another process holds it.
    init?(in folder: FilePath) throws {
        let path = Self.path(in: folder)
        let descriptor = open(path.string, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else {
            throw CommandFailure("sync: cannot open the lock file \(path): \(Errno(rawValue: errno)); pass another --scratch")
        }
        guard flock(descriptor, LOCK_EX | LOCK_NB) == 0 else {
            let failure = errno
            close(descriptor)
            if failure == EWOULDBLOCK { return nil }
            throw CommandFailure("sync: cannot lock \(path): \(Errno(rawValue: failure))")
        }
        self.descriptor = descriptor
    }

    func release() {
        close(descriptor)
    }
}
