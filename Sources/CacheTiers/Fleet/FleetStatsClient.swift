import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1

/// `GET /v1/stats` on a cache master, for `cachetiers stats`: one deadline for the whole
/// answer, head and body (a master that trickles its body gives up at the deadline as one
/// that sends nothing does), a bound on its size, no redirect followed, and every failure
/// one plain line.
package struct FleetStatsClient: Sendable {
    /// Why the stats could not be had, in one line naming the cache master.
    package struct Failure: Error, CustomStringConvertible {
        package var description: String
    }

    /// The cache master's base URL, as the operator gave it.
    package var peer: String
    /// The bound on the whole request, the answer's body included (30 s).
    package var timeout: Duration
    /// The largest answer taken (4 MiB).
    package var maxBytes: Int
    /// The option that gave ``peer`` (`--peer`, `--from-stats`), for the messages that
    /// say what to change.
    package var option: String

    package init(peer: String, option: String = "--peer", timeout: Duration = .seconds(30), maxBytes: Int = 4 << 20) {
        self.peer = peer
        self.option = option
        self.timeout = timeout
        self.maxBytes = maxBytes
    }

    /// ``peer`` as messages name it: without a password (`user:secret@` becomes `user@`).
    var shownPeer: String {
        guard var components = URLComponents(string: peer), components.password != nil else { return peer }
        components.password = nil
        return components.string ?? peer
    }

    /// The body of a 200 answer for `window`.
    package func fetch(window: String, token: String?) async throws(Failure) -> ByteBuffer {
        let peer = shownPeer
        // The stats path is appended to the base URL: a query or a fragment would swallow it.
        if let components = URLComponents(string: self.peer), components.query != nil || components.fragment != nil {
            throw Failure(description: "give \(option) the cache master's base URL, without ?query or #fragment: \(peer)".printableOnOneLine)
        }
        let base = self.peer.hasSuffix("/") ? String(self.peer.dropLast()) : self.peer
        var request = HTTPClientRequest(url: "\(base)/v1/stats?window=\(window)")
        if let token { request.headers.add(name: "Authorization", value: "Bearer \(token)") }
        var configuration = HTTPClient.Configuration()
        configuration.redirectConfiguration = .disallow
        configuration.connectionPool.retryConnectionEstablishment = false
        let client = HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: configuration)
        let result: Result<(HTTPResponseStatus, HTTPHeaders, ByteBuffer), any Error>
        do {
            result = .success(try await withDeadline { [maxBytes, request] in
                let response = try await client.execute(request, timeout: .hours(24))
                return (response.status, response.headers, try await response.body.collect(upTo: maxBytes))
            })
        } catch {
            result = .failure(error)
        }
        try? await client.shutdown()
        let (status, headers, body): (HTTPResponseStatus, HTTPHeaders, ByteBuffer)
        switch result {
        case .success(let answer): (status, headers, body) = answer
        case .failure(let error as HTTPClientError) where error == .deadlineExceeded || error == .readTimeout:
            throw Failure(description: "cannot reach \(peer): no complete answer within \(String(format: "%g", timeout.inSeconds)) s")
        case .failure(let error):
            let reason = HTTPClient.describeAnswerFailure(error, maxBytes: maxBytes)
            throw Failure(description: "cannot reach \(peer): \(reason)".printableOnOneLine)
        }
        if (300...399).contains(status.code) {
            let location = headers.first(name: "Location") ?? "nowhere"
            throw Failure(
                description: "\(peer) answered \(status.code), a redirect to \(location); stats follows no redirect: give \(option) the cache master's own URL"
                    .printableOnOneLine
            )
        }
        guard status == .ok else {
            let reason = String(buffer: body).trimmingCharacters(in: .whitespacesAndNewlines)
            var line = reason.isEmpty
                ? "\(peer) answered \(status.code) with no explanation; is it the cache master's base URL?"
                : "\(peer) answered \(status.code): \(reason.prefix(300))"
            if status == .unauthorized {
                line += token == nil ? "; give --token-file with the master's token" : "; check the token in --token-file"
            }
            throw Failure(description: line.printableOnOneLine)
        }
        return body
    }

    /// Runs `operation`, cancelled when the time is up.
    private func withDeadline<T: Sendable>(_ operation: @escaping @Sendable () async throws -> T) async throws -> T {
        try await withThrowingTaskGroup(of: T?.self) { [timeout] group in
            group.addTask { try await operation() }
            group.addTask {
                try await Task.sleep(for: timeout)
                return nil
            }
            defer { group.cancelAll() }
            guard let first = try await group.next(), let value = first else { throw HTTPClientError.deadlineExceeded }
            return value
        }
    }
}

extension HTTPClient {
    /// What went wrong getting an answer, in words an operator can act on, never a type's
    /// name (`NIOTooManyBytesError(maxBytes: Optional(4194304))`,
    /// `HTTPClientError.remoteConnectionClosed`).
    static func describeAnswerFailure(_ error: any Error, maxBytes: Int) -> String {
        switch error {
        case is NIOTooManyBytesError:
            return "the answer is larger than \(maxBytes >= 1 << 20 ? "\(maxBytes >> 20) MiB" : "\(maxBytes) bytes")"
        case let error as HTTPClientError where error == .remoteConnectionClosed:
            return "the server closed the connection before its answer was complete"
        case let error as HTTPClientError where error == .connectTimeout:
            return "the connection timed out"
        default:
            return describeConnectionFailure(error)
        }
    }
}
