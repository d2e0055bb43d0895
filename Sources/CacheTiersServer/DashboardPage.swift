import Crypto
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore

/// The dashboard as HTML: the page of `GET /`, its `<main>` alone (what the page's
/// script fetches to refresh in place), and the login page. Server-rendered, charts in
/// inline SVG, one inline script (the refresh) allowed by its hash in the CSP, nothing
/// loaded from anywhere. Every string from a report is HTML-escaped and cut to a
/// bounded length; no report string is ever written inside the script or a style.
/// The DOM hooks (`id`, `data-*`) are the contract of /work's issue 15 (see
/// Documentation/Dashboard.md): tests and the browser test read them.
enum DashboardPage {
    static let refreshSeconds = 30

    // MARK: Responses

    static let script = """
        (function () {
          "use strict";
          var timer = null;
          function current() { return document.getElementById("dashboard"); }
          function schedule() {
            var main = current();
            var seconds = main ? Number(main.getAttribute("data-refresh-seconds")) : 0;
            if (timer) { clearTimeout(timer); }
            timer = seconds > 0 ? setTimeout(refresh, seconds * 1000) : null;
          }
          function expired() {
            if (timer) { clearTimeout(timer); timer = null; }
            if (document.getElementById("session-expired")) { return; }
            var note = document.createElement("p");
            note.id = "session-expired";
            note.className = "notice";
            note.appendChild(document.createTextNode("Your session has expired. "));
            var link = document.createElement("a");
            link.href = location.pathname + location.search;
            link.textContent = "Log in again";
            note.appendChild(link);
            document.body.insertBefore(note, document.body.firstChild);
          }
          function refresh() {
            var main = current();
            var name = main ? main.getAttribute("data-window-name") : "24h";
            return fetch("/?window=" + encodeURIComponent(name) + "&part=main", { credentials: "same-origin", cache: "no-store" })
              .then(function (answer) {
                if (answer.status === 401) { expired(); return; }
                if (!answer.ok) { schedule(); return; }
                return answer.text().then(function (text) {
                  var parsed = new DOMParser().parseFromString(text, "text/html").getElementById("dashboard");
                  var old = current();
                  if (parsed && old) { old.replaceWith(document.importNode(parsed, true)); }
                  schedule();
                });
              }, function () { schedule(); });
          }
          window.cachetiersRefresh = function () { if (timer) { clearTimeout(timer); timer = null; } return refresh(); };
          schedule();
        })();
        """

    static let contentSecurityPolicy: String = {
        let hash = Data(SHA256.hash(data: Data(script.utf8))).base64EncodedString()
        return "default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-\(hash)'; img-src data:; "
            + "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    }()

    /// The headers of every dashboard and login page.
    static var headers: HTTPFields {
        [
            .contentType: "text/html; charset=utf-8",
            .cacheControl: "no-store",
            .contentSecurityPolicy: contentSecurityPolicy,
            .xContentTypeOptions: "nosniff",
            HTTPField.Name("Referrer-Policy")!: "no-referrer",
        ]
    }

    static func response(_ status: HTTPResponse.Status, html: String, headers extra: HTTPFields = [:]) -> Response {
        var fields = headers
        fields.append(contentsOf: extra)
        return Response(status: status, headers: fields, body: .init(byteBuffer: ByteBuffer(string: html)))
    }

    /// The login page: a form posting the token to `/login`, and `message` above it.
    static func loginResponse(
        status: HTTPResponse.Status, window: DashboardWindow, message: String? = nil, headers extra: HTTPFields = [:]
    ) -> Response {
        var body = ""
        if let message { body += "<p class=\"notice\" id=\"login-message\" role=\"alert\">\(escape(message))</p>\n" }
        body += """
            <form id="login" method="post" action="/login">
            <h2>Log in</h2>
            <p>This cache master needs its token (the file given to <code>cachetiers serve --token-file</code>).
            It stays in this browser as a session cookie for 12 hours, never in a URL.</p>
            <label for="token">Token</label>
            <input type="password" name="token" id="token" autocomplete="current-password" required autofocus>
            <input type="hidden" name="window" value="\(window.rawValue)">
            <button type="submit">Open the dashboard</button>
            </form>
            """
        return response(status, html: document(title: "Log in · CacheTiers", body: "<main id=\"login-page\">\n\(body)\n</main>", script: false), headers: extra)
    }

    // MARK: The page

    /// The whole page; `loggedIn` shows the log-out button (a master with a token).
    static func page(_ snapshot: DashboardSnapshot, canLogOut: Bool) -> String {
        var header = "<header><h1>CacheTiers <span>cache master</span></h1>"
        if canLogOut { header += "<form method=\"post\" action=\"/logout\"><button type=\"submit\">Log out</button></form>" }
        header += "</header>\n"
        return document(title: "CacheTiers · \(snapshot.window.rawValue)", body: header + main(snapshot), script: true)
    }

    private static func document(title: String, body: String, script withScript: Bool) -> String {
        """
        <!DOCTYPE html>
        <html lang="en">
        <head>
        <meta charset="utf-8">
        <meta name="viewport" content="width=device-width, initial-scale=1">
        <meta name="referrer" content="no-referrer">
        <title>\(escape(title))</title>
        <style>\(style)</style>
        </head>
        <body>
        \(body)
        \(withScript ? "<script>\(script)</script>" : "")
        </body>
        </html>

        """
    }

    /// `<main id="dashboard">`: everything the refresh replaces.
    static func main(_ s: DashboardSnapshot) -> String {
        var html = """
            <main id="dashboard" data-window="\(s.windowSeconds)" data-window-name="\(s.window.rawValue)" \
            data-generated-at="\(timestamp(s.generatedAt))" data-refresh-seconds="\(refreshSeconds)">
            <div class="bar"><nav id="windows" aria-label="Window">
            """
        for window in DashboardWindow.allCases {
            let current = window == s.window ? " aria-current=\"page\"" : ""
            html += "<a data-window=\"\(window.rawValue)\" href=\"/?window=\(window.rawValue)\"\(current)>\(window.rawValue)</a>"
        }
        html += "</nav><p class=\"muted\">Updated \(escape(time(s.generatedAt, long: true))) UTC · every \(refreshSeconds) s</p></div>\n"
        if s.lastReportReceivedAt == nil {
            html += """
                <p class="notice" id="no-reports">No report yet: point VMs' <code>monitoring.report</code> at this master \
                (<code>POST /v1/reports</code>), and their restores appear here.</p>

                """
        } else if s.restores == 0 {
            html += "<p class=\"notice\" id=\"no-restores\">No restore finished in the last \(s.window.rawValue): choose a longer window.</p>\n"
        }
        html += headline(s) + alerts(s) + targets(s)
        html += "<div class=\"grid\">\n"
        html += panel("Restores over time, by serving tier", restoresOverTime(s))
        html += panel("Success rate", successRate(s))
        html += panel("Duration of restored restores", distribution(s))
        html += panel("Served by", tierTable(s))
        html += "</div>\n"
        html += panel("Cost", cost(s))
        html += panel("Slowest restores", slowest(s), wide: true)
        html += "</main>"
        return html
    }

    // MARK: Panels

    private static func headline(_ s: DashboardSnapshot) -> String {
        let p = s.durationSeconds
        let figures: [(String, String, String, String)] = [
            ("restores", "Restores", integer(s.restores), "\(s.restores)"),
            ("restored", "Restored", integer(s.restored), "\(s.restored)"),
            ("failed", "Failed", integer(s.failed), "\(s.failed)"),
            ("successRate", "Success rate", s.successRate.map(percent) ?? "–", number(s.successRate)),
            ("fallbacks", "Fallbacks", integer(s.fallbacks), "\(s.fallbacks)"),
            ("p50", "p50", p.p50.map(seconds) ?? "–", number(p.p50)),
            ("p90", "p90", p.p90.map(seconds) ?? "–", number(p.p90)),
            ("p99", "p99", p.p99.map(seconds) ?? "–", number(p.p99)),
        ]
        var html = "<section id=\"headline\" aria-label=\"In the last \(s.window.rawValue)\"><dl>"
        for (metric, label, text, value) in figures {
            html += "<div><dt>\(label)</dt><dd data-metric=\"\(metric)\" data-value=\"\(value)\">\(text)</dd></div>"
        }
        return html + "</dl></section>\n"
    }

    private static func alerts(_ s: DashboardSnapshot) -> String {
        var html = "<section id=\"alerts\"><h2>Alerts</h2>"
        if s.alerts.isEmpty {
            html += "<p data-alerts=\"none\" class=\"ok\">No alert firing (the rules of Deploy/prometheus/cachetiers-rules.yml, on the stored reports).</p>"
        } else {
            html += "<ul>"
            for alert in s.alerts {
                html += "<li data-alert=\"\(escape(alert.name))\" data-severity=\"\(escape(alert.severity))\" class=\"\(alert.severity == "critical" ? "critical" : "warning")\">"
                html += "<strong>\(escape(alert.name))</strong> <span class=\"tag\">\(escape(alert.severity))</span> \(escape(clip(alert.summary, 200)))</li>"
            }
            html += "</ul>"
        }
        return html + "</section>\n"
    }

    private static func targets(_ s: DashboardSnapshot) -> String {
        var html = "<section id=\"targets-panel\"><h2>Targets</h2><ul id=\"targets\">"
        for target in s.targets {
            let met = target.met.map { $0 ? "true" : "false" } ?? "unknown"
            let verdict = target.met.map { $0 ? "met" : "not met" } ?? "unknown"
            let value: String
            switch target.name {
            case "transfer": value = target.value.map(seconds) ?? "no restore"
            case "successRate": value = target.value.map(percent) ?? "no restore"
            case "monthlyCost": value = target.value.map(usd) ?? "no restore"
            default: value = target.note ?? ""
            }
            let title = ["transfer": "Cache transfer", "successRate": "Success rate", "monthlyCost": "Monthly cost", "maintenance": "Maintenance"][target.name] ?? target.name
            html += "<li data-target=\"\(escape(target.name))\" data-met=\"\(met)\"><span class=\"verdict\">\(verdict)</span>"
            html += "<strong>\(escape(title))</strong> \(escape(target.target))<span class=\"value\">\(escape(value))</span></li>"
        }
        return html + "</ul></section>\n"
    }

    private static func panel(_ title: String, _ content: String, wide: Bool = false) -> String {
        "<section class=\"panel\(wide ? " wide" : "")\"><h2>\(escape(title))</h2>\n\(content)\n</section>\n"
    }

    // Okabe & Ito's palette, told apart with every common colour-vision deficiency.
    private static let tierColours = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#F0E442"]
    private static let otherColour = "#8C8C8C"
    private static let failedColour = "#D55E00"

    private static func colour(of tier: String, in s: DashboardSnapshot) -> String {
        if tier == FleetMetrics.otherTier { return otherColour }
        let index = s.tiers.firstIndex { $0.tier == tier } ?? 0
        return tierColours[index % tierColours.count]
    }

    private static let width = 640.0
    private static let height = 220.0
    private static let left = 48.0
    private static let bottom = 24.0
    private static let top = 10.0

    private static func svgOpen(_ id: String, _ label: String) -> String {
        "<svg id=\"\(id)\" viewBox=\"0 0 \(Int(width)) \(Int(height))\" role=\"img\" aria-label=\"\(escape(label))\" preserveAspectRatio=\"xMidYMid meet\">"
    }

    /// The width of each of `bars` slots across the plot, and the pixels per unit up to `peak`.
    private static func barLayout(bars: Int, peak: Int) -> (slot: Double, scale: Double) {
        ((width - left - 8) / Double(max(1, bars)), (height - top - bottom) / Double(max(1, peak)))
    }

    private static func restoresOverTime(_ s: DashboardSnapshot) -> String {
        let peak = max(1, s.overTime.map(\.restores).max() ?? 0)
        let (slot, scale) = barLayout(bars: s.overTime.count, peak: peak)
        var svg = svgOpen("restores-over-time", "Restores per \(s.bucketSeconds / 60) minutes, stacked by serving tier, failed on top")
        svg += timeAxis(s, maximum: "\(peak)")
        for (index, bucket) in s.overTime.enumerated() {
            var y = height - bottom
            let x = left + Double(index) * slot
            var segments: [(tier: String, count: Int, fill: String)] = bucket.byTier.map { ($0.tier, $0.count, colour(of: $0.tier, in: s)) }
            if bucket.failed > 0 { segments.append((FleetMetrics.noTier, bucket.failed, failedColour)) }
            for (tier, count, fill) in segments where count > 0 {
                let h = Double(count) * scale
                y -= h
                let label = tier == FleetMetrics.noTier ? "failed" : tier
                svg += "<rect data-tier=\"\(escape(tier))\" data-bucket-start=\"\(bucket.start)\" data-count=\"\(count)\" x=\"\(f(x + 0.5))\" y=\"\(f(y))\" width=\"\(f(max(1, slot - 1)))\" height=\"\(f(h))\" fill=\"\(fill)\">"
                svg += "<title>\(escape(clip(label, 64))): \(count) at \(escape(time(Date(timeIntervalSince1970: Double(bucket.start)), long: true)))</title></rect>"
            }
        }
        svg += "</svg>"
        var legend = "<ul class=\"legend\">"
        for tier in s.tiers {
            legend += "<li><i style=\"background:\(colour(of: tier.tier, in: s))\"></i>\(display(tier.tier, 28))</li>"
        }
        legend += "<li><i style=\"background:\(failedColour)\"></i>failed</li></ul>"
        return svg + legend
    }

    private static func successRate(_ s: DashboardSnapshot) -> String {
        let rates = s.overTime.compactMap(\.successRate)
        let floor = min(0.85, ((rates.min() ?? 1) * 10).rounded(.down) / 10)
        let slot = barLayout(bars: s.overTime.count, peak: 1).slot
        func y(_ rate: Double) -> Double { top + (1 - rate) / (1 - floor) * (height - top - bottom) }
        var svg = svgOpen("success-rate", "Success rate per \(s.bucketSeconds / 60) minutes against the 99 % target and the 90 % alert")
        svg += timeAxis(s, maximum: "100 %", minimum: percent(floor))
        svg += "<line data-line=\"target-99\" x1=\"\(f(left))\" x2=\"\(f(width - 8))\" y1=\"\(f(y(0.99)))\" y2=\"\(f(y(0.99)))\" class=\"target\"><title>target: 99 %</title></line>"
        svg += "<text x=\"\(f(width - 10))\" y=\"\(f(y(0.99) + 12))\" class=\"label end\">99 % target</text>"
        svg += "<line data-line=\"alert-90\" x1=\"\(f(left))\" x2=\"\(f(width - 8))\" y1=\"\(f(y(0.90)))\" y2=\"\(f(y(0.90)))\" class=\"alert\"><title>alert: 90 %</title></line>"
        svg += "<text x=\"\(f(width - 10))\" y=\"\(f(y(0.90) - 3))\" class=\"label end\">90 % alert</text>"
        var path = ""
        for (index, bucket) in s.overTime.enumerated() {
            guard let rate = bucket.successRate else { continue }
            path += "\(path.isEmpty ? "M" : "L")\(f(left + (Double(index) + 0.5) * slot)) \(f(y(rate))) "
        }
        svg += "<path data-series=\"success-rate\"\(path.isEmpty ? "" : " d=\"\(path.trimmingCharacters(in: .whitespaces))\"") class=\"series\"></path>"
        if rates.isEmpty { svg += "<text x=\"\(f(width / 2))\" y=\"\(f(height / 2))\" class=\"label middle\">no restore in this window</text>" }
        return svg + "</svg>"
    }

    private static func distribution(_ s: DashboardSnapshot) -> String {
        let peak = max(1, s.distribution.map(\.count).max() ?? 0)
        let (slot, scale) = barLayout(bars: s.distribution.count, peak: peak)
        var svg = svgOpen("duration-distribution", "Restored restores by duration, against the 90 s target and the 120 s alert")
        svg += axis(maximum: "\(peak)", first: nil, last: nil)
        var lower = 0.0
        for (index, bin) in s.distribution.enumerated() {
            let x = left + Double(index) * slot
            let h = Double(bin.count) * scale
            let upper = bin.upperBound.map { "\(Int($0))" } ?? "inf"
            let label = bin.upperBound.map { "≤\(Int($0))" } ?? ">\(Int(lower))"
            svg += "<rect data-bin-upper=\"\(upper)\" data-count=\"\(bin.count)\" x=\"\(f(x + 1))\" y=\"\(f(height - bottom - h))\" width=\"\(f(slot - 2))\" height=\"\(f(h))\" fill=\"#0072B2\">"
            svg += "<title>\(bin.upperBound.map { "\(Int(lower))–\(Int($0)) s" } ?? "over \(Int(lower)) s"): \(bin.count)</title></rect>"
            svg += "<text x=\"\(f(x + slot / 2))\" y=\"\(f(height - 8))\" class=\"label middle\">\(label)</text>"
            lower = bin.upperBound ?? lower
        }
        for (name, bound, kind) in [("target-90", 90.0, "target"), ("alert-120", 120.0, "alert")] {
            let index = Double(FleetMetrics.durationBuckets.firstIndex(of: bound)! + 1)
            let x = f(left + index * slot)
            svg += "<line data-line=\"\(name)\" x1=\"\(x)\" x2=\"\(x)\" y1=\"\(f(top))\" y2=\"\(f(height - bottom))\" class=\"\(kind)\"><title>\(kind): \(Int(bound)) s</title></line>"
            svg += "<text x=\"\(x)\" y=\"\(f(top + (kind == "target" ? 10 : 22)))\" class=\"label\" dx=\"3\">\(Int(bound)) s \(kind)</text>"
        }
        return svg + "</svg>"
    }

    private static func tierTable(_ s: DashboardSnapshot) -> String {
        var html = """
            <table id="tiers"><thead><tr><th scope="col">Tier</th><th scope="col" class="n">Restores</th>\
            <th scope="col" class="n">Share</th><th scope="col" class="n">Fallbacks</th><th scope="col" class="n">Bytes</th>\
            <th scope="col" class="n">Cost</th></tr></thead><tbody>
            """
        for tier in s.tiers {
            html += "<tr data-tier=\"\(escape(tier.tier))\"><th scope=\"row\"><i style=\"background:\(colour(of: tier.tier, in: s))\"></i>\(display(tier.tier, 28))</th>"
            html += "<td class=\"n\" data-metric=\"tierRestores\" data-value=\"\(tier.restores)\">\(integer(tier.restores))</td>"
            html += "<td class=\"n\" data-metric=\"tierShare\" data-value=\"\(number(tier.share))\">\(percent(tier.share))</td>"
            html += "<td class=\"n\">\(integer(tier.fallbacks))</td><td class=\"n\">\(byteCount(tier.bytes))</td><td class=\"n\">\(usd(tier.estimatedCostUSD))</td></tr>"
        }
        if s.tiers.isEmpty { html += "<tr><td colspan=\"6\" class=\"empty\">No restore served in this window.</td></tr>" }
        html += "</tbody></table>"
        html += "<p class=\"muted\">Failed restores: \(integer(s.failed)) · fallbacks (served by a later tier than the first tried): \(integer(s.fallbacks))</p>"
        return html
    }

    private static func cost(_ s: DashboardSnapshot) -> String {
        let budget = 10.0
        let fraction = min(1, s.projectedMonthlyCostUSD / budget)
        var html = "<dl class=\"figures\">"
        html += "<div><dt>Bytes served</dt><dd data-metric=\"bytes\" data-value=\"\(s.bytes)\">\(byteCount(s.bytes))</dd></div>"
        html += "<div><dt>Cost so far</dt><dd data-metric=\"costUSD\" data-value=\"\(number(s.estimatedCostUSD))\">\(usd(s.estimatedCostUSD))</dd></div>"
        html += "<div><dt>Projected per month</dt><dd data-metric=\"projectedMonthlyCostUSD\" data-value=\"\(number(s.projectedMonthlyCostUSD))\">\(usd(s.projectedMonthlyCostUSD))</dd></div>"
        html += "</dl>"
        html += "<svg id=\"cost-meter\" viewBox=\"0 0 640 28\" role=\"img\" aria-label=\"Projected monthly cost against the 10 USD target\">"
        html += "<rect x=\"0\" y=\"6\" width=\"640\" height=\"16\" rx=\"3\" fill=\"#e6e8eb\"></rect>"
        html += "<rect x=\"0\" y=\"6\" width=\"\(f(640 * fraction))\" height=\"16\" rx=\"3\" fill=\"\(s.projectedMonthlyCostUSD < budget ? "#009E73" : failedColour)\"></rect>"
        html += "</svg><p class=\"muted\">The \(s.window.rawValue)'s estimated cost scaled to 30 days: "
        html += s.projectedMonthlyCostUSD < budget ? "within the 10 USD a month target.</p>" : "over the 10 USD a month target.</p>"
        return html
    }

    private static func slowest(_ s: DashboardSnapshot) -> String {
        let phases: [(String, String, KeyPath<DashboardSnapshot.Breakdown, Double?>)] = [
            ("connect", "Connect", \.connect), ("firstByte", "First byte", \.firstByte), ("transfer", "Transfer", \.transfer),
            ("extract", "Extract", \.extract), ("extractTail", "Extract tail", \.extractTail),
            ("promotion", "Promotion", \.promotion), ("writeBack", "Write-back", \.writeBack),
        ]
        var html = "<div class=\"scroll\"><table id=\"slowest\"><thead><tr><th scope=\"col\" class=\"n\">Duration</th><th scope=\"col\">Outcome</th>"
        html += "<th scope=\"col\">Served by</th><th scope=\"col\">Host</th><th scope=\"col\">Key</th><th scope=\"col\">Finished (UTC)</th>"
        for (_, title, _) in phases { html += "<th scope=\"col\" class=\"n\">\(title)</th>" }
        html += "</tr></thead><tbody>"
        for restore in s.slowest {
            html += "<tr data-report-id=\"\(escape(restore.id))\">"
            html += "<td class=\"n\" data-field=\"duration\" data-value=\"\(number(restore.durationSeconds))\">\(seconds(restore.durationSeconds))</td>"
            html += "<td data-field=\"outcome\" class=\"\(restore.outcome == "failed" ? "bad" : "")\">\(escape(restore.outcome))</td>"
            html += "<td data-field=\"servedBy\">\(restore.servedBy.map { display($0, 28) } ?? "–")</td>"
            html += "<td data-field=\"host\">\(restore.host.map { display($0, 32) } ?? "–")</td>"
            html += "<td data-field=\"key\">\(display(restore.key, 24))</td>"
            html += "<td data-field=\"finishedAt\">\(escape(time(restore.finishedAt, long: true)))</td>"
            for (field, _, path) in phases {
                let value = restore.breakdown[keyPath: path]
                html += "<td class=\"n\" data-field=\"\(field)\" data-value=\"\(number(value))\">\(value.map(seconds) ?? "–")</td>"
            }
            html += "</tr>"
        }
        if s.slowest.isEmpty { html += "<tr><td colspan=\"13\" class=\"empty\">No restore in this window.</td></tr>" }
        return html + "</tbody></table></div>"
    }

    /// The axes of a chart over the window: from the first bucket's start to now.
    private static func timeAxis(_ s: DashboardSnapshot, maximum: String, minimum: String = "0") -> String {
        let long = s.window != .hour
        let first = Date(timeIntervalSince1970: Double(s.overTime.first?.start ?? 0))
        return axis(maximum: maximum, minimum: minimum, first: time(first, long: long), last: time(s.generatedAt, long: long))
    }

    private static func axis(maximum: String, minimum: String = "0", first: String?, last: String?) -> String {
        var svg = "<line x1=\"\(f(left))\" x2=\"\(f(width - 8))\" y1=\"\(f(height - bottom))\" y2=\"\(f(height - bottom))\" class=\"axis\"></line>"
        svg += "<line x1=\"\(f(left))\" x2=\"\(f(width - 8))\" y1=\"\(f(top))\" y2=\"\(f(top))\" class=\"grid\"></line>"
        svg += "<text x=\"\(f(left - 6))\" y=\"\(f(top + 4))\" class=\"label end\">\(escape(maximum))</text>"
        svg += "<text x=\"\(f(left - 6))\" y=\"\(f(height - bottom))\" class=\"label end\">\(escape(minimum))</text>"
        if let first { svg += "<text x=\"\(f(left))\" y=\"\(f(height - 8))\" class=\"label\">\(escape(first))</text>" }
        if let last { svg += "<text x=\"\(f(width - 8))\" y=\"\(f(height - 8))\" class=\"label end\">\(escape(last))</text>" }
        return svg
    }

    // MARK: Text

    /// `text` safe in HTML text and in a double- or single-quoted attribute.
    static func escape(_ text: String) -> String {
        var escaped = ""
        escaped.reserveCapacity(text.utf8.count)
        for scalar in text.unicodeScalars {
            switch scalar {
            case "&": escaped += "&amp;"
            case "<": escaped += "&lt;"
            case ">": escaped += "&gt;"
            case "\"": escaped += "&quot;"
            case "'": escaped += "&#39;"
            case "\u{0}"..."\u{8}", "\u{B}", "\u{C}", "\u{E}"..."\u{1F}", "\u{7F}": escaped += "\u{FFFD}"
            default: escaped.unicodeScalars.append(scalar)
            }
        }
        return escaped
    }

    /// At most `limit` characters, cut with an ellipsis.
    static func clip(_ text: String, _ limit: Int) -> String {
        text.count > limit ? String(text.prefix(limit - 1)) + "…" : text
    }

    /// A report's string for a table cell: escaped, cut to `limit` characters with the
    /// whole (up to 512) in a title.
    static func display(_ text: String, _ limit: Int) -> String {
        guard text.count > limit else { return escape(text) }
        return "<span title=\"\(escape(clip(text, 512)))\">\(escape(clip(text, limit)))</span>"
    }

    /// JSON number text for `data-value`; empty when there is none.
    static func number(_ value: Double?) -> String {
        guard let value, value.isFinite else { return "" }
        return value == value.rounded() && abs(value) < 1e15 ? "\(Int64(value))" : "\(value)"
    }

    static func integer(_ value: Int) -> String {
        let digits = String(value.magnitude)
        var grouped = ""
        for (index, digit) in digits.enumerated() {
            if index > 0, (digits.count - index) % 3 == 0 { grouped += "," }
            grouped.append(digit)
        }
        return (value < 0 ? "-" : "") + grouped
    }

    static func percent(_ fraction: Double) -> String {
        String(format: "%.1f %%", fraction * 100)
    }

    static func seconds(_ value: Double) -> String {
        value < 10 ? String(format: "%.2f s", value) : String(format: "%.1f s", value)
    }

    static func usd(_ value: Double) -> String {
        String(format: "%.2f USD", value)
    }

    static func byteCount(_ bytes: Int64) -> String {
        let units = ["B", "kB", "MB", "GB", "TB", "PB"]
        var value = Double(bytes)
        var unit = 0
        while value >= 1000, unit < units.count - 1 {
            value /= 1000
            unit += 1
        }
        return unit == 0 ? "\(bytes) B" : String(format: "%.1f", value) + " " + units[unit]
    }

    private static func f(_ value: Double) -> String { String(format: "%.1f", value) }

    static func timestamp(_ date: Date) -> String {
        date.formatted(Date.ISO8601FormatStyle(timeZone: .gmt))
    }

    /// `21:14` (or `12-01 21:14` when `long`), UTC.
    private static func time(_ date: Date, long: Bool) -> String {
        let iso = timestamp(date)  // 2026-12-01T21:14:51Z
        let clock = iso.dropFirst(11).prefix(5)
        return long ? "\(iso.dropFirst(5).prefix(5)) \(clock)" : String(clock)
    }

    private static let style = """
        :root{color-scheme:light;--ink:#1d2127;--muted:#5c6570;--line:#d9dde2;--panel:#fff;--bg:#f4f5f7;--ok:#00734d;--bad:#b23c00}
        *{box-sizing:border-box}
        body{margin:0;background:var(--bg);color:var(--ink);font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
        header{display:flex;align-items:center;justify-content:space-between;padding:12px 24px;background:#1d2127;color:#fff}
        header h1{margin:0;font-size:18px;font-weight:600}header h1 span{font-weight:400;color:#b8c0c8}
        header button{background:transparent;color:#fff;border:1px solid #5c6570;border-radius:4px;padding:4px 10px;font:inherit;cursor:pointer}
        main{max-width:1280px;margin:0 auto;padding:16px 24px 40px}
        h2{font-size:13px;text-transform:uppercase;letter-spacing:.04em;color:var(--muted);margin:0 0 10px;font-weight:600}
        .bar{display:flex;align-items:center;justify-content:space-between;gap:12px;flex-wrap:wrap;margin-bottom:12px}
        nav a{display:inline-block;padding:5px 12px;border:1px solid var(--line);background:#fff;color:var(--ink);text-decoration:none;margin-right:-1px}
        nav a:first-child{border-radius:4px 0 0 4px}nav a:last-child{border-radius:0 4px 4px 0}
        nav a[aria-current=page]{background:#0072B2;border-color:#0072B2;color:#fff;font-weight:600}
        .muted{color:var(--muted);font-size:12px;margin:6px 0 0}
        .notice{background:#fff8e1;border:1px solid #f0d98c;border-radius:6px;padding:10px 14px;margin:0 0 12px}
        #headline dl{display:grid;grid-template-columns:repeat(auto-fit,minmax(120px,1fr));gap:8px;margin:0 0 12px}
        #headline div,.panel,#alerts,#targets-panel{background:var(--panel);border:1px solid var(--line);border-radius:6px}
        #headline div{padding:10px 12px}dt{color:var(--muted);font-size:12px}
        #headline dd{margin:2px 0 0;font-size:22px;font-weight:600;font-variant-numeric:tabular-nums}
        #alerts,#targets-panel,.panel{padding:14px 16px;margin:0 0 12px}
        #alerts ul,#targets{list-style:none;margin:0;padding:0}
        #alerts li{padding:6px 10px;border-left:4px solid #E69F00;background:#fffaf0;margin-bottom:6px}
        #alerts li.critical{border-left-color:var(--bad);background:#fff3ee}
        .tag{font-size:11px;text-transform:uppercase;color:var(--muted);margin:0 6px}
        .ok{color:var(--ok);margin:0}
        #targets{display:grid;grid-template-columns:repeat(auto-fit,minmax(220px,1fr));gap:8px}
        #targets li{padding:8px 10px;border:1px solid var(--line);border-radius:4px}
        #targets .value{display:block;font-variant-numeric:tabular-nums;color:var(--muted)}
        .verdict{float:right;font-size:12px;font-weight:600;padding:1px 8px;border-radius:10px;background:#e6e8eb}
        [data-met=true] .verdict{background:#d8f3e8;color:var(--ok)}[data-met=false] .verdict{background:#fde3d6;color:var(--bad)}
        .grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:0 12px}
        svg{width:100%;height:auto;display:block}
        svg .label{font-size:11px;fill:var(--muted)}svg .end{text-anchor:end}svg .middle{text-anchor:middle}
        svg .axis{stroke:#9aa3ad}svg .grid{stroke:var(--line);stroke-dasharray:2 3}
        svg .target{stroke:#009E73;stroke-width:1.5;stroke-dasharray:5 3}svg .alert{stroke:var(--bad);stroke-width:1.5;stroke-dasharray:2 2}
        svg .series{fill:none;stroke:#0072B2;stroke-width:2}
        .legend{list-style:none;padding:0;margin:8px 0 0;display:flex;flex-wrap:wrap;gap:4px 14px;font-size:12px}
        i{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:6px;vertical-align:baseline}
        table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
        th,td{padding:5px 8px;border-bottom:1px solid var(--line);text-align:left;white-space:nowrap}
        thead th{font-size:12px;color:var(--muted);font-weight:600}
        .n{text-align:right}.empty{color:var(--muted);text-align:center;padding:16px}.bad{color:var(--bad);font-weight:600}
        .figures{display:flex;gap:32px;margin:0 0 8px}.figures dd{margin:0;font-size:20px;font-weight:600;font-variant-numeric:tabular-nums}
        .scroll{overflow-x:auto}#slowest{font-size:13px}#slowest th,#slowest td{padding:5px 6px}
        #login-page{max-width:420px;margin:48px auto}
        #login{background:#fff;border:1px solid var(--line);border-radius:6px;padding:20px 22px}
        #login label{display:block;font-weight:600;margin:12px 0 4px}
        #login input[type=password]{width:100%;padding:8px;font:inherit;border:1px solid #9aa3ad;border-radius:4px}
        #login button{margin-top:14px;padding:8px 16px;font:inherit;background:#0072B2;color:#fff;border:0;border-radius:4px;cursor:pointer}
        code{font:12px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;background:#eef0f2;padding:1px 4px;border-radius:3px}
        """
}
