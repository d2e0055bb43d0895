extension CachePublisher.Limits {
    /// Reads `timeoutSeconds` and `stallSeconds` (of the config file's `writeBack`, which
    /// bound both write-back and `cachetiers publish`); unset, they keep the initializer's defaults.
    init(configReader reader: inout ConfigObjectReader) throws(ConfigError) {
        self.init()
        if let timeout = try reader.duration("timeoutSeconds") { self.timeout = timeout }
        if let stallTimeout = try reader.duration("stallSeconds") { self.stallTimeout = stallTimeout }
    }
}
