#!/usr/bin/env python3
"""Fleet benchmark: the cache master's report store, as a fleet of VMs loads it.

Starts `cachetiers serve` (release build) over an empty folder, then measures:

  ingest   --clients processes, each over one keep-alive connection, POST
           --reports-per-run reports (the contract's report JSON, about 1.4 KB, each a
           new id) as fast as the master acknowledges them (201 only after the SQLite
           commit, synchronous=FULL); reports/s over the run, median of --runs runs
  fill     the store topped up to --stored reports (100,000 by default), finished
           over the last 24 hours, spread over 3 tiers and 500 keys
  rss      the resident memory of `serve` (VmRSS, and its peak VmHWM) after that
  stats    GET /v1/stats?window=24h (every stored report in the window) and ?window=1h,
           wall time of the request on loopback (the server's time plus one round
           trip), median of --runs requests
  restart  the time `serve` takes from exec to "listening on" with the full store

  swift build -c release --product cachetiers
  python3 Benchmarks/fleet_benchmark.py              # --stored 20000 for a quick run
"""
import argparse, http.client, json, multiprocessing, os, random, shutil, statistics, subprocess, sys, tempfile, time
import uuid
from datetime import datetime, timedelta, timezone

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OURS = os.path.join(REPO, ".build", "release", "cachetiers")
TIERS = [("cache-master", 0.0), ("gcs", 0.014), ("fresh-install", 0.0)]


# How far back reports finish: the last 24 hours unless a caller spreads them wider
# (dashboard_benchmark.py --spread-days).
SPREAD_SECONDS = 86_000


def report(now, rng):
    """One restore report as a VM sends it, finished in the last SPREAD_SECONDS."""
    tier, price = rng.choices(TIERS, weights=[85, 13, 2])[0]
    finished = now - timedelta(seconds=rng.uniform(60, SPREAD_SECONDS))
    duration = rng.lognormvariate(3.0, 0.6)
    size = 116_725_889
    attempts = []
    for earlier, _ in TIERS[:[name for name, _ in TIERS].index(tier)]:
        attempts.append({"tier": earlier, "attempt": 1, "outcome": "miss", "durationSeconds": 0.05, "bytes": 0,
                         "error": "no cache for the key", "timings": {"connectSeconds": 0.01, "firstByteSeconds": None,
                                                                     "transferSeconds": None, "extractSeconds": None,
                                                                     "extractTailSeconds": None}})
    attempts.append({"tier": tier, "attempt": 1, "outcome": "hit", "durationSeconds": duration, "bytes": size,
                     "error": None, "timings": {"connectSeconds": 0.12, "firstByteSeconds": 0.15,
                                                "transferSeconds": duration * 0.9, "extractSeconds": duration * 0.8,
                                                "extractTailSeconds": 0.4}})
    return json.dumps({
        "id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "finishedAt": finished.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (finished.microsecond // 1000),
        "host": "workspace-vm-%d" % rng.randrange(1000),
        "key": "node-modules-%064x" % rng.randrange(500),
        "outcome": "restored", "servedBy": tier, "destination": "/workspace/node_modules",
        "durationSeconds": duration + 1, "bytesTransferred": size, "estimatedCostUSD": price or None,
        "archive": {"compressedBytes": size, "uncompressedBytes": 452_000_000},
        "throughputBytesPerSecond": size / duration,
        "timings": {"promotionSeconds": 0.004, "oldTreeRemovalSeconds": 1.9, "writeBackSeconds": None},
        "attempts": attempts,
        "writeBack": [{"tier": "cache-master", "outcome": "published", "error": None}] if tier != "cache-master" else [],
    }).encode()


def client(job):
    """Posts `count` reports over one keep-alive connection; returns how many were stored."""
    port, count, seed = job
    rng = random.Random(seed)
    now = datetime.now(timezone.utc)
    bodies = [report(now, rng) for _ in range(count)]
    connection = http.client.HTTPConnection("127.0.0.1", port)
    stored = 0
    for body in bodies:
        connection.request("POST", "/v1/reports", body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        if response.status != 201:
            sys.exit("benchmark: POST answered %d" % response.status)
        stored += 1
    connection.close()
    return stored


def post_all(pool, port, clients, total, seed):
    """`total` reports from `clients` processes at once: the wall time."""
    share = [total // clients + (1 if index < total % clients else 0) for index in range(clients)]
    start = time.perf_counter()
    stored = sum(pool.map(client, [(port, count, seed * 1000 + index) for index, count in enumerate(share)]))
    elapsed = time.perf_counter() - start
    assert stored == total
    return elapsed


def memory(pid):
    """(VmRSS, VmHWM) of a process, in MiB."""
    values = {}
    with open("/proc/%d/status" % pid) as status:
        for line in status:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


def get(port, path):
    connection = http.client.HTTPConnection("127.0.0.1", port)
    start = time.perf_counter()
    connection.request("GET", path)
    response = connection.getresponse()
    body = response.read()
    elapsed = time.perf_counter() - start
    connection.close()
    if response.status != 200:
        sys.exit("benchmark: GET %s answered %d" % (path, response.status))
    return elapsed, json.loads(body)


def start_server(root):
    started = time.perf_counter()
    server = subprocess.Popen([OURS, "serve", "--root", root, "--port", "0"], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    line = server.stdout.readline()
    if not line.startswith("listening on"):
        sys.exit("benchmark: serve did not start")
    return server, int(line.strip().rsplit(":", 1)[1]), time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--reports-per-run", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--stored", type=int, default=100_000)
    parser.add_argument("--work", default=None, help="folder for the master's root (default: a temporary one)")
    a = parser.parse_args()
    if not os.access(OURS, os.X_OK):
        sys.exit("benchmark: build first: swift build -c release --product cachetiers")

    work = a.work or tempfile.mkdtemp(prefix="cachetiers-fleet-")
    root = os.path.join(work, "root")
    shutil.rmtree(root, ignore_errors=True)
    results = {"clients": a.clients, "reportsPerRun": a.reports_per_run}
    server, port, _ = start_server(root)
    try:
        with multiprocessing.Pool(a.clients) as pool:
            rates = []
            for run in range(a.runs):
                rates.append(a.reports_per_run / post_all(pool, port, a.clients, a.reports_per_run, run + 1))
                print("ingest run %d: %.0f reports/s" % (run + 1, rates[-1]), file=sys.stderr)
            results["ingestReportsPerSecond"] = {"median": statistics.median(rates), "runs": rates}
            stored = a.runs * a.reports_per_run
            one = post_all(pool, port, 1, 500, 99)
            results["ingestOneClientReportsPerSecond"] = 500 / one
            stored += 500
            if stored < a.stored:
                post_all(pool, port, a.clients, a.stored - stored, 100)
        rss, peak = memory(server.pid)
        results["rssMiBAfterFill"] = rss
        results["peakRssMiB"] = peak
        for window in ("24h", "1h"):
            timings, stats = [], None
            for _ in range(a.runs):
                elapsed, stats = get(port, "/v1/stats?window=" + window)
                timings.append(elapsed)
            results["stats" + window] = {"medianSeconds": statistics.median(timings), "restores": stats["restores"]}
        results["storedReports"] = get(port, "/v1/stats?window=90d")[1]["restores"]
        results["rssMiBAfterStats"] = memory(server.pid)[0]
    finally:
        server.terminate()
        server.wait()
    database = os.path.join(root, ".cachetiers", "reports.sqlite")
    results["databaseMiB"] = sum(os.path.getsize(database + suffix) for suffix in ("", "-wal", "-shm")
                                 if os.path.exists(database + suffix)) / (1 << 20)
    server, port, startup = start_server(root)
    results["restartSeconds"] = startup
    server.terminate()
    server.wait()
    if not a.work:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
