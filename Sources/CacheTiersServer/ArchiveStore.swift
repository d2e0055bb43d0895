import CacheTiers
import Crypto
import Foundation
import Logging
import NIOCore
import NIOPosix
import Synchronization
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The cache master's folder: `KEY.tar.zst` beside `KEY.tar.zst.manifest.json`.
///
/// Reads open the archive once and stream from that descriptor, so a reader finishes
/// the archive it started even if a publish replaces it meanwhile. Uploads go to a
/// hidden temporary file in the same folder, are verified, then renamed (or, create-only,
/// linked) into place; a failed upload removes its temporary file.
///
/// A publish makes two files visible, the archive and then its manifest, and two
/// archives of one key can have the same size. So that a response never carries one
/// archive's ETag with another's bytes, opening an archive (descriptor plus manifest)
/// and committing one (both renames) hold the same lock: a reader sees the pair before
/// a publish or after it, never half of each. The lock covers this process only; one
/// cache master owns its root.
struct ArchiveStore: Sendable {
    let root: FilePath
    private let publication = PublicationLock()

    init(root: FilePath) {
        self.root = root
    }

    func archivePath(_ key: CacheKey) -> FilePath { root.appending("\(key.rawValue).tar.zst") }
    func manifestPath(_ key: CacheKey) -> FilePath { root.appending("\(key.rawValue).tar.zst.manifest.json") }

    /// The folder, inside the root, where ``prepare(gracePeriod:logger:)`` moves what it
    /// doubts; hidden, so no key can name it.
    static let quarantineName = ".quarantine"

    /// What ``prepare(gracePeriod:logger:)`` did, by file name.
    struct Preparation: Equatable {
        /// Temporary files of uploads cut short (only this server writes such names).
        var removed: [String] = []
        /// Archives without their manifest, lone manifests and pairs that disagree, moved
        /// into ``ArchiveStore/quarantineName``.
        var quarantined: [String] = []
    }

    /// Creates the folder and clears what a crash of this server left half-published, so
    /// a key is not 404 to every GET and 412 to every create-only PUT for good.
    ///
    /// Only names this server could have written are touched, and only once they are
    /// older than `gracePeriod` (a file still being written, by an operator seeding the
    /// folder by hand or by another publisher, is younger). Upload temporaries are
    /// deleted; an archive without its manifest, a lone manifest, or a pair whose sizes
    /// disagree is moved into ``quarantineName``, never deleted, since an operator may
    /// still want it. Anything else (files that are not `KEY.tar.zst` for a valid key,
    /// folders) is left alone. Every removal and move is logged.
    @discardableResult
    func prepare(gracePeriod: Duration = .seconds(600), logger: Logger) throws -> Preparation {
        try FileManager.default.createDirectory(atPath: root.string, withIntermediateDirectories: true)
        let names = Set(try FileManager.default.contentsOfDirectory(atPath: root.string))
        let now = Date()
        func isSettled(_ name: String) -> Bool {
            var info = stat()
            guard lstat(root.appending(name).string, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG else { return false }
            let modified = Date(timeIntervalSince1970: Double(info.st_mtim.tv_sec))
            return now.timeIntervalSince(modified) >= gracePeriod.inSeconds
        }
        var preparation = Preparation()

        for name in names.sorted() where Self.isUploadTemporary(name) && isSettled(name) {
            if unlink(root.appending(name).string) == 0 {
                preparation.removed.append(name)
                logger.notice("removed the temporary file of an upload cut short", metadata: ["file": "\(name)"])
            }
        }

        // A key's doubtful files are judged together: moved only once every one of them
        // has settled, so a pair is never split.
        var doubtful: [[String]] = []
        for archive in names where Self.key(ofArchive: archive) != nil && isRegular(archive) {
            let manifest = archive + ".manifest.json"
            if !belongTogether(archive: archive, manifest: manifest) {
                doubtful.append(names.contains(manifest) ? [archive, manifest] : [archive])
            }
        }
        for manifest in names where manifest.hasSuffix(".manifest.json") && isRegular(manifest) {
            let archive = String(manifest.dropLast(".manifest.json".count))
            if Self.key(ofArchive: archive) != nil, !names.contains(archive) { doubtful.append([manifest]) }
        }
        let settled = doubtful.filter { $0.allSatisfy(isSettled) }.flatMap { $0 }.sorted()
        if !settled.isEmpty {
            let quarantine = root.appending(Self.quarantineName)
            do {
                try FileManager.default.createDirectory(atPath: quarantine.string, withIntermediateDirectories: true)
            } catch {
                throw CacheMasterError(
                    "cannot create \(quarantine) to move half-published files into: \(error.localizedDescription); "
                        + "move whatever is at that path away"
                )
            }
            for name in settled {
                guard let target = Self.freeName(for: name, in: quarantine) else { continue }
                if rename(root.appending(name).string, target.string) == 0 {
                    preparation.quarantined.append(name)
                    logger.notice(
                        "moved aside a file without its pair, left by a publish cut short or copied in by hand",
                        metadata: ["file": "\(name)", "to": "\(target)"]
                    )
                }
            }
        }
        for name in Set(doubtful.flatMap { $0 }).subtracting(settled).sorted() {
            logger.notice("left a file without its pair: it is younger than the grace period", metadata: ["file": "\(name)"])
        }
        return preparation
    }

    private func isRegular(_ name: String) -> Bool {
        var info = stat()
        return lstat(root.appending(name).string, &info) == 0 && (info.st_mode & S_IFMT) == S_IFREG
    }

    /// `folder/name`, or `folder/name.1`, `.2` … when that is taken: an earlier
    /// quarantined file is never overwritten.
    static func freeName(for name: String, in folder: FilePath) -> FilePath? {
        for attempt in 0..<1000 {
            let candidate = folder.appending(attempt == 0 ? name : "\(name).\(attempt)")
            var info = stat()
            if lstat(candidate.string, &info) != 0, errno == ENOENT { return candidate }
        }
        return nil
    }

    /// The key of `KEY.tar.zst`, when `name` is that for a valid key.
    static func key(ofArchive name: String) -> CacheKey? {
        guard name.hasSuffix(".tar.zst") else { return nil }
        return try? CacheKey(String(name.dropLast(".tar.zst".count)))
    }

    /// Whether `name` is `.KEY.upload-N` or `.KEY.manifest.upload-N`, as ``beginUpload(_:)``
    /// and ``commit(_:manifest:createOnly:)`` name their temporary files.
    static func isUploadTemporary(_ name: String) -> Bool {
        guard name.hasPrefix("."), let marker = name.range(of: ".upload-", options: .backwards),
            marker.lowerBound > name.startIndex
        else { return false }
        let suffix = name[marker.upperBound...]
        guard !suffix.isEmpty, suffix.allSatisfy(\.isASCII), UInt64(suffix) != nil else { return false }
        var base = name[name.index(after: name.startIndex)..<marker.lowerBound]
        if base.hasSuffix(".manifest") { base = base.dropLast(".manifest".count) }
        return (try? CacheKey(String(base))) != nil
    }

    /// Whether `manifest` exists, parses, is for the archive's key, and describes an
    /// archive of `archive`'s size.
    private func belongTogether(archive: String, manifest: String) -> Bool {
        var info = stat()
        guard let data = FileManager.default.contents(atPath: root.appending(manifest).string),
            let parsed = try? CacheManifest(jsonData: data),
            parsed.key == Self.key(ofArchive: archive),
            lstat(root.appending(archive).string, &info) == 0
        else { return false }
        return parsed.archiveSize == Int64(info.st_size)
    }

    /// An archive opened for reading, with its manifest.
    final class OpenArchive: Sendable {
        let descriptor: Int32
        let size: Int64
        let manifest: CacheManifest

        init(descriptor: Int32, size: Int64, manifest: CacheManifest) {
            self.descriptor = descriptor
            self.size = size
            self.manifest = manifest
        }

        deinit {
            close(descriptor)
        }
    }

    enum Lookup {
        case found(OpenArchive)
        case missing
        /// Archive and manifest disagree, and the archive changed moments ago: another
        /// process is replacing them right now (this server's own publishes are atomic
        /// to its readers).
        case changing
        /// Archive and manifest disagree and have for a while: a retry will not help.
        case inconsistent(archiveSize: Int64, manifestSize: Int64)
    }

    func manifest(for key: CacheKey) throws -> CacheManifest? {
        guard let data = FileManager.default.contents(atPath: manifestPath(key).string) else { return nil }
        return try CacheManifest(jsonData: data)
    }

    func open(_ key: CacheKey) throws -> Lookup {
        try publication.withLock { try openLocked(key) }
    }

    private func openLocked(_ key: CacheKey) throws -> Lookup {
        let descriptor = Glibc.open(archivePath(key).string, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else {
            if errno == ENOENT { return .missing }
            throw CacheMasterError("cannot open \(archivePath(key)): \(String(cString: strerror(errno)))")
        }
        var info = stat()
        guard fstat(descriptor, &info) == 0 else {
            close(descriptor)
            throw CacheMasterError("cannot stat \(archivePath(key)): \(String(cString: strerror(errno)))")
        }
        guard let manifest = try manifest(for: key) else {
            close(descriptor)
            return .missing
        }
        let archive = OpenArchive(descriptor: descriptor, size: Int64(info.st_size), manifest: manifest)
        if manifest.archiveSize == archive.size { return .found(archive) }
        let changedSecondsAgo = Date().timeIntervalSince1970 - Double(info.st_ctim.tv_sec)
        return changedSecondsAgo < 60 ? .changing : .inconsistent(archiveSize: archive.size, manifestSize: manifest.archiveSize)
    }

    /// Reads `length` bytes at `offset` on NIO's blocking-I/O pool.
    static func read(_ archive: OpenArchive, offset: Int64, length: Int, allocator: ByteBufferAllocator) async throws -> ByteBuffer {
        try await NIOThreadPool.singleton.runIfActive {
            var buffer = allocator.buffer(capacity: length)
            let count = try buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: length) { pointer in
                var done = 0
                while done < length {
                    let result: Int
                    do {
                        result = try syscall("pread") {
                            pread(archive.descriptor, pointer.baseAddress! + done, length - done, off_t(offset) + off_t(done))
                        }
                    } catch let error as SystemCallError {
                        throw CacheMasterError("cannot read the archive: \(error.reason)")
                    }
                    if result == 0 { break }
                    done += result
                }
                return done
            }
            guard count == length else { throw CacheMasterError("the archive is shorter than its size said") }
            return buffer
        }
    }

    /// An upload in progress: a temporary file and a running hash.
    final class Upload {
        let path: FilePath
        let descriptor: Int32
        private(set) var hasher = SHA256()
        private(set) var size: Int64 = 0
        private var finished = false

        init(path: FilePath) throws {
            self.path = path
            descriptor = Glibc.open(path.string, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
            guard descriptor >= 0 else {
                throw CacheMasterError("cannot create \(path): \(String(cString: strerror(errno)))")
            }
        }

        func append(_ buffer: ByteBuffer) async throws {
            let descriptor = self.descriptor
            try await NIOThreadPool.singleton.runIfActive {
                try buffer.withUnsafeReadableBytes { bytes in
                    do {
                        try writeAll(descriptor, bytes)
                    } catch let error as SystemCallError {
                        throw CacheMasterError("cannot write the upload: \(error.reason)")
                    }
                }
            }
            buffer.withUnsafeReadableBytes { hasher.update(bufferPointer: $0) }
            size += Int64(buffer.readableBytes)
        }

        var sha256: String {
            hasher.finalize().map { String(format: "%02x", $0) }.joined()
        }

        /// Flushes to disk so a crash after the rename cannot leave a short archive.
        func sync() throws {
            guard fsync(descriptor) == 0 else {
                throw CacheMasterError("cannot flush the upload: \(String(cString: strerror(errno)))")
            }
        }

        func markFinished() { finished = true }

        deinit {
            close(descriptor)
            if !finished { unlink(path.string) }
        }
    }

    func beginUpload(_ key: CacheKey) throws -> Upload {
        try Upload(path: root.appending(".\(key.rawValue).upload-\(UInt64.random(in: 0 ... .max))"))
    }

    enum CommitOutcome {
        case created, replaced, exists
    }

    /// Makes a verified upload visible: the manifest is written beside a temporary name,
    /// then the archive is linked (create-only) or renamed (replace) into place, then the
    /// manifest renamed beside it.
    func commit(_ upload: Upload, manifest: CacheManifest, createOnly: Bool) throws -> CommitOutcome {
        let key = manifest.key
        let manifestTemporary = root.appending(".\(key.rawValue).manifest.upload-\(UInt64.random(in: 0 ... .max))")
        defer { unlink(manifestTemporary.string) }
        try manifest.jsonData().write(to: URL(fileURLWithPath: manifestTemporary.string))
        try upload.sync()
        return try publication.withLock { try makeVisible(upload, key: key, manifestTemporary: manifestTemporary, createOnly: createOnly) }
    }

    private func makeVisible(_ upload: Upload, key: CacheKey, manifestTemporary: FilePath, createOnly: Bool) throws -> CommitOutcome {
        let existed = FileManager.default.fileExists(atPath: archivePath(key).string)
        if createOnly {
            guard link(upload.path.string, archivePath(key).string) == 0 else {
                if errno == EEXIST { return .exists }
                throw CacheMasterError("cannot publish \(key): \(String(cString: strerror(errno)))")
            }
            unlink(upload.path.string)
        } else {
            guard rename(upload.path.string, archivePath(key).string) == 0 else {
                throw CacheMasterError("cannot publish \(key): \(String(cString: strerror(errno)))")
            }
        }
        upload.markFinished()
        guard rename(manifestTemporary.string, manifestPath(key).string) == 0 else {
            throw CacheMasterError("cannot publish the manifest of \(key): \(String(cString: strerror(errno)))")
        }
        return existed ? .replaced : .created
    }
}

/// Serialises opening an archive with committing one, so the two renames of a publish
/// look atomic to readers.
final class PublicationLock: Sendable {
    private let mutex = Mutex(())

    func withLock<T: Sendable>(_ body: () throws -> T) throws -> T {
        try mutex.withLock { _ in try body() }
    }
}
