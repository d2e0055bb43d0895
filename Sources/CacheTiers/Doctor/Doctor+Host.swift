import Foundation
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The destination's filesystem: its folder exists, its type (`/proc/self/mountinfo`)
/// and atime mode (`statvfs(3)`'s flags: strictatime is neither noatime nor relatime),
/// tmpfs, and its free space and inodes against the tree of the sampled
/// archive, which must fit beside the old tree: that stays until the new one is in place.
struct DestinationCheck {
    let destination: FilePath
    let sample: ArchiveSample?

    /// What Benchmarks/atime_benchmark.py measured (Documentation/Benchmarks.md, "Mount
    /// options"), quoted in the warning.
    static let strictatimeEffect =
        "measured on the 40,000-file corpus against noatime: a restore and sync 0.95x to 1.30x, a read of the tree 1.34x to 1.50x the time"

    /// `ST_NOATIME` and `ST_RELATIME` of `statvfs(3)`'s `f_flag` (Linux's ABI; glibc
    /// declares them only for GNU sources, which Swift does not import).
    static let noatime: UInt = 1024
    static let relatime: UInt = 4096

    func check() -> DoctorCheck {
        let id = "destination"
        let parent = destination.removingLastComponent()
        guard FileSystem.kind(of: parent, followingLinks: true) == .directory else {
            return .fail(
                id, "the destination's folder \(parent) does not exist, and a restore needs it",
                fix: "create \(parent) in the VM image (mkdir -p), or correct destination"
            )
        }
        guard FileSystem.isWritableDirectory(parent) else {
            return .fail(
                id, "\(parent) does not let this user create the staging folder a restore builds the tree in",
                fix: "let this user write \(parent) (chown, chmod), or restore elsewhere"
            )
        }
        let examined = FileSystem.kind(of: destination, followingLinks: true) == .directory ? destination : parent
        var space = statvfs()
        guard statvfs(examined.string, &space) == 0 else {
            return .fail(id, "cannot read the filesystem of \(examined): \(Errno(rawValue: errno))", fix: "check that \(examined) is mounted and readable")
        }
        let mount = MountTable.current()?.mount(containing: examined)
        let type = mount?.type ?? "an unknown filesystem"
        // The kernel's own flags decide the atime mode; mountinfo names the filesystem.
        let atime = space.f_flag & Self.noatime != 0 ? "noatime" : space.f_flag & Self.relatime != 0 ? "relatime" : "strictatime"
        var findings: [String] = []
        var fixes: [String] = []
        var status = DoctorCheck.Status.ok
        func raise(_ level: DoctorCheck.Status) {
            if level == .fail || status == .ok { status = level }
        }

        let described = mount.map { "\(destination) is on \(type) (\($0.source) at \($0.mountPoint), \($0.options.joined(separator: ",")))" }
            ?? "\(destination) is on \(type)"
        findings.append(described)

        let tree = sample.map { $0.manifest.uncompressedSize }
        if type == "tmpfs" {
            raise(.warn)
            findings.append(
                "tmpfs keeps the tree in RAM: "
                    + (tree.map { "\(DoctorFormat.bytes($0)) for \(sample!.description), twice that while a restore replaces it" }
                        ?? "as much as the tree's files hold, twice that while a restore replaces it")
            )
            fixes.append("restore onto a disk filesystem (ext4, xfs) unless the VM has that RAM to spare")
        } else if atime == "strictatime" {
            raise(.warn)
            findings.append("it is mounted with strictatime: every read of the tree writes access times (\(Self.strictatimeEffect))")
            fixes.append("mount it with noatime (in /etc/fstab: defaults,noatime; or mount -o remount,noatime \(mount?.mountPoint ?? examined.string))")
        }

        let blockSize = Int64(space.f_frsize > 0 ? space.f_frsize : space.f_bsize)
        let free = Int64(space.f_bavail) * blockSize
        if let sample {
            let needed = sample.manifest.uncompressedSize
            // Every file takes whole blocks: at most one more each.
            let bound = needed + Int64(sample.manifest.entryCount) * blockSize
            let sizes = "\(DoctorFormat.bytes(free)) free for \(sample.description): \(DoctorFormat.bytes(needed)) of files in \(sample.manifest.entryCount) entries"
            if free < needed {
                raise(.fail)
                findings.append("\(sizes), which do not fit (the old tree stays until the new one is in place)")
                fixes.append("free or add \(DoctorFormat.bytes(bound - free)) on \(mount?.mountPoint ?? examined.string)")
            } else if free < bound {
                raise(.warn)
                findings.append("\(sizes), up to \(DoctorFormat.bytes(bound)) on disk with block rounding: it may not fit beside the old tree")
                fixes.append("free or add \(DoctorFormat.bytes(bound - free)) on \(mount?.mountPoint ?? examined.string)")
            } else {
                findings.append(sizes)
            }
            if space.f_files > 0, UInt64(space.f_ffree) < UInt64(sample.manifest.entryCount) {
                raise(.fail)
                findings.append("only \(space.f_ffree) free inodes for \(sample.manifest.entryCount) entries")
                fixes.append("make the filesystem with more inodes (mkfs.ext4 -i 4096) or free some")
            }
        } else {
            findings.append("\(DoctorFormat.bytes(free)) free; no tier holds an archive yet to compare with")
        }
        let finding = findings.joined(separator: "; ")
        return status == .ok ? .ok(id, finding) : DoctorCheck(id, status, finding, fix: fixes.joined(separator: "; "))
    }
}

/// The memory an unpack needs (64 MiB plus the zstd window its archive declares, as
/// Documentation/Archives.md bounds it) against what the kernel says is available.
struct MemoryCheck {
    let sample: ArchiveSample?
    /// What an unpack holds besides the window.
    static let unpackBaseline: Int64 = 64 << 20

    func check() -> DoctorCheck {
        let id = "memory"
        guard let available = MemoryInfo.available() else {
            return .warn(id, "cannot read MemAvailable from /proc/meminfo", fix: "run doctor on Linux with /proc mounted")
        }
        let window: Int64
        let source: String
        switch sample?.window {
        case .success(let header)?:
            window = header.windowSize
            source = "the \(DoctorFormat.bytes(window)) zstd window of \(sample!.description)"
        case .failure(let problem)?:
            return .warn(
                id, "cannot read the zstd window of \(sample!.description): \(problem)",
                fix: "repack it with cachetiers pack, whose archives start with a standard zstd frame"
            )
        case nil:
            window = ZstdFrameHeader.decoderWindowLimit
            source = sample == nil
                ? "the largest window the decoder accepts (\(DoctorFormat.bytes(window))), as no tier holds an archive yet"
                : "the largest window the decoder accepts (\(DoctorFormat.bytes(window))), as the start of \(sample!.description) could not be read"
        }
        if window > ZstdFrameHeader.decoderWindowLimit {
            return .fail(
                id, "\(source) is over the \(DoctorFormat.bytes(ZstdFrameHeader.decoderWindowLimit)) the decoder accepts, so restoring it fails",
                fix: "republish it packed by cachetiers pack (level 1 uses a 512 KiB to 2 MiB window), or with --long 27 at most"
            )
        }
        let needed = Self.unpackBaseline + window
        let finding = "an unpack needs up to \(DoctorFormat.bytes(needed)) (64 MiB plus \(source)); \(DoctorFormat.bytes(available)) is available"
        if available < needed {
            return .fail(id, finding, fix: "give the VM more memory, or stop what holds it during the restore")
        }
        if available < 2 * needed {
            return .warn(id, finding + ", little to spare", fix: "give the VM more memory: the install tier and the application need room too")
        }
        return .ok(id, finding)
    }
}

/// `/proc/meminfo`'s `MemAvailable`.
enum MemoryInfo {
    static func available(from text: String? = try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8)) -> Int64? {
        guard let text else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("MemAvailable:") {
            let fields = line.split(separator: " ")
            guard fields.count >= 2, let kilobytes = Int64(fields[1]) else { return nil }
            return kilobytes * 1024
        }
        return nil
    }
}

/// `/proc/self/mountinfo`: which mount holds a path, its type and its options.
struct MountTable: Sendable {
    struct Mount: Sendable, Hashable {
        var mountPoint: String
        var type: String
        var source: String
        /// The per-mount options (`rw`, `relatime`, `noatime`…): strictatime is neither atime option.
        var options: [String]
    }

    var mounts: [Mount]

    static func current() -> MountTable? {
        (try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)).map(MountTable.init(mountinfo:))
    }

    /// Parses mountinfo lines: `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL…] - TYPE SOURCE SUPEROPTIONS`.
    init(mountinfo: String) {
        mounts = mountinfo.split(separator: "\n").compactMap { line -> Mount? in
            let fields = line.split(separator: " ").map(String.init)
            guard fields.count >= 7, let separator = fields[6...].firstIndex(of: "-"), separator + 2 < fields.count else { return nil }
            return Mount(
                mountPoint: Self.unescape(fields[4]), type: fields[separator + 1], source: Self.unescape(fields[separator + 2]),
                options: fields[5].split(separator: ",").map(String.init)
            )
        }
    }

    /// The mount holding `path` (its real path): the last-mounted one with the longest
    /// mount point that contains it.
    func mount(containing path: FilePath) -> Mount? {
        let real = path.string.withCString { pointer -> String in
            guard let resolved = realpath(pointer, nil) else { return path.string }
            defer { free(resolved) }
            return String(cString: resolved)
        }
        var best: Mount?
        for mount in mounts where real == mount.mountPoint || mount.mountPoint == "/" || real.hasPrefix(mount.mountPoint + "/") {
            if best == nil || mount.mountPoint.count >= best!.mountPoint.count { best = mount }
        }
        return best
    }

    /// mountinfo writes space, tab, newline and backslash as `\040`, `\011`, `\012`, `\134`.
    static func unescape(_ field: String) -> String {
        guard field.contains("\\") else { return field }
        var bytes: [UInt8] = []
        var utf8 = Array(field.utf8)[...]
        while let byte = utf8.popFirst() {
            if byte == UInt8(ascii: "\\"), utf8.count >= 3, let value = UInt8(String(decoding: utf8.prefix(3), as: UTF8.self), radix: 8) {
                bytes.append(value)
                utf8 = utf8.dropFirst(3)
            } else {
                bytes.append(byte)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

enum DoctorFormat {
    /// Binary units, as memory and `df -h` speak: `512 KiB`, `1.4 GiB`.
    static func bytes(_ count: Int64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
        var value = Double(count)
        var unit = 0
        while abs(value) >= 1024, unit < units.count - 1 {
            value /= 1024
            unit += 1
        }
        if unit == 0 { return "\(count) B" }
        return value >= 100 || value == value.rounded() ? "\(Int(value.rounded())) \(units[unit])" : String(format: "%.1f %@", value, units[unit])
    }
}
