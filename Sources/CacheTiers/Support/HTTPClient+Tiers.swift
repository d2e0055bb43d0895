import AsyncHTTPClient
import Logging
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

extension HTTPClient {
    /// The client a download tier owns: a connect timeout of its own (the chain times
    /// the transfer), enough connections a host that concurrent restores never queue,
    /// no redirects, no transparent decompression (the bytes are the archive), and no
    /// retrying a refused connection (a peer that is down should fail now, so the
    /// chain can move on).
    static func forTier(connectTimeout: Duration, connectionsPerHost: Int) -> HTTPClient {
        let milliseconds = Int64((connectTimeout.inSeconds * 1000).rounded())
        var configuration = HTTPClient.Configuration()
        configuration.timeout = .init(connect: .milliseconds(max(1, milliseconds)))
        // Shorter than the cache master's idle timeout (30 s), so the client retires a
        // pooled connection before the server closes it under a request.
        configuration.connectionPool = .init(
            idleTimeout: .seconds(20), concurrentHTTP1ConnectionsPerHostSoftLimit: connectionsPerHost
        )
        configuration.connectionPool.retryConnectionEstablishment = false
        configuration.redirectConfiguration = .disallow
        configuration.decompression = .disabled
        return HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: configuration)
    }
}

extension HTTPClient {
    /// Sends a tier's request with no timeout of its own (the chain times the attempt),
    /// mapping failures to what the chain acts on: a connect timeout is `timeout`,
    /// cancellation stays cancellation, anything else (refused, reset) is `transient`.
    /// - Parameters:
    ///   - endpoint: the server, for the message.
    ///   - what: what the request was for, for the message.
    func executeForTier(
        _ request: HTTPClientRequest,
        endpoint: String,
        connectTimeout: Duration,
        what: String? = nil,
        logger: Logger
    ) async throws -> HTTPClientResponse {
        do {
            return try await execute(request, timeout: .hours(24), logger: logger)
        } catch let error as HTTPClientError where error == .connectTimeout {
            throw CacheTierError(.timeout, "connect timed out after \(connectTimeout) to \(endpoint)", underlying: error)
        } catch is CancellationError {
            throw CancellationError()
        } catch let error as HTTPClientError where error == .cancelled {
            throw CancellationError()
        } catch {
            let context = what.map { " while \($0)" } ?? ""
            let reason = Self.describeConnectionFailure(error)
            // Not kept as the cause when it was put in words: the description would repeat NIO's.
            throw CacheTierError(
                .transient, "cannot reach \(endpoint)\(context): \(reason)", underlying: reason == "\(error)" ? error : nil
            )
        }
    }

    /// What went wrong on the way to a server, in words an operator can act on. NIO's own
    /// descriptions name the code path, not the cause ("connection reset (error set):
    /// Connection refused) (errno: 111)" for a refused connection).
    static func describeConnectionFailure(_ error: any Error) -> String {
        if let error = error as? NIOConnectionError {
            if let failure = error.connectionErrors.first {
                return describeConnectionFailure(failure.error)
            }
            if error.dnsAError != nil || error.dnsAAAAError != nil {
                return "cannot resolve the host name \(error.host); check the URL and DNS"
            }
        }
        guard let error = error as? IOError else { return "\(error)" }
        switch error.errnoCode {
        case ECONNREFUSED:
            return "the connection was refused; is the server running, and is the URL right?"
        case ECONNRESET:
            return "the server reset the connection"
        case EHOSTUNREACH, ENETUNREACH:
            return "no route to the host (\(String(cString: strerror(error.errnoCode)))); check the network and the URL"
        case ETIMEDOUT:
            return "the connection timed out"
        default:
            return "\(String(cString: strerror(error.errnoCode))) (errno \(error.errnoCode))"
        }
    }
}

extension HTTPClientResponse {
    /// The `Retry-After` header in seconds (the form cache masters and GCS send).
    var retryAfter: Duration? {
        headers.first(name: "Retry-After").flatMap(Int.init).map { Duration.seconds($0) }
    }
}

extension HTTPClientRequest.Body {
    /// `buffer` sent in pieces of 256 KiB that advance `progress` as the connection takes
    /// them (the client asks for the next piece only when it can write), so a publish's
    /// stall rule sees an upload to a stopped server stop.
    static func progressReporting(_ buffer: ByteBuffer, to progress: TransferProgress?) -> Self {
        guard let progress else { return .bytes(buffer) }
        return .stream(ProgressReportingPieces(buffer: buffer, progress: progress), length: .known(Int64(buffer.readableBytes)))
    }
}

/// The pieces of one buffer, each counted on the way out.
struct ProgressReportingPieces: AsyncSequence, Sendable {
    typealias Element = ByteBuffer
    let buffer: ByteBuffer
    let progress: TransferProgress

    struct AsyncIterator: AsyncIteratorProtocol {
        var remaining: ByteBuffer
        let progress: TransferProgress

        mutating func next() async -> ByteBuffer? {
            guard remaining.readableBytes > 0 else { return nil }
            let piece = remaining.readSlice(length: Swift.min(256 * 1024, remaining.readableBytes))!
            progress.advance(by: piece.readableBytes)
            return piece
        }
    }

    func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(remaining: buffer, progress: progress)
    }
}
