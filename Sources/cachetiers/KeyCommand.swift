import ArgumentParser
import CacheTiers
import SystemPackage

struct KeyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "key",
        abstract: "Print the cache key computed from the config's key inputs (lockfiles, platform, salt).",
        discussion: "Exit 0, or 2 when the config or a lockfile cannot be read."
    )

    @Option(name: .long, help: "The JSON config file.")
    var config: String

    func run() async throws {
        let settings = try CacheTiersConfig.load(from: FilePath(config))
        print(try settings.cacheKey())
    }
}
