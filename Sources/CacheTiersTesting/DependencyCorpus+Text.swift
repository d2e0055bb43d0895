/// The contents of a ``DependencyCorpus``: JavaScript, minified bundles, source maps,
/// declarations, JSON, Markdown and licence texts, generated from a vocabulary of
/// identifiers so they compress the way real package sources do.
struct CorpusText {
    static let words: [String] = """
        function return const value result options config module exports require import export default async \
        await promise resolve reject error callback args length index string number object array null \
        undefined true false typeof prototype constructor window document process env node path buffer \
        stream event emitter listener handler request response status headers body data parse stringify \
        encode decode transform plugin loader compiler webpack babel eslint typescript react props state \
        render component element child children key ref context provider consumer hook effect memo reducer \
        dispatch action payload type schema validate assert test expect describe before after each spy mock \
        cache queue token scope range match pattern source target format locale date time timer interval
        """.split(separator: " ").map(String.init)

    /// The identifiers one package uses: shared words plus names of its own, so packages
    /// resemble each other without being copies.
    struct Vocabulary {
        var identifiers: [String]
        /// Lines this package repeats across its files (its helpers, its idioms), as
        /// real packages do: most of why a tree compresses well within a small window.
        var idioms: [String] = []

        init(random: inout CorpusRandom) {
            var identifiers: [String] = []
            for _ in 0..<24 {
                let word = random.pick(CorpusText.words)
                switch random.below(5) {
                case 0: identifiers.append(word)
                case 1: identifiers.append(word + random.pick(["Map", "List", "Fn", "Id", "Set", "Handler", "Options"]))
                case 2: identifiers.append("_" + word)
                case 3: identifiers.append(word + String(random.below(100)))
                default: identifiers.append(random.pick(CorpusText.words) + word.prefix(1).uppercased() + word.dropFirst())
                }
            }
            self.identifiers = identifiers
        }
    }

    /// Lines every transpiled package is full of.
    static let boilerplate = [
        "Object.defineProperty(exports, \"__esModule\", { value: true });",
        "function _interopRequireDefault(obj) { return obj && obj.__esModule ? obj : { default: obj }; }",
        "if (typeof module !== 'undefined' && module.exports) {",
        "var __awaiter = (this && this.__awaiter) || function (thisArg, _arguments, P, generator) {",
        "return new (P || (P = Promise))(function (resolve, reject) {",
        "exports.default = void 0;",
        "'use strict';",
        "}, { key: 'render', value: function render() {",
        "throw new TypeError(\"Cannot call a class as a function\");",
        "for (var key in source) { if (Object.prototype.hasOwnProperty.call(source, key)) { target[key] = source[key]; } }",
    ]

    /// Polyfills and helpers that many packages vendor verbatim.
    private var polyfills: [[UInt8]] = []

    init(seed: UInt64) {
        var random = CorpusRandom(seed: seed ^ 0x5EED_F111)
        for _ in 0..<40 {
            var vocabulary = Vocabulary(random: &random)
            let size = Int(random.logNormal(mu: 7.5, sigma: 0.8))
            polyfills.append(Self.javascriptLines(&random, vocabulary: &vocabulary, size: max(200, min(size, 40_000))))
        }
    }

    func polyfill(_ random: inout CorpusRandom) -> [UInt8] {
        polyfills[random.below(polyfills.count)]
    }

    func sentence(_ random: inout CorpusRandom, vocabulary: Vocabulary) -> String {
        (0..<(4 + random.below(8))).map { _ in random.chance(0.3) ? random.pick(vocabulary.identifiers) : random.pick(Self.words) }
            .joined(separator: " ")
    }

    func javascript(_ random: inout CorpusRandom, vocabulary: inout Vocabulary, size: Int) -> [UInt8] {
        Self.javascriptLines(&random, vocabulary: &vocabulary, size: size)
    }

    static func javascriptLines(_ random: inout CorpusRandom, vocabulary: inout Vocabulary, size: Int) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(size + 128)
        var depth = 0
        func id(_ random: inout CorpusRandom) -> String { random.pick(vocabulary.identifiers) }
        out += Array("'use strict';\n\n".utf8)
        while out.count < size {
            let indent = String(repeating: "  ", count: depth)
            if vocabulary.idioms.count >= 40, random.chance(0.55) {
                out += Array((indent + random.pick(vocabulary.idioms)).utf8)
                out.append(UInt8(ascii: "\n"))
                continue
            }
            let line: String
            switch random.below(16) {
            case 0:
                line = "function \(id(&random))(\(id(&random)), \(id(&random))) {"
                depth += 1
            case 1, 2:
                line = "\(indent)const \(id(&random)) = \(id(&random)).\(id(&random))(\(id(&random)), \(random.below(8)));"
            case 12, 13:
                line = indent + random.pick(boilerplate)
            case 14:
                line = "\(indent)var \(id(&random)) = _interopRequireDefault(require(\"./\(id(&random))\"));"
            case 15:
                line = "\(indent)/**\n\(indent) * @param {\(random.pick(["string", "number", "Object", "Function"]))} \(id(&random))\n\(indent) * @returns {\(random.pick(["Promise<void>", "boolean", "*"]))}\n\(indent) */"
            case 3:
                line = "\(indent)if (\(id(&random)) === \(random.pick(["null", "undefined", "0", "''", "false"]))) {"
                depth += 1
            case 4:
                line = "\(indent)// " + (0..<(3 + random.below(9))).map { _ in random.pick(words) }.joined(separator: " ")
            case 5 where depth > 0:
                depth -= 1
                line = String(repeating: "  ", count: depth) + "}"
            case 6:
                line = "\(indent)return \(id(&random))(\(id(&random)));"
            case 7:
                line = "\(indent)\(id(&random)).\(id(&random)) = function (\(id(&random))) { return this.\(id(&random)); };"
            case 8:
                line = "\(indent)throw new TypeError('\(id(&random)) must be a \(random.pick(["string", "number", "function", "object"]))');"
            case 9:
                line = "\(indent)for (let i = 0; i < \(id(&random)).length; i++) \(id(&random)).push(\(id(&random))[i]);"
            default:
                line = "module.exports.\(id(&random)) = \(id(&random));"
            }
            out += Array(line.utf8)
            out.append(UInt8(ascii: "\n"))
            if vocabulary.idioms.count < 40, !line.hasSuffix("{"), !line.hasPrefix(" ") { vocabulary.idioms.append(line) }
        }
        while depth > 0 {
            depth -= 1
            out += Array("}\n".utf8)
        }
        return out
    }

    /// One long line, short names, no comments: compresses a good deal worse than sources.
    func minified(_ random: inout CorpusRandom, vocabulary: inout Vocabulary, size: Int) -> [UInt8] {
        var out: [UInt8] = Array("!function(e,t){\"use strict\";".utf8)
        out.reserveCapacity(size + 64)
        let short = (0..<60).map { _ in String(UnicodeScalar(UInt8(97 + random.below(26)))) + (random.chance(0.5) ? String(random.below(10)) : "") }
        while out.count < size {
            let a = random.pick(short), b = random.pick(short), c = random.pick(short)
            let piece: String
            switch random.below(6) {
            case 0: piece = "var \(a)=\(b)(\(c),\(random.below(16)));"
            case 1: piece = "function \(a)(\(b),\(c)){return \(b).\(random.pick(vocabulary.identifiers))(\(c))}"
            case 2: piece = "\(a).prototype.\(random.pick(vocabulary.identifiers))=function(\(b)){return this.\(c)=\(b),this};"
            case 3: piece = "if(\(a)===void 0)throw new Error(\"\(random.pick(vocabulary.identifiers))\");"
            case 4: piece = "\(a)=\(b)?\(c):\(random.pick(["null", "void 0", "!0", "!1"]));"
            default: piece = "e.exports.\(random.pick(vocabulary.identifiers))=\(a);"
            }
            out += Array(piece.utf8)
        }
        out += Array("}(this);\n".utf8)
        return out
    }

    /// A version 3 source map: the package's sources embedded (`sourcesContent`, as
    /// bundlers write them), then `mappings` in base64 VLQ, dense and poorly compressible.
    func sourceMap(_ random: inout CorpusRandom, size: Int, source: String, sources: [[UInt8]]) -> [UInt8] {
        let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
        var out = Array("{\"version\":3,\"file\":\"\(source).min.js\",\"sources\":[\"../src/index.js\"],\"sourcesContent\":[\"".utf8)
        out.reserveCapacity(size + 64)
        for (index, text) in sources.enumerated() where out.count < size * 3 / 4 {
            if index > 0 { out += Array("\",\"".utf8) }
            for byte in text {
                switch byte {
                case UInt8(ascii: "\n"): out += Array("\\n".utf8)
                case UInt8(ascii: "\""), UInt8(ascii: "\\"): out += [UInt8(ascii: "\\"), byte]
                default: out.append(byte)
                }
            }
        }
        out += Array("\"],\"names\":[],\"mappings\":\"".utf8)
        while out.count < size {
            for _ in 0..<(2 + random.below(5)) { out.append(alphabet[random.below(random.chance(0.8) ? 8 : 64)]) }
            out.append(random.chance(0.1) ? UInt8(ascii: ";") : UInt8(ascii: ","))
        }
        out += Array("\"}\n".utf8)
        return out
    }

    func declarations(_ random: inout CorpusRandom, vocabulary: Vocabulary, size: Int) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(size + 128)
        let types = ["string", "number", "boolean", "unknown", "Promise<void>", "Record<string, unknown>", "readonly string[]"]
        while out.count < size {
            let name = random.pick(vocabulary.identifiers)
            var text = "export interface \(name.prefix(1).uppercased() + name.dropFirst())Options {\n"
            for _ in 0..<(2 + random.below(6)) {
                text += "  \(random.pick(vocabulary.identifiers))\(random.chance(0.4) ? "?" : ""): \(random.pick(types));\n"
            }
            text += "}\nexport declare function \(random.pick(vocabulary.identifiers))(options?: \(name.prefix(1).uppercased() + name.dropFirst())Options): \(random.pick(types));\n"
            out += Array(text.utf8)
        }
        return out
    }

    func json(_ random: inout CorpusRandom, vocabulary: Vocabulary, size: Int) -> [UInt8] {
        var out: [UInt8] = Array("{\n".utf8)
        var first = true
        while out.count < size {
            let value = random.chance(0.5) ? "\"\(random.pick(vocabulary.identifiers))\"" : "\(random.below(100_000))"
            out += Array(((first ? "" : ",\n") + "  \"\(random.pick(vocabulary.identifiers))\(random.below(1000))\": \(value)").utf8)
            first = false
        }
        out += Array("\n}\n".utf8)
        return out
    }

    func markdown(_ random: inout CorpusRandom, vocabulary: Vocabulary, title: String, size: Int) -> [UInt8] {
        var out = Array("# \(title)\n\n".utf8)
        while out.count < size {
            switch random.below(4) {
            case 0:
                out += Array("## \(sentence(&random, vocabulary: vocabulary))\n\n".utf8)
            case 1:
                out += Array("```js\nconst \(random.pick(vocabulary.identifiers)) = require('\(title)');\n```\n\n".utf8)
            default:
                out += Array("\(sentence(&random, vocabulary: vocabulary)). \(sentence(&random, vocabulary: vocabulary)).\n\n".utf8)
            }
        }
        return out
    }

    /// The licence texts packages carry verbatim, but for the year and holder.
    struct Licence {
        var name: String
        var body: String

        func text(year: Int, holder: String) -> [UInt8] {
            Array(body.replacingOccurrences(of: "{year}", with: "\(year)").replacingOccurrences(of: "{holder}", with: holder).utf8)
        }
    }

    static let licences: [Licence] = [mit, mit, mit, isc, apache, bsd3]

    static let mit = Licence(name: "MIT", body: """
        The MIT License (MIT)

        Copyright (c) {year} {holder}

        Permission is hereby granted, free of charge, to any person obtaining a copy of this software and \
        associated documentation files (the "Software"), to deal in the Software without restriction, including \
        without limitation the rights to use, copy, modify, merge, publish, distribute, sublicense, and/or sell \
        copies of the Software, and to permit persons to whom the Software is furnished to do so, subject to the \
        following conditions:

        The above copyright notice and this permission notice shall be included in all copies or substantial \
        portions of the Software.

        THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT NOT \
        LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO \
        EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER \
        IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE \
        USE OR OTHER DEALINGS IN THE SOFTWARE.

        """)

    static let isc = Licence(name: "ISC", body: """
        The ISC License

        Copyright (c) {year} {holder}

        Permission to use, copy, modify, and/or distribute this software for any purpose with or without fee is \
        hereby granted, provided that the above copyright notice and this permission notice appear in all copies.

        THE SOFTWARE IS PROVIDED "AS IS" AND THE AUTHOR DISCLAIMS ALL WARRANTIES WITH REGARD TO THIS SOFTWARE \
        INCLUDING ALL IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS. IN NO EVENT SHALL THE AUTHOR BE LIABLE FOR \
        ANY SPECIAL, DIRECT, INDIRECT, OR CONSEQUENTIAL DAMAGES OR ANY DAMAGES WHATSOEVER RESULTING FROM LOSS OF USE, \
        DATA OR PROFITS, WHETHER IN AN ACTION OF CONTRACT, NEGLIGENCE OR OTHER TORTIOUS ACTION, ARISING OUT OF OR IN \
        CONNECTION WITH THE USE OR PERFORMANCE OF THIS SOFTWARE.

        """)

    static let bsd3 = Licence(name: "BSD-3-Clause", body: """
        Copyright (c) {year}, {holder}
        All rights reserved.

        Redistribution and use in source and binary forms, with or without modification, are permitted provided \
        that the following conditions are met:

        1. Redistributions of source code must retain the above copyright notice, this list of conditions and the \
        following disclaimer.
        2. Redistributions in binary form must reproduce the above copyright notice, this list of conditions and \
        the following disclaimer in the documentation and/or other materials provided with the distribution.
        3. Neither the name of the copyright holder nor the names of its contributors may be used to endorse or \
        promote products derived from this software without specific prior written permission.

        THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS" AND ANY EXPRESS OR IMPLIED \
        WARRANTIES ARE DISCLAIMED.

        """)

    static let apache = Licence(name: "Apache-2.0", body: """
                                         Apache License
                                   Version 2.0, January 2004
                                http://www.apache.org/licenses/

           TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION

           1. Definitions.

              "License" shall mean the terms and conditions for use, reproduction, and distribution as defined by \
        Sections 1 through 9 of this document.

              "Licensor" shall mean the copyright owner or entity authorized by the copyright owner that is granting \
        the License.

              "Legal Entity" shall mean the union of the acting entity and all other entities that control, are \
        controlled by, or are under common control with that entity.

              "Source" form shall mean the preferred form for making modifications, including but not limited to \
        software source code, documentation source, and configuration files.

              "Object" form shall mean any form resulting from mechanical transformation or translation of a Source \
        form, including but not limited to compiled object code, generated documentation, and conversions to other \
        media types.

           2. Grant of Copyright License. Subject to the terms and conditions of this License, each Contributor \
        hereby grants to You a perpetual, worldwide, non-exclusive, no-charge, royalty-free, irrevocable copyright \
        license to reproduce, prepare Derivative Works of, publicly display, publicly perform, sublicense, and \
        distribute the Work and such Derivative Works in Source or Object form.

           3. Grant of Patent License. Subject to the terms and conditions of this License, each Contributor hereby \
        grants to You a perpetual, worldwide, non-exclusive, no-charge, royalty-free, irrevocable patent license to \
        make, have made, use, offer to sell, sell, import, and otherwise transfer the Work.

           Copyright {year} {holder}

           Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in \
        compliance with the License. You may obtain a copy of the License at

               http://www.apache.org/licenses/LICENSE-2.0

        """)
}
