import AsyncHTTPClient
import CacheTiers
import CacheTiersTesting
import Foundation
import Hummingbird
import SystemPackage
import Testing

/// The messages a person sees when something is wrong: one line, true, and saying what
/// to do. Each test asserts the text or exit status a user would notice.
@Suite struct ConfigMessageTests {
    static func config(_ fields: String) -> String {
        #"{"key":{"prefix":"p","files":["package-lock.json"]},"destination":"x","tiers":[{"kind":"directory","path":"c"}]"#
            + fields + "}"
    }

    // Foundation's own message is "The given data was not valid JSON", with no place.
    @Test(arguments: [
        ("{\n  \"key\": {\"prefix\": \"p\"},\n  \"destination\": \"x\",\n",
         "the file ends after line 3, column 21 before the JSON is complete (a missing } or ]?)"),
        ("{\"key\": {\"prefix\": \"p\"},\n\"destination\": }", "line 2, column 16: expected a value, found '}'"),
        ("{\"key\": \"a\nb\"}", "line 1, column 11: a string holds a raw control character or line break"),
        ("{\"a\" 1}", "line 1, column 6: expected ':' after the field name, found '1'"),
        ("{\"a\": [1 2]}", "line 1, column 10: expected ',' or ']', found '2'"),
        ("{\"a\": tru}", "line 1, column 7: expected a value (true, false, null, a number, a string, [ or {), found 't'"),
        ("{} x", "line 1, column 4: expected the end of the file after the top-level value, found 'x'"),
        (" \n", "the file is empty"),
    ])
    func brokenJSONNamesTheLineAndColumn(json: String, message: String) {
        #expect {
            _ = try CacheTiersConfig(json: Data(json.utf8), baseDirectory: "/srv/app")
        } throws: { error in
            (error as? ConfigError)?.description.hasPrefix("(file): not valid JSON: \(message)") == true
        }
    }

    @Test(arguments: [
        (#","compression":{"level":1e999}"#, "the number 1e999 is too large for a double"),
        (#","deadlineSeconds":-1e999"#, "the number -1e999 is too large for a double"),
    ])
    func aNumberNoDoubleHoldsSaysWhereAndWhy(fields: String, message: String) {
        #expect {
            _ = try CacheTiersConfig(json: Data(Self.config(fields).utf8), baseDirectory: "/srv/app")
        } throws: { error in
            let description = (error as? ConfigError)?.description ?? ""
            return description.hasPrefix("(file): line 1, column ") && description.hasSuffix(message)
        }
    }

    @Test(arguments: [("nonexistent.json", "No such file or directory"), ("", "Is a directory")])
    func aConfigThatCannotBeReadSaysWhy(name: String, reason: String) throws {
        let scratch = try TemporaryDirectory(prefix: "config")
        defer { scratch.remove() }
        let path = name.isEmpty ? scratch.path : scratch.path.appending(name)
        #expect {
            _ = try CacheTiersConfig.load(from: path)
        } throws: { error in
            (error as? ConfigError)?.description == "\(path): (file): cannot read the config file: \(reason)"
        }
    }

    @Test func noLockfilesIsReportedAgainstKeyFilesWhenAKeyIsComputed() throws {
        let json = #"{"key":{"prefix":"p"},"destination":"x","tiers":[{"kind":"directory","path":"c"}]}"#
        let config = try CacheTiersConfig(json: Data(json.utf8), baseDirectory: "/srv/app")
        #expect(config.keyInputs?.files == [], "files defaults to [], as documented")
        #expect {
            _ = try config.cacheKey()
        } throws: { error in
            (error as? ConfigError)?.description.hasPrefix("key.files: a computed cache key needs at least one lockfile") == true
        }
    }

    @Test(arguments: [-5, 19, 22, ZstdCodec.minimumLevel])
    func everyLevelLibzstdAcceptsIsAccepted(level: Int) throws {
        let config = try CacheTiersConfig(json: Data(Self.config(#","compression":{"level":\#(level)}"#).utf8), baseDirectory: "/a")
        #expect(config.compression.compressionLevel == level)
    }

    @Test(arguments: [0, 23, ZstdCodec.minimumLevel - 1])
    func aLevelLibzstdRefusesSaysTheRangeAsEverywhere(level: Int) {
        #expect {
            _ = try CacheTiersConfig(json: Data(Self.config(#","compression":{"level":\#(level)}"#).utf8), baseDirectory: "/a")
        } throws: { error in
            (error as? ConfigError)?.description.hasPrefix("compression.level: \(level) is out of range; use \(ZstdCodec.levelRange)") == true
        }
    }

    @Test func theLevelRangeIsWhatLibzstdAccepts() {
        #expect(ZstdCodec.levelRange == "1 to 22, or -131072 to -1 for the fast levels")
    }
}

/// The real binary, as an operator runs it.
@Suite struct CommandLineMessageTests {
    /// A project whose only tier is a cache master that refuses connections.
    func refusedProject(in scratch: FilePath) throws -> FilePath {
        try Data(#"{"lockfileVersion":3}"#.utf8).write(to: URL(fileURLWithPath: scratch.appending("package-lock.json").string))
        let config = scratch.appending("cachetiers.json")
        let json = #"""
            {"key": {"prefix": "node-modules", "files": ["package-lock.json"]}, "destination": "node_modules",
             "tiers": [{"kind": "peer", "name": "cache-master", "urls": ["http://127.0.0.1:9"], "maxAttempts": 1}]}
            """#
        try Data(json.utf8).write(to: URL(fileURLWithPath: config.string))
        return config
    }

    @Test func aRefusedConnectionSaysSoOnceInBalancedWords() async throws {
        let scratch = try TemporaryDirectory(prefix: "messages")
        defer { scratch.remove() }
        let config = try refusedProject(in: scratch.path)
        let result = try await Fixtures.cli(["restore", "--config", config.string])
        #expect(result.status == 1)
        #expect(result.stderr.contains("cannot reach http://127.0.0.1:9: the connection was refused"), "\(result.stderr)")
        #expect(!result.stderr.contains("errno") && !result.stderr.contains("error set"), "\(result.stderr)")
        for line in result.stderr.split(separator: "\n") {
            #expect(line.count(where: { $0 == "(" }) == line.count(where: { $0 == ")" }), "balanced: \(line)")
        }
        #expect(result.stderr.components(separatedBy: "every tier failed").count == 2, "printed once:\n\(result.stderr)")
        #expect(result.stderr.split(separator: "\n").last?.hasPrefix("cachetiers: every tier failed") == true)
    }

    @Test(arguments: [
        (["restore", "--confg", "x"], "Unknown option '--confg'"),
        (["key", "--confg", "x"], "Unknown option '--confg'"),
        (["unpack", "a.tar.zst", "--int", "d"], "Unknown option '--int'"),
        (["pack", "--level", "42", "--output", "a.tar.zst", "."], "--level 42 is out of range; use \(ZstdCodec.levelRange)"),
        (["pack", ".", "--output", "a.tar.zst", "--threads", "-1"], "--threads must be 0 (one per core) or more"),
        (["restore"], "Missing expected argument '--config <config>'"),
    ])
    func usageErrorsAreOneTrueLine(arguments: [String], message: String) async throws {
        let result = try await Fixtures.cli(arguments)
        #expect(result.status == 2)
        #expect(result.stderr.contains(message), "\(result.stderr)")
        #expect(result.stderr.split(separator: "\n").count == 1, "one line: \(result.stderr)")
    }

    @Test(arguments: [["--level", "-5"], ["--level=-5"], ["--mtime", "-99"], ["--threads", "1", "--level", "22"]])
    func negativeAndHighValuesAreValues(options: [String]) async throws {
        let scratch = try TemporaryDirectory(prefix: "messages")
        defer { scratch.remove() }
        let tree = scratch.path.appending("tree")
        try SampleTree.write(to: tree, files: 5)
        let archive = scratch.path.appending("a.tar.zst").string
        let result = try await Fixtures.cli(["pack", tree.string, "--output", archive] + options)
        #expect(result.status == 0, "\(result.stderr)")
        let level = options.first { $0.hasPrefix("--level") }.map { option in
            option.contains("=") ? String(option.split(separator: "=")[1]) : options[options.firstIndex(of: option)! + 1]
        } ?? "1"
        #expect(result.stdout.contains("at zstd level \(level)\n"), "\(result.stdout)")
        #expect(!result.stdout.contains("--"), "\(result.stdout)")
    }

    @Test func packIntoADirectorySaysToNameTheFile() async throws {
        let scratch = try TemporaryDirectory(prefix: "messages")
        defer { scratch.remove() }
        let tree = scratch.path.appending("tree")
        try SampleTree.write(to: tree, files: 5)
        let output = try scratch.makeDirectory("out")
        let result = try await Fixtures.cli(["pack", tree.string, "--output", output.string])
        #expect(result.status == 2)
        #expect(result.stderr == "cachetiers: pack: --output \(output) is a directory; give the archive's file name, e.g. \(output)/out.tar.zst\n")
    }

    @Test func packWithAnEmptyOutputIsAUsageErrorNamingTheOption() async throws {
        let scratch = try TemporaryDirectory(prefix: "messages")
        defer { scratch.remove() }
        let tree = scratch.path.appending("tree")
        try SampleTree.write(to: tree, files: 5)
        let result = try await Fixtures.cli(["pack", tree.string, "--output", "", "--key", "k"])
        #expect(result.status == 2)
        #expect(result.stderr == "cachetiers: pack: --output needs the archive's file name, e.g. k.tar.zst\n")
    }

    /// A taken port is the operator's to fix: say so, not NIO's `bind(descriptor:ptr:bytes:)`.
    @Test func serveOnAPortInUseSaysSoInOneLine() async throws {
        let scratch = try TemporaryDirectory(prefix: "messages")
        defer { scratch.remove() }
        let holder = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(holder) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(holder, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        #expect(bound == 0 && listen(holder, 1) == 0)
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(holder, $0, &length) }
        }
        let port = Int(UInt16(bigEndian: address.sin_port))
        let result = try await Fixtures.cli(["serve", "--root", scratch.path.appending("root").string, "--port", "\(port)"])
        #expect(result.status == 1)
        #expect(
            result.stderr.hasSuffix(
                "cachetiers: serve: cannot listen on 127.0.0.1:\(port): the port is in use; stop what holds it or choose another --port\n"
            ), "\(result.stderr)"
        )
    }

    @Test func aDestinationThatIsASymlinkIsRefusedAsOne() async throws {
        let scratch = try TemporaryDirectory(prefix: "messages")
        defer { scratch.remove() }
        let config = try refusedProject(in: scratch.path)
        let target = try scratch.makeDirectory("real")
        try Data("keep".utf8).write(to: URL(fileURLWithPath: target.appending("file").string))
        let link = scratch.path.appending("link")
        try FileManager.default.createSymbolicLink(atPath: link.string, withDestinationPath: target.string)
        let tree = scratch.path.appending("tree")
        try SampleTree.write(to: tree, files: 5)
        let archive = scratch.path.appending("a.tar.zst").string
        #expect(try await Fixtures.cli(["pack", tree.string, "--output", archive]).status == 0)

        for command in [["restore", "--config", config.string, "--into", link.string], ["unpack", archive, "--into", link.string]] {
            let result = try await Fixtures.cli(command)
            #expect(result.status != 0)
            #expect(
                result.stderr.contains("cannot restore into \(link): it is a symbolic link to \(target), which CacheTiers does not follow"),
                "\(command[0]): \(result.stderr)"
            )
            #expect(!result.stderr.contains("a file that is not a directory"))
            #expect(try FileManager.default.destinationOfSymbolicLink(atPath: link.string) == target.string)
            #expect(try FileManager.default.contentsOfDirectory(atPath: target.string) == ["file"])
        }
    }

    @Test(arguments: ["", "\n"])
    func serveWithAnEmptyTokenFileIsAUsageError(contents: String) async throws {
        let scratch = try TemporaryDirectory(prefix: "messages")
        defer { scratch.remove() }
        let token = scratch.path.appending("token")
        try Data(contents.utf8).write(to: URL(fileURLWithPath: token.string))
        let result = try await Fixtures.cli(["serve", "--root", scratch.path.appending("root").string, "--port", "0", "--token-file", token.string])
        #expect(result.status == 2, "as restore exits for a config's empty tokenFile")
        #expect(result.stderr == "cachetiers: --token-file \(token) is empty; put the bearer token in it\n")
    }

    @Test func keyTakesVerbose() async throws {
        let scratch = try TemporaryDirectory(prefix: "messages")
        defer { scratch.remove() }
        let config = try refusedProject(in: scratch.path)
        let result = try await Fixtures.cli(["key", "--config", config.string, "--verbose"])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stdout.hasPrefix("node-modules-"))
    }
}

/// The cache master's answers and the peer client's reading of them.
@Suite struct ServerMessageTests {
    @Test(arguments: ["bearer", "Bearer", "BEARER"])
    func theBearerSchemeIsCaseInsensitive(scheme: String) async throws {
        try await PeerHarness.with(token: "t0ken") { peer in
            let answer = try await peer.send(.GET, "/v1/caches/absent", headers: [("Authorization", "\(scheme) t0ken")])
            #expect(answer.status == 404, "the token was accepted")
            let wrong = try await peer.send(.GET, "/v1/caches/absent", headers: [("Authorization", "\(scheme) T0KEN")])
            #expect(wrong.status == 401, "the token itself is case-sensitive")
        }
    }

    @Test func errorBodiesAreOneLineOfText() async throws {
        try await PeerHarness.with { peer in
            let missing = try await peer.send(.GET, "/v1/caches/absent")
            #expect(missing.status == 404)
            #expect(String(decoding: missing.body, as: UTF8.self) == "no cache for absent\n")
            #expect(missing.headers.first(name: "Content-Type") == "text/plain; charset=utf-8")

            // An error description interpolated into the message.
            let manifest = Data(#"{"formatVersion": 1}"#.utf8).base64EncodedString()
            let bad = try await peer.send(.PUT, "/v1/caches/k", headers: [("X-CacheTiers-Manifest", manifest)], body: [1])
            #expect(bad.status == 400)
            let text = String(decoding: bad.body, as: UTF8.self)
            #expect(text.hasPrefix("X-CacheTiers-Manifest is not a cache manifest: "), "\(text)")
            #expect(text.hasSuffix("\n") && text.dropLast().allSatisfy { !$0.isNewline }, "one line: \(text)")
        }
    }

    @Test func anUnauthorizedAnswerIsOneLineToo() async throws {
        try await PeerHarness.with(token: "t0ken") { peer in
            let answer = try await peer.send(.GET, "/v1/caches/absent")
            #expect(answer.status == 401)
            #expect(String(decoding: answer.body, as: UTF8.self) == "this cache master needs Authorization: Bearer <token>\n")
            #expect(answer.headers.first(name: "WWW-Authenticate") == "Bearer realm=\"cachetiers\"")
        }
    }

    @Test(arguments: [(etag: false, length: true, missing: "an ETag"), (etag: true, length: false, missing: "a Content-Length")])
    func anArchiveWithoutAHeaderSaysWhichOne(etag: Bool, length: Bool, missing: String) async throws {
        let router = Router()
        router.get("/v1/caches/{key}") { _, _ -> Response in
            var headers = HTTPFields()
            if etag { headers[.eTag] = "\"0123\"" }
            let bytes = ByteBuffer(string: "not an archive")
            let body = length
                ? ResponseBody(byteBuffer: bytes)
                : ResponseBody { writer in
                    try await writer.write(bytes)
                    try await writer.finish(nil)
                }
            return Response(status: .ok, headers: headers, body: body)
        }
        try await FakeHTTPServer.with(router) { url in
            let scratch = try TemporaryDirectory(prefix: "messages")
            defer { scratch.remove() }
            let source = VMPeerSource(configuration: .init(peers: [url]))
            let staging = try scratch.makeDirectory("staging")
            await #expect {
                _ = try await source.restore(RestoreRequest(key: CacheKey("k")), into: staging, progress: .init(), logger: PeerHarness.quietLogger)
            } throws: { error in
                "\(error)" == "\(url) sent the archive without \(missing); is it a cache master?"
            }
            try await source.shutdown()
        }
    }

    /// A hostile cache master's error body reaches the message, but never as a terminal
    /// escape or a forged second log line.
    @Test func aServersErrorBodyIsShownAsOneLineOfPrintableText() async throws {
        let router = Router()
        router.get("/v1/caches/{key}") { _, _ -> Response in
            Response(status: .unauthorized, body: ResponseBody(byteBuffer: ByteBuffer(string: "\u{1B}[31mdenied\nlevel=info forged")))
        }
        try await FakeHTTPServer.with(router) { url in
            let scratch = try TemporaryDirectory(prefix: "messages")
            defer { scratch.remove() }
            let source = VMPeerSource(configuration: .init(peers: [url]))
            let staging = try scratch.makeDirectory("staging")
            let error = await #expect(throws: CacheTierError.self) {
                _ = try await source.restore(RestoreRequest(key: CacheKey("k")), into: staging, progress: .init(), logger: PeerHarness.quietLogger)
            }
            let text = error.map { "\($0)" } ?? ""
            #expect(text.contains("\\u{1B}[31mdenied level=info forged"), "\(text)")
            #expect(!text.unicodeScalars.contains { $0.value < 0x20 }, "no control character: \(text)")
            try await source.shutdown()
        }
    }
}
