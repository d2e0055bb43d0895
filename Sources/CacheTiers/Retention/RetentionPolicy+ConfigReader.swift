extension RetentionPolicy {
    /// Reads a directory tier's `"maxSize"` (the ``StorageSize`` grammar as a string, or a
    /// number of bytes), `"maxAgeUnused"` and `"minAge"` (the ``RetentionAge`` grammar);
    /// nil when none is given.
    init?(configReader reader: inout ConfigObjectReader) throws(ConfigError) {
        let maxSize: StorageSize?
        switch reader.value("maxSize") {
        case nil:
            maxSize = nil
        case .string(let text):
            do {
                maxSize = try StorageSize(parsing: text)
            } catch {
                throw ConfigError(path: reader.path(of: "maxSize"), error.description)
            }
        case .number:
            guard let bytes = try reader.integer("maxSize", atLeast: 1) else { return nil }
            maxSize = StorageSize(bytes: Int64(bytes))
        case let other?:
            throw ConfigError(path: reader.path(of: "maxSize"), "expected a size like \"50G\" or a number of bytes, got \(other.kind)")
        }
        func age(_ key: String) throws(ConfigError) -> RetentionAge? {
            guard let text = try reader.string(key) else { return nil }
            do {
                return try RetentionAge(parsing: text)
            } catch {
                throw ConfigError(path: reader.path(of: key), error.description)
            }
        }
        let maxAgeUnused = try age("maxAgeUnused")
        let minAge = try age("minAge")
        guard maxSize != nil || maxAgeUnused != nil || minAge != nil else { return nil }
        self.init(maxSize: maxSize, maxAgeUnused: maxAgeUnused, minAge: minAge ?? Self.defaultMinAge)
    }
}
