import SystemPackage

extension GCSSource.Configuration {
    /// Reads a `gcs` tier of the config file: `bucket` (required), `prefix`, `endpoint`,
    /// `credentials` (their files read now), `connectTimeoutSeconds`, `parallelDownloads`,
    /// `segmentMiB`, `pricePerGB` and `refreshCustomTime`; every other field keeps the initializer's default.
    init(configReader reader: inout ConfigObjectReader) throws(ConfigError) {
        let endpoint = try reader.string("endpoint")
        if let endpoint, !endpoint.isHTTPURL {
            throw ConfigError(path: reader.path(of: "endpoint"), "expected an http:// or https:// URL, got \"\(endpoint)\"")
        }
        self.init(bucket: try reader.requiredString("bucket"), endpoint: endpoint)
        if let prefix = try reader.string("prefix") { self.prefix = prefix }
        if var credentials = try reader.object("credentials") {
            self.credentials = try Self.accessTokenProvider(&credentials)
            try credentials.finish()
        }
        if let connectTimeout = try reader.duration("connectTimeoutSeconds") { self.connectTimeout = connectTimeout }
        if let parallelDownloads = try reader.integer("parallelDownloads", atLeast: 1, atMost: 64) {
            self.parallelDownloads = parallelDownloads
        }
        if let segmentMiB = try reader.integer("segmentMiB", atLeast: 1, atMost: 1024) { self.segmentSize = segmentMiB << 20 }
        if let pricePerGB = try reader.number("pricePerGB", atLeast: 0) { self.pricePerGB = pricePerGB }
        if let refreshCustomTime = try reader.bool("refreshCustomTime") { self.refreshCustomTime = refreshCustomTime }
    }

    /// `credentials.kind`: `none`, `metadata`, `serviceAccount` or `token`, the last two
    /// with the `file` that holds the key or the token.
    private static func accessTokenProvider(_ reader: inout ConfigObjectReader) throws(ConfigError) -> any AccessTokenProvider {
        let kind = try reader.requiredString("kind")
        switch kind {
        case "none":
            return NoAccessToken()
        case "metadata":
            return GoogleCredentials.metadataServer()
        case "token":
            guard let token = try reader.secret(fromFileAt: "file") else { throw ConfigError(path: reader.path(of: "file"), "required") }
            return StaticAccessToken(token)
        case "serviceAccount":
            let file = try reader.requiredFilePath("file")
            reader.inputs.append(file)
            guard reader.inputs.areRead else { return NoAccessToken() }
            do {
                return try GoogleCredentials.serviceAccount(ServiceAccountKey.load(from: file.string))
            } catch {
                throw ConfigError(path: reader.path(of: "file"), "\(error)")
            }
        default:
            throw ConfigError(path: reader.path(of: "kind"), "expected none, metadata, serviceAccount or token, got \"\(kind)\"")
        }
    }
}
