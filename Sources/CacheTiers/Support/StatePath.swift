import Foundation
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Where CacheTiers keeps a file or folder of its own when the config names none: the
/// system place when this user can write there, else the user's state folder.
package enum StatePath {
    /// `system/name` when this user can write it, or create it (`system` writable, or
    /// missing with a writable parent); else `$XDG_STATE_HOME/cachetiers/name` (an
    /// absolute `XDG_STATE_HOME` only); else `~/.local/state/cachetiers/name`.
    package static func resolve(
        system: FilePath, name: String, environment: [String: String] = ProcessInfo.processInfo.environment
    ) -> FilePath {
        let candidate = system.appending(name)
        if access(candidate.string, W_OK) == 0 || access(system.string, W_OK) == 0
            || (access(system.string, F_OK) != 0 && access(system.removingLastComponent().string, W_OK) == 0)
        {
            return candidate
        }
        if let state = environment["XDG_STATE_HOME"], state.hasPrefix("/") {
            return FilePath(state).appending("cachetiers").appending(name)
        }
        let home = environment["HOME"].flatMap { $0.hasPrefix("/") ? $0 : nil } ?? NSHomeDirectory()
        return FilePath(home).appending(".local/state/cachetiers").appending(name)
    }
}
