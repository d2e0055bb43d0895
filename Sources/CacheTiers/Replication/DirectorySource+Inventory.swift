import Logging

extension DirectorySource: ArchiveInventory {
    /// The folder's complete pairs after `after`, in key order, from their manifests.
    public func listArchives(after: CacheKey?, limit: Int, logger: Logger) async throws -> ArchivePage {
        try Task.checkCancellation()
        return ArchiveFolder(root: root).listArchives(after: after, limit: limit)
    }
}
