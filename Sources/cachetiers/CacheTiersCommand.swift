import ArgumentParser
import CacheTiers
import Foundation
import Logging

/// `cachetiers`: restore a dependency cache through tiers, and the tools around it.
struct CacheTiersCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cachetiers",
        abstract: "Restore a dependency cache (node_modules and the like) through ordered tiers.",
        version: CacheTiersVersion.current,
        subcommands: [
            DemoCommand.self, RestoreCommand.self, KeyCommand.self, PublishCommand.self, PackCommand.self,
            UnpackCommand.self, ServeCommand.self, StatsCommand.self, PlanCommand.self, SyncCommand.self,
            PruneCommand.self, DoctorCommand.self, WriteBackCommand.self,
        ]
    )
}

/// A failure to report as one line on stderr with exit status 1.
struct CommandFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// A usage or config error to report as one line on stderr with exit status 2.
struct UsageFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Options every command shares.
struct LoggingOptions: ParsableArguments {
    @Flag(name: .long, help: "Log details to stderr.")
    var verbose = false

    func makeLogger(label: String = "cachetiers") -> Logger {
        var logger = Logger(label: label) { label in StreamLogHandler.standardError(label: label) }
        logger.logLevel = verbose ? .debug : .warning
        return logger
    }
}

@main
enum Main {
    static func main() async {
        do {
            let arguments = Array(CommandLine.arguments.dropFirst())
            var command: any ParsableCommand
            do {
                command = try CacheTiersCommand.parseAsRoot(arguments)
            } catch {
                throw unknownOption(hiddenBy: error, in: arguments) ?? error
            }
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch let failure as CommandFailure {
            FileHandle.standardError.write(Data("cachetiers: \(failure)\n".utf8))
            exit(1)
        } catch let failure as UsageFailure {
            FileHandle.standardError.write(Data("cachetiers: \(failure)\n".utf8))
            exit(2)
        } catch let failure as ConfigError {
            FileHandle.standardError.write(Data("cachetiers: config error: \(failure)\n".utf8))
            exit(2)
        } catch let exit as ExitCode {
            Foundation.exit(exit.rawValue)
        } catch {
            let code = CacheTiersCommand.exitCode(for: error)
            if code == .success {
                print(CacheTiersCommand.fullMessage(for: error))
                exit(0)
            }
            // Usage errors: one line, exit 2, as the command-line contract says.
            FileHandle.standardError.write(Data("cachetiers: \(CacheTiersCommand.message(for: error))\(helpHint())\n".utf8))
            exit(2)
        }
    }

    /// ArgumentParser reports a missing required option before an unknown one, so
    /// `restore --confg x` would say that `--config` is missing. Parsing again with the
    /// missing options given finds the misspelt option, which is what to report.
    static func unknownOption(hiddenBy error: any Error, in arguments: [String]) -> (any Error)? {
        let missing = "Missing expected argument '--"
        var arguments = arguments
        var current = error
        for _ in 0..<8 {
            let message = CacheTiersCommand.message(for: current)
            if message.hasPrefix("Unknown option") { return current }
            guard message.hasPrefix(missing),
                let option = message.dropFirst(missing.count - 2).split(whereSeparator: { $0 == " " || $0 == "'" }).first
            else { return nil }
            arguments += [String(option), "0"]
            do {
                _ = try CacheTiersCommand.parseAsRoot(arguments)
                return nil
            } catch {
                current = error
            }
        }
        return nil
    }

    /// " (see 'cachetiers restore --help')" when a subcommand was named, else the root's.
    static func helpHint() -> String {
        let names = CacheTiersCommand.configuration.subcommands.map { $0.configuration.commandName ?? "" }
        let command = CommandLine.arguments.dropFirst().first { names.contains($0) }
        return " (see 'cachetiers\(command.map { " \($0)" } ?? "") --help')"
    }
}

extension Encodable {
    /// Pretty, sorted JSON for `--json` output and reports.
    func prettyJSON() throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        encoder.dateEncodingStrategy = .iso8601
        return String(decoding: try encoder.encode(self), as: UTF8.self)
    }
}

/// Human-readable sizes: 1.2 MB, 340 KB.
func formatBytes(_ bytes: Int64) -> String {
    let units = ["B", "KB", "MB", "GB", "TB"]
    var value = Double(bytes)
    var unit = 0
    while value >= 1000 && unit < units.count - 1 {
        value /= 1000
        unit += 1
    }
    return unit == 0 ? "\(bytes) B" : String(format: "%.1f %@", value, units[unit])
}
