import CacheTiers
import CacheTiersTesting
import Foundation
import SystemPackage
import Testing

/// `cachetiers pack` and `cachetiers unpack` as an operator runs them.
@Suite struct PackUnpackCommandTests {
    @Test func packThenUnpackRestoresTheTree() async throws {
        let scratch = try TemporaryDirectory(prefix: "cli")
        defer { scratch.remove() }
        let tree = scratch.path.appending("tree")
        try SampleTree.write(to: tree)
        let archive = scratch.path.appending("deps.tar.zst").string

        let pack = try await Fixtures.cli(["pack", tree.string, "--output", archive, "--json"])
        #expect(pack.status == 0, "\(pack.stderr)")
        let summary = try #require(try JSONSerialization.jsonObject(with: Data(pack.stdout.utf8)) as? [String: Any])
        for field in ["entries", "bytesIn", "bytesOut", "ratio", "seconds", "sha256"] {
            #expect(summary[field] != nil, "--json lacks \(field)")
        }
        let manifest = try CacheManifest(jsonData: Data(contentsOf: URL(fileURLWithPath: archive + ".manifest.json")))
        #expect(manifest.archiveSHA256 == summary["sha256"] as? String)
        #expect(manifest.key.rawValue == "deps")

        let destination = scratch.path.appending("restored").string
        let unpack = try await Fixtures.cli(["unpack", archive, "--into", destination])
        #expect(unpack.status == 0, "\(unpack.stderr)")
        #expect(unpack.stdout.contains("verified against"))
        #expect(try TreeSnapshot(of: FilePath(destination)).differences(from: TreeSnapshot(of: tree), comparingTimes: true) == [])
    }

    @Test func aBadArchiveExitsOneWithAOneLineReasonAndTouchesNothing() async throws {
        let scratch = try TemporaryDirectory(prefix: "cli")
        defer { scratch.remove() }
        let destination = scratch.path.appending("node_modules")
        try SampleTree.write(to: destination, seed: 4, files: 3)
        let before = try TreeSnapshot(of: destination)
        let archive = scratch.path.appending("junk.tar.zst")
        try Data([0x28, 0xB5, 0x2F, 0xFD] + Array(repeating: 0x42, count: 200)).write(to: URL(fileURLWithPath: archive.string))

        let result = try await Fixtures.cli(["unpack", archive.string, "--into", destination.string])
        #expect(result.status == 1)
        #expect(result.stderr.split(separator: "\n").count == 1, "one line: \(result.stderr)")
        #expect(result.stderr.contains("corrupt") && result.stderr.contains("unchanged"))
        #expect(try TreeSnapshot(of: destination).differences(from: before) == [])
    }

    @Test func aWrongChecksumExitsOne() async throws {
        let scratch = try TemporaryDirectory(prefix: "cli")
        defer { scratch.remove() }
        let tree = scratch.path.appending("tree")
        try SampleTree.write(to: tree)
        let archive = scratch.path.appending("a.tar.zst").string
        #expect(try await Fixtures.cli(["pack", tree.string, "--output", archive]).status == 0)
        let result = try await Fixtures.cli([
            "unpack", archive, "--into", scratch.path.appending("out").string, "--sha256", String(repeating: "0", count: 64),
        ])
        #expect(result.status == 1)
        #expect(result.stderr.contains("SHA-256"))
        #expect(!FileManager.default.fileExists(atPath: scratch.path.appending("out").string))
    }

    /// A copy cut at the size the file had when it was listed is a file that never
    /// existed; in a shared cache every VM would get it.
    @Test func aFileThatGrowsWhilePackedFailsThePackNamingIt() async throws {
        let scratch = try TemporaryDirectory(prefix: "cli")
        defer { scratch.remove() }
        let tree = scratch.path.appending("tree")
        try SampleTree.write(to: tree, seed: 2, files: 3)
        let growing = tree.appending("server.log").string
        // Sparse, so it is quick to make and reading it leaves the appender time to append.
        #expect(try await Fixtures.run(["truncate", "-s", "256M", growing]).status == 0)
        let appender = Process()
        appender.executableURL = URL(fileURLWithPath: "/bin/sh")
        appender.arguments = ["-c", "while :; do printf 'line\\n' >> '\(growing)'; done"]
        try appender.run()
        defer {
            // SIGKILL: a shell started from a test thread may have SIGTERM blocked.
            kill(appender.processIdentifier, SIGKILL)
            appender.waitUntilExit()
        }
        while try Self.size(of: growing) <= 256 << 20 {
            try await Task.sleep(for: .milliseconds(5))
        }
        let archive = scratch.path.appending("a.tar.zst").string

        let result = try await Fixtures.cli(["pack", tree.string, "--output", archive])
        #expect(result.status == 1, "\(result.stdout)")
        #expect(result.stderr.split(separator: "\n").count == 1, "one line: \(result.stderr)")
        #expect(result.stderr.contains("server.log") && result.stderr.contains("changed while it was being packed"), "\(result.stderr)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: scratch.path.string) == ["tree"])
    }

    @Test func packRefusesAnAbsoluteSymlinkAndSkipsItWhenAsked() async throws {
        let scratch = try TemporaryDirectory(prefix: "cli")
        defer { scratch.remove() }
        let tree = scratch.path.appending("tree")
        try SampleTree.write(to: tree, seed: 3, files: 3)
        try FileManager.default.createSymbolicLink(atPath: tree.appending("linked").string, withDestinationPath: "/home/dev/src/linked")
        let archive = scratch.path.appending("a.tar.zst").string

        let refused = try await Fixtures.cli(["pack", tree.string, "--output", archive])
        #expect(refused.status == 1)
        #expect(refused.stderr.split(separator: "\n").count == 1, "one line: \(refused.stderr)")
        #expect(refused.stderr.contains("'linked'") && refused.stderr.contains("/home/dev/src/linked"), "\(refused.stderr)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: scratch.path.string) == ["tree"])

        let skipped = try await Fixtures.cli(["pack", tree.string, "--output", archive, "--skip-unsafe", "--json"])
        #expect(skipped.status == 0, "\(skipped.stderr)")
        let summary = try #require(try JSONSerialization.jsonObject(with: Data(skipped.stdout.utf8)) as? [String: Any])
        let entries = try #require(summary["skippedUnsafe"] as? [[String: Any]])
        #expect(entries.map { $0["path"] as? String } == ["linked"])
        let restored = scratch.path.appending("restored").string
        let unpack = try await Fixtures.cli(["unpack", archive, "--into", restored])
        #expect(unpack.status == 0, "\(unpack.stderr)")
        #expect((try? FileManager.default.destinationOfSymbolicLink(atPath: restored + "/linked")) == nil)
    }

    static func size(of path: String) throws -> Int64 {
        var info = stat()
        guard lstat(path, &info) == 0 else { throw FixtureError("cannot stat \(path): \(String(cString: strerror(errno)))") }
        return Int64(info.st_size)
    }

    /// The documented bound on an unpack's memory, whatever the archive: 64 MiB plus
    /// the zstd window its frames declare.
    static func memoryBound(of archive: String) throws -> Int64 {
        64 << 20 + (try zstdWindowSize(of: archive))
    }

    /// The window size the first zstd frame of `archive` declares.
    static func zstdWindowSize(of archive: String) throws -> Int64 {
        let handle = try FileHandle(forReadingFrom: URL(fileURLWithPath: archive))
        defer { try? handle.close() }
        let header = [UInt8](try handle.read(upToCount: 6) ?? Data())
        guard header.count == 6, header[0...3] == [0x28, 0xB5, 0x2F, 0xFD], header[4] & 0x20 == 0 else {
            throw FixtureError("\(archive) does not start with a zstd frame with a window descriptor")
        }
        let exponent = Int64(header[5] >> 3)
        let base: Int64 = 1 << (10 + exponent)
        return base + base / 8 * Int64(header[5] & 7)
    }

    /// `(cat HEAD; head -c ZEROS /dev/zero) | zstd --long=27`: a tar start followed by
    /// zeros, compressed with the largest window a restore accepts.
    static func zeroBomb(_ head: [UInt8], zeros: Int64, to archive: String) async throws {
        let prefix = archive + ".head"
        try Data(head).write(to: URL(fileURLWithPath: prefix))
        defer { try? FileManager.default.removeItem(atPath: prefix) }
        let made = try await Fixtures.run([
            "sh", "-c", "(cat '\(prefix)'; head -c \(zeros) /dev/zero) | zstd -q -1 --long=27 -o '\(archive)'",
        ])
        guard made.status == 0 else { throw FixtureError("zstd failed: \(made.stderr)") }
    }

    /// A pax record `"<len> key=value\n"`.
    static func paxRecord(_ key: String, _ value: String) -> [UInt8] {
        let body = " \(key)=\(value)\n"
        var length = body.utf8.count + 1
        while String(length).utf8.count + body.utf8.count != length { length += 1 }
        return Array("\(length)\(body)".utf8)
    }

    /// Hostile archives a few kilobytes or megabytes long that decompress to gigabytes:
    /// refused or restored, an unpack stays within the documented memory bound.
    @Test(arguments: ["pax size of 100 GB", "100 frames of 1 GiB", "2 GiB on a directory"])
    func aDecompressionBombStaysWithinTheMemoryBound(_ shape: String) async throws {
        let scratch = try TemporaryDirectory(prefix: "bomb")
        defer { scratch.remove() }
        let archive = scratch.path.appending("bomb.tar.zst").string
        var expectedStatus: Int32 = 1
        switch shape {
        case "pax size of 100 GB":
            var tar = CraftedTar()
            tar.add("PaxHeaders/big.bin", kind: .pax, contents: Self.paxRecord("size", "100000000000"))
            tar.add("big.bin")
            try await Self.zeroBomb(tar.bytes, zeros: 1 << 30, to: archive)
        case "100 frames of 1 GiB":
            let frame = archive + ".frame"
            try await Self.zeroBomb([], zeros: 1 << 30, to: frame)
            let made = try await Fixtures.run(["sh", "-c", "for i in $(seq 100); do cat '\(frame)'; done > '\(archive)'"])
            #expect(made.status == 0, "\(made.stderr)")
            try FileManager.default.removeItem(atPath: frame)
        default:
            var tar = CraftedTar()
            tar.add("PaxHeaders/dir", kind: .pax, contents: Self.paxRecord("size", "\(2 << 30)"))
            tar.add("dir/", kind: .directory, mode: 0o755)
            var end = CraftedTar()
            end.end()
            let head = scratch.path.appending("end.bin").string
            try Data(end.bytes).write(to: URL(fileURLWithPath: head))
            // The directory's 2 GiB of data, then the end of the archive.
            let prefix = archive + ".head"
            try Data(tar.bytes).write(to: URL(fileURLWithPath: prefix))
            let made = try await Fixtures.run([
                "sh", "-c", "(cat '\(prefix)'; head -c \(2 << 30) /dev/zero; cat '\(head)') | zstd -q -1 --long=27 -o '\(archive)'",
            ])
            #expect(made.status == 0, "\(made.stderr)")
            try FileManager.default.removeItem(atPath: prefix)
            try FileManager.default.removeItem(atPath: head)
            expectedStatus = 0
        }
        let destination = scratch.path.appending("restored").string

        let run = try await Fixtures.cliMeasuringMemory(["unpack", archive, "--into", destination])
        #expect(run.status == expectedStatus, "\(shape): \(run.stderr)")
        if expectedStatus != 0 {
            #expect(run.stderr.contains("rejected"), "\(shape): \(run.stderr)")
            #expect(!FileManager.default.fileExists(atPath: destination))
        }
        let bound = try Self.memoryBound(of: archive)
        #expect(run.peakMemory < bound, "\(shape): peak RSS \(run.peakMemory >> 20) MiB, bound \(bound >> 20) MiB")
    }

    @Test func aOneGiBFileRestoresWithinTheMemoryBound() async throws {
        let scratch = try TemporaryDirectory(prefix: "bomb")
        defer { scratch.remove() }
        let tree = try scratch.makeDirectory("tree")
        try SampleTree.write(to: tree, seed: 9, files: 3)
        #expect(try await Fixtures.run(["truncate", "-s", "1G", tree.appending("zeros.bin").string]).status == 0)
        let destination = try await Self.packAndUnpackWithinTheMemoryBound(tree, in: scratch)
        #expect(try Self.size(of: destination + "/zeros.bin") == 1 << 30)
    }

    /// Packs `tree` with the real command, unpacks it measuring the child's peak RSS,
    /// and expects success within 64 MiB plus the archive's window.
    /// - Returns: the restored folder.
    static func packAndUnpackWithinTheMemoryBound(_ tree: FilePath, in scratch: TemporaryDirectory) async throws -> String {
        let archive = scratch.path.appending("packed.tar.zst").string
        let pack = try await Fixtures.cli(["pack", tree.string, "--output", archive])
        #expect(pack.status == 0, "\(pack.stderr)")
        let destination = scratch.path.appending("restored").string
        let run = try await Fixtures.cliMeasuringMemory(["unpack", archive, "--into", destination])
        #expect(run.status == 0, "\(run.stderr)")
        let bound = try memoryBound(of: archive)
        #expect(run.peakMemory < bound, "peak RSS \(run.peakMemory >> 20) MiB, bound \(bound >> 20) MiB")
        return destination
    }

    /// Files just under the writer pool's per-file limit: a worker's batch of 32 of them
    /// once weighed 32 MiB outside the queue's bound (78 MiB peak against 66).
    @Test func manyFilesJustUnderAMiBRestoreWithinTheMemoryBound() async throws {
        let scratch = try TemporaryDirectory(prefix: "mib")
        defer { scratch.remove() }
        let tree = try scratch.makeDirectory("tree")
        var random = SystemRandomNumberGenerator()
        let contents = Data((0..<((1 << 20) - 1)).map { _ in UInt8.random(in: 0...255, using: &random) })
        for index in 0..<300 {
            try contents.write(to: URL(fileURLWithPath: tree.appending("f\(index).bin").string))
        }
        _ = try await Self.packAndUnpackWithinTheMemoryBound(tree, in: scratch)
    }

    @Test func theNextUnpackSweepsTheStagingOfAKilledOne() async throws {
        let scratch = try TemporaryDirectory(prefix: "interrupted")
        defer { scratch.remove() }
        let tree = try scratch.makeDirectory("tree")
        try SampleTree.write(to: tree, seed: 4, files: 10)
        let archive = scratch.path.appending("a.tar.zst").string
        #expect(try await Fixtures.cli(["pack", tree.string, "--output", archive]).status == 0)
        // The remains of an unpack killed with SIGKILL, by a process that is gone.
        let dead = try Fixtures.processIDOfAFinishedProcess()
        let leftover = scratch.path.appending(".restored.staging-\(dead)@\(Fixtures.hostName)-abc123")
        try SampleTree.write(to: leftover, seed: 5, files: 5)
        let result = try await Fixtures.cli(["unpack", archive, "--into", scratch.path.appending("restored").string])
        #expect(result.status == 0, "\(result.stderr)")
        let names = try FileManager.default.contentsOfDirectory(atPath: scratch.path.string).sorted()
        #expect(names == ["a.tar.zst", "a.tar.zst.manifest.json", "restored", "tree"], "the dead unpack's tree was swept: \(names)")
    }

    @Test func sigtermStopsAnUnpackAndRemovesItsStaging() async throws {
        let scratch = try TemporaryDirectory(prefix: "sigterm")
        defer { scratch.remove() }
        let tree = try await Fixtures.makeCorpus(in: scratch.path.appending("corpus"), files: 300, seed: 8)
        let archive = scratch.path.appending("a.tar.zst").string
        #expect(try await Fixtures.cli(["pack", tree.string, "--output", archive]).status == 0)
        let bytes = try Data(contentsOf: URL(fileURLWithPath: archive))
        // The archive comes through a FIFO the test feeds: the unpack is mid-stream
        // for as long as the test wants.
        let fifo = scratch.path.appending("stream.tar.zst").string
        #expect(mkfifo(fifo, 0o600) == 0)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Fixtures.cliPath)
        process.arguments = ["unpack", fifo, "--into", scratch.path.appending("restored").string]
        let stderr = Pipe()
        process.standardError = stderr
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        let pending = Thread.detachedRead(stderr.fileHandleForReading)
        let writer = try await Fixtures.offThePool { try FileHandle(forWritingTo: URL(fileURLWithPath: fifo)) }
        try writer.write(contentsOf: bytes.prefix(bytes.count / 2))
        func staged() throws -> Bool {
            try FileManager.default.contentsOfDirectory(atPath: scratch.path.string).contains { $0.hasPrefix(".restored.staging-") }
        }
        for _ in 0..<400 where try !staged() { try await Task.sleep(for: .milliseconds(25)) }
        #expect(try staged(), "the unpack is under way")
        process.terminate()
        // More bytes, so a read blocked on the FIFO returns and sees the cancellation.
        try? writer.write(contentsOf: bytes.dropFirst(bytes.count / 2).prefix(64 << 10))
        try? writer.close()
        let output = String(decoding: try await Fixtures.offThePool { pending.wait() }, as: UTF8.self)
        try await Fixtures.offThePool { process.waitUntilExit() }
        #expect(process.terminationStatus == 1, "\(output)")
        #expect(output.contains("unpack stopped by SIGTERM"), "\(output)")
        #expect(try !staged(), "no staging folder left behind")
        #expect(!FileManager.default.fileExists(atPath: scratch.path.appending("restored").string))
    }

    @Test(arguments: [
        ["unpack", "x.tar.zst"],
        ["pack", "dir"],
        ["pack", ".", "--output", "a.tar.zst", "--level", "42"],
        ["unpack", "x.tar.zst", "--into", "d", "--sha256", "abc"],
        ["no-such-command"],
    ])
    func usageErrorsExitTwo(_ arguments: [String]) async throws {
        let result = try await Fixtures.cli(arguments)
        #expect(result.status == 2, "\(arguments): \(result.stderr)")
        #expect(!result.stderr.isEmpty)
    }
}
