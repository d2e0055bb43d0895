import Dispatch
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Turns SIGINT and SIGTERM into cancellation of the work in progress, so an operator's
/// Ctrl-C or a service manager's stop still removes the staging directory and kills a
/// running package manager (which runs in a process group of its own and would not get
/// the terminal's signal). A second signal exits at once.
final class Interrupts: @unchecked Sendable {
    private let sources: [DispatchSourceSignal]
    private let received = NSLock()
    private var signalName: String?

    /// Starts watching; `cancel` runs once, on the first signal.
    /// - Parameter describe: what stopping leaves behind, said when the signal arrives
    ///   (it must be true at that moment: before promotion the destination is as it was,
    ///   after it the new tree stays).
    init(
        describe: @escaping @Sendable () -> String = { "the destination is left as it was" },
        cancel: @escaping @Sendable () -> Void
    ) {
        let signals: [(Int32, String)] = [(SIGINT, "SIGINT"), (SIGTERM, "SIGTERM")]
        sources = signals.map { number, _ in
            signal(number, SIG_IGN)
            return DispatchSource.makeSignalSource(signal: number, queue: .global())
        }
        for (source, (_, name)) in zip(sources, signals) {
            source.setEventHandler { [self] in
                let first = received.withLock { () -> Bool in
                    defer { signalName = signalName ?? name }
                    return signalName == nil
                }
                if first {
                    FileHandle.standardError.write(Data("cachetiers: \(name): stopping; \(describe())\n".utf8))
                    cancel()
                } else {
                    exit(1)
                }
            }
            source.resume()
        }
    }

    /// The signal that arrived, if any.
    var interruptedBy: String? { received.withLock { signalName } }

    /// Stops watching and restores the default actions.
    func stop() {
        for source in sources { source.cancel() }
        signal(SIGINT, SIG_DFL)
        signal(SIGTERM, SIG_DFL)
    }
}
