import CacheTiers
import CacheTiersTesting
import Foundation
import Logging
import SystemPackage
import Testing

/// Pack and unpack against GNU tar, and the guarantees a restore gives on bad input.
@Suite struct ArchiveInteroperabilityTests {
    let logger = Logger(label: "test")

    @Test func gnuTarRestoresExactlyWhatWePack() async throws {
        let scratch = try TemporaryDirectory(prefix: "interop")
        defer { scratch.remove() }
        let tree = try await Fixtures.makeCorpus(in: scratch.path.appending("corpus"), files: 600)
        let archive = scratch.path.appending("ours.tar.zst")
        let manifest = try await ArchivePacker().pack(tree, key: CacheKey("interop"), to: archive, logger: logger)
        let out = try scratch.makeDirectory("gnu")
        let untar = try await Fixtures.run(["tar", "--zstd", "-xf", archive.string, "-C", out.string])
        #expect(untar.status == 0, "\(untar.stderr)")
        #expect(untar.stderr.isEmpty, "GNU tar warned: \(untar.stderr)")
        let expected = try TreeSnapshot(of: tree)
        #expect(try TreeSnapshot(of: out).differences(from: expected, comparingTimes: true) == [])
        #expect(manifest.entryCount == expected.entries.count)
        #expect(manifest.archiveSize == Int64(try Data(contentsOf: URL(fileURLWithPath: archive.string)).count))
    }

    @Test func weRestoreExactlyWhatGNUTarPacks() async throws {
        let scratch = try TemporaryDirectory(prefix: "interop")
        defer { scratch.remove() }
        let tree = try await Fixtures.makeCorpus(in: scratch.path.appending("corpus"), files: 600, seed: 2)
        // A hard link too, which make-corpus does not make.
        try FileManager.default.linkItem(
            atPath: tree.appending(".bin").string + "/../" + (try firstFile(in: tree)),
            toPath: tree.appending("hard-linked.js").string
        )
        let archive = scratch.path.appending("gnu.tar.zst")
        let tar = try await Fixtures.run(["tar", "--zstd", "-cf", archive.string, "-C", tree.string, "."])
        #expect(tar.status == 0, "\(tar.stderr)")
        let destination = scratch.path.appending("restored")
        let summary = try await ArchiveUnpacker().unpack(file: archive, replacing: destination, logger: logger)
        #expect(summary.hardLinks == 1)
        #expect(try TreeSnapshot(of: destination).differences(from: TreeSnapshot(of: tree), comparingTimes: true) == [])
    }

    @Test func pipedZstdMultiFrameOutputRestores() async throws {
        let scratch = try TemporaryDirectory(prefix: "interop")
        defer { scratch.remove() }
        let tree = scratch.path.appending("tree")
        try SampleTree.write(to: tree, files: 40)
        let archive = scratch.path.appending("piped.tar.zst")
        // -T0 with a small job size writes several frames; --long needs no extra flags to read.
        let pipe = try await Fixtures.run([
            "sh", "-c", "tar -cf - -C '\(tree.string)' . | zstd -q -T0 --long=27 -B256K -19 -o '\(archive.string)'",
        ])
        #expect(pipe.status == 0, "\(pipe.stderr)")
        let destination = scratch.path.appending("restored")
        _ = try await ArchiveUnpacker().unpack(file: archive, replacing: destination, logger: logger)
        #expect(try TreeSnapshot(of: destination).differences(from: TreeSnapshot(of: tree)) == [])
    }

    @Test func aPlainTarArchiveIsDetectedAndRestored() async throws {
        let scratch = try TemporaryDirectory(prefix: "interop")
        defer { scratch.remove() }
        let tree = scratch.path.appending("tree")
        try SampleTree.write(to: tree)
        let archive = scratch.path.appending("plain.tar")
        #expect(try await Fixtures.run(["tar", "-cf", archive.string, "-C", tree.string, "."]).status == 0)
        let destination = scratch.path.appending("restored")
        let summary = try await ArchiveUnpacker().unpack(file: archive, replacing: destination, logger: logger)
        #expect(summary.format == "identity")
        #expect(try TreeSnapshot(of: destination).differences(from: TreeSnapshot(of: tree)) == [])
    }

    @Test(arguments: [0, 1, 3])
    func everyWriterThreadCountRestoresTheSameTree(_ threads: Int) async throws {
        let scratch = try TemporaryDirectory(prefix: "writers")
        defer { scratch.remove() }
        let tree = try await Fixtures.makeCorpus(in: scratch.path.appending("corpus"), files: 400, seed: 6)
        let archive = scratch.path.appending("a.tar.zst")
        _ = try await ArchivePacker().pack(tree, key: CacheKey("writers"), to: archive, logger: logger)
        let destination = scratch.path.appending("restored")
        _ = try await ArchiveUnpacker(options: .init(writerThreads: threads)).unpack(file: archive, replacing: destination, logger: logger)
        #expect(try TreeSnapshot(of: destination).differences(from: TreeSnapshot(of: tree), comparingTimes: true) == [])
    }

    @Test func deterministicPacksAreByteIdentical() async throws {
        let scratch = try TemporaryDirectory(prefix: "determinism")
        defer { scratch.remove() }
        let first = scratch.path.appending("one")
        let second = scratch.path.appending("two")
        try SampleTree.write(to: first, seed: 5)
        try SampleTree.write(to: second, seed: 5)  // same contents, later mtimes
        let packer = ArchivePacker(options: .init(deterministic: true, fixedModificationTime: 1_700_000_000))
        let key = try CacheKey("same")
        let a = try await packer.pack(first, key: key, to: scratch.path.appending("a.tar.zst"), logger: logger)
        let b = try await packer.pack(second, key: key, to: scratch.path.appending("b.tar.zst"), logger: logger)
        #expect(a.archiveSHA256 == b.archiveSHA256)
        #expect(a.archiveSize == b.archiveSize)
    }

    @Test func aRestoreFromChunksOfAnySizeIsIdentical() async throws {
        let scratch = try TemporaryDirectory(prefix: "streaming")
        defer { scratch.remove() }
        let tree = try await Fixtures.makeCorpus(in: scratch.path.appending("corpus"), files: 300, seed: 3)
        let archive = scratch.path.appending("a.tar.zst")
        let manifest = try await ArchivePacker().pack(tree, key: CacheKey("stream"), to: archive, logger: logger)
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: archive.string)))

        // Network-shaped input: uneven chunks, some a single byte, arriving over time.
        var generator = SystemRandomNumberGenerator()
        var plan: [Int] = []
        var total = 0
        while total < bytes.count {
            let size = min(bytes.count - total, Bool.random(using: &generator) ? Int.random(in: 1...3) : Int.random(in: 1...70_000))
            plan.append(size)
            total += size
        }
        let sizes = plan
        let chunks = AsyncStream<[UInt8]> { continuation in
            Task {
                var offset = 0
                for size in sizes {
                    continuation.yield(Array(bytes[offset..<(offset + size)]))
                    offset += size
                    if offset % 7 == 0 { await Task.yield() }
                }
                continuation.finish()
            }
        }
        let staging = try scratch.makeDirectory("staging")
        let progress = TransferProgress()
        let summary = try await ArchiveUnpacker(options: .init(expectedSHA256: manifest.archiveSHA256))
            .unpack(chunks, into: staging, progress: progress)
        #expect(summary.archiveSHA256 == manifest.archiveSHA256)
        #expect(progress.snapshot.completed == Int64(bytes.count))
        #expect(try TreeSnapshot(of: staging).differences(from: TreeSnapshot(of: tree), comparingTimes: true) == [])
    }

    private func firstFile(in tree: FilePath) throws -> String {
        let enumerator = FileManager.default.enumerator(atPath: tree.string)!
        while let path = enumerator.nextObject() as? String {
            if path.hasSuffix(".js"), !path.hasPrefix(".bin") { return path }
        }
        throw FixtureError("no .js file in the corpus")
    }
}

/// Every kind of bad archive is refused, the destination is untouched, and nothing is
/// written outside it.
@Suite struct SafeExtractionTests {
    let logger = Logger(label: "test")

    /// A scratch folder with a destination holding a tree, and a sibling that must stay empty.
    struct Setting {
        let scratch: TemporaryDirectory
        let destination: FilePath
        let outside: FilePath
        let before: TreeSnapshot

        init() throws {
            scratch = try TemporaryDirectory(prefix: "safety")
            let work = try scratch.makeDirectory("work")
            destination = work.appending("node_modules")
            try SampleTree.write(to: destination, seed: 3, files: 4)
            before = try TreeSnapshot(of: destination)
            outside = try scratch.makeDirectory("outside")
        }

        /// Checks the promises: destination as it was, no staging left, nothing outside.
        func expectUntouched() throws -> [String] {
            var problems = try TreeSnapshot(of: destination).differences(from: before)
            let siblings = try FileManager.default.contentsOfDirectory(atPath: destination.removingLastComponent().string)
            if siblings != ["node_modules"] { problems.append("left behind: \(siblings)") }
            let escaped = try FileManager.default.contentsOfDirectory(atPath: outside.string)
            if !escaped.isEmpty { problems.append("written outside: \(escaped)") }
            let top = try FileManager.default.contentsOfDirectory(atPath: scratch.path.string).sorted()
            if top != ["outside", "work"] { problems.append("written beside the work folder: \(top)") }
            return problems
        }
    }

    static let hostile: [(String, @Sendable (inout CraftedTar) -> Void)] = [
        ("absolute path", { $0.add("/tmp/cachetiers-evil", contents: Array("x".utf8)) }),
        ("dot-dot component", { $0.add("../../outside/evil", contents: Array("x".utf8)) }),
        ("dot-dot in the middle", { $0.add("pkg/../../../outside/evil", contents: Array("x".utf8)) }),
        ("write through a symlink to outside", {
            $0.add("link", kind: .symlink, link: "../../outside")
            $0.add("link/evil", contents: Array("x".utf8))
        }),
        ("write through an inner symlink", {
            $0.add("pkg/", kind: .directory, mode: 0o755)
            $0.add("pkg/up", kind: .symlink, link: "..")
            $0.add("pkg/up/../../outside/evil", contents: Array("x".utf8))
        }),
        ("file below a symlink to a directory inside", {
            $0.add("real/", kind: .directory, mode: 0o755)
            $0.add("alias", kind: .symlink, link: "real")
            $0.add("alias/evil", contents: Array("x".utf8))
        }),
        ("absolute symlink", { $0.add("etc", kind: .symlink, link: "/etc") }),
        ("symlink escaping the tree", { $0.add("a/b", kind: .symlink, link: "../../escape") }),
        ("symlink climbing after descending", { $0.add("a", kind: .symlink, link: "b/../../x") }),
        ("hard link outside", { $0.add("passwd", kind: .hardLink, link: "/etc/passwd") }),
        ("hard link to a path not in the archive", { $0.add("copy", kind: .hardLink, link: "../outside/x") }),
        ("character device", { $0.add("null", kind: .characterDevice) }),
        ("block device", { $0.add("sda", kind: .blockDevice) }),
        ("FIFO", { $0.add("pipe", kind: .fifo) }),
    ]

    @Test(arguments: 0..<hostile.count)
    func hostileEntriesAreRejected(_ index: Int) async throws {
        let (name, build) = Self.hostile[index]
        let setting = try Setting()
        defer { setting.scratch.remove() }
        var tar = CraftedTar()
        tar.add("ok.js", contents: Array("fine\n".utf8))
        build(&tar)
        tar.add("after.js", contents: Array("after\n".utf8))
        tar.end()
        let archive = setting.scratch.path.appending("hostile.tar.zst")
        try tar.write(to: archive)
        defer { try? FileManager.default.removeItem(atPath: archive.string) }

        let error = await #expect(throws: UnpackError.self, "\(name)") {
            _ = try await ArchiveUnpacker().unpack(file: archive, replacing: setting.destination, logger: logger)
        }
        #expect(error?.kind == .rejected, "\(name): \(String(describing: error))")
        #expect(error?.message.contains("rejected") == true, "\(name): \(String(describing: error))")
        try? FileManager.default.removeItem(atPath: archive.string)
        #expect(try setting.expectUntouched() == [], "\(name)")
    }

    @Test func setuidAndSetgidBitsAreStripped() async throws {
        let setting = try Setting()
        defer { setting.scratch.remove() }
        var tar = CraftedTar()
        tar.add("bin/tool", contents: Array("#!/bin/sh\n".utf8), mode: 0o6755)
        tar.add("sticky/", kind: .directory, mode: 0o1777)
        tar.end()
        let archive = setting.scratch.path.appending("suid.tar.zst")
        try tar.write(to: archive)
        let restored = setting.scratch.path.appending("restored")
        _ = try await ArchiveUnpacker().unpack(file: archive, replacing: restored, logger: logger)
        let snapshot = try TreeSnapshot(of: restored)
        #expect(snapshot.entries["bin/tool"] == .file(mode: 0o755, contents: Array("#!/bin/sh\n".utf8)))
        #expect(snapshot.entries["sticky"] == .directory(mode: 0o777))
    }

    @Test func readOnlyAndRevisitedDirectoriesRestoreWithTheirModesAndTimes() async throws {
        let setting = try Setting()
        defer { setting.scratch.remove() }
        var tar = CraftedTar()
        tar.add("ro/", kind: .directory, mode: 0o555)
        tar.add("ro/inside.js", contents: Array("a\n".utf8))
        tar.add("a/", kind: .directory, mode: 0o750)
        tar.add("b/x.js", contents: Array("x\n".utf8))
        tar.add("a/late.js", contents: Array("late\n".utf8))  // the stream comes back to a/
        tar.add("ro/later.js", contents: Array("later\n".utf8))  // and into the read-only one
        let (restored, snapshot) = try await restore(tar, in: setting)
        #expect(snapshot.entries["ro"] == .directory(mode: 0o555))
        #expect(snapshot.entries["a"] == .directory(mode: 0o750))
        #expect(snapshot.entries["ro/later.js"] == .file(mode: 0o644, contents: Array("later\n".utf8)))
        #expect(snapshot.modificationTimes["ro"] == 1_700_000_000)
        #expect(snapshot.modificationTimes["a"] == 1_700_000_000)
        try? FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: restored.appending("ro").string)
    }

    /// Ends `tar`, unpacks it into a fresh folder and reads back what was restored.
    func restore(_ tar: CraftedTar, in setting: Setting) async throws -> (FilePath, TreeSnapshot) {
        var tar = tar
        tar.end()
        let archive = setting.scratch.path.appending("crafted.tar")
        try tar.write(to: archive, compressed: false)
        let restored = setting.scratch.path.appending("restored")
        _ = try await ArchiveUnpacker().unpack(file: archive, replacing: restored, logger: logger)
        return (restored, try TreeSnapshot(of: restored))
    }

    /// Archives may repeat a path (tar -r appends); the last entry wins, as with GNU tar,
    /// even while the earlier one is still queued for a writer thread.
    @Test(arguments: [0, 1, 3])
    func aRepeatedPathEndsWithTheLastEntry(writerThreads: Int) async throws {
        let setting = try Setting()
        defer { setting.scratch.remove() }
        var tar = CraftedTar()
        tar.add("pkg/", kind: .directory, mode: 0o755)
        tar.add("pkg/index.js", contents: Array("first\n".utf8))
        tar.add("pkg/index.js", contents: Array("second\n".utf8), mode: 0o600)
        tar.add("pkg/link", contents: Array("a file first\n".utf8))
        tar.add("pkg/link", kind: .symlink, link: "index.js")
        tar.add("pkg/was-link", kind: .symlink, link: "index.js")
        tar.add("pkg/was-link", contents: Array("now a file\n".utf8))
        for index in 0..<100 {
            tar.add("pkg/lib/file-\(index).js", contents: Array("v1 \(index)\n".utf8))
        }
        for index in 0..<100 {
            tar.add("pkg/lib/file-\(index).js", contents: Array("v2 \(index)\n".utf8))
        }
        tar.add("pkg/index.js", contents: Array("third\n".utf8))
        tar.end()
        let archive = setting.scratch.path.appending("repeated.tar")
        try tar.write(to: archive, compressed: false)
        let restored = setting.scratch.path.appending("restored")
        _ = try await ArchiveUnpacker(options: .init(writerThreads: writerThreads))
            .unpack(file: archive, replacing: restored, logger: logger)
        let snapshot = try TreeSnapshot(of: restored)
        #expect(snapshot.entries["pkg/index.js"] == .file(mode: 0o644, contents: Array("third\n".utf8)))
        #expect(snapshot.entries["pkg/link"] == .symlink(target: "index.js"))
        #expect(snapshot.entries["pkg/was-link"] == .file(mode: 0o644, contents: Array("now a file\n".utf8)))
        for index in 0..<100 {
            #expect(snapshot.entries["pkg/lib/file-\(index).js"] == .file(mode: 0o644, contents: Array("v2 \(index)\n".utf8)))
        }
    }

    @Test func theArchivesRootEntryGivesTheRestoredFolderItsModeAndTime() async throws {
        let setting = try Setting()
        defer { setting.scratch.remove() }
        var tar = CraftedTar()
        tar.add("./", kind: .directory, mode: 0o750)  // what `tar -C DIR .` writes first
        tar.add("./index.js", contents: Array("x\n".utf8))
        tar.add("./lib/", kind: .directory)
        tar.add("./lib/a.js", contents: Array("a\n".utf8))
        let (restored, snapshot) = try await restore(tar, in: setting)
        #expect(snapshot.entries["lib/a.js"] == .file(mode: 0o644, contents: Array("a\n".utf8)))
        let attributes = try FileManager.default.attributesOfItem(atPath: restored.string)
        #expect((attributes[.posixPermissions] as? Int) == 0o750)
        #expect((attributes[.modificationDate] as? Date)?.timeIntervalSince1970 == 1_700_000_000)
    }

    @Test func aRepeatedDirectoryEntryEndsWithTheLastMode() async throws {
        let setting = try Setting()
        defer { setting.scratch.remove() }
        var tar = CraftedTar()
        // Directories are created 0o755 and only other modes are set, so a later entry
        // going back to 0o755 must still undo an earlier 0o700.
        tar.add("shared/", kind: .directory, mode: 0o700)
        tar.add("shared/a.js", contents: Array("a\n".utf8))
        tar.add("other/", kind: .directory, mode: 0o755)
        tar.add("shared/", kind: .directory, mode: 0o755)
        tar.add("private/", kind: .directory, mode: 0o755)
        tar.add("private/", kind: .directory, mode: 0o711)
        let (_, snapshot) = try await restore(tar, in: setting)
        #expect(snapshot.entries["shared"] == .directory(mode: 0o755))
        #expect(snapshot.entries["other"] == .directory(mode: 0o755))
        #expect(snapshot.entries["private"] == .directory(mode: 0o711))
        #expect(snapshot.entries["shared/a.js"] == .file(mode: 0o644, contents: Array("a\n".utf8)))
    }

    @Test(arguments: [
        ("entries", ExtractionLimits(maxEntries: 3)),
        ("bytes", ExtractionLimits(maxTotalBytes: 1000)),
        ("path length", ExtractionLimits(maxPathLength: 30)),
    ])
    func limitsStopABombEarly(_ name: String, _ limits: ExtractionLimits) async throws {
        let setting = try Setting()
        defer { setting.scratch.remove() }
        var tar = CraftedTar()
        for index in 0..<10 {
            tar.add("a-rather-long-directory-name/file-\(index).js", contents: [UInt8](repeating: 0x41, count: 600))
        }
        tar.end()
        let archive = setting.scratch.path.appending("bomb.tar.zst")
        try tar.write(to: archive)
        let error = await #expect(throws: UnpackError.self) {
            _ = try await ArchiveUnpacker(options: .init(limits: limits))
                .unpack(file: archive, replacing: setting.destination, logger: logger)
        }
        #expect(error?.message.contains("limit") == true, "\(name): \(String(describing: error))")
        try FileManager.default.removeItem(atPath: archive.string)
        #expect(try setting.expectUntouched() == [])
    }

    /// Data attached to a directory or symlink is skipped, but decompressed all the same:
    /// it counts against maxTotalBytes like file contents.
    @Test(arguments: [CraftedTar.Kind.directory, .symlink])
    func dataOnADirectoryOrSymlinkCountsAgainstTheByteLimit(_ kind: CraftedTar.Kind) async throws {
        let setting = try Setting()
        defer { setting.scratch.remove() }
        var tar = CraftedTar()
        tar.add("small.js", contents: [UInt8](repeating: 0x41, count: 600))
        tar.add(kind == .directory ? "dir/" : "link", kind: kind, contents: [UInt8](repeating: 0, count: 4096), link: "small.js")
        tar.end()
        let archive = setting.scratch.path.appending("attached.tar.zst")
        try tar.write(to: archive)
        let error = await #expect(throws: UnpackError.self) {
            _ = try await ArchiveUnpacker(options: .init(limits: ExtractionLimits(maxTotalBytes: 1000)))
                .unpack(file: archive, replacing: setting.destination, logger: logger)
        }
        #expect(error?.message.contains("1000 bytes, the configured limit") == true, "\(String(describing: error))")
        try FileManager.default.removeItem(atPath: archive.string)
        #expect(try setting.expectUntouched() == [])
    }

    /// A packed archive, and its bytes, for the damage tests.
    func packedArchive(in setting: Setting) async throws -> (FilePath, CacheManifest, [UInt8]) {
        let tree = setting.scratch.path.appending("source")
        try SampleTree.write(to: tree, seed: 11, files: 60)
        let archive = setting.scratch.path.appending("good.tar.zst")
        let manifest = try await ArchivePacker().pack(tree, key: CacheKey("damage"), to: archive, logger: logger)
        try FileManager.default.removeItem(atPath: tree.string)
        return (archive, manifest, [UInt8](try Data(contentsOf: URL(fileURLWithPath: archive.string))))
    }

    @Test(arguments: [0.1, 0.5, 0.9, 0.999])
    func truncatedArchivesAreCorrupt(_ fraction: Double) async throws {
        let setting = try Setting()
        defer { setting.scratch.remove() }
        let (archive, _, bytes) = try await packedArchive(in: setting)
        let cut = Int(Double(bytes.count) * fraction)
        try Data(bytes[..<cut]).write(to: URL(fileURLWithPath: archive.string))
        let error = await #expect(throws: UnpackError.self) {
            _ = try await ArchiveUnpacker().unpack(file: archive, replacing: setting.destination, logger: logger)
        }
        #expect(error?.kind == .corrupt)
        #expect(error?.message.contains("truncated") == true, "\(String(describing: error))")
        #expect(error?.offset != nil)
        try FileManager.default.removeItem(atPath: archive.string)
        #expect(try setting.expectUntouched() == [])
    }

    @Test(arguments: [0.02, 0.3, 0.6, 0.97])
    func aFlippedByteAnywhereIsCorrupt(_ fraction: Double) async throws {
        let setting = try Setting()
        defer { setting.scratch.remove() }
        let (archive, _, original) = try await packedArchive(in: setting)
        var bytes = original
        let index = max(4, Int(Double(bytes.count) * fraction))  // keep the magic number intact
        bytes[index] ^= 0x5A
        try Data(bytes).write(to: URL(fileURLWithPath: archive.string))
        let error = await #expect(throws: UnpackError.self) {
            _ = try await ArchiveUnpacker().unpack(file: archive, replacing: setting.destination, logger: logger)
        }
        #expect(error?.kind == .corrupt, "\(String(describing: error))")
        try FileManager.default.removeItem(atPath: archive.string)
        #expect(try setting.expectUntouched() == [])
    }

    @Test func aSHA256MismatchIsCorrupt() async throws {
        let setting = try Setting()
        defer { setting.scratch.remove() }
        let (archive, manifest, _) = try await packedArchive(in: setting)
        let wrong = String(manifest.archiveSHA256.reversed())
        let error = await #expect(throws: UnpackError.self) {
            _ = try await ArchiveUnpacker(options: .init(expectedSHA256: wrong))
                .unpack(file: archive, replacing: setting.destination, logger: logger)
        }
        #expect(error?.kind == .corrupt)
        #expect(error?.message.contains("SHA-256") == true)
        try FileManager.default.removeItem(atPath: archive.string)
        #expect(try setting.expectUntouched() == [])
    }

    @Test func aGzipArchiveGetsAnActionableError() async throws {
        let setting = try Setting()
        defer { setting.scratch.remove() }
        let archive = setting.scratch.path.appending("old.tar.gz")
        #expect(try await Fixtures.run(["sh", "-c", "tar -czf '\(archive.string)' -C '\(setting.destination.string)' ."]).status == 0)
        let error = await #expect(throws: UnpackError.self) {
            _ = try await ArchiveUnpacker().unpack(file: archive, replacing: setting.destination, logger: logger)
        }
        #expect(error?.message.contains("gzip") == true)
        #expect(error?.message.contains("repack") == true)
        try FileManager.default.removeItem(atPath: archive.string)
        #expect(try setting.expectUntouched() == [])
    }

    /// Entries are written relative to the staging root's descriptor: a 4,000-byte path,
    /// which the limit accepts, unpacks under a destination 200+ bytes deep, although
    /// the two together are longer than any path the kernel takes (PATH_MAX, 4,096).
    @Test func aPathNearTheLimitUnpacksUnderADeepDestination() async throws {
        let scratch = try TemporaryDirectory(prefix: "deep")
        defer { scratch.remove() }
        // 19 directories of 199 bytes and a file of 200: 4,000 bytes with the slashes.
        let components = (0..<20).map { index in
            String(repeating: Character(Unicode.Scalar(UInt8(ascii: "a") + UInt8(index))), count: index == 19 ? 200 : 199)
        }
        let relative = components.joined(separator: "/")
        #expect(relative.utf8.count == 4000)
        let tree = scratch.path.appending("tree")
        try FileManager.default.createDirectory(
            atPath: tree.string + "/" + components.dropLast().joined(separator: "/"), withIntermediateDirectories: true
        )
        let contents = Data("deep inside\n".utf8)
        #expect(FileManager.default.createFile(atPath: tree.string + "/" + relative, contents: contents))
        let archive = scratch.path.appending("deep.tar.zst")
        _ = try await ArchivePacker().pack(tree, key: CacheKey("deep"), to: archive, logger: logger)

        let deepParent = scratch.path.appending(String(repeating: "p", count: 110)).appending(String(repeating: "q", count: 110))
        try FileManager.default.createDirectory(atPath: deepParent.string, withIntermediateDirectories: true)
        let destination = deepParent.appending("restored")
        #expect(destination.string.utf8.count + 1 + relative.utf8.count > Int(PATH_MAX))

        let summary = try await ArchiveUnpacker().unpack(file: archive, replacing: destination, logger: logger)
        #expect(summary.files == 1)
        #expect(summary.directories == 19)
        // Read back relative to the destination too: its absolute path is too long to open.
        let directory = open(destination.string, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        #expect(directory >= 0)
        defer { close(directory) }
        let file = openat(directory, relative, O_RDONLY | O_CLOEXEC)
        #expect(file >= 0, "the deep file is missing: \(String(cString: strerror(errno)))")
        defer { close(file) }
        var buffer = [UInt8](repeating: 0, count: 64)
        let count = read(file, &buffer, buffer.count)
        #expect(Data(buffer[..<max(0, count)]) == contents)
        // FileManager removes by absolute paths; rm walks relative to each directory.
        #expect(try await Fixtures.run(["rm", "-rf", scratch.path.string]).status == 0)
    }

    @Test func aStagingDirectoryThatCannotBeOpenedIsNamedInTheError() async throws {
        let setting = try Setting()
        defer { setting.scratch.remove() }
        let (archive, _, _) = try await packedArchive(in: setting)
        let missing = setting.scratch.path.appending("gone")
        let error = await #expect(throws: UnpackError.self) {
            _ = try await ArchiveUnpacker().unpack(file: archive, into: missing)
        }
        #expect(error?.kind == .filesystem)
        #expect(error?.errno == ENOENT)
        #expect(error?.message == "cannot write the restored tree: cannot open \(missing), the directory to unpack into: No such file or directory")
        #expect(!FileManager.default.fileExists(atPath: missing.string), "nothing is created in its place")
    }
}

@Suite struct CodecTests {
    func roundTrip(_ codec: any CompressionCodec, _ input: [UInt8], feed: Int) throws -> [UInt8] {
        let encoder = try codec.makeEncoder()
        var compressed: [UInt8] = []
        var offset = 0
        while offset < input.count {
            let end = min(offset + feed, input.count)
            try input[offset..<end].withUnsafeBytes { try encoder.encode($0) { compressed += $0 } }
            offset = end
        }
        try encoder.finish { compressed += $0 }
        let decoder = try codec.makeDecoder()
        var output: [UInt8] = []
        offset = 0
        while offset < compressed.count {
            let end = min(offset + 777, compressed.count)
            try compressed[offset..<end].withUnsafeBytes { try decoder.decode($0) { output += $0 } }
            offset = end
        }
        try decoder.finish()
        return output
    }

    static let input: [UInt8] = (0..<300_000).map { UInt8(truncatingIfNeeded: ($0 * 31) ^ ($0 >> 7)) }

    @Test(arguments: [-5, 1, 3, 9, 19])
    func zstdRoundTripsAtEveryLevel(_ level: Int) throws {
        #expect(try roundTrip(ZstdCodec(level: level, threads: 2), Self.input, feed: 65_536) == Self.input)
    }

    @Test func zstdRoundTripsWithLongDistanceMatching() throws {
        #expect(try roundTrip(ZstdCodec(level: 3, threads: 1, longDistanceWindowLog: 24), Self.input, feed: 1000) == Self.input)
    }

    @Test func identityPassesBytesThrough() throws {
        #expect(try roundTrip(IdentityCodec(), Self.input, feed: 4096) == Self.input)
    }

    @Test func anOutOfRangeLevelIsRefusedWithTheRange() {
        #expect {
            _ = try ZstdCodec(level: 42).makeEncoder()
        } throws: { error in
            "\(error)".contains("out of range")
        }
    }

    @Test func aTruncatedFrameIsReportedWithItsOffset() throws {
        let encoder = try ZstdCodec(level: 1, threads: 1).makeEncoder()
        var compressed: [UInt8] = []
        try Self.input.withUnsafeBytes { try encoder.encode($0) { compressed += $0 } }
        try encoder.finish { compressed += $0 }
        let decoder = try ZstdCodec().makeDecoder()
        try compressed.dropLast(5).withUnsafeBytes { try decoder.decode($0) { _ in } }
        #expect {
            try decoder.finish()
        } throws: { error in
            (error as? CompressionError)?.offset == Int64(compressed.count - 5) && "\(error)".contains("truncated")
        }
    }
}

/// Pack refuses what unpack refuses, so no tier ever holds an archive every restore rejects.
@Suite struct PackSafetyTests {
    let logger = Logger(label: "test")

    /// Each case adds to `tree` one entry a restore refuses, and names it.
    static let unsafe: [(String, @Sendable (FilePath) throws -> String)] = [
        ("absolute symlink (npm link)", { tree in
            try FileManager.default.createSymbolicLink(atPath: tree.appending("linked-pkg").string, withDestinationPath: "/usr/lib/node_modules/linked-pkg")
            return "linked-pkg"
        }),
        ("symlink climbing out of the tree", { tree in
            try FileManager.default.createDirectory(atPath: tree.appending("pkg").string, withIntermediateDirectories: true)
            try FileManager.default.createSymbolicLink(atPath: tree.appending("pkg/up").string, withDestinationPath: "../../outside")
            return "pkg/up"
        }),
        ("path over the limit", { tree in
            let deep = "a-directory/" + String(repeating: "long-name-", count: 16)
            try FileManager.default.createDirectory(atPath: tree.appending(deep).string, withIntermediateDirectories: true)
            try Data("x".utf8).write(to: URL(fileURLWithPath: tree.appending(deep + "/index.js").string))
            return deep
        }),
    ]
    /// A path limit the "path over the limit" case exceeds and the sample tree fits.
    static let limits = ExtractionLimits(maxPathLength: 160)

    @Test(arguments: 0..<unsafe.count)
    func packRefusesAnEntryUnpackWouldRefuseAndWritesNothing(_ index: Int) async throws {
        let (name, add) = Self.unsafe[index]
        let scratch = try TemporaryDirectory(prefix: "pack-safety")
        defer { scratch.remove() }
        let tree = scratch.path.appending("tree")
        try SampleTree.write(to: tree, seed: 7, files: 6)
        let culprit = try add(tree)
        let output = try scratch.makeDirectory("out")
        let packer = ArchivePacker(options: .init(limits: Self.limits))
        let error = await #expect(throws: PackError.self, "\(name)") {
            _ = try await packer.pack(tree, key: CacheKey("unsafe"), to: output.appending("a.tar.zst"), logger: logger)
        }
        let message = error.map { "\($0)" } ?? ""
        #expect(message.contains(culprit.prefix(60)), "\(name): \(message)")
        #expect(message.contains("--skip-unsafe"), "\(name): \(message)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: output.string) == [], "\(name)")
    }

    @Test(arguments: 0..<unsafe.count)
    func skippingUnsafeEntriesReportsThemAndTheArchiveRestores(_ index: Int) async throws {
        let (name, add) = Self.unsafe[index]
        let scratch = try TemporaryDirectory(prefix: "pack-safety")
        defer { scratch.remove() }
        let tree = scratch.path.appending("tree")
        try SampleTree.write(to: tree, seed: 7, files: 6)
        let culprit = try add(tree)
        let archive = scratch.path.appending("a.tar.zst")
        let summary = try await ArchivePacker(options: .init(limits: Self.limits, skipUnsafeEntries: true))
            .packWithSummary(tree, key: CacheKey("unsafe"), to: archive, logger: logger)
        #expect(summary.skippedUnsafe.map(\.path) == [culprit], "\(name)")
        let restored = scratch.path.appending("restored")
        _ = try await ArchiveUnpacker(options: .init(limits: Self.limits)).unpack(file: archive, replacing: restored, logger: logger)
        var withoutCulprit = try TreeSnapshot(of: tree)
        withoutCulprit.entries = withoutCulprit.entries.filter { !$0.key.hasPrefix(culprit) }
        #expect(try TreeSnapshot(of: restored).differences(from: withoutCulprit) == [], "\(name)")
    }

    /// publish and write-back pack through the same packer: they must refuse too, and
    /// leave the tier without the key.
    @Test func publishRefusesATreeWithAnAbsoluteSymlink() async throws {
        let scratch = try TemporaryDirectory(prefix: "pack-safety")
        defer { scratch.remove() }
        let tree = scratch.path.appending("tree")
        try SampleTree.write(to: tree, seed: 8, files: 4)
        try FileManager.default.createSymbolicLink(atPath: tree.appending("global").string, withDestinationPath: "/usr/lib/node_modules/global")
        let sink = DirectorySource(root: scratch.path.appending("cache"))
        let key = try CacheKey("published")
        let result = await CachePublisher(packer: ArchivePacker())
            .publish(tree, as: key, to: [sink], scratch: try scratch.makeDirectory("scratch"), logger: logger)
        let record = try #require(result.records.first)
        #expect(record.outcome == .failed)
        #expect(record.error?.contains("'global'") == true, "\(String(describing: record.error))")
        #expect(try await !sink.contains(key, logger: logger))
    }
}

/// Sparse files are refused by name, never restored as GNU tar's internal map file.
@Suite struct SparseArchiveTests {
    let logger = Logger(label: "test")

    @Test(arguments: ["0.0", "0.1", "1.0"])
    func aPaxSparseFileFromGNUTarIsRefusedWithItsName(_ version: String) async throws {
        let scratch = try TemporaryDirectory(prefix: "sparse")
        defer { scratch.remove() }
        let tree = try scratch.makeDirectory("tree")
        let image = tree.appending("disk.img").string
        let make = try await Fixtures.run([
            "sh", "-c", "truncate -s 100M '\(image)' && printf data | dd of='\(image)' bs=1 seek=50000000 conv=notrunc 2>/dev/null",
        ])
        #expect(make.status == 0, "\(make.stderr)")
        let archive = scratch.path.appending("sparse.tar")
        let tar = try await Fixtures.run([
            "tar", "--sparse", "--sparse-version=\(version)", "--format=pax", "-cf", archive.string, "-C", tree.string, ".",
        ])
        #expect(tar.status == 0, "\(tar.stderr)")
        let destination = scratch.path.appending("node_modules")
        try SampleTree.write(to: destination, seed: 2, files: 3)
        let before = try TreeSnapshot(of: destination)

        let error = await #expect(throws: UnpackError.self) {
            _ = try await ArchiveUnpacker().unpack(file: archive, replacing: destination, logger: logger)
        }
        #expect(error?.message.contains("sparse") == true, "\(String(describing: error))")
        #expect(error?.message.contains("disk.img") == true, "\(String(describing: error))")
        #expect(error?.message.contains("\n") == false)
        #expect(try TreeSnapshot(of: destination).differences(from: before) == [])
        #expect(try FileManager.default.contentsOfDirectory(atPath: scratch.path.string).sorted() == ["node_modules", "sparse.tar", "tree"])
    }
}

/// Names are bytes on Linux: one that is not UTF-8 (a Latin-1 `café.js` from an old
/// tool) is packed, restored and removed exactly, never dropped or turned into U+FFFD.
@Suite struct ByteNameTests {
    let logger = Logger(label: "test")
    /// `café.js` in Latin-1: 0xE9 alone is not UTF-8.
    static let latin1File: [UInt8] = Array("caf".utf8) + [0xE9] + Array(".js".utf8)
    /// `Müll` in Latin-1, as a directory.
    static let latin1Directory: [UInt8] = [0x4D, 0xFC, 0x6C, 0x6C]

    /// A tree with a Latin-1 file at the top, and a Latin-1 directory holding another and a
    /// symlink to it, besides ordinary files.
    static func writeTree(_ root: FilePath) throws {
        try SampleTree.write(to: root, seed: 12, files: 3)
        try RawNames.write(root, latin1File, contents: "top\n")
        try RawNames.makeDirectory(root, latin1Directory)
        try RawNames.write(root, latin1Directory + [0x2F] + latin1File, contents: "inside\n")
        try RawNames.symlink(root, latin1Directory + Array("/link".utf8), target: latin1File)
    }

    static func expectTree(_ root: FilePath) throws {
        let top = try RawNames.list(root)
        #expect(top.contains(latin1File), "\(top.map(RawNames.show))")
        #expect(top.contains(latin1Directory), "\(top.map(RawNames.show))")
        #expect(!top.contains { String(validating: $0, as: UTF8.self)?.contains("\u{FFFD}") == true })
        #expect(try RawNames.read(root, latin1File) == "top\n")
        #expect(try RawNames.read(root, latin1Directory + [0x2F] + latin1File) == "inside\n")
        #expect(try RawNames.readLink(root, latin1Directory + Array("/link".utf8)) == latin1File)
        #expect(try RawNames.list(root.appending("pkg-12-0")) .isEmpty == false)
    }

    @Test func weRestoreExactlyTheBytesGNUTarPacks() async throws {
        let scratch = try TemporaryDirectory(prefix: "names")
        defer { scratch.remove() }
        let tree = scratch.path.appending("tree")
        try Self.writeTree(tree)
        for format in ["gnu", "pax"] {
            let archive = scratch.path.appending("gnu-\(format).tar.zst")
            let tar = try await Fixtures.run(["tar", "--zstd", "--format=\(format)", "-cf", archive.string, "-C", tree.string, "."])
            #expect(tar.status == 0, "\(tar.stderr)")
            let restored = scratch.path.appending("restored-\(format)")
            _ = try await ArchiveUnpacker().unpack(file: archive, replacing: restored, logger: logger)
            try Self.expectTree(restored)
        }
    }

    @Test func gnuTarRestoresExactlyTheBytesWePack() async throws {
        let scratch = try TemporaryDirectory(prefix: "names")
        defer { scratch.remove() }
        let tree = scratch.path.appending("tree")
        try Self.writeTree(tree)
        let archive = scratch.path.appending("ours.tar.zst")
        let summary = try await ArchivePacker().packWithSummary(tree, key: CacheKey("names"), to: archive, logger: logger)
        #expect(summary.skipped.isEmpty)
        let out = try scratch.makeDirectory("gnu")
        let untar = try await Fixtures.run(["tar", "--zstd", "-xf", archive.string, "-C", out.string])
        #expect(untar.status == 0, "\(untar.stderr)")
        // GNU tar 1.34 does not know POSIX's hdrcharset (it writes such names raw, unmarked)
        // and says so; that is the only thing it may say.
        let warnings = untar.stderr.split(separator: "\n").filter { !$0.contains("unknown extended header keyword 'hdrcharset'") }
        #expect(warnings.isEmpty, "GNU tar warned: \(untar.stderr)")
        try Self.expectTree(out)
        // And back through our own unpack.
        let restored = scratch.path.appending("restored")
        let unpacked = try await ArchiveUnpacker().unpack(file: archive, replacing: restored, logger: logger)
        #expect(unpacked.entries == summary.manifest.entryCount)
        try Self.expectTree(restored)
    }

    @Test func aDestinationHoldingSuchNamesIsReplacedCleanly() async throws {
        let scratch = try TemporaryDirectory(prefix: "names")
        defer { scratch.remove() }
        let work = try scratch.makeDirectory("work")
        let destination = work.appending("node_modules")
        try Self.writeTree(destination)
        try RawNames.write(destination, Self.latin1Directory + [0x2F] + [0xFF, 0xFE], contents: "junk\n")
        let source = scratch.path.appending("source")
        try SampleTree.write(to: source, seed: 13, files: 4)
        let archive = scratch.path.appending("new.tar.zst")
        _ = try await ArchivePacker().pack(source, key: CacheKey("new"), to: archive, logger: logger)

        _ = try await ArchiveUnpacker().unpack(file: archive, replacing: destination, logger: logger)
        #expect(try TreeSnapshot(of: destination).differences(from: TreeSnapshot(of: source)) == [])
        #expect(try RawNames.list(work) == [Array("node_modules".utf8)], "the old tree was left behind")
    }
}

/// File system calls on names given as bytes, for names Foundation cannot spell.
enum RawNames {
    static func cPath(_ root: FilePath, _ relative: [UInt8]) -> [CChar] {
        (Array(root.string.utf8) + [0x2F] + relative).map { CChar(bitPattern: $0) } + [0]
    }

    static func show(_ name: [UInt8]) -> String {
        name.map { $0 < 0x80 ? String(UnicodeScalar($0)) : "\\x" + String($0, radix: 16) }.joined()
    }

    static func write(_ root: FilePath, _ relative: [UInt8], contents: String) throws {
        let descriptor = open(cPath(root, relative), O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        guard descriptor >= 0 else { throw FixtureError("cannot create \(show(relative)): \(String(cString: strerror(errno)))") }
        defer { close(descriptor) }
        let bytes = Array(contents.utf8)
        guard Glibc.write(descriptor, bytes, bytes.count) == bytes.count else { throw FixtureError("cannot write \(show(relative))") }
    }

    static func makeDirectory(_ root: FilePath, _ relative: [UInt8]) throws {
        guard mkdir(cPath(root, relative), 0o755) == 0 else { throw FixtureError("cannot create \(show(relative))") }
    }

    static func symlink(_ root: FilePath, _ relative: [UInt8], target: [UInt8]) throws {
        let target = target.map { CChar(bitPattern: $0) } + [0]
        guard Glibc.symlink(target, cPath(root, relative)) == 0 else { throw FixtureError("cannot link \(show(relative))") }
    }

    static func read(_ root: FilePath, _ relative: [UInt8]) throws -> String {
        let descriptor = open(cPath(root, relative), O_RDONLY)
        guard descriptor >= 0 else { throw FixtureError("cannot open \(show(relative)): \(String(cString: strerror(errno)))") }
        defer { close(descriptor) }
        var buffer = [UInt8](repeating: 0, count: 4096)
        let count = Glibc.read(descriptor, &buffer, buffer.count)
        return String(decoding: buffer[..<max(0, count)], as: UTF8.self)
    }

    static func readLink(_ root: FilePath, _ relative: [UInt8]) throws -> [UInt8] {
        var buffer = [CChar](repeating: 0, count: 4096)
        let count = readlink(cPath(root, relative), &buffer, buffer.count)
        guard count >= 0 else { throw FixtureError("cannot read the link \(show(relative))") }
        return buffer[..<count].map { UInt8(bitPattern: $0) }
    }

    /// The names in a directory, as the kernel gives them.
    static func list(_ directory: FilePath) throws -> [[UInt8]] {
        guard let stream = opendir(directory.string) else { throw FixtureError("cannot list \(directory)") }
        defer { closedir(stream) }
        var names: [[UInt8]] = []
        while let entry = readdir(stream) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { Array($0.prefix { $0 != 0 }) }
            if name != [0x2E] && name != [0x2E, 0x2E] { names.append(name) }
        }
        return names.sorted { $0.lexicographicallyPrecedes($1) }
    }
}
