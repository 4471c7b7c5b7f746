"""Multi30K :cite:p:`elliott2016multi30k`: found locally or downloaded, always verified.

:func:`load_multi30k` returns sentence pairs of one split. The files are looked for in the
``ATTN_TUTORIAL_DATA`` directory (and its ``multi30k/`` folder), then downloaded from upstream when the
machine is online; either way they are checked against the SHA-256 checksums embedded here before use.
Offline with the files missing, the error says what to do.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import time
import urllib.request
from pathlib import Path

from .errors import ChecksumError, UserError
from .runtime import DATA_ENV_VAR, atomic_write_bytes, data_dir

__all__ = [
    "MULTI30K_SPLITS",
    "MULTI30K_LANGS",
    "MULTI30K_SIZES",
    "MULTI30K_SHA256",
    "MULTI30K_URL",
    "ChecksumError",
    "DOWNLOAD_ATTEMPTS",
    "multi30k_path",
    "read_multi30k",
    "load_multi30k",
]

MULTI30K_SPLITS: tuple[str, ...] = ("train", "val", "test_2016_flickr", "test_2017_flickr")
MULTI30K_LANGS: tuple[str, ...] = ("de", "en", "fr")
#: Sentences per split (the same in every language).
MULTI30K_SIZES: dict[str, int] = {"train": 29_000, "val": 1_014, "test_2016_flickr": 1_000, "test_2017_flickr": 1_000}
#: Upstream location of the raw gzip files (task 1 of the Multi30K data repository).
MULTI30K_URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/{split}.{lang}.gz"
#: SHA-256 of every file, as listed in the data folder's ``SHA256SUMS`` (byte-identical to upstream).
MULTI30K_SHA256: dict[str, str] = {
    "test_2016_flickr.de.gz": "9204244e408ccb38d2a55cfcd344df15005fc42a07a6e55ca6c52b6ababb8cc8",
    "test_2016_flickr.en.gz": "611d361c6334bc7246101d48097c13cf5c4413c5befc793cc629934359d532d9",
    "test_2016_flickr.fr.gz": "6d326e188d259fb1d04ac19eae3af956559b3a0b93d7635e56c90987c40c8b90",
    "test_2017_flickr.de.gz": "a2c89666db00c495cd8513b9d708d5a3acc205d7de312ef2bf5fb7ebc1540aee",
    "test_2017_flickr.en.gz": "76a444ee25172e72695cddb13ae4a3bda59430617be88e0bb46b60504f054074",
    "test_2017_flickr.fr.gz": "3ba671ceb2299f3304ffafefea7a833d08632fbaf0ba18546f8a2ec2391af496",
    "train.de.gz": "726e39b2fa9eb9ffb6dc763fb35a179f80fae06ffc5d28b6ace5faa883de28a6",
    "train.en.gz": "d79cfa999dd4c51d2cb42499b6796d5a882c3a8a961923c25a898c90f8bbd56f",
    "train.fr.gz": "622e75069e9f4c577425c4f277116ce66e63a2401c0a2312d90073cb12379a3c",
    "val.de.gz": "f0cba2f995189cf5770f29a8a9a537a3ad3f51657ad873405082ff6863a5e75a",
    "val.en.gz": "14f7d25ddd868909a9213e361768460edcacdd6ab9d1e77b92560dc10c10dc28",
    "val.fr.gz": "ca3106f1a72390591d25f6c45cb4cd39dec4cd3f123e099748a3ce5256c160e9",
}

# (resolved path, mtime_ns, size) of files whose checksum was verified in this process.
_VERIFIED: set[tuple[str, int, int]] = set()


def _check_split_lang(split: str, lang: str, lang_name: str = "lang") -> None:
    if split not in MULTI30K_SPLITS:
        raise UserError(f"split must be one of {MULTI30K_SPLITS}, got {split!r}")
    if lang not in MULTI30K_LANGS:
        raise UserError(f"{lang_name} must be one of {MULTI30K_LANGS}, got {lang!r}")


def _fetch_url(url: str, timeout: float = 60.0) -> bytes:
    """Download ``url`` into memory (the files are at most 1.3 MB). Tests replace this function."""
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - fixed https URL
        return response.read()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _search_dirs(root: str | os.PathLike[str] | None) -> list[Path]:
    dirs: list[Path] = []
    if root is not None:
        dirs.append(Path(root).expanduser())
    dirs.append(data_dir() / "multi30k")  # $ATTN_TUTORIAL_DATA/multi30k, else the user cache
    return list(dict.fromkeys(dirs))


def _verified_bytes(path: Path) -> bytes:
    """The bytes of ``path`` after checking their SHA-256 (skipped when this path, with the same
    modification time and size, was verified before in this process)."""
    name = path.name
    data = path.read_bytes()
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if key in _VERIFIED and len(data) == stat.st_size:
        return data
    digest = _sha256(data)
    if digest != MULTI30K_SHA256[name]:
        raise ChecksumError(
            f"{path} is corrupted or not the expected version: SHA-256 {digest}, expected "
            f"{MULTI30K_SHA256[name]}; it was not used. Delete it (it is downloaded again, and checked, on the next "
            f"run) or restore a good copy from "
            f"{MULTI30K_URL.format(split=name.rsplit('.', 2)[0], lang=name.rsplit('.', 2)[1])}"
        )
    _VERIFIED.add(key)
    return data


#: How many times a download that was cut short (or arrived damaged) is started again from scratch.
DOWNLOAD_ATTEMPTS = 3
#: Failures that mean "the transfer broke off", worth starting again (being offline is not).
_CUT_SHORT = (http.client.IncompleteRead, http.client.RemoteDisconnected, ConnectionResetError, ConnectionAbortedError, TimeoutError)
#: A temporary download file (``.NAME.XXXX.part``) older than this is debris of a killed download.
_STALE_PART_SECONDS = 600.0


def _remove_stale_parts(target: Path) -> None:
    """Delete temporary files a killed download of ``target`` left behind (never used, never renamed)."""
    if not target.parent.is_dir():
        return
    now = time.time()
    for part in target.parent.glob(f".{target.name}.*.part"):
        try:
            if now - part.stat().st_mtime > _STALE_PART_SECONDS:  # a younger one may be another process's
                part.unlink()
        except OSError:
            pass


def _download_verified(url: str, name: str, searched: str, hint: str) -> bytes:
    """The bytes at ``url``, whose SHA-256 is checked; a transfer cut short or damaged is restarted."""
    expected = MULTI30K_SHA256[name]
    digests: list[str] = []
    for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
        try:
            data = _fetch_url(url)
        except _CUT_SHORT as err:
            if attempt < DOWNLOAD_ATTEMPTS:
                continue
            raise FileNotFoundError(
                f"Multi30K file {name} not found in: {searched}, and its download from {url} broke off "
                f"{DOWNLOAD_ATTEMPTS} times ({type(err).__name__}: {err}). {hint}."
            ) from None
        except Exception as err:  # noqa: BLE001 - any other network failure means "offline" here
            raise FileNotFoundError(
                f"Multi30K file {name} not found in: {searched}, and downloading it failed "
                f"({type(err).__name__}: {err}). {hint}."
            ) from None
        digest = _sha256(data)
        if digest == expected:
            return data
        digests.append(f"{digest[:12]}... ({len(data)} bytes)")
    raise ChecksumError(
        f"downloaded {url} {DOWNLOAD_ATTEMPTS} times and its SHA-256 was never {expected} (got {', '.join(digests)}); "
        f"nothing was written. Download it by hand into one of {searched}, check it with sha256sum, or set "
        f"{DATA_ENV_VAR} to a folder with good copies"
    )


def multi30k_path(split: str, lang: str, root: str | os.PathLike[str] | None = None, *, download: bool = True) -> Path:
    """The local, verified path of ``{split}.{lang}.gz``, downloading it if needed.

    Looks in ``root`` (a folder holding the ``.gz`` files directly), then in
    ``$ATTN_TUTORIAL_DATA/multi30k``, or, when that variable is unset, in the user cache
    ``~/.cache/attn_tutorial/multi30k`` (see :func:`attn_tutorial.runtime.data_dir`). A file found
    is checked against :data:`MULTI30K_SHA256` (:class:`ChecksumError` if it differs; it is never
    used). A missing file is downloaded from :data:`MULTI30K_URL` when ``download`` is true and
    verified in memory; a transfer that breaks off or arrives damaged is started again from scratch
    (up to :data:`DOWNLOAD_ATTEMPTS` times). Only verified bytes are written: to a temporary
    ``.NAME.XXXX.part`` file in ``root`` (or the data directory), synced, then renamed into place, so
    a killed download never leaves a half-written file under the real name (its temporary file is
    deleted by a later download). Missing and not downloadable: one ``FileNotFoundError`` naming
    the folders searched and the variable to set.
    """
    _check_split_lang(split, lang)
    name = f"{split}.{lang}.gz"
    dirs = _search_dirs(root)
    for d in dirs:
        candidate = d / name
        if candidate.is_file():
            _verified_bytes(candidate)
            return candidate
    url = MULTI30K_URL.format(split=split, lang=lang)
    searched = ", ".join(str(d) for d in dirs)
    hint = (
        f"Set {DATA_ENV_VAR} to the folder that holds 'multi30k/' (for example the absolute path of "
        f"../shared/data), pass root=, or download {url} into one of the folders searched"
    )
    if not download:
        raise FileNotFoundError(f"Multi30K file {name} not found in: {searched}. {hint}.")
    target = dirs[0] / name
    data = _download_verified(url, name, searched, hint)
    _remove_stale_parts(target)
    atomic_write_bytes(target, data)
    return target


def read_multi30k(split: str, lang: str, root: str | os.PathLike[str] | None = None, *, download: bool = True) -> list[str]:
    """The sentences of one Multi30K file, exactly as stored (only the line's ``"\\n"`` removed).

    Lines are split on ``"\\n"`` only (not on ``"\\r"`` or Unicode line separators, which
    ``str.splitlines`` would also split on).
    """
    path = multi30k_path(split, lang, root, download=download)
    text = gzip.decompress(_verified_bytes(path)).decode("utf-8")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def load_multi30k(
    split: str, src: str = "de", tgt: str = "en", root: str | os.PathLike[str] | None = None, *, download: bool = True
) -> list[tuple[str, str]]:
    """Aligned ``(source, target)`` sentence pairs of a Multi30K split :cite:p:`elliott2016multi30k`.

    ``split`` is one of ``MULTI30K_SPLITS`` (train 29,000 pairs, val 1,014, test_2016_flickr
    1,000, test_2017_flickr 1,000); ``src`` and ``tgt`` two different languages of
    ``MULTI30K_LANGS``. Where the files come from: :func:`multi30k_path`.

    >>> pairs = load_multi30k("val")  # doctest: +SKIP
    >>> pairs[0]  # doctest: +SKIP
    ('Eine Gruppe von Männern lädt Baumwolle auf einen Lastwagen', 'A group of men are loading cotton onto a truck')
    """
    _check_split_lang(split, src, "src")
    _check_split_lang(split, tgt, "tgt")
    if src == tgt:
        raise UserError(f"src and tgt must be different languages, got src=tgt={src!r}")
    source = read_multi30k(split, src, root, download=download)
    target = read_multi30k(split, tgt, root, download=download)
    if len(source) != len(target):
        raise UserError(f"{split}.{src} has {len(source)} lines but {split}.{tgt} has {len(target)}: the two files do not belong together")
    return list(zip(source, target, strict=True))


