import CacheTiers
import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A TCP proxy on 127.0.0.1 that forwards to a local server and injects faults into
/// what the server sends back: a cut connection, a flipped byte, a bandwidth limit, a
/// trickle. For tests and benchmarks of the network tiers against real servers.
///
/// Each connection is served by two threads with blocking sockets, which keeps the
/// faults exact (byte offsets, rates) and the code obvious. Call ``stop()`` when done.
public final class FaultInjectingProxy: Sendable {
    /// What happens to the bytes flowing from the server to the client.
    public enum Fault: Sendable, Hashable {
        /// Forward everything.
        case none
        /// Close the first `connections` connections after `bytes` bytes from the server.
        case cut(afterBytes: Int, connections: Int = 1)
        /// Flip one byte (XOR 0xFF) at this offset of every connection's response stream.
        case flipByte(atOffset: Int)
        /// Limit every connection to this many bytes per second.
        case bandwidth(bytesPerSecond: Int)
        /// Send `bytes` bytes, then one byte every `interval`.
        case trickle(afterBytes: Int, interval: Duration)
        /// Once the client has sent `bytes` bytes in all (over every connection), close
        /// the connection carrying them; once. An upload that dies mid-body, whichever
        /// pooled connection the client used.
        case cutUpload(afterBytes: Int)
        /// Close the first connection after `bytes` bytes, and hold every later one for
        /// `delay` before connecting it to the server: time for a test to change the
        /// server between a cut and the client's resume.
        case cutThenDelay(afterBytes: Int, delay: Duration)
        /// Hold what the server sends on every connection for `delay` before forwarding
        /// its first byte: a slow first answer (a busy master, a long round trip).
        case delayFirstByte(Duration)
    }

    private struct State {
        var fault: Fault
        var accepted = 0
        var open: Set<Int32> = []
        var stopped = false
        /// Bytes the clients sent, over all connections (for `cutUpload`).
        var uploaded = 0
        var uploadCut = false
    }

    public let port: Int
    private let listener: Int32
    private let upstreamPort: Int
    private let state: Mutex<State>

    /// Listens on a free loopback port and forwards to `127.0.0.1:upstreamPort`.
    public init(upstreamPort: Int, fault: Fault = .none) throws {
        self.upstreamPort = upstreamPort
        self.state = Mutex(State(fault: fault))
        let socket: Int32
        do {
            socket = try syscall("socket") { Glibc.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0) }
        } catch {
            throw ProxyError("socket: \(error.reason)")
        }
        var yes: Int32 = 1
        setsockopt(socket, SOL_SOCKET, SO_REUSEADDR, &yes, socklen_t(MemoryLayout<Int32>.size))
        var address = Self.loopback(port: 0)
        do {
            _ = try withUnsafePointer(to: &address) {
                try $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { address in
                    try syscall("bind") { bind(socket, address, socklen_t(MemoryLayout<sockaddr_in>.size)) }
                }
            }
            try syscall("listen") { listen(socket, 128) }
        } catch {
            close(socket)
            throw ProxyError("bind/listen: \(error)")
        }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(socket, $0, &length) }
        }
        self.listener = socket
        self.port = Int(UInt16(bigEndian: address.sin_port))
        let thread = Thread { [self] in acceptLoop() }
        thread.name = "proxy-accept"
        thread.start()
    }

    /// `http://127.0.0.1:PORT`.
    public var url: String { "http://127.0.0.1:\(port)" }

    /// Connections accepted so far.
    public var connectionsAccepted: Int { state.withLock { $0.accepted } }

    /// Changes the fault for connections accepted from now on.
    public func setFault(_ fault: Fault) {
        state.withLock { $0.fault = fault }
    }

    /// Stops accepting and cuts every open connection.
    public func stop() {
        let open = state.withLock { state -> Set<Int32> in
            state.stopped = true
            return state.open
        }
        shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
        for descriptor in open { shutdown(descriptor, Int32(SHUT_RDWR)) }
    }

    private static func loopback(port: UInt16) -> sockaddr_in {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
        return address
    }

    private func acceptLoop() {
        while true {
            guard let client = try? syscall("accept", { accept(listener, nil, nil) }) else { return }
            let (fault, index, stopped) = state.withLock { state -> (Fault, Int, Bool) in
                state.accepted += 1
                if !state.stopped { state.open.insert(client) }
                return (state.fault, state.accepted, state.stopped)
            }
            if stopped {
                close(client)
                return
            }
            if case .cutThenDelay(_, let delay) = fault, index > 1 {
                Thread.sleep(forTimeInterval: delay.inSeconds)
            }
            let server = Glibc.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var address = Self.loopback(port: UInt16(upstreamPort))
            let connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(server, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            if connected != 0 {
                close(server)
                finish(client)
                continue
            }
            state.withLock { _ = $0.open.insert(server) }
            let connection = Connection(client: client, server: server, fault: fault, index: index)
            let up = Thread { [self] in
                pump(from: client, to: server, connection: connection, downstream: false)
            }
            let down = Thread { [self] in
                pump(from: server, to: client, connection: connection, downstream: true)
            }
            up.start()
            down.start()
        }
    }

    private final class Connection: Sendable {
        let client: Int32
        let server: Int32
        let fault: Fault
        let index: Int
        let closed = Atomic<Int>(0)

        init(client: Int32, server: Int32, fault: Fault, index: Int) {
            self.client = client
            self.server = server
            self.fault = fault
            self.index = index
        }
    }

    private func pump(from source: Int32, to target: Int32, connection: Connection, downstream: Bool) {
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        var forwarded = 0
        /// When the link is free again (`bandwidth`): each chunk takes its bytes / rate of
        /// link time from when it arrives or the previous one is through, whichever is
        /// later, so time the server spent silent is never made up in a burst.
        var linkFree: ContinuousClock.Instant?
        defer { tearDown(connection) }
        while true {
            var limit = buffer.count
            if !downstream, case .cutUpload(let bytes) = connection.fault {
                // Reserve what this read may forward before the cut, across connections.
                let allowed = state.withLock { state -> Int in
                    if state.uploadCut { return limit }
                    if state.uploaded >= bytes {
                        state.uploadCut = true
                        return 0
                    }
                    return min(limit, bytes - state.uploaded)
                }
                if allowed == 0 { return }
                limit = allowed
            }
            if downstream {
                switch connection.fault {
                case .cut(let bytes, let connections) where connection.index <= connections:
                    if forwarded >= bytes { return }
                    limit = min(limit, bytes - forwarded)
                case .cutThenDelay(let bytes, _) where connection.index == 1:
                    if forwarded >= bytes { return }
                    limit = min(limit, bytes - forwarded)
                case .trickle(let bytes, _) where forwarded >= bytes:
                    limit = 1
                case .trickle(let bytes, _):
                    limit = min(limit, bytes - forwarded)
                case .bandwidth(let rate):
                    limit = min(limit, max(1, rate / 50))
                default:
                    break
                }
            }
            guard let count = try? buffer.withUnsafeMutableBytes({ bytes in try syscall("read") { read(source, bytes.baseAddress, limit) } }),
                count > 0
            else { return }
            if !downstream, case .cutUpload = connection.fault {
                state.withLock { $0.uploaded += count }
            }
            if downstream {
                if case .flipByte(let offset) = connection.fault, offset >= forwarded, offset < forwarded + count {
                    buffer[offset - forwarded] ^= 0xFF
                }
                switch connection.fault {
                case .bandwidth(let rate):
                    // Hold the connection to `rate`: this chunk goes once its link time is up.
                    let now = ContinuousClock.now
                    let due = max(linkFree ?? now, now) + .nanoseconds(Int64(Double(count) / Double(rate) * 1e9))
                    linkFree = due
                    let wait = due - ContinuousClock.now
                    if wait > .zero { Thread.sleep(forTimeInterval: wait.inSeconds) }
                case .trickle(let bytes, let interval) where forwarded >= bytes:
                    Thread.sleep(forTimeInterval: interval.inSeconds)
                case .delayFirstByte(let delay) where forwarded == 0:
                    Thread.sleep(forTimeInterval: delay.inSeconds)
                default:
                    break
                }
            }
            do {
                try buffer.withUnsafeBytes { bytes in try writeAll(target, UnsafeRawBufferPointer(rebasing: bytes[..<count])) }
            } catch {
                return
            }
            forwarded += count
        }
    }

    /// Closes both sides once both pumps are done; the first to finish cuts the other.
    private func tearDown(_ connection: Connection) {
        shutdown(connection.client, Int32(SHUT_RDWR))
        shutdown(connection.server, Int32(SHUT_RDWR))
        if connection.closed.add(1, ordering: .acquiringAndReleasing).newValue == 2 {
            finish(connection.client)
            finish(connection.server)
        }
    }

    private func finish(_ descriptor: Int32) {
        state.withLock { _ = $0.open.remove(descriptor) }
        close(descriptor)
    }
}

/// A proxy that could not start.
public struct ProxyError: Error, CustomStringConvertible {
    public var description: String
    init(_ description: String) { self.description = description }
}
