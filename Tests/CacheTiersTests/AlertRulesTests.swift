import CacheTiersTesting
import Foundation
import SystemPackage
import Testing

/// Deploy/prometheus checked with Prometheus's own tools: the rules load, each alert's
/// unit tests (cachetiers-rules.test.yml) pass, the example configuration is valid, and
/// the time-compressed rules the real-Prometheus test loads are the shipped ones.
@Suite struct AlertRulesTests {
    @Test(.needsPromtool) func theShippedRulesLoadAndPassTheLinter() async throws {
        let result = try await AlertRules.promtool(["check", "rules", "--lint=all", "--lint-fatal", AlertRules.rulesFile])
        #expect(result.status == 0, "promtool check rules:\n\(result.stdout)\(result.stderr)")
    }

    @Test(.needsPromtool) func everyAlertFiresAndStaysSilentAsItsUnitTestsSay() async throws {
        let result = try await AlertRules.promtool(["test", "rules", AlertRules.unitTestsFile])
        #expect(result.status == 0, "promtool test rules:\n\(result.stdout)\(result.stderr)")
    }

    @Test(.needsPromtool) func theExampleConfigurationIsValidWithItsRules() async throws {
        // promtool checks that the token file exists: point the example at one.
        let scratch = try TemporaryDirectory(prefix: "promconfig")
        defer { scratch.remove() }
        let token = scratch.path.appending("cachetiers-master.token").string
        try Data("t0ken\n".utf8).write(to: URL(fileURLWithPath: token))
        let example = try String(contentsOfFile: AlertRules.exampleConfig, encoding: .utf8)
        #expect(example.contains("/etc/prometheus/cachetiers-master.token"))
        let config = scratch.path.appending("prometheus.yml").string
        try Data(example.replacingOccurrences(of: "/etc/prometheus/cachetiers-master.token", with: token).utf8)
            .write(to: URL(fileURLWithPath: config))
        try FileManager.default.copyItem(atPath: AlertRules.rulesFile, toPath: scratch.path.appending("cachetiers-rules.yml").string)

        let result = try await AlertRules.promtool(["check", "config", config])
        #expect(result.status == 0, "promtool check config:\n\(result.stdout)\(result.stderr)")
        // The rules file was found beside the config and loaded, not just named.
        #expect(result.stdout.contains("Checking \(scratch.path.appending("cachetiers-rules.yml").string)"), "\(result.stdout)")
        #expect(result.stdout.contains("SUCCESS: 1 rule files found"), "\(result.stdout)")
    }

    /// Every alert carries the annotations an on-call engineer reads, its runbook section
    /// exists, and its unit tests show it both firing and silent.
    @Test func everyAlertHasASummaryARunbookSectionAndUnitTestsBothWays() throws {
        let rules = try String(contentsOfFile: AlertRules.rulesFile, encoding: .utf8)
        let unitTests = try String(contentsOfFile: AlertRules.unitTestsFile, encoding: .utf8)
        let documentation = try String(
            contentsOf: Fixtures.repositoryRoot.appendingPathComponent("Documentation/Monitoring-alerts.md"), encoding: .utf8
        )
        let blocks = rules.components(separatedBy: "- alert: ").dropFirst()
        let names = blocks.map { String($0.prefix { !$0.isNewline }) }
        #expect(
            Set(names) == [
                "CacheTiersSlowTransfersP90", "CacheTiersSlowRestore", "CacheTiersSuccessRateLow",
                "CacheTiersErrorBudgetBurnFast", "CacheTiersErrorBudgetBurnSlow", "CacheTiersReportsStale",
            ]
        )
        for (name, block) in zip(names, blocks) {
            let alert = block.components(separatedBy: "\n\n").first ?? ""
            for annotation in ["summary: ", "description: ", "runbook: "] {
                #expect(alert.contains(annotation), "\(name) has no \(annotation)annotation")
            }
            #expect(alert.contains("runbook: \"Documentation/Monitoring-alerts.md#\(name.lowercased())\""), "\(name)'s runbook")
            #expect(documentation.contains("\n## \(name)\n"), "Documentation/Monitoring-alerts.md has no section for \(name)")
            #expect(unitTests.contains("alertname: \(name), exp_alerts: [] }"), "no unit test shows \(name) silent")
            #expect(
                unitTests.contains("alertname: \(name)\n        exp_alerts:\n          - exp_labels:"),
                "no unit test shows \(name) firing"
            )
        }
    }

    /// The real-Prometheus test's rules are the shipped ones with every span of time
    /// divided by 60 and nothing else changed, and they load.
    @Test(.needsPromtool) func theCompressedRulesAreTheShippedOnesWithShorterWindows() async throws {
        let shipped = try String(contentsOfFile: AlertRules.rulesFile, encoding: .utf8)
        let compressed = try AlertRules.compressed()
        #expect(shipped.contains("[1h]") && shipped.contains("[6h]") && shipped.contains("for: 5m"))
        #expect(compressed.contains("[60s]") && compressed.contains("[360s]") && compressed.contains("[5s]"))
        #expect(compressed.contains("offset 360s") && compressed.contains("for: 5s"))
        for window in ["[5m]", "[30m]", "[1h]", "[6h]", "offset 6h", "for: 5m"] {
            #expect(!compressed.contains(window), "\(window) left in the compressed rules")
        }
        // Line for line the same once the spans of time are blanked out.
        let span = try Regex(#"(\[|offset |for: )[0-9]+[smhd]\b"#)
        #expect(shipped.replacing(span, with: "<span>") == compressed.replacing(span, with: "<span>"))
        #expect(shipped.replacing(span, with: "<span>") != shipped)

        let scratch = try TemporaryDirectory(prefix: "promrules")
        defer { scratch.remove() }
        let file = scratch.path.appending("compressed-rules.yml").string
        try Data(compressed.utf8).write(to: URL(fileURLWithPath: file))
        let result = try await AlertRules.promtool(["check", "rules", file])
        #expect(result.status == 0, "promtool check rules on the compressed rules:\n\(result.stdout)\(result.stderr)")
    }
}
