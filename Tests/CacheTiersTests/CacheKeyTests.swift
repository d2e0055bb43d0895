import CacheTiers
import Foundation
import Testing

@Suite struct CacheKeyTests {
    let lock = Lockfile(name: "package-lock.json", contents: Array(#"{"lockfileVersion":3}"#.utf8))
    let linux = Platform(operatingSystem: "linux", architecture: "x86_64")

    @Test func theSameInputsGiveTheSameKey() throws {
        let a = try CacheKey.derive(prefix: "node-modules", lockfiles: [lock], platform: linux)
        let b = try CacheKey.derive(prefix: "node-modules", lockfiles: [lock], platform: linux)
        #expect(a == b)
        #expect(a.rawValue.hasPrefix("node-modules-"))
        #expect(a.rawValue.count == "node-modules-".count + 64)
    }

    @Test func lockfileOrderDoesNotMatter() throws {
        let other = Lockfile(name: "yarn.lock", contents: Array("# yarn\n".utf8))
        let a = try CacheKey.derive(prefix: "deps", lockfiles: [lock, other], platform: linux)
        let b = try CacheKey.derive(prefix: "deps", lockfiles: [other, lock], platform: linux)
        #expect(a == b)
    }

    @Test func everyInputChangesTheKey() throws {
        let base = try CacheKey.derive(prefix: "deps", lockfiles: [lock], platform: linux)
        let edited = Lockfile(name: lock.name, contents: lock.contents + [0x0a])
        let variants = try [
            CacheKey.derive(prefix: "deps", lockfiles: [edited], platform: linux),
            CacheKey.derive(prefix: "deps2", lockfiles: [lock], platform: linux),
            CacheKey.derive(prefix: "deps", lockfiles: [lock], platform: .init(operatingSystem: "linux", architecture: "arm64")),
            CacheKey.derive(prefix: "deps", lockfiles: [lock], platform: nil),
            CacheKey.derive(prefix: "deps", lockfiles: [lock], platform: linux, runtimeVersions: ["node 20"]),
            CacheKey.derive(prefix: "deps", lockfiles: [lock], platform: linux, salt: "v2"),
            CacheKey.derive(prefix: "deps", lockfiles: [Lockfile(name: "other.lock", contents: lock.contents)], platform: linux),
        ]
        for variant in variants { #expect(variant != base) }
        #expect(Set(variants).count == variants.count)
    }

    @Test func fieldBoundariesCannotBeShifted() throws {
        // "a" + "bc" must not collide with "ab" + "c".
        let a = try CacheKey.derive(prefix: "p", lockfiles: [lock], platform: nil, runtimeVersions: ["a", "bc"])
        let b = try CacheKey.derive(prefix: "p", lockfiles: [lock], platform: nil, runtimeVersions: ["ab", "c"])
        #expect(a != b)
    }

    @Test(arguments: ["", "has/slash", "../escape", ".hidden", "-dash", "spa ce", "naïve", String(repeating: "k", count: 201)])
    func invalidKeysAreRejectedWithAReason(_ raw: String) {
        #expect(throws: CacheKeyError.self) { try CacheKey(raw) }
    }

    @Test func theErrorSaysWhatIsWrong() {
        #expect {
            try CacheKey("node/modules")
        } throws: { error in
            "\(error)".contains("'/'") && "\(error)".contains("letters, digits")
        }
    }

    @Test func derivationNeedsALockfile() {
        #expect(throws: CacheKeyError.self) { try CacheKey.derive(prefix: "deps", lockfiles: []) }
        #expect(throws: CacheKeyError.self) { try CacheKey.derive(prefix: "bad prefix", lockfiles: [lock]) }
        #expect(throws: CacheKeyError.self) { try CacheKey.derive(prefix: "deps", lockfiles: [lock, lock]) }
    }

    @Test func keysRoundTripThroughJSONAndRejectBadOnes() throws {
        let key = try CacheKey("node-modules-abc")
        let data = try JSONEncoder().encode([key])
        #expect(try JSONDecoder().decode([CacheKey].self, from: data) == [key])
        #expect(throws: DecodingError.self) { try JSONDecoder().decode([CacheKey].self, from: Data(#"["a/b"]"#.utf8)) }
    }
}

@Suite struct CacheManifestTests {
    @Test func roundTripsWithStableFieldNames() throws {
        let manifest = CacheManifest(
            key: try CacheKey("node-modules-abc"), archiveSHA256: String(repeating: "ab", count: 32),
            archiveSize: 1234, codec: "zstd", level: 1, uncompressedSize: 5678, entryCount: 42,
            createdAt: Date(timeIntervalSince1970: 1_800_000_000)
        )
        let data = try manifest.jsonData()
        let object = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        #expect(Set(object.keys) == [
            "formatVersion", "key", "archiveSHA256", "archiveSize", "codec", "level", "uncompressedSize",
            "entryCount", "createdAt", "producer",
        ])
        #expect(object["createdAt"] as? String == "2027-01-15T08:00:00Z")
        #expect(try CacheManifest(jsonData: data) == manifest)
    }

    @Test func toleratesFieldsFromANewerProducer() throws {
        let json = """
            {"formatVersion":2,"key":"k-1","archiveSHA256":"00","archiveSize":1,"codec":"zstd","level":3,
             "uncompressedSize":2,"entryCount":1,"createdAt":"2026-01-01T00:00:00Z","producer":"future",
             "signature":{"alg":"ed25519","value":"..."},"chunks":[1,2,3]}
            """
        let manifest = try CacheManifest(jsonData: Data(json.utf8))
        #expect(manifest.formatVersion == 2)
        #expect(manifest.producer == "future")
    }

    @Test func aMissingFieldIsAnError() {
        #expect(throws: DecodingError.self) { try CacheManifest(jsonData: Data(#"{"formatVersion":1}"#.utf8)) }
    }
}
