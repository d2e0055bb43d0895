import CacheTiers
import Foundation
import SystemPackage
import Testing

/// The config file contract: the spec's example parses, paths resolve against the
/// file's folder, and every mistake names its field.
@Suite struct ConfigTests {
    /// The example from Documentation/Contract.md, verbatim.
    static let specExample = #"""
        {
          "key": { "prefix": "node-modules", "files": ["package-lock.json"], "platform": true, "salt": "" },
          "destination": "node_modules",
          "deadlineSeconds": 600,
          "tiers": [
            { "kind": "peer", "name": "cache-master", "urls": ["http://10.0.0.5:7420"], "tokenFile": "peer.token",
              "connectTimeoutSeconds": 2, "timeoutSeconds": 120, "stallSeconds": 15, "maxAttempts": 3 },
            { "kind": "gcs", "name": "gcs", "bucket": "workspace-caches", "prefix": "node-modules/",
              "endpoint": "http://127.0.0.1:4443", "credentials": { "kind": "none" },
              "timeoutSeconds": 180, "maxAttempts": 3, "parallelDownloads": 4, "pricePerGB": 0.12 },
            { "kind": "directory", "name": "local", "path": "/var/cache/cachetiers" },
            { "kind": "install", "name": "fresh-install", "command": ["npm", "ci"], "workingDirectory": ".",
              "produces": "node_modules", "timeoutSeconds": 900, "environment": { "CI": "true" } }
          ],
          "writeBack": { "enabled": true, "wait": false },
          "compression": { "level": 1, "threads": 0 }
        }
        """#

    @Test func theSpecExampleParsesWithPathsResolvedAgainstItsFolder() throws {
        let config = try CacheTiersConfig(json: Data(Self.specExample.utf8), baseDirectory: "/srv/app")
        #expect(config.destination == "/srv/app/node_modules")
        #expect(config.key.files == ["/srv/app/package-lock.json"])
        #expect(config.tiers.map(\.name) == ["cache-master", "gcs", "local", "fresh-install"])
        guard case .peer(let peer) = config.tiers[0], case .gcs(let gcs) = config.tiers[1],
            case .directory(let directory) = config.tiers[2], case .install(let install) = config.tiers[3]
        else {
            Issue.record("tier kinds out of order")
            return
        }
        #expect(peer.tokenFile == "/srv/app/peer.token")
        #expect(peer.limits.stallSeconds == 15 && peer.limits.maxAttempts == 3 && peer.connectTimeoutSeconds == 2)
        #expect(gcs.bucket == "workspace-caches" && gcs.prefix == "node-modules/" && gcs.parallelDownloads == 4)
        #expect(gcs.endpoint == "http://127.0.0.1:4443" && gcs.credentials == .none && gcs.pricePerGB == 0.12)
        #expect(directory.path == "/var/cache/cachetiers")
        #expect(install.command == ["npm", "ci"] && install.workingDirectory == "/srv/app" && install.produces == "node_modules")
        #expect(install.environment == ["CI": "true"] && install.limits.timeoutSeconds == 900)
        #expect(config.writeBackEnabled && !config.writeBackWaits)
        #expect(config.compressionLevel == 1 && config.compressionThreads == 0)
    }

    @Test(arguments: [
        (#"{"destination":"x","tiers":[{"kind":"directory","path":"c"}]}"#, "key: required"),
        (#"{"key":{"prefix":"p"},"tiers":[{"kind":"directory","path":"c"}]}"#, "destination: required"),
        (#"{"key":{"prefix":"p"},"destination":"x","tiers":[]}"#, "tiers: must list at least one tier"),
        (#"{"key":{"prefix":"p"},"destination":"x","tiers":[{"kind":"directory"}]}"#, "tiers[0].path: required"),
        (#"{"key":{"prefix":"p"},"destination":"x","tiers":[{"kind":"directory","path":"c"},{"kind":"gcs"}]}"#, "tiers[1].bucket: required"),
        (#"{"key":{"prefix":"p","files":"package-lock.json"},"destination":"x","tiers":[{"kind":"directory","path":"c"}]}"#,
         "key.files: expected an array of strings, got a string"),
        (#"{"key":{"prefix":"p"},"destination":"x","tiers":[{"kind":"peer","urls":["10.0.0.5:7420"]}]}"#,
         "tiers[0].urls[0]: expected an http:// or https:// URL"),
        (#"{"key":{"prefix":"p"},"destination":"x","tiers":[{"kind":"gcs","bucket":"b","credentials":{"kind":"serviceAccount"}}]}"#,
         "tiers[0].credentials.file: required"),
        (#"{"key":{"prefix":"p"},"destination":"x","tiers":[{"kind":"install","command":["npm","ci"],"produces":"../x"}]}"#,
         "tiers[0].produces: must be a path inside workingDirectory"),
        (#"{"key":{"prefix":"p"},"destination":"x","tiers":[{"kind":"directory","path":"c","maxAttempts":0}]}"#,
         "tiers[0].maxAttempts: must be at least 1"),
        (#"{"key":{"prefix":"p"},"destination":"x","tiers":[{"kind":"directory","path":"c","maxAttempts":1.5}]}"#,
         "tiers[0].maxAttempts: expected a whole number"),
        (#"{"key":{"prefix":"p"},"destination":"x","tiers":[{"kind":"directory","path":"c"}],"writeBack":{"enabled":"yes"}}"#,
         "writeBack.enabled: expected true or false, got a string"),
        (#"{"key":{"prefix":"p"},"destination":"x","tiers":[{"kind":"directory","path":"c"}],"extra":1}"#, "extra: unknown field"),
        (#"{"key":{"prefix":"p"},"destination":"x","tiers":[{"kind":"directory","name":"a","path":"c"},{"kind":"directory","name":"a","path":"d"}]}"#,
         "tiers[1].name: \"a\" is already the name of another tier"),
        (#"{"key":{"prefix":"p"},"destination":"x","#, "(file): not valid JSON"),
    ])
    func mistakesNameTheirField(json: String, message: String) {
        #expect {
            _ = try CacheTiersConfig(json: Data(json.utf8), baseDirectory: "/srv/app")
        } throws: { error in
            (error as? ConfigError)?.description.hasPrefix(message) == true
        }
    }

    @Test func aMissingTokenFileIsAConfigErrorBeforeAnythingRuns() throws {
        let config = try CacheTiersConfig(json: Data(Self.specExample.utf8), baseDirectory: "/nonexistent")
        #expect {
            _ = try config.makeChain(logger: PeerHarness.quietLogger)
        } throws: { error in
            (error as? ConfigError)?.path == "tiers[0].tokenFile"
        }
    }
}
