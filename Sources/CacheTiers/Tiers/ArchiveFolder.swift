import Crypto
import Foundation
import Logging
import NIOCore
import NIOPosix
import Synchronization
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A folder of archives: `ROOT/KEY.tar.zst` beside `ROOT/KEY.tar.zst.manifest.json`, the
/// layout `DirectorySource` and the cache master share (and `cachetiers pack DIR
/// --output ROOT/KEY.tar.zst` writes, so a folder can be seeded by hand).
///
/// A publish writes the archive to a hidden scratch file in the folder while hashing it,
/// checks size and SHA-256 against the manifest, flushes it, then makes it visible in
/// two steps: the archive is linked (create-only) or renamed (replace) into place, then
/// the manifest renamed beside it. Scratch files are named by ``ScratchName``
/// (`.KEY.tar.zst.partial-PID@HOST-RANDOM`), so whoever finds one can tell whether the
/// process that made it is gone.
///
/// Two archives of one key can have the same size, so a reader must never see the
/// archive of one publish with the manifest of another. Opening an archive (descriptor
/// plus manifest) and making one visible (both steps) therefore hold the folder's lock:
/// `flock(2)` on the folder itself, shared for readers and exclusive for publishers, so
/// every process using the folder this way (a cache master, `DirectorySource` in a
/// restoring or publishing process) sees a publish whole or not at all. A mutex covers
/// the folder's users in this process, also where the filesystem cannot lock a
/// directory (NFS, for an exclusive lock).
///
/// What a killed publish leaves is recovered by ``prepare(gracePeriod:logger:)`` (at a
/// cache master's start) and, for one key, by every publish of that key.
package struct ArchiveFolder: Sendable {
    package let root: FilePath
    let lock: FolderLock

    package init(root: FilePath) {
        self.root = root
        self.lock = FolderLock(root: root)
    }

    /// The suffix of an archive's name, after its key.
    static let archiveSuffix = ".tar.zst"
    /// The suffix of a manifest's name, after its archive's name.
    static let manifestSuffix = ".manifest.json"

    package func archivePath(for key: CacheKey) -> FilePath {
        root.appending(key.rawValue + Self.archiveSuffix)
    }

    package func manifestPath(for key: CacheKey) -> FilePath {
        root.appending(key.rawValue + Self.archiveSuffix + Self.manifestSuffix)
    }

    /// Whether both the archive and the manifest of `key` are there.
    package func contains(_ key: CacheKey) -> Bool {
        FileSystem.kind(of: archivePath(for: key)) == .regular && FileSystem.kind(of: manifestPath(for: key)) == .regular
    }

    // MARK: Reading

    /// The manifest of `key`, or nil when there is none (or it cannot be read).
    /// - Throws: ``ArchiveFolderError`` (`.unusableManifest`) when it is not a cache
    ///   manifest, or one that makes no sense.
    package func manifest(for key: CacheKey) throws(ArchiveFolderError) -> CacheManifest? {
        let path = manifestPath(for: key)
        guard let data = FileManager.default.contents(atPath: path.string) else { return nil }
        let manifest: CacheManifest
        do {
            manifest = try CacheManifest(jsonData: data)
        } catch {
            throw ArchiveFolderError(
                .unusableManifest, "the manifest \(path) is not valid JSON of a cache manifest: \(error); delete it and publish again"
            )
        }
        if let problem = manifest.problem {
            throw ArchiveFolderError(.unusableManifest, "the manifest \(path) makes no sense: \(problem); delete it and publish again")
        }
        return manifest
    }

    /// What ``lookup(_:)`` found for a key.
    package enum Lookup: Sendable {
        /// The archive, open, and its manifest, which describes an archive of its size.
        case found(OpenArchive)
        /// No archive, or an archive without its manifest (a publish in progress or an
        /// interrupted one).
        case missing
        /// Archive and manifest disagree, and the archive changed moments ago: a writer
        /// that does not take the folder's lock (a copy by hand) is replacing them.
        case changing
        /// Archive and manifest disagree and have for a while: a retry will not help.
        case inconsistent(archiveSize: Int64, manifestSize: Int64)
    }

    /// Opens the archive of `key` with its manifest, under the folder's lock, so the two
    /// belong to one publish. A reader keeps the archive it opened even if a publish
    /// replaces it meanwhile.
    package func lookup(_ key: CacheKey) throws(ArchiveFolderError) -> Lookup {
        try lock.withLock(.shared) { () throws(ArchiveFolderError) -> Lookup in
            let path = archivePath(for: key)
            let descriptor: SystemPackage.FileDescriptor
            do {
                descriptor = try SystemPackage.FileDescriptor.open(path, .readOnly, options: .closeOnExec)
            } catch let error as Errno where error == .noSuchFileOrDirectory {
                return .missing
            } catch {
                throw ArchiveFolderError(.io, "cannot open \(path): \(error)")
            }
            var info = stat()
            guard fstat(descriptor.rawValue, &info) == 0 else {
                let failure = Errno(rawValue: errno)
                try? descriptor.close()
                throw ArchiveFolderError(.io, "cannot stat \(path): \(failure)")
            }
            let manifest: CacheManifest?
            do throws(ArchiveFolderError) {
                manifest = try self.manifest(for: key)
            } catch {
                try? descriptor.close()
                throw error
            }
            guard let manifest else {
                try? descriptor.close()
                return .missing
            }
            let archive = OpenArchive(descriptor: descriptor, size: Int64(info.st_size), manifest: manifest)
            if manifest.archiveSize == archive.size { return .found(archive) }
            let changedSecondsAgo = time(nil) - info.st_ctim.tv_sec
            return changedSecondsAgo < 60
                ? .changing : .inconsistent(archiveSize: archive.size, manifestSize: manifest.archiveSize)
        }
    }

    /// An archive opened for reading, with the manifest it was published with.
    package final class OpenArchive: Sendable {
        private let descriptor: SystemPackage.FileDescriptor
        package let size: Int64
        package let manifest: CacheManifest

        init(descriptor: SystemPackage.FileDescriptor, size: Int64, manifest: CacheManifest) {
            self.descriptor = descriptor
            self.size = size
            self.manifest = manifest
        }

        deinit {
            try? descriptor.close()
        }

        /// Reads `length` bytes at `offset`, on NIO's blocking-I/O pool.
        package func read(at offset: Int64, length: Int, allocator: ByteBufferAllocator) async throws -> ByteBuffer {
            try await NIOThreadPool.singleton.runIfActive {
                var buffer = allocator.buffer(capacity: length)
                let count = try buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: length) { pointer in
                    var done = 0
                    while done < length {
                        let read: Int
                        do {
                            read = try self.descriptor.read(
                                fromAbsoluteOffset: offset + Int64(done),
                                into: UnsafeMutableRawBufferPointer(rebasing: pointer[done..<length])
                            )
                        } catch {
                            throw ArchiveFolderError(.io, "cannot read the archive of \(self.manifest.key): \(error)")
                        }
                        if read == 0 { break }
                        done += read
                    }
                    return done
                }
                guard count == length else {
                    throw ArchiveFolderError(
                        .mismatch, "the archive of \(self.manifest.key) is shorter than its manifest says: it was cut in place; publish it again"
                    )
                }
                return buffer
            }
        }
    }

    // MARK: Publishing

    /// How a publish treats an archive already at the key's name.
    package enum PublishMode: Sendable, Equatable {
        /// Fails (``PublishOutcome/exists``) if the key has an archive, unless that
        /// archive has stood without its manifest for `orphanAge` (a publish killed
        /// between its two steps): then it is removed and the publish goes ahead.
        case createOnly(orphanAge: Duration)
        /// Replaces what is there. A reader already streaming the old archive finishes it.
        case replace
    }

    package enum PublishOutcome: Sendable, Equatable {
        case created, replaced, exists
    }

    /// Starts a publish of `key`: a scratch file in the folder that ``commit(_:manifest:mode:logger:)``
    /// makes visible. Scratch files a killed publish of this key left go first.
    package func beginPublication(of key: CacheKey, logger: Logger) throws(ArchiveFolderError) -> Publication {
        do {
            try FileManager.default.createDirectory(atPath: root.string, withIntermediateDirectories: true)
        } catch {
            throw ArchiveFolderError(.unusableFolder, "cannot create the folder \(root): \(error.localizedDescription)")
        }
        removeLeftovers(of: key, logger: logger)
        return try Publication(key: key, path: scratchPath(for: key, purpose: Self.archiveScratch))
    }

    /// Makes a publication visible once it matches `manifest` in size and SHA-256:
    /// flushed, the archive linked or renamed into place, then the manifest renamed
    /// beside it, both steps under the folder's exclusive lock.
    package func commit(
        _ publication: Publication,
        manifest: CacheManifest,
        mode: PublishMode,
        logger: Logger
    ) throws(ArchiveFolderError) -> PublishOutcome {
        let key = publication.key
        precondition(manifest.key == key, "a publication of \(key) committed with the manifest of \(manifest.key)")
        if let mismatch = publication.mismatch(with: manifest) {
            throw ArchiveFolderError(.mismatch, "the archive of \(key) \(mismatch); it was not published")
        }
        let manifestScratch = scratchPath(for: key, purpose: Self.manifestScratch)
        defer { unlink(manifestScratch.string) }
        let data: Data
        do {
            data = try manifest.jsonData()
        } catch {
            throw ArchiveFolderError(.io, "cannot encode the manifest of \(key): \(error)")
        }
        try Self.writeDurably(data, to: manifestScratch)
        try publication.sync()
        return try lock.withLock(.exclusive) { () throws(ArchiveFolderError) -> PublishOutcome in
            try makeVisible(publication, manifestScratch: manifestScratch, mode: mode, logger: logger)
        }
    }

    /// Publishes the archive `file` with `manifest`: copied into a scratch file of the
    /// folder on a thread of its own (`progress` hears each chunk), verified, committed.
    package func publish(
        file: FilePath,
        manifest: CacheManifest,
        mode: PublishMode,
        logger: Logger,
        progress: @escaping @Sendable (Int) -> Void = { _ in }
    ) async throws -> PublishOutcome {
        let publication = try beginPublication(of: manifest.key, logger: logger)
        // Hundreds of MB: copied on a thread of its own, not one of the cooperative pool's.
        try await DedicatedThread.run(name: "cachetiers-copy") { cancellation in
            guard let source = FileHandle(forReadingAtPath: file.string) else {
                throw ArchiveFolderError(.io, "cannot open \(file) to publish it")
            }
            defer { try? source.close() }
            while !cancellation.isCancelled {
                let chunk: Data?
                do {
                    chunk = try source.read(upToCount: 1 << 20)
                } catch {
                    throw ArchiveFolderError(.io, "cannot read \(file): \(error.localizedDescription)")
                }
                guard let chunk, !chunk.isEmpty else { return }
                try chunk.withUnsafeBytes { try publication.append($0) }
                progress(chunk.count)
            }
            throw CancellationError()
        }
        return try commit(publication, manifest: manifest, mode: mode, logger: logger)
    }

    private func makeVisible(
        _ publication: Publication,
        manifestScratch: FilePath,
        mode: PublishMode,
        logger: Logger
    ) throws(ArchiveFolderError) -> PublishOutcome {
        let key = publication.key
        let archive = archivePath(for: key)
        let outcome: PublishOutcome
        switch mode {
        case .createOnly(let orphanAge):
            var failure = link(publication.path.string, archive.string) == 0 ? 0 : errno
            if failure == EEXIST && removeOrphanedArchive(of: key, olderThan: orphanAge, logger: logger) {
                failure = link(publication.path.string, archive.string) == 0 ? 0 : errno
            }
            if failure == EEXIST { return .exists }
            guard failure == 0 else {
                throw ArchiveFolderError(.io, "cannot publish \(key) into \(root): \(Errno(rawValue: failure))")
            }
            outcome = .created
        case .replace:
            let existed = FileSystem.kind(of: archive) != nil
            do {
                try FileSystem.rename(publication.path, to: archive)
            } catch {
                throw ArchiveFolderError(.io, "cannot publish \(key) into \(root): \(error)")
            }
            outcome = existed ? .replaced : .created
        }
        publication.markVisible()
        do {
            try FileSystem.rename(manifestScratch, to: manifestPath(for: key))
        } catch {
            // An archive left without its manifest would be a miss and block the key.
            unlink(archive.string)
            throw ArchiveFolderError(.io, "cannot publish the manifest of \(key) into \(root): \(error)")
        }
        return outcome
    }

    /// Writes `data` to a new file at `path` and flushes it, so a crash after it is
    /// renamed into place cannot leave it short.
    private static func writeDurably(_ data: Data, to path: FilePath) throws(ArchiveFolderError) {
        do {
            let descriptor = try SystemPackage.FileDescriptor.open(
                path, .writeOnly, options: [.create, .exclusiveCreate, .closeOnExec], permissions: [.ownerReadWrite, .groupRead, .otherRead]
            )
            try descriptor.closeAfter {
                _ = try data.withUnsafeBytes { try descriptor.writeAll($0) }
                guard fsync(descriptor.rawValue) == 0 else { throw Errno(rawValue: errno) }
            }
        } catch {
            throw ArchiveFolderError(.io, "cannot write \(path): \(error)")
        }
    }

    // MARK: Scratch names

    /// The purposes of the folder's scratch files (`.KEY.PURPOSE-PID@HOST-RANDOM`).
    static let archiveScratch = "tar.zst.partial"
    static let manifestScratch = "manifest.partial"
    static let orphanScratch = "orphan"
    static let scratchPurposes = [archiveScratch, manifestScratch, orphanScratch]

    func scratchPath(for key: CacheKey, purpose: String) -> FilePath {
        root.appending(ScratchName.make(base: key.rawValue, purpose: purpose))
    }

    /// The key and owner of `name` when it is one of the folder's scratch files.
    static func scratch(_ name: String) -> (key: CacheKey, owner: ScratchName.Owner)? {
        guard let (stem, owner) = ScratchName.parse(name) else { return nil }
        for purpose in scratchPurposes where stem.hasSuffix("." + purpose) {
            if let key = try? CacheKey(String(stem.dropLast(purpose.count + 1))) { return (key, owner) }
        }
        return nil
    }
}

/// Why a folder operation failed: the message says what and what to do.
package struct ArchiveFolderError: Error, CustomStringConvertible {
    package enum Kind: Sendable {
        /// The folder cannot be created or used.
        case unusableFolder
        /// A manifest in the folder is not a usable cache manifest.
        case unusableManifest
        /// What was published does not match its manifest.
        case mismatch
        /// A system call failed.
        case io
    }

    package var kind: Kind
    package var description: String

    init(_ kind: Kind, _ description: String) {
        self.kind = kind
        self.description = description
    }
}

extension ArchiveFolder {
    /// A publish in progress: a scratch file in the folder and a running SHA-256. Removed
    /// when released unless ``ArchiveFolder/commit(_:manifest:mode:logger:)`` made it the
    /// archive.
    package final class Publication: Sendable {
        package let key: CacheKey
        let path: FilePath
        private let descriptor: SystemPackage.FileDescriptor
        private let state = Mutex(State())

        private struct State {
            var hasher = SHA256()
            var size: Int64 = 0
            var visible = false
        }

        init(key: CacheKey, path: FilePath) throws(ArchiveFolderError) {
            self.key = key
            self.path = path
            do {
                descriptor = try SystemPackage.FileDescriptor.open(
                    path, .writeOnly, options: [.create, .exclusiveCreate, .closeOnExec], permissions: [.ownerReadWrite, .groupRead, .otherRead]
                )
            } catch {
                throw ArchiveFolderError(.io, "cannot create \(path): \(error)")
            }
        }

        /// Bytes written so far.
        package var size: Int64 { state.withLock { $0.size } }

        /// The SHA-256 of the bytes written so far, in lowercase hex.
        package var sha256: String { state.withLock { $0.hasher }.finalize().hexString }

        /// Writes `bytes` at the end and adds them to the hash.
        package func append(_ bytes: UnsafeRawBufferPointer) throws(ArchiveFolderError) {
            do {
                _ = try descriptor.writeAll(bytes)
            } catch {
                throw ArchiveFolderError(.io, "cannot write \(path): \(error)")
            }
            state.withLock { state in
                state.hasher.update(bufferPointer: bytes)
                state.size += Int64(bytes.count)
            }
        }

        /// Writes `buffer` at the end on NIO's blocking-I/O pool.
        package func append(_ buffer: ByteBuffer) async throws {
            try await NIOThreadPool.singleton.runIfActive {
                try buffer.withUnsafeReadableBytes { try self.append($0) }
            }
        }

        /// How what was written differs from what `manifest` describes.
        package enum Mismatch: Sendable, Equatable, CustomStringConvertible {
            case size(Int64, expected: Int64)
            case sha256(String, expected: String)

            package var description: String {
                switch self {
                case .size(let size, let expected): "is \(size) bytes but the manifest says \(expected)"
                case .sha256(let digest, let expected): "has SHA-256 \(digest) but the manifest says \(expected)"
                }
            }
        }

        /// The first difference between what was written and `manifest`, if any.
        package func mismatch(with manifest: CacheManifest) -> Mismatch? {
            if size != manifest.archiveSize { return .size(size, expected: manifest.archiveSize) }
            let digest = sha256
            return digest == manifest.archiveSHA256 ? nil : .sha256(digest, expected: manifest.archiveSHA256)
        }

        /// Flushes to disk so a crash after the archive is linked cannot leave it short.
        func sync() throws(ArchiveFolderError) {
            guard fsync(descriptor.rawValue) == 0 else {
                throw ArchiveFolderError(.io, "cannot flush the archive of \(key): \(Errno(rawValue: errno))")
            }
        }

        /// Flushes the bytes and renames the scratch file to `destination`: a copy taken out
        /// of a tier (``ArchiveInventory/fetchArchive(_:to:logger:)``) rather than published.
        func move(to destination: FilePath) throws(ArchiveFolderError) {
            try sync()
            do {
                try FileSystem.rename(path, to: destination)
            } catch {
                throw ArchiveFolderError(.io, "cannot move the copy of \(key) to \(destination): \(error)")
            }
            markVisible()
        }

        /// The archive is in place: the scratch name is no longer this publication's to remove
        /// (it was renamed, or linked and is unlinked here).
        fileprivate func markVisible() {
            state.withLock { $0.visible = true }
            unlink(path.string)
        }

        deinit {
            try? descriptor.close()
            if !state.withLock({ $0.visible }) { unlink(path.string) }
        }
    }
}

/// The folder's lock: a mutex for this process, and `flock(2)` on the folder for every
/// process that uses it. Held for microseconds (a few system calls), so it is taken on
/// the calling thread.
final class FolderLock: Sendable {
    enum Mode {
        case shared, exclusive
    }

    private let root: FilePath
    private let mutex = Mutex(())

    init(root: FilePath) {
        self.root = root
    }

    func withLock<T: Sendable, E: Error>(_ mode: Mode, _ body: () throws(E) -> T) throws(E) -> T {
        try mutex.withLock { _ throws(E) -> T in
            // Closing the descriptor releases the flock. A folder not created yet has
            // nothing to protect; a filesystem that cannot lock a directory (NFS, for an
            // exclusive lock) leaves only the mutex.
            let descriptor = open(root.string, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            defer { if descriptor >= 0 { close(descriptor) } }
            if descriptor >= 0 {
                let operation = mode == .shared ? LOCK_SH : LOCK_EX
                // Another error (ENOLCK, say) leaves only the mutex, as a folder that cannot lock does.
                _ = try? syscall("flock") { flock(descriptor, operation) }
            }
            return try body()
        }
    }
}
