// Measurements that need the library without the command line around it, for the
// scripts in Benchmarks/. Each prints one line of JSON.
//
//   cachetiers-bench decompress FILE                    zstd-decode FILE to nowhere
//   cachetiers-bench peer-restore URL KEY DIR           restore KEY from a cache master into DIR
//   cachetiers-bench peer-restore-throttled URL KEY DIR BYTES_PER_SECOND
//                                                       the same through a bandwidth-limited proxy
//   cachetiers-bench peer-concurrent URL KEY DIR N      N concurrent restores into DIR/0 … DIR/N-1
//   cachetiers-bench gcs-publish ENDPOINT BUCKET ARCHIVE publish ARCHIVE (+ ARCHIVE.manifest.json) to GCS
//   cachetiers-bench gcs-restore ENDPOINT BUCKET KEY DIR PARALLEL [BYTES_PER_SECOND]
//                                                       restore KEY through GCSSource with PARALLEL
//                                                       segments, optionally through a proxy that limits
//                                                       every connection to BYTES_PER_SECOND
//   cachetiers-bench corpus DIR [--files N] [--seed S]  write a node_modules-like tree into DIR/node_modules
//                                                       (DependencyCorpus: deterministic for a seed)
import CacheTiers
import CacheTiersTesting
import Foundation
import Logging
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("cachetiers-bench: \(message)\n".utf8))
    exit(1)
}

func seconds(since start: ContinuousClock.Instant) -> Double {
    (ContinuousClock.now - start).inSeconds
}

let logger: Logger = {
    var logger = Logger(label: "bench")
    logger.logLevel = .error
    return logger
}()

func restore(from url: String, key: String, into directory: String, restores: Int = 1) async throws -> (Double, Int64) {
    let source = VMPeerSource(configuration: .init(peers: [url]))
    let chain = TierChain(
        tiers: [.init(source, policy: .init(timeout: .seconds(600), retry: .none))],
        configuration: .init(deadline: .seconds(900), writeBack: .disabled),
        logger: logger
    )
    let cacheKey = try CacheKey(key)
    let start = ContinuousClock.now
    let bytes = try await withThrowingTaskGroup(of: Int64.self) { group in
        for index in 0..<restores {
            let destination = restores == 1 ? FilePath(directory) : FilePath(directory).appending("\(index)")
            group.addTask { try await chain.restore(cacheKey, into: destination).bytesTransferred }
        }
        return try await group.reduce(0, +)
    }
    let elapsed = seconds(since: start)
    try await source.shutdown()
    return (elapsed, bytes)
}

func gcsSource(endpoint: String, bucket: String, parallel: Int = 4) -> GCSSource {
    GCSSource(configuration: .init(bucket: bucket, endpoint: endpoint, parallelDownloads: parallel))
}

let arguments = Array(CommandLine.arguments.dropFirst())
do {
switch arguments.first {
case "decompress" where arguments.count == 2:
    let descriptor = open(arguments[1], O_RDONLY)
    guard descriptor >= 0 else { fail("cannot open \(arguments[1])") }
    let decoder = try ZstdCodec().makeDecoder()
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
    var produced = 0
    let start = ContinuousClock.now
    while true {
        let count = read(descriptor, buffer.baseAddress, buffer.count)
        if count <= 0 { break }
        try decoder.decode(UnsafeRawBufferPointer(rebasing: buffer[..<count])) { produced += $0.count }
    }
    try decoder.finish()
    print(#"{"bytes": \#(produced), "seconds": \#(seconds(since: start))}"#)

case "peer-restore" where arguments.count == 4:
    let (elapsed, bytes) = try await restore(from: arguments[1], key: arguments[2], into: arguments[3])
    print(#"{"bytes": \#(bytes), "seconds": \#(elapsed)}"#)

case "peer-restore-throttled" where arguments.count == 5:
    guard let port = arguments[1].split(separator: ":").last.flatMap({ Int($0) }), let rate = Int(arguments[4]) else {
        fail("peer-restore-throttled URL KEY DIR BYTES_PER_SECOND")
    }
    let proxy = try FaultInjectingProxy(upstreamPort: port, fault: .bandwidth(bytesPerSecond: rate))
    let (elapsed, bytes) = try await restore(from: proxy.url, key: arguments[2], into: arguments[3])
    proxy.stop()
    print(#"{"bytes": \#(bytes), "seconds": \#(elapsed), "transferSeconds": \#(Double(bytes) / Double(rate))}"#)

case "peer-concurrent" where arguments.count == 5:
    guard let count = Int(arguments[4]), count > 0 else { fail("peer-concurrent URL KEY DIR N") }
    try FileManager.default.createDirectory(atPath: arguments[3], withIntermediateDirectories: true)
    let (elapsed, bytes) = try await restore(from: arguments[1], key: arguments[2], into: arguments[3], restores: count)
    print(#"{"bytes": \#(bytes), "seconds": \#(elapsed), "restores": \#(count)}"#)

case "gcs-publish" where arguments.count == 4:
    let file = FilePath(arguments[3])
    let manifestData = try Data(contentsOf: URL(fileURLWithPath: arguments[3] + ".manifest.json"))
    let source = gcsSource(endpoint: arguments[1], bucket: arguments[2])
    let start = ContinuousClock.now
    let outcome = try await source.publish(
        PackedArchive(file: file, manifest: try CacheManifest(jsonData: manifestData)), logger: logger
    )
    try await source.shutdown()
    print(#"{"outcome": "\#(outcome.rawValue)", "seconds": \#(seconds(since: start))}"#)

case "gcs-restore" where arguments.count == 6 || arguments.count == 7:
    guard let parallel = Int(arguments[5]) else { fail("gcs-restore ENDPOINT BUCKET KEY DIR PARALLEL [BYTES_PER_SECOND]") }
    var endpoint = arguments[1]
    var proxy: FaultInjectingProxy?
    if arguments.count == 7 {
        guard let port = endpoint.split(separator: ":").last.flatMap({ Int($0) }), let rate = Int(arguments[6]) else {
            fail("gcs-restore ENDPOINT BUCKET KEY DIR PARALLEL [BYTES_PER_SECOND]")
        }
        proxy = try FaultInjectingProxy(upstreamPort: port, fault: .bandwidth(bytesPerSecond: rate))
        endpoint = proxy!.url
    }
    let source = gcsSource(endpoint: endpoint, bucket: arguments[2], parallel: parallel)
    let chain = TierChain(
        tiers: [.init(source, policy: .init(timeout: .seconds(600), retry: .none))],
        configuration: .init(deadline: .seconds(900), writeBack: .disabled),
        logger: logger
    )
    let start = ContinuousClock.now
    let report = try await chain.restore(try CacheKey(arguments[3]), into: FilePath(arguments[4]))
    let elapsed = seconds(since: start)
    try await source.shutdown()
    proxy?.stop()
    print(#"{"bytes": \#(report.bytesTransferred), "seconds": \#(elapsed), "costUSD": \#(report.estimatedCostUSD ?? 0)}"#)

case "corpus" where arguments.count >= 2:
    var options = DependencyCorpus.Options()
    var rest = arguments.dropFirst(2).makeIterator()
    while let flag = rest.next() {
        guard let value = rest.next() else { fail("corpus DIR [--files N] [--seed S]: \(flag) needs a value") }
        switch flag {
        case "--files": guard let files = Int(value), files > 0 else { fail("--files must be a positive number") }; options.files = files
        case "--seed": guard let seed = UInt64(value) else { fail("--seed must be a non-negative number") }; options.seed = seed
        default: fail("corpus DIR [--files N] [--seed S]: unknown option \(flag)")
        }
    }
    let start = ContinuousClock.now
    let summary = try DependencyCorpus.write(to: FilePath(arguments[1]), options: options)
    print(
        #"{"files": \#(summary.files), "directories": \#(summary.directories), "symlinks": \#(summary.symlinks), "bytes": \#(summary.bytes), "#
            + #""packages": \#(summary.packages), "duplicatePackages": \#(summary.duplicatePackages), "seconds": \#(seconds(since: start))}"#
    )

default:
    fail("usage: see the comment at the top of Benchmarks/ArchiveBench/main.swift")
}
} catch {
    fail("\(error)")
}
