import AsyncHTTPClient
import Crypto
import Foundation
import SystemPackage
import Logging
import NIOCore
import _CryptoExtras

/// The token providers for Google's two ways of running unattended: the GCE metadata
/// server and a service-account key file.
public enum GoogleCredentials {
    /// The scope for reading and writing objects.
    public static let readWriteScope = "https://www.googleapis.com/auth/devstorage.read_write"

    /// Tokens from the GCE metadata server (GCE, GKE, Cloud Run; not on other clouds).
    ///
    /// The host comes from `GCE_METADATA_HOST` when set, else `metadata.google.internal`.
    public static func metadataServer(
        host: String? = nil,
        environment: [String: String] = ProcessInfo.processInfo.environment,
        client: HTTPClient = .shared
    ) -> CachingAccessTokenProvider {
        let host = host ?? environment["GCE_METADATA_HOST"] ?? environment["GCE_METADATA_ROOT"] ?? "metadata.google.internal"
        let base = host.contains("://") ? host : "http://\(host)"
        let url = "\(base)/computeMetadata/v1/instance/service-accounts/default/token"
        return CachingAccessTokenProvider { logger in
            var request = HTTPClientRequest(url: url)
            request.headers.add(name: "Metadata-Flavor", value: "Google")
            let response = try await send(request, client: client, what: "the metadata server at \(base)")
            guard response.headers.first(name: "Metadata-Flavor") == "Google" else {
                throw CacheTierError(
                    .unauthorized, "\(base) answered without Metadata-Flavor: Google; it is not a GCE metadata server"
                )
            }
            return try await decodeToken(response, from: "the metadata server at \(base)")
        }
    }

    /// Tokens from a service-account key (the JSON file the console downloads): a
    /// JWT signed with the key (RS256) is exchanged at the key's `token_uri`.
    public static func serviceAccount(
        _ key: ServiceAccountKey,
        scopes: [String] = [readWriteScope],
        client: HTTPClient = .shared
    ) throws -> CachingAccessTokenProvider {
        let signingKey: _RSA.Signing.PrivateKey
        do {
            signingKey = try _RSA.Signing.PrivateKey(pemRepresentation: key.privateKey)
        } catch {
            throw CacheTierError(
                .unauthorized, "the private_key of service account \(key.clientEmail) is not an RSA key in PEM form: \(error)"
            )
        }
        return CachingAccessTokenProvider { _ in
            let assertion = try signedAssertion(key: key, signingKey: signingKey, scopes: scopes, now: Date())
            var request = HTTPClientRequest(url: key.tokenURI)
            request.method = .POST
            request.headers.add(name: "Content-Type", value: "application/x-www-form-urlencoded")
            let form = "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=\(assertion)"
            request.body = .bytes(ByteBuffer(string: form))
            let response = try await send(request, client: client, what: "the token endpoint \(key.tokenURI)")
            return try await decodeToken(response, from: "the token endpoint \(key.tokenURI)")
        }
    }

    /// The JWT a service account presents: `iss` = client email, `scope`, `aud` = the
    /// token URI, `iat` = now, `exp` = one hour later, signed RS256 with `kid`.
    static func signedAssertion(
        key: ServiceAccountKey,
        signingKey: _RSA.Signing.PrivateKey,
        scopes: [String],
        now: Date
    ) throws -> String {
        struct Header: Encodable { let alg = "RS256", typ = "JWT"; let kid: String? }
        struct Claims: Encodable { let iss, scope, aud: String; let iat, exp: Int }
        let issued = Int(now.timeIntervalSince1970)
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        let header = try encoder.encode(Header(kid: key.privateKeyID))
        let claims = try encoder.encode(
            Claims(iss: key.clientEmail, scope: scopes.joined(separator: " "), aud: key.tokenURI, iat: issued, exp: issued + 3600)
        )
        let signingInput = "\(base64URL(header)).\(base64URL(claims))"
        let signature = try signingKey.signature(for: SHA256.hash(data: Data(signingInput.utf8)), padding: .insecurePKCS1v1_5)
        return "\(signingInput).\(base64URL(signature.rawRepresentation))"
    }

    static func base64URL(_ data: some DataProtocol) -> String {
        Data(data).base64EncodedString()
            .replacingOccurrences(of: "+", with: "-")
            .replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }

    private static func send(_ request: HTTPClientRequest, client: HTTPClient, what: String) async throws
        -> HTTPClientResponse
    {
        let response: HTTPClientResponse
        do {
            response = try await client.execute(request, timeout: .seconds(30))
        } catch {
            throw CacheTierError(.transient, "cannot get an access token from \(what): \(error)", underlying: error)
        }
        switch response.status.code {
        case 200:
            return response
        case 400, 401, 403, 404:
            let body = (try? await response.body.collect(upTo: 4096)).map { String(buffer: $0) } ?? ""
            throw CacheTierError(
                .unauthorized,
                "\(what) refused to issue an access token (\(response.status.code)): \(body.prefix(300)); check the credentials"
            )
        default:
            throw CacheTierError(.transient, "\(what) answered \(response.status.code) when asked for an access token")
        }
    }

    private static func decodeToken(_ response: HTTPClientResponse, from what: String) async throws -> AccessToken {
        struct Body: Decodable {
            let access_token: String
            let expires_in: Int?
        }
        let bytes = try await response.body.collect(upTo: 64 * 1024)
        guard let body = try? JSONDecoder().decode(Body.self, from: Data(bytes.readableBytesView)) else {
            throw CacheTierError(.transient, "\(what) answered without an access_token field")
        }
        return AccessToken(
            value: body.access_token, expiresAt: .now + .seconds(body.expires_in ?? 3600)
        )
    }
}

/// The fields of a service-account key file that token exchange needs.
public struct ServiceAccountKey: Sendable, Hashable, Decodable {
    public var clientEmail: String
    public var privateKey: String
    public var privateKeyID: String?
    public var tokenURI: String

    public init(clientEmail: String, privateKey: String, privateKeyID: String? = nil, tokenURI: String) {
        self.clientEmail = clientEmail
        self.privateKey = privateKey
        self.privateKeyID = privateKeyID
        self.tokenURI = tokenURI
    }

    enum CodingKeys: String, CodingKey {
        case type
        case clientEmail = "client_email"
        case privateKey = "private_key"
        case privateKeyID = "private_key_id"
        case tokenURI = "token_uri"
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        if let type = try container.decodeIfPresent(String.self, forKey: .type), type != "service_account" {
            throw DecodingError.dataCorruptedError(
                forKey: .type, in: container, debugDescription: "is \"\(type)\", expected \"service_account\""
            )
        }
        clientEmail = try container.decode(String.self, forKey: .clientEmail)
        privateKey = try container.decode(String.self, forKey: .privateKey)
        privateKeyID = try container.decodeIfPresent(String.self, forKey: .privateKeyID)
        tokenURI = try container.decodeIfPresent(String.self, forKey: .tokenURI) ?? "https://oauth2.googleapis.com/token"
    }

    /// Reads a key file, with an error that names the file and the field at fault.
    public static func load(from path: String) throws -> ServiceAccountKey {
        let data: Data
        do {
            data = try SmallFile.contents(of: FilePath(path), limit: SmallFile.secretLimit)
        } catch {
            throw CacheTierError(.unauthorized, "cannot read the service-account key file \(path): \(error.reason)")
        }
        do {
            return try JSONDecoder().decode(ServiceAccountKey.self, from: data)
        } catch let DecodingError.keyNotFound(key, _) {
            throw CacheTierError(.unauthorized, "the service-account key file \(path) has no \(key.stringValue) field")
        } catch {
            throw CacheTierError(.unauthorized, "the service-account key file \(path) is not a key: \(error)")
        }
    }
}
