import Foundation
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A folder a restore must never replace: replacing a destination deletes everything
/// in it, so a destination that is, or contains, something the user needs is refused
/// before anything runs.
///
/// Every restore and unpack always protects the filesystem root, the user's home and the
/// current directory; the chain adds each tier's ``CacheSource/protectedPaths`` (a
/// directory tier's folder, an install's working directory) and
/// ``TierChain/Configuration/protectedPaths`` (the CLI adds its config file's folder,
/// `unpack` its archive). Paths are compared after resolving symbolic links and `..`,
/// so `..`, `.` or a symlink to a protected folder is caught too.
public struct ProtectedPath: Sendable, Hashable, CustomStringConvertible {
    public var path: FilePath
    /// What it is, for the message: "the current directory", "the tier local's folder".
    public var role: String

    public init(_ path: FilePath, role: String) {
        self.path = path
        self.role = role
    }

    public var description: String { "\(role) (\(path))" }

    /// The root, the home folder and the current directory.
    static var always: [ProtectedPath] {
        var paths = [ProtectedPath("/", role: "the filesystem root")]
        if let home = ProcessInfo.processInfo.environment["HOME"], !home.isEmpty {
            paths.append(ProtectedPath(FilePath(home), role: "your home folder"))
        }
        paths.append(ProtectedPath(FilePath(FileManager.default.currentDirectoryPath), role: "the current directory"))
        return paths
    }

    /// Whether `path` is `folder` or inside it, once `..`, `.` and symbolic links are
    /// resolved as far as both exist.
    package static func isInside(_ path: FilePath, _ folder: FilePath) -> Bool {
        FileSystem.resolved(path).starts(with: FileSystem.resolved(folder))
    }

    /// Refuses `destination` when it is, or is an ancestor of, any of `paths`.
    /// - Throws: a fatal ``CacheTierError`` naming the destination and what it would delete.
    static func check(_ destination: FilePath, against paths: [ProtectedPath]) throws(CacheTierError) {
        let target = FileSystem.resolved(destination)
        for protected in paths {
            let resolved = FileSystem.resolved(protected.path)
            guard resolved.starts(with: target) else { continue }
            let relation = resolved == target ? "is" : "contains"
            throw CacheTierError(
                .fatal,
                "refusing to restore into \(destination): it \(relation) \(protected), which restoring would delete; "
                    + "restore into a folder of its own, such as \(destination.appending("node_modules"))"
            )
        }
    }
}

extension FileSystem {
    /// `path` made absolute with every symbolic link and `..` resolved, as far as it
    /// exists; the rest is appended lexically.
    static func resolved(_ path: FilePath) -> FilePath {
        var existing = absolute(path)
        var rest: [FilePath.Component] = []
        while true {
            if let real = realpath(existing.string, nil) {
                defer { free(real) }
                var result = FilePath(String(cString: real))
                for component in rest.reversed() { result.append(component) }
                return result.lexicallyNormalized()
            }
            guard let last = existing.lastComponent, !existing.removingLastComponent().isEmpty else {
                return absolute(path)
            }
            rest.append(last)
            existing = existing.removingLastComponent()
        }
    }
}
