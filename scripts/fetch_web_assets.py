"""Fetch the book's third-party JavaScript from the npm registry, checksum-verified.

Usage: python scripts/fetch_web_assets.py DEST   (the Makefile uses DEST=book/vendor)

The rendered book must typeset math and show widgets without reaching a CDN, and third-party
JavaScript is never committed. So the build fetches three pinned npm packages over HTTPS with the
standard library alone (no Node.js needed), checks each tarball against the SHA-512 integrity the
registry published for it, and unpacks only the files the book serves:

* ``mathjax/``        MathJax 3 (``es5/``: tex-chtml.js, its extensions and fonts)
* ``requirejs/``      require.js, which the ipywidgets HTML manager is loaded with
* ``html-manager/``   @jupyter-widgets/html-manager (``dist/``: embed-amd.js, its fonts)

DEST is listed in ``html_static_path`` (so it is copied to ``_static/``), never named ``_static``
itself (Jupyter Book 1 would inject every .js file under it into every page). A stamp file records
what was fetched, so a second run with the same pins does nothing.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

REGISTRY = os.environ.get("NPM_REGISTRY", "https://registry.npmjs.org").rstrip("/")

# name, version, SHA-512 integrity (as `npm view NAME@VERSION dist.integrity` prints it),
# folder inside the package to keep, destination folder.
PACKAGES = [
    ("mathjax", "3.2.2",
     "sha512-Bt+SSVU8eBG27zChVewOicYs7Xsdt40qm4+UpHyX7k0/O9NliPc+x77k1/FEsPsjKPZGJvtRZM1vO+geW0OhGw==",
     "es5", "mathjax"),
    ("requirejs", "2.3.8",
     "sha512-7/cTSLOdYkNBNJcDMWf+luFvMriVm7eYxp4BcFCsAX0wF421Vyce5SXP17c+Jd5otXKGNehIonFlyQXSowL6Mw==",
     "", "requirejs"),
    ("@jupyter-widgets/html-manager", "1.0.15",
     "sha512-5thBIV6ymNgmPVOHvzx+gGy8ZSKmSazhtGw4/c4xJDVzRhG9PTeQsRjF3FUTopvFi//SABeNz1yp47bCrJ3CQA==",
     "dist", "html-manager"),
]
KEEP_SUFFIXES = (".js", ".css", ".woff", ".woff2", ".ttf", ".eot", ".svg", ".txt")


def tarball_url(name: str, version: str) -> str:
    short = name.split("/")[-1]
    return f"{REGISTRY}/{name}/-/{short}-{version}.tgz"


def download(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=120) as response:
            return response.read()
    except (urllib.error.URLError, TimeoutError) as exc:
        raise SystemExit(
            f"Could not download {url}: {exc}.\nThe book needs MathJax and the ipywidgets manager "
            f"to render offline. Connect to the npm registry once (or set NPM_REGISTRY to a mirror) "
            f"and rerun `make book`."
        ) from exc


def verify(data: bytes, integrity: str, what: str) -> None:
    algo, _, expected = integrity.partition("-")
    actual = base64.b64encode(hashlib.new(algo, data).digest()).decode()
    if actual != expected:
        raise SystemExit(f"Checksum mismatch for {what}: expected {integrity}, got {algo}-{actual}")


def extract(data: bytes, keep: str, dest: Path) -> int:
    prefix = "package/" + (keep.rstrip("/") + "/" if keep else "")
    count = 0
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            if not member.isfile() or not member.name.startswith(prefix):
                continue
            rel = member.name[len(prefix):]
            if not keep and "/" in rel:  # only the package's top-level files
                continue
            is_license = Path(rel).name.upper().startswith("LICENSE")
            if not (rel.endswith(KEEP_SUFFIXES) or is_license) or rel.endswith(".map"):
                continue
            target = dest / rel
            if ".." in Path(rel).parts:
                raise SystemExit(f"Refusing to unpack a path outside {dest}: {member.name}")
            target.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            assert source is not None
            target.write_bytes(source.read())
            count += 1
        # Keep every package's licence beside the files that are served.
        for member in tar.getmembers():
            if member.isfile() and Path(member.name).name.upper().startswith("LICENSE"):
                lic = tar.extractfile(member)
                assert lic is not None
                (dest / "LICENSE").write_bytes(lic.read())
    return count


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    dest = Path(argv[0]).resolve()
    stamp = dest / ".fetched"
    wanted = json.dumps([p[:3] for p in PACKAGES])
    if stamp.is_file() and stamp.read_text() == wanted:
        print(f"web assets up to date in {dest}")
        return 0
    with tempfile.TemporaryDirectory(dir=dest.parent if dest.parent.exists() else None) as tmp:
        staging = Path(tmp) / "assets"
        for name, version, integrity, keep, folder in PACKAGES:
            url = tarball_url(name, version)
            data = download(url)
            verify(data, integrity, f"{name}@{version}")
            n = extract(data, keep, staging / folder)
            print(f"fetched {name}@{version}: {len(data) / 1e6:.1f} MB, kept {n} files in {folder}/")
        (staging / ".fetched").write_text(wanted)
        if dest.exists():
            shutil.rmtree(dest)
        staging.rename(dest)  # all or nothing: a failed fetch never leaves a half-filled folder
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
