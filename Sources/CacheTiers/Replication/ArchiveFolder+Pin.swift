import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

extension ArchiveFolder {
    /// Hard-links the archive of `key` at `path` (on the folder's filesystem) together
    /// with its manifest, under the folder's lock, so the two belong to one publish and
    /// the bytes at `path` stay that archive's even if the key is replaced or evicted
    /// meanwhile: what the cache master's replication uploads from.
    /// - Returns: the manifest, or nil when the key has no complete pair (gone, or not
    ///   yet whole).
    package func pin(_ key: CacheKey, at path: FilePath) throws(ArchiveFolderError) -> CacheManifest? {
        try lock.withLock(.shared) { () throws(ArchiveFolderError) -> CacheManifest? in
            guard let manifest = try manifest(for: key) else { return nil }
            unlink(path.string)
            guard link(archivePath(for: key).string, path.string) == 0 else {
                let failure = errno
                if failure == ENOENT { return nil }
                throw ArchiveFolderError(.io, "cannot link the archive of \(key) to \(path): \(Errno(rawValue: failure))")
            }
            var info = stat()
            guard stat(path.string, &info) == 0, Int64(info.st_size) == manifest.archiveSize else {
                unlink(path.string)
                throw ArchiveFolderError(
                    .mismatch, "the archive of \(key) is not the size its manifest says; publish it again"
                )
            }
            return manifest
        }
    }
}
