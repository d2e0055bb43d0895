import CacheTiers
import CacheTiersTesting
import Foundation
import SystemPackage
import Testing

/// The fresh-install tier: a real package manager (pip, offline), failures, and the process group.
@Suite struct FreshInstallSourceTests {
    let logger = PeerHarness.quietLogger

    func chain(_ source: FreshInstallSource, timeout: Duration = .seconds(120)) -> TierChain {
        TierChain(
            tiers: [.init(source, policy: .init(timeout: timeout, stallTimeout: nil, retry: .none))],
            configuration: .init(deadline: .seconds(180), writeBack: .disabled, retryBudget: RetryBudget()),
            logger: logger
        )
    }

    @Test func pipInstallsOfflineAndTheTreeIsPromoted() async throws {
        let scratch = try TemporaryDirectory(prefix: "install")
        defer { scratch.remove() }
        let project = try await PipProject.make(in: scratch.path)
        let before = try TreeSnapshot(of: project.directory)
        let source = FreshInstallSource(
            name: "fresh-install",
            configuration: .init(command: project.command, workingDirectory: project.directory, produces: "site-packages")
        )
        let destination = project.directory.appending("site-packages")
        let report = try await chain(source).restore(try CacheKey("python-deps"), into: destination)

        #expect(report.servedBy == "fresh-install")
        #expect(try await PipProject.importValue(from: destination) == "42", "ctdemo_a and its dependency ctdemo_b installed")
        #expect(FileManager.default.fileExists(atPath: destination.appending("ctdemo_b/data/table.txt").string))
        // The project gained the promoted tree and nothing else; no scratch folder is left beside it.
        var after = try TreeSnapshot(of: project.directory)
        after.entries = after.entries.filter { $0.key != "site-packages" && !$0.key.hasPrefix("site-packages/") }
        #expect(after.differences(from: before) == [])
        let siblings = try FileManager.default.contentsOfDirectory(atPath: scratch.path.string).sorted()
        #expect(siblings == ["project", "wheels"])
    }

    @Test func aFailingCommandCarriesItsStatusAndLastLines() async throws {
        let scratch = try TemporaryDirectory(prefix: "install")
        defer { scratch.remove() }
        let project = scratch.path.appending("project")
        try FileManager.default.createDirectory(atPath: project.string, withIntermediateDirectories: true)
        let source = FreshInstallSource(
            configuration: .init(
                command: ["/bin/sh", "-c", "for i in $(seq 1 50); do echo line $i; done; echo 'npm ERR! 404 left-pad' >&2; exit 3"],
                workingDirectory: project, produces: "node_modules", failureOutputLines: 5
            )
        )
        let failure = await #expect(throws: RestoreFailure.self) {
            try await chain(source).restore(try CacheKey("failing"), into: project.appending("node_modules"))
        }
        let error = try #require(failure?.report.attempts.first?.error)
        #expect(failure?.report.attempts.map(\.outcome) == [.error])
        #expect(error.contains("exited with status 3"))
        #expect(error.contains("npm ERR! 404 left-pad"), "stderr is in the tail")
        #expect(error.contains("line 50") && !error.contains("line 45"), "only the last 5 lines")
        #expect(!FileManager.default.fileExists(atPath: project.appending("node_modules").string))
    }

    @Test func theShadowOfAKilledInstallIsRemovedBeforeTheNextOne() async throws {
        let scratch = try TemporaryDirectory(prefix: "install")
        defer { scratch.remove() }
        let project = try scratch.makeDirectory("project")
        let gone = try Fixtures.processIDOfAFinishedProcess()
        let leftover = scratch.path.appending(".project.cachetiers-install-\(gone)@\(Fixtures.hostName)-4f2a")
        let running = scratch.path.appending(".project.cachetiers-install-1@\(Fixtures.hostName)-9c1d")
        for shadow in [leftover, running] {
            try SampleTree.write(to: shadow.appending("node_modules"), files: 3)
        }
        let source = FreshInstallSource(
            configuration: .init(
                command: ["/bin/sh", "-c", "mkdir node_modules && echo installed > node_modules/a.js"],
                workingDirectory: project, produces: "node_modules"
            )
        )
        let report = try await chain(source).restore(try CacheKey("after-a-kill"), into: project.appending("node_modules"))
        #expect(report.servedBy == source.name)
        #expect(FileManager.default.fileExists(atPath: running.string), "another process's install is never touched")
        #expect(!FileManager.default.fileExists(atPath: leftover.string))
        let siblings = try FileManager.default.contentsOfDirectory(atPath: scratch.path.string).sorted()
        #expect(siblings == [running.lastComponent!.string, "project"])
    }

    @Test func aCommandThatProducesNothingIsAnError() async throws {
        let scratch = try TemporaryDirectory(prefix: "install")
        defer { scratch.remove() }
        let source = FreshInstallSource(
            configuration: .init(command: ["/bin/true"], workingDirectory: scratch.path, produces: "node_modules")
        )
        let failure = await #expect(throws: RestoreFailure.self) {
            try await chain(source).restore(try CacheKey("nothing"), into: scratch.path.appending("node_modules"))
        }
        #expect(failure?.report.attempts.first?.error?.contains("did not create node_modules") == true)
    }

    @Test func aTimeoutKillsTheWholeProcessGroup() async throws {
        let scratch = try TemporaryDirectory(prefix: "install")
        defer { scratch.remove() }
        // A marker no other process on the machine has in its command line.
        let marker = "\(Int.random(in: 30_000...39_999)).5"
        let source = FreshInstallSource(
            configuration: .init(
                command: ["/bin/sh", "-c", "sleep \(marker) & sleep \(marker) & wait"],
                workingDirectory: scratch.path, produces: "node_modules", terminationGracePeriod: .milliseconds(500)
            )
        )
        let failure = await #expect(throws: RestoreFailure.self) {
            try await chain(source, timeout: .seconds(1)).restore(try CacheKey("slow"), into: scratch.path.appending("node_modules"))
        }
        #expect(failure?.report.attempts.map(\.outcome) == [.timeout])
        // The shell and both children are gone: nothing is left running `sleep MARKER`.
        var survivors = 1
        for _ in 0..<40 where survivors > 0 {
            survivors = try await Fixtures.run(["pgrep", "-f", "sleep \(marker)"]).stdout.split(separator: "\n").count
            if survivors > 0 { try await Task.sleep(for: .milliseconds(100)) }
        }
        #expect(survivors == 0, "no orphaned installer processes")
    }
}
