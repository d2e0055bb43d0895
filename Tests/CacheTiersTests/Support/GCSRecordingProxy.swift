import AsyncHTTPClient
import HTTPTypes
import Hummingbird
import NIOCore
import NIOHTTP1
import Synchronization

/// An HTTP proxy in front of the GCS emulator that records the method of every request
/// and can answer every PATCH itself (403 for read-only credentials, 500 for a failing
/// service, or never), forwarding everything else. For tests that count what `GCSSource`
/// sends.
final class GCSRecordingProxy: Sendable {
    /// What a PATCH gets.
    enum PatchAnswer: Sendable {
        case forward
        case status(HTTPResponse.Status)
        /// No answer until the proxy stops: a server that hangs.
        case never
    }

    private let upstream: String
    private let patchAnswer: PatchAnswer
    private let recorded = Mutex<[HTTPRequest.Method]>([])

    private init(upstream: String, patchAnswer: PatchAnswer) {
        self.upstream = upstream
        self.patchAnswer = patchAnswer
    }

    /// The methods of the requests received so far, in order.
    var methods: [HTTPRequest.Method] { recorded.withLock { $0 } }
    var patches: Int { methods.filter { $0 == .patch }.count }

    /// Serves the proxy for `upstream` (the emulator's URL) while `body` runs.
    static func with<T: Sendable>(
        upstream: String,
        patches patchAnswer: PatchAnswer = .forward,
        _ body: (_ proxy: GCSRecordingProxy, _ url: String) async throws -> T
    ) async throws -> T {
        let proxy = GCSRecordingProxy(upstream: upstream, patchAnswer: patchAnswer)
        let router = Router()
        for method in [HTTPRequest.Method.get, .post, .put, .patch, .delete] {
            router.on("**", method: method) { request, _ in try await proxy.forward(request) }
        }
        return try await FakeHTTPServer.with(router) { url in try await body(proxy, url) }
    }

    private func forward(_ request: Request) async throws -> Response {
        recorded.withLock { $0.append(request.method) }
        if request.method == .patch {
            switch patchAnswer {
            case .forward:
                break
            case .status(let status):
                let error = #"{"error":{"code":\#(status.code),"message":"answered by the test proxy"}}"#
                return Response(status: status, body: .init(byteBuffer: ByteBuffer(string: error)))
            case .never:
                try await Task.sleep(for: .seconds(3600))
            }
        }
        var forwarded = HTTPClientRequest(url: upstream + request.uri.string)
        forwarded.method = HTTPMethod(rawValue: request.method.rawValue)
        for field in request.headers where ![.contentLength, .connection, .transferEncoding].contains(field.name) {
            forwarded.headers.add(name: field.name.rawName, value: field.value)
        }
        let body = try await request.body.collect(upTo: 64 << 20)
        if body.readableBytes > 0 { forwarded.body = .bytes(body) }
        let response = try await HTTPClient.shared.execute(forwarded, timeout: .seconds(30))
        let answer = try await response.body.collect(upTo: 64 << 20)
        var headers = HTTPFields()
        for (name, value) in response.headers where !["content-length", "transfer-encoding", "connection"].contains(name.lowercased()) {
            if let name = HTTPField.Name(name) { headers.append(HTTPField(name: name, value: value)) }
        }
        return Response(status: .init(code: Int(response.status.code)), headers: headers, body: .init(byteBuffer: answer))
    }
}
