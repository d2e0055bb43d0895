import ArgumentParser
import CacheTiers
import Logging
import SystemPackage

struct KeyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "key",
        abstract: "Print the cache key computed from the config's key inputs (lockfiles, platform, salt).",
        discussion: "Exit 0, or 2 when the config or a lockfile cannot be read."
    )

    @Option(name: .long, help: "The JSON config file.")
    var config: String

    @OptionGroup var logging: LoggingOptions

    func run() async throws {
        let logger = logging.makeLogger()
        // The key needs the lockfiles only: a build machine without the tiers' credentials computes it too.
        let settings = try CacheTiersConfig.load(from: FilePath(config), readingSecrets: false)
        let key = try settings.cacheKey()
        logger.debug("computed the cache key", metadata: ["key": "\(key)", "lockfiles": "\(settings.keyInputs?.files ?? [])"])
        print(key)
    }
}
