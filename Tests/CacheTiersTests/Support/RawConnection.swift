import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A plain TCP connection to 127.0.0.1, for talking to a server the way a hostile or
/// broken client does (half a request, nothing at all) and for seeing when it hangs up.
final class RawConnection: Sendable {
    let descriptor: Int32

    init(port: Int) throws {
        descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard descriptor >= 0 else { throw FixtureError("socket: \(String(cString: strerror(errno)))") }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard result == 0 else {
            close(descriptor)
            throw FixtureError("connect to port \(port): \(String(cString: strerror(errno)))")
        }
    }

    deinit {
        close(descriptor)
    }

    func send(_ text: String) {
        _ = Array(text.utf8).withUnsafeBytes { Glibc.send(descriptor, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    }

    enum ReadOutcome: Equatable {
        /// The server closed the connection (or reset it).
        case closed
        /// Bytes arrived.
        case data(String)
        /// Nothing within the wait.
        case silent
    }

    /// Waits up to `seconds` for bytes or a hang-up.
    func read(within seconds: Double) -> ReadOutcome {
        var poller = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
        let ready = poll(&poller, 1, Int32(seconds * 1000))
        guard ready > 0 else { return .silent }
        var buffer = [UInt8](repeating: 0, count: 65536)
        let count = recv(descriptor, &buffer, buffer.count, 0)
        if count <= 0 { return .closed }
        return .data(String(decoding: buffer[..<count], as: UTF8.self))
    }

    /// Reads until the server hangs up or `seconds` pass with nothing new.
    func readUntilClosed(idleSeconds seconds: Double) -> (text: String, closed: Bool) {
        var text = ""
        while true {
            switch read(within: seconds) {
            case .closed: return (text, true)
            case .silent: return (text, false)
            case .data(let more): text += more
            }
        }
    }
}

/// A port that completes TCP handshakes (the kernel's listen backlog) and never answers:
/// a cache master stopped with SIGSTOP, or a black-holed address, as a client sees it.
final class BlackHoleServer: Sendable {
    let descriptor: Int32
    let port: Int

    init() throws {
        let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = 0
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer in
                bind(descriptor, pointer, length) == 0 && listen(descriptor, 128) == 0
                    && getsockname(descriptor, pointer, &length) == 0
            }
        }
        guard bound else {
            close(descriptor)
            throw FixtureError("black hole: \(String(cString: strerror(errno)))")
        }
        self.descriptor = descriptor
        port = Int(UInt16(bigEndian: address.sin_port))
    }

    var url: String { "http://127.0.0.1:\(port)" }

    deinit {
        close(descriptor)
    }
}
