extension TierChain.Configuration {
    /// Reads the chain's fields of the config file's top level: `deadlineSeconds` and
    /// the `writeBack` object, whose archives `packer` makes. Everything else keeps the
    /// initializer's default.
    init(configReader reader: inout ConfigObjectReader, packer: any CachePacker) throws(ConfigError) {
        self.init()
        if let deadline = try reader.duration("deadlineSeconds") { self.deadline = deadline }
        if var writeBackReader = try reader.object("writeBack") {
            writeBack = try TierChain.WriteBack(configReader: &writeBackReader, packer: packer)
            try writeBackReader.finish()
        } else {
            writeBack = TierChain.WriteBack(packer: packer)
        }
    }
}

extension TierChain.WriteBack {
    /// Reads the config file's `writeBack` object: `enabled`, `wait`, `detach`, `logFile`, and the
    /// ``CachePublisher/Limits`` fields; `packer` is the one `compression` describes.
    init(configReader reader: inout ConfigObjectReader, packer: any CachePacker) throws(ConfigError) {
        self.init(packer: packer)
        if let isEnabled = try reader.bool("enabled") { self.isEnabled = isEnabled }
        if let waitForCompletion = try reader.bool("wait") { self.waitForCompletion = waitForCompletion }
        if let detach = try reader.bool("detach") { self.detach = detach }
        logFile = try reader.filePath("logFile")
        self.limits = try CachePublisher.Limits(configReader: &reader)
    }
}

extension TierChain.TierPolicy {
    /// A cache master on the private network: 120 s an attempt, 15 s without progress,
    /// 3 attempts, the 16 KiB/s throughput floor.
    public static let peer = TierChain.TierPolicy(
        timeout: .seconds(120), stallTimeout: .seconds(15), retry: RetryPolicy(maxAttempts: 3)
    )

    /// A bucket over the internet: 180 s an attempt, 30 s without progress, 3 attempts,
    /// the 16 KiB/s throughput floor.
    public static let gcs = TierChain.TierPolicy(
        timeout: .seconds(180), stallTimeout: .seconds(30), retry: RetryPolicy(maxAttempts: 3)
    )

    /// A folder on this machine or a mount: 120 s an attempt, 30 s without progress,
    /// 2 attempts, the 16 KiB/s throughput floor.
    public static let directory = TierChain.TierPolicy(
        timeout: .seconds(120), stallTimeout: .seconds(30), retry: RetryPolicy(maxAttempts: 2)
    )

    /// A fresh install: 900 s, one attempt, and neither a stall window nor a throughput
    /// floor, since an installer can think for minutes before it writes a byte.
    public static let install = TierChain.TierPolicy(
        timeout: .seconds(900), stallTimeout: nil, minimumThroughput: nil, retry: .none
    )

    /// Reads a tier's limits from the config file, starting from `defaults` (the
    /// preset of its kind): `timeoutSeconds`, `stallSeconds`, `minBytesPerSecond`,
    /// `maxAttempts` and `writeBack`.
    init(configReader reader: inout ConfigObjectReader, defaults: TierChain.TierPolicy) throws(ConfigError) {
        self = defaults
        if let timeout = try reader.duration("timeoutSeconds") { self.timeout = timeout }
        if let stallTimeout = try reader.duration("stallSeconds") { self.stallTimeout = stallTimeout }
        if let floor = try reader.integer("minBytesPerSecond", atLeast: 0, atMost: 10_000_000_000) {
            self.minimumThroughput = Int64(floor)
        }
        if let maxAttempts = try reader.integer("maxAttempts", atLeast: 1, atMost: 100) {
            self.retry.maxAttempts = maxAttempts
        }
        if let acceptsWriteBack = try reader.bool("writeBack") { self.acceptsWriteBack = acceptsWriteBack }
    }
}
