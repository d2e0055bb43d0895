extension ZstdCodec {
    /// Reads the config file's `compression` object: `level` (what libzstd accepts) and
    /// `threads`; unset, they keep the initializer's defaults.
    init(configReader reader: inout ConfigObjectReader) throws(ConfigError) {
        self.init()
        if let level = try reader.integer("level") {
            guard Self.isValidLevel(level) else {
                throw ConfigError(
                    path: reader.path(of: "level"),
                    "\(level) is out of range; use \(Self.levelRange) (1 is the cache-transfer sweet spot)"
                )
            }
            self.compressionLevel = level
        }
        if let threads = try reader.integer("threads", atLeast: 0, atMost: 256) { self.threads = threads }
    }
}
