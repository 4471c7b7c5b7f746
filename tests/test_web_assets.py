"""The fetcher of the book's third-party JavaScript verifies what it downloads."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import io
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("fetch_web_assets", ROOT / "scripts" / "fetch_web_assets.py")
assert spec and spec.loader
fetch = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fetch)


def _integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def test_verify_accepts_the_right_checksum_and_rejects_a_wrong_one() -> None:
    data = b"console.log('hi')"
    fetch.verify(data, _integrity(data), "x")
    with pytest.raises(SystemExit, match="Checksum mismatch for x"):
        fetch.verify(data + b" ", _integrity(data), "x")


def _tarball(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def test_extract_keeps_only_the_served_folder_and_the_licence(tmp_path: Path) -> None:
    data = _tarball({
        "package/LICENSE": b"MIT",
        "package/README.md": b"readme",
        "package/es5/tex-chtml.js": b"js",
        "package/es5/output/font.woff": b"font",
        "package/es5/tex-chtml.js.map": b"map",
        "package/src/core.ts": b"ts",
    })
    n = fetch.extract(data, "es5", tmp_path)
    assert n == 2
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()) == [
        "LICENSE", "output/font.woff", "tex-chtml.js"]


def test_pins_are_complete() -> None:
    names = {p[0] for p in fetch.PACKAGES}
    assert names == {"mathjax", "requirejs", "@jupyter-widgets/html-manager"}
    for name, version, integrity, _, _ in fetch.PACKAGES:
        assert integrity.startswith("sha512-") and len(base64.b64decode(integrity[7:])) == 64, name
        assert fetch.tarball_url(name, version).endswith(f"-{version}.tgz")
