// A Swift service restoring a workspace's node_modules through a TierChain.
//
// Two directory tiers stand in for the cloud here: "local" (an empty cache on this VM)
// and "shared" (a team cache that already has the tree). The first restore is served
// by "shared" and written back to "local"; the second is a "local" hit. Swap the
// tiers for VMPeerSource and GCSSource (with the `.peer` and `.gcs` policies) in
// production; the chain does not change. A service that reads the same JSON file as the
// command line runs `CacheTiersConfig.load(from:)` and `withConfiguredChain { chain, sinks in }`.
//
//   swift run QuickStart
import CacheTiers
import Foundation
import Logging
import SystemPackage

var logger = Logger(label: "quickstart")
logger.logLevel = .notice

let work = FilePath(NSTemporaryDirectory()).appending("cachetiers-quickstart-\(ProcessInfo.processInfo.processIdentifier)")
defer { try? FileManager.default.removeItem(atPath: work.string) }

// 1. A workspace with a lockfile and an installed node_modules, as a CI job would leave it.
let project = work.appending("builder")
let installed = project.appending("node_modules")
for (path, contents) in [
    "package-lock.json": #"{"name":"app","lockfileVersion":3,"packages":{"node_modules/left-pad":{"version":"1.3.0"}}}"#,
    "node_modules/left-pad/package.json": #"{"name":"left-pad","version":"1.3.0","main":"index.js"}"#,
    "node_modules/left-pad/index.js": "module.exports = (s, n) => String(s).padStart(n);\n",
] {
    let url = URL(fileURLWithPath: project.appending(path).string)
    try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
    try Data(contents.utf8).write(to: url)
}

// 2. The key comes from the lockfile's bytes, the platform and a salt.
let lockfile = try Data(contentsOf: URL(fileURLWithPath: project.appending("package-lock.json").string))
let key = try CacheKey.derive(prefix: "node-modules", lockfiles: [Lockfile(name: "package-lock.json", contents: Array(lockfile))])

// 3. The team cache already holds the tree (published by the builder).
let local = DirectorySource(name: "local", root: work.appending("local-cache"))
let shared = DirectorySource(name: "shared", root: work.appending("shared-cache"))
let archive = work.appending("upload.tar.zst")
let manifest = try await ArchivePacker().pack(installed, key: key, to: archive, logger: logger)
_ = try await shared.publish(PackedArchive(file: archive, manifest: manifest), logger: logger)

// 4. The service: one chain, created once, serving every restore. `.directory` is the
//    directory tier's preset (120 s an attempt, 30 s without progress, 2 attempts).
let chain = TierChain(
    tiers: [
        .init(local, policy: .directory),
        .init(shared, policy: .directory),
    ],
    configuration: .init(deadline: .seconds(300), writeBack: .init(waitForCompletion: true)),
    logger: logger
)

let workspace = work.appending("workspace")
try FileManager.default.createDirectory(atPath: workspace.string, withIntermediateDirectories: true)
for run in 1...2 {
    try? FileManager.default.removeItem(atPath: workspace.appending("node_modules").string)
    let report = try await chain.restore(key, into: workspace.appending("node_modules"))
    print("restore \(run): served by \(report.servedBy ?? "nobody") in \(String(format: "%.3f", report.durationSeconds)) s")
    for attempt in report.attempts {
        print("  \(attempt.tier) attempt \(attempt.attempt): \(attempt.outcome.rawValue), \(attempt.bytes) bytes")
    }
    for writeBack in report.writeBack {
        print("  write-back to \(writeBack.tier): \(writeBack.outcome.rawValue)")
    }
}
let restored = try String(contentsOfFile: workspace.appending("node_modules/left-pad/index.js").string, encoding: .utf8)
print("node_modules/left-pad/index.js: \(restored.trimmingCharacters(in: .newlines))")
