import CacheTiersTesting
import Foundation
import SystemPackage

/// A filesystem mounted for one test (CI runs as root): an ext4 loop image with the
/// options asked for, or a tmpfs. A mount that fails is the test's failure, with why:
/// nothing is skipped silently.
struct TestMount {
    let mountPoint: FilePath
    private let image: FilePath?

    /// A fresh ext4 filesystem in a sparse image beside `mountPoint`, mounted with `options` (`noatime`, `strictatime`…).
    static func ext4(at mountPoint: FilePath, options: String, megabytes: Int = 64) async throws -> TestMount {
        let image = FilePath(mountPoint.string + ".ext4")
        try FileManager.default.createDirectory(atPath: mountPoint.string, withIntermediateDirectories: true)
        let file = try FileHandle(forWritingTo: URL(fileURLWithPath: image.string, isDirectory: false), creating: true)
        try file.truncate(atOffset: UInt64(megabytes) << 20)
        try file.close()
        try await must(["mkfs.ext4", "-q", "-F", image.string])
        try await must(["mount", "-o", "loop,\(options)", image.string, mountPoint.string])
        return TestMount(mountPoint: mountPoint, image: image)
    }

    /// A tmpfs of `options` (`size=16m`, `ro`…) at `mountPoint`.
    static func tmpfs(at mountPoint: FilePath, options: String = "size=16m") async throws -> TestMount {
        try FileManager.default.createDirectory(atPath: mountPoint.string, withIntermediateDirectories: true)
        try await must(["mount", "-t", "tmpfs", "-o", options, "tmpfs", mountPoint.string])
        return TestMount(mountPoint: mountPoint, image: nil)
    }

    /// Unmounts (lazily, so a test that failed with a file open still cleans up) and
    /// removes the image; off the cooperative pool, as every process a test waits for.
    func remove() async {
        _ = try? await Fixtures.run(["umount", "-l", mountPoint.string])
        if let image { try? FileManager.default.removeItem(atPath: image.string) }
    }

    private static func must(_ command: [String]) async throws {
        let result = try await Fixtures.run(command)
        guard result.status == 0 else {
            throw FixtureError(
                "\(command.joined(separator: " ")) failed (\(result.status)): \(result.stderr.trimmingCharacters(in: .whitespacesAndNewlines)); these tests need root and loop devices, as CI has"
            )
        }
    }
}

extension FileHandle {
    fileprivate convenience init(forWritingTo url: URL, creating: Bool) throws {
        if creating { FileManager.default.createFile(atPath: url.path, contents: nil) }
        try self.init(forWritingTo: url)
    }
}
