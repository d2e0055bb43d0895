internal import CCacheTiersShims
import Foundation
import Logging
import SystemPackage

/// Owns a restore's destination: hands out staging directories beside it (each owned
/// by a ``StagingDirectory``) and promotes one by atomic rename, so the destination is
/// always the old tree or the new one.
///
/// Staging directories are siblings of the destination (`.NAME.staging-PID@HOST-XXXX`),
/// on the same filesystem, so promotion is a rename and never a copy. Those left by a
/// process that died are removed by ``sweepLeftovers(logger:)``.
package struct DestinationStaging: Sendable {
    /// The absolute path of the directory that is restored.
    package let destination: FilePath
    let parent: FilePath
    let name: String

    /// - Parameter protecting: folders the destination must neither be nor contain, on
    ///   top of the root, the home folder and the current directory (``ProtectedPath``).
    /// - Throws: a fatal ``CacheTierError`` when the destination is or contains a
    ///   protected folder, or its parent is missing or not writable: no tier can succeed then.
    package init(destination: FilePath, protecting: [ProtectedPath] = []) throws(CacheTierError) {
        let absolute = FileSystem.absolute(destination)
        try ProtectedPath.check(absolute, against: ProtectedPath.always + protecting)
        guard let last = absolute.lastComponent, absolute.components.count > 0 else {
            throw CacheTierError(.fatal, "the destination '\(destination)' is not a directory path a tree can be restored to")
        }
        self.destination = absolute
        self.parent = absolute.removingLastComponent()
        self.name = last.string
        guard FileSystem.isWritableDirectory(parent) else {
            let reason = FileSystem.kind(of: parent) == nil ? "does not exist" : "is not a writable directory"
            throw CacheTierError(
                .fatal,
                "cannot restore into \(absolute): its parent \(parent) \(reason); create it or choose another destination"
            )
        }
        switch FileSystem.kind(of: absolute) {
        case nil, .directory:
            break
        case .symlink:
            // Not followed: promotion renames over the link itself, which would replace the
            // link with the tree and leave its target holding the old one.
            let target = (try? FileManager.default.destinationOfSymbolicLink(atPath: absolute.string)).map { " to \($0)" } ?? ""
            throw CacheTierError(
                .fatal,
                "cannot restore into \(absolute): it is a symbolic link\(target), which CacheTiers does not follow; "
                    + "give the real directory, or remove the link"
            )
        case .regular:
            throw CacheTierError(.fatal, "cannot restore into \(absolute): a regular file is in the way; move it aside")
        case .other:
            throw CacheTierError(
                .fatal, "cannot restore into \(absolute): a special file (FIFO, socket or device) is in the way; move it aside"
            )
        }
    }

    /// Creates an empty staging directory beside the destination; ``StagingDirectory``
    /// owns it from then on.
    func makeStagingDirectory(purpose: String = "staging") throws(CacheTierError) -> FilePath {
        let path = parent.appending(ScratchName.make(base: name, purpose: purpose))
        do {
            try FileSystem.makeDirectory(path, mode: 0o755)
        } catch {
            throw CacheTierError(.fatal, "cannot create a staging directory \(path): \(error)", underlying: error)
        }
        return path
    }

    /// How long a promotion took, on the clock it was given.
    struct Promotion: Sendable {
        /// The rename (or two) that put the tree in place.
        var rename: Duration
        /// Removing the tree it replaced; `nil` when there was none.
        var removal: Duration?
    }

    /// Replaces the destination with `staging` atomically; the previous tree is removed afterwards.
    /// - Parameter now: the clock that times the rename and the removal.
    @discardableResult
    func promote(_ staging: FilePath, now: @Sendable () -> Duration, logger: Logger) async throws(CacheTierError) -> Promotion {
        let started = now()
        /// The old tree at `previous` goes now; the promotion is timed in two parts.
        func removing(_ previous: FilePath) async -> Promotion {
            let placed = now()
            await discard(previous, logger: logger)
            return Promotion(rename: placed - started, removal: now() - placed)
        }
        if FileSystem.kind(of: destination) == nil {
            do {
                try FileSystem.rename(staging, to: destination)
                return Promotion(rename: now() - started, removal: nil)
            } catch .directoryNotEmpty, .fileExists {
                // Another process created it meanwhile: exchange below.
            } catch {
                throw CacheTierError(.fatal, "cannot move the restored tree into \(destination): \(error)", underlying: error)
            }
        }
        if cachetiers_exchange_paths(staging.string, destination.string) == 0 {
            // `staging` now names the previous tree.
            return await removing(staging)
        }
        // No RENAME_EXCHANGE here: move the old tree aside, then the new one in. In between,
        // the destination is briefly absent, never mixed.
        let previous = parent.appending(ScratchName.make(base: name, purpose: "previous"))
        do {
            try FileSystem.rename(destination, to: previous)
        } catch {
            throw CacheTierError(.fatal, "cannot move the previous tree at \(destination) aside: \(error)", underlying: error)
        }
        do {
            try FileSystem.rename(staging, to: destination)
        } catch {
            try? FileSystem.rename(previous, to: destination)
            throw CacheTierError(.fatal, "cannot move the restored tree into \(destination): \(error)", underlying: error)
        }
        return await removing(previous)
    }

    /// Removes the staging, write-back and previous-tree folders (whatever their purpose)
    /// beside the destination that a process which no longer exists left behind (killed
    /// mid-restore): each can hold a whole tree. Those of running processes, and of other
    /// hosts, stay.
    /// - Returns: the paths removed.
    @discardableResult
    package func sweepLeftovers(logger: Logger) async -> [FilePath] {
        await ScratchName.sweep(in: parent, base: name, logger: logger)
    }

    /// Removes a staging directory, on a thread of its own; failures are logged, not thrown.
    func discard(_ staging: FilePath, logger: Logger) async {
        do {
            try await FileSystem.removeTreeOffThePool(staging)
        } catch {
            logger.warning(
                "could not remove a staging directory; remove it by hand",
                metadata: ["path": "\(staging)", "error": "\(error)"]
            )
        }
    }
}
