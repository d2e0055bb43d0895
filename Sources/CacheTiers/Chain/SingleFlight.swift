import Synchronization

/// Runs one operation per key at a time; concurrent callers for the same key wait for
/// the running one and share its result.
///
/// The operation runs in its own task. A waiter that is cancelled stops waiting at
/// once; when the last waiter is cancelled, the operation is cancelled too and that
/// waiter returns only after the operation has stopped, so a caller that gave up can
/// rely on nothing of its restore still running.
final class SingleFlight<Key: Hashable & Sendable, Value: Sendable>: Sendable {
    private enum Wakeup {
        case finished(Result<Value, any Error>)
        case cancelled
        case cancelledLast
    }

    private struct Flight {
        var task: Task<Value, any Error>
        var parked: [Int: CheckedContinuation<Wakeup, Never>] = [:]
        var waiting: Set<Int> = []
        var cancelledBeforeParking: Set<Int> = []
    }

    private struct State {
        var flights: [Key: Flight] = [:]
        var nextWaiter = 0
    }

    private let state = Mutex(State())

    func run(_ key: Key, operation: @escaping @Sendable () async throws -> Value) async throws -> Value {
        let (waiterID, task) = state.withLock { state -> (Int, Task<Value, any Error>) in
            let id = state.nextWaiter
            state.nextWaiter += 1
            if state.flights[key] == nil {
                let task = Task {
                    let result: Result<Value, any Error>
                    do {
                        result = .success(try await operation())
                    } catch {
                        result = .failure(error)
                    }
                    self.finish(key, with: result)
                    return try result.get()
                }
                state.flights[key] = Flight(task: task)
            }
            state.flights[key]!.waiting.insert(id)
            return (id, state.flights[key]!.task)
        }

        let wakeup = await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Wakeup, Never>) in
                let parking = state.withLock { state -> Parking in
                    guard var flight = state.flights[key], flight.waiting.contains(waiterID) else {
                        return .finishedAlready
                    }
                    if flight.cancelledBeforeParking.remove(waiterID) != nil {
                        state.flights[key] = flight
                        return .wake(self.removeWaiter(waiterID, from: key, in: &state))
                    }
                    flight.parked[waiterID] = continuation
                    state.flights[key] = flight
                    return .parked
                }
                switch parking {
                case .parked:
                    break
                case .finishedAlready:
                    // The result is the task's; `.cancelled` without a cancelled task reads it.
                    continuation.resume(returning: .cancelled)
                case .wake(let wakeup):
                    continuation.resume(returning: wakeup)
                }
            }
        } onCancel: {
            self.leave(key, waiterID)
        }

        switch wakeup {
        case .finished(let result):
            return try result.get()
        case .cancelledLast:
            _ = try? await task.value
            throw CancellationError()
        case .cancelled:
            if Task.isCancelled { throw CancellationError() }
            return try await task.value
        }
    }

    private enum Parking {
        case parked
        case finishedAlready
        case wake(Wakeup)
    }

    private func finish(_ key: Key, with result: Result<Value, any Error>) {
        let parked = state.withLock { state in
            state.flights.removeValue(forKey: key)?.parked ?? [:]
        }
        for continuation in parked.values {
            continuation.resume(returning: .finished(result))
        }
    }

    private func leave(_ key: Key, _ waiterID: Int) {
        let resume = state.withLock { state -> (CheckedContinuation<Wakeup, Never>, Wakeup)? in
            guard var flight = state.flights[key], flight.waiting.contains(waiterID) else { return nil }
            guard let continuation = flight.parked[waiterID] else {
                flight.cancelledBeforeParking.insert(waiterID)
                state.flights[key] = flight
                return nil
            }
            let wakeup = removeWaiter(waiterID, from: key, in: &state)
            return (continuation, wakeup)
        }
        if let (continuation, wakeup) = resume {
            continuation.resume(returning: wakeup)
        }
    }

    /// Drops a waiter; cancels the flight when it was the last one.
    private func removeWaiter(_ waiterID: Int, from key: Key, in state: inout State) -> Wakeup {
        guard var flight = state.flights[key] else { return .cancelled }
        flight.waiting.remove(waiterID)
        flight.parked.removeValue(forKey: waiterID)
        state.flights[key] = flight
        if flight.waiting.isEmpty {
            flight.task.cancel()
            return .cancelledLast
        }
        return .cancelled
    }
}
