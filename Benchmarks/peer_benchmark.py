#!/usr/bin/env python3
"""Peer tier benchmark: restore from a cache master on loopback, side by side with curl.

Starts `cachetiers serve` (release build) over a folder holding one archive of a
DependencyCorpus tree (cachetiers-bench corpus), then measures in one run, medians of --runs, alternating sides:

  restore     cachetiers-bench peer-restore (VMPeerSource through a TierChain)
              vs  curl -s URL | zstd -d | tar -xf -        (both into /dev/shm)
  throttled   the same restore over a link limited to --rate bytes/s, against the pure
              transfer time (archive bytes / rate): can decoding and extraction hide
              behind the network? With --shaping tc (root), server and client run in a
              network namespace of their own whose loopback the kernel shapes (tbf);
              with --shaping proxy, through the fault-injecting proxy's rate limit.
  concurrent  --concurrent restores at once from the one server (smaller corpus):
              all must succeed; aggregate throughput and the server's peak RSS

  swift build -c release
  python3 Benchmarks/peer_benchmark.py               # --files 4000 for a quick run
"""
import argparse, json, os, shutil, statistics, subprocess, sys, time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OURS = os.path.join(REPO, ".build", "release", "cachetiers")
BENCH = os.path.join(REPO, ".build", "release", "cachetiers-bench")


def timed(command, shell=False):
    start = time.perf_counter()
    result = subprocess.run(command, shell=shell, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit("benchmark: %s failed: %s" % (command, result.stderr))
    return time.perf_counter() - start, result.stdout


def require_builds():
    """Exits with the build command unless the release binaries are there."""
    for tool in (OURS, BENCH):
        if not os.access(tool, os.X_OK):
            sys.exit("benchmark: build first: swift build -c release")


def corpus(work, files, seed):
    """The project's corpus (cachetiers-bench corpus), generated once into a temporary
    folder renamed when complete, so an interrupted run is never reused."""
    root = os.path.join(work, "dcorpus-%d-%d" % (files, seed))
    if not os.path.isdir(os.path.join(root, "node_modules")):
        partial = root + ".partial"
        shutil.rmtree(partial, ignore_errors=True)
        subprocess.run([BENCH, "corpus", partial, "--files", str(files), "--seed", str(seed)], check=True,
                       stdout=subprocess.DEVNULL)
        os.rename(partial, root)
    return os.path.join(root, "node_modules")


def cpu_seconds(pid):
    """User + system CPU time a process has used so far."""
    with open("/proc/%d/stat" % pid) as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def shaped_restores(a, root, out):
    """Restores over a loopback the kernel limits to a.rate, in a namespace of its own."""
    ns = "cachetiers-bench-%d" % os.getpid()
    run_in = ["ip", "netns", "exec", ns]
    subprocess.run(["ip", "netns", "add", ns], check=True)
    server = None
    try:
        subprocess.run(run_in + ["ip", "link", "set", "lo", "up"], check=True)
        subprocess.run(run_in + ["tc", "qdisc", "add", "dev", "lo", "root", "tbf", "rate", "%dbit" % (a.rate * 8),
                                 "burst", "256kb", "latency", "100ms"], check=True)
        server = subprocess.Popen(run_in + [OURS, "serve", "--root", root, "--port", "0"],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        url = server.stdout.readline().strip().split()[-1]
        results, downloads = [], []
        for _ in range(max(3, a.runs // 2)):
            shutil.rmtree(out, ignore_errors=True)
            before = cpu_seconds(server.pid)
            results.append(json.loads(timed(run_in + [BENCH, "peer-restore", url, "big", out])[1]))
            # The server shares this machine's two cores with the restore it serves.
            results[-1]["serverCPUSeconds"] = cpu_seconds(server.pid) - before
            # What the shaped link itself delivers: the same bytes to nowhere.
            downloads.append(timed(run_in + ["curl", "-sf", "-o", "/dev/null", url + "/v1/caches/big"])[0])
        return results, downloads
    finally:
        if server:
            server.terminate()
            server.wait()
        subprocess.run(["ip", "netns", "del", ns])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=40000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--rate", type=int, default=50_000_000, help="bytes per second for the throttled run")
    ap.add_argument("--concurrent", type=int, default=32)
    ap.add_argument("--concurrent-files", type=int, default=3000)
    ap.add_argument("--shaping", choices=("tc", "proxy"), default="tc" if os.geteuid() == 0 else "proxy")
    ap.add_argument("--work", default=os.path.join(REPO, "bench-work"))
    ap.add_argument("--shm", default="/dev/shm/cachetiers-peer-bench")
    a = ap.parse_args()
    require_builds()

    os.makedirs(a.work, exist_ok=True)
    root = os.path.join(a.work, "peer-root")
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    big, small = corpus(a.work, a.files, 1), corpus(a.work, a.concurrent_files, 3)
    subprocess.run([OURS, "pack", big, "--output", os.path.join(root, "big.tar.zst")], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([OURS, "pack", small, "--output", os.path.join(root, "small.tar.zst")], check=True, stdout=subprocess.DEVNULL)
    size = os.path.getsize(os.path.join(root, "big.tar.zst"))

    server = subprocess.Popen([OURS, "serve", "--root", root, "--port", "0", "--max-transfers", "64"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        url = server.stdout.readline().strip().split()[-1]
        print("server %s; archive %.1f MB (corpus --files %d); %d runs, medians\n" % (url, size / 1e6, a.files, a.runs))
        os.makedirs(a.shm, exist_ok=True)
        ours_out, stock_out = a.shm + "/ours", a.shm + "/stock"

        times = {"ours": [], "stock": []}
        for _ in range(a.runs):
            shutil.rmtree(ours_out, ignore_errors=True)
            times["ours"].append(timed([BENCH, "peer-restore", url, "big", ours_out])[0])
            shutil.rmtree(stock_out, ignore_errors=True)
            os.makedirs(stock_out)
            times["stock"].append(timed("curl -sf %s/v1/caches/big | zstd -d | tar -xf - -C %s" % (url, stock_out), shell=True)[0])
        o, s = statistics.median(times["ours"]), statistics.median(times["stock"])
        print("restore     ours %.2f s   curl|zstd|tar %.2f s   ratio %.2fx   (ours %s; stock %s)" % (
            o, s, o / s, " ".join("%.2f" % t for t in times["ours"]), " ".join("%.2f" % t for t in times["stock"])))
        same = subprocess.run(["diff", "-r", "--no-dereference", big, ours_out], capture_output=True).returncode == 0
        print("            restored tree identical: %s" % ("yes" if same else "NO"))

        throttled, downloads = [], []
        if a.shaping == "tc":
            throttled, downloads = shaped_restores(a, root, ours_out)
        else:
            for _ in range(max(3, a.runs // 2)):
                shutil.rmtree(ours_out, ignore_errors=True)
                throttled.append(json.loads(timed([BENCH, "peer-restore-throttled", url, "big", ours_out, str(a.rate)])[1]))
        restore_s = statistics.median(r["seconds"] for r in throttled)
        transfer_s = size / a.rate
        print("throttled   %.0f MB/s (%s): restore %.2f s, pure transfer %.2f s, ratio %.2fx   (runs %s)" % (
            a.rate / 1e6, a.shaping, restore_s, transfer_s, restore_s / transfer_s, " ".join("%.2f" % r["seconds"] for r in throttled)))
        if throttled and "serverCPUSeconds" in throttled[0]:
            print("            the server used %.2f s of CPU per shaped restore (%s), on the same two cores" % (
                statistics.median(r["serverCPUSeconds"] for r in throttled),
                " ".join("%.2f" % r["serverCPUSeconds"] for r in throttled)))
        if downloads:
            print("            curl -o /dev/null over the same shaped link: %.2f s (%s), so the link alone is %.2fx the pure transfer" % (
                statistics.median(downloads), " ".join("%.2f" % t for t in downloads), statistics.median(downloads) / transfer_s))

        shutil.rmtree(a.shm + "/many", ignore_errors=True)
        result = json.loads(timed([BENCH, "peer-concurrent", url, "small", a.shm + "/many", str(a.concurrent)])[1])
        with open("/proc/%d/status" % server.pid) as status:
            peak = next(int(l.split()[1]) for l in status if l.startswith("VmHWM"))
        print("concurrent  %d restores of %.1f MB: all succeeded in %.2f s, aggregate %.0f MB/s; server peak RSS %.1f MiB" % (
            a.concurrent, result["bytes"] / a.concurrent / 1e6, result["seconds"], result["bytes"] / result["seconds"] / 1e6,
            peak / 1024))
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(a.shm, ignore_errors=True)


if __name__ == "__main__":
    main()
