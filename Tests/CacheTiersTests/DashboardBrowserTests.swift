import CacheTiersTesting
import Foundation
import SystemPackage
import Testing

extension Trait where Self == ConditionTrait {
    /// Runs the test when Chromium is installed, and always in CI (where a missing browser
    /// is a failure, not a skip).
    static var needsChromium: Self {
        .enabled(
            if: HeadlessChromium.binary != nil || GCSHarness.isCI,
            "SKIPPED: chromium is not installed (apt-get install chromium); CI installs it and runs these"
        )
    }
}

/// The cache master's dashboard as an operator sees it: a real headless Chromium logs in
/// through the page's form, reads the rendered figures, refreshes in place and takes the
/// screenshot the README shows.
@Suite("Dashboard in a real browser", .serialized)
struct DashboardBrowserTests {
    static let token = "dashboard-token-7f3a9c"

    /// What the page shows, read from the DOM hooks of Documentation/Dashboard.md.
    struct Rendered: Decodable {
        var path: String
        var cookie: String
        var window: String
        var metrics: [String: String]
        var figures: [String: String]
        var targets: [String: String]
        var tiers: [String: [String: String]]
        var alerts: [String]
        var slowest: [String]
        var slowestServedBy: String?
        var lines: [String]
        var restoresOverTime: Int
        var distributionBins: Int
    }

    static let readPage = """
        (() => {
          const all = (selector) => [...document.querySelectorAll(selector)];
          const metrics = {}, figures = {};
          for (const element of all('#dashboard [data-metric]')) {
            if (element.closest('#tiers')) continue;
            metrics[element.dataset.metric] = element.dataset.value ?? '';
            figures[element.dataset.metric] = element.textContent.trim();
          }
          const targets = {};
          for (const element of all('[data-target]')) targets[element.dataset.target] = element.dataset.met;
          const tiers = {};
          for (const row of all('#tiers tr[data-tier]')) {
            tiers[row.dataset.tier] = {
              restores: row.querySelector('[data-metric="tierRestores"]')?.dataset.value ?? '',
              share: row.querySelector('[data-metric="tierShare"]')?.dataset.value ?? '',
            };
          }
          return {
            path: location.pathname + location.search,
            cookie: document.cookie,
            window: document.querySelector('#windows [aria-current="page"]')?.dataset.window ?? '',
            metrics, figures, targets, tiers,
            alerts: all('#alerts li[data-alert]').map((item) => item.dataset.alert).sort(),
            slowest: all('#slowest tr[data-report-id]').map((row) => row.dataset.reportId),
            slowestServedBy: document.querySelector('#slowest tr[data-report-id] [data-field="servedBy"]')?.textContent.trim(),
            lines: all('svg line[data-line]').map((line) => line.dataset.line).sort(),
            restoresOverTime: all('#restores-over-time rect[data-count]').length,
            distributionBins: all('#duration-distribution rect[data-bin-upper]').length,
          };
        })()
        """

    @Test(.needsChromium, .timeLimit(.minutes(3)))
    func anOperatorLogsInReadsTheFleetAndTheRefreshKeepsThePage() async throws {
        try await PeerHarness.with(token: Self.token) { peer in
            // 40 cache-master hits of 20…59 s, one of 150 s, 6 GCS fallbacks of 70 s at
            // 0.004 USD, 4 failures: all in the last 20 minutes.
            let now = Date()
            var reports: [FleetReport] = (0..<40).map { index in
                FleetReport(finishedAt: now.addingTimeInterval(-Double(index * 20)), durationSeconds: Double(20 + index))
            }
            let slow = FleetReport(finishedAt: now.addingTimeInterval(-30), durationSeconds: 150)
            reports.append(slow)
            reports += (0..<6).map { index in
                FleetReport(
                    finishedAt: now.addingTimeInterval(-Double(100 + index)), servedBy: "gcs", durationSeconds: 70,
                    costUSD: 0.004, attempts: [("cache-master", "miss"), ("gcs", "hit")]
                )
            }
            reports += (0..<4).map { index in
                FleetReport(
                    finishedAt: now.addingTimeInterval(-Double(200 + index)), servedBy: nil, durationSeconds: 30,
                    attempts: [("cache-master", "timeout"), ("gcs", "error")]
                )
            }
            for report in reports { try await Self.post(report, to: peer) }

            let browser = try await HeadlessChromium.start()
            defer { browser.stop() }
            let page = try await browser.newPage()

            try await page.navigate(to: peer.url + "/")
            let login: [String] = try await page.evaluate(
                "[!!document.querySelector('form#login'), !!document.querySelector('#dashboard')].map(String)"
            )
            #expect(login == ["true", "false"], "without a session the page asks for the token, and shows no figure")

            try await page.navigating(
                by: "document.getElementById('token').value = '\(Self.token)'; document.getElementById('login').submit()"
            )
            let shown: Rendered = try await page.evaluate(Self.readPage)
            #expect(shown.path == "/?window=24h", "the login lands on the dashboard's window")
            #expect(!shown.path.contains(Self.token), "the token never lands in the address bar (or a log)")
            #expect(!shown.cookie.contains("cachetiers_session"), "the session cookie is HttpOnly: page scripts cannot read it")
            #expect(!shown.cookie.contains(Self.token))
            #expect(shown.window == "24h")

            #expect(shown.metrics["restores"] == "51")
            #expect(shown.metrics["restored"] == "47")
            #expect(shown.metrics["failed"] == "4")
            #expect(shown.metrics["fallbacks"] == "6")
            #expect(Double(shown.metrics["successRate"] ?? "").map { abs($0 - 47.0 / 51) < 1e-9 } == true)
            #expect(shown.figures["successRate"] == "92.2 %")
            // Nearest rank over the 47 restored: the 24th is 43 s, the 43rd 70 s, the 47th 150 s.
            #expect(shown.metrics["p50"] == "43")
            #expect(shown.metrics["p90"] == "70")
            #expect(shown.metrics["p99"] == "150")
            #expect(Double(shown.metrics["costUSD"] ?? "").map { abs($0 - 0.024) < 1e-9 } == true)
            #expect(shown.targets == ["transfer": "true", "successRate": "false", "monthlyCost": "true", "maintenance": "unknown"])
            #expect(shown.tiers["cache-master"]?["restores"] == "41")
            #expect(shown.tiers["gcs"]?["restores"] == "6")
            #expect(Double(shown.tiers["gcs"]?["share"] ?? "").map { abs($0 - 6.0 / 51) < 1e-9 } == true)
            // The 150 s restore is over the 120 s line; 4 of 51 failed in 6 h and in 30 min
            // is more than 6 times the 1 % budget, with at least 3 failures.
            #expect(shown.alerts == ["CacheTiersErrorBudgetBurnSlow", "CacheTiersSlowRestore"])
            #expect(shown.slowest.first == slow.id, "the slowest restore leads its table")
            #expect(shown.slowestServedBy == "cache-master")
            #expect(shown.lines == ["alert-120", "alert-90", "target-90", "target-99"])
            #expect(shown.restoresOverTime > 0)
            #expect(shown.distributionBins > 0)

            // A new report, then the page's own refresh: the figures change, the document
            // (and whatever state it holds) stays.
            _ = try await page.evaluate("window.keptAcrossRefresh = 'yes'", as: String.self)
            try await Self.post(FleetReport(durationSeconds: 25), to: peer)
            _ = try await page.evaluate("window.cachetiersRefresh().then(() => 'done')", as: String.self)
            let refreshed: Rendered = try await page.evaluate(Self.readPage)
            #expect(refreshed.metrics["restores"] == "52")
            let kept: [String] = try await page.evaluate(
                "[String(window.keptAcrossRefresh), String(performance.getEntriesByType('navigation').length)]"
            )
            #expect(kept == ["yes", "1"], "refreshed in place: no navigation, no flash")

            // The session cookie reads; it does not write (no cross-site request can publish).
            let put: Int = try await page.evaluate(
                "fetch('/v1/caches/node-modules-aaa', {method: 'PUT', body: 'x'}).then((answer) => answer.status)"
            )
            #expect(put == 401)

            // Another window is a link away, and keeps the session.
            try await page.navigating(by: "document.querySelector('#windows a[data-window=\"1h\"]').click()")
            let hour: Rendered = try await page.evaluate(Self.readPage)
            #expect(hour.window == "1h")
            #expect(hour.path == "/?window=1h")
            #expect(hour.metrics["restores"] == "52")

            let screenshot = peer.scratch.path.appending("dashboard.png")
            try await page.screenshot(to: screenshot)
            try Self.expectPNG(at: screenshot, width: 1280)
        }
    }

    @Test(.needsChromium, .timeLimit(.minutes(2)))
    func aWrongTokenIsToldSoAndGetsNoSession() async throws {
        try await PeerHarness.with(token: Self.token) { peer in
            let browser = try await HeadlessChromium.start()
            defer { browser.stop() }
            let page = try await browser.newPage()
            try await page.navigate(to: peer.url + "/")
            try await page.navigating(
                by: "document.getElementById('token').value = 'not-the-token'; document.getElementById('login').submit()"
            )
            let answer: [String] = try await page.evaluate(
                "[document.body.innerText.includes(\"That token is not this cache master's.\"), !!document.querySelector('#dashboard'), !!document.querySelector('form#login')].map(String)"
            )
            #expect(answer == ["true", "false", "true"])
            let stats: Int = try await page.evaluate("fetch('/v1/stats').then((answer) => answer.status)")
            #expect(stats == 401, "a failed login leaves no session")
        }
    }

    /// A day of a small fleet, as the README's screenshot shows it: about 600 boots over 24
    /// hours, mostly served by the cache master, some by GCS, a few fresh installs and
    /// failures, and one slow restore within the hour.
    @Test(.needsChromium, .timeLimit(.minutes(3)))
    func aDayOfAFleetRendersAndIsPhotographed() async throws {
        try await PeerHarness.with { peer in
            var generator = CorpusRandom(seed: 15)
            let now = Date()
            var expected = 0
            for index in 0..<600 {
                let age = Double(index) * 86_000 / 600 + Double(generator.below(60))
                let roll = generator.below(100)
                let duration = 40 + Double(generator.below(3_000)) / 100
                var report = FleetReport(
                    finishedAt: now.addingTimeInterval(-age), key: "node-modules-\(["3f9a", "b71c", "e204"][index % 3])",
                    durationSeconds: duration, bytes: 420_000_000, measuredPhases: true
                )
                switch roll {
                case 0..<86: break
                case 86..<94:
                    report.servedBy = "gcs"
                    report.durationSeconds = duration + 12
                    report.costUSD = 0.0042
                    report.attempts = [("cache-master", "miss"), ("gcs", "hit")]
                case 94..<99:
                    report.servedBy = "fresh-install"
                    report.durationSeconds = 300 + Double(generator.below(10_000)) / 100
                    report.attempts = [("cache-master", "miss"), ("gcs", "miss"), ("fresh-install", "hit")]
                default:
                    report.servedBy = nil
                    report.attempts = [("cache-master", "timeout"), ("gcs", "error"), ("fresh-install", "error")]
                }
                if index == 3 { report.durationSeconds = 131 }
                try await Self.post(report, to: peer)
                expected += 1
            }
            let browser = try await HeadlessChromium.start()
            defer { browser.stop() }
            let page = try await browser.newPage()
            try await page.navigate(to: peer.url + "/?window=24h")
            let shown: Rendered = try await page.evaluate(Self.readPage)
            #expect(shown.metrics["restores"] == "\(expected)")
            #expect(Set(shown.tiers.keys).isSuperset(of: ["cache-master", "gcs", "fresh-install"]))
            #expect(shown.alerts.contains("CacheTiersSlowRestore"))
            #expect(shown.restoresOverTime >= 40, "a day's restores are drawn over its half-hour buckets")

            let screenshot = peer.scratch.path.appending("dashboard.png")
            try await page.screenshot(to: screenshot)
            try Self.expectPNG(at: screenshot, width: 1280)
            // `CACHETIERS_DASHBOARD_SCREENSHOT=Documentation/dashboard.png swift test --filter
            // DashboardBrowserTests` refreshes the picture the README shows.
            if let copy = ProcessInfo.processInfo.environment["CACHETIERS_DASHBOARD_SCREENSHOT"], !copy.isEmpty {
                try? FileManager.default.removeItem(atPath: copy)
                try FileManager.default.copyItem(atPath: screenshot.string, toPath: copy)
            }
        }
    }

    static func post(_ report: FleetReport, to peer: PeerHarness) async throws {
        let answer = try await peer.send(
            .POST, "/v1/reports",
            headers: [("Content-Type", "application/json"), ("Authorization", "Bearer \(token)")], body: report.body
        )
        guard answer.status == 201 else {
            throw FixtureError("the master refused a report: \(answer.status) \(String(decoding: answer.body, as: UTF8.self))")
        }
    }

    /// The file is a PNG `width` pixels wide and at least a screen tall.
    static func expectPNG(at path: FilePath, width: Int) throws {
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path.string)))
        #expect(bytes.starts(with: [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]), "a PNG signature")
        guard bytes.count > 24 else { return }
        let big = { (offset: Int) in bytes[offset..<offset + 4].reduce(0) { $0 << 8 | Int($1) } }
        #expect(big(16) == width)
        #expect(big(20) >= 600)
    }
}
