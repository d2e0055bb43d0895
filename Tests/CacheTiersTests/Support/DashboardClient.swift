import AsyncHTTPClient
import CacheTiersServer
import Foundation
import NIOCore
import NIOHTTP1

/// Requests to a cache master's dashboard the way a browser and curl make them, with
/// redirects not followed (a 303 after a login is what the tests look at).
enum DashboardClient {
    static let client = HTTPClient(
        eventLoopGroupProvider: .singleton, configuration: .init(redirectConfiguration: .disallow)
    )

    struct Answer {
        var status: Int
        var headers: HTTPHeaders
        var body: [UInt8]
        var text: String { String(decoding: body, as: UTF8.self) }
    }

    static func send(
        _ peer: PeerHarness, _ method: HTTPMethod, _ path: String, headers: [(String, String)] = [], body: [UInt8]? = nil
    ) async throws -> Answer {
        var request = HTTPClientRequest(url: peer.url + path)
        request.method = method
        for (name, value) in headers { request.headers.add(name: name, value: value) }
        if let body { request.body = .bytes(body) }
        let response = try await client.execute(request, timeout: .seconds(30))
        let bytes = try await response.body.collect(upTo: 64 << 20)
        return Answer(status: Int(response.status.code), headers: response.headers, body: Array(buffer: bytes))
    }

    /// `POST /login` with a form holding `token` (and `window` when given).
    static func login(_ peer: PeerHarness, token: String, window: String? = nil) async throws -> Answer {
        var form = "token=\(token.addingPercentEncoding(withAllowedCharacters: .alphanumerics)!)"
        if let window { form += "&window=\(window)" }
        return try await send(
            peer, .POST, "/login", headers: [("Content-Type", "application/x-www-form-urlencoded")], body: Array(form.utf8)
        )
    }

    static func snapshot(_ peer: PeerHarness, window: String = "24h", headers: [(String, String)] = []) async throws -> DashboardSnapshot {
        let answer = try await send(peer, .GET, "/v1/dashboard?window=\(window)", headers: headers)
        guard answer.status == 200 else { throw FixtureError("/v1/dashboard answered \(answer.status): \(answer.text)") }
        return try DashboardSnapshot.decode(Data(answer.body))
    }

    static func post(_ peer: PeerHarness, _ reports: [FleetReport], token: String? = nil) async throws {
        for report in reports {
            let answer = try await send(
                peer, .POST, "/v1/reports",
                headers: [("Content-Type", "application/json")] + (token.map { [("Authorization", "Bearer \($0)")] } ?? []),
                body: report.body
            )
            guard answer.status == 201 || answer.status == 200 else { throw FixtureError("a report answered \(answer.status): \(answer.text)") }
        }
    }
}
