import CacheTiers
import Foundation

/// A restore report as a VM posts it to `POST /v1/reports` (the report JSON of
/// `Documentation/Contract.md`), checked field by field before anything is stored.
///
/// The body comes from the network, so nothing in it is trusted: every field the store
/// or the metrics use is required, typed and bounded, the optional ones are checked when
/// present, and unknown fields are tolerated (later versions of the report add fields).
/// A problem is a ``ReportSchemaError`` naming the field, such as
/// `attempts[1].outcome: expected one of hit, miss, …`.
struct ReceivedReport: Sendable, Equatable {
    static let maximumBodyBytes = 256 * 1024
    static let maximumAttempts = 256
    static let maximumWriteBacks = 64
    /// Tier names label metrics and name rows in `cachetiers stats`.
    /// In Unicode scalars.
    static let maximumTierNameLength = 64
    /// In UTF-8 bytes: a DNS name is at most 253, Linux's host name 64.
    static let maximumHostLength = 255
    static let maximumTextLength = 8192
    /// A restore's duration is bounded by its deadline, at most 30 days in the config.
    static let maximumSeconds = 30.0 * 86_400
    static let maximumBytes = Int64(1) << 50
    static let maximumCostUSD = 1_000_000.0
    /// What /metrics and /v1/stats call a failed restore's tier and the tiers beyond their caps.
    static let reservedTierNames: Set<String> = [FleetMetrics.noTier, FleetMetrics.otherTier]

    enum Outcome: String, Sendable, CaseIterable {
        case restored, failed
    }

    enum AttemptOutcome: String, Sendable, CaseIterable {
        case hit, miss, timeout, stalled, corrupt, unauthorized, error, skipped, cancelled
    }

    enum WriteBackOutcome: String, Sendable, CaseIterable {
        case published, exists, failed, pending, detached
    }

    struct Attempt: Sendable, Equatable {
        var tier: String
        var attempt: Int
        var outcome: AttemptOutcome
        var durationSeconds: Double
        var bytes: Int64
    }

    /// Lowercase, as the contract writes it; a resend of the same report has the same one.
    var id: String
    var finishedAt: Date
    var host: String?
    var key: CacheKey
    var outcome: Outcome
    /// The tier that restored; nil exactly when the restore failed.
    var servedBy: String?
    var durationSeconds: Double
    var bytesTransferred: Int64
    var estimatedCostUSD: Double?
    var attempts: [Attempt]

    /// The first attempt's tier: a restored report served by another tier fell back.
    var firstTier: String? { attempts.first?.tier }

    /// Parses and checks a body.
    static func decode(_ body: some Collection<UInt8>) throws(ReportSchemaError) -> ReceivedReport {
        do {
            return try JSONDecoder().decode(Wire.self, from: Data(body)).report
        } catch let error as DecodingError {
            throw ReportSchemaError(error)
        } catch {
            throw ReportSchemaError(field: nil, "the body is not a report: \(error)")
        }
    }
}

/// Why a posted report was refused: the field (`attempts[2].tier`) and what is wrong.
struct ReportSchemaError: Error, CustomStringConvertible, Equatable {
    var field: String?
    var problem: String

    init(field: String?, _ problem: String) {
        self.field = field
        self.problem = problem
    }

    init(_ error: DecodingError) {
        switch error {
        case .keyNotFound(let key, let context):
            self.init(field: Self.path(context.codingPath + [key]), "required")
        case .valueNotFound(_, let context):
            self.init(field: Self.path(context.codingPath), "must not be null")
        case .typeMismatch(let type, let context):
            self.init(field: Self.path(context.codingPath) ?? "(top level)", "expected \(Self.kind(of: type))")
        case .dataCorrupted(let context) where context.codingPath.isEmpty:
            self.init(field: nil, "the body is not JSON (UTF-8)")
        case .dataCorrupted(let context):
            self.init(field: Self.path(context.codingPath), context.debugDescription)
        @unknown default:
            self.init(field: nil, "the body is not a report")
        }
    }

    var description: String { field.map { "\($0): \(problem)" } ?? problem }

    /// `attempts[1].tier` from the decoder's path.
    private static func path(_ codingPath: [any CodingKey]) -> String? {
        guard !codingPath.isEmpty else { return nil }
        var text = ""
        for key in codingPath {
            if let index = key.intValue {
                text += "[\(index)]"
            } else {
                text += text.isEmpty ? key.stringValue : ".\(key.stringValue)"
            }
        }
        return text
    }

    private static func kind(of type: Any.Type) -> String {
        switch type {
        case is String.Type: "a string"
        case is Double.Type, is Int.Type, is Int64.Type: "a number"
        case is Bool.Type: "true or false"
        default: String(describing: type).hasPrefix("Array") ? "an array" : "an object"
        }
    }
}

/// The decoding side of ``ReceivedReport``: each `init(from:)` checks as it reads, so a
/// problem is thrown with the decoder's own path to the field.
private struct Wire: Decodable {
    var report: ReceivedReport

    enum Keys: String, CodingKey {
        case id, finishedAt, host, key, outcome, servedBy, destination, durationSeconds, bytesTransferred
        case estimatedCostUSD, archive, throughputBytesPerSecond, timings, attempts, writeBack
    }

    init(from decoder: any Decoder) throws {
        let fields = try decoder.container(keyedBy: Keys.self)
        let rawID = try fields.decode(String.self, forKey: .id)
        guard rawID.utf8.count == 36, let uuid = UUID(uuidString: rawID) else {
            throw fields.problem(.id, "expected a UUID such as 3f2b8c1e-5d4a-4f6e-9b7a-2c1d0e9f8a7b")
        }
        let finishedAt = try fields.decode(String.self, forKey: .finishedAt)
        guard let date = Timestamp.parse(finishedAt) else {
            throw fields.problem(.finishedAt, "expected an RFC 3339 UTC time such as 2026-12-01T18:40:12.345Z")
        }
        let host = try fields.text(.host, required: false)
        if let host, host.utf8.count > ReceivedReport.maximumHostLength {
            throw fields.problem(.host, "a host name is at most \(ReceivedReport.maximumHostLength) bytes")
        }
        if let host, !DisplayText.isPlain(host) {
            throw fields.problem(.host, DisplayText.problem)
        }
        let rawKey = try fields.decode(String.self, forKey: .key)
        guard let key = try? CacheKey(rawKey) else {
            throw fields.problem(.key, "not a cache key: 1 to 200 of A-Z a-z 0-9 . _ - starting with a letter or digit")
        }
        let outcome = try fields.choice(.outcome, of: ReceivedReport.Outcome.self)
        let servedBy = try fields.tierName(.servedBy, required: false)
        switch (outcome, servedBy) {
        case (.restored, nil): throw fields.problem(.servedBy, "required when outcome is restored")
        case (.failed, .some): throw fields.problem(.servedBy, "must be null when outcome is failed")
        default: break
        }
        _ = try fields.text(.destination, required: true)
        let duration = try fields.seconds(.durationSeconds)
        let bytes = try fields.byteCount(.bytesTransferred)
        let cost = try fields.number(.estimatedCostUSD, required: false, atMost: ReceivedReport.maximumCostUSD)
        _ = try fields.decodeIfPresent(ArchiveSizes.self, forKey: .archive)
        _ = try fields.number(.throughputBytesPerSecond, required: false, atMost: 1e15)
        _ = try fields.decodeIfPresent(Timings.self, forKey: .timings)
        let attempts = try fields.decode([Attempt].self, forKey: .attempts)
        guard attempts.count <= ReceivedReport.maximumAttempts else {
            throw fields.problem(.attempts, "at most \(ReceivedReport.maximumAttempts) attempts")
        }
        let writeBacks = try fields.decode([WriteBack].self, forKey: .writeBack)
        guard writeBacks.count <= ReceivedReport.maximumWriteBacks else {
            throw fields.problem(.writeBack, "at most \(ReceivedReport.maximumWriteBacks) write-backs")
        }
        // The serving tier is the one whose attempt hit: a report naming another is not a
        // restore any chain performed.
        if outcome == .restored, let servedBy,
            !attempts.contains(where: { $0.attempt.tier == servedBy && $0.attempt.outcome == .hit })
        {
            throw fields.problem(.servedBy, "must be the tier of an attempt whose outcome is hit")
        }
        report = ReceivedReport(
            id: uuid.uuidString.lowercased(), finishedAt: date, host: host, key: key, outcome: outcome,
            servedBy: servedBy, durationSeconds: duration, bytesTransferred: bytes, estimatedCostUSD: cost,
            attempts: attempts.map(\.attempt)
        )
    }

    struct Attempt: Decodable {
        var attempt: ReceivedReport.Attempt

        enum Keys: String, CodingKey {
            case tier, attempt, outcome, durationSeconds, bytes, error, timings
        }

        init(from decoder: any Decoder) throws {
            let fields = try decoder.container(keyedBy: Keys.self)
            let tier = try fields.tierName(.tier, required: true)!
            let number = try fields.wholeNumber(.attempt, atMost: 10_000)
            attempt = ReceivedReport.Attempt(
                tier: tier, attempt: number, outcome: try fields.choice(.outcome, of: ReceivedReport.AttemptOutcome.self),
                durationSeconds: try fields.seconds(.durationSeconds), bytes: try fields.byteCount(.bytes)
            )
            _ = try fields.text(.error, required: false)
            _ = try fields.decodeIfPresent(AttemptTimings.self, forKey: .timings)
        }
    }

    struct WriteBack: Decodable {
        enum Keys: String, CodingKey {
            case tier, outcome, error
        }

        init(from decoder: any Decoder) throws {
            let fields = try decoder.container(keyedBy: Keys.self)
            _ = try fields.tierName(.tier, required: true)
            _ = try fields.choice(.outcome, of: ReceivedReport.WriteBackOutcome.self)
            _ = try fields.text(.error, required: false)
        }
    }

    struct ArchiveSizes: Decodable {
        enum Keys: String, CodingKey {
            case compressedBytes, uncompressedBytes
        }

        init(from decoder: any Decoder) throws {
            let fields = try decoder.container(keyedBy: Keys.self)
            _ = try fields.byteCount(.compressedBytes)
            _ = try fields.byteCount(.uncompressedBytes)
        }
    }

    struct Timings: Decodable {
        enum Keys: String, CodingKey, CaseIterable {
            case promotionSeconds, oldTreeRemovalSeconds, writeBackSeconds
        }

        init(from decoder: any Decoder) throws {
            let fields = try decoder.container(keyedBy: Keys.self)
            for key in Keys.allCases { _ = try fields.number(key, required: false, atMost: ReceivedReport.maximumSeconds) }
        }
    }

    struct AttemptTimings: Decodable {
        enum Keys: String, CodingKey, CaseIterable {
            case connectSeconds, firstByteSeconds, transferSeconds, extractSeconds, extractTailSeconds
        }

        init(from decoder: any Decoder) throws {
            let fields = try decoder.container(keyedBy: Keys.self)
            for key in Keys.allCases { _ = try fields.number(key, required: false, atMost: ReceivedReport.maximumSeconds) }
        }
    }
}

extension KeyedDecodingContainer {
    fileprivate func problem(_ key: Key, _ message: String) -> DecodingError {
        DecodingError.dataCorruptedError(forKey: key, in: self, debugDescription: message)
    }

    /// A finite number from 0 to `maximum`; nil when absent or null and not `required`.
    fileprivate func number(_ key: Key, required: Bool, atMost maximum: Double) throws -> Double? {
        guard let value = required ? try decode(Double.self, forKey: key) : try decodeIfPresent(Double.self, forKey: key) else {
            return nil
        }
        guard value.isFinite, value >= 0, value <= maximum else {
            throw problem(key, "must be a number from 0 to \(Int(maximum))")
        }
        return value
    }

    fileprivate func seconds(_ key: Key) throws -> Double {
        try number(key, required: true, atMost: ReceivedReport.maximumSeconds)!
    }

    fileprivate func byteCount(_ key: Key) throws -> Int64 {
        Int64(try wholeNumber(key, atMost: Int(ReceivedReport.maximumBytes)))
    }

    /// A whole number from 0 to `maximum` (at most 2^53, so a Double holds it exactly):
    /// read as a number, so that `1.5` or `1e300` is named as this field's problem.
    fileprivate func wholeNumber(_ key: Key, atMost maximum: Int) throws -> Int {
        let value = try decode(Double.self, forKey: key)
        guard value.isFinite, value >= 0, value <= Double(maximum), value.rounded() == value else {
            throw problem(key, "must be a whole number from 0 to \(maximum)")
        }
        return Int(value)
    }

    /// One of an enumeration's raw values.
    fileprivate func choice<Choice: RawRepresentable & CaseIterable>(_ key: Key, of type: Choice.Type) throws -> Choice
    where Choice.RawValue == String {
        let raw = try decode(String.self, forKey: key)
        guard let value = Choice(rawValue: raw) else {
            throw problem(key, "expected one of " + Choice.allCases.map(\.rawValue).joined(separator: ", "))
        }
        return value
    }

    /// A string of bounded length (an error message, a host name, a path).
    fileprivate func text(_ key: Key, required: Bool) throws -> String? {
        guard let value = required ? try decode(String.self, forKey: key) : try decodeIfPresent(String.self, forKey: key) else {
            return nil
        }
        guard value.utf8.count <= ReceivedReport.maximumTextLength else {
            throw problem(key, "at most \(ReceivedReport.maximumTextLength) bytes")
        }
        return value
    }

    /// A tier's name: it becomes a metric label and a row of `cachetiers stats`, so it
    /// is short and printable.
    fileprivate func tierName(_ key: Key, required: Bool) throws -> String? {
        guard let name = required ? try decode(String.self, forKey: key) : try decodeIfPresent(String.self, forKey: key) else {
            return nil
        }
        // Counted in Unicode scalars, not characters: one character can carry thousands of
        // combining marks, and every comparison of such a name normalizes them again.
        guard !name.isEmpty, name.unicodeScalars.count <= ReceivedReport.maximumTierNameLength, DisplayText.isPlain(name) else {
            throw problem(
                key,
                "a tier name is 1 to \(ReceivedReport.maximumTierNameLength) printable Unicode scalars, \(DisplayText.problem)"
            )
        }
        // `none` and `other` are the labels /metrics and /v1/stats give failed restores
        // and the tiers beyond their caps: a tier of that name would merge with them.
        guard !ReceivedReport.reservedTierNames.contains(name) else {
            throw problem(key, "\(name) is reserved (it labels failed restores and the tiers beyond the caps)")
        }
        return name
    }
}

/// Text from a report that is printed as a row or a label (a tier name, a host): no
/// control characters (C0, DEL, C1), no invisible format characters (Unicode category
/// Cf: bidi overrides, zero-width spaces), no line or paragraph separators, and no
/// whitespace at either end, so what a terminal shows is what was sent.
enum DisplayText {
    static let problem = "without control or format characters or whitespace at either end"

    static func isPlain(_ text: String) -> Bool {
        guard let first = text.unicodeScalars.first, let last = text.unicodeScalars.last,
            !first.properties.isWhitespace, !last.properties.isWhitespace
        else { return false }
        return text.unicodeScalars.allSatisfy { scalar in
            switch scalar.properties.generalCategory {
            case .control, .format, .lineSeparator, .paragraphSeparator: false
            default: true
            }
        }
    }
}

/// RFC 3339 times in UTC, with or without fractional seconds, such as
/// `2026-12-01T18:40:12.345Z`; strictly: a date or time that does not exist (February
/// 30th, 25:00, a 61st minute, a leap second) is refused, not rolled over.
enum Timestamp {
    private static let fractional = Date.ISO8601FormatStyle(includingFractionalSeconds: true)
    private static let whole = Date.ISO8601FormatStyle()

    static func parse(_ text: String) -> Date? {
        let bytes = Array(text.utf8)
        guard bytes.count >= 20, bytes.count <= 40, bytes.last == UInt8(ascii: "Z") else { return nil }
        // YYYY-MM-DDTHH:MM:SS, then either Z or a fraction of 1 to 9 digits and Z.
        let shape = Array("dddd-dd-ddTdd:dd:dd".utf8)
        for (byte, expected) in zip(bytes, shape) {
            guard expected == UInt8(ascii: "d") ? (0x30...0x39).contains(byte) : byte == expected else { return nil }
        }
        let fraction = bytes[19..<(bytes.count - 1)]
        if !fraction.isEmpty {
            guard fraction.first == UInt8(ascii: "."), (2...10).contains(fraction.count),
                fraction.dropFirst().allSatisfy({ (0x30...0x39).contains($0) })
            else { return nil }
        }
        guard let date = (try? fractional.parse(text)) ?? (try? whole.parse(text)) else { return nil }
        // The parser rolls an impossible field over (February 30th is March 2nd):
        // formatted back, a real instant gives the same fields.
        guard whole.format(date).utf8.elementsEqual(bytes[..<19] + [UInt8(ascii: "Z")]) else { return nil }
        return date
    }
}
