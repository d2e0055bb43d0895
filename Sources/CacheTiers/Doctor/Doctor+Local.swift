import Foundation
import Logging
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The checks of a directory tier: the folder exists (or its first publish can create
/// it), is readable, and where write-back reaches it, takes a file: a scratch file named
/// as a publish names its own, so the folder's recovery removes it if this process
/// dies before it does.
struct DirectoryProbe: ArchiveSampling {
    let tier: String
    let root: FilePath
    /// `tiers[N].path`, for the fixes.
    let field: String

    var tierName: String { tier }
    private var folder: ArchiveFolder { ArchiveFolder(root: root) }

    func close() async {}

    func check(writeBack: Bool) -> [DoctorCheck] {
        let id = "tier.\(tier)"
        switch FileSystem.kind(of: root, followingLinks: true) {
        case .directory:
            guard access(root.string, R_OK | X_OK) == 0 else {
                return [.fail(id, "\(root) is not readable: \(Errno(rawValue: errno))", fix: "let this user read \(root) (chmod, chown), or correct \(field)")]
            }
            let archives = folder.keys().count
            var checks: [DoctorCheck] = [.ok(id, "\(root) is readable (\(archives) archive\(archives == 1 ? "" : "s"))")]
            if writeBack { checks.append(probeWrite(id: "\(id).write")) }
            return checks
        case nil:
            let ancestor = Self.nearestExistingAncestor(of: root)
            if writeBack {
                guard FileSystem.isWritableDirectory(ancestor) else {
                    return [
                        .fail(
                            id, "\(root) does not exist, and \(ancestor) does not let this user create it, so write-back to it fails",
                            fix: "create \(root) for this user (mkdir -p), or correct \(field)"
                        )
                    ]
                }
                return [.ok(id, "\(root) does not exist yet; the first write-back creates it in \(ancestor)")]
            }
            return [
                .warn(
                    id, "\(root) does not exist, so every restore misses it",
                    fix: "create or mount \(root), or correct \(field)"
                )
            ]
        default:
            return [.fail(id, "\(root) is not a folder", fix: "correct \(field): it names the folder of KEY.tar.zst files")]
        }
    }

    private func probeWrite(id: String) -> DoctorCheck {
        let probe = folder.scratchPath(for: MasterProbe.probeKey, purpose: ArchiveFolder.archiveScratch)
        let descriptor = open(probe.string, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else {
            let error = Errno(rawValue: errno)
            return .fail(
                id, "\(root) does not take new files (\(error)), so write-back to it fails",
                fix: error == .readOnlyFileSystem
                    ? "mount \(root) read-write, or set the tier's writeBack to false"
                    : "let this user write \(root) (chmod, chown), or set the tier's writeBack to false"
            )
        }
        Glibc.close(descriptor)
        unlink(probe.string)
        return .ok(id, "\(root) is writable (created and removed a probe file)")
    }

    /// `path` itself when it exists, else the closest folder above it that does.
    static func nearestExistingAncestor(of path: FilePath) -> FilePath {
        var candidate = path
        while FileSystem.kind(of: candidate, followingLinks: true) == nil, !candidate.removingLastComponent().isEmpty, candidate != candidate.removingLastComponent() {
            candidate = candidate.removingLastComponent()
        }
        return candidate
    }

    // MARK: ArchiveSampling

    func manifest(of key: CacheKey, logger: Logger) async throws -> CacheManifest? {
        try folder.manifest(for: key)
    }

    func newestKey(logger: Logger) async throws -> CacheKey? {
        var newest: ArchiveListing?
        var after: CacheKey?
        for _ in 0..<Self.maximumPages {
            let page = folder.listArchives(after: after, limit: ArchivePage.maximumLimit)
            newest = Self.newest(page.archives + (newest.map { [$0] } ?? []))
            guard let next = page.next else { break }
            after = next
        }
        return newest?.key
    }

    func firstBytes(of key: CacheKey, count: Int, logger: Logger) async throws -> [UInt8] {
        let descriptor = open(folder.archivePath(for: key).string, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { return [] }
        defer { Glibc.close(descriptor) }
        var bytes = [UInt8](repeating: 0, count: count)
        let read = bytes.withUnsafeMutableBytes { pread(descriptor, $0.baseAddress, count, 0) }
        return read > 0 ? Array(bytes.prefix(read)) : []
    }
}

/// The check of an install tier: its command can be started (on `PATH`, or the path it
/// names), and its working directory exists with a parent that takes the shadow folder
/// the install runs in. The command itself is not run: an install is minutes of work.
struct InstallProbe {
    let configuration: FreshInstallSource.Configuration
    let environment: [String: String]
    /// `tiers[N]`, for the fixes.
    let field: String

    func check(id: String) -> DoctorCheck {
        let program = configuration.command[0]
        let workingDirectory = configuration.workingDirectory
        guard FileSystem.kind(of: workingDirectory, followingLinks: true) == .directory else {
            return .fail(
                id, "the install's working directory \(workingDirectory) does not exist",
                fix: "check the project out there, or correct \(field).workingDirectory"
            )
        }
        let parent = workingDirectory.removingLastComponent()
        guard FileSystem.isWritableDirectory(parent) else {
            return .fail(
                id, "the install runs in a shadow folder beside \(workingDirectory), but \(parent) does not let this user create one",
                fix: "let this user write \(parent), or move the project to a folder whose parent it can write"
            )
        }
        let resolved: FilePath?
        if program.contains("/") {
            // As the command runs: a relative path from the (shadow of the) working directory.
            let path = FilePath(program)
            resolved = path.isAbsolute ? path : workingDirectory.pushing(path)
        } else {
            let path = configuration.environment["PATH"] ?? (configuration.inheritsEnvironment ? environment["PATH"] : nil) ?? ""
            resolved = path.split(separator: ":").lazy.map { FilePath(String($0)).appending(program) }.first(where: Self.isExecutable)
        }
        guard let resolved, Self.isExecutable(resolved) else {
            return .fail(
                id,
                program.contains("/")
                    ? "the install command \(program) is not an executable file"
                    : "the install command `\(program)` is not on PATH",
                fix: "install \(program) in the VM image (and put it on PATH), or correct \(field).command"
            )
        }
        let commandLine = configuration.command.joined(separator: " ")
        return .ok(id, "`\(commandLine)` can run: \(resolved), in \(workingDirectory)")
    }

    static func isExecutable(_ path: FilePath) -> Bool {
        FileSystem.kind(of: path, followingLinks: true) == .regular && access(path.string, X_OK) == 0
    }
}

