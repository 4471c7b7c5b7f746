"""Tests of attn_tutorial.multi30k: local files, downloads, checksums and clear errors.

Tests that need the real Multi30K files read them from ``$ATTN_TUTORIAL_DATA/multi30k`` (the
``multi30k_root`` fixture of conftest.py): without the variable they are skipped locally and FAIL in CI.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import urllib.error
from pathlib import Path
from typing import Any

import pytest

import attn_tutorial
import attn_tutorial as at
from attn_tutorial import multi30k as multi30k_mod
from attn_tutorial.runtime import DATA_ENV_VAR

# --------------------------------------------------------------------------------------------------
# 3. Multi30K
# --------------------------------------------------------------------------------------------------


def test_embedded_checksums_match_the_data_folder(multi30k_root: Path) -> None:
    listed = {}
    for line in (multi30k_root / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        listed[name] = digest
    assert listed == at.MULTI30K_SHA256
    assert set(listed) == {f"{s}.{l}.gz" for s in at.MULTI30K_SPLITS for l in at.MULTI30K_LANGS}


@pytest.mark.parametrize("split", at.MULTI30K_SPLITS)
def test_real_multi30k_loads_with_the_right_counts(multi30k_root: Path, split: str) -> None:
    expected = {"train": 29_000, "val": 1_014, "test_2016_flickr": 1_000, "test_2017_flickr": 1_000}[split]
    pairs = at.load_multi30k(split, "de", "en")
    assert len(pairs) == expected == at.MULTI30K_SIZES[split]
    fr = at.read_multi30k(split, "fr")
    assert len(fr) == expected
    # Exactly the file's lines: count the newline bytes independently.
    raw = gzip.decompress((multi30k_root / f"{split}.en.gz").read_bytes())
    assert raw.count(b"\n") == expected and raw.endswith(b"\n")
    assert "\n".join(t for _, t in pairs) + "\n" == raw.decode("utf-8")
    assert all(s and t for s, t in pairs)


def test_real_multi30k_first_lines_are_aligned(multi30k_root: Path) -> None:
    train = at.load_multi30k("train", "de", "en")
    assert train[0] == (
        "Zwei junge weiße Männer sind im Freien in der Nähe vieler Büsche.",
        "Two young, White males are outside near many bushes.",
    )
    assert train[1][1] == "Several men in hard hats are operating a giant pulley system."
    en_fr = at.load_multi30k("val", "en", "fr", root=multi30k_root)
    assert en_fr[0][0] == "A group of men are loading cotton onto a truck"
    # Double spaces survive: lines are kept exactly.
    assert at.load_multi30k("test_2017_flickr", "de", "en")[445][1] == "A  woman sits on the sand."


def test_multi30k_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="split must be one of"):
        at.load_multi30k("test")
    with pytest.raises(ValueError, match="src must be one of"):
        at.load_multi30k("val", src="es")
    with pytest.raises(ValueError, match="tgt must be one of"):
        at.load_multi30k("val", tgt="EN")
    with pytest.raises(ValueError, match="must be different"):
        at.load_multi30k("val", "en", "en")


def _copy_split(src_root: Path, dst: Path, split: str = "val", langs: tuple[str, ...] = ("de", "en")) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for lang in langs:
        (dst / f"{split}.{lang}.gz").write_bytes((src_root / f"{split}.{lang}.gz").read_bytes())


def test_corrupted_local_file_is_rejected_even_after_a_good_read(
    multi30k_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _copy_split(multi30k_root, tmp_path)
    good = at.load_multi30k("val", root=tmp_path)
    assert good == at.load_multi30k("val")
    hashed: list[int] = []
    real_sha256 = multi30k_mod._sha256

    def counting_sha256(data: bytes) -> str:
        hashed.append(len(data))
        return real_sha256(data)

    monkeypatch.setattr(multi30k_mod, "_sha256", counting_sha256)
    assert at.load_multi30k("val", root=tmp_path) == good
    assert hashed == []  # verified before, unchanged since: not hashed again
    path = tmp_path / "val.en.gz"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit
    stat = path.stat()
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # a new mtime, same size
    with pytest.raises(at.ChecksumError, match=r"val\.en\.gz is corrupted"):
        at.load_multi30k("val", root=tmp_path)
    assert len(hashed) == 1


def test_missing_and_offline_gives_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "data"
    empty.mkdir()
    monkeypatch.setenv(DATA_ENV_VAR, str(empty))

    def offline(url: str, timeout: float = 60.0) -> bytes:
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(multi30k_mod, "_fetch_url", offline)
    with pytest.raises(FileNotFoundError) as info:
        at.load_multi30k("val", root=tmp_path / "mine")
    message = str(info.value)
    assert str(empty / "multi30k") in message and str(tmp_path / "mine") in message
    assert DATA_ENV_VAR in message and "val.de.gz" in message and "network is unreachable" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__
    with pytest.raises(FileNotFoundError, match=DATA_ENV_VAR):
        at.multi30k_path("val", "de", download=False)
    assert not any(empty.rglob("*.gz")) and not (tmp_path / "mine").exists()


def _fake_downloader(source: Path, log: list[str], corrupt: bool = False):  # noqa: ANN202
    def fetch(url: str, timeout: float = 60.0) -> bytes:
        log.append(url)
        data = (source / url.rsplit("/", 1)[1]).read_bytes()
        return data[:-1] + bytes([data[-1] ^ 0xFF]) if corrupt else data

    return fetch


def test_download_verifies_then_writes_atomically_into_the_cache(
    multi30k_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(DATA_ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    log: list[str] = []
    monkeypatch.setattr(multi30k_mod, "_fetch_url", _fake_downloader(multi30k_root, log))
    replaced: list[tuple[str, str]] = []
    real_replace = os.replace

    def spy_replace(src: str, dst: str | os.PathLike[str]) -> None:
        assert Path(dst).parent == Path(src).parent  # same folder, so the rename is atomic
        replaced.append((Path(src).name, Path(dst).name))
        real_replace(src, dst)

    monkeypatch.setattr(multi30k_mod.os, "replace", spy_replace)
    pairs = at.load_multi30k("test_2016_flickr", "en", "fr")
    cache = tmp_path / "cache" / "attn_tutorial" / "multi30k"
    assert log == [at.MULTI30K_URL.format(split="test_2016_flickr", lang=l) for l in ("en", "fr")]
    assert [dst for _, dst in replaced] == ["test_2016_flickr.en.gz", "test_2016_flickr.fr.gz"]
    assert all(src.endswith(".part") and src != dst for src, dst in replaced)
    assert sorted(p.name for p in cache.iterdir()) == ["test_2016_flickr.en.gz", "test_2016_flickr.fr.gz"]
    for name in ("test_2016_flickr.en.gz", "test_2016_flickr.fr.gz"):
        assert hashlib.sha256((cache / name).read_bytes()).hexdigest() == at.MULTI30K_SHA256[name]
    assert pairs == at.load_multi30k("test_2016_flickr", "en", "fr", root=multi30k_root)
    at.load_multi30k("test_2016_flickr", "en", "fr")  # now found locally: no new download
    assert len(log) == 2


def test_download_with_a_bad_checksum_or_a_failed_rename_leaves_nothing(
    multi30k_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path))  # holds no multi30k/: nothing found locally
    log: list[str] = []
    monkeypatch.setattr(multi30k_mod, "_fetch_url", _fake_downloader(multi30k_root, log, corrupt=True))
    root = tmp_path / "root"
    with pytest.raises(at.ChecksumError, match="nothing was written"):
        at.load_multi30k("val", root=root)
    assert len(log) == at.DOWNLOAD_ATTEMPTS and (not root.exists() or not any(root.iterdir()))  # restarted, then given up

    monkeypatch.setattr(multi30k_mod, "_fetch_url", _fake_downloader(multi30k_root, log))

    def crash(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(multi30k_mod.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        at.load_multi30k("val", root=root)
    assert list(root.iterdir()) == []  # neither a partial file nor the temporary one


def test_a_corrupted_data_file_is_never_used_and_the_message_says_how_to_get_a_good_one(
    multi30k_root: Path, tmp_path: Path
) -> None:
    _copy_split(multi30k_root, tmp_path)
    path = tmp_path / "val.de.gz"
    path.write_bytes(path.read_bytes()[:-100])  # cut short, as by an interrupted copy
    with pytest.raises(at.ChecksumError) as info:
        at.load_multi30k("val", root=tmp_path)
    message = str(info.value)
    assert isinstance(info.value, attn_tutorial.UserError) and "\n" not in message
    assert str(path) in message and "it was not used" in message
    assert "Delete it" in message and at.MULTI30K_URL.format(split="val", lang="de") in message


def test_the_command_line_reports_a_corrupted_data_file_in_one_line(
    multi30k_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from attn_tutorial.cli import main

    if "gru-none" not in attn_tutorial.list_pretrained():
        pytest.skip("needs the shipped gru-none model's card")
    _copy_split(multi30k_root, tmp_path / "multi30k")
    bad = tmp_path / "multi30k" / "val.en.gz"
    bad.write_bytes(bad.read_bytes()[:-1] + bytes([bad.read_bytes()[-1] ^ 0xFF]))
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path))
    hyps = tmp_path / "hyps.txt"
    hyps.write_text("x\n" * at.MULTI30K_SIZES["val"])
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--model", "gru-none", "--split", "val", "--hypotheses", str(hyps)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert str(bad) in err and "is corrupted" in err and "Delete it" in err


def _flaky_downloader(source: Path, log: list[str], failures: list[Any]):  # noqa: ANN202
    """Fails (raises, or returns cut-short bytes) as ``failures`` says, one entry per call, then works."""

    def fetch(url: str, timeout: float = 60.0) -> bytes:
        log.append(url)
        data = (source / url.rsplit("/", 1)[1]).read_bytes()
        if failures:
            failure = failures.pop(0)
            if failure == "short":
                return data[: len(data) // 3]
            raise failure
        return data

    return fetch


@pytest.mark.parametrize(
    "failures",
    [["short"], [http.client.IncompleteRead(b"partial", 1000)], [ConnectionResetError("reset"), "short"]],
    ids=["cut-short", "incomplete-read", "reset-then-short"],
)
def test_a_download_cut_short_is_started_again_and_never_used_half_written(
    multi30k_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failures: list[Any]
) -> None:
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path))
    log: list[str] = []
    expected_calls = len(failures) + 1
    monkeypatch.setattr(multi30k_mod, "_fetch_url", _flaky_downloader(multi30k_root, log, failures))
    root = tmp_path / "root"
    path = at.multi30k_path("val", "en", root=root)
    assert len(log) == expected_calls
    assert hashlib.sha256(path.read_bytes()).hexdigest() == at.MULTI30K_SHA256["val.en.gz"]
    assert [p.name for p in root.iterdir()] == ["val.en.gz"]  # no temporary file left


def test_a_download_that_always_breaks_off_writes_nothing(multi30k_root: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path))
    log: list[str] = []
    failures: list[Any] = [http.client.IncompleteRead(b"x", 10)] * at.DOWNLOAD_ATTEMPTS
    monkeypatch.setattr(multi30k_mod, "_fetch_url", _flaky_downloader(multi30k_root, log, failures))
    with pytest.raises(FileNotFoundError, match=f"broke off {at.DOWNLOAD_ATTEMPTS} times"):
        at.multi30k_path("val", "en", root=tmp_path / "root")
    assert len(log) == at.DOWNLOAD_ATTEMPTS and not (tmp_path / "root").exists()


def test_a_killed_download_leaves_only_a_temporary_file_that_is_ignored_and_cleaned(
    multi30k_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path))
    root = tmp_path / "root"
    root.mkdir()
    good = (multi30k_root / "val.en.gz").read_bytes()
    stale = root / ".val.en.gz.k1ll3d.part"  # what atomic_write_bytes leaves when the process is killed mid-write
    stale.write_bytes(good[:1000])
    os.utime(stale, (0, 0))  # long ago
    fresh = root / ".val.en.gz.0ther.part"  # another process's download in progress: left alone
    fresh.write_bytes(good[:10])
    with pytest.raises(FileNotFoundError):  # a half-written temporary file is never taken for the data
        at.multi30k_path("val", "en", root=root, download=False)
    log: list[str] = []
    monkeypatch.setattr(multi30k_mod, "_fetch_url", _fake_downloader(multi30k_root, log))
    path = at.multi30k_path("val", "en", root=root)
    assert path.read_bytes() == good and len(log) == 1
    assert sorted(p.name for p in root.iterdir()) == [".val.en.gz.0ther.part", "val.en.gz"]


