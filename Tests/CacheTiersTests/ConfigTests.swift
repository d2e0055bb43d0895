import AsyncHTTPClient
import CacheTiers
import CacheTiersTesting
import Foundation
import Synchronization
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

    /// A folder holding `json` as `cachetiers.json` and the token file the spec example names.
    static func project(_ json: String = specExample, token: String = "t0ken\n") throws -> TemporaryDirectory {
        let scratch = try TemporaryDirectory(prefix: "config")
        try Data(json.utf8).write(to: URL(fileURLWithPath: scratch.path.appending("cachetiers.json").string))
        try Data(token.utf8).write(to: URL(fileURLWithPath: scratch.path.appending("peer.token").string))
        return scratch
    }

    @Test func theSpecExampleParsesWithPathsResolvedAgainstItsFolder() throws {
        let scratch = try Self.project()
        defer { scratch.remove() }
        let folder = scratch.path.lexicallyNormalized()
        let config = try CacheTiersConfig.load(from: scratch.path.appending("cachetiers.json"))
        #expect(config.destination == folder.appending("node_modules"))
        #expect(config.keyInputs?.files == [scratch.path.appending("package-lock.json")])
        #expect(config.tiers.map(\.name) == ["cache-master", "gcs", "local", "fresh-install"])
        guard case .peer(let peer) = config.tiers[0].source, case .gcs(let gcs) = config.tiers[1].source,
            case .directory(let directory) = config.tiers[2].source, case .install(let install) = config.tiers[3].source
        else {
            Issue.record("tier kinds out of order")
            return
        }
        #expect(peer.peers == ["http://10.0.0.5:7420"] && peer.token == "t0ken", "the token file is read, trimmed")
        #expect(peer.connectTimeout == .seconds(2))
        #expect(config.tiers[0].policy.stallTimeout == .seconds(15) && config.tiers[0].policy.retry.maxAttempts == 3)
        #expect(gcs.bucket == "workspace-caches" && gcs.prefix == "node-modules/" && gcs.parallelDownloads == 4)
        #expect(gcs.endpoint == "http://127.0.0.1:4443" && gcs.credentials is NoAccessToken && gcs.pricePerGB == 0.12)
        #expect(config.tiers[1].policy.timeout == .seconds(180))
        #expect(directory == "/var/cache/cachetiers")
        #expect(install.command == ["npm", "ci"] && install.workingDirectory == folder && install.produces == "node_modules")
        #expect(install.environment == ["CI": "true"] && config.tiers[3].policy.timeout == .seconds(900))
        #expect(config.chainConfiguration.deadline == .seconds(600))
        #expect(config.chainConfiguration.writeBack.isEnabled && !config.chainConfiguration.writeBack.waitForCompletion)
        #expect(config.compression == ZstdCodec(level: 1, threads: 0))
    }

    /// A field the file leaves out has the default of the type it configures: the
    /// reader starts from that type's own initializer and preset.
    @Test func fieldsLeftOutKeepTheDefaultsOfTheTypesTheyConfigure() throws {
        let json = #"""
            {"key": {"prefix": "p"}, "destination": "x", "tiers": [
              {"kind": "peer", "urls": ["http://a:1/"]}, {"kind": "gcs", "bucket": "b"},
              {"kind": "directory", "path": "c"}, {"kind": "install", "command": ["npm", "ci"], "produces": "node_modules"}]}
            """#
        let config = try CacheTiersConfig(json: Data(json.utf8), baseDirectory: "/srv/app")
        #expect(config.tiers.map(\.name) == ["peer", "gcs", "directory", "install"], "a tier is named for its kind")
        guard case .peer(let peer) = config.tiers[0].source, case .gcs(let gcs) = config.tiers[1].source,
            case .directory(let directory) = config.tiers[2].source, case .install(let install) = config.tiers[3].source
        else {
            Issue.record("tier kinds out of order")
            return
        }
        let peerDefaults = VMPeerSource.Configuration(peers: ["http://a:1"])
        #expect(peer.peers == peerDefaults.peers, "the initializer's normalization (no trailing /) applies")
        #expect(peer.connectTimeout == peerDefaults.connectTimeout && peer.selection == peerDefaults.selection && peer.token == nil)
        #expect(peer.maxConnectionsPerPeer == peerDefaults.maxConnectionsPerPeer)
        let gcsDefaults = GCSSource.Configuration(bucket: "b")
        #expect(gcs.prefix == gcsDefaults.prefix && gcs.endpoint == gcsDefaults.endpoint && gcs.credentials is NoAccessToken)
        #expect(gcs.connectTimeout == gcsDefaults.connectTimeout && gcs.parallelDownloads == gcsDefaults.parallelDownloads)
        #expect(gcs.segmentSize == gcsDefaults.segmentSize && gcs.pricePerGB == gcsDefaults.pricePerGB)
        #expect(directory == "/srv/app/c")
        #expect(install.workingDirectory == "/srv/app" && install.environment.isEmpty && install.inheritsEnvironment)
        for (tier, preset) in zip(config.tiers, [TierChain.TierPolicy.peer, .gcs, .directory, .install]) {
            #expect(PolicyLimits(tier.policy) == PolicyLimits(preset), "\(tier.name)")
        }
        let chainDefaults = TierChain.Configuration()
        #expect(config.chainConfiguration.deadline == chainDefaults.deadline)
        #expect(config.chainConfiguration.writeBack.isEnabled == chainDefaults.writeBack.isEnabled)
        #expect(config.chainConfiguration.writeBack.waitForCompletion == chainDefaults.writeBack.waitForCompletion)
        #expect(config.chainConfiguration.writeBack.limits == CachePublisher.Limits())
        #expect(config.compression == ZstdCodec())
    }

    /// The presets are the per-kind defaults Documentation/Configuration.md lists.
    @Test func eachKindsPresetIsWhatTheReferenceSays() {
        let floor = TierChain.TierPolicy.defaultMinimumThroughput
        #expect(PolicyLimits(.peer) == PolicyLimits(timeout: .seconds(120), stall: .seconds(15), floor: floor, attempts: 3, writeBack: true))
        #expect(PolicyLimits(.gcs) == PolicyLimits(timeout: .seconds(180), stall: .seconds(30), floor: floor, attempts: 3, writeBack: true))
        #expect(PolicyLimits(.directory) == PolicyLimits(timeout: .seconds(120), stall: .seconds(30), floor: floor, attempts: 2, writeBack: true))
        #expect(PolicyLimits(.install) == PolicyLimits(timeout: .seconds(900), stall: nil, floor: nil, attempts: 1, writeBack: true))
    }

    @Test func everyFieldTheFileSetsReachesTheConfigurationItBelongsTo() throws {
        let json = #"""
            {"key": {"prefix": "p"}, "destination": "x", "deadlineSeconds": 42.5, "tiers": [
              {"kind": "peer", "urls": ["http://a:1", "http://b:1"], "selection": "rendezvous", "connectTimeoutSeconds": 0.25,
               "timeoutSeconds": 7, "stallSeconds": 1.5, "minBytesPerSecond": 0, "maxAttempts": 9, "writeBack": false},
              {"kind": "gcs", "bucket": "b", "connectTimeoutSeconds": 3, "parallelDownloads": 16, "segmentMiB": 2,
               "pricePerGB": 0, "refreshCustomTime": false, "credentials": {"kind": "metadata"}, "endpoint": "http://127.0.0.1:4443/"},
              {"kind": "install", "command": ["npm", "ci"], "produces": "node_modules", "workingDirectory": "app",
               "stallSeconds": 60, "minBytesPerSecond": 100}],
             "writeBack": {"enabled": false, "wait": true, "timeoutSeconds": 5, "stallSeconds": 2},
             "compression": {"level": -5, "threads": 3}}
            """#
        let config = try CacheTiersConfig(json: Data(json.utf8), baseDirectory: "/srv/app")
        guard case .peer(let peer) = config.tiers[0].source, case .gcs(let gcs) = config.tiers[1].source,
            case .install(let install) = config.tiers[2].source
        else {
            Issue.record("tier kinds out of order")
            return
        }
        #expect(peer.selection == .rendezvous && peer.connectTimeout == .milliseconds(250))
        #expect(PolicyLimits(config.tiers[0].policy) == PolicyLimits(timeout: .seconds(7), stall: .milliseconds(1500), floor: 0, attempts: 9, writeBack: false))
        #expect(gcs.connectTimeout == .seconds(3) && gcs.parallelDownloads == 16 && gcs.segmentSize == 2 << 20 && gcs.pricePerGB == 0)
        #expect(!gcs.refreshCustomTime, "refreshCustomTime is on by default, so false must come from the file")
        #expect(gcs.endpoint == "http://127.0.0.1:4443" && !(gcs.credentials is NoAccessToken))
        #expect(install.workingDirectory == "/srv/app/app")
        #expect(PolicyLimits(config.tiers[2].policy) == PolicyLimits(timeout: .seconds(900), stall: .seconds(60), floor: 100, attempts: 1, writeBack: true))
        #expect(config.chainConfiguration.deadline == .milliseconds(42_500))
        #expect(!config.chainConfiguration.writeBack.isEnabled && config.chainConfiguration.writeBack.waitForCompletion)
        #expect(config.chainConfiguration.writeBack.limits == CachePublisher.Limits(timeout: .seconds(5), stallTimeout: .seconds(2)))
        #expect(config.compression == ZstdCodec(level: -5, threads: 3) && config.packer.codec.level == -5)
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
        (#"{"key":{"prefix":"p"},"destination":"x","tiers":[{"kind":"directory","path":"c"},{"kind":"peer","urls":["http://a:1"],"connectTimeoutSeconds":0}]}"#,
         "tiers[1].connectTimeoutSeconds: must be at least 0.001"),
        (#"{"key":{"prefix":"p"},"destination":"x","tiers":[{"kind":"directory","path":"c","timeoutSecs":5}]}"#,
         "tiers[0].timeoutSecs: unknown field"),
        (#"{"key":{"prefix":"p"},"destination":"x","tiers":[{"kind":"gcs","bucket":"b","credentials":{"kind":"none","file":"k"}}]}"#,
         "tiers[0].credentials.file: unknown field"),
        (#"{"key":{"prefix":"p"},"destination":"x","tiers":[{"kind":"gcs","bucket":"b","credentials":{"kind":"oauth"}}]}"#,
         "tiers[0].credentials.kind: expected none, metadata, serviceAccount or token, got \"oauth\""),
        (#"{"key":{"prefix":"p"},"destination":"x","tiers":[{"kind":"gcs","bucket":"b","endpoint":"storage.googleapis.com"}]}"#,
         "tiers[0].endpoint: expected an http:// or https:// URL"),
        (#"{"key":{"prefix":"p"},"destination":"x","tiers":[{"kind":"gcs","bucket":"b","segmentMiB":0}]}"#,
         "tiers[0].segmentMiB: must be at least 1"),
        (#"{"key":{"prefix":"p"},"destination":"x","tiers":[{"kind":"peer","urls":["http://a:1"],"selection":"random"}]}"#,
         "tiers[0].selection: expected \"ordered\" or \"rendezvous\", got \"random\""),
        (#"{"key":{"prefix":"p"},"destination":"x","tiers":[{"kind":"peer","urls":["http://a:1"],"tokenFile":""}]}"#,
         "tiers[0].tokenFile: must not be empty"),
        (#"{"key":{"prefix":"p"},"destination":"x","tiers":[{"kind":"peer"}]}"#, "tiers[0].urls: required: at least one cache master URL"),
        (#"{"key":{"prefix":"p"},"destination":"x","tiers":[{"kind":"install","produces":"node_modules"}]}"#, "tiers[0].command: required"),
        (#"{"key":{"prefix":"p"},"destination":"x","tiers":[{"kind":"cdn"}]}"#, "tiers[0].kind: expected peer, gcs, directory or install"),
        (#"{"key":{"prefix":"p"},"destination":"x","tiers":[{"kind":"directory","path":"c"},"local"]}"#,
         "tiers[1]: expected an object, got a string"),
        (#"{"key":{"prefix":"p"},"destination":"x","tiers":[{"kind":"directory","path":"c"}],"writeBack":{"timeout":5}}"#,
         "writeBack.timeout: unknown field"),
        (#"{"key":{"prefix":"p"},"destination":"x","tiers":[{"kind":"directory","path":"c"}],"writeBack":{"stallSeconds":0}}"#,
         "writeBack.stallSeconds: must be at least 0.001"),
        (#"{"key":{"prefix":"p"},"destination":"x","tiers":[{"kind":"directory","path":"c"}],"compression":{"threads":257}}"#,
         "compression.threads: must be at most 256"),
        (#"{"key":{"prefix":"p"},"destination":"x","tiers":[{"kind":"directory","path":"c"}],"compression":{"lvl":3}}"#,
         "compression.lvl: unknown field"),
        (#"{"key":{"prefix":"p"},"destination":"x","tiers":[{"kind":"directory","path":"c","name":""}]}"#,
         "tiers[0].name: must be 1 to 64 characters with no spaces or control characters"),
        (#"{"key":{"prefix":"p"},"destination":"x","tiers":[{"kind":"directory","path":"c","name":"a\u001b[31m"}]}"#,
         "tiers[0].name: must be 1 to 64 characters with no spaces or control characters"),
        (#"{"key":{"prefix":"p"},"destination":"x","tiers":[{"kind":"peer","urls":["http://"]}]}"#,
         "tiers[0].urls[0]: expected an http:// or https:// URL, got \"http://\""),
        (#"{"key":{"prefix":"p"},"destination":"x","tiers":[{"kind":"peer","urls":["http://a:1","http://u:s3cret@a:2"]}]}"#,
         "tiers[0].urls[1]: a URL with a user or password would print it in every message; put the token in tokenFile"),
        (#"{"key":{"prefix":"p"},"destination":"x","tiers":[{"kind":"directory","path":"c"}],"monitoring":{"report":{"enabled":true}}}"#,
         "monitoring.report.enabled: needs a peer tier: reports go to its cache masters"),
        (#"{"key":{"prefix":"p"},"destination":"x","tiers":[{"kind":"peer","urls":["http://a:1"]}],"monitoring":{"report":{"timeout":1}}}"#,
         "monitoring.report.timeout: unknown field"),
        (#"{"key":{"prefix":"p"},"destination":"x","tiers":[{"kind":"directory","path":"c"}],"monitoring":{"report":{"enabled":false,"maxSpooled":1}}}"#,
         "monitoring.report.maxSpooled: unknown field"),
        (#"{"key":{"prefix":"p"},"destination":"x","tiers":[{"kind":"directory","path":"c"}],"monitoring":{"metricFile":"m.prom"}}"#,
         "monitoring.metricFile: unknown field"),
        (#"{"key":{"prefix":"p"},"destination":"x","tiers":[{"kind":"peer","urls":["http://a:1"]}],"monitoring":{"report":{"timeoutSeconds":120}}}"#,
         "monitoring.report.timeoutSeconds: must be at most 60"),
        (#"{"key":{"prefix":"p"},"destination":"x","tiers":[{"kind":"peer","urls":["http://a:1"]}],"monitoring":{"report":{"maxSpooledReports":-1}}}"#,
         "monitoring.report.maxSpooledReports: must be at least 0"),
        (#"{"key":{"prefix":"p"},"destination":"x","tiers":[{"kind":"peer","urls":["http://a:1"]}],"monitoring":{"report":{"spoolDirectory":""}}}"#,
         "monitoring.report.spoolDirectory: must not be empty"),
        (#"{"key":{"prefix":"p"},"destination":"x","tiers":[{"kind":"directory","path":"c"}],"monitoring":{"metricsFile":""}}"#,
         "monitoring.metricsFile: must not be empty"),
    ])
    func mistakesNameTheirField(json: String, message: String) {
        #expect {
            _ = try CacheTiersConfig(json: Data(json.utf8), baseDirectory: "/srv/app")
        } throws: { error in
            (error as? ConfigError)?.description.hasPrefix(message) == true
        }
    }

    /// `monitoring`: reports go to the first peer tier's masters with its token unless the
    /// section says otherwise; without a peer tier nothing is sent.
    @Test func monitoringDefaultsToThePeerTierAndResolvesItsPaths() throws {
        let base = #"{"key":{"prefix":"p"},"destination":"x","tiers":[{"kind":"directory","path":"c"},"#
            + #"{"kind":"peer","urls":["http://a:1/","http://b:2"],"tokenFile":"peer.token"}]"#
        let scratch = try Self.project(base + "}")
        defer { scratch.remove() }
        let folder = scratch.path.lexicallyNormalized()
        let defaults = try CacheTiersConfig.load(from: scratch.path.appending("cachetiers.json"))
        let report = try #require(defaults.monitoring.report)
        #expect(report.urls == ["http://a:1", "http://b:2"] && report.token == "t0ken")
        #expect(report.timeout == .seconds(1) && report.spoolDirectory == nil && report.maxSpooledReports == 100)
        #expect(defaults.monitoring.metricsFile == nil)

        try Data("r3port\n".utf8).write(to: URL(fileURLWithPath: scratch.path.appending("report.token").string))
        let configured = base + #","monitoring":{"metricsFile":"metrics/cachetiers.prom","report":{"tokenFile":"report.token","#
            + #""timeoutSeconds":0.25,"spoolDirectory":"spool","maxSpooledReports":7}}}"#
        try Data(configured.utf8).write(to: URL(fileURLWithPath: scratch.path.appending("cachetiers.json").string))
        let config = try CacheTiersConfig.load(from: scratch.path.appending("cachetiers.json"))
        #expect(config.monitoring.metricsFile == folder.appending("metrics/cachetiers.prom"))
        #expect(config.monitoring.report?.token == "r3port" && config.monitoring.report?.timeout == .milliseconds(250))
        #expect(config.monitoring.report?.spoolDirectory == folder.appending("spool") && config.monitoring.report?.maxSpooledReports == 7)
        #expect(config.protectedPaths.contains { $0.path == folder.appending("report.token") }, "the report token is one of the config's files")

        let off = base + #","monitoring":{"report":{"enabled":false}}}"#
        #expect(try CacheTiersConfig(json: Data(off.utf8), baseDirectory: folder, readingSecrets: false).monitoring.report == nil)
        let noPeer = #"{"key":{"prefix":"p"},"destination":"x","tiers":[{"kind":"directory","path":"c"}]}"#
        #expect(try CacheTiersConfig(json: Data(noPeer.utf8), baseDirectory: folder).monitoring.report == nil)
    }

    /// Files a tier needs are read while the config loads, so a missing or empty one
    /// is a config error naming its field and the config file, before anything runs.
    @Test(arguments: [
        (#"{"kind":"peer","urls":["http://a:1"],"tokenFile":"missing.token"}"#, "tiers[0].tokenFile: cannot read {dir}/missing.token: No such file or directory"),
        (#"{"kind":"peer","urls":["http://a:1"],"tokenFile":"empty.token"}"#, "tiers[0].tokenFile: {dir}/empty.token is empty; put the token in it"),
        (#"{"kind":"peer","urls":["http://a:1"],"tokenFile":"."}"#, "tiers[0].tokenFile: cannot read {dir}: Is a directory"),
        (#"{"kind":"gcs","bucket":"b","credentials":{"kind":"token","file":"empty.token"}}"#,
         "tiers[0].credentials.file: {dir}/empty.token is empty; put the token in it"),
        (#"{"kind":"gcs","bucket":"b","credentials":{"kind":"token"}}"#, "tiers[0].credentials.file: required"),
        (#"{"kind":"gcs","bucket":"b","credentials":{"kind":"serviceAccount","file":"key.json"}}"#,
         "tiers[0].credentials.file: cannot read the service-account key file {dir}/key.json"),
    ])
    func aSecretFileThatCannotBeUsedIsAConfigErrorBeforeAnythingRuns(tier: String, message: String) throws {
        let scratch = try TemporaryDirectory(prefix: "config")
        defer { scratch.remove() }
        let folder = scratch.path.lexicallyNormalized()
        let file = folder.appending("cachetiers.json")
        try Data("\n".utf8).write(to: URL(fileURLWithPath: folder.appending("empty.token").string))
        try Data(#"{"key":{"prefix":"p"},"destination":"x","tiers":[\#(tier)]}"#.utf8).write(to: URL(fileURLWithPath: file.string))
        let expected = "\(file): " + message.replacingOccurrences(of: "{dir}", with: folder.string)
        #expect {
            _ = try CacheTiersConfig.load(from: file)
        } throws: { error in
            (error as? ConfigError)?.description.hasPrefix(expected) == true
        }
    }

    /// The commands that build tiers stop at the config error, exit 2, before any tier runs.
    @Test(arguments: ["restore", "publish"])
    func anEmptyTokenFileStopsTheCommandWithAConfigError(command: String) async throws {
        let scratch = try Self.project(token: "\n")
        defer { scratch.remove() }
        let file = scratch.path.appending("cachetiers.json")
        let arguments = command == "publish" ? ["publish", scratch.path.string, "--key", "k", "--config", file.string]
            : ["restore", "--config", file.string]
        let result = try await Fixtures.cli(arguments)
        #expect(result.status == 2)
        let token = scratch.path.appending("peer.token").lexicallyNormalized()
        #expect(result.stderr == "cachetiers: config error: \(file): tiers[0].tokenFile: \(token) is empty; put the token in it\n")
        #expect(!FileManager.default.fileExists(atPath: scratch.path.appending("node_modules").string))
    }
}

extension ConfigTests {
    /// `cachetiers key` builds no tier: a machine without the tiers' credentials (a build
    /// server, a laptop) computes the key all the same, and a config error still stops it.
    @Test func theKeyNeedsNoCredentialsButRestoreDoes() async throws {
        let scratch = try Self.project()
        defer { scratch.remove() }
        try FileManager.default.removeItem(atPath: scratch.path.appending("peer.token").string)
        try Data("lock".utf8).write(to: URL(fileURLWithPath: scratch.path.appending("package-lock.json").string))
        let file = scratch.path.appending("cachetiers.json")
        let key = try await Fixtures.cli(["key", "--config", file.string])
        #expect(key.status == 0, "\(key.stderr)")
        #expect(key.stdout.hasPrefix("node-modules-"), "\(key.stdout)")
        let restore = try await Fixtures.cli(["restore", "--config", file.string])
        #expect(restore.status == 2)
        #expect(restore.stderr.contains("tiers[0].tokenFile: cannot read"), "\(restore.stderr)")
    }
}

/// The chain a config builds, and the HTTP clients it owns.
@Suite struct ConfiguredChainTests {
    static let json = #"""
        {"key": {"prefix": "p"}, "destination": "node_modules", "tiers": [
          {"kind": "peer", "name": "master", "urls": ["http://127.0.0.1:9"], "maxAttempts": 2, "writeBack": false},
          {"kind": "gcs", "bucket": "b", "endpoint": "http://127.0.0.1:9"},
          {"kind": "directory", "name": "local", "path": "cache"},
          {"kind": "install", "command": ["true"], "produces": "node_modules"}]}
        """#

    @Test func theChainHasTheConfigsTiersInOrderAndTheSinksAreTheWritableOnes() async throws {
        let config = try CacheTiersConfig(json: Data(Self.json.utf8), baseDirectory: "/srv/app")
        await config.withConfiguredChain(logger: PeerHarness.quietLogger) { chain, sinks in
            #expect(chain.tiers.map(\.name) == ["master", "gcs", "local", "install"])
            #expect(chain.tiers.map { $0.policy.retry.maxAttempts } == [2, 3, 2, 1])
            #expect(chain.tiers.map(\.policy.acceptsWriteBack) == [false, true, true, true])
            #expect(sinks.map(\.name) == ["master", "gcs", "local"], "an install tier takes no archives")
            #expect(chain.configuration.deadline == config.chainConfiguration.deadline)
            #expect(chain.protectedPaths.contains { $0.path == "/srv/app/cache" }, "the directory tier's folder is protected")
        }
    }

    enum Ending: String, CaseIterable, Sendable { case returns, throwsAnError, isCancelled }

    struct Expected: Error {}

    /// The sinks, kept past the body's end.
    final class Escaped: Sendable {
        let sinks = Mutex<[any CacheSink]>([])
    }

    /// However the body ends, the peer's and the bucket's HTTP clients are shut down:
    /// shutting one down again is then refused as already done.
    @Test(arguments: Ending.allCases)
    func theHTTPClientsAreShutDownHoweverTheBodyEnds(ending: Ending) async throws {
        let control = VMPeerSource(configuration: .init(peers: ["http://127.0.0.1:9"]))
        try await control.shutdown()
        await #expect(throws: HTTPClientError.alreadyShutdown, "the check tells a shut-down client from a live one") {
            try await control.shutdown()
        }

        let config = try CacheTiersConfig(json: Data(Self.json.utf8), baseDirectory: "/srv/app")
        let escaped = Escaped()
        let body = Task {
            try await config.withConfiguredChain(logger: PeerHarness.quietLogger) { _, sinks in
                escaped.sinks.withLock { $0 = sinks }
                switch ending {
                case .returns: return
                case .throwsAnError: throw Expected()
                case .isCancelled: try await Task.sleep(for: .seconds(600))
                }
            }
        }
        if ending == .isCancelled {
            while escaped.sinks.withLock({ $0.isEmpty }) { await Task.yield() }
            body.cancel()
        }
        let result = await body.result
        switch ending {
        case .returns: #expect(throws: Never.self) { try result.get() }
        case .throwsAnError: #expect(throws: Expected.self) { try result.get() }
        case .isCancelled: #expect(throws: CancellationError.self) { try result.get() }
        }
        let sinks = escaped.sinks.withLock { $0 }
        #expect(sinks.count == 3)
        for case let source as VMPeerSource in sinks {
            await #expect(throws: HTTPClientError.alreadyShutdown, "\(source.name)") { try await source.shutdown() }
        }
        for case let source as GCSSource in sinks {
            await #expect(throws: HTTPClientError.alreadyShutdown, "\(source.name)") { try await source.shutdown() }
        }
    }
}

/// A policy's limits, comparable (``TierChain/TierPolicy`` is not `Equatable`).
struct PolicyLimits: Equatable, CustomStringConvertible {
    var timeout: Duration
    var stall: Duration?
    var floor: Int64?
    var attempts: Int
    var writeBack: Bool

    init(timeout: Duration, stall: Duration?, floor: Int64?, attempts: Int, writeBack: Bool) {
        self.timeout = timeout
        self.stall = stall
        self.floor = floor
        self.attempts = attempts
        self.writeBack = writeBack
    }

    init(_ policy: TierChain.TierPolicy) {
        self.init(
            timeout: policy.timeout, stall: policy.stallTimeout, floor: policy.minimumThroughput,
            attempts: policy.retry.maxAttempts, writeBack: policy.acceptsWriteBack
        )
    }

    var description: String { "\(timeout), stall \(stall.map { "\($0)" } ?? "none"), floor \(floor.map { "\($0)" } ?? "none"), \(attempts) attempts, writeBack \(writeBack)" }
}
