#!/usr/bin/env python3
"""Report cost benchmark: the wall time that reporting to the fleet adds to a restore.

Runs `cachetiers restore` (release build) over a project whose first tier is a peer
(a `cachetiers serve` on loopback that does not hold the key, so it misses) and whose
second, a folder, serves a small archive; the peer tier's master is also where the
report goes. The same restore, alternating, medians of --runs:

  up         reporting to the running master (POST /v1/reports answered at once)
  backlog    the same with --backlog reports already spooled (sent after this one)
  down       the master's port closed: connection refused, report spooled
  silent     a master that accepts connections and never answers: the bound
             (monitoring.report.timeoutSeconds, --bound) is what it costs
  curl       the stock way to send the same report: `curl -X POST --data-binary @report.json`
             to the running master (a new id each time, so each is stored)

Each side also runs with monitoring.report.enabled false, against the same master (the
peer tier's own attempt costs the same either way: a silent master holds it for the
tier's 2 s timeout), and the added cost is the difference of the two medians. The silent
side should come to about the bound; the others to milliseconds.

  swift build -c release --product cachetiers
  python3 Benchmarks/report_cost_benchmark.py        # --binary .build/debug/cachetiers to try a debug build
"""
import argparse, json, os, shutil, socket, statistics, subprocess, sys, tempfile, time, uuid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed(command):
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit("benchmark: %s failed: %s" % (" ".join(command), result.stderr))
    return time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binary", default=os.path.join(REPO, ".build", "release", "cachetiers"))
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--files", type=int, default=200, help="files in the restored tree")
    ap.add_argument("--backlog", type=int, default=20, help="spooled reports for the backlog side")
    ap.add_argument("--bound", type=float, default=1.0, help="monitoring.report.timeoutSeconds")
    a = ap.parse_args()
    if not os.access(a.binary, os.X_OK):
        sys.exit("benchmark: build first: swift build -c release --product cachetiers")

    work = tempfile.mkdtemp(prefix="report-cost-")
    server = None
    hole = socket.socket()
    try:
        project, folder, root, spool = (os.path.join(work, name) for name in ("project", "folder", "root", "spool"))
        tree = os.path.join(work, "tree", "node_modules")
        for path in (project, folder, root, tree):
            os.makedirs(path)
        for index in range(a.files):
            with open(os.path.join(tree, "f%d.js" % index), "w") as file:
                file.write(("module.exports = %d;\n" % index) * 20)
        with open(os.path.join(project, "package-lock.json"), "w") as file:
            file.write('{"lockfileVersion":3}')

        server = subprocess.Popen([a.binary, "serve", "--root", root, "--port", "0"],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        up_url = server.stdout.readline().strip().split()[-1]
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            down_url = "http://127.0.0.1:%d" % probe.getsockname()[1]
        hole.bind(("127.0.0.1", 0))
        hole.listen(1024)
        silent_url = "http://127.0.0.1:%d" % hole.getsockname()[1]

        config = os.path.join(project, "cachetiers.json")

        def configure(url, enabled):
            with open(config, "w") as file:
                json.dump({
                    "key": {"prefix": "bench", "files": ["package-lock.json"]},
                    "destination": "node_modules",
                    "tiers": [{"kind": "peer", "urls": [url], "maxAttempts": 1, "timeoutSeconds": 2},
                              {"kind": "directory", "path": folder}],
                    "writeBack": {"enabled": False},
                    "monitoring": {"report": {"enabled": enabled, "spoolDirectory": spool, "timeoutSeconds": a.bound,
                                              "maxSpooledReports": 10000}},
                }, file)

        configure(up_url, False)
        key = subprocess.run([a.binary, "key", "--config", config], capture_output=True, text=True, check=True).stdout.strip()
        # pack writes the manifest beside the archive: the layout of a directory tier.
        subprocess.run([a.binary, "pack", tree, "--output", os.path.join(folder, key + ".tar.zst")], check=True,
                       stdout=subprocess.DEVNULL)

        def backlog():
            """Spooled reports of earlier runs, for the master to take after this one."""
            os.makedirs(spool, exist_ok=True)
            for _ in range(a.backlog):
                ident = str(uuid.uuid4())
                with open(os.path.join(spool, ident + ".json"), "w") as file:
                    json.dump({"id": ident, "finishedAt": "2026-12-01T00:00:00.000Z", "host": None, "key": key,
                               "outcome": "restored", "servedBy": "directory", "destination": "/x", "durationSeconds": 1,
                               "bytesTransferred": 1, "estimatedCostUSD": None,
                               "attempts": [{"tier": "directory", "attempt": 1, "outcome": "hit", "durationSeconds": 0.1,
                                             "bytes": 1, "error": None}],
                               "writeBack": []}, file)

        sides = [("up", up_url, None), ("backlog", up_url, backlog), ("down", down_url, None), ("silent", silent_url, None)]
        times = {(name, enabled): [] for name, _, _ in sides for enabled in (False, True)}
        restore = [a.binary, "restore", "--config", config, "--quiet"]
        for _ in range(a.runs):
            for name, url, prepare in sides:
                for enabled in (False, True):
                    shutil.rmtree(spool, ignore_errors=True)
                    shutil.rmtree(os.path.join(project, "node_modules"), ignore_errors=True)
                    configure(url, enabled)
                    if prepare:
                        prepare()
                    times[(name, enabled)].append(timed(restore))

        # The stock baseline: curl posting a real report of this restore (a new id each
        # time, so each is stored and fsynced like ours), a new process and connection.
        configure(up_url, False)
        shutil.rmtree(os.path.join(project, "node_modules"), ignore_errors=True)
        report_path = os.path.join(work, "report.json")
        timed(restore + ["--report", report_path])
        with open(report_path) as file:
            report = json.load(file)
        curl = []
        for _ in range(a.runs):
            report["id"] = str(uuid.uuid4())
            with open(report_path, "w") as file:
                json.dump(report, file)
            curl.append(timed(["curl", "-sf", "-o", "/dev/null", "-X", "POST", "-H", "Content-Type: application/json",
                               "--data-binary", "@" + report_path, up_url + "/v1/reports"]))

        print("restore of %d files, %d runs, medians (binary %s, bound %.1f s)\n" % (a.files, a.runs, a.binary, a.bound))
        print("%-8s %12s %12s %10s" % ("side", "off s", "reporting s", "added ms"))
        for name, _, _ in sides:
            off, on = statistics.median(times[(name, False)]), statistics.median(times[(name, True)])
            print("%-8s %12.3f %12.3f %10.1f" % (name, off, on, (on - off) * 1000))
        print("\ncurl -X POST of the same report to the running master: %.1f ms median (%s)" % (
            statistics.median(curl) * 1000, " ".join("%.1f" % (t * 1000) for t in curl)))
    finally:
        hole.close()
        if server:
            server.terminate()
            server.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
