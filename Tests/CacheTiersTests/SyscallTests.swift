import CacheTiers
import Foundation
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The one system-call helper every archive and test-support loop goes through.
@Suite struct SyscallTests {
    @Test func aFailedCallCarriesItsNameAndTheErrnoItSet() throws {
        let error = #expect(throws: SystemCallError.self) {
            try syscall("openat") { openat(AT_FDCWD, "/nonexistent-\(UUID().uuidString)/file", O_RDONLY | O_CLOEXEC) }
        }
        #expect(error?.errnoCode == ENOENT)
        #expect("\(error?.call ?? "")" == "openat")
        #expect(error?.description == "openat failed: No such file or directory (errno \(ENOENT))")
    }

    @Test func aWriteToAClosedDescriptorSaysEBADF() throws {
        var descriptors: [Int32] = [0, 0]
        #expect(pipe(&descriptors) == 0)
        close(descriptors[0])
        close(descriptors[1])
        let bytes: [UInt8] = [1, 2, 3]
        let error = #expect(throws: SystemCallError.self) {
            try bytes.withUnsafeBytes { buffer in try writeAll(descriptors[1], buffer) }
        }
        #expect(error?.errnoCode == EBADF)
        #expect(error?.description == "write failed: Bad file descriptor (errno \(EBADF))")
    }

    @Test func aSuccessfulCallReturnsItsResult() throws {
        let descriptor = try syscall("open") { open("/dev/null", O_RDONLY | O_CLOEXEC) }
        defer { close(descriptor) }
        #expect(descriptor >= 0)
        var byte: UInt8 = 0
        #expect(try syscall("read") { read(descriptor, &byte, 1) } == 0, "/dev/null reads as end of file")
    }

    /// A pipe holds 64 KiB, so 1 MiB into it takes many partial writes while a reader drains it.
    @Test func writeAllWritesEveryByteThroughPartialWrites() throws {
        var descriptors: [Int32] = [0, 0]
        #expect(pipe(&descriptors) == 0)
        let (readEnd, writeEnd) = (descriptors[0], descriptors[1])
        let contents = (0..<(1 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        let received = Mutex<[UInt8]>([])
        let drained = DispatchSemaphore(value: 0)
        Thread {
            var buffer = [UInt8](repeating: 0, count: 8192)
            while let count = try? buffer.withUnsafeMutableBytes({ bytes in try syscall("read") { read(readEnd, bytes.baseAddress, bytes.count) } }),
                count > 0
            {
                received.withLock { $0.append(contentsOf: buffer[..<count]) }
            }
            close(readEnd)
            drained.signal()
        }.start()
        try contents.withUnsafeBytes { try writeAll(writeEnd, $0) }
        close(writeEnd)
        drained.wait()
        #expect(received.withLock { $0 } == contents)
    }

    #if os(Linux)
    /// A signal whose handler is installed without SA_RESTART interrupts a blocked read
    /// (EINTR); the helper calls read again instead of failing.
    @Test func anInterruptedCallIsRetried() throws {
        var descriptors: [Int32] = [0, 0]
        #expect(pipe(&descriptors) == 0)
        let (readEnd, writeEnd) = (descriptors[0], descriptors[1])
        defer {
            close(readEnd)
            close(writeEnd)
        }
        var action = sigaction()
        action.__sigaction_handler.sa_handler = { _ in }
        action.sa_flags = 0  // no SA_RESTART: the kernel returns EINTR
        var previous = sigaction()
        #expect(sigaction(SIGUSR2, &action, &previous) == 0)
        defer { sigaction(SIGUSR2, &previous, nil) }

        let attempts = Atomic<Int>(0)
        let readerThread = Atomic<UInt>(0)
        let outcome = Mutex<Result<Int, SystemCallError>?>(nil)
        let done = DispatchSemaphore(value: 0)
        Thread {
            // The signal must reach this thread, whatever mask it inherited.
            var mask = sigset_t()
            sigemptyset(&mask)
            sigaddset(&mask, SIGUSR2)
            pthread_sigmask(SIG_UNBLOCK, &mask, nil)
            readerThread.store(UInt(pthread_self()), ordering: .releasing)
            var byte: UInt8 = 0
            let result = Result { () throws(SystemCallError) in
                try syscall("read") {
                    attempts.add(1, ordering: .relaxed)
                    return read(readEnd, &byte, 1)
                }
            }
            outcome.withLock { $0 = result }
            done.signal()
        }.start()
        // Interrupt the blocked read until it has been called a second time.
        let deadline = ContinuousClock.now + .seconds(10)
        while attempts.load(ordering: .relaxed) < 2 && ContinuousClock.now < deadline {
            let thread = readerThread.load(ordering: .acquiring)
            if thread != 0 && attempts.load(ordering: .relaxed) == 1 { pthread_kill(pthread_t(thread), SIGUSR2) }
            usleep(10_000)
        }
        var byte: UInt8 = 7
        #expect(write(writeEnd, &byte, 1) == 1)
        done.wait()
        #expect(attempts.load(ordering: .relaxed) >= 2, "the read was never interrupted and retried")
        #expect(try outcome.withLock { $0 }?.get() == 1)
    }
    #endif
}
