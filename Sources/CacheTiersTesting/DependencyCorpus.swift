import CacheTiers
import Foundation
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Writes a deterministic tree shaped like a JavaScript project's `node_modules`, for
/// tests and benchmarks that need a realistic dependency cache.
///
/// What makes it realistic is what makes archiving a real tree behave as it does:
/// - **packages** with `package.json`, `index.js`, sources under `lib/`, a minified
///   bundle with its source map, TypeScript declarations, README, LICENSE and sometimes
///   CHANGELOG, a few native `.node` binaries (incompressible), `.bin` symlinks to
///   executable CLIs, scoped names, paths over 100 bytes, non-ASCII names and empty
///   directories;
/// - **duplication far apart**: npm leaves the same version of a package nested at
///   several depths when versions conflict, so many package versions appear more than
///   once, byte for byte, under other packages' `node_modules`; licence texts and
///   polyfills repeat across packages. A zstd window of a few MB misses those repeats
///   and a long-distance window finds them, as with a real tree;
/// - **file sizes** from a log-normal distribution: most files under 4 KB, a long tail
///   of MB-sized bundles.
///
/// The same options always write the same tree (its own PRNG, no wall clock, no
/// locale). Modes and symlinks are set; modification times are whatever the writes give.
public enum DependencyCorpus {
    public struct Options: Sendable, Hashable {
        /// Regular files to write (symlinks and directories come on top).
        public var files: Int
        public var seed: UInt64
        /// The share of package versions installed more than once (nested copies).
        public var duplicateShare: Double
        /// The share of files that are native binaries.
        public var binaryShare: Double

        public init(files: Int = 40_000, seed: UInt64 = 1, duplicateShare: Double = 0.45, binaryShare: Double = 0.002) {
            self.files = max(1, files)
            self.seed = seed
            self.duplicateShare = min(max(duplicateShare, 0), 0.9)
            self.binaryShare = min(max(binaryShare, 0), 0.5)
        }
    }

    /// What was written.
    public struct Summary: Sendable, Hashable, CustomStringConvertible {
        public var files = 0
        public var directories = 0
        public var symlinks = 0
        public var bytes: Int64 = 0
        /// Installed package folders, nested copies included.
        public var packages = 0
        /// Package folders that are byte-for-byte copies of one installed elsewhere.
        public var duplicatePackages = 0

        public var description: String {
            String(
                format: "%d files, %d directories, %d symlinks, %.1f MB in %d package folders (%d nested duplicates)",
                files, directories, symlinks, Double(bytes) / 1e6, packages, duplicatePackages
            )
        }
    }

    /// Writes the tree into `folder/node_modules`.
    /// - Throws: when `folder` exists and is not empty, or a write fails.
    /// - Returns: the counts, and `folder/node_modules` is the tree.
    @discardableResult
    public static func write(to folder: FilePath, options: Options = .init()) throws -> Summary {
        if let names = try? FileManager.default.contentsOfDirectory(atPath: folder.string), !names.isEmpty {
            throw CorpusError("\(folder) exists and is not empty")
        }
        var writer = CorpusWriter(root: folder.appending("node_modules"), options: options)
        try writer.run()
        return writer.summary
    }

    /// A failure to write the corpus.
    public struct CorpusError: Error, CustomStringConvertible {
        public var description: String
        init(_ description: String) { self.description = description }
    }
}

/// SplitMix64: tiny, fast, and the same sequence on every platform for a seed (the
/// corpus's, and any test data that must be the same every run).
public struct CorpusRandom: Sendable {
    private var state: UInt64

    public init(seed: UInt64) {
        state = seed &+ 0x9E37_79B9_7F4A_7C15
    }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform in `0..<bound`.
    public mutating func below(_ bound: Int) -> Int {
        precondition(bound > 0)
        return Int(next() % UInt64(bound))
    }

    /// Uniform in `0..<1`.
    mutating func unit() -> Double {
        Double(next() >> 11) / Double(1 << 53)
    }

    mutating func chance(_ probability: Double) -> Bool { unit() < probability }

    mutating func pick<T>(_ items: [T]) -> T { items[below(items.count)] }

    /// Log-normal with the given parameters of the underlying normal (Box-Muller).
    mutating func logNormal(mu: Double, sigma: Double) -> Double {
        let u1 = max(unit(), 1e-12)
        let u2 = unit()
        let normal = (-2 * Foundation.log(u1)).squareRoot() * cos(2 * Double.pi * u2)
        return exp(mu + sigma * normal)
    }
}

/// One version of a package: its files, generated once and installed wherever it is
/// needed, so nested copies are byte-identical.
struct PackageVersion {
    struct File {
        var path: String
        var contents: [UInt8]
        var mode: mode_t = 0o644
    }

    var name: String
    var version: String
    var files: [File]
    /// The CLI a `.bin` link points to, relative to the package folder.
    var binary: String?
    var hasEmptyDirectory: Bool
}

struct CorpusWriter {
    let root: FilePath
    let options: DependencyCorpus.Options
    var random: CorpusRandom
    var summary = DependencyCorpus.Summary()
    private var madeDirectories = Set<String>()

    init(root: FilePath, options: DependencyCorpus.Options) {
        self.root = root
        self.options = options
        self.random = CorpusRandom(seed: options.seed)
    }

    mutating func run() throws {
        try makeDirectory(root.string)
        try makeDirectory(root.appending(".bin").string)
        var text = CorpusText(seed: options.seed)
        var versions: [PackageVersion] = []
        // Where package folders are, relative to the root: nested copies go inside them.
        var folders: [String] = []
        var taken = Set<String>()
        var index = 0
        while summary.files < options.files {
            index += 1
            // A nested copy of a version already installed, as npm leaves one when two
            // dependents need conflicting versions of a third.
            if !versions.isEmpty, random.chance(options.duplicateShare) {
                let copy = versions[random.below(versions.count)]
                let host = folders[random.below(folders.count)]
                let folder = "\(host)/node_modules/\(copy.name)"
                guard !host.hasSuffix("/\(copy.name)"), host != copy.name, taken.insert(folder).inserted else { continue }
                try install(copy, at: folder, linkingBinary: false)
                folders.append(folder)
                summary.duplicatePackages += 1
                continue
            }
            let package = makePackage(index: index, text: &text)
            try install(package, at: package.name, linkingBinary: true)
            versions.append(package)
            folders.append(package.name)
            taken.insert(package.name)
        }
    }

    private mutating func makePackage(index: Int, text: inout CorpusText) -> PackageVersion {
        let scoped = random.chance(0.2)
        let base = "\(random.pick(CorpusText.words))-\(random.pick(CorpusText.words))-\(index)"
        let name = scoped ? "@\(random.pick(CorpusText.words))/\(base)" : base
        let version = "\(random.below(10)).\(random.below(30)).\(random.below(50))"
        var vocabulary = CorpusText.Vocabulary(random: &random)
        var files: [PackageVersion.File] = []
        let license = random.pick(CorpusText.licences)
        let hasBinary = random.chance(0.08)
        var manifest = """
            {
              "name": "\(name)",
              "version": "\(version)",
              "description": "\(text.sentence(&random, vocabulary: vocabulary))",
              "main": "index.js",
              "types": "index.d.ts",
              "license": "\(license.name)",
              "repository": { "type": "git", "url": "git+https://example.invalid/\(name).git" },
              "dependencies": {
            """
        let dependencies = random.below(6)
        for dependency in 0..<dependencies {
            manifest += "\n    \"\(random.pick(CorpusText.words))-\(random.pick(CorpusText.words))\": \"^\(random.below(9)).\(random.below(20)).0\""
            manifest += dependency + 1 < dependencies ? "," : "\n  "
        }
        manifest += "}"
        if hasBinary { manifest += ",\n  \"bin\": { \"\(base)\": \"bin/cli.js\" }" }
        manifest += "\n}\n"
        files.append(.init(path: "package.json", contents: Array(manifest.utf8)))
        files.append(.init(path: "LICENSE", contents: license.text(year: 2010 + random.below(15), holder: name)))
        files.append(.init(path: "README.md", contents: text.markdown(&random, vocabulary: vocabulary, title: name, size: size(median: 2500))))
        if random.chance(0.4) {
            files.append(.init(path: "CHANGELOG.md", contents: text.markdown(&random, vocabulary: vocabulary, title: "Changelog", size: size(median: 4000))))
        }
        files.append(.init(path: "index.js", contents: text.javascript(&random, vocabulary: &vocabulary, size: size(median: 600))))
        files.append(.init(path: "index.d.ts", contents: text.declarations(&random, vocabulary: vocabulary, size: size(median: 1500))))

        // Sources: most packages are a handful of files, a few are hundreds.
        let sources = min(400, max(1, Int(pareto(shape: 1.3) * 4)))
        let folders = ["lib", "lib/\(random.pick(CorpusText.words))", "src", "esm", "cjs", "build/\(random.pick(CorpusText.words))"]
        for number in 0..<sources {
            var folder = random.pick(folders)
            if random.chance(0.01) {
                folder += "/a-rather-long-directory-name-that-pushes-the-path-beyond-the-ustar-limit-"
                    + String(repeating: "x", count: 40 + random.below(80))
            }
            if random.chance(options.binaryShare) {
                let count = min(2_000_000, Int(random.logNormal(mu: 10.5, sigma: 1.1)))
                files.append(.init(path: "\(folder)/\(random.pick(vocabulary.identifiers)).node", contents: noise(count), mode: 0o755))
                continue
            }
            let stem = "\(random.pick(vocabulary.identifiers))\(number)" + (random.chance(0.003) ? "-über-日本" : "")
            switch random.below(10) {
            case 0:
                files.append(.init(path: "\(folder)/\(stem).d.ts", contents: text.declarations(&random, vocabulary: vocabulary, size: size(median: 1200))))
            case 1:
                files.append(.init(path: "\(folder)/\(stem).json", contents: text.json(&random, vocabulary: vocabulary, size: size(median: 800))))
            case 2:
                // A polyfill shared with other packages, byte for byte.
                files.append(.init(path: "\(folder)/\(stem).js", contents: text.polyfill(&random)))
            default:
                files.append(.init(path: "\(folder)/\(stem).js", contents: text.javascript(&random, vocabulary: &vocabulary, size: size(median: 2200))))
            }
        }
        // A bundle and its map for about a third of the packages: the MB-sized tail.
        if random.chance(0.35) {
            let bundle = text.minified(&random, vocabulary: &vocabulary, size: min(6_000_000, size(median: 16_000, sigma: 1.6)))
            files.append(.init(path: "dist/\(base).min.js", contents: bundle))
            let sources = files.filter { $0.path.hasSuffix(".js") }.map(\.contents)
            files.append(
                .init(path: "dist/\(base).min.js.map", contents: text.sourceMap(&random, size: bundle.count, source: base, sources: sources))
            )
        }
        var binary: String?
        if hasBinary {
            binary = "bin/cli.js"
            files.append(
                .init(path: "bin/cli.js", contents: Array("#!/usr/bin/env node\n".utf8) + text.javascript(&random, vocabulary: &vocabulary, size: 400), mode: 0o755)
            )
        }
        return PackageVersion(name: name, version: version, files: files, binary: binary, hasEmptyDirectory: random.chance(0.03))
    }

    private mutating func install(_ package: PackageVersion, at relative: String, linkingBinary: Bool) throws {
        let folder = root.string + "/" + relative
        summary.packages += 1
        for file in package.files {
            try write(folder + "/" + file.path, file.contents, mode: file.mode)
        }
        if package.hasEmptyDirectory { try makeDirectory(folder + "/test/fixtures/empty") }
        if linkingBinary, let binary = package.binary {
            let link = root.string + "/.bin/" + (package.name.split(separator: "/").last.map(String.init) ?? package.name)
            let target = "../" + relative + "/" + binary
            do {
                try syscall("symlink") { symlink(target, link) }
            } catch {
                throw DependencyCorpus.CorpusError("cannot link \(link): \(error.reason)")
            }
            summary.symlinks += 1
        }
    }

    private mutating func write(_ path: String, _ contents: [UInt8], mode: mode_t) throws {
        try makeDirectory(String(path[..<path.lastIndex(of: "/")!]))
        let descriptor: Int32
        do {
            descriptor = try syscall("open") { open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode) }
        } catch {
            throw DependencyCorpus.CorpusError("cannot create \(path): \(error.reason)")
        }
        defer { close(descriptor) }
        do {
            try contents.withUnsafeBytes { bytes in try writeAll(descriptor, bytes) }
        } catch let error as SystemCallError {
            throw DependencyCorpus.CorpusError("cannot write \(path): \(error.reason)")
        }
        if mode != 0o644 { fchmod(descriptor, mode) }
        summary.files += 1
        summary.bytes += Int64(contents.count)
    }

    private mutating func makeDirectory(_ path: String) throws {
        guard !madeDirectories.contains(path) else { return }
        if let slash = path.lastIndex(of: "/"), slash > path.startIndex {
            try makeDirectory(String(path[..<slash]))
        }
        do {
            try syscall("mkdir") { mkdir(path, 0o755) }
            summary.directories += 1
        } catch let error where error.errnoCode != EEXIST {
            throw DependencyCorpus.CorpusError("cannot create \(path): \(error.reason)")
        } catch {}
        madeDirectories.insert(path)
    }

    /// A file size: log-normal around `median` bytes, so most files are small and a few large.
    private mutating func size(median: Double, sigma: Double = 1.1) -> Int {
        min(3_000_000, max(16, Int(random.logNormal(mu: Foundation.log(median), sigma: sigma))))
    }

    private mutating func pareto(shape: Double) -> Double {
        1 / pow(max(1 - random.unit(), 1e-9), 1 / shape)
    }

    private mutating func noise(_ count: Int) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        bytes.withUnsafeMutableBytes { buffer in
            var offset = 0
            while offset + 8 <= buffer.count {
                buffer.storeBytes(of: random.next(), toByteOffset: offset, as: UInt64.self)
                offset += 8
            }
            while offset < buffer.count {
                buffer[offset] = UInt8(truncatingIfNeeded: random.next())
                offset += 1
            }
        }
        return bytes
    }
}
