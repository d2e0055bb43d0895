// swift-tools-version: 6.2
import PackageDescription

// Linux only (Debian and Ubuntu, glibc): the archive engine and promotion use Linux
// calls (renameat2, st_mtim, Glibc's I/O), so no Apple platform is claimed.
let package = Package(
    name: "CacheTiers",
    products: [
        .library(name: "CacheTiers", targets: ["CacheTiers"]),
        .library(name: "CacheTiersServer", targets: ["CacheTiersServer"]),
        .library(name: "CacheTiersTesting", targets: ["CacheTiersTesting"]),
        .executable(name: "cachetiers", targets: ["cachetiers"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-crypto", "3.12.3"..<"5.0.0"),
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1", traits: []),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-http-types", from: "1.8.0"),
        .package(url: "https://github.com/swiftlang/swift-subprocess", from: "1.0.2"),
        // The cache master's store of fleet reports (SQLite, WAL), over Debian's libsqlite3-dev.
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
    ],
    targets: [
        // libzstd from the system (Debian: libzstd-dev), wrapped by a module map only.
        .systemLibrary(
            name: "CZstd",
            pkgConfig: "libzstd",
            providers: [.apt(["libzstd-dev"])]
        ),
        // renameat2(RENAME_EXCHANGE), which Glibc's Swift overlay does not surface, and CRC-32C.
        .target(name: "CCacheTiersShims"),
        .target(
            name: "CacheTiers",
            dependencies: [
                "CZstd",
                "CCacheTiersShims",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Crypto", package: "swift-crypto"),
                // RSA for signing service-account JWTs (RS256).
                .product(name: "_CryptoExtras", package: "swift-crypto"),
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Subprocess", package: "swift-subprocess"),
                // The archive index retention reads (ROOT/.cachetiers/archives.sqlite), shared by the cache master and the directory tier.
                .product(name: "GRDB", package: "GRDB.swift"),
            ]
        ),
        // The cache master (the peer tier's server), apart so a service that only restores links no server.
        .target(
            name: "CacheTiersServer",
            dependencies: [
                "CacheTiers",
                .product(name: "Hummingbird", package: "hummingbird"),
                // MaximumAvailableConnections, the connection cap.
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "GRDB", package: "GRDB.swift"),
            ]
        ),
        .target(
            name: "CacheTiersTesting",
            dependencies: [
                "CacheTiers",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        .executableTarget(
            name: "cachetiers",
            dependencies: [
                "CacheTiers",
                "CacheTiersServer",
                // `restore` starts a detached write-back (posix_spawn with setsid and closefrom).
                "CCacheTiersShims",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                // IOError, to name a port in use.
                .product(name: "NIOCore", package: "swift-nio"),
                // `stats` reads the cache master's GET /v1/stats.
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                // `serve` runs the cache master in a ServiceGroup.
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        .executableTarget(
            name: "QuickStart",
            dependencies: ["CacheTiers", .product(name: "Logging", package: "swift-log")],
            path: "Examples/QuickStart"
        ),
        // In-process measurements the benchmark scripts compare with the stock tools.
        .executableTarget(
            name: "cachetiers-bench",
            dependencies: ["CacheTiers", "CacheTiersTesting", .product(name: "Logging", package: "swift-log")],
            path: "Benchmarks/ArchiveBench"
        ),
        .testTarget(
            name: "CacheTiersTests",
            dependencies: [
                "CacheTiers",
                // Built so the end-to-end tests can run the real command.
                "cachetiers",
                "CacheTiersTesting",
                .product(name: "MetricsTestKit", package: "swift-metrics"),
                .product(name: "SystemPackage", package: "swift-system"),
                // Fake token endpoints and metadata servers for the credential tests.
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "_CryptoExtras", package: "swift-crypto"),
                // The cache master in a ServiceGroup beside another service.
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                // A report database as an older version left it, for the migration tests.
                .product(name: "GRDB", package: "GRDB.swift"),
            ],
            exclude: ["Support/gcs_interop.py", "Support/make_wheels.py"]
        ),
    ],
    swiftLanguageModes: [.v6]
)
