import AsyncHTTPClient
import Foundation
import Logging
import NIOCore
import NIOHTTP1

/// The checks of one peer tier's cache masters, each URL on its own: reachable and a
/// cache master (`GET /healthz`: `ok` and `Server: cachetiers/…`), its clock (the
/// answer's `Date`), the token (`GET /v1/caches?limit=1`), and where write-back reaches
/// it, the upload (a PUT whose manifest is deliberately unusable: 400 when authorised,
/// 401 or 403 when not, and nothing stored either way).
struct MasterProbe: ArchiveSampling {
    let tier: String
    let configuration: VMPeerSource.Configuration
    let doctor: Doctor.Configuration
    /// `tiers[N]`, for the fixes.
    let field: String
    private let client: HTTPClient

    /// The key of the upload probe; no archive is ever stored under it.
    static let probeKey = try! CacheKey("cachetiers-doctor-probe")

    init(tier: String, configuration: VMPeerSource.Configuration, doctor: Doctor.Configuration, field: String) {
        self.tier = tier
        self.configuration = configuration
        self.doctor = doctor
        self.field = field
        self.client = .forTier(connectTimeout: configuration.connectTimeout, connectionsPerHost: 2)
    }

    var tierName: String { tier }

    func close() async {
        try? await client.shutdown()
    }

    struct Answer: Sendable {
        var status: Int
        var headers: HTTPHeaders
        /// The first 64 KiB of the body.
        var body: ByteBuffer
        /// Halfway between sending and the answer's head: what its `Date` is compared with.
        var receivedAround: Date

        var text: String { String(buffer: body).trimmingCharacters(in: .whitespacesAndNewlines) }
        /// The body as a short quote for a finding.
        /// Control characters and invalid UTF-8 come out escaped: a server that is not a
        /// master must not drive the operator's terminal.
        var quoted: String {
            let text = self.text
            guard !text.isEmpty else { return "an empty body" }
            let cut = text.count > 60 ? String(text.prefix(60)) + "…" : text
            var shown = ""
            for scalar in cut.unicodeScalars {
                if scalar.properties.generalCategory == .control || scalar == "\u{FFFD}" {
                    shown += "\\u{\(String(scalar.value, radix: 16, uppercase: true))}"
                } else {
                    shown.unicodeScalars.append(scalar)
                }
            }
            return "\"\(shown)\""
        }
    }

    /// Why a request got no answer: the one line to show.
    struct NoAnswer: Error, CustomStringConvertible {
        var description: String
    }

    func send(_ method: HTTPMethod, _ url: String, headers: [(String, String)] = [], logger: Logger) async throws(NoAnswer) -> Answer {
        var request = HTTPClientRequest(url: url)
        request.method = method
        request.headers.add(name: "User-Agent", value: "cachetiers/\(CacheTiersVersion.current) doctor")
        if let token = configuration.token { request.headers.add(name: "Authorization", value: "Bearer \(token)") }
        for (name, value) in headers { request.headers.add(name: name, value: value) }
        if method == .PUT { request.body = .bytes(ByteBuffer()) }
        let bound = doctor.bound(connect: configuration.connectTimeout)
        let request_ = request
        do {
            let answer = try await withTimeLimit(bound) { [client, configuration] in
                let sent = Date()
                let response = try await client.executeForTier(
                    request_, endpoint: url, connectTimeout: configuration.connectTimeout, logger: logger
                )
                let received = Date()
                var body = ByteBuffer()
                // Only the start: a server that ignores a Range must not stream a whole archive here.
                for try await part in response.body {
                    var part = part
                    body.writeBuffer(&part)
                    if body.readableBytes >= 64 << 10 { break }
                }
                return Answer(
                    status: Int(response.status.code), headers: response.headers, body: body,
                    receivedAround: sent.addingTimeInterval(received.timeIntervalSince(sent) / 2)
                )
            }
            guard let answer else {
                throw NoAnswer(description: "\(method) \(url) got no answer within \(bound.inSeconds.formatted()) s")
            }
            return answer
        } catch let error as NoAnswer {
            throw error
        } catch let error as CacheTierError {
            throw NoAnswer(description: error.message)
        } catch {
            throw NoAnswer(description: "\(method) \(url) failed: \(error)")
        }
    }

    func check(_ base: String, writeBack: Bool, logger: Logger) async -> [DoctorCheck] {
        let id = "tier.\(tier).\(base)"
        let health: Answer
        do {
            health = try await send(.GET, "\(base)/healthz", logger: logger)
        } catch {
            return [
                .fail(
                    id, "\(error)",
                    fix: "start the cache master there (cachetiers serve), or correct \(field).urls; a firewall must let this VM reach its port"
                )
            ]
        }
        let server = health.headers.first(name: "Server") ?? ""
        guard health.status == 200, health.text == "ok", server.hasPrefix("cachetiers/") else {
            return [
                .fail(
                    id,
                    "\(base) is not a cache master: GET /healthz answered \(health.status) with \(health.quoted)"
                        + (server.isEmpty ? " and no Server header" : " from Server: \(server)"),
                    fix: "point \(field).urls at a cache master (cachetiers serve --port), not at another service on that port"
                )
            ]
        }
        var checks: [DoctorCheck] = [.ok(id, "\(base) is a cache master (\(server))")]
        checks.append(clock(of: health, id: "\(id).clock", base: base))
        let token = await token(base, id: "\(id).token", logger: logger)
        checks.append(token)
        // A refused token refuses the upload too: one failure, one fix.
        if writeBack, token.status != .fail { checks.append(await upload(base, id: "\(id).write", logger: logger)) }
        return checks
    }

    /// The skew between the master's `Date` and ours: its manifests' `createdAt` and the
    /// reports' times come from both clocks.
    func clock(of answer: Answer, id: String, base: String) -> DoctorCheck {
        guard let header = answer.headers.first(name: "Date"), let date = HTTPDate.parse(header) else {
            return .warn(
                id, "\(base) sent no readable Date header, so its clock cannot be compared",
                fix: "run the cache master behind nothing that strips Date, or compare the clocks by hand (chronyc tracking)"
            )
        }
        // The header has whole seconds: up to 1 s of the difference is its rounding.
        let skew = date.timeIntervalSince(answer.receivedAround)
        let size = abs(skew)
        let words = size < 1 ? "within 1 s of this VM's" : "\(Int(size.rounded())) s \(skew > 0 ? "ahead of" : "behind") this VM's"
        let fix = "keep both clocks on NTP (chrony or systemd-timesyncd): manifests and restore reports carry times from both machines"
        if size > doctor.clockFailure.inSeconds {
            return .fail(id, "\(base)'s clock is \(words) (fails beyond \(Int(doctor.clockFailure.inSeconds)) s)", fix: fix)
        }
        if size > doctor.clockWarning.inSeconds {
            return .warn(id, "\(base)'s clock is \(words) (warns beyond \(Int(doctor.clockWarning.inSeconds)) s)", fix: fix)
        }
        return .ok(id, "\(base)'s clock is \(words)")
    }

    func token(_ base: String, id: String, logger: Logger) async -> DoctorCheck {
        let answer: Answer
        do {
            answer = try await send(.GET, "\(base)/v1/caches?limit=1", logger: logger)
        } catch {
            return .fail(id, "\(error)", fix: "check that \(base) stays up and answers (its log, cachetiers serve --verbose)")
        }
        let tokenFix = configuration.token == nil
            ? "set \(field).tokenFile to a file holding the master's --token-file token"
            : "put the master's --token-file token in \(field).tokenFile"
        switch answer.status {
        case 200:
            return .ok(id, configuration.token == nil ? "\(base) needs no token (GET /v1/caches answered 200)" : "\(base) accepts the token (GET /v1/caches answered 200)")
        case 401:
            return .fail(
                id,
                configuration.token == nil ? "\(base) requires a token and \(field) has none (401)" : "\(base) refused the token (401: \(answer.text))",
                fix: tokenFix
            )
        case 403:
            return .fail(id, "\(base) refused the token for reading archives (403: \(answer.text))", fix: "\(tokenFix), not the --report-token-file one")
        case 404:
            return .warn(
                id, "\(base) accepted the token but has no GET /v1/caches (404): a cachetiers older than this one",
                fix: "upgrade the cache master: listing its archives (sync, prune, doctor's sizing) needs GET /v1/caches"
            )
        default:
            return .fail(id, "\(base) answered \(answer.status) to GET /v1/caches?limit=1: \(answer.quoted)", fix: "read the cache master's log for why")
        }
    }

    /// A create-only PUT with a manifest whose size is negative: an authorised upload is
    /// refused at the manifest (400) before the master stores a byte.
    func upload(_ base: String, id: String, logger: Logger) async -> DoctorCheck {
        let manifest = CacheManifest(
            key: Self.probeKey, archiveSHA256: String(repeating: "0", count: 64), archiveSize: -1, codec: "zstd", level: 1,
            uncompressedSize: 0, entryCount: 0
        )
        let encoded = ((try? manifest.compactJSONData()) ?? Data()).base64EncodedString()
        let answer: Answer
        do {
            answer = try await send(
                .PUT, "\(base)/v1/caches/\(Self.probeKey)",
                headers: [("If-None-Match", "*"), ("Content-Type", "application/zstd"), ("X-CacheTiers-Manifest", encoded)],
                logger: logger
            )
        } catch {
            return .fail(id, "\(error)", fix: "check that \(base) stays up and answers (its log, cachetiers serve --verbose)")
        }
        switch answer.status {
        case 400 where answer.text.contains("manifest"):
            return .ok(id, "\(base) accepts uploads with the token (a probe PUT with an unusable manifest was refused with 400; nothing stored)")
        case 401, 403:
            return .fail(
                id, "\(base) refuses uploads with this token (\(answer.status): \(answer.text)), so write-back to it fails",
                fix: "put the master's --token-file token in \(field).tokenFile, or set \(field).writeBack to false"
            )
        default:
            return .fail(
                id, "\(base) answered \(answer.status) to the upload probe (expected 400 for its unusable manifest): \(answer.quoted)",
                fix: "read the cache master's log for why; write-back to it may fail"
            )
        }
    }

    // MARK: ArchiveSampling

    func manifest(of key: CacheKey, logger: Logger) async throws -> CacheManifest? {
        for base in configuration.peers {
            guard let answer = try? await send(.GET, "\(base)/v1/caches/\(key)/manifest", logger: logger), answer.status == 200 else {
                continue
            }
            if let manifest = try? CacheManifest(jsonData: Data(answer.body.readableBytesView)) { return manifest }
        }
        return nil
    }

    func newestKey(logger: Logger) async throws -> CacheKey? {
        var newest: ArchiveListing?
        for base in configuration.peers {
            var after: CacheKey?
            for _ in 0..<Self.maximumPages {
                let query = "limit=\(ArchivePage.maximumLimit)" + (after.map { "&after=\($0)" } ?? "")
                guard let answer = try? await send(.GET, "\(base)/v1/caches?\(query)", logger: logger), answer.status == 200 else { break }
                let decoder = JSONDecoder()
                decoder.dateDecodingStrategy = .iso8601
                guard let page = try? decoder.decode(ArchivePage.self, from: Data(answer.body.readableBytesView)) else { break }
                newest = Self.newest(page.archives + (newest.map { [$0] } ?? []))
                guard let next = page.next else { break }
                after = next
            }
        }
        return newest?.key
    }

    func firstBytes(of key: CacheKey, count: Int, logger: Logger) async throws -> [UInt8] {
        for base in configuration.peers {
            guard let answer = try? await send(.GET, "\(base)/v1/caches/\(key)", headers: [("Range", "bytes=0-\(count - 1)")], logger: logger),
                answer.status == 206 || answer.status == 200
            else { continue }
            return Array(answer.body.readableBytesView.prefix(count))
        }
        return []
    }
}

/// The `Date` header's form (RFC 9110 IMF-fixdate): `Sun, 06 Nov 1994 08:49:37 GMT`.
enum HTTPDate {
    static func parse(_ text: String) -> Date? {
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "GMT")
        formatter.dateFormat = "EEE, dd MMM yyyy HH:mm:ss 'GMT'"
        return formatter.date(from: text)
    }
}
