import Foundation
import Synchronization
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A real browser for tests of web pages: headless Chromium (Debian's `chromium`), driven
/// through the Chrome DevTools Protocol over `--remote-debugging-pipe` (JSON messages,
/// each ended by a NUL byte, read by the browser on fd 3 and written on fd 4), so no port
/// is opened and no WebSocket client is needed.
///
/// ```swift
/// let browser = try await HeadlessChromium.start()
/// defer { browser.stop() }
/// let page = try await browser.newPage()
/// try await page.navigate(to: "http://127.0.0.1:7420/")
/// let title: String = try await page.evaluate("document.title")
/// try await page.screenshot(to: FilePath("/tmp/page.png"))
/// ```
///
/// Every call has a deadline (``timeout``), so a browser that stops answering fails the
/// test instead of hanging it; ``stop()`` closes the browser, kills it if it does not go,
/// and removes its profile folder.
public final class HeadlessChromium: Sendable {
    /// A browser tab, attached in the protocol's flat session mode.
    public struct Page: Sendable {
        let browser: HeadlessChromium
        let sessionID: String

        /// Loads `url` and returns once its `load` event fired.
        public func navigate(to url: String) async throws {
            try await browser.untilEvent("Page.loadEventFired", session: sessionID) {
                let answer = try await browser.call("Page.navigate", ["url": url], session: sessionID)
                if let failure = answer["errorText"] as? String, !failure.isEmpty {
                    throw ChromiumError("Chromium could not load \(url): \(failure)")
                }
            }
        }

        /// Runs `script` (which navigates the page, e.g. submits a form) and returns once
        /// the next page's `load` event fired.
        public func navigating(by script: String) async throws {
            try await browser.untilEvent("Page.loadEventFired", session: sessionID) {
                _ = try await browser.call(
                    "Runtime.evaluate", ["expression": script, "returnByValue": true], session: sessionID
                )
            }
        }

        /// The value of the JavaScript `expression` (awaited when it is a promise), decoded
        /// from its JSON form as `T`. A thrown exception fails with its message.
        public func evaluate<T: Decodable>(_ expression: String, as type: T.Type = T.self) async throws -> T {
            let wrapped = "(async () => JSON.stringify(await (\(expression))))()"
            let answer = try await browser.call(
                "Runtime.evaluate", ["expression": wrapped, "returnByValue": true, "awaitPromise": true],
                session: sessionID
            )
            if let exception = answer["exceptionDetails"] as? [String: Any] {
                // The description is the message, then the stack, one frame a line.
                let description = (exception["exception"] as? [String: Any])?["description"] as? String
                let message = description?.split(separator: "\n").first.map(String.init)
                throw ChromiumError("the page threw: \(message ?? exception["text"] as? String ?? "an exception")")
            }
            guard let result = answer["result"] as? [String: Any], let json = result["value"] as? String else {
                throw ChromiumError("`\(expression)` has no JSON value (undefined or a function)")
            }
            return try JSONDecoder().decode(T.self, from: Data(json.utf8))
        }

        /// A PNG of the whole page (not only the viewport), `width` CSS pixels wide, written
        /// to `path`.
        public func screenshot(to path: FilePath, width: Int = 1280) async throws {
            let height: Int = try await evaluate("Math.ceil(document.documentElement.scrollHeight)")
            _ = try await browser.call(
                "Emulation.setDeviceMetricsOverride",
                ["width": width, "height": max(1, height), "deviceScaleFactor": 1, "mobile": false],
                session: sessionID
            )
            let answer = try await browser.call(
                "Page.captureScreenshot", ["format": "png", "captureBeyondViewport": true], session: sessionID
            )
            guard let encoded = answer["data"] as? String, let png = Data(base64Encoded: encoded) else {
                throw ChromiumError("Chromium answered a screenshot without PNG data")
            }
            try png.write(to: URL(fileURLWithPath: path.string), options: .atomic)
        }
    }

    /// The Chromium binary: `CACHETIERS_CHROMIUM`, else `chromium`, `chromium-browser` or
    /// `google-chrome` on PATH; nil when there is none.
    public static let binary: String? = {
        if let path = ProcessInfo.processInfo.environment["CACHETIERS_CHROMIUM"], !path.isEmpty { return path }
        let folders = (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":")
        for name in ["chromium", "chromium-browser", "google-chrome"] {
            for folder in folders where FileManager.default.isExecutableFile(atPath: "\(folder)/\(name)") {
                return "\(folder)/\(name)"
            }
        }
        return nil
    }()

    /// How long one protocol call (or a page load) may take.
    public let timeout: Duration
    private let processID: pid_t
    private let commands: FileDescriptor
    private let profile: TemporaryDirectory
    private let state = Mutex(State())
    /// Held while a message is written, so concurrent calls never interleave bytes.
    private let writing = Mutex(())

    private struct State {
        var nextID = 1
        var replies: [Int: CheckedContinuation<Message, any Error>] = [:]
        var eventWaiters: [Int: EventWaiter] = [:]
        var closed: String?
    }

    private struct EventWaiter {
        var method: String
        var session: String
        var continuation: CheckedContinuation<Void, any Error>?
        var fired = false
    }

    /// A decoded protocol message (JSON objects are not `Sendable`; each is read once).
    private struct Message: @unchecked Sendable {
        var object: [String: Any]
    }

    private init(processID: pid_t, commands: FileDescriptor, profile: TemporaryDirectory, timeout: Duration) {
        self.processID = processID
        self.commands = commands
        self.profile = profile
        self.timeout = timeout
    }

    /// Starts headless Chromium with a fresh profile and no network of its own beyond
    /// what a page asks for.
    public static func start(timeout: Duration = .seconds(30)) async throws -> HeadlessChromium {
        guard let binary else {
            throw ChromiumError("Chromium is not installed: apt-get install chromium (or set CACHETIERS_CHROMIUM)")
        }
        // A write to a browser that died must be an error, not a SIGPIPE that kills the tests.
        signal(SIGPIPE, SIG_IGN)
        let profile = try TemporaryDirectory(prefix: "chromium")
        let toBrowser = try closeOnExecPipe()
        let fromBrowser = try closeOnExecPipe()
        let arguments = [
            binary, "--headless=new", "--remote-debugging-pipe", "--user-data-dir=\(profile.path.string)",
            // Tests run as root in CI, where Chromium's sandbox cannot start.
            "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
            "--disable-extensions", "--disable-background-networking", "--disable-sync",
            "--disable-component-update", "--disable-default-apps", "--mute-audio", "--hide-scrollbars",
            "--window-size=1280,900", "about:blank",
        ]
        let log = profile.path.appending("chromium.log").string
        let processID: pid_t
        do {
            processID = try spawn(
                arguments, fd3: toBrowser.readEnd, fd4: fromBrowser.writeEnd, log: log
            )
        } catch {
            for fd in [toBrowser.readEnd, toBrowser.writeEnd, fromBrowser.readEnd, fromBrowser.writeEnd] {
                try? fd.close()
            }
            throw error
        }
        try? toBrowser.readEnd.close()
        try? fromBrowser.writeEnd.close()
        let browser = HeadlessChromium(
            processID: processID, commands: toBrowser.writeEnd, profile: profile, timeout: timeout
        )
        browser.startReading(fromBrowser.readEnd, log: log)
        // The first answer proves the protocol works; a browser that cannot start fails here.
        _ = try await browser.call("Browser.getVersion", [:])
        return browser
    }

    /// Opens a new tab on `about:blank`.
    public func newPage() async throws -> Page {
        let target = try await call("Target.createTarget", ["url": "about:blank"])
        guard let targetID = target["targetId"] as? String else { throw ChromiumError("Chromium opened no tab") }
        let attached = try await call("Target.attachToTarget", ["targetId": targetID, "flatten": true])
        guard let sessionID = attached["sessionId"] as? String else { throw ChromiumError("Chromium attached no session") }
        _ = try await call("Page.enable", [:], session: sessionID)
        _ = try await call("Runtime.enable", [:], session: sessionID)
        return Page(browser: self, sessionID: sessionID)
    }

    /// Closes the browser (killing it when it does not exit within 5 s) and removes its profile.
    public func stop() {
        if let close = try? Self.encode(["id": 0, "method": "Browser.close", "params": [:] as [String: Any]]),
            (try? send(close)) != nil
        {
            for _ in 0..<50 where !hasExited() { usleep(100_000) }
        }
        if !hasExited() {
            kill(processID, SIGKILL)
            var status: Int32 = 0
            _ = waitpid(processID, &status, 0)
        }
        try? commands.close()
        profile.remove()
    }

    // MARK: - The protocol

    /// Sends `method` and returns its `result`; an `error` answer throws its message.
    func call(_ method: String, _ parameters: [String: Any], session: String? = nil) async throws -> [String: Any] {
        let id = state.withLock { state -> Int in
            defer { state.nextID += 1 }
            return state.nextID
        }
        var message: [String: Any] = ["id": id, "method": method, "params": parameters]
        if let session { message["sessionId"] = session }
        let encoded = try Self.encode(message)
        let reply = try await withDeadline("Chromium did not answer \(method)") { [self] in
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Message, any Error>) in
                let closed = state.withLock { state -> String? in
                    if state.closed == nil { state.replies[id] = continuation }
                    return state.closed
                }
                if let closed { return continuation.resume(throwing: ChromiumError(closed)) }
                do {
                    try send(encoded)
                } catch {
                    if let waiting = state.withLock({ $0.replies.removeValue(forKey: id) }) {
                        waiting.resume(throwing: error)
                    }
                }
            }
        } onTimeout: { [self] in
            state.withLock { $0.replies.removeValue(forKey: id) }?.resume(throwing: CancellationError())
        }
        if let error = reply.object["error"] as? [String: Any] {
            throw ChromiumError("Chromium refused \(method): \(error["message"] as? String ?? "\(error)")")
        }
        return reply.object["result"] as? [String: Any] ?? [:]
    }

    /// Runs `action` and waits until `method` fires in `session` (the waiter is in place
    /// before the action runs, so a fast event is not missed).
    func untilEvent(_ method: String, session: String, action: () async throws -> Void) async throws {
        let waiterID = state.withLock { state -> Int in
            defer { state.nextID += 1 }
            state.eventWaiters[state.nextID] = EventWaiter(method: method, session: session)
            return state.nextID
        }
        do {
            try await action()
        } catch {
            state.withLock { _ = $0.eventWaiters.removeValue(forKey: waiterID) }
            throw error
        }
        try await withDeadline("Chromium never fired \(method)") { [self] in
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let outcome = state.withLock { state -> Result<Void, ChromiumError>? in
                    if let closed = state.closed { return .failure(ChromiumError(closed)) }
                    guard let waiter = state.eventWaiters[waiterID] else { return .failure(ChromiumError("event waiter lost")) }
                    if waiter.fired {
                        state.eventWaiters.removeValue(forKey: waiterID)
                        return .success(())
                    }
                    state.eventWaiters[waiterID]?.continuation = continuation
                    return nil
                }
                if let outcome { continuation.resume(with: outcome) }
            }
        } onTimeout: { [self] in
            state.withLock { $0.eventWaiters.removeValue(forKey: waiterID) }?.continuation?.resume(throwing: CancellationError())
        }
    }

    /// A message as the pipe carries it: JSON, then NUL.
    private static func encode(_ message: [String: Any]) throws -> Data {
        var bytes = try JSONSerialization.data(withJSONObject: message)
        bytes.append(0)
        return bytes
    }

    private func send(_ bytes: Data) throws {
        try writing.withLock { _ in _ = try commands.writeAll(bytes) }
    }

    /// Reads NUL-ended messages on a thread of its own until the browser closes its end.
    private func startReading(_ input: FileDescriptor, log: String) {
        let thread = Thread { [self] in
            var pending: [UInt8] = []
            var chunk = [UInt8](repeating: 0, count: 1 << 16)
            while true {
                let count = (try? chunk.withUnsafeMutableBytes { try input.read(into: $0, retryOnInterrupt: true) }) ?? 0
                if count <= 0 { break }
                pending.append(contentsOf: chunk[..<count])
                while let end = pending.firstIndex(of: 0) {
                    let body = Data(pending[..<end])
                    pending.removeSubrange(...end)
                    if let object = (try? JSONSerialization.jsonObject(with: body)) as? [String: Any] {
                        dispatch(Message(object: object))
                    }
                }
            }
            try? input.close()
            let tail = (try? String(contentsOfFile: log, encoding: .utf8))?.split(separator: "\n").suffix(3).joined(separator: " | ")
            closeAll("Chromium exited\(tail.map { ": \($0)" } ?? "")")
        }
        thread.name = "chromium-devtools"
        thread.start()
    }

    private func dispatch(_ message: Message) {
        if let id = message.object["id"] as? Int {
            state.withLock { $0.replies.removeValue(forKey: id) }?.resume(returning: message)
            return
        }
        guard let method = message.object["method"] as? String else { return }
        let session = message.object["sessionId"] as? String ?? ""
        let woken = state.withLock { state -> [CheckedContinuation<Void, any Error>] in
            var woken: [CheckedContinuation<Void, any Error>] = []
            for (id, waiter) in state.eventWaiters where waiter.method == method && waiter.session == session && !waiter.fired {
                if let continuation = waiter.continuation {
                    woken.append(continuation)
                    state.eventWaiters.removeValue(forKey: id)
                } else {
                    state.eventWaiters[id]?.fired = true
                }
            }
            return woken
        }
        for continuation in woken { continuation.resume() }
    }

    private func closeAll(_ reason: String) {
        let (replies, waiters) = state.withLock { state in
            state.closed = reason
            defer {
                state.replies = [:]
                state.eventWaiters = [:]
            }
            return (Array(state.replies.values), state.eventWaiters.values.compactMap(\.continuation))
        }
        for reply in replies { reply.resume(throwing: ChromiumError(reason)) }
        for waiter in waiters { waiter.resume(throwing: ChromiumError(reason)) }
    }

    private func hasExited() -> Bool {
        var status: Int32 = 0
        let result = waitpid(processID, &status, WNOHANG)
        return result == processID || (result == -1 && errno == ECHILD)
    }

    /// Runs `body`, failing with `message` once ``timeout`` passes (after `onTimeout` has
    /// released whatever `body` waits on).
    private func withDeadline<T: Sendable>(
        _ message: String, _ body: @escaping @Sendable () async throws -> T, onTimeout: @escaping @Sendable () -> Void
    ) async throws -> T {
        try await withThrowingTaskGroup(of: T?.self) { group in
            group.addTask { try await body() }
            group.addTask { [timeout] in
                try await Task.sleep(for: timeout)
                return nil
            }
            defer { group.cancelAll() }
            while let next = try await group.next() {
                if let value = next { return value }
                onTimeout()
                throw ChromiumError("\(message) within \(timeout)")
            }
            throw ChromiumError(message)
        }
    }

    /// A pipe whose ends no other child process inherits (the spawn places its own copies).
    private static func closeOnExecPipe() throws -> (readEnd: FileDescriptor, writeEnd: FileDescriptor) {
        var ends: [Int32] = [0, 0]
        guard pipe(&ends) == 0 else {
            throw ChromiumError("cannot create a pipe for Chromium: \(String(cString: strerror(errno)))")
        }
        // Glibc's module does not export pipe2; the flag is set before anything is spawned
        // by this call, and the tests spawn nothing else from another thread that would
        // keep the browser's end open.
        for end in ends { _ = fcntl(end, F_SETFD, FD_CLOEXEC) }
        return (FileDescriptor(rawValue: ends[0]), FileDescriptor(rawValue: ends[1]))
    }

    /// posix_spawn with the pipe ends on fds 3 and 4 and stdout/stderr to `log`: Foundation's
    /// Process cannot place descriptors beyond the three standard ones.
    private static func spawn(_ arguments: [String], fd3: FileDescriptor, fd4: FileDescriptor, log: String) throws -> pid_t {
        // dup2 clears close-on-exec on the copy, unless source and target are one
        // descriptor: move both above 4 first.
        let read = fcntl(fd3.rawValue, F_DUPFD_CLOEXEC, 10)
        let write = fcntl(fd4.rawValue, F_DUPFD_CLOEXEC, 10)
        defer {
            if read >= 0 { close(read) }
            if write >= 0 { close(write) }
        }
        guard read >= 0, write >= 0 else {
            throw ChromiumError("cannot prepare Chromium's pipes: \(String(cString: strerror(errno)))")
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, log, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        posix_spawn_file_actions_adddup2(&actions, read, 3)
        posix_spawn_file_actions_adddup2(&actions, write, 4)
        let argv = arguments.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var processID: pid_t = 0
        let result = posix_spawn(&processID, arguments[0], &actions, nil, argv, environ)
        guard result == 0 else {
            throw ChromiumError("cannot start \(arguments[0]): \(String(cString: strerror(result)))")
        }
        return processID
    }
}

/// Chromium failed to start, answer, or do what a test asked.
public struct ChromiumError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}
