"""Seeds, devices and paths: the small things every chapter's first cell needs.

Everything here is deliberately independent of the working directory: a notebook opened from
``chapters/``, a script run from the repository root and a user's own project all get the same
answers.
"""

from __future__ import annotations

import contextlib
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import UserError

__all__ = [
    "amp_settings",
    "DATA_ENV_VAR",
    "set_seed",
    "default_device",
    "autocast_dtype",
    "repo_root",
    "data_dir",
    "atomic_write_bytes",
]

#: Environment variable naming the directory that holds the book's data sets
#: (for example ``$ATTN_TUTORIAL_DATA/multi30k/train.de.gz``).
DATA_ENV_VAR = "ATTN_TUTORIAL_DATA"


def set_seed(seed: int = 0) -> torch.Generator:
    """Seed Python's ``random``, NumPy's legacy global generator and PyTorch (CPU and CUDA).

    Returns a fresh ``torch.Generator`` seeded with ``seed`` for code that prefers an explicit
    generator over global state.

    >>> g = set_seed(3); a = torch.rand(2); _ = set_seed(3); b = torch.rand(2)
    >>> bool(torch.equal(a, b))
    True
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
    return torch.Generator().manual_seed(seed)


def default_device(prefer: str | None = None) -> torch.device:
    """The device to compute on: ``prefer`` if given, else CUDA, then Apple MPS, then CPU.

    ``prefer`` may be any string ``torch.device`` accepts (``"cpu"``, ``"cuda:1"``, ...); asking for
    an accelerator that is not present raises a ``RuntimeError`` instead of silently falling back.
    """
    if prefer is not None:
        device = torch.device(prefer)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device={prefer!r} was requested but CUDA is not available here")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise RuntimeError(f"device={prefer!r} was requested but Apple MPS is not available here")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def user_device(name: str | None) -> torch.device:
    """:func:`default_device` for a name a user typed: a device that is not here, or a malformed name,
    is a :class:`~attn_tutorial.errors.UserError` (one line, exit status 2 on the command line)."""
    try:
        return default_device(name)
    except (RuntimeError, TypeError) as err:
        raise UserError(str(err) if isinstance(err, RuntimeError) else f"invalid --device {name!r}") from None


def autocast_dtype(device: torch.device | str) -> torch.dtype | None:
    """The mixed-precision dtype to use on ``device``, or ``None`` for full float32.

    bfloat16 on GPUs that support it (no loss scaling needed), float16 on older CUDA GPUs, and
    ``None`` on CPU and MPS, where the book trains in float32 for reproducibility.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


def repo_root() -> Path | None:
    """The root of the book's repository when the package is used from a checkout, else ``None``.

    Found from this file's location (never from the working directory): the first parent that holds
    both ``_toc.yml`` and ``attn_tutorial/``.
    """
    for parent in Path(__file__).resolve().parents:
        if (parent / "_toc.yml").is_file() and (parent / "attn_tutorial").is_dir():
            return parent
    return None


def data_dir(create: bool = False) -> Path:
    """The directory the package reads data sets from.

    ``$ATTN_TUTORIAL_DATA`` when set (CI points it at ``../shared/data``), else the user cache
    ``$XDG_CACHE_HOME/attn_tutorial`` (``~/.cache/attn_tutorial``), where downloads are stored.
    A relative ``$ATTN_TUTORIAL_DATA`` is resolved against the working directory once, here.
    """
    env = os.environ.get(DATA_ENV_VAR)
    if env:
        path = Path(env).expanduser().resolve()
        if not path.is_dir():
            raise FileNotFoundError(
                f"{DATA_ENV_VAR}={env!r} does not name a directory; point it at the folder that holds "
                "'multi30k/' (for example the absolute path of ../shared/data), or unset it to use "
                "the download cache"
            )
        return path
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "attn_tutorial"
    if create:
        cache.mkdir(parents=True, exist_ok=True)
    return cache


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` so that ``path`` is either absent/old or complete, never half written.

    The bytes go to a temporary file in the same directory, are flushed to disk, and the file is
    moved into place with ``os.replace`` (atomic on POSIX and Windows); the directory entry is then
    synced too. Parent directories are created. Used for downloads, tokenizers and checkpoints.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if os.name == "posix":  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def amp_settings(device: torch.device | str, amp: bool | None = None) -> tuple[torch.dtype | None, bool]:
    """``(autocast dtype or None, use a GradScaler)`` for training on ``device``.

    ``amp=None`` (automatic) follows :func:`~attn_tutorial.runtime.autocast_dtype`: bf16 on CUDA GPUs
    that support it (no scaler needed: bf16 has float32's exponent range), fp16 + ``GradScaler`` on
    older CUDA GPUs, float32 on CPU and MPS. ``amp=True`` is the same on CUDA and bf16 on CPU;
    ``amp=False`` is always float32.
    """
    device = torch.device(device)
    if amp is False:
        return None, False
    dtype = autocast_dtype(device)
    if dtype is None and amp is True:
        if device.type != "cpu":
            raise ValueError(f"amp=True is supported on CUDA and CPU, not on device={str(device)!r}; use amp=None")
        dtype = torch.bfloat16
    return dtype, dtype == torch.float16 and device.type == "cuda"


def maybe_autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
