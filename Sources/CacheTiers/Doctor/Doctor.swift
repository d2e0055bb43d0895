import Foundation
import Logging
import SystemPackage

/// One finding of ``Doctor``: what was checked, how it went, and for a warning or a
/// failure the one thing to do about it.
public struct DoctorCheck: Sendable, Hashable, Codable {
    public enum Status: String, Sendable, Hashable, Codable {
        /// Sound.
        case ok
        /// Restores work, but slower, costlier or riskier than they should be.
        case warn
        /// Restores (or write-back) will fail, or fall to a lower tier, until it is fixed.
        case fail
    }

    /// Stable, for scripts: `config`, `tier.NAME`, `tier.NAME.URL.token`, `destination`… (Documentation/Doctor.md).
    public var id: String
    public var status: Status
    /// One line: what was found.
    public var finding: String
    /// One line: what to do; `nil` exactly when the check is ``Status/ok``.
    public var fix: String?

    public init(_ id: String, _ status: Status, _ finding: String, fix: String? = nil) {
        precondition((status == .ok) == (fix == nil), "a warning or failure needs a fix, and only they have one")
        self.id = id
        self.status = status
        self.finding = finding
        self.fix = fix
    }

    static func ok(_ id: String, _ finding: String) -> DoctorCheck { DoctorCheck(id, .ok, finding) }
    static func warn(_ id: String, _ finding: String, fix: String) -> DoctorCheck { DoctorCheck(id, .warn, finding, fix: fix) }
    static func fail(_ id: String, _ finding: String, fix: String) -> DoctorCheck { DoctorCheck(id, .fail, finding, fix: fix) }

    private enum CodingKeys: String, CodingKey { case id, status, finding, fix }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(id, forKey: .id)
        try container.encode(status, forKey: .status)
        try container.encode(finding, forKey: .finding)
        // Always present: `null` on a check that passed.
        try container.encode(fix, forKey: .fix)
    }
}

/// Everything ``Doctor`` found, in the order it checked; `{"checks": [...], "ok": BOOL}`
/// as `cachetiers doctor --json` prints it.
public struct DoctorReport: Sendable, Hashable, Codable {
    public var checks: [DoctorCheck]

    public init(checks: [DoctorCheck]) {
        self.checks = checks
    }

    /// No check failed (warnings allowed): `cachetiers doctor` exits 0.
    public var ok: Bool { !checks.contains { $0.status == .fail } }

    public func count(_ status: DoctorCheck.Status) -> Int { checks.count { $0.status == status } }

    private enum CodingKeys: String, CodingKey { case checks, ok }

    public init(from decoder: any Decoder) throws {
        checks = try decoder.container(keyedBy: CodingKeys.self).decode([DoctorCheck].self, forKey: .checks)
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(checks, forKey: .checks)
        try container.encode(ok, forKey: .ok)
    }
}

/// Checks a VM's set-up against its config file, as `cachetiers doctor` does: the file
/// parses and its secrets are readable; every cache master is reachable, is a cache
/// master, accepts the token (and the upload, where write-back reaches it) and keeps
/// the same time; every bucket is readable with the credentials (and writable, by a
/// probe object deleted at once); every directory is usable; the install command
/// exists; the destination's filesystem, mount options and free space suit the archive;
/// memory suits its zstd window.
///
/// Nothing here writes an archive or changes a cache: the upload probe of a master is a
/// PUT it refuses (400) before storing a byte, the bucket's probe is an empty object
/// under the prefix, deleted at once, and a directory's is a scratch file the folder's
/// own recovery removes if this process dies before it does.
///
/// Every network step is bounded by ``Configuration/answerTimeout``, so a server that
/// accepts and never answers is a failure, not a hang.
public struct Doctor: Sendable {
    public struct Configuration: Sendable {
        /// How long one request may take to answer in full, on top of the tier's connect timeout.
        public var answerTimeout: Duration
        /// A master's clock this far from ours is a warning…
        public var clockWarning: Duration
        /// …and this far a failure: manifests' and reports' times come from both clocks.
        public var clockFailure: Duration
        /// Where `PATH` comes from for the install command (the install tier's own
        /// `environment` overrides it, as it does when the command runs).
        public var environment: [String: String]

        public init(
            answerTimeout: Duration = .seconds(10),
            clockWarning: Duration = .seconds(5),
            clockFailure: Duration = .seconds(60),
            environment: [String: String] = ProcessInfo.processInfo.environment
        ) {
            self.answerTimeout = answerTimeout
            self.clockWarning = clockWarning
            self.clockFailure = clockFailure
            self.environment = environment
        }
    }

    public var configuration: Configuration

    public init(configuration: Configuration = .init()) {
        self.configuration = configuration
    }

    /// Loads the config file (as `restore` does) and checks everything it names. A file
    /// that does not load is the one check, failed, with the config error's own line.
    public func examine(configFile: FilePath, logger: Logger) async -> DoctorReport {
        let config: CacheTiersConfig
        do {
            config = try CacheTiersConfig.load(from: configFile)
        } catch {
            return DoctorReport(checks: [
                .fail(
                    "config", "\(error)",
                    fix: "correct the field it names in \(error.file ?? configFile.string) (Documentation/Configuration.md has every field)"
                )
            ])
        }
        return await examine(config, logger: logger)
    }

    /// Checks everything `config` names, in the order of the file: the config, its key,
    /// each tier, then the destination, memory and write-back.
    public func examine(_ config: CacheTiersConfig, logger: Logger) async -> DoctorReport {
        let file = config.file?.string ?? "the config"
        let names = config.tiers.map(\.name).joined(separator: ", ")
        var checks: [DoctorCheck] = [
            .ok(
                "config",
                "\(file) loads: \(config.tiers.count) tier\(config.tiers.count == 1 ? "" : "s") (\(names))"
                    + (config.secretFiles.isEmpty ? "" : ", \(config.secretFiles.count) token or key file\(config.secretFiles.count == 1 ? "" : "s") read")
            )
        ]
        let key: CacheKey?
        do {
            key = try config.cacheKey()
            checks.append(.ok("key", "the cache key is \(key!)"))
        } catch {
            key = nil
            checks.append(.fail("key", "\(error)", fix: "make the lockfiles that key.files names readable here, or correct key.files"))
        }

        let installTiers = config.tiers.count { if case .install = $0.source { true } else { false } }
        var samples: [any ArchiveSampling] = []
        for (index, tier) in config.tiers.enumerated() {
            let writeBack = receivesWriteBack(config, index)
            switch tier.source {
            case .peer(let peer):
                let probe = MasterProbe(tier: tier.name, configuration: peer, doctor: configuration, field: "tiers[\(index)]")
                for url in peer.peers {
                    checks += await probe.check(url, writeBack: writeBack, logger: logger)
                }
                samples.append(probe)
            case .gcs(let gcs):
                let probe = BucketProbe(tier: tier.name, configuration: gcs, doctor: configuration, field: "tiers[\(index)]")
                checks += await probe.check(writeBack: writeBack, logger: logger)
                samples.append(probe)
            case .directory(let root):
                let probe = DirectoryProbe(tier: tier.name, root: root, field: "tiers[\(index)].path")
                checks += probe.check(writeBack: writeBack)
                samples.append(probe)
            case .install(let install):
                checks.append(
                    InstallProbe(configuration: install, environment: configuration.environment, field: "tiers[\(index)]")
                        .check(id: installTiers == 1 ? "install" : "install.\(tier.name)")
                )
            }
        }
        let sample = await ArchiveSample.find(key: key, in: samples, within: configuration.answerTimeout, logger: logger)
        for tier in samples { await tier.close() }
        if let destination = config.destination {
            checks.append(DestinationCheck(destination: destination, sample: sample).check())
        }
        checks.append(MemoryCheck(sample: sample).check())
        checks.append(writeBackCheck(config))
        return DoctorReport(checks: checks)
    }

    /// Whether the chain publishes to tier `index` after a lower tier served: write-back
    /// is on, the tier accepts it, and some tier below it could serve.
    func receivesWriteBack(_ config: CacheTiersConfig, _ index: Int) -> Bool {
        let tier = config.tiers[index]
        if case .install = tier.source { return false }
        return config.chainConfiguration.writeBack.isEnabled && tier.policy.acceptsWriteBack && index < config.tiers.count - 1
    }

    /// Which mode the config is in: always ok, so the checklist says it in words.
    func writeBackCheck(_ config: CacheTiersConfig) -> DoctorCheck {
        let writeBack = config.chainConfiguration.writeBack
        guard writeBack.isEnabled else {
            return .ok("writeBack", "write-back is off: what a lower tier serves is not shared with the tiers above it")
        }
        let targets = config.tiers.indices.filter { receivesWriteBack(config, $0) }.map { config.tiers[$0].name }
        guard !targets.isEmpty else {
            return .warn(
                "writeBack", "write-back is on, but no tier accepts it (each has \"writeBack\": false or is the last tier)",
                fix: "let the tiers above the fallbacks accept write-back, or set writeBack.enabled to false to say so"
            )
        }
        let when = writeBack.detach
            ? "in a detached process (writeBack.detach: true: the command exits once the tree is in place; the upload logs to \(writeBack.logFile.map { "\($0)" } ?? "the default write-back log"))"
            : writeBack.waitForCompletion
            ? "within the restore (writeBack.wait: true: the restore returns after the upload)"
            : "after the restore (writeBack.wait: false: the tree is in place first, the command exits after the upload)"
        return .ok("writeBack", "write-back is on, \(when), to \(targets.joined(separator: ", "))")
    }
}

extension Doctor.Configuration {
    /// A connect timeout plus the answer timeout: the bound on one probe request.
    func bound(connect: Duration) -> Duration { connect + answerTimeout }
}

/// Runs `body`, cancelling it after `limit`; `nil` when it took too long.
func withTimeLimit<T: Sendable>(_ limit: Duration, _ body: @escaping @Sendable () async throws -> T) async throws -> T? {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(for: limit)
            return nil
        }
        defer { group.cancelAll() }
        return try await group.next()!
    }
}
