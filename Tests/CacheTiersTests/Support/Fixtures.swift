import CacheTiers
import CacheTiersTesting
import Foundation
import SystemPackage

/// Paths and tools the tests share: the repository, the corpus, the CLI.
enum Fixtures {
    /// The repository's root folder.
    static let repositoryRoot: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// Writes a node_modules-like tree with the project's corpus generator, off the pool.
    /// - Returns: the `node_modules` folder it made.
    static func makeCorpus(in folder: FilePath, files: Int, seed: Int = 1) async throws -> FilePath {
        try await offThePool {
            try DependencyCorpus.write(to: folder, options: .init(files: files, seed: UInt64(seed)))
        }
        return folder.appending("node_modules")
    }

    /// This machine's name as `gethostname` gives it (what CacheTiers writes into the
    /// names of its scratch folders).
    static var hostName: String {
        var buffer = [CChar](repeating: 0, count: 256)
        _ = gethostname(&buffer, buffer.count - 1)
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// The process ID of a process that has exited: no process has it (until the kernel
    /// reuses it, which takes a full cycle of IDs).
    static func processIDOfAFinishedProcess() throws -> Int32 {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/true")
        try process.run()
        process.waitUntilExit()
        return process.processIdentifier
    }

    /// The `cachetiers` executable built beside the tests (CACHETIERS_BINARY overrides).
    static var cliPath: String {
        ProcessInfo.processInfo.environment["CACHETIERS_BINARY"]
            ?? repositoryRoot.appendingPathComponent(".build/debug/cachetiers").path
    }

    struct ProcessResult {
        var status: Int32
        var stdout: String
        var stderr: String
    }

    /// Runs a program (looked up on PATH) to completion, on a thread of its own.
    @discardableResult
    static func run(_ arguments: [String], in directory: FilePath? = nil, environment: [String: String]? = nil)
        async throws -> ProcessResult
    {
        try await offThePool { try runBlocking(arguments, in: directory, environment: environment) }
    }

    /// ``run(_:in:environment:)`` on the caller's thread, for where no task is at hand.
    static func runBlocking(_ arguments: [String], in directory: FilePath? = nil, environment: [String: String]? = nil)
        throws -> ProcessResult
    {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = arguments
        if let directory { process.currentDirectoryURL = URL(fileURLWithPath: directory.string) }
        if let environment { process.environment = environment }
        let out = Pipe()
        let err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        // Both pipes drain at once, so a chatty child cannot fill one and block.
        let stderr = Thread.detachedRead(err.fileHandleForReading)
        let stdout = out.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return ProcessResult(
            status: process.terminationStatus,
            stdout: String(decoding: stdout, as: UTF8.self),
            stderr: String(decoding: stderr.wait(), as: UTF8.self)
        )
    }

    /// Runs the `cachetiers` command.
    static func cli(_ arguments: [String], in directory: FilePath? = nil) async throws -> ProcessResult {
        let binary = cliPath
        guard FileManager.default.isExecutableFile(atPath: binary) else {
            throw FixtureError("the cachetiers binary is not at \(binary); run `swift build` first")
        }
        return try await run([binary] + arguments, in: directory)
    }

    struct MeasuredRun {
        var status: Int32
        var stderr: String
        /// The child's peak resident set size (`ru_maxrss` from wait4), in bytes.
        var peakMemory: Int64
    }

    /// Runs the `cachetiers` command and measures its peak resident memory, as the kernel
    /// accounts it for the child (wait4's `ru_maxrss`, what `/usr/bin/time -v` reports).
    ///
    /// A small Python process forks and execs the command: a child spawned straight
    /// from this test process (vfork semantics) would be charged this process's own peak
    /// at exec. The fork charges the child the few MiB Python holds, at most.
    static func cliMeasuringMemory(_ arguments: [String]) async throws -> MeasuredRun {
        let binary = cliPath
        guard FileManager.default.isExecutableFile(atPath: binary) else {
            throw FixtureError("the cachetiers binary is not at \(binary); run `swift build` first")
        }
        let script = """
            import os, sys
            pid = os.fork()
            if pid == 0:
                os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
                os.execv(sys.argv[1], sys.argv[1:])
            _, status, usage = os.wait4(pid, 0)
            print(usage.ru_maxrss)
            code = os.waitstatus_to_exitcode(status)
            sys.exit(code if code >= 0 else 128 - code)
            """
        let result = try await run(["python3", "-c", script, binary] + arguments)
        guard let kibibytes = Int64(result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)) else {
            throw FixtureError("could not measure \(arguments): \(result.stdout) \(result.stderr)")
        }
        return MeasuredRun(status: result.status, stderr: result.stderr, peakMemory: kibibytes * 1024)
    }

    /// Runs `body` on a thread of its own. Tests run in parallel on Swift's cooperative
    /// pool, two threads here: a test blocked on a child process there starves the
    /// others, and a chain under test on a manual clock then misses its deadline for
    /// reaching a sleep.
    static func offThePool<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            Thread { continuation.resume(with: Result { try body() }) }.start()
        }
    }
}

extension Thread {
    /// Reads `handle` to its end on a new thread.
    static func detachedRead(_ handle: FileHandle) -> PendingRead {
        let read = PendingRead()
        Thread { read.complete(handle.readDataToEndOfFile()) }.start()
        return read
    }

    /// The outcome of ``detachedRead(_:)``.
    final class PendingRead: @unchecked Sendable {
        private let condition = NSCondition()
        private var data: Data?

        fileprivate func complete(_ data: Data) {
            condition.lock()
            self.data = data
            condition.broadcast()
            condition.unlock()
        }

        func wait() -> Data {
            condition.lock()
            defer { condition.unlock() }
            while data == nil { condition.wait() }
            return data!
        }
    }
}

struct FixtureError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Builds tar archives byte by byte, including the hostile ones a safe extractor must
/// refuse. Independent of the library's own tar writer on purpose.
struct CraftedTar {
    private(set) var bytes: [UInt8] = []

    enum Kind: UInt8 {
        case file = 0x30, hardLink = 0x31, symlink = 0x32, characterDevice = 0x33, blockDevice = 0x34
        case directory = 0x35, fifo = 0x36, pax = 0x78, gnuLongName = 0x4C
    }

    mutating func add(_ name: String, kind: Kind = .file, contents: [UInt8] = [], link: String = "", mode: Int = 0o644) {
        var block = [UInt8](repeating: 0, count: 512)
        func put(_ text: [UInt8], _ offset: Int, _ width: Int) {
            for (i, byte) in text.prefix(width).enumerated() { block[offset + i] = byte }
        }
        func octal(_ value: Int, _ offset: Int, _ width: Int) {
            let digits = String(value, radix: 8)
            put(Array((String(repeating: "0", count: max(0, width - 1 - digits.count)) + digits).utf8), offset, width - 1)
        }
        put(Array(name.utf8), 0, 100)
        octal(mode, 100, 8)
        octal(0, 108, 8)
        octal(0, 116, 8)
        octal(contents.count, 124, 12)
        octal(1_700_000_000, 136, 12)
        block[156] = kind.rawValue
        put(Array(link.utf8), 157, 100)
        put(Array("ustar\u{0}00".utf8), 257, 8)
        for i in 148..<156 { block[i] = 0x20 }
        let sum = block.reduce(0) { $0 + Int($1) }
        put(Array((String(repeating: "0", count: 6 - String(sum, radix: 8).count) + String(sum, radix: 8)).utf8), 148, 6)
        block[154] = 0
        bytes += block
        bytes += contents
        if contents.count % 512 != 0 { bytes += [UInt8](repeating: 0, count: 512 - contents.count % 512) }
    }

    mutating func end() {
        bytes += [UInt8](repeating: 0, count: 1024)
    }

    /// Writes the archive, compressed with zstd unless `compressed` is false.
    func write(to path: FilePath, compressed: Bool = true) throws {
        var output = bytes
        if compressed {
            let encoder = try ZstdCodec(level: 3, threads: 1).makeEncoder()
            var compressedBytes: [UInt8] = []
            try bytes.withUnsafeBytes { input in
                try encoder.encode(input) { compressedBytes.append(contentsOf: $0) }
            }
            try encoder.finish { compressedBytes.append(contentsOf: $0) }
            output = compressedBytes
        }
        try Data(output).write(to: URL(fileURLWithPath: path.string))
    }
}
