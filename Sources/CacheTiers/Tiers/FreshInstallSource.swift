import Foundation
import Logging
import Subprocess
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The fresh-install tier: run the package manager (`npm ci`, `pnpm install --frozen-lockfile`,
/// `pip install -r requirements.txt --target site-packages`, anything) and hand the
/// directory it produces to the chain.
///
/// The command never runs in the real working directory, where `npm ci` would first
/// delete the very `node_modules` the chain promises to leave untouched on failure.
/// It runs in a *shadow* beside it: a hidden sibling folder holding copies of the
/// working directory's top-level files (package.json, the lockfile, …) and symlinks to
/// its directories, without the `produces` directory. Being a sibling, relative paths
/// such as `file:../packages/x` resolve as they would in place. When the command
/// succeeds, the produced directory becomes the staging tree (a rename on the same
/// filesystem) and the shadow is removed, whatever happened.
///
/// The command runs in a process group of its own. When the attempt is cancelled (a
/// timeout, the caller giving up) the whole group gets SIGTERM, then SIGKILL after
/// `terminationGracePeriod`: no orphaned installers. A failure carries the exit status
/// and the last lines of the command's output.
public struct FreshInstallSource: CacheSource {
    public struct Configuration: Sendable {
        /// The argv: `["npm", "ci"]`. The first element is looked up on `PATH` unless it
        /// contains a slash.
        public var command: [String]
        /// Where the command would run: the project folder.
        public var workingDirectory: FilePath
        /// The directory the command creates, relative to `workingDirectory`.
        public var produces: FilePath
        /// Variables added to (or replacing) the inherited environment.
        public var environment: [String: String]
        /// Whether the command sees this process's environment (PATH, HOME, …).
        public var inheritsEnvironment: Bool
        /// How many of the last output lines a failure carries.
        public var failureOutputLines: Int
        /// How long the process group has after SIGTERM before SIGKILL.
        public var terminationGracePeriod: Duration

        public init(
            command: [String],
            workingDirectory: FilePath,
            produces: FilePath,
            environment: [String: String] = [:],
            inheritsEnvironment: Bool = true,
            failureOutputLines: Int = 20,
            terminationGracePeriod: Duration = .seconds(5)
        ) {
            precondition(!command.isEmpty, "a FreshInstallSource needs a command")
            self.command = command
            self.workingDirectory = workingDirectory
            self.produces = produces
            self.environment = environment
            self.inheritsEnvironment = inheritsEnvironment
            self.failureOutputLines = failureOutputLines
            self.terminationGracePeriod = terminationGracePeriod
        }
    }

    public let name: String
    public let configuration: Configuration
    public var traits: CacheSourceTraits { .build }
    public var protectedPaths: [ProtectedPath] {
        [ProtectedPath(configuration.workingDirectory, role: "the working directory of the install tier \(name)")]
    }

    public init(name: String = "install", configuration: Configuration) {
        self.name = name
        self.configuration = configuration
    }

    /// The command as a person would type it, for messages.
    public var commandLine: String {
        configuration.command.map { $0.contains(" ") ? "'\($0)'" : $0 }.joined(separator: " ")
    }

    public func restore(
        _ request: RestoreRequest,
        into staging: FilePath,
        progress: TransferProgress,
        logger: Logger
    ) async throws -> SourceRestoreOutcome {
        // The shadow of an install killed midway (with the packages it had fetched) goes first.
        let workspace = configuration.workingDirectory
        await ScratchName.sweep(
            in: workspace.removingLastComponent(), base: workspace.lastComponent?.string ?? "workspace", logger: logger
        )
        let shadow = try makeShadow()
        let outcome: Result<SourceRestoreOutcome, any Error>
        do {
            outcome = .success(try await install(in: shadow, key: request.key, into: staging, progress: progress, logger: logger))
        } catch {
            outcome = .failure(error)
        }
        try? await FileSystem.removeTreeOffThePool(shadow)
        return try outcome.get()
    }

    /// Runs the command in `shadow` and makes what it produced the staging tree.
    private func install(
        in shadow: FilePath,
        key: CacheKey,
        into staging: FilePath,
        progress: TransferProgress,
        logger: Logger
    ) async throws -> SourceRestoreOutcome {
        let start = ContinuousClock.now
        logger.info(
            "running the fresh install",
            metadata: ["command": "\(commandLine)", "in": "\(configuration.workingDirectory)"]
        )
        let (status, tail) = try await run(in: shadow, key: key, progress: progress, logger: logger)
        // Cancelled (a timeout, the caller giving up): the group was torn down; that is
        // not the command's failure.
        try Task.checkCancellation()
        let elapsed = (ContinuousClock.now - start).humanReadable
        guard status.isSuccess else {
            let how: String
            switch status {
            case .exited(let code): how = "exited with status \(code)"
            case .signaled(let signal): how = "was killed by signal \(signal)"
            }
            let output = tail.isEmpty ? " (no output)" : "; last lines:\n" + tail.joined(separator: "\n")
            throw CacheTierError(
                .transient,
                "`\(commandLine)` \(how) after \(elapsed) in \(configuration.workingDirectory)\(output)"
            )
        }

        let produced = shadow.pushing(configuration.produces)
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: produced.string, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw CacheTierError(
                .transient,
                "`\(commandLine)` succeeded but did not create \(configuration.produces); check `produces` in the install tier"
            )
        }
        try adopt(produced, as: staging)
        logger.info("fresh install finished", metadata: ["command": "\(commandLine)", "duration": "\(elapsed)"])
        return .restored(RestoreDetails(bytesTransferred: 0, requests: 0))
    }

    /// Runs the command in `directory` in its own process group, keeping the last
    /// lines of its output (stdout and stderr together).
    private func run(
        in directory: FilePath,
        key: CacheKey,
        progress: TransferProgress,
        logger: Logger
    ) async throws -> (TerminationStatus, [String]) {
        let program = configuration.command[0]
        let executable: Executable = program.contains("/") ? .path(FilePath(program)) : .name(program)
        var variables: [Environment.Key: String?] = [:]
        for (name, value) in configuration.environment { variables[Environment.Key(stringLiteral: name)] = value }
        variables["CACHETIERS_KEY"] = key.rawValue
        let environment: Environment =
            configuration.inheritsEnvironment
            ? .inherit.updating(variables)
            : .custom(variables.reduce(into: [:]) { result, pair in if let value = pair.value { result[pair.key] = value } })

        var options = PlatformOptions()
        options.processGroupID = 0  // a group of its own, led by the command
        options.teardownSequence = [
            .gracefulShutDown(toProcessGroup: true, allowedDurationToNextStep: configuration.terminationGracePeriod)
        ]
        let keep = configuration.failureOutputLines
        do {
            let result = try await Subprocess.run(
                executable,
                arguments: Arguments(Array(configuration.command.dropFirst())),
                environment: environment,
                workingDirectory: directory,
                platformOptions: options,
                input: .none,
                output: .sequence,
                error: .combinedWithOutput
            ) { execution in
                var tail: [String] = []
                for try await line in execution.standardOutput.strings() {
                    progress.touch()
                    logger.debug("install output", metadata: ["line": "\(line)"])
                    tail.append(line)
                    if tail.count > keep { tail.removeFirst(tail.count - keep) }
                }
                return tail
            }
            return (result.terminationStatus, result.closureResult)
        } catch let error as SubprocessError {
            if Task.isCancelled { throw CancellationError() }
            throw CacheTierError(
                .transient,
                "cannot run `\(commandLine)` in \(configuration.workingDirectory): \(error); is `\(program)` installed and on PATH?",
                underlying: error
            )
        }
    }

    /// A hidden sibling of the working directory that looks like it to the command.
    private static let shadowPurpose = "cachetiers-install"

    private func makeShadow() throws -> FilePath {
        let source = configuration.workingDirectory
        let files = FileManager.default
        var isDirectory: ObjCBool = false
        guard files.fileExists(atPath: source.string, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw CacheTierError(.fatal, "the install's working directory \(source) does not exist")
        }
        let base = source.lastComponent?.string ?? "workspace"
        let shadow = source.removingLastComponent().appending(ScratchName.make(base: base, purpose: Self.shadowPurpose))
        do {
            try files.createDirectory(atPath: shadow.string, withIntermediateDirectories: false)
        } catch {
            throw CacheTierError(
                .fatal, "cannot create the install's scratch folder beside \(source): \(error.localizedDescription)"
            )
        }
        let skipped = configuration.produces.components.first?.string
        do {
            for name in try files.contentsOfDirectory(atPath: source.string) {
                // The produced directory, and the chain's own staging folders, stay out.
                let scratch = [".staging-", ".previous-", ".writeback-", ".cachetiers-"].contains { name.contains($0) }
                if name == skipped || (name.hasPrefix(".") && scratch) {
                    continue
                }
                let original = source.appending(name).string
                let copy = shadow.appending(name).string
                let attributes = try files.attributesOfItem(atPath: original)
                if attributes[.type] as? FileAttributeType == .typeRegular {
                    try files.copyItem(atPath: original, toPath: copy)
                } else {
                    try files.createSymbolicLink(atPath: copy, withDestinationPath: original)
                }
            }
        } catch {
            try? FileSystem.removeTree(shadow)
            throw CacheTierError(.fatal, "cannot prepare the install's scratch folder from \(source): \(error.localizedDescription)")
        }
        return shadow
    }

    /// Makes `produced` the staging tree: one rename onto the empty staging directory,
    /// or a copy when they are on different filesystems.
    private func adopt(_ produced: FilePath, as staging: FilePath) throws {
        if rename(produced.string, staging.string) == 0 { return }
        let reason = errno
        guard reason == EXDEV else {
            throw CacheTierError(
                .fatal, "cannot move the installed tree into place: \(String(cString: strerror(reason)))"
            )
        }
        let files = FileManager.default
        for name in try files.contentsOfDirectory(atPath: produced.string) {
            try files.copyItem(atPath: produced.appending(name).string, toPath: staging.appending(name).string)
        }
    }
}
