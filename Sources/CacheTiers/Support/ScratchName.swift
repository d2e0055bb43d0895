import Logging
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Names of the hidden scratch folders and files CacheTiers makes beside a path
/// (`.node_modules.staging-4711@vm-12-k3j5h`, `.KEY.tar.zst.partial-4711@vm-12-x8f2q` in
/// an ``ArchiveFolder``), and the sweep that removes those of a process that died without
/// removing them (SIGKILL, OOM kill, power loss).
///
/// A name records the process and host that made it, so a sweep touches only leftovers
/// of processes on this host that no longer exist: never those of a restore still
/// running in another process, nor those of another machine sharing the folder.
enum ScratchName {
    /// `.BASE.PURPOSE-PID@HOST-RANDOM`.
    static func make(base: String, purpose: String) -> String {
        ".\(base).\(purpose)-\(getpid())@\(hostName)-\(FileSystem.uniqueSuffix())"
    }

    /// Removes the scratch folders and files for `base` in `parent`, whatever their
    /// purpose, whose process is gone.
    /// - Returns: the paths removed. Failures are logged, never thrown: sweeping is
    ///   housekeeping and must not stop a restore.
    @discardableResult
    static func sweep(in parent: FilePath, base: String, logger: Logger) async -> [FilePath] {
        guard let directory = opendir(parent.string) else { return [] }
        var leftovers: [FilePath] = []
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { bytes in
                String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
            }
            let prefix = ".\(base)."
            if name.hasPrefix(prefix), let owner = owner(of: name.dropFirst(prefix.count)), !owner.isAlive {
                leftovers.append(parent.appending(name))
            }
        }
        closedir(directory)
        var removed: [FilePath] = []
        for path in leftovers {
            do {
                try await FileSystem.removeTreeOffThePool(path)
                removed.append(path)
                logger.notice("removed the leftover of a process that is gone", metadata: ["path": "\(path)"])
            } catch {
                logger.warning(
                    "could not remove the leftover of a process that is gone; remove it by hand",
                    metadata: ["path": "\(path)", "error": "\(error)"]
                )
            }
        }
        return removed
    }

    struct Owner: Equatable {
        var processID: pid_t
        var host: String

        /// Whether the process may still be using its scratch: it exists, or it ran on
        /// another host, where this one cannot tell.
        var isAlive: Bool {
            guard host == ScratchName.hostName else { return true }
            if processID == getpid() { return true }
            return kill(processID, 0) == 0 || errno != ESRCH
        }
    }

    /// The owner recorded in the part of a name after `.BASE.` (`PURPOSE-PID@HOST-RANDOM`),
    /// or nil for a name in another format (not CacheTiers', or an older version's: left
    /// alone).
    static func owner(of rest: Substring) -> Owner? {
        split(rest)?.owner
    }

    /// A whole name, `.BASE.PURPOSE-PID@HOST-RANDOM`, as `BASE.PURPOSE` and its owner,
    /// or nil for a name in another format. (`BASE` and `PURPOSE` may both hold dots;
    /// whoever knows its purposes tells them apart.)
    static func parse(_ name: String) -> (stem: Substring, owner: Owner)? {
        guard name.hasPrefix(".") else { return nil }
        return split(name.dropFirst())
    }

    private static func split(_ rest: Substring) -> (stem: Substring, owner: Owner)? {
        guard let at = rest.lastIndex(of: "@"), let pidStart = rest[..<at].lastIndex(of: "-"),
            pidStart > rest.startIndex,  // a purpose comes first
            let processID = pid_t(rest[rest.index(after: pidStart)..<at]), processID > 0,
            let randomStart = rest.lastIndex(of: "-"), randomStart > at
        else { return nil }
        return (rest[..<pidStart], Owner(processID: processID, host: String(rest[rest.index(after: at)..<randomStart])))
    }

    static let hostName: String = {
        // A host name never holds '/', but a file name must not either.
        systemHostName.map { String($0.map { $0 == "/" ? "_" : $0 }) } ?? "localhost"
    }()
}
