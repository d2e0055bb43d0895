// Measurements that need the library without the command line around it, for
// Benchmarks/archive_benchmark.py. `cachetiers-bench decompress FILE` decompresses a
// zstd file to nowhere, the counterpart of `zstd -d -c FILE > /dev/null`.
import CacheTiers
import Foundation

#if canImport(Glibc)
import Glibc
#endif

let arguments = CommandLine.arguments
guard arguments.count == 3, arguments[1] == "decompress" else {
    FileHandle.standardError.write(Data("usage: cachetiers-bench decompress FILE\n".utf8))
    exit(2)
}
let descriptor = open(arguments[2], O_RDONLY)
guard descriptor >= 0 else {
    FileHandle.standardError.write(Data("cachetiers-bench: cannot open \(arguments[2])\n".utf8))
    exit(1)
}
let decoder = try ZstdCodec().makeDecoder()
let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
var produced = 0
while true {
    let count = read(descriptor, buffer.baseAddress, buffer.count)
    if count <= 0 { break }
    try decoder.decode(UnsafeRawBufferPointer(rebasing: buffer[..<count])) { produced += $0.count }
}
try decoder.finish()
print(produced)
