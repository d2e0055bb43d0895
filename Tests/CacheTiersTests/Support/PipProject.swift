import Foundation
import SystemPackage

/// A Python project whose dependencies pip installs offline (`--no-index`) from a
/// folder of wheels made by Support/make_wheels.py: a real package manager, resolving a
/// real dependency, with no network.
struct PipProject {
    let directory: FilePath
    let wheels: FilePath

    /// Makes `folder/project` (requirements.txt) and `folder/wheels`.
    static func make(in folder: FilePath) async throws -> PipProject {
        let project = folder.appending("project")
        let wheels = folder.appending("wheels")
        try FileManager.default.createDirectory(atPath: project.string, withIntermediateDirectories: true)
        try Data("ctdemo-a==1.0\n".utf8).write(to: URL(fileURLWithPath: project.appending("requirements.txt").string))
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("make_wheels.py").path
        let result = try await Fixtures.run(["python3", script, wheels.string])
        guard result.status == 0 else { throw FixtureError("make_wheels.py: \(result.stderr)") }
        return PipProject(directory: project, wheels: wheels)
    }

    /// `pip install` of requirements.txt into `site-packages`, offline.
    var command: [String] {
        [
            "python3", "-m", "pip", "install", "--no-index", "--find-links", wheels.string, "--target", "site-packages",
            "--disable-pip-version-check", "--no-cache-dir", "--no-compile", "-r", "requirements.txt",
        ]
    }

    /// Imports the installed package from `tree` and returns what it computes.
    static func importValue(from tree: FilePath) async throws -> String {
        let result = try await Fixtures.run([
            "python3", "-c", "import sys; sys.path.insert(0, '\(tree.string)'); import ctdemo_a; print(ctdemo_a.VALUE)",
        ])
        guard result.status == 0 else { throw FixtureError("importing ctdemo_a: \(result.stderr)") }
        return result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }
}
