@testable import CacheTiers
import CacheTiersTesting
import Crypto
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import Synchronization
import Testing
import _CryptoExtras

/// Access tokens (service-account JWTs checked by a token endpoint that verifies the
/// signature, the metadata server, caching and refresh) and how GCSSource answers what
/// a real bucket can say that the emulator never does: a refused token, a forbidden
/// bucket, a 503 with Retry-After. Local Hummingbird fakes play Google's side.
@Suite struct GCSCredentialTests {
    let logger = PeerHarness.quietLogger

    /// A token endpoint that accepts only JWTs signed by `publicKey` with the claims
    /// Google requires, and counts the tokens it issued.
    func tokenEndpoint(
        verifying publicKey: _RSA.Signing.PublicKey,
        issued: Counter,
        expiresIn: Int = 3600
    ) -> Router<BasicRequestContext> {
        let router = Router()
        router.post("/token") { request, _ -> Response in
            let body = String(buffer: try await request.body.collect(upTo: 64 * 1024))
            var form: [String: String] = [:]
            for pair in body.split(separator: "&") {
                let parts = pair.split(separator: "=", maxSplits: 1).map(String.init)
                if parts.count == 2 { form[parts[0]] = parts[1].removingPercentEncoding }
            }
            guard form["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer",
                let assertion = form["assertion"]
            else { return Response(status: .badRequest) }
            let parts = assertion.split(separator: ".").map(String.init)
            guard parts.count == 3,
                let header = Self.decodeJSON(parts[0]), let claims = Self.decodeJSON(parts[1]),
                let signature = Self.base64URLDecode(parts[2])
            else { return Response(status: .badRequest) }
            let signed = SHA256.hash(data: Data("\(parts[0]).\(parts[1])".utf8))
            let now = Int(Date().timeIntervalSince1970)
            guard publicKey.isValidSignature(.init(rawRepresentation: signature), for: signed, padding: .insecurePKCS1v1_5),
                header["alg"] as? String == "RS256", header["kid"] as? String == "key-1",
                claims["iss"] as? String == "cache@project.iam.gserviceaccount.com",
                claims["scope"] as? String == GoogleCredentials.readWriteScope,
                (claims["aud"] as? String)?.hasSuffix("/token") == true,
                let iat = claims["iat"] as? Int, let exp = claims["exp"] as? Int,
                abs(iat - now) < 60, exp - iat == 3600
            else {
                return Response(status: .badRequest, body: .init(byteBuffer: ByteBuffer(string: #"{"error":"invalid_grant"}"#)))
            }
            let number = issued.increment()
            let json = #"{"access_token":"ya29.token-\#(number)","expires_in":\#(expiresIn),"token_type":"Bearer"}"#
            return Response(status: .ok, body: .init(byteBuffer: ByteBuffer(string: json)))
        }
        return router
    }

    static func base64URLDecode(_ text: String) -> Data? {
        var base64 = text.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        base64 += String(repeating: "=", count: (4 - base64.count % 4) % 4)
        return Data(base64Encoded: base64)
    }

    static func decodeJSON(_ text: String) -> [String: Any]? {
        base64URLDecode(text).flatMap { try? JSONSerialization.jsonObject(with: $0) as? [String: Any] }
    }

    /// Writes a service-account key file as the console would, signed with `key`.
    func keyFile(_ key: _RSA.Signing.PrivateKey, tokenURI: String, in scratch: TemporaryDirectory) throws -> String {
        let json: [String: Any] = [
            "type": "service_account", "project_id": "project", "private_key_id": "key-1",
            "private_key": key.pkcs8PEMRepresentation, "client_email": "cache@project.iam.gserviceaccount.com",
            "token_uri": tokenURI,
        ]
        let path = scratch.path.appending("key-\(UUID().uuidString.prefix(6)).json").string
        try JSONSerialization.data(withJSONObject: json).write(to: URL(fileURLWithPath: path))
        return path
    }

    @Test func aServiceAccountKeyGetsOneTokenSharedByConcurrentCallers() async throws {
        let scratch = try TemporaryDirectory(prefix: "credentials")
        defer { scratch.remove() }
        let key = try _RSA.Signing.PrivateKey(keySize: .bits2048)
        let issued = Counter()
        try await FakeHTTPServer.with(tokenEndpoint(verifying: key.publicKey, issued: issued)) { url in
            let provider = try GoogleCredentials.serviceAccount(
                ServiceAccountKey.load(from: keyFile(key, tokenURI: "\(url)/token", in: scratch))
            )
            let tokens = try await withThrowingTaskGroup(of: String?.self) { group in
                for _ in 0..<8 { group.addTask { try await provider.token(logger: logger) } }
                return try await group.reduce(into: Set<String?>()) { $0.insert($1) }
            }
            #expect(tokens == ["ya29.token-1"], "eight callers, one token")
            #expect(try await provider.token(logger: logger) == "ya29.token-1", "cached")
            #expect(issued.value == 1)

            // After a 401 the token is dropped and a new one fetched.
            await provider.invalidate("ya29.token-1")
            #expect(try await provider.token(logger: logger) == "ya29.token-2")
        }
    }

    @Test func aKeyTheEndpointDoesNotKnowIsUnauthorized() async throws {
        let scratch = try TemporaryDirectory(prefix: "credentials")
        defer { scratch.remove() }
        let registered = try _RSA.Signing.PrivateKey(keySize: .bits2048)
        let stranger = try _RSA.Signing.PrivateKey(keySize: .bits2048)
        try await FakeHTTPServer.with(tokenEndpoint(verifying: registered.publicKey, issued: Counter())) { url in
            let provider = try GoogleCredentials.serviceAccount(
                ServiceAccountKey.load(from: keyFile(stranger, tokenURI: "\(url)/token", in: scratch))
            )
            let error = try #require(await #expect(throws: CacheTierError.self) { try await provider.token(logger: logger) })
            #expect(error.kind == .unauthorized)
            #expect(error.message.contains("invalid_grant"))
        }
    }

    @Test func tokensAreRefreshedBeforeTheyExpire() async throws {
        let scratch = try TemporaryDirectory(prefix: "credentials")
        defer { scratch.remove() }
        let key = try _RSA.Signing.PrivateKey(keySize: .bits2048)
        let issued = Counter()
        // Two minutes left is inside the 3 min 45 s refresh margin: never reused.
        try await FakeHTTPServer.with(tokenEndpoint(verifying: key.publicKey, issued: issued, expiresIn: 120)) { url in
            let provider = try GoogleCredentials.serviceAccount(
                ServiceAccountKey.load(from: keyFile(key, tokenURI: "\(url)/token", in: scratch))
            )
            #expect(try await provider.token(logger: logger) == "ya29.token-1")
            #expect(try await provider.token(logger: logger) == "ya29.token-2")
        }
    }

    @Test func theMetadataServerIsAskedWithItsHeader() async throws {
        let asked = Counter()
        let router = Router()
        router.get("/computeMetadata/v1/instance/service-accounts/default/token") { request, _ -> Response in
            guard request.headers[HTTPField.Name("Metadata-Flavor")!] == "Google" else { return Response(status: .forbidden) }
            let number = asked.increment()
            var response = Response(
                status: .ok,
                body: .init(byteBuffer: ByteBuffer(string: #"{"access_token":"ya29.meta-\#(number)","expires_in":3599}"#))
            )
            response.headers[HTTPField.Name("Metadata-Flavor")!] = "Google"
            return response
        }
        try await FakeHTTPServer.with(router) { url in
            let host = url.replacingOccurrences(of: "http://", with: "")
            let provider = GoogleCredentials.metadataServer(environment: ["GCE_METADATA_HOST": host])
            let first = try await provider.token(logger: logger)
            let second = try await provider.token(logger: logger)
            #expect(first == "ya29.meta-1")
            #expect(second == "ya29.meta-1", "cached")
            #expect(asked.value == 1)
        }
    }

    /// A GCS stand-in that accepts only the token "fresh" and otherwise answers `refusal`.
    func pickyGCS(refusal: HTTPResponse.Status) -> Router<BasicRequestContext> {
        let router = Router()
        router.get("/storage/v1/b/{bucket}/o/{object}") { request, _ -> Response in
            guard request.headers[.authorization] == "Bearer fresh" else {
                let body = #"{"error":{"code":\#(refusal.code),"message":"Invalid Credentials"}}"#
                return Response(status: refusal, body: .init(byteBuffer: ByteBuffer(string: body)))
            }
            return Response(status: .notFound, body: .init(byteBuffer: ByteBuffer(string: #"{"error":{"code":404}}"#)))
        }
        return router
    }

    func restoreThrough(_ url: String, credentials: any AccessTokenProvider) async throws -> RestoreReport {
        let scratch = try TemporaryDirectory(prefix: "credentials")
        defer { scratch.remove() }
        let source = GCSSource(configuration: .init(bucket: "bucket", endpoint: url, credentials: credentials))
        defer { Task { try? await source.shutdown() } }
        let chain = TierChain(
            tiers: [.init(source)],
            configuration: .init(deadline: .seconds(30), writeBack: .disabled, retryBudget: RetryBudget()),
            logger: logger
        )
        do {
            return try await chain.restore(try CacheKey("node-modules-x"), into: scratch.path.appending("restored"))
        } catch let failure as RestoreFailure {
            return failure.report
        }
    }

    @Test func aRefusedTokenIsRefreshedOnceThenUsed() async throws {
        let fetched = Counter()
        let provider = CachingAccessTokenProvider { _ in
            let number = fetched.increment()
            return AccessToken(value: number == 1 ? "stale" : "fresh", expiresAt: .now + .seconds(3600))
        }
        try await FakeHTTPServer.with(pickyGCS(refusal: .unauthorized)) { url in
            let report = try await restoreThrough(url, credentials: provider)
            #expect(report.attempts.map(\.outcome) == [.miss], "the fresh token got an answer")
            #expect(fetched.value == 2)
        }
    }

    @Test func aSecondRefusalIsUnauthorizedWithoutRetries() async throws {
        let fetched = Counter()
        let provider = CachingAccessTokenProvider { _ in
            fetched.increment()
            return AccessToken(value: "revoked", expiresAt: .now + .seconds(3600))
        }
        try await FakeHTTPServer.with(pickyGCS(refusal: .unauthorized)) { url in
            let report = try await restoreThrough(url, credentials: provider)
            #expect(report.attempts.map(\.outcome) == [.unauthorized], "no retry of the tier")
            #expect(report.attempts.first?.error?.contains("401") == true)
            #expect(fetched.value == 2, "refreshed exactly once")
        }
    }

    @Test func aForbiddenBucketIsUnauthorizedAtOnce() async throws {
        try await FakeHTTPServer.with(pickyGCS(refusal: .forbidden)) { url in
            let report = try await restoreThrough(url, credentials: StaticAccessToken("not-allowed"))
            #expect(report.attempts.map(\.outcome) == [.unauthorized])
            #expect(report.attempts.first?.error?.contains("403") == true)
        }
    }

    /// A GCS stand-in serving one real archive, whose first media requests answer 503
    /// with `Retry-After`.
    func flakyGCS(archive: [UInt8], manifest: CacheManifest, failures: Int, retryAfter: Int, media: Counter)
        -> Router<BasicRequestContext>
    {
        let router = Router()
        let object: [String: Any] = [
            "name": "\(manifest.key.rawValue).tar.zst", "size": "\(archive.count)", "generation": "7",
            "metadata": [GCSSource.manifestMetadataKey: String(decoding: try! manifest.jsonData(), as: UTF8.self)],
        ]
        let metadata = try! JSONSerialization.data(withJSONObject: object)
        router.get("/storage/v1/b/{bucket}/o/{object}") { request, _ -> Response in
            guard request.uri.query?.contains("alt=media") == true else {
                return Response(status: .ok, body: .init(byteBuffer: ByteBuffer(bytes: metadata)))
            }
            if media.increment() <= failures {
                var response = Response(
                    status: .serviceUnavailable,
                    body: .init(byteBuffer: ByteBuffer(string: #"{"error":{"code":503,"message":"Backend Error"}}"#))
                )
                response.headers[HTTPField.Name("Retry-After")!] = "\(retryAfter)"
                return response
            }
            var response = Response(status: .ok, body: .init(byteBuffer: ByteBuffer(bytes: archive)))
            response.headers[HTTPField.Name("X-Goog-Generation")!] = "7"
            return response
        }
        return router
    }

    func packedSample(in scratch: TemporaryDirectory) async throws -> ([UInt8], CacheManifest) {
        let tree = scratch.path.appending("tree")
        try SampleTree.write(to: tree, files: 30)
        let file = scratch.path.appending("sample.tar.zst")
        let manifest = try await ArchivePacker().pack(tree, key: try CacheKey("node-modules-x"), to: file, logger: logger)
        return ([UInt8](try Data(contentsOf: URL(fileURLWithPath: file.string))), manifest)
    }

    @Test func a503IsRetriedAfterItsRetryAfterWithinTheAttempt() async throws {
        let scratch = try TemporaryDirectory(prefix: "flaky")
        defer { scratch.remove() }
        let (archive, manifest) = try await packedSample(in: scratch)
        let media = Counter()
        try await FakeHTTPServer.with(flakyGCS(archive: archive, manifest: manifest, failures: 1, retryAfter: 1, media: media)) { url in
            let start = ContinuousClock.now
            let report = try await restoreThrough(url, credentials: NoAccessToken())
            #expect(report.attempts.map(\.outcome) == [.hit], "retried inside the attempt")
            #expect(media.value == 2)
            #expect(ContinuousClock.now - start >= .seconds(1), "waited as Retry-After said")
        }
    }

    @Test func aLongRetryAfterIsLeftToTheChain() async throws {
        let scratch = try TemporaryDirectory(prefix: "flaky")
        defer { scratch.remove() }
        let (archive, manifest) = try await packedSample(in: scratch)
        let media = Counter()
        try await FakeHTTPServer.with(flakyGCS(archive: archive, manifest: manifest, failures: 99, retryAfter: 120, media: media)) { url in
            let report = try await restoreThrough(url, credentials: NoAccessToken())
            // The chain's 30 s deadline leaves no room for a 120 s wait: it gives up at once.
            // Waiting would have ended in `timeout` at the deadline, not this `error`.
            #expect(report.attempts.first?.outcome == .error)
            #expect(report.attempts.first?.error?.contains("503") == true)
            #expect(media.value == 1, "not retried inline")
        }
    }

    @Test func theEmulatorHostVariableChoosesTheEndpoint() {
        #expect(GCSSource.Configuration.defaultEndpoint(environment: [:]) == "https://storage.googleapis.com")
        #expect(GCSSource.Configuration.defaultEndpoint(environment: ["STORAGE_EMULATOR_HOST": "127.0.0.1:4443"]) == "http://127.0.0.1:4443")
        #expect(
            GCSSource.Configuration.defaultEndpoint(environment: ["STORAGE_EMULATOR_HOST": "http://localhost:9000"])
                == "http://localhost:9000"
        )
    }

    @Test func crc32cMatchesTheKnownVector() {
        var crc = CRC32C()
        crc.update(Array("123456789".utf8))
        #expect(crc.value == 0xE306_9283)
        // "hello" as GCS reports it (checked against fake-gcs-server and RFC 3720 tables).
        var hello = CRC32C()
        hello.update(Array("hello".utf8))
        #expect(hello.base64 == "mnG7TA==")
    }
}

/// A thread-safe count for the fake servers.
final class Counter: Sendable {
    private let count = Mutex(0)

    @discardableResult
    func increment() -> Int {
        count.withLock { count in
            count += 1
            return count
        }
    }

    var value: Int { count.withLock { $0 } }
}
