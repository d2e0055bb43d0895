#!/usr/bin/env python3
"""Dashboard benchmark: the cache master's page and its numbers at 100,000 stored reports.

Starts `cachetiers serve` over an empty folder, fills its store with --stored reports
(fleet_benchmark.py's reports: finished over the last 24 hours, 3 tiers, 500 keys, so
every window holds all of them: the worst case for each), then, with curl as the client
on loopback, times --runs requests of each of

  GET /?window=24h   GET /?window=7d   GET /?window=30d   GET /v1/dashboard?window=24h
  GET /v1/stats?window=24h   GET /v1/stats?window=7d   GET /v1/stats?window=30d

and prints the median of curl's time_total (the server's time plus one loopback round
trip) for each, side by side. The master holds no token (the auth check costs nothing
measurable next to the queries).

  swift build -c release --product cachetiers
  python3 Benchmarks/dashboard_benchmark.py              # --stored 20000 for a quick run
"""
import argparse, json, multiprocessing, os, shutil, statistics, subprocess, sys, tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fleet_benchmark as fleet  # noqa: E402  (its reports, its loader, its server start)

PATHS = ["/?window=24h", "/?window=7d", "/?window=30d", "/v1/dashboard?window=24h",
         "/v1/stats?window=24h", "/v1/stats?window=7d", "/v1/stats?window=30d"]


def curl(port, path):
    """curl's time_total for one GET, in seconds; exits when the answer is not 200."""
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{time_total}",
                          "http://127.0.0.1:%d%s" % (port, path)], capture_output=True, text=True, check=True).stdout
    status, seconds = out.split()
    if status != "200":
        sys.exit("benchmark: GET %s answered %s" % (path, status))
    return float(seconds)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stored", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--binary", default=fleet.OURS, help="the cachetiers to run (default: the release build)")
    parser.add_argument("--work", default=None, help="folder for the master's root (default: a temporary one)")
    parser.add_argument("--spread-days", type=float, default=1.0,
                        help="reports finish over this many days back (default 1: every window holds all of them; "
                             "29.9: a month of traffic, what the 30 d window sees in production)")
    a = parser.parse_args()
    if not 0.01 <= a.spread_days <= 29.9:
        sys.exit("benchmark: --spread-days is 0.01 to 29.9 (the master keeps 30 days)")
    fleet.SPREAD_SECONDS = a.spread_days * 86_400 - 60
    if not os.access(a.binary, os.X_OK):
        sys.exit("benchmark: build first: swift build -c release --product cachetiers")
    fleet.OURS = a.binary

    work = a.work or tempfile.mkdtemp(prefix="cachetiers-dashboard-")
    root = os.path.join(work, "root")
    results = {"binary": a.binary, "runs": a.runs, "spreadDays": a.spread_days}
    server, port, _ = fleet.start_server(root)
    try:
        stored = fleet.get(port, "/v1/stats?window=90d")[1]["restores"]
        if stored < a.stored:
            with multiprocessing.Pool(a.clients) as pool:
                fleet.post_all(pool, port, a.clients, a.stored - stored, 7)
        results["storedReports"] = fleet.get(port, "/v1/stats?window=90d")[1]["restores"]
        for path in PATHS:
            curl(port, path)  # warm the page cache and the statements
            timings = [curl(port, path) for _ in range(a.runs)]
            results[path] = {"medianSeconds": statistics.median(timings), "runs": timings}
            print("%-28s median %.4f s" % (path, results[path]["medianSeconds"]), file=sys.stderr)
    finally:
        server.terminate()
        server.wait()
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
