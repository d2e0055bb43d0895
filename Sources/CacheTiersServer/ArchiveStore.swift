import CacheTiers
import Crypto
import Foundation
import Logging
import NIOCore
import NIOPosix
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
struct ArchiveStore: Sendable {
    let root: FilePath

    func archivePath(_ key: CacheKey) -> FilePath { root.appending("\(key.rawValue).tar.zst") }
    func manifestPath(_ key: CacheKey) -> FilePath { root.appending("\(key.rawValue).tar.zst.manifest.json") }

    /// Creates the folder and removes what a crash left behind: uploads, and archives a
    /// publish made visible without the manifest that belongs to them (killed between
    /// the two renames of ``commit(_:manifest:createOnly:)``). Left there, such a key
    /// would be 404 to every GET and 412 to every create-only PUT, for good. Nothing is
    /// in flight before the server starts, so nothing else can be caught half-way.
    /// - Returns: the names removed.
    @discardableResult
    func prepare(logger: Logger) throws -> [String] {
        try FileManager.default.createDirectory(atPath: root.string, withIntermediateDirectories: true)
        let names = Set(try FileManager.default.contentsOfDirectory(atPath: root.string))
        var doomed = names.filter { $0.hasPrefix(".") && $0.contains(".upload-") }
        for archive in names where !archive.hasPrefix(".") && archive.hasSuffix(".tar.zst") {
            let manifest = archive + ".manifest.json"
            if !belongTogether(archive: archive, manifest: manifest) {
                doomed.insert(archive)
                if names.contains(manifest) { doomed.insert(manifest) }
            }
        }
        for manifest in names where !manifest.hasPrefix(".") && manifest.hasSuffix(".tar.zst.manifest.json") {
            if !names.contains(String(manifest.dropLast(".manifest.json".count))) { doomed.insert(manifest) }
        }
        let removed = doomed.sorted().filter { unlink(root.appending($0).string) == 0 }
        for name in removed where !name.hasPrefix(".") {
            logger.notice("removed the remains of a publish cut short by a crash", metadata: ["file": "\(name)"])
        }
        return removed
    }

    /// Whether `manifest` exists, parses, and describes an archive of `archive`'s size.
    private func belongTogether(archive: String, manifest: String) -> Bool {
        var info = stat()
        guard let data = FileManager.default.contents(atPath: root.appending(manifest).string),
            let parsed = try? CacheManifest(jsonData: data),
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
        /// Archive and manifest disagree: a publish is replacing them right now.
        case changing
    }

    func manifest(for key: CacheKey) throws -> CacheManifest? {
        guard let data = FileManager.default.contents(atPath: manifestPath(key).string) else { return nil }
        return try CacheManifest(jsonData: data)
    }

    func open(_ key: CacheKey) throws -> Lookup {
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
        return manifest.archiveSize == archive.size ? .found(archive) : .changing
    }

    /// Reads `length` bytes at `offset` on NIO's blocking-I/O pool.
    static func read(_ archive: OpenArchive, offset: Int64, length: Int, allocator: ByteBufferAllocator) async throws -> ByteBuffer {
        try await NIOThreadPool.singleton.runIfActive {
            var buffer = allocator.buffer(capacity: length)
            let count = try buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: length) { pointer in
                var done = 0
                while done < length {
                    let result = pread(archive.descriptor, pointer.baseAddress! + done, length - done, off_t(offset) + off_t(done))
                    if result < 0 {
                        if errno == EINTR { continue }
                        throw CacheMasterError("cannot read the archive: \(String(cString: strerror(errno)))")
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
                    var done = 0
                    while done < bytes.count {
                        let result = write(descriptor, bytes.baseAddress! + done, bytes.count - done)
                        if result < 0 {
                            if errno == EINTR { continue }
                            throw CacheMasterError("cannot write the upload: \(String(cString: strerror(errno)))")
                        }
                        done += result
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
