#!/usr/bin/env python3
"""Archive engine benchmark: CacheTiers pack/unpack side by side with tar and zstd.

Builds a node_modules-like corpus with `cachetiers-bench corpus`, then measures in
one run, alternating ours and stock so both see the same machine state:

  pack        cachetiers pack DIR --output F      vs  tar -cf - -C DIR . | zstd -1 -T0
  unpack      cachetiers unpack F --into /dev/shm vs  zstd -d -c F | tar -xf - -C /dev/shm
  decompress  cachetiers-bench decompress F       vs  zstd -d -c F > /dev/null
  peak RSS    of cachetiers unpack, on a small and on the full corpus
  levels      archive size and pack time at zstd levels 1, 3, 9 and 19

Figures are medians of --runs runs (page cache warm for both sides). Usage:

  swift build -c release
  python3 Benchmarks/archive_benchmark.py                 # 40,000 files, about 600 MB
  python3 Benchmarks/archive_benchmark.py --files 4000    # a quick run
"""
import argparse, os, shutil, statistics, subprocess, sys, time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OURS = os.path.join(REPO, ".build", "release", "cachetiers")
BENCH = os.path.join(REPO, ".build", "release", "cachetiers-bench")


def run(command, shell=False):
    """Runs a command; returns (seconds, peak RSS in KiB of the process tree's largest member)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, shell=shell, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - start
    err = process.stderr.read().decode()
    process.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit("benchmark: %s failed: %s" % (command, err))
    return elapsed, usage.ru_maxrss


def fresh(path):
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=40000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--work", default=os.path.join(REPO, "bench-work"))
    ap.add_argument("--shm", default="/dev/shm/cachetiers-bench")
    ap.add_argument("--levels", default="1,3,9,19")
    ap.add_argument("--level-runs", type=int, default=3, help="runs per level (level 19 runs once)")
    a = ap.parse_args()

    for tool in (OURS, BENCH):
        if not os.access(tool, os.X_OK):
            sys.exit("benchmark: build first: swift build -c release")
    os.makedirs(a.work, exist_ok=True)

    def make_corpus(root, files, seed):
        # The project's generator, into a temporary folder renamed when complete, so an
        # interrupted run is not reused.
        if not os.path.isdir(os.path.join(root, "node_modules")):
            shutil.rmtree(root + ".partial", ignore_errors=True)
            subprocess.run([BENCH, "corpus", root + ".partial", "--files", str(files), "--seed", str(seed)], check=True,
                           stdout=subprocess.DEVNULL)
            os.rename(root + ".partial", root)
        return os.path.join(root, "node_modules")

    corpus = make_corpus(os.path.join(a.work, "dcorpus-%d-1" % a.files), a.files, 1)
    small_root = os.path.join(a.work, "dcorpus-2000-7")
    make_corpus(small_root, 2000, 7)

    ours_archive = os.path.join(a.work, "ours.tar.zst")
    stock_archive = os.path.join(a.work, "stock.tar.zst")
    tree_bytes = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(corpus) for f in fs
                     if not os.path.islink(os.path.join(d, f)))
    entries = sum(len(ds) + len(fs) for _, ds, fs in os.walk(corpus))
    print("corpus: %d entries, %.1f MB of file data (cachetiers-bench corpus --files %d)" % (entries, tree_bytes / 1e6, a.files))
    print("machine: %d cores; zstd %s; %s" % (os.cpu_count(), subprocess.run(["zstd", "-V"], capture_output=True, text=True).stdout.split(",")[0].split()[-1],
                                           subprocess.run(["tar", "--version"], capture_output=True, text=True).stdout.splitlines()[0]))
    print("runs: %d each, alternating ours and stock; medians\n" % a.runs)

    results = {}

    def compare(name, ours, stock, before=None):
        times = {"ours": [], "stock": []}
        for _ in range(a.runs):
            for side, command in (("ours", ours), ("stock", stock)):
                if before:
                    before(side)
                elapsed, _ = run(command, shell=isinstance(command, str))
                times[side].append(elapsed)
        o, s = statistics.median(times["ours"]), statistics.median(times["stock"])
        results[name] = (o, s)
        print("%-11s ours %6.2f s   stock %6.2f s   ratio %.2fx   (ours %s; stock %s)" % (
            name, o, s, o / s, " ".join("%.2f" % t for t in times["ours"]), " ".join("%.2f" % t for t in times["stock"])))

    compare("pack", [OURS, "pack", corpus, "--output", ours_archive],
            "tar -cf - -C '%s' . | zstd -1 -T0 -q -f -o '%s'" % (corpus, stock_archive))
    print("            archive: ours %.1f MB, stock %.1f MB" % (os.path.getsize(ours_archive) / 1e6, os.path.getsize(stock_archive) / 1e6))

    os.makedirs(a.shm, exist_ok=True)
    ours_out, stock_out = a.shm + "/ours", a.shm + "/stock"
    compare("unpack", [OURS, "unpack", ours_archive, "--into", ours_out],
            "zstd -d -c '%s' | tar -xf - -C '%s'" % (ours_archive, stock_out),
            before=lambda side: shutil.rmtree(ours_out, ignore_errors=True) if side == "ours" else fresh(stock_out))
    same = subprocess.run(["diff", "-r", "--no-dereference", corpus, ours_out], capture_output=True).returncode == 0
    print("            restored tree identical to the corpus: %s" % ("yes" if same else "NO"))

    compare("decompress", [BENCH, "decompress", ours_archive], "zstd -d -c '%s' > /dev/null" % ours_archive)

    small_archive = os.path.join(a.work, "small.tar.zst")
    run([OURS, "pack", os.path.join(small_root, "node_modules"), "--output", small_archive])
    rss = {}
    for label, archive in (("small (2,000 files)", small_archive), ("full (%d files)" % a.files, ours_archive)):
        peaks = []
        for _ in range(3):
            shutil.rmtree(ours_out, ignore_errors=True)
            peaks.append(run([OURS, "unpack", archive, "--into", ours_out])[1])
        rss[label] = statistics.median(peaks)
    print("peak RSS of unpack: " + ", ".join("%s %.1f MiB" % (k, v / 1024) for k, v in rss.items()))

    print("\nzstd level trade-off (ours, pack of the same corpus):")
    print("| level | archive MB | ratio | pack s |")
    print("|---|---|---|---|")
    for level in [int(x) for x in a.levels.split(",")]:
        runs = 1 if level >= 19 else a.level_runs
        times = []
        for _ in range(runs):
            times.append(run([OURS, "pack", corpus, "--output", ours_archive + ".level", "--level", str(level)])[0])
        size = os.path.getsize(ours_archive + ".level")
        print("| %d | %.1f | %.2f | %.2f%s |" % (level, size / 1e6, tree_bytes / size, statistics.median(times),
                                              "" if runs > 1 else " (1 run)"))
    shutil.rmtree(a.shm, ignore_errors=True)


if __name__ == "__main__":
    main()
