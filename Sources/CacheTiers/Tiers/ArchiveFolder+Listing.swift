import Foundation
import SystemPackage

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

extension ArchiveFolder {
    /// The keys whose archive and manifest are both in the folder, in ascending key order.
    /// Scratch files, quarantined files and names that are not `KEY.tar.zst` for a valid
    /// key are not keys.
    package func keys() -> [CacheKey] {
        let names = Set((try? FileManager.default.contentsOfDirectory(atPath: root.string)) ?? [])
        return names.compactMap { name -> CacheKey? in
            guard let key = Self.key(ofArchive: name), names.contains(name + Self.manifestSuffix) else { return nil }
            return key
        }.sorted { $0.rawValue.utf8.lexicographicallyPrecedes($1.rawValue.utf8) }
    }

    /// One page of the folder's archives after `after`, in ascending key order, each
    /// described by its manifest (an archive whose manifest cannot be read, or disagrees
    /// with its size, is left out: a restore would not serve it either).
    package func listArchives(after: CacheKey?, limit: Int) -> ArchivePage {
        let limit = min(max(1, limit), ArchivePage.maximumLimit)
        var keys = self.keys()[...]
        if let after {
            keys = keys.drop { !after.rawValue.utf8.lexicographicallyPrecedes($0.rawValue.utf8) }
        }
        var listings: [ArchiveListing] = []
        var last: CacheKey?
        for key in keys {
            if listings.count == limit { return ArchivePage(archives: listings, next: last) }
            last = key
            guard let manifest = try? manifest(for: key) else { continue }
            var info = stat()
            guard stat(archivePath(for: key).string, &info) == 0, Int64(info.st_size) == manifest.archiveSize else { continue }
            listings.append(
                ArchiveListing(key: key, size: manifest.archiveSize, sha256: manifest.archiveSHA256, createdAt: manifest.createdAt)
            )
        }
        return ArchivePage(archives: listings, next: nil)
    }
}
