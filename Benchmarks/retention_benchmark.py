#!/usr/bin/env python3
"""Retention benchmark: a cache master filled past --max-size while restores run.

Starts `cachetiers serve --max-size LIMIT --min-age 0m` over an empty folder, packs
--keys small generated trees (one per key, `cachetiers pack`), and PUTs them one after
another. The limit holds --fit of them, so the first --fit publishes evict nothing and
every later one evicts. Meanwhile:

  readers   --readers threads download random keys from GET /v1/caches in a loop, whole,
            checking each body's SHA-256 against its ETag: a GET that started (200) and
            did not end with the right bytes is a failed restore. A 404 (the key was
            evicted before the GET) is a miss, as a VM would fall through.
  sampler   every 20 ms, the bytes of the archives in the root (KEY.tar.zst with its
            manifest) and of everything in it (scratch files of uploads in flight too).

Prints the largest sample of each against the limit, the failed restores, and the PUT's
time (client-side, loopback) with and without eviction: medians of the publishes of each
phase, side by side.

  swift build -c release --product cachetiers
  python3 Benchmarks/retention_benchmark.py                      # 300 keys, 40 fit
  python3 Benchmarks/retention_benchmark.py --binary .build/debug/cachetiers
"""
import argparse, base64, hashlib, http.client, json, os, random, shutil, statistics, subprocess, sys, tempfile, threading, time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_tree(folder, seed, files):
    rng = random.Random(seed)
    for index in range(files):
        path = os.path.join(folder, "pkg%d" % (index % 7), "file%d.js" % index)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            # Half text that compresses, half noise that does not: archives of a steady size.
            handle.write(("module.exports = %d;\n" % index).encode() * 40)
            handle.write(rng.randbytes(1024))


def root_sizes(root):
    archives = total = 0
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return 0, 0
    for name in names:
        try:
            size = os.stat(os.path.join(root, name)).st_size
        except FileNotFoundError:
            continue
        if os.path.isfile(os.path.join(root, name)):
            total += size
            if name.endswith(".tar.zst") and not name.startswith("."):
                archives += size
    return archives, total


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binary", default=os.path.join(REPO, ".build", "release", "cachetiers"))
    ap.add_argument("--keys", type=int, default=300)
    ap.add_argument("--fit", type=int, default=40, help="archives the limit holds")
    ap.add_argument("--files", type=int, default=60, help="files per generated tree")
    ap.add_argument("--readers", type=int, default=4)
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="retention-bench-")
    root = os.path.join(work, "root")
    try:
        archives = []
        for index in range(args.keys):
            key = "bench-%04d" % index
            tree = os.path.join(work, "tree")
            shutil.rmtree(tree, ignore_errors=True)
            make_tree(tree, index, args.files)
            output = os.path.join(work, "archives", key + ".tar.zst")
            os.makedirs(os.path.dirname(output), exist_ok=True)
            subprocess.run([args.binary, "pack", tree, "--output", output, "--key", key], check=True, stdout=subprocess.DEVNULL)
            with open(output + ".manifest.json", "rb") as handle:
                manifest = handle.read()
            with open(output, "rb") as handle:
                body = handle.read()
            archives.append((key, body, base64.b64encode(manifest).decode()))
        sizes = [len(body) for _, body, _ in archives]
        limit = int(statistics.median(sizes) * args.fit)

        server = subprocess.Popen(
            [args.binary, "serve", "--root", root, "--port", "0", "--max-size", str(limit), "--min-age", "0m"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        line = server.stdout.readline().strip()
        if not line.startswith("listening on http://"):
            sys.exit("retention benchmark: serve said %r" % line)
        host, port = line.split("//")[1].split(":")
        port = int(port)

        stop = threading.Event()
        stats = {"restores": 0, "misses": 0, "failures": 0, "bytes": 0, "max_archives": 0, "max_total": 0, "samples": 0}
        lock = threading.Lock()

        def reader(seed):
            rng = random.Random(seed)
            connection = http.client.HTTPConnection(host, port, timeout=30)
            while not stop.is_set():
                try:
                    connection.request("GET", "/v1/caches?limit=1000")
                    keys = [entry["key"] for entry in json.loads(connection.getresponse().read())["caches"]]
                    if not keys:
                        time.sleep(0.01)
                        continue
                    connection.request("GET", "/v1/caches/" + rng.choice(keys))
                    response = connection.getresponse()
                    if response.status == 404:
                        response.read()
                        with lock:
                            stats["misses"] += 1
                        continue
                    started = response.status == 200
                    etag = response.getheader("ETag", "").strip('"')
                    body = response.read()
                    good = started and hashlib.sha256(body).hexdigest() == etag
                except (OSError, http.client.HTTPException):
                    good = False
                    connection.close()
                    connection = http.client.HTTPConnection(host, port, timeout=30)
                with lock:
                    if good:
                        stats["restores"] += 1
                        stats["bytes"] += len(body)
                    else:
                        stats["failures"] += 1

        def sampler():
            while not stop.is_set():
                stored, total = root_sizes(root)
                with lock:
                    stats["max_archives"] = max(stats["max_archives"], stored)
                    stats["max_total"] = max(stats["max_total"], total)
                    stats["samples"] += 1
                time.sleep(0.02)

        threads = [threading.Thread(target=reader, args=(seed,)) for seed in range(args.readers)]
        threads.append(threading.Thread(target=sampler))
        for thread in threads:
            thread.start()

        publisher = http.client.HTTPConnection(host, port, timeout=60)

        def evicted_so_far():
            publisher.request("GET", "/metrics")
            text = publisher.getresponse().read().decode()
            return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("cachetiers_server_evictions_total{"))

        without, with_eviction = [], []
        for key, body, manifest in archives:
            before = evicted_so_far()
            start = time.perf_counter()
            publisher.request("PUT", "/v1/caches/" + key, body=body, headers={"X-CacheTiers-Manifest": manifest, "If-None-Match": "*"})
            response = publisher.getresponse()
            response.read()
            elapsed = time.perf_counter() - start
            if response.status != 201:
                sys.exit("retention benchmark: PUT %s answered %d" % (key, response.status))
            (with_eviction if evicted_so_far() > before else without).append(elapsed)
        time.sleep(1)
        stop.set()
        for thread in threads:
            thread.join()

        metrics = http.client.HTTPConnection(host, port, timeout=10)
        metrics.request("GET", "/metrics")
        text = metrics.getresponse().read().decode()
        evictions = sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("cachetiers_server_evictions_total{"))
        server.terminate()
        server.wait()

        print("retention benchmark: %s" % os.path.relpath(args.binary, REPO))
        print("  keys %d, archives %.0f KiB median (%d..%d bytes), --max-size %d bytes (%d archives)"
              % (args.keys, statistics.median(sizes) / 1024, min(sizes), max(sizes), limit, args.fit))
        print("  largest sample of the archives in the root  %d bytes (%.1f %% of the limit), %d samples"
              % (stats["max_archives"], 100.0 * stats["max_archives"] / limit, stats["samples"]))
        print("  largest sample of everything in the root     %d bytes (%.1f %% of the limit: uploads in flight, databases)"
              % (stats["max_total"], 100.0 * stats["max_total"] / limit))
        print("  evictions %d; restores %d whole and verified (%d MB), misses %d, failed %d"
              % (evictions, stats["restores"], stats["bytes"] >> 20, stats["misses"], stats["failures"]))
        print("  PUT median without eviction %.2f ms (%d publishes), with eviction %.2f ms (%d publishes)"
              % (1000 * statistics.median(without), len(without), 1000 * statistics.median(with_eviction), len(with_eviction)))
        if stats["failures"] or stats["max_archives"] > limit:
            sys.exit(1)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
