import Foundation
import Synchronization

/// Runs blocking work (file I/O, long CPU loops) on a thread of its own, so it never
/// occupies one of the few threads of Swift's cooperative pool.
enum DedicatedThread {
    /// Runs `body` on a new thread and returns its result.
    ///
    /// `body` receives a flag that becomes true when the calling task is cancelled; long
    /// loops should check it and stop.
    static func run<Result: Sendable>(
        name: String,
        _ body: @escaping @Sendable (_ isCancelled: CancellationFlag) throws -> Result
    ) async throws -> Result {
        let flag = CancellationFlag()
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                let thread = Thread {
                    continuation.resume(with: Swift.Result { try body(flag) })
                }
                thread.name = name
                thread.start()
            }
        } onCancel: {
            flag.cancel()
        }
    }
}

/// Set once when the work it was handed to should stop.
final class CancellationFlag: Sendable {
    private let flag = Atomic<Bool>(false)

    func cancel() {
        flag.store(true, ordering: .relaxed)
    }

    var isCancelled: Bool {
        flag.load(ordering: .relaxed)
    }
}
