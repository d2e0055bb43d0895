import CacheTiersTesting
import Foundation
import SystemPackage

/// A Node.js project whose dependencies are tarballs the test makes itself with
/// `npm pack`, so `npm ci --offline` installs it with no registry: a package with a
/// `bin` entry and a dependency of its own, that dependency, and a package with a
/// `postinstall` script. Its lockfile is written by npm.
struct NpmProject {
    let folder: FilePath
    let tarballs: FilePath

    var nodeModules: FilePath { folder.appending("node_modules") }

    /// The install tier's argv: offline, quiet, no audit.
    static let ciCommand = ["npm", "ci", "--offline", "--no-audit", "--no-fund", "--loglevel=error"]

    /// Makes the packages, packs them, writes the project and its lockfile (no node_modules).
    static func make(in scratch: FilePath) async throws -> NpmProject {
        let packages = scratch.appending("packages")
        let tarballs = scratch.appending("tarballs")
        let folder = scratch.appending("app")
        for path in [packages, tarballs, folder] {
            try FileManager.default.createDirectory(atPath: path.string, withIntermediateDirectories: true)
        }
        try write(packages.appending("tiny-dep/package.json"), #"{ "name": "tiny-dep", "version": "1.0.0", "main": "index.js" }"#)
        try write(packages.appending("tiny-dep/index.js"), "module.exports = (text, width) => text.length >= width ? text : '0'.repeat(width - text.length) + text;\n")
        try write(
            packages.appending("left-pad-local/package.json"),
            #"{ "name": "left-pad-local", "version": "2.1.0", "main": "index.js", "bin": { "left-pad-local": "cli.js" }, "dependencies": { "tiny-dep": "*" } }"#
        )
        try write(packages.appending("left-pad-local/index.js"), "const pad = require('tiny-dep');\nmodule.exports = (text, width) => pad(String(text), width);\n")
        try write(packages.appending("left-pad-local/cli.js"), "#!/usr/bin/env node\nconsole.log(require('./index.js')(process.argv[2], Number(process.argv[3])));\n")
        try write(
            packages.appending("with-postinstall/package.json"),
            #"{ "name": "with-postinstall", "version": "0.3.0", "main": "index.js", "scripts": { "postinstall": "node -e \"require('fs').writeFileSync('installed.txt', 'yes')\"" } }"#
        )
        try write(packages.appending("with-postinstall/index.js"), "module.exports = require('fs').existsSync(__dirname + '/installed.txt');\n")
        for name in ["tiny-dep", "left-pad-local", "with-postinstall"] {
            let packed = try await Fixtures.run(
                ["npm", "pack", "--pack-destination", tarballs.string, "--loglevel=error"], in: packages.appending(name)
            )
            guard packed.status == 0 else { throw FixtureError("npm pack \(name): \(packed.stderr)") }
        }
        try write(folder.appending("package.json"), """
            {
              "name": "app",
              "version": "1.0.0",
              "private": true,
              "dependencies": {
                "left-pad-local": "file:../tarballs/left-pad-local-2.1.0.tgz",
                "tiny-dep": "file:../tarballs/tiny-dep-1.0.0.tgz",
                "with-postinstall": "file:../tarballs/with-postinstall-0.3.0.tgz"
              }
            }
            """)
        let locked = try await Fixtures.run(
            ["npm", "install", "--package-lock-only", "--offline", "--no-audit", "--no-fund", "--loglevel=error"], in: folder
        )
        guard locked.status == 0 else { throw FixtureError("npm install --package-lock-only: \(locked.stderr)") }
        return NpmProject(folder: folder, tarballs: tarballs)
    }

    /// What `node` prints for `script` run in `folder` (so `require` resolves its node_modules).
    static func node(_ script: String, in folder: FilePath) async throws -> String {
        let result = try await Fixtures.run(["node", "-e", script], in: folder)
        guard result.status == 0 else { throw FixtureError("node -e \(script): \(result.stderr)") }
        return result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    static func write(_ path: FilePath, _ text: String) throws {
        try FileManager.default.createDirectory(atPath: path.removingLastComponent().string, withIntermediateDirectories: true)
        try Data(text.utf8).write(to: URL(fileURLWithPath: path.string))
    }
}
