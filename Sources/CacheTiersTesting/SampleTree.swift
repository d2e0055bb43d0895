import Foundation
import SystemPackage

/// Writes small trees shaped like a dependency cache, for tests.
public enum SampleTree {
    /// Writes a tree with the shapes a restore must reproduce: nested directories, an
    /// empty directory, an executable script, a relative symlink, a non-ASCII name, a
    /// path longer than 100 bytes, and binary contents.
    /// - Returns: the number of regular files written.
    @discardableResult
    public static func write(to root: FilePath, seed: Int = 1, files: Int = 24) throws -> Int {
        let fm = FileManager.default
        func put(_ path: String, _ data: Data, mode: Int = 0o644) throws {
            let full = root.appending(path).string
            try fm.createDirectory(atPath: (full as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            guard fm.createFile(atPath: full, contents: data) else {
                throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: full])
            }
            try fm.setAttributes([.posixPermissions: mode], ofItemAtPath: full)
        }
        try fm.createDirectory(atPath: root.string, withIntermediateDirectories: true)
        var written = 0
        for index in 0..<files {
            let package = "pkg-\(seed)-\(index % 5)"
            let text = String(repeating: "module.exports.value\(index) = \(index * seed);\n", count: 3 + index * 7)
            try put("\(package)/lib/file\(index).js", Data(text.utf8))
            written += 1
        }
        try put("pkg-\(seed)-0/package.json", Data(#"{"name":"pkg","version":"1.0.\#(seed)"}"#.utf8))
        try put("pkg-\(seed)-0/bin/cli.js", Data("#!/usr/bin/env node\nconsole.log(\(seed))\n".utf8), mode: 0o755)
        var binary = [UInt8](repeating: 0, count: 4096)
        var state = UInt64(seed) &* 0x9E37_79B9_7F4A_7C15
        for i in binary.indices {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            binary[i] = UInt8(truncatingIfNeeded: state >> 33)
        }
        try put("native/addon.node", Data(binary), mode: 0o755)
        let deep = "@scope/a-package-with-a-rather-long-name/lib/deeply/nested/folder/structure/for/testing/paths/over/one/hundred/bytes.js"
        try put(deep, Data("deep \(seed)\n".utf8))
        try put("unicodé/naïve-файл.js", Data("unicode \(seed)\n".utf8))
        written += 5
        try fm.createDirectory(atPath: root.appending("empty/dir").string, withIntermediateDirectories: true)
        try fm.createDirectory(atPath: root.appending(".bin").string, withIntermediateDirectories: true)
        try fm.createSymbolicLink(atPath: root.appending(".bin/cli").string, withDestinationPath: "../pkg-\(seed)-0/bin/cli.js")
        return written
    }
}
