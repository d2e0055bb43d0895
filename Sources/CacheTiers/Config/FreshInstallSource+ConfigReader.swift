import SystemPackage

extension FreshInstallSource.Configuration {
    /// Reads an `install` tier of the config file: `command` and `produces` (required),
    /// `workingDirectory` (the config's folder by default) and `environment`; every other
    /// field keeps the initializer's default.
    init(configReader reader: inout ConfigObjectReader) throws(ConfigError) {
        let command = try reader.strings("command") ?? []
        guard let program = command.first, !program.isEmpty else {
            throw ConfigError(path: reader.path(of: "command"), "required: the argv to run, e.g. [\"npm\", \"ci\"]")
        }
        let produces = FilePath(try reader.requiredString("produces"))
        guard !produces.isAbsolute, !produces.components.contains(where: { $0.kind == .parentDirectory }) else {
            throw ConfigError(path: reader.path(of: "produces"), "must be a path inside workingDirectory, like \"node_modules\"")
        }
        self.init(
            command: command,
            workingDirectory: try reader.filePath("workingDirectory") ?? reader.baseDirectory.lexicallyNormalized(),
            produces: produces
        )
        if let environment = try reader.stringMap("environment") { self.environment = environment }
    }
}
