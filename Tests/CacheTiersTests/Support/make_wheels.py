"""Writes a folder of pure-Python wheels for offline `pip install --no-index` tests.

    make_wheels.py FOLDER

ctdemo-a 1.0 depends on ctdemo-b 1.0, so pip has a dependency to resolve. The wheels
are built by hand (a wheel is a zip with a .dist-info folder), needing nothing beyond
the standard library.
"""
import base64, hashlib, os, sys, zipfile


def record_line(name, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return "%s,sha256=%s,%d" % (name, digest, len(data))


def wheel(folder, name, version, requires, modules):
    dist = "%s-%s" % (name.replace("-", "_"), version)
    files = dict(modules)
    metadata = "Metadata-Version: 2.1\nName: %s\nVersion: %s\n" % (name, version)
    metadata += "".join("Requires-Dist: %s\n" % r for r in requires)
    files["%s.dist-info/METADATA" % dist] = metadata.encode()
    files["%s.dist-info/WHEEL" % dist] = b"Wheel-Version: 1.0\nGenerator: make_wheels\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    record = [record_line(n, d) for n, d in sorted(files.items())] + ["%s.dist-info/RECORD,," % dist]
    files["%s.dist-info/RECORD" % dist] = ("\n".join(record) + "\n").encode()
    with zipfile.ZipFile(os.path.join(folder, "%s-py3-none-any.whl" % dist), "w") as archive:
        for n, d in files.items():
            archive.writestr(n, d)


def main():
    folder = sys.argv[1]
    os.makedirs(folder, exist_ok=True)
    wheel(folder, "ctdemo-b", "1.0", [], {
        "ctdemo_b/__init__.py": b"def double(x):\n    return 2 * x\n",
        "ctdemo_b/data/table.txt": b"".join(b"row %d\n" % i for i in range(200)),
    })
    wheel(folder, "ctdemo-a", "1.0", ["ctdemo-b==1.0"], {
        "ctdemo_a/__init__.py": b"from ctdemo_b import double\nVALUE = double(21)\n",
        "ctdemo_a/util.py": b"def hello():\n    return 'hello from ctdemo_a'\n",
    })


if __name__ == "__main__":
    main()
