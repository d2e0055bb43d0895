import CacheTiers
import CacheTiersTesting
import Foundation
import Logging
import SystemPackage
import Testing

/// The fresh-install tier with the package manager the product's users run: real `npm ci`, offline, on
/// a project whose dependencies are tarballs made by `npm pack`.
@Suite(.serialized) struct NpmInstallTests {
    let logger = PeerHarness.quietLogger

    func chain(_ tiers: [TierChain.Tier]) -> TierChain {
        TierChain(
            tiers: tiers,
            configuration: .init(deadline: .seconds(300), writeBack: .disabled, retryBudget: RetryBudget()),
            logger: logger
        )
    }

    func install(_ project: NpmProject) -> FreshInstallSource {
        FreshInstallSource(
            name: "npm",
            configuration: .init(command: NpmProject.ciCommand, workingDirectory: project.folder, produces: "node_modules")
        )
    }

    /// Every file of the project but its node_modules.
    func projectFiles(_ project: NpmProject) throws -> [String: [UInt8]] {
        var files: [String: [UInt8]] = [:]
        for name in try FileManager.default.contentsOfDirectory(atPath: project.folder.string) where name != "node_modules" {
            let path = project.folder.appending(name).string
            var isDirectory: ObjCBool = false
            if FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), !isDirectory.boolValue {
                files[name] = Array(try Data(contentsOf: URL(fileURLWithPath: path)))
            }
        }
        return files
    }

    @Test func npmCiInstallsTheProjectAndTheRestoredTreeIsWhatNpmMade() async throws {
        let scratch = try TemporaryDirectory(prefix: "npm")
        defer { scratch.remove() }
        let project = try await NpmProject.make(in: scratch.path)
        // A stale tree where node_modules goes: npm ci would delete it first, in place.
        try NpmProject.write(project.nodeModules.appending("stale/index.js"), "module.exports = 'stale';\n")
        let before = try projectFiles(project)

        let report = try await chain([.init(install(project), policy: .init(timeout: .seconds(240), stallTimeout: nil))])
            .restore(try CacheKey("npm-app"), into: project.nodeModules)
        #expect(report.servedBy == "npm")

        let modules = project.nodeModules
        let bin = try FileManager.default.destinationOfSymbolicLink(atPath: modules.appending(".bin/left-pad-local").string)
        #expect(bin == "../left-pad-local/cli.js", "npm's .bin link")
        #expect(FileManager.default.fileExists(atPath: modules.appending(".package-lock.json").string), "npm's hidden lockfile")
        #expect(FileManager.default.fileExists(atPath: modules.appending("with-postinstall/installed.txt").string), "the postinstall ran")
        #expect(!FileManager.default.fileExists(atPath: modules.appending("stale").string), "the old tree was replaced whole")
        #expect(try await NpmProject.node("console.log(require('left-pad-local')('5', 3))", in: project.folder) == "005")
        #expect(try await NpmProject.node("console.log(require('with-postinstall'))", in: project.folder) == "true")
        let cli = try await Fixtures.run([modules.appending(".bin/left-pad-local").string, "42", "5"], in: project.folder)
        #expect(cli.stdout == "00042\n", "\(cli.stderr)")
        #expect(try projectFiles(project) == before, "npm ran in the shadow: package.json and the lockfile are untouched")
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: scratch.path.string).sorted()
        #expect(leftovers == ["app", "packages", "tarballs"], "no shadow left beside the project")
    }

    @Test func theProjectsNpmrcIsReadInTheShadow() async throws {
        let scratch = try TemporaryDirectory(prefix: "npm")
        defer { scratch.remove() }
        let project = try await NpmProject.make(in: scratch.path)
        try NpmProject.write(project.folder.appending(".npmrc"), "ignore-scripts=true\n")
        _ = try await chain([.init(install(project), policy: .init(timeout: .seconds(240), stallTimeout: nil))])
            .restore(try CacheKey("npm-npmrc"), into: project.nodeModules)
        #expect(
            !FileManager.default.fileExists(atPath: project.nodeModules.appending("with-postinstall/installed.txt").string),
            "ignore-scripts from the project's .npmrc applied"
        )
        #expect(try await NpmProject.node("console.log(require('left-pad-local')('7', 2))", in: project.folder) == "07")
    }

    @Test func theTreeNpmMadeRestoresThroughTheCacheMasterAndRequiresTheSame() async throws {
        try await PeerHarness.with { peer in
            let project = try await NpmProject.make(in: peer.scratch.path)
            let key = try CacheKey("npm-peer")
            _ = try await chain([.init(install(project), policy: .init(timeout: .seconds(240), stallTimeout: nil))])
                .restore(key, into: project.nodeModules)
            try await peer.publish(project.nodeModules, as: key)

            // Another VM: the same project files, no node_modules, the peer tier.
            let other = peer.scratch.path.appending("other-vm")
            try FileManager.default.createDirectory(atPath: other.string, withIntermediateDirectories: true)
            for name in ["package.json", "package-lock.json"] {
                try FileManager.default.copyItem(atPath: project.folder.appending(name).string, toPath: other.appending(name).string)
            }
            let source = VMPeerSource(configuration: .init(peers: [peer.url]))
            let report = try await chain([.init(source)]).restore(key, into: other.appending("node_modules"))
            try await source.shutdown()
            #expect(report.servedBy == "peer")
            #expect(
                try TreeSnapshot(of: other.appending("node_modules")).differences(from: TreeSnapshot(of: project.nodeModules)) == []
            )
            let script = "console.log(require('left-pad-local')('9', 4), require('with-postinstall'))"
            #expect(try await NpmProject.node(script, in: other) == "0009 true")
            #expect(try await NpmProject.node(script, in: other) == (try await NpmProject.node(script, in: project.folder)))
        }
    }
}
