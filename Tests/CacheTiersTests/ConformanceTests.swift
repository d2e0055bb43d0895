import CacheTiers
import CacheTiersTesting
import Logging
import SystemPackage
import Testing

/// The conformance suite that every tier's tests run, proven here on the in-memory tier.
@Suite struct ConformanceTests {
    struct InMemorySubject: ConformanceSubject {
        let memory = InMemorySource()
        var source: any CacheSource { memory }
        func seed(_ key: CacheKey, from directory: FilePath) async throws {
            try memory.seed(key, from: directory)
        }
    }

    @Test func theInMemorySourceConforms() async throws {
        try await CacheSourceConformance(subject: InMemorySubject()).run()
    }

    /// A source that gets everything wrong, to prove the suite can fail.
    struct CarelessSource: CacheSource {
        var name: String { "careless" }
        var traits: CacheSourceTraits { .download }
        func restore(_ request: RestoreRequest, into staging: FilePath, progress: TransferProgress, logger: Logger)
            async throws -> SourceRestoreOutcome
        {
            // Restores nothing, claims success for any key, ignores cancellation.
            .restored(RestoreDetails(bytesTransferred: 0))
        }
    }

    struct CarelessSubject: ConformanceSubject {
        var source: any CacheSource { CarelessSource() }
        func seed(_ key: CacheKey, from directory: FilePath) async throws {}
    }

    @Test func theSuiteCatchesABrokenSource() async throws {
        let failure = try #require(await #expect(throws: ConformanceFailure.self) {
            try await CacheSourceConformance(subject: CarelessSubject()).run()
        })
        let text = failure.description
        #expect(text.contains("restores a seeded tree exactly"))
        #expect(text.contains("reports an unknown key as a miss"))
        #expect(text.contains("stops when cancelled"))
    }
}
