#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A system call that failed: which one, and the `errno` it left.
package struct SystemCallError: Error, Sendable, CustomStringConvertible {
    /// The call's name, as its manual page spells it (`openat`, `write`).
    package var call: StaticString
    /// The `errno` the call set, read before anything else could overwrite it.
    package var errnoCode: Int32

    package init(call: StaticString, errnoCode: Int32) {
        self.call = call
        self.errnoCode = errnoCode
    }

    /// What the system says, as `strerror` words it.
    package var reason: String { String(cString: strerror(errnoCode)) }

    package var description: String { "\(call) failed: \(reason) (errno \(errnoCode))" }
}

/// Runs a system call that reports failure by returning -1, retrying it while a signal
/// interrupts it (EINTR), the way SwiftNIO's `syscall(blocking:where:_:)` does.
///
/// `errno` is read the moment `body` returns, before anything can allocate (a string
/// interpolation, `String(cString:)`) and overwrite it; the error carries it and the
/// call's name as a `StaticString`, so a failure costs no allocation either and a caller
/// that expects one (`EEXIST`, `ENOENT`) can test ``SystemCallError/errnoCode`` cheaply.
///
/// Not for `close(2)`: on Linux the descriptor is gone even when it says EINTR, and a
/// retry could close one another thread just opened.
@inline(__always)
@discardableResult
package func syscall<Result: FixedWidthInteger & SignedInteger>(
    _ call: StaticString,
    _ body: () -> Result
) throws(SystemCallError) -> Result {
    while true {
        let result = body()
        if result != -1 { return result }
        let code = errno
        if code != EINTR { throw SystemCallError(call: call, errnoCode: code) }
    }
}

/// ``syscall(_:_:)`` for a call that reports failure by returning a null pointer
/// (`fdopendir`, `fopen`).
@inline(__always)
package func syscall(_ call: StaticString, _ body: () -> OpaquePointer?) throws(SystemCallError) -> OpaquePointer {
    while true {
        if let result = body() { return result }
        let code = errno
        if code != EINTR { throw SystemCallError(call: call, errnoCode: code) }
    }
}

/// Writes all of `bytes` to `descriptor`, however many calls `write(2)` takes.
package func writeAll(_ descriptor: Int32, _ bytes: UnsafeRawBufferPointer) throws(SystemCallError) {
    var written = 0
    while written < bytes.count {
        written += try syscall("write") { write(descriptor, bytes.baseAddress! + written, bytes.count - written) }
    }
}
