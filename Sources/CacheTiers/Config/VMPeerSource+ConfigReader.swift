import Foundation
import SystemPackage

extension VMPeerSource.Configuration {
    /// Reads a `peer` tier of the config file: `urls` (required), `selection`,
    /// `tokenFile` (read now), `connectTimeoutSeconds` and `replicas`; every other field keeps the
    /// initializer's default.
    init(configReader reader: inout ConfigObjectReader) throws(ConfigError) {
        let urls = try reader.strings("urls") ?? []
        guard !urls.isEmpty else { throw ConfigError(path: reader.path(of: "urls"), "required: at least one cache master URL") }
        for (index, url) in urls.enumerated() {
            let path = "\(reader.path(of: "urls"))[\(index)]"
            guard url.isHTTPURL, let parts = URLComponents(string: url) else {
                throw ConfigError(path: path, "expected an http:// or https:// URL, got \"\(url)\"")
            }
            // Every message, log line and doctor check names the URL: a secret must not be in it.
            guard parts.user == nil, parts.password == nil else {
                throw ConfigError(path: path, "a URL with a user or password would print it in every message; put the token in tokenFile")
            }
        }
        self.init(peers: urls)
        if let selection = try reader.string("selection") {
            switch selection {
            case "ordered": self.selection = .ordered
            case "rendezvous": self.selection = .rendezvous
            default:
                throw ConfigError(path: reader.path(of: "selection"), "expected \"ordered\" or \"rendezvous\", got \"\(selection)\"")
            }
        }
        if let token = try reader.secret(fromFileAt: "tokenFile") { self.token = token }
        if let connectTimeout = try reader.duration("connectTimeoutSeconds") { self.connectTimeout = connectTimeout }
        // MARK: Replication
        // More than there are masters means every master (clamped by the configuration).
        if let replicas = try reader.integer("replicas", atLeast: 1, atMost: 1000) { self.replicas = replicas }
    }
}

extension String {
    /// Whether this is an `http://` or `https://` URL with a host, as every URL field of
    /// the config must be (`http://` alone would fail only at the first restore).
    var isHTTPURL: Bool {
        guard hasPrefix("http://") || hasPrefix("https://"), let host = URLComponents(string: self)?.host else { return false }
        return !host.isEmpty
    }
}
