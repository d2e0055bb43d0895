import ArgumentParser
import CacheTiers
import Foundation
import SystemPackage

struct DoctorCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "doctor",
        abstract: "Check this VM's set-up against a config: tiers, credentials, destination, memory.",
        discussion: """
            Prints one line a check (ok, warn, FAIL), the fix under each warning and failure, \
            and a summary. Nothing is written to a cache: the upload probes are refused or \
            deleted at once (Documentation/Doctor.md). Exit 0 when nothing failed (warnings \
            included), 1 when something did, a config that does not load included.
            """
    )

    @Option(name: .long, help: "The JSON config file.")
    var config: String

    @Flag(name: .long, help: "Print {\"checks\": [{id, status, finding, fix}], \"ok\": BOOL} instead.")
    var json = false

    @OptionGroup var logging: LoggingOptions

    func run() async throws {
        let report = await Doctor().examine(configFile: FilePath(config), logger: logging.makeLogger())
        print(json ? try report.prettyJSON() : Self.checklist(report))
        if !report.ok { throw ExitCode(1) }
    }

    /// `ok    ID  FINDING`, `      fix: FIX` under a warning or failure, then the counts.
    static func checklist(_ report: DoctorReport) -> String {
        var lines: [String] = []
        for check in report.checks {
            let label = switch check.status {
            case .ok: "ok  "
            case .warn: "warn"
            case .fail: "FAIL"
            }
            lines.append("\(label)  \(check.id): \(check.finding)")
            if let fix = check.fix { lines.append("      fix: \(fix)") }
        }
        let failed = report.count(.fail), warned = report.count(.warn)
        lines.append(
            "\(report.checks.count) checks: \(failed) failed, \(warned) warning\(warned == 1 ? "" : "s"), \(report.count(.ok)) ok"
        )
        return lines.joined(separator: "\n")
    }
}
