import ArgumentParser
import CacheTiers
import Foundation
import SystemPackage

struct PackCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pack",
        abstract: "Pack DIR into a zstd-compressed tar archive and write FILE.manifest.json beside it."
    )

    @Argument(help: "The directory to pack.")
    var directory: String

    @Option(name: .long, help: "The archive to write.")
    var output: String

    // Unconditional parsing, so a negative value (`--level -5`) is a value, not an option.
    @Option(
        name: .long, parsing: .unconditional,
        help: "zstd level: \(ZstdCodec.levelRange). Level 1 is the cache-transfer sweet spot."
    )
    var level: Int = 1

    @Option(name: .long, parsing: .unconditional, help: "Compression threads; 0 = one per core.")
    var threads: Int = 0

    @Option(name: .long, help: "The cache key recorded in the manifest (default: from the file name).")
    var key: String?

    @Flag(name: .long, help: "Owner 0:0 on every entry, so the same tree gives the same bytes.")
    var deterministic = false

    @Option(
        name: .long, parsing: .unconditional,
        help: "Stamp this modification time (seconds since 1970, negative before) on every entry."
    )
    var mtime: Int64?

    @Flag(
        name: .long,
        help: "Leave out, and report, entries every restore would refuse (absolute symlinks, symlinks leaving DIR, paths over 4095 bytes) instead of failing."
    )
    var skipUnsafe = false

    @Flag(name: .long, help: "Print the summary as JSON.")
    var json = false

    @OptionGroup var logging: LoggingOptions

    func validate() throws {
        guard ZstdCodec.isValidLevel(level) else {
            throw ValidationError("--level \(level) is out of range; use \(ZstdCodec.levelRange)")
        }
        guard threads >= 0 else { throw ValidationError("--threads must be 0 (one per core) or more") }
        if let key { _ = try keyValue(key) }
    }

    private func keyValue(_ raw: String) throws -> CacheKey {
        do {
            return try CacheKey(raw)
        } catch {
            throw ValidationError("--key: \(error)")
        }
    }

    private var defaultKey: CacheKey {
        var name = FilePath(output).lastComponent?.string ?? "archive"
        for suffix in [".tar.zst", ".tzst", ".zst", ".tar"] where name.hasSuffix(suffix) {
            name.removeLast(suffix.count)
            break
        }
        return (try? CacheKey(name)) ?? (try! CacheKey("archive"))
    }

    func run() async throws {
        let logger = logging.makeLogger()
        let key = try self.key.map(keyValue) ?? defaultKey
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw CommandFailure("pack: \(directory) is not a directory; give the directory to archive")
        }
        guard !output.isEmpty else {
            throw UsageFailure("pack: --output needs the archive's file name, e.g. \(key).tar.zst")
        }
        if FileManager.default.fileExists(atPath: output, isDirectory: &isDirectory), isDirectory.boolValue {
            let example = FilePath(output).appending("\(key).tar.zst")
            throw UsageFailure("pack: --output \(output) is a directory; give the archive's file name, e.g. \(example)")
        }
        let archive = FilePath(output)
        if ProtectedPath.isInside(archive, FilePath(directory)) {
            throw UsageFailure("pack: --output \(output) is inside \(directory), the folder being packed; write it elsewhere")
        }
        let packer = ArchivePacker(
            codec: ZstdCodec(level: level, threads: threads),
            options: .init(deterministic: deterministic, fixedModificationTime: mtime, skipUnsafeEntries: skipUnsafe)
        )
        let summary: ArchivePacker.Summary
        do {
            summary = try await packer.packWithSummary(FilePath(directory), key: key, to: archive, logger: logger)
        } catch {
            throw CommandFailure("pack: \(error)")
        }
        let manifestPath = output + ".manifest.json"
        do {
            let partial = manifestPath + ".partial"
            try summary.manifest.jsonData().write(to: URL(fileURLWithPath: partial))
            try FileManager.default.moveItemReplacing(at: partial, to: manifestPath)
        } catch {
            try? FileManager.default.removeItem(atPath: output)
            throw CommandFailure("pack: cannot write \(manifestPath): \(error)")
        }

        let manifest = summary.manifest
        let elapsed = summary.duration.inSeconds
        let ratio = manifest.archiveSize > 0 ? Double(manifest.uncompressedSize) / Double(manifest.archiveSize) : 0
        if json {
            let report = PackReport(
                archive: output, manifest: manifestPath, key: manifest.key.rawValue, entries: manifest.entryCount,
                bytesIn: manifest.uncompressedSize, bytesOut: manifest.archiveSize, ratio: ratio, seconds: elapsed,
                sha256: manifest.archiveSHA256, level: level, skipped: summary.skipped,
                skippedUnsafe: summary.skippedUnsafe
            )
            print(try report.prettyJSON())
        } else {
            print(
                "packed \(manifest.entryCount) entries: \(formatBytes(manifest.uncompressedSize)) in, "
                    + "\(formatBytes(manifest.archiveSize)) out (ratio \(String(format: "%.2f", ratio))) "
                    + "in \(String(format: "%.2f", elapsed)) s at zstd level \(level)"
            )
            print("sha256 \(manifest.archiveSHA256)")
            print("wrote \(output) and \(manifestPath)")
            if !summary.skipped.isEmpty {
                print("skipped \(summary.skipped.count) special files (sockets, FIFOs, devices), e.g. \(summary.skipped[0])")
            }
            if let first = summary.skippedUnsafe.first {
                print("skipped \(summary.skippedUnsafe.count) entries a restore would refuse, e.g. \(first.reason)")
            }
        }
    }
}

struct PackReport: Encodable {
    var archive: String
    var manifest: String
    var key: String
    var entries: Int
    var bytesIn: Int64
    var bytesOut: Int64
    var ratio: Double
    var seconds: Double
    var sha256: String
    var level: Int
    var skipped: [String]
    var skippedUnsafe: [ArchivePacker.SkippedEntry]
}

extension FileManager {
    /// Renames `source` over `destination` (rename(2) replaces atomically).
    func moveItemReplacing(at source: String, to destination: String) throws {
        guard rename(source, destination) == 0 else {
            throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: destination])
        }
    }
}
