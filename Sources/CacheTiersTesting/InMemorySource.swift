import CacheTiers
import Foundation
import Logging
import Synchronization
import SystemPackage

/// A tier that keeps trees in memory: seed it with a directory, restore it anywhere.
///
/// It reproduces files, directories (empty ones too), symlinks and permission bits.
/// Useful as a fast, deterministic tier in unit tests and as the reference subject of
/// the conformance suite.
public final class InMemorySource: CacheSource, Sendable {
    public let name: String
    public let traits: CacheSourceTraits = .download
    private let trees = Mutex<[CacheKey: TreeSnapshot]>([:])

    public init(name: String = "memory") {
        self.name = name
    }

    /// Captures the tree at `directory` under `key`.
    public func seed(_ key: CacheKey, from directory: FilePath) throws {
        let snapshot = try TreeSnapshot(of: directory)
        trees.withLock { $0[key] = snapshot }
    }

    public func restore(
        _ request: RestoreRequest,
        into staging: FilePath,
        progress: TransferProgress,
        logger: Logger
    ) async throws -> SourceRestoreOutcome {
        try Task.checkCancellation()
        guard let snapshot = trees.withLock({ $0[request.key] }) else {
            return .miss("\(name) holds no tree for \(request.key)")
        }
        var bytes: Int64 = 0
        let fileManager = FileManager.default
        var directories: [(String, UInt16)] = []
        for (path, entry) in snapshot.entries.sorted(by: { $0.key < $1.key }) {
            try Task.checkCancellation()
            let full = staging.appending(path).string
            switch entry {
            case .directory(let mode):
                try fileManager.createDirectory(atPath: full, withIntermediateDirectories: true)
                directories.append((full, mode))
            case .file(let mode, let contents):
                guard fileManager.createFile(atPath: full, contents: Data(contents)) else {
                    throw CacheTierError(.fatal, tier: name, "cannot write \(full)")
                }
                try fileManager.setAttributes([.posixPermissions: Int(mode)], ofItemAtPath: full)
                bytes += Int64(contents.count)
                progress.advance(by: contents.count)
            case .symlink(let target):
                try fileManager.createSymbolicLink(atPath: full, withDestinationPath: target)
            case .other:
                continue
            }
        }
        for (path, mode) in directories.reversed() {
            try fileManager.setAttributes([.posixPermissions: Int(mode)], ofItemAtPath: path)
        }
        return .restored(RestoreDetails(bytesTransferred: bytes))
    }
}
