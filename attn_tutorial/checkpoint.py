"""Checkpoints: weights and training state on disk, without pickle, crash-safe.

A checkpoint is a directory: ``model-<id>.safetensors`` (the state dict), optionally
``state-<id>.safetensors`` (what :mod:`attn_tutorial.resume` captures: optimizer moments, RNG states,
best weights) and the JSON sidecar ``checkpoint.json``, written last, so a checkpoint directory is
complete if and only if its JSON exists. :func:`save_checkpoint`, :func:`load_checkpoint`,
:func:`latest_checkpoint` and rotation serve :func:`~attn_tutorial.train.fit`;
:func:`average_checkpoints`, :func:`export_fp16` and :func:`load_exported` make shipped weights.

Crash safety: every file is written to a temporary name, flushed and ``fsync``-ed, then renamed into
place (``os.replace``, atomic). The JSON sidecar is the checkpoint's commit point: it names the
weights and state files by their (fresh, random) names and SHA-256, and it is renamed into place only
after they are complete, so a process killed at any moment (SIGKILL included, mid-step or
mid-write) leaves the previous complete checkpoint as the newest one :func:`latest_checkpoint` finds.
Rotation renames a directory out of the ``step-N`` namespace before deleting it, so a half-deleted
checkpoint is never taken for a complete one. A write that fails (a full disk) removes what it
wrote and leaves the previous checkpoint intact.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import Tensor, nn

from ._checks import describe
from .errors import DamagedFileError
from .resume import TrainingState
from .runtime import atomic_write_bytes, repo_root

if TYPE_CHECKING:  # only for annotations: train.py imports this module
    from .configs import TrainConfig
    from .train import History

__all__ = [
    "CHECKPOINT_JSON",
    "Checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "latest_checkpoint",
    "average_checkpoints",
    "export_fp16",
    "load_exported",
]


#: Name of the JSON sidecar; a checkpoint directory is complete iff this file exists.
CHECKPOINT_JSON = "checkpoint.json"


_FORMAT = "attn_tutorial.checkpoint"


_FORMAT_VERSION = 1


_STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass
class Checkpoint:
    """A loaded checkpoint: ``weights`` (a state dict), ``metadata`` (the JSON sidecar), ``training_state``."""

    path: Path
    weights: dict[str, Tensor]
    metadata: dict[str, Any]
    training_state: TrainingState | None = None

    @property
    def step(self) -> int:
        """The global optimizer step the checkpoint was written at."""
        return int(self.metadata.get("step") or 0)


def _write_json_atomic(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, default=str) + "\n").encode())


#: Test hook: ``"POINT@STEP"`` kills this process with SIGKILL when it reaches ``POINT`` at ``STEP``
#: (points: ``step`` (after the backward pass, before the update), ``weights-written``,
#: ``state-written``, ``json-written``, ``rotating``). Used by the tests of interrupted training.
_KILL_ENV = "ATTN_TUTORIAL_TEST_KILL_AT"


def kill_point(point: str, step: int | None) -> None:
    spec = os.environ.get(_KILL_ENV)
    if spec and spec == f"{point}@{step}":
        os.kill(os.getpid(), signal.SIGKILL)


def _untie(tensors: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors safetensors can store (CPU, contiguous, no shared memory) and the aliases of tied ones.

    Tied weights (one tensor under two names, e.g. shared embeddings) are stored once; ``aliases``
    maps each extra name to the stored one. Other overlapping views are copied.
    """
    out: dict[str, Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[int, tuple[str, Tensor]] = {}
    for name, t in tensors.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"{name!r} is {describe(t)}, expected a tensor")
        t = t.detach().to("cpu")
        if t.numel() > 0:
            ptr = t.untyped_storage().data_ptr()
            if ptr in seen:
                first_name, first = seen[ptr]
                same_view = (
                    first.dtype == t.dtype
                    and first.shape == t.shape
                    and first.stride() == t.stride()
                    and first.storage_offset() == t.storage_offset()
                )
                if same_view:
                    aliases[name] = first_name
                    continue
                t = t.clone()
            else:
                seen[ptr] = (name, t)
        out[name] = t.contiguous()
    return out, aliases


def _safetensors_file(directory: Path, kind: str, tensors: Mapping[str, Tensor]) -> tuple[dict[str, Any], dict[str, str]]:
    """Write ``tensors`` atomically as ``{kind}-{random}.safetensors``; returns its JSON record."""
    stored, aliases = _untie(tensors)
    data = safetensors_bytes(stored, metadata={"format": _FORMAT})
    name = f"{kind}-{uuid.uuid4().hex[:12]}.safetensors"
    atomic_write_bytes(directory / name, data)
    return {"name": name, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}, aliases


def _read_safetensors(directory: Path, record: Mapping[str, Any], device: str) -> dict[str, Tensor]:
    path = directory / record["name"]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != record["sha256"]:
        raise DamagedFileError(
            f"{path} is corrupt: sha256 {digest} != {record['sha256']} recorded in {CHECKPOINT_JSON}; resume from "
            "an older checkpoint of the run (or delete this one)"
        )
    return load_file(str(path), device=device)


@functools.lru_cache(maxsize=1)
def _git_commit() -> str | None:
    root = repo_root()
    if root is None or not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _model_config(model: nn.Module) -> dict[str, Any] | None:
    cfg = getattr(model, "config", None)
    if cfg is not None and dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return dataclasses.asdict(cfg)
    return None


def _tokenizer_record(tokenizer: Any) -> dict[str, Any] | None:
    if tokenizer is None:
        return None
    if isinstance(tokenizer, os.PathLike) or (isinstance(tokenizer, str) and not tokenizer.lstrip().startswith("{")):
        return {"path": os.fspath(tokenizer)}
    if isinstance(tokenizer, str):
        return {"json": tokenizer}
    if isinstance(tokenizer, Mapping):
        return {"json": json.dumps(tokenizer)}
    to_str = getattr(tokenizer, "to_str", None)  # tokenizers.Tokenizer
    if callable(to_str):
        return {"json": to_str()}
    raise TypeError(
        f"tokenizer must be None, a path, a JSON string, a dict or an object with to_str(), got {type(tokenizer).__name__}"
    )


def save_checkpoint(
    directory: str | os.PathLike[str],
    model: nn.Module,
    *,
    config: TrainConfig | None = None,
    history: History | None = None,
    tokenizer: Any = None,
    step: int | None = None,
    epoch: int | None = None,
    training_state: TrainingState | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model``'s weights (and optionally a training state) to the checkpoint ``directory``.

    Layout: ``model-<id>.safetensors`` (the state dict; tied tensors stored once), optionally
    ``state-<id>.safetensors`` (optimizer moments, RNG states...), and ``checkpoint.json`` with the
    training config, the model config (``asdict(model.config)`` when the model has a dataclass
    ``config``), the tokenizer (``{"path": ...}`` or ``{"json": ...}``; pass a path, a JSON string or a
    ``tokenizers.Tokenizer``), the history, the git commit (``null`` outside a checkout), device, wall
    time, torch version, step and epoch, and each file's sha256.

    Atomic: every file is written to a temporary name in ``directory`` and moved into place with
    ``os.replace``; the new files get fresh names, and the JSON, written last, switches to them in
    one step. A crash at any point leaves the previous checkpoint in ``directory`` (if any) intact and
    loadable; files the JSON no longer names are deleted only after it is in place.
    Returns the directory.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []  # removed again if the checkpoint cannot be completed (a full disk)
    try:
        weights_record, aliases = _safetensors_file(directory, "model", model.state_dict())
        written.append(directory / weights_record["name"])
        kill_point("weights-written", step)
        state_record = state_aliases = None
        if training_state is not None:
            state_record, state_aliases = _safetensors_file(directory, "state", training_state.tensors)
            written.append(directory / state_record["name"])
        kill_point("state-written", step)
        _complete_checkpoint(directory, model, weights_record, aliases, state_record, state_aliases, config=config,
                             history=history, tokenizer=tokenizer, step=step, epoch=epoch,
                             training_state=training_state, extra=extra)
    except BaseException:
        if not _names_files(directory, written):  # the JSON did not switch to them: they are debris
            for path in written:
                with contextlib.suppress(OSError):
                    path.unlink()
        raise
    kill_point("json-written", step)
    keep = {weights_record["name"]} | ({state_record["name"]} if state_record else set())
    for stale in directory.glob("*.safetensors"):
        if stale.name not in keep and re.match(r"^(model|state)-[0-9a-f]{12}\.safetensors$", stale.name):
            stale.unlink(missing_ok=True)
    return directory


def _names_files(directory: Path, files: Sequence[Path]) -> bool:
    """Whether ``directory``'s checkpoint JSON on disk names any of ``files`` (the save did commit)."""
    try:
        meta = json.loads((directory / CHECKPOINT_JSON).read_text())
        named = {(r or {}).get("name") for r in meta["files"].values()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return any(p.name in named for p in files)


def _complete_checkpoint(
    directory: Path, model: nn.Module, weights_record: dict[str, Any], aliases: dict[str, str],
    state_record: dict[str, Any] | None, state_aliases: dict[str, str] | None, *, config: TrainConfig | None,
    history: History | None, tokenizer: Any, step: int | None, epoch: int | None,
    training_state: TrainingState | None, extra: Mapping[str, Any] | None,
) -> None:
    """Write the JSON sidecar that makes the checkpoint in ``directory`` complete (the commit point)."""
    try:
        device = str(next(model.parameters()).device)
    except StopIteration:
        device = "cpu"
    meta: dict[str, Any] = {
        "format": _FORMAT,
        "format_version": _FORMAT_VERSION,
        "files": {"weights": weights_record, "training_state": state_record},
        "aliases": aliases,
        "step": step,
        "epoch": epoch,
        "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "model_config": _model_config(model),
        "train_config": config.to_dict() if config is not None else None,
        "tokenizer": _tokenizer_record(tokenizer),
        "history": history.to_dict() if history is not None else None,
        "git_commit": _git_commit(),
        "device": device,
        "wall_time": history.wall_time if history is not None else None,
        "torch_version": torch.__version__,
        "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "training_state": (
            {"scalars": training_state.scalars, "aliases": state_aliases} if training_state is not None else None
        ),
        "extra": dict(extra) if extra is not None else None,
    }
    _write_json_atomic(directory / CHECKPOINT_JSON, meta)


def load_checkpoint(
    directory: str | os.PathLike[str],
    model: nn.Module | None = None,
    map_location: torch.device | str = "cpu",
    *,
    strict: bool = True,
    load_training_state: bool = True,
) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (``safetensors.torch.load_file``, no pickle).

    If ``model`` is given its weights are replaced (``load_state_dict(strict=strict)``). The weights
    file is checked against the sha256 recorded in the JSON. A directory without ``checkpoint.json``
    is an incomplete checkpoint and raises ``FileNotFoundError``.
    """
    directory = Path(directory)
    meta_path = directory / CHECKPOINT_JSON
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"{directory} holds no complete checkpoint: {CHECKPOINT_JSON} is missing (a checkpoint is complete "
            "exactly when its JSON exists)"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DamagedFileError(
            f"{meta_path} is not valid JSON ({err}); the checkpoint is damaged: resume from an older one of the run"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise DamagedFileError(f"{meta_path} is not an {_FORMAT} file (format={found!r})")
    if int(meta.get("format_version") or 1) > _FORMAT_VERSION:
        raise DamagedFileError(
            f"{meta_path} has checkpoint format {meta['format_version']}, newer than the {_FORMAT_VERSION} this "
            "attn_tutorial reads: upgrade (pip install -U attn-tutorial)"
        )
    device = str(torch.device(map_location))
    weights = _read_safetensors(directory, meta["files"]["weights"], device)
    for alias, target in meta.get("aliases", {}).items():
        weights[alias] = weights[target]
    state = None
    if load_training_state and meta["files"].get("training_state"):
        tensors = _read_safetensors(directory, meta["files"]["training_state"], device)
        for alias, target in (meta["training_state"].get("aliases") or {}).items():
            tensors[alias] = tensors[target]
        state = TrainingState(tensors=tensors, scalars=meta["training_state"]["scalars"])
    if model is not None:
        model.load_state_dict(weights, strict=strict)
    return Checkpoint(path=directory, weights=weights, metadata=meta, training_state=state)


def _step_dirs(root: Path) -> list[tuple[int, Path, bool]]:
    """``(step, path, complete)`` for every ``step-N`` directory under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p, (p / CHECKPOINT_JSON).is_file()))
    return sorted(found)


def latest_checkpoint(root: str | os.PathLike[str]) -> Path | None:
    """The newest *complete* ``step-N`` checkpoint under ``root`` (a ``checkpoint_dir``), or ``None``."""
    complete = [p for _, p, ok in _step_dirs(Path(root)) if ok]
    return complete[-1] if complete else None


_TRASH_PREFIX = ".deleting-"


def rotate_checkpoints(root: Path, keep_last_n: int | None, keep_every_steps: int | None = None) -> None:
    dirs = _step_dirs(root)
    complete = [(s, p) for s, p, ok in dirs if ok]
    newest = complete[-1][0] if complete else -1
    doomed = [p for s, p, ok in dirs if not ok and s < newest]  # debris of interrupted saves
    if keep_last_n is not None:
        doomed += [p for s, p in complete[:-keep_last_n] if not (keep_every_steps and s % keep_every_steps == 0)]
    # First out of the step-N namespace (one atomic rename), then deleted: a process killed while
    # deleting leaves a hidden folder, never a step-N checkpoint with some of its files gone.
    trash = [p for p in root.glob(f"{_TRASH_PREFIX}*") if p.is_dir()]  # left by a killed rotation
    for p in doomed:
        target = p.with_name(f"{_TRASH_PREFIX}{p.name}-{uuid.uuid4().hex[:8]}")
        try:
            os.replace(p, target)
        except OSError:
            continue
        trash.append(target)
        kill_point("rotating", int(p.name.removeprefix("step-")))
    for p in trash:
        shutil.rmtree(p, ignore_errors=True)


def average_checkpoints(paths: Sequence[str | os.PathLike[str]]) -> dict[str, Tensor]:
    """Element-wise mean of the weights of several checkpoints (e.g. the last five), a state dict.

    :math:`\\bar\\theta = \\frac1n \\sum_{i=1}^n \\theta_i` per tensor, computed in float64 and cast back
    to each tensor's dtype (:cite:p:`vaswani2017`, section 6.1 averages the last 5 or 20 checkpoints).
    Integer tensors (counters) are taken from the last checkpoint. All checkpoints must have the same
    names and shapes.
    """
    if len(paths) == 0:
        raise ValueError("paths must name at least one checkpoint, got an empty sequence")
    states = [load_checkpoint(p, load_training_state=False).weights for p in paths]
    first = states[0]
    for p, s in zip(paths, states):
        if s.keys() != first.keys():
            raise ValueError(f"checkpoint {p} has tensors {sorted(s.keys() ^ first.keys())} the first one does not share")
        for k, v in s.items():
            if v.shape != first[k].shape:
                raise ValueError(f"{k!r} has shape {tuple(v.shape)} in {p} but {tuple(first[k].shape)} in {paths[0]}")
    averaged: dict[str, Tensor] = {}
    for k, ref in first.items():
        if ref.is_floating_point():
            averaged[k] = torch.stack([s[k].double() for s in states]).mean(dim=0).to(ref.dtype)
        else:
            averaged[k] = states[-1][k].clone()
    return averaged


def export_fp16(
    checkpoint_dir: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    max_bytes: int | None = 16 * 2**20,
) -> Path:
    """Write a checkpoint's weights as one float16 safetensors file, for shipping inside the package.

    Floating tensors are rounded to float16 (round to nearest: relative error at most ``2**-11``);
    integer tensors are kept. The file's safetensors header metadata holds the model class, model
    config, tokenizer record, step and source git commit (JSON strings). Tied tensors (one tensor under
    several names, e.g. shared embeddings and output projection) are stored once, under their first
    name; the header's ``aliases`` maps every other name to it and :func:`load_exported` restores them.
    Raises ``ValueError`` if a weight overflows float16 or the file would exceed ``max_bytes``
    (16 MiB by default; ``None`` = no limit). Written atomically. Read it back with :func:`load_exported`.
    """
    ckpt = load_checkpoint(checkpoint_dir, load_training_state=False)
    # Untie *before* converting: each conversion makes a new tensor, which would hide the ties.
    distinct, aliases = _untie(ckpt.weights)
    stored: dict[str, Tensor] = {}
    for k, v in distinct.items():
        if v.is_floating_point():
            h = v.to(torch.float16)
            if bool((torch.isinf(h) & torch.isfinite(v)).any()):
                raise ValueError(f"{k!r} has values beyond float16's range (|x| > 65504); cannot export it to fp16")
            stored[k] = h
        else:
            stored[k] = v
    meta = ckpt.metadata
    header = {
        "format": _FORMAT + ".fp16",
        "aliases": json.dumps(aliases),
        "model_class": json.dumps(meta.get("model_class")),
        "model_config": json.dumps(meta.get("model_config"), default=str),
        "tokenizer": json.dumps(meta.get("tokenizer")),
        "step": json.dumps(meta.get("step")),
        "git_commit": json.dumps(meta.get("git_commit")),
    }
    data = safetensors_bytes(stored, metadata=header)
    if max_bytes is not None and len(data) > max_bytes:
        raise ValueError(f"the fp16 export would take {len(data)} bytes, more than max_bytes={max_bytes}")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, data)
    return out


def load_exported(
    path: str | os.PathLike[str],
    model: nn.Module | None = None,
    dtype: torch.dtype | None = torch.float32,
    map_location: torch.device | str = "cpu",
) -> Checkpoint:
    """Read a file written by :func:`export_fp16`; floating tensors are cast to ``dtype`` (``None``: keep fp16).

    ``metadata`` holds the decoded header (``model_config``, ``tokenizer``, ``step``...). Tied tensors,
    stored once, come back under every name of the original state dict (the aliases are the very same
    tensor), so ``model.load_state_dict`` is strict. If ``model`` is given its weights are replaced.
    """
    path = Path(path)
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata() or {}
    if header.get("format") != _FORMAT + ".fp16":
        raise DamagedFileError(f"{path} was not written by export_fp16 (format={header.get('format')!r})")
    weights = load_file(str(path), device=str(torch.device(map_location)))
    if dtype is not None:
        weights = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in weights.items()}
    meta = {k: json.loads(v) for k, v in header.items() if k != "format"}
    for alias, target in meta.pop("aliases", {}).items():
        weights[alias] = weights[target]
    if model is not None:
        model.load_state_dict(weights)
    return Checkpoint(path=path, weights=weights, metadata=meta)


def resolve_resume(resume_from: str | os.PathLike[str]) -> Path:
    path = Path(resume_from)
    if (path / CHECKPOINT_JSON).is_file():
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise FileNotFoundError(
            f"resume_from={os.fspath(resume_from)!r} is neither a checkpoint (no {CHECKPOINT_JSON}) nor a "
            "checkpoint_dir holding a complete step-N checkpoint; refusing to start from scratch silently"
        )
    return latest
