import CacheTiers
import CacheTiersTesting
import Foundation
import SystemPackage
import Testing

/// The project's corpus generator: deterministic, and shaped like a real `node_modules`.
struct DependencyCorpusTests {
    /// Every regular file under `root`, by relative path, with its size.
    func files(under root: FilePath) throws -> [String: Int] {
        var found: [String: Int] = [:]
        let enumerator = FileManager.default.enumerator(atPath: root.string)!
        while let path = enumerator.nextObject() as? String {
            let attributes = try FileManager.default.attributesOfItem(atPath: root.appending(path).string)
            if attributes[.type] as? FileAttributeType == .typeRegular {
                found[path] = (attributes[.size] as? Int) ?? 0
            }
        }
        return found
    }

    @Test func theSameSeedWritesTheSameTreeAndAnotherSeedAnother() async throws {
        let scratch = try TemporaryDirectory(prefix: "corpus")
        defer { scratch.remove() }
        let first = try await Fixtures.makeCorpus(in: scratch.path.appending("a"), files: 800, seed: 5)
        let again = try await Fixtures.makeCorpus(in: scratch.path.appending("b"), files: 800, seed: 5)
        let other = try await Fixtures.makeCorpus(in: scratch.path.appending("c"), files: 800, seed: 6)
        #expect(try TreeSnapshot(of: first).differences(from: TreeSnapshot(of: again)) == [])
        #expect(try TreeSnapshot(of: first).differences(from: TreeSnapshot(of: other)) != [])
    }

    @Test func theTreeHasTheShapesOfARealNodeModules() throws {
        let scratch = try TemporaryDirectory(prefix: "corpus")
        defer { scratch.remove() }
        let summary = try DependencyCorpus.write(to: scratch.path, options: .init(files: 4000, seed: 1))
        let root = scratch.path.appending("node_modules")
        let all = try files(under: root)
        #expect(summary.files == all.count)
        #expect(summary.files >= 4000)
        let names = Array(all.keys)
        for suffix in ["/package.json", "/index.js", "/index.d.ts", "/README.md", "/LICENSE", "/CHANGELOG.md", ".min.js", ".min.js.map", ".node"] {
            #expect(names.contains { $0.hasSuffix(suffix) }, "some \(suffix)")
        }
        #expect(names.contains { $0.utf8.count > 100 }, "a path over the ustar limit")
        #expect(names.contains { !$0.allSatisfy(\.isASCII) }, "a non-ASCII name")
        #expect(names.contains { $0.contains("/node_modules/") }, "nested node_modules")
        #expect(names.contains { $0.hasPrefix("@") }, "scoped packages")

        let links = try FileManager.default.contentsOfDirectory(atPath: root.appending(".bin").string)
        #expect(!links.isEmpty)
        for link in links {
            let target = try FileManager.default.destinationOfSymbolicLink(atPath: root.appending(".bin/\(link)").string)
            #expect(FileManager.default.isExecutableFile(atPath: root.appending(".bin").appending(target).string), "\(link) → \(target)")
        }
        let empty = FileManager.default.enumerator(atPath: root.string)!.compactMap { $0 as? String }
            .filter { $0.hasSuffix("fixtures/empty") }
        #expect(!empty.isEmpty, "empty directories")

        // Sizes: most files small, a long tail of large bundles.
        let sizes = all.values.sorted()
        #expect(sizes[sizes.count / 2] < 4096, "median \(sizes[sizes.count / 2])")
        #expect(sizes.last! > 500_000, "largest \(sizes.last!)")

        // Duplication: nested copies are byte-for-byte the package installed at the top.
        #expect(summary.duplicatePackages > summary.packages / 5, "\(summary)")
        let nestedManifest = try #require(names.first { $0.contains("/node_modules/") && $0.hasSuffix("/package.json") })
        let copy = try Data(contentsOf: URL(fileURLWithPath: root.appending(nestedManifest).string))
        let name = try #require((try JSONSerialization.jsonObject(with: copy) as? [String: Any])?["name"] as? String)
        let original = try Data(contentsOf: URL(fileURLWithPath: root.appending("\(name)/package.json").string))
        #expect(copy == original, "\(nestedManifest) is a copy of \(name)/package.json")
    }

    @Test func itCompressesLikeARealTreeAndFindsFarRepeatsOnlyWithALongWindow() async throws {
        let scratch = try TemporaryDirectory(prefix: "corpus")
        defer { scratch.remove() }
        let summary = try DependencyCorpus.write(to: scratch.path.appending("tree"), options: .init(files: 6000, seed: 3))
        let tar = scratch.path.appending("tree.tar")
        let packed = try await Fixtures.run(["tar", "-C", scratch.path.appending("tree").string, "-cf", tar.string, "node_modules"])
        #expect(packed.status == 0, "\(packed.stderr)")
        func compressed(_ flags: [String]) async throws -> Double {
            let out = scratch.path.appending("out.zst")
            let result = try await Fixtures.run(["zstd", "-q", "-f", "-T0"] + flags + [tar.string, "-o", out.string])
            #expect(result.status == 0, "\(result.stderr)")
            let size = try FileManager.default.attributesOfItem(atPath: out.string)[.size] as! Int
            return Double(summary.bytes) / Double(size)
        }
        let plain = try await compressed(["-1"])
        let long = try await compressed(["-1", "--long=27"])
        #expect(plain > 4, "zstd -1: \(plain)×")
        #expect(long > plain * 1.3, "a long window finds the nested copies: \(long)× against \(plain)×")
    }
}
