import CacheTiersTesting
import Foundation
import SystemPackage
import Testing

extension Trait where Self == ConditionTrait {
    /// Runs the test when promtool is installed, and always in CI (where a missing
    /// promtool is a failure, not a skip).
    static var needsPromtool: Self {
        .enabled(
            if: PrometheusServer.promtool != nil || GCSHarness.isCI,
            "SKIPPED: promtool is not installed (apt-get install prometheus); CI installs it and runs these"
        )
    }

    /// Runs the test when the Prometheus server is installed, and always in CI.
    static var needsPrometheus: Self {
        .enabled(
            if: PrometheusServer.binary != nil || GCSHarness.isCI,
            "SKIPPED: prometheus is not installed (apt-get install prometheus); CI installs it and runs these"
        )
    }
}

/// The shipped alerting rules (Deploy/prometheus), promtool, and the rules with time
/// compressed for a real Prometheus that can only run for seconds.
enum AlertRules {
    static let folder = Fixtures.repositoryRoot.appendingPathComponent("Deploy/prometheus")
    static let rulesFile = folder.appendingPathComponent("cachetiers-rules.yml").path
    static let unitTestsFile = folder.appendingPathComponent("cachetiers-rules.test.yml").path
    static let exampleConfig = folder.appendingPathComponent("prometheus.yml").path
    static let dashboard = folder.appendingPathComponent("grafana-dashboard.json").path

    /// The PromQL of every panel of the example Grafana dashboard.
    static func dashboardExpressions() throws -> [String] {
        struct Dashboard: Decodable {
            struct Panel: Decodable { var targets: [Target] }
            struct Target: Decodable { var expr: String }
            var panels: [Panel]
        }
        let data = try Data(contentsOf: URL(fileURLWithPath: dashboard))
        return try JSONDecoder().decode(Dashboard.self, from: data).panels.flatMap { $0.targets.map(\.expr) }
    }

    /// One hour of the shipped rules is one minute of a test's.
    static let compression = 60

    /// Runs promtool with `arguments`; missing promtool is an error (the traits decide
    /// whether the test runs at all).
    static func promtool(_ arguments: [String], in directory: String? = nil) async throws -> Fixtures.ProcessResult {
        guard let promtool = PrometheusServer.promtool else {
            throw FixtureError("promtool is not installed: apt-get install prometheus (or set CACHETIERS_PROMTOOL)")
        }
        return try await Fixtures.run([promtool] + arguments, in: directory.map { .init($0) })
    }

    /// The shipped rules with every span of time in them (range selectors `[1h]`,
    /// `offset 6h`, `for: 5m`) divided by `factor` and written in seconds: `[1h]` becomes
    /// `[60s]`, `for: 5m` becomes `for: 5s`. Everything else, expressions and thresholds
    /// included, is the shipped text.
    static func compressed(by factor: Int = compression) throws -> String {
        let text = try String(contentsOfFile: rulesFile, encoding: .utf8)
        let span = try Regex(#"(\[|offset |for: )([0-9]+)([smhd])\b"#)
        let unitSeconds: [Substring: Int] = ["s": 1, "m": 60, "h": 3600, "d": 86400]
        var output = ""
        var rest = text[...]
        for match in text.matches(of: span) {
            guard let prefix = match.output[1].substring, let amount = match.output[2].substring.flatMap({ Int($0) }),
                let unit = match.output[3].substring.flatMap({ unitSeconds[$0] })
            else { throw FixtureError("unreadable span of time \(text[match.range])") }
            let seconds = amount * unit
            guard seconds % factor == 0 else {
                throw FixtureError("\(text[match.range]) in \(rulesFile) is not a whole number of seconds divided by \(factor)")
            }
            output += rest[..<match.range.lowerBound] + prefix + "\(seconds / factor)s"
            rest = text[match.range.upperBound...]
        }
        return output + rest
    }
}

extension PrometheusServer {
    /// Polls `condition` (a query, say) until it holds. The deadline only guards against a
    /// hang (a busy machine can delay scrapes and evaluations by seconds); on it, the test
    /// fails with the last error and what Prometheus logged.
    func eventually(_ what: String, _ condition: () async throws -> Bool) async throws {
        let deadline = ContinuousClock.now + .seconds(120)
        var lastError: (any Error)?
        while ContinuousClock.now < deadline {
            do {
                if try await condition() { return }
            } catch {
                lastError = error
            }
            try await Task.sleep(for: .milliseconds(250))
        }
        Issue.record("never saw \(what) (last error: \(lastError.map { "\($0)" } ?? "none")); Prometheus logged: \(log.suffix(2000))")
        throw FixtureError("never saw \(what)")
    }
}
