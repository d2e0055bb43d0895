import SystemPackage

extension CacheTiersConfig {
    /// The config file's `monitoring` object: where a restore's result goes besides its
    /// report file.
    public struct Monitoring: Sendable {
        /// `metricsFile`: the node_exporter textfile the restore writes (``RestoreTextfile``).
        public var metricsFile: FilePath?
        /// `report`: sending the report to the fleet; `nil` when off (the default
        /// without a peer tier).
        public var report: FleetReporter.Configuration?

        public init(metricsFile: FilePath? = nil, report: FleetReporter.Configuration? = nil) {
            self.metricsFile = metricsFile
            self.report = report
        }
    }
}

extension CacheTiersConfig.Monitoring {
    /// The defaults: no metrics file, and reports to `peer`'s cache masters with its
    /// token when the config has a peer tier (`peer`, the first).
    init(peer: VMPeerSource.Configuration?) {
        self.init(report: peer.map { FleetReporter.Configuration(urls: $0.peers, token: $0.token) })
    }

    /// Reads the `monitoring` object: `metricsFile` and the `report` object, over the
    /// defaults of ``init(peer:)``.
    init(configReader reader: inout ConfigObjectReader, peer: VMPeerSource.Configuration?) throws(ConfigError) {
        self.init(peer: peer)
        if try reader.string("metricsFile") != nil { metricsFile = try reader.requiredFilePath("metricsFile") }
        guard var reportReader = try reader.object("report") else { return }
        let enabled = try reportReader.bool("enabled")
        if enabled == true, peer == nil {
            throw ConfigError(path: reportReader.path(of: "enabled"), "needs a peer tier: reports go to its cache masters")
        }
        // Read even when off: a typo in a switched-off section is still a typo.
        let report = try FleetReporter.Configuration(configReader: &reportReader, defaults: self.report ?? .init(urls: []))
        try reportReader.finish()
        // Without a peer tier there is nowhere to send (and `enabled: true` was refused above).
        self.report = enabled == false || self.report == nil ? nil : report
    }
}

extension FleetReporter.Configuration {
    /// Reads `monitoring.report`'s `tokenFile`, `timeoutSeconds`, `spoolDirectory` and
    /// `maxSpooledReports` over `defaults` (`enabled` is the caller's).
    init(configReader reader: inout ConfigObjectReader, defaults: FleetReporter.Configuration) throws(ConfigError) {
        self = defaults
        if let token = try reader.secret(fromFileAt: "tokenFile") { self.token = token }
        if let timeout = try reader.number("timeoutSeconds", atLeast: 0.001, atMost: 60) {
            self.timeout = .milliseconds(Int64((timeout * 1000).rounded()))
        }
        if try reader.string("spoolDirectory") != nil { spoolDirectory = try reader.requiredFilePath("spoolDirectory") }
        if let count = try reader.integer("maxSpooledReports", atLeast: 0, atMost: 10_000) { maxSpooledReports = count }
    }
}
