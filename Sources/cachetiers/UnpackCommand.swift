import ArgumentParser
import CacheTiers
import Foundation
import SystemPackage

struct UnpackCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "unpack",
        abstract: "Unpack an archive into DIR safely and atomically: DIR is replaced only by a complete, verified tree.",
        discussion: """
            Reads zstd or plain tar archives made by `cachetiers pack` or by `tar --zstd -cf`. \
            Without --sha256, a FILE.manifest.json beside the archive is used to verify it when present.
            """
    )

    @Argument(help: "The archive to unpack.")
    var file: String

    @Option(name: .long, help: "The directory to restore; replaced atomically.")
    var into: String

    @Option(name: .long, help: "The archive's expected SHA-256 (hex); a mismatch fails and leaves DIR untouched.")
    var sha256: String?

    @Option(name: .long, parsing: .unconditional, help: "Threads writing small files beside the parser (0 = none).")
    var writerThreads = UnpackSession.Options.defaultWriterThreads

    @Flag(name: .long, help: "Print the summary as JSON.")
    var json = false

    @OptionGroup var logging: LoggingOptions

    func validate() throws {
        guard (0...16).contains(writerThreads) else { throw ValidationError("--writer-threads must be 0 to 16") }
        if let sha256, sha256.count != 64 || !sha256.allSatisfy(\.isHexDigit) {
            throw ValidationError("--sha256 must be 64 hexadecimal digits")
        }
    }

    func run() async throws {
        let logger = logging.makeLogger()
        guard FileManager.default.fileExists(atPath: file) else {
            throw CommandFailure("unpack: \(file) does not exist")
        }
        var expectedSHA = sha256
        var expectedSize: Int64?
        var verifiedBy = sha256 == nil ? "none" : "--sha256"
        let manifestPath = file + ".manifest.json"
        if sha256 == nil, let data = FileManager.default.contents(atPath: manifestPath) {
            do {
                let manifest = try CacheManifest(jsonData: data)
                expectedSHA = manifest.archiveSHA256
                expectedSize = manifest.archiveSize
                verifiedBy = manifestPath
            } catch {
                throw CommandFailure("unpack: \(manifestPath) is not a valid manifest (\(error)); pass --sha256 or remove it")
            }
        }
        do {
            _ = try DestinationStaging(destination: FilePath(into), protecting: ArchiveUnpacker.protectedPaths(for: FilePath(file)))
        } catch {
            throw UsageFailure("unpack: \(error.message)")
        }
        let started = ContinuousClock.now
        let unpacker = ArchiveUnpacker(
            options: .init(expectedSHA256: expectedSHA, expectedSize: expectedSize, writerThreads: writerThreads)
        )
        let summary: UnpackSummary
        // SIGINT or SIGTERM cancel the unpack, so its staging folder is removed.
        let unpack = Task { [file, into] in try await unpacker.unpack(file: FilePath(file), replacing: FilePath(into), logger: logger) }
        let interrupts = Interrupts(describe: { "\(into) is left as it was" }) { unpack.cancel() }
        do {
            summary = try await unpack.value
            interrupts.stop()
        } catch {
            interrupts.stop()
            if let signal = interrupts.interruptedBy {
                throw CommandFailure("unpack stopped by \(signal); \(into) is unchanged")
            }
            throw CommandFailure("unpack: \(error); \(into) is unchanged")
        }
        let seconds = (ContinuousClock.now - started).inSeconds
        if json {
            print(try UnpackReport(summary: summary, into: into, seconds: seconds, verifiedBy: verifiedBy).prettyJSON())
        } else {
            print(
                "unpacked \(summary.entries) entries (\(summary.files) files, \(formatBytes(summary.uncompressedBytes))) "
                    + "from \(formatBytes(summary.archiveBytes)) of \(summary.format) into \(into) in \(String(format: "%.2f", seconds)) s"
            )
            print("sha256 \(summary.archiveSHA256)" + (verifiedBy == "none" ? " (not verified: no manifest, no --sha256)" : " (verified against \(verifiedBy))"))
        }
    }
}

struct UnpackReport: Encodable {
    var summary: UnpackSummary
    var into: String
    var seconds: Double
    var verifiedBy: String
}
