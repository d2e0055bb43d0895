#!/usr/bin/env python3
"""Mount-option benchmark: a restore, and a read of the restored tree, on ext4 mounted
with relatime (Linux's default), noatime and strictatime.

The production analysis found noatime worth 10-20 %; this measures it on the project's
own corpus. Each run makes a fresh ext4 filesystem in a loop image, mounts it with one
of the options, and times, with the page cache dropped before each step:

  restore  cachetiers restore --key KEY from a directory tier onto MOUNT/node_modules
  read     cachetiers pack MOUNT/node_modules (reads every file: what write-back does)
  reread   tar -cf - -C MOUNT/node_modules . | cat > /dev/null (a second read: relatime
           updates an access time only once after a change, strictatime every time)

each followed by `sync`, which writes back what the step left dirty (under strictatime,
the inodes whose access time the read changed). The options rotate within each round so none
always runs first; figures are medians of --runs rounds, and ratios are against
relatime. Needs root (mkfs.ext4, mount -o loop, /proc/sys/vm/drop_caches). Usage:

  swift build -c release
  sudo python3 Benchmarks/atime_benchmark.py                  # 40,000 files, 5 rounds
  sudo python3 Benchmarks/atime_benchmark.py --files 4000 --runs 3
"""
import argparse, json, os, shutil, statistics, subprocess, sys, time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPTIONS = ("relatime", "noatime", "strictatime")
KEY = "node-modules-atime-benchmark"


def timed(command):
    """Runs a command, failing the benchmark with its stderr; returns the seconds it took."""
    start = time.perf_counter()
    result = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit("benchmark: %s failed (%d): %s" % (" ".join(command), result.returncode, result.stderr.decode().strip()))
    return elapsed


def drop_caches(enabled):
    os.sync()
    if enabled:
        with open("/proc/sys/vm/drop_caches", "w") as control:
            control.write("3\n")


def mount_options(mountpoint):
    """The options the kernel reports for the mount (strictatime shows as neither relatime nor noatime)."""
    with open("/proc/self/mountinfo") as table:
        for line in table:
            fields = line.split()
            if fields[4] == mountpoint:
                return fields[5]
    sys.exit("benchmark: %s is not mounted" % mountpoint)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=40000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--work", default=os.path.join(REPO, "bench-work"))
    ap.add_argument("--image-mb", type=int, default=3072, help="size of the ext4 loop image")
    ap.add_argument("--binaries", default=os.path.join(REPO, ".build", "release"),
                    help="the folder holding release builds of cachetiers and cachetiers-bench")
    ap.add_argument("--no-drop-caches", action="store_true", help="keep the page cache between steps")
    ap.add_argument("--json", help="also write the raw times to this file")
    a = ap.parse_args()

    ours, bench = os.path.join(a.binaries, "cachetiers"), os.path.join(a.binaries, "cachetiers-bench")
    for tool in (ours, bench):
        if not os.access(tool, os.X_OK):
            sys.exit("benchmark: build first: swift build -c release (no %s)" % tool)
    if os.geteuid() != 0:
        sys.exit("benchmark: run as root: it makes and mounts an ext4 loop image")
    for tool in ("mkfs.ext4", "mount", "umount"):
        if shutil.which(tool) is None:
            sys.exit("benchmark: %s is not installed (apt-get install e2fsprogs mount)" % tool)

    work = os.path.abspath(a.work)
    os.makedirs(work, exist_ok=True)
    corpus_root = os.path.join(work, "dcorpus-%d-1" % a.files)
    if not os.path.isdir(os.path.join(corpus_root, "node_modules")):
        shutil.rmtree(corpus_root + ".partial", ignore_errors=True)
        subprocess.run([bench, "corpus", corpus_root + ".partial", "--files", str(a.files), "--seed", "1"], check=True,
                       stdout=subprocess.DEVNULL)
        os.rename(corpus_root + ".partial", corpus_root)
    corpus = os.path.join(corpus_root, "node_modules")

    # The directory tier, packed once, on the work folder's filesystem (not the image).
    tier = os.path.join(work, "atime-tier-%d" % a.files)
    archive = os.path.join(tier, KEY + ".tar.zst")
    if not os.path.exists(archive + ".manifest.json"):
        shutil.rmtree(tier, ignore_errors=True)
        os.makedirs(tier)
        timed([ours, "pack", corpus, "--output", archive, "--key", KEY])
    with open(archive + ".manifest.json") as manifest_file:
        manifest = json.load(manifest_file)

    image, mountpoint = os.path.join(work, "atime.ext4"), os.path.join(work, "atime-mnt")
    read_archive = os.path.join(work, "atime-read.tar.zst")
    os.makedirs(mountpoint, exist_ok=True)
    if os.path.ismount(mountpoint):
        subprocess.run(["umount", mountpoint], check=True)
    project = os.path.join(work, "atime-project")
    os.makedirs(project, exist_ok=True)
    with open(os.path.join(project, "package-lock.json"), "w") as lockfile:
        lockfile.write('{"lockfileVersion":3}\n')
    config = os.path.join(project, "cachetiers.json")
    with open(config, "w") as config_file:
        json.dump({
            "key": {"prefix": "node-modules", "files": ["package-lock.json"]},
            "destination": os.path.join(mountpoint, "node_modules"),
            "tiers": [{"kind": "directory", "name": "local", "path": tier, "writeBack": False}],
            "writeBack": {"enabled": False},
            "monitoring": {"report": {"enabled": False}},
        }, config_file)

    print("corpus: %d entries, %.1f MB of file data, archive %.1f MB (cachetiers-bench corpus --files %d --seed 1)" % (
        manifest["entryCount"], manifest["uncompressedSize"] / 1e6, manifest["archiveSize"] / 1e6, a.files))
    kernel = os.uname().release
    print("machine: %d cores, Linux %s; ext4 on a %d MB loop image made fresh for every run; page cache %s" % (
        os.cpu_count(), kernel, a.image_mb, "kept" if a.no_drop_caches else "dropped before every step"))
    print("runs: %d rounds, the options rotating within each round; medians\n" % a.runs)

    steps = ("restore", "restore+sync", "read", "read+sync", "reread", "reread+sync")
    times = {option: {step: [] for step in steps} for option in OPTIONS}
    seen_options = {}
    for round_index in range(a.runs):
        order = OPTIONS[round_index % 3:] + OPTIONS[:round_index % 3]
        for option in order:
            with open(image, "wb") as image_file:
                image_file.truncate(a.image_mb << 20)
            timed(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", image])
            timed(["mount", "-o", "loop," + option, image, mountpoint])
            try:
                seen_options[option] = mount_options(mountpoint)
                drop_caches(not a.no_drop_caches)
                restore = timed([ours, "restore", "--config", config, "--key", KEY, "--quiet"])
                flush = timed(["sync"])
                times[option]["restore"].append(restore)
                times[option]["restore+sync"].append(restore + flush)
                drop_caches(not a.no_drop_caches)
                read = timed([ours, "pack", os.path.join(mountpoint, "node_modules"), "--output", read_archive, "--key", KEY])
                flush = timed(["sync"])
                times[option]["read"].append(read)
                times[option]["read+sync"].append(read + flush)
                drop_caches(not a.no_drop_caches)
                reread = timed(["sh", "-c", "tar -cf - -C '%s' . | cat > /dev/null" % os.path.join(mountpoint, "node_modules")])
                flush = timed(["sync"])
                times[option]["reread"].append(reread)
                times[option]["reread+sync"].append(reread + flush)
            finally:
                subprocess.run(["umount", mountpoint], check=True)
                for leftover in (read_archive, read_archive + ".manifest.json"):
                    if os.path.exists(leftover):
                        os.remove(leftover)
        print("round %d of %d done" % (round_index + 1, a.runs), file=sys.stderr)
    os.remove(image)

    for option in OPTIONS:
        print("mount -o %-12s the kernel reports: %s" % (option, seen_options[option]))
    print()
    print("| step | relatime s | noatime s | strictatime s | noatime / relatime | strictatime / relatime | strictatime / noatime |")
    print("|---|---|---|---|---|---|---|")
    medians = {option: {step: statistics.median(times[option][step]) for step in steps} for option in OPTIONS}
    for step in steps:
        r, n, s = (medians[option][step] for option in OPTIONS)
        print("| %s | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f |" % (step, r, n, s, n / r, s / r, s / n))
    print("\nevery run (s):")
    for option in OPTIONS:
        for step in steps:
            print("  %-12s %-13s %s" % (option, step, " ".join("%.2f" % t for t in times[option][step])))
    if a.json:
        with open(a.json, "w") as raw:
            json.dump({"times": times, "medians": medians, "mountOptions": seen_options}, raw, indent=2, sort_keys=True)


if __name__ == "__main__":
    main()
