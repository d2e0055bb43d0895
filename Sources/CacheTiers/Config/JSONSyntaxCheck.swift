/// Finds where JSON text goes wrong, for a config error a person can act on:
/// Foundation's decoder says only "The given data was not valid JSON", with no place.
enum JSONSyntaxCheck {
    /// The first problem in `bytes`, or nil when the text is valid JSON whose numbers
    /// all fit a double.
    static func firstProblem(in bytes: [UInt8]) -> Problem? {
        var scanner = Scanner(bytes: bytes)
        do throws(Problem) {
            scanner.skipWhitespace()
            try scanner.value(depth: 0)
            scanner.skipWhitespace()
            if scanner.index < bytes.count { throw scanner.unexpected("the end of the file after the top-level value") }
            return nil
        } catch {
            return error
        }
    }

    struct Problem: Error, CustomStringConvertible {
        /// `line L, column C: what`.
        var description: String
        /// False for valid syntax that no reader can use: a number beyond a double's range.
        var isSyntax = true
    }

    private struct Scanner {
        let bytes: [UInt8]
        var index = 0

        init(bytes: [UInt8]) {
            self.bytes = bytes
        }

        /// 1-based line and column (in characters) of `offset`.
        func position(_ offset: Int) -> String {
            var line = 1
            var column = 1
            for byte in bytes[..<min(offset, bytes.count)] {
                if byte == UInt8(ascii: "\n") {
                    line += 1
                    column = 1
                } else if byte & 0xC0 != 0x80 {
                    column += 1
                }
            }
            return "line \(line), column \(column)"
        }

        func problem(at offset: Int, _ what: String) -> Problem {
            Problem(description: "\(position(offset)): \(what)")
        }

        func unexpected(_ expected: String) -> Problem {
            guard index < bytes.count else {
                // Point at the last character, not past it.
                var last = bytes.count - 1
                while last >= 0, Self.isWhitespace(bytes[last]) { last -= 1 }
                guard last >= 0 else { return Problem(description: "the file is empty") }
                return Problem(description: "the file ends after \(position(last)) before the JSON is complete (a missing } or ]?)")
            }
            let scalar = bytes[index] < 0x80 ? "'\(Character(Unicode.Scalar(bytes[index])))'" : "a non-ASCII character"
            return problem(at: index, "expected \(expected), found \(scalar)")
        }

        static func isWhitespace(_ byte: UInt8) -> Bool {
            byte == 0x20 || byte == 0x0A || byte == 0x0D || byte == 0x09
        }

        mutating func skipWhitespace() {
            while index < bytes.count, Self.isWhitespace(bytes[index]) { index += 1 }
        }

        mutating func expect(_ byte: UInt8, _ expected: String) throws(Problem) {
            guard index < bytes.count, bytes[index] == byte else { throw unexpected(expected) }
            index += 1
        }

        mutating func value(depth: Int) throws(Problem) {
            guard depth < 512 else { throw problem(at: index, "nested more than 512 levels deep") }
            guard index < bytes.count else { throw unexpected("a value") }
            switch bytes[index] {
            case UInt8(ascii: "{"): try object(depth: depth)
            case UInt8(ascii: "["): try array(depth: depth)
            case UInt8(ascii: "\""): try string()
            case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): try number()
            case UInt8(ascii: "t"): try literal("true")
            case UInt8(ascii: "f"): try literal("false")
            case UInt8(ascii: "n"): try literal("null")
            default: throw unexpected("a value")
            }
        }

        mutating func object(depth: Int) throws(Problem) {
            index += 1
            skipWhitespace()
            if index < bytes.count, bytes[index] == UInt8(ascii: "}") {
                index += 1
                return
            }
            while true {
                skipWhitespace()
                guard index < bytes.count, bytes[index] == UInt8(ascii: "\"") else {
                    throw unexpected("a field name in double quotes")
                }
                try string()
                skipWhitespace()
                try expect(UInt8(ascii: ":"), "':' after the field name")
                skipWhitespace()
                try value(depth: depth + 1)
                skipWhitespace()
                guard index < bytes.count, bytes[index] == UInt8(ascii: ",") || bytes[index] == UInt8(ascii: "}") else {
                    throw unexpected("',' or '}'")
                }
                index += 1
                if bytes[index - 1] == UInt8(ascii: "}") { return }
            }
        }

        mutating func array(depth: Int) throws(Problem) {
            index += 1
            skipWhitespace()
            if index < bytes.count, bytes[index] == UInt8(ascii: "]") {
                index += 1
                return
            }
            while true {
                skipWhitespace()
                try value(depth: depth + 1)
                skipWhitespace()
                guard index < bytes.count, bytes[index] == UInt8(ascii: ",") || bytes[index] == UInt8(ascii: "]") else {
                    throw unexpected("',' or ']'")
                }
                index += 1
                if bytes[index - 1] == UInt8(ascii: "]") { return }
            }
        }

        mutating func string() throws(Problem) {
            let start = index
            index += 1
            while index < bytes.count {
                let byte = bytes[index]
                switch byte {
                case UInt8(ascii: "\""):
                    index += 1
                    return
                case UInt8(ascii: "\\"):
                    let escape = index
                    index += 1
                    guard index < bytes.count else { break }
                    switch bytes[index] {
                    case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"), UInt8(ascii: "b"), UInt8(ascii: "f"),
                        UInt8(ascii: "n"), UInt8(ascii: "r"), UInt8(ascii: "t"):
                        index += 1
                    case UInt8(ascii: "u"):
                        let digits = bytes[(index + 1)...].prefix(4)
                        guard digits.count == 4, digits.allSatisfy({ Character(Unicode.Scalar($0)).isHexDigit }) else {
                            throw problem(at: escape, "\\u must be followed by four hexadecimal digits")
                        }
                        index += 5
                    default:
                        throw problem(at: escape, "unknown escape in a string; write \\\\ for a backslash")
                    }
                case 0..<0x20:
                    throw problem(at: index, "a string holds a raw control character or line break; write \\n, \\t or \\u00XX")
                default:
                    index += 1
                }
            }
            throw problem(at: start, "the string that starts here never ends (a missing \")")
        }

        mutating func number() throws(Problem) {
            let start = index
            func digits() -> Int {
                let first = index
                while index < bytes.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[index]) { index += 1 }
                return index - first
            }
            if bytes[index] == UInt8(ascii: "-") { index += 1 }
            let integer = index
            guard digits() > 0 else { throw unexpected("a digit") }
            if bytes[integer] == UInt8(ascii: "0"), index - integer > 1 {
                throw problem(at: start, "a number must not start with 0")
            }
            if index < bytes.count, bytes[index] == UInt8(ascii: ".") {
                index += 1
                guard digits() > 0 else { throw unexpected("a digit after the decimal point") }
            }
            if index < bytes.count, bytes[index] == UInt8(ascii: "e") || bytes[index] == UInt8(ascii: "E") {
                index += 1
                if index < bytes.count, bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "-") { index += 1 }
                guard digits() > 0 else { throw unexpected("a digit in the exponent") }
            }
            let text = String(decoding: bytes[start..<index], as: UTF8.self)
            guard let value = Double(text), value.isFinite else {
                var tooLarge = problem(at: start, "the number \(text) is too large for a double")
                tooLarge.isSyntax = false
                throw tooLarge
            }
        }

        mutating func literal(_ word: String) throws(Problem) {
            let expected = Array(word.utf8)
            guard bytes[index...].starts(with: expected) else {
                throw unexpected("a value (true, false, null, a number, a string, [ or {)")
            }
            index += expected.count
        }
    }
}
