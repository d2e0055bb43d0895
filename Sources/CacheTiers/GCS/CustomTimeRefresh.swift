import AsyncHTTPClient
import Foundation
import Logging
import NIOCore
import Synchronization

/// The PATCHes of `customTime` a ``GCSSource`` has in flight, and whether it may send any.
///
/// GCS has no last-access condition, so the bucket's lifecycle rule deletes on
/// `daysSinceCustomTime`, and a hit moves the object's `customTime` forward: at most once
/// a day per object (the restore's metadata GET says when it last moved), in the
/// background, never delaying the restore. It owns those background tasks: one per object
/// at a time, so a burst of hits on one key sends one PATCH, and ``shutdown(grace:)``
/// waits for them a bounded time, then cancels them. A 403 (read-only credentials) stops
/// every later try for the source's lifetime.
final class CustomTimeRefresh: Sendable {
    /// How old `customTime` gets before a hit moves it forward: a day.
    static let interval: TimeInterval = 24 * 60 * 60
    /// How long ``GCSSource/shutdown()`` waits for PATCHes in flight before cancelling them.
    static let shutdownGrace: Duration = .seconds(5)

    /// How one PATCH ended.
    enum Outcome: Sendable {
        case moved
        /// Another VM moved it first (`ifMetagenerationMatch` failed), or the object is gone.
        case superseded
        /// The credentials may read but not update objects.
        case denied
        case failed(String)
    }

    private struct State {
        /// The PATCH in flight per object name.
        var pending: [String: Task<Void, Never>] = [:]
        var denied = false
        var closed = false
    }

    private let state = Mutex(State())

    /// Whether a hit on an object last refreshed at `customTime` (nil: never) moves it.
    /// A `customTime` ahead of this clock (another VM's, running fast) is not due.
    static func isDue(_ customTime: Date?, now: Date) -> Bool {
        guard let customTime else { return true }
        return now.timeIntervalSince(customTime) >= interval
    }

    /// Runs `patch` for `object` in the background, unless one is in flight for it, the
    /// credentials were refused, or the source is shutting down.
    func start(_ object: String, logger: Logger, patch: @escaping @Sendable () async -> Outcome) {
        state.withLock { state in
            guard !state.denied, !state.closed, state.pending[object] == nil else { return }
            state.pending[object] = Task {
                let outcome = await patch()
                let firstDenial = self.state.withLock { state in
                    state.pending[object] = nil
                    guard case .denied = outcome, !state.denied else { return false }
                    state.denied = true
                    return true
                }
                switch outcome {
                case .moved:
                    logger.debug("moved the object's customTime forward", metadata: ["object": "\(object)"])
                case .superseded:
                    logger.debug("the object's customTime was moved by another client", metadata: ["object": "\(object)"])
                case .denied where firstDenial:
                    logger.notice(
                        "GCS denied updating customTime (403): the credentials are read-only, so hits no longer keep objects from a daysSinceCustomTime lifecycle rule; grant storage.objects.update (roles/storage.objectUser), or set refreshCustomTime to false and drop that rule",
                        metadata: ["object": "\(object)"]
                    )
                case .denied:
                    break
                case .failed(let reason):
                    logger.debug("could not move the object's customTime forward", metadata: ["object": "\(object)", "error": "\(reason)"])
                }
            }
        }
    }

    /// Waits for the PATCHes in flight now (for tests that count requests).
    func settled() async {
        for task in state.withLock({ Array($0.pending.values) }) { await task.value }
    }

    /// Stops new PATCHes, waits up to `grace` for those in flight, then cancels the rest.
    func shutdown(grace: Duration) async {
        let tasks = state.withLock { state in
            state.closed = true
            return Array(state.pending.values)
        }
        guard !tasks.isEmpty else { return }
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                for task in tasks { await task.value }
            }
            group.addTask { try? await Task.sleep(for: grace) }
            await group.next()
            group.cancelAll()
            for task in tasks { task.cancel() }
        }
    }
}

extension GCSSource {
    /// A hit: moves the object's `customTime` forward in the background when it is unset
    /// or more than a day old and `refreshCustomTime` is on. The restore never waits for it.
    public func didRestore(_ found: FoundArchive<StoredObject>, logger: Logger) {
        guard configuration.refreshCustomTime else { return }
        let object = found.archive.object
        let now = Date()
        guard CustomTimeRefresh.isDue(object.customTime, now: now) else { return }
        customTimeRefresh.start(object.name, logger: logger) { [self] in
            await patchCustomTime(of: object, to: now, logger: logger)
        }
    }

    /// `PATCH {"customTime": now}`, pinned to the metageneration the restore read, so of
    /// two VMs hitting the object at once only one changes it (the other gets 412).
    func patchCustomTime(of object: GCSObject, to now: Date, logger: Logger) async -> CustomTimeRefresh.Outcome {
        var url = objectURL(object.name)
        if let metageneration = object.metageneration { url += "?ifMetagenerationMatch=\(metageneration)" }
        let what = "moving the customTime of \(bucketDescription)/\(object.name) forward"
        let body = ByteBuffer(string: #"{"customTime":"\#(now.rfc3339)"}"#)
        do {
            let response = try await send(what: what, requests: RequestCounter(), logger: logger) {
                var request = HTTPClientRequest(url: url)
                request.method = .PATCH
                request.headers.add(name: "Content-Type", value: "application/json; charset=UTF-8")
                request.body = .bytes(body)
                return request
            }
            switch response.status.code {
            case 200:
                _ = try? await response.body.collect(upTo: 1 << 20)
                return .moved
            case 404, 412:
                _ = try? await response.body.collect(upTo: 1 << 20)
                return .superseded
            case 403:
                _ = try? await response.body.collect(upTo: 1 << 20)
                return .denied
            default:
                return .failed("\(await failure(response, what: what))")
            }
        } catch {
            return .failed("\(error)")
        }
    }
}
