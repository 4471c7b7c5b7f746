"""One training loop for every model in the book: :func:`fit`, its configuration and its checkpoints.

The objective is the token-level cross-entropy of a sequence-to-sequence model with label
smoothing :cite:p:`vaswani2017` (section 5.4), averaged over the *real* target tokens of a batch:

.. math::

    \\mathcal{L} = \\frac{1}{N} \\sum_{(b, t):\\, m_{bt}} \\Big[(1 - \\varepsilon)\\,(-\\log p_{bt}(y_{bt}))
        + \\frac{\\varepsilon}{V} \\sum_{v=1}^{V} (-\\log p_{bt}(v))\\Big], \\qquad N = \\sum_{b,t} m_{bt},

where ``m`` is the target mask (``True`` = real token, padding is ignored), ``V`` the vocabulary size
and :math:`\\varepsilon` the label smoothing. It is minimised with AdamW under a learning-rate schedule
with linear warmup (:func:`lr_at`), gradient clipping, optional mixed precision, early stopping on
the validation loss, and atomic, resumable checkpoints.

What :func:`fit` expects of its inputs (duck-typed, so any model and data of this shape work):

* ``model(src, src_mask, tgt_in, tgt_mask)`` returns logits ``(B, T, V)`` (or a tuple whose first
  element is the logits); masks are boolean, ``True`` = real token / may attend.
* every batch has ``src (B, S)``, ``src_mask (B, S)``, ``tgt_in (B, T)``, ``tgt_out (B, T)``,
  ``tgt_mask (B, T)`` and ``.to(device)`` (``attn_tutorial.data.Batch``);
* ``train_batches`` can be iterated once per epoch; if it has ``set_epoch(epoch)`` it is called before
  each epoch (deterministic reshuffling).

Checkpoints contain no pickle: tensors go to ``safetensors`` files, everything else to a JSON sidecar
``checkpoint.json`` written last, so a checkpoint directory is complete if and only if its JSON exists.

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
import itertools
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import Tensor, nn
from torch import distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from .errors import DamagedFileError, TrainingDivergedError, UserError
from .runtime import atomic_write_bytes, autocast_dtype, default_device, repo_root, set_seed

__all__ = [
    "SCHEDULES",
    "CHECKPOINT_JSON",
    "TrainConfig",
    "History",
    "TrainEvent",
    "TrainingState",
    "Checkpoint",
    "lr_at",
    "label_smoothed_cross_entropy",
    "token_cross_entropy",
    "amp_settings",
    "evaluate_loss",
    "fit",
    "init_distributed",
    "save_checkpoint",
    "load_checkpoint",
    "latest_checkpoint",
    "average_checkpoints",
    "export_fp16",
    "load_exported",
]

#: The learning-rate schedules :func:`lr_at` knows (all after a linear warmup).
SCHEDULES = ("constant", "inverse_sqrt", "cosine", "linear")

#: Name of the JSON sidecar; a checkpoint directory is complete iff this file exists.
CHECKPOINT_JSON = "checkpoint.json"

_FORMAT = "attn_tutorial.checkpoint"
_FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step-(\d+)$")

LossFn = Callable[[nn.Module, Any], "Tensor | tuple[Tensor, Tensor | int | float]"]


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


def _is_int(x: object) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _is_real(x: object) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True)
class TrainConfig:
    """Everything :func:`fit` needs to know, validated on construction.

    Frozen: make variants with ``dataclasses.replace(config, lr=3e-4)`` (which validates again).
    Every invalid value raises ``ValueError`` naming the field and the value.

    Args:
        epochs: passes over ``train_batches`` (an upper bound when ``max_steps`` is set).
        max_steps: stop after this many optimizer steps in total (``None``: run all epochs).
        lr: peak learning rate, reached at the end of the warmup.
        betas, eps: AdamW's moment decay rates and denominator constant (defaults from
            :cite:p:`vaswani2017`, section 5.3).
        weight_decay: AdamW's decoupled weight decay, applied to matrices only (parameters with two
            or more dimensions); biases and normalisation gains are not decayed.
        warmup_steps: the learning rate rises linearly from ``lr / warmup_steps`` to ``lr`` over these steps.
        schedule: what happens after the warmup, one of :data:`SCHEDULES` (see :func:`lr_at`).
        min_lr: the floor of the decaying schedules (``cosine``, ``linear``, ``inverse_sqrt``).
        grad_clip: clip the global gradient 2-norm to this value (``None``: no clipping; the norm is
            recorded either way, before clipping).
        label_smoothing: ``epsilon`` of the default loss (training only; validation reports the plain
            cross-entropy, so ``exp(val_loss)`` is a perplexity).
        early_stopping_patience: stop after this many evaluations without a new best validation loss,
            then restore the best weights (``None``: no early stopping, the last weights are kept).
        eval_every: evaluate on ``val_batches`` every this many steps, or ``"epoch"`` at the end of
            every epoch.
        checkpoint_dir: where to write ``step-NNNNNNNN/`` checkpoints (``None``: no checkpoints).
        checkpoint_every_steps: checkpoint every this many steps (``None``: at the end of every epoch).
            A checkpoint is also written when training ends, whatever the reason.
        keep_last_n: keep only the newest ``n`` step checkpoints (``None``: keep all).
        keep_every_steps: rotation also spares every step checkpoint whose step is a multiple of this
            (``None``: none), so that checkpoint averaging can reach further back than the newest
            ``keep_last_n``. Must be a multiple of ``checkpoint_every_steps`` when that is set.
        seed: seeds Python, NumPy and PyTorch at the start of a fresh run (dropout, shuffling).
        device: ``"cpu"``, ``"cuda"``, ``"mps"``... (``None``: CUDA, then Apple MPS, then CPU).
        amp: mixed precision. ``None``: automatic, bf16 on GPUs that support it, else fp16 with a
            gradient scaler, off on CPU and MPS; ``True``: as automatic on CUDA, bf16 on CPU;
            ``False``: always float32.
        log_every: update the progress bar's loss/lr display every this many steps.
        progress: show a tqdm progress bar (notebook or terminal); ``False`` prints nothing at all.
    """

    epochs: int = 1
    max_steps: int | None = None
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-9
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: str = "constant"
    min_lr: float = 0.0
    grad_clip: float | None = 1.0
    label_smoothing: float = 0.0
    early_stopping_patience: int | None = None
    eval_every: int | str = "epoch"
    checkpoint_dir: str | None = None
    checkpoint_every_steps: int | None = None
    keep_last_n: int | None = 3
    keep_every_steps: int | None = None
    seed: int = 0
    device: str | None = None
    amp: bool | None = None
    log_every: int = 10
    progress: bool = True

    def __post_init__(self) -> None:  # noqa: C901 - one check per field reads best flat
        def bad(name: str, expected: str) -> ValueError:
            return ValueError(f"TrainConfig.{name} must be {expected}, got {getattr(self, name)!r}")

        def positive_int(name: str, optional: bool = False) -> None:
            value = getattr(self, name)
            if optional and value is None:
                return
            if not _is_int(value) or value < 1:
                raise bad(name, "a positive int" + (" or None" if optional else ""))

        positive_int("epochs")
        positive_int("max_steps", optional=True)
        if not _is_real(self.lr) or self.lr <= 0:
            raise bad("lr", "a positive finite float")
        betas = self.betas
        if isinstance(betas, list):  # from JSON
            betas = tuple(betas)
            object.__setattr__(self, "betas", betas)
        if not (isinstance(betas, tuple) and len(betas) == 2 and all(_is_real(b) and 0 <= b < 1 for b in betas)):
            raise bad("betas", "a pair of floats in [0, 1)")
        if not _is_real(self.eps) or self.eps <= 0:
            raise bad("eps", "a positive finite float")
        if not _is_real(self.weight_decay) or self.weight_decay < 0:
            raise bad("weight_decay", "a finite float >= 0")
        if not _is_int(self.warmup_steps) or self.warmup_steps < 0:
            raise bad("warmup_steps", "an int >= 0")
        if self.schedule not in SCHEDULES:
            raise bad("schedule", f"one of {SCHEDULES}")
        if not _is_real(self.min_lr) or not 0 <= self.min_lr <= self.lr:
            raise bad("min_lr", f"a float in [0, lr={self.lr!r}]")
        if self.grad_clip is not None and (not _is_real(self.grad_clip) or self.grad_clip <= 0):
            raise bad("grad_clip", "a positive finite float or None")
        if not _is_real(self.label_smoothing) or not 0 <= self.label_smoothing < 1:
            raise bad("label_smoothing", "a float in [0, 1)")
        positive_int("early_stopping_patience", optional=True)
        if self.eval_every != "epoch" and (not _is_int(self.eval_every) or self.eval_every < 1):
            raise bad("eval_every", "a positive int (steps) or 'epoch'")
        if self.checkpoint_dir is not None:
            if not isinstance(self.checkpoint_dir, (str, os.PathLike)) or str(self.checkpoint_dir) == "":
                raise bad("checkpoint_dir", "a non-empty path (str or os.PathLike) or None")
            object.__setattr__(self, "checkpoint_dir", os.fspath(self.checkpoint_dir))
        positive_int("checkpoint_every_steps", optional=True)
        if self.checkpoint_every_steps is not None and self.checkpoint_dir is None:
            raise bad("checkpoint_every_steps", "None when checkpoint_dir is None (nowhere to write)")
        positive_int("keep_last_n", optional=True)
        positive_int("keep_every_steps", optional=True)
        if self.keep_every_steps is not None and self.checkpoint_every_steps is not None:
            if self.keep_every_steps % self.checkpoint_every_steps:  # else those steps are never saved
                raise bad("keep_every_steps", f"a multiple of checkpoint_every_steps={self.checkpoint_every_steps!r}")
        if not _is_int(self.seed) or self.seed < 0:
            raise bad("seed", "an int >= 0")
        if self.device is not None:
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError) as err:
                raise bad("device", "None or a device string such as 'cpu', 'cuda', 'cuda:1' or 'mps'") from err
        if self.amp is not None and not isinstance(self.amp, bool):
            raise bad("amp", "True, False or None (automatic)")
        positive_int("log_every")
        if not isinstance(self.progress, bool):
            raise bad("progress", "True or False")

    def to_dict(self) -> dict[str, Any]:
        """The configuration as a JSON-serialisable dict (``betas`` becomes a list)."""
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``TypeError``."""
        return cls(**dict(d))


# --------------------------------------------------------------------------------------------
# Learning-rate schedule
# --------------------------------------------------------------------------------------------


def lr_at(step: int, config: TrainConfig, total_steps: int | None = None) -> float:
    """The learning rate of optimizer step ``step`` (counted from 1), a pure function.

    With ``w = warmup_steps``, peak ``lr`` and floor ``min_lr``:

    .. math::

        \\eta(s) = \\mathrm{lr} \\cdot \\frac{s}{w} \\quad (s \\le w), \\qquad \\text{then}\\quad
        \\begin{cases}
        \\mathrm{lr} & \\texttt{constant} \\\\
        \\max\\big(\\mathrm{min\\_lr},\\ \\mathrm{lr}\\sqrt{w / s}\\big) & \\texttt{inverse\\_sqrt} \\\\
        \\mathrm{min\\_lr} + (\\mathrm{lr} - \\mathrm{min\\_lr})\\,\\tfrac12\\,(1 + \\cos \\pi p) & \\texttt{cosine} \\\\
        \\mathrm{min\\_lr} + (\\mathrm{lr} - \\mathrm{min\\_lr})\\,(1 - p) & \\texttt{linear}
        \\end{cases}

    with decay progress ``p = (s - w) / (total_steps - w)`` clipped to ``[0, 1]``. ``inverse_sqrt`` is
    the schedule of :cite:p:`vaswani2017` (section 5.3), ``d_model^{-1/2} min(s^{-1/2}, s w^{-3/2})``,
    rescaled so that its peak is ``lr`` (with ``w = 0`` it is ``lr / sqrt(s)``). Step 0 (before any
    update) has learning rate 0 when there is a warmup.

    ``total_steps`` (needed by ``cosine`` and ``linear``) defaults to ``config.max_steps``.
    """
    if not _is_int(step) or step < 0:
        raise ValueError(f"step must be an int >= 0, got {step!r}")
    w = config.warmup_steps
    if w > 0 and step <= w:
        return config.lr * step / w
    if config.schedule == "constant":
        return config.lr
    if config.schedule == "inverse_sqrt":
        return max(config.min_lr, config.lr * math.sqrt(max(w, 1) / max(step, 1)))
    total = config.max_steps if total_steps is None else total_steps
    if total is None:
        raise ValueError(
            f"schedule={config.schedule!r} decays towards step total_steps, but total_steps is None and "
            "config.max_steps is None; pass total_steps or set max_steps"
        )
    if not _is_int(total) or total < 1:
        raise ValueError(f"total_steps must be a positive int, got {total!r}")
    p = min(max((step - w) / max(total - w, 1), 0.0), 1.0)
    shape = 0.5 * (1.0 + math.cos(math.pi * p)) if config.schedule == "cosine" else 1.0 - p
    return config.min_lr + (config.lr - config.min_lr) * shape


# --------------------------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------------------------


def label_smoothed_cross_entropy(
    logits: Tensor, target: Tensor, mask: Tensor, smoothing: float = 0.0, reduction: str = "mean"
) -> Tensor:
    """Cross-entropy against a label-smoothed target, over the real tokens only.

    For every position where ``mask`` is ``True`` (a real token; ``False`` = padding, ignored):

    .. math::

        \\ell = (1 - \\varepsilon)\\,(-\\log p(y)) + \\frac{\\varepsilon}{V} \\sum_{v=1}^{V} (-\\log p(v)),
        \\qquad p = \\mathrm{softmax}(\\text{logits}),

    i.e. the cross-entropy against the distribution ``(1 - eps) onehot(y) + eps / V``
    (:cite:p:`vaswani2017`, section 5.4; PyTorch's ``cross_entropy(label_smoothing=eps)``).
    ``reduction="mean"`` divides the sum by the number of real tokens (the loss *per token*, not per
    sentence); ``"sum"`` returns the sum. Computed in at least float32 whatever the logits' dtype.

    Shape:
        ``logits`` ``(..., V)``, ``target`` ``(...)`` integer, ``mask`` ``(...)`` bool -> scalar.
    """
    if not isinstance(logits, Tensor) or logits.dim() < 1 or not logits.is_floating_point():
        raise ValueError(f"logits must be a floating tensor (..., V), got {_describe(logits)}")
    if not isinstance(target, Tensor) or target.shape != logits.shape[:-1] or target.is_floating_point():
        raise ValueError(
            f"target must be an integer tensor of shape {tuple(logits.shape[:-1])} (logits without the "
            f"vocabulary dimension), got {_describe(target)}"
        )
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.shape != target.shape:
        raise ValueError(
            f"mask must be a bool tensor of shape {tuple(target.shape)} (True = real token), got {_describe(mask)}"
        )
    if not _is_real(smoothing) or not 0 <= smoothing < 1:
        raise ValueError(f"smoothing must be a float in [0, 1), got {smoothing!r}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    log_p = torch.log_softmax(logits, dim=-1)  # (..., V)
    safe_target = target.masked_fill(~mask, 0)  # any valid index at padding; zeroed below
    nll = -log_p.gather(-1, safe_target.unsqueeze(-1)).squeeze(-1)  # (...)
    uniform = -log_p.mean(dim=-1)  # (...) = (1/V) sum_v -log p(v)
    per_token = (1.0 - smoothing) * nll + smoothing * uniform
    total = torch.where(mask, per_token, torch.zeros_like(per_token)).sum()
    if reduction == "sum":
        return total
    return total / mask.sum().clamp(min=1)


def token_cross_entropy(model: nn.Module, batch: Any, smoothing: float = 0.0) -> tuple[Tensor, Tensor]:
    """The default loss of :func:`fit`: label-smoothed cross-entropy per real target token.

    Runs ``model(batch.src, batch.src_mask, batch.tgt_in, batch.tgt_mask)`` (masks: bool, ``True`` =
    real token) and compares the logits with ``batch.tgt_out`` where ``batch.tgt_mask`` is ``True``.
    Returns ``(mean loss per real token, number of real tokens)``.

    Shape:
        logits ``(B, T, V)``, ``batch.tgt_out`` and ``batch.tgt_mask`` ``(B, T)``.
    """
    mask = batch.tgt_mask
    inner = getattr(model, "module", model)  # a DistributedDataParallel wrapper is called, not bypassed
    if getattr(inner, "accepts_logits_mask", False):
        # Output layer at the real positions only: the same loss, about a fifth fewer (N, V) products.
        logits = model(batch.src, batch.src_mask, batch.tgt_in, batch.tgt_mask, logits_mask=mask)  # (N, V)
        target = batch.tgt_out[mask]  # (N,)
        return label_smoothed_cross_entropy(logits, target, torch.ones_like(target, dtype=torch.bool), smoothing), mask.sum()
    logits = model(batch.src, batch.src_mask, batch.tgt_in, batch.tgt_mask)
    if isinstance(logits, (tuple, list)):  # (logits, attention)
        logits = logits[0]
    return label_smoothed_cross_entropy(logits, batch.tgt_out, mask, smoothing), mask.sum()


def _describe(x: object) -> str:
    if isinstance(x, Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    return f"{type(x).__name__} {x!r}"


# --------------------------------------------------------------------------------------------
# History
# --------------------------------------------------------------------------------------------


@dataclass
class History:
    """What happened during :func:`fit`, for plotting; JSON round-trip with ``to_dict``/``from_dict``.

    Per optimizer step (lists of equal length): ``step`` (1-based global step), ``epoch``,
    ``train_loss`` (the training objective, label smoothing included), ``lr`` (used for that step),
    ``grad_norm`` (global 2-norm *before* clipping), ``tokens_per_sec`` (real target tokens per second
    of wall time, data loading included). Per evaluation: ``eval_step``, ``val_loss`` (per real token,
    no label smoothing), ``val_perplexity`` (``exp(val_loss)``). Whole run: ``wall_time`` (seconds,
    summed over resumed runs), ``device``, ``amp_dtype``, ``best_step`` / ``best_val_loss`` (the best
    evaluation so far), ``stopped_early``.
    """

    step: list[int] = field(default_factory=list)
    epoch: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    tokens_per_sec: list[float] = field(default_factory=list)
    eval_step: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_perplexity: list[float] = field(default_factory=list)
    wall_time: float = 0.0
    device: str = ""
    amp_dtype: str | None = None
    best_step: int | None = None
    best_val_loss: float | None = None
    stopped_early: bool = False

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy (non-finite floats are written as JSON's ``NaN``/``Infinity``)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> History:
        """Inverse of :meth:`to_dict`; unknown keys raise ``TypeError``."""
        return cls(**{k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in d.items()})

    @property
    def num_steps(self) -> int:
        """Optimizer steps taken so far."""
        return len(self.step)


@dataclass
class TrainEvent:
    """What a callback of :func:`fit` receives after every step (``kind="step"``) and evaluation (``"eval"``).

    ``value`` is the training loss of the step or the validation loss of the evaluation. A callback
    that returns ``True`` stops training after the current step (a final checkpoint is still written).
    """

    kind: str
    step: int
    epoch: int
    value: float
    history: History
    model: nn.Module


# --------------------------------------------------------------------------------------------
# Mixed precision and evaluation
# --------------------------------------------------------------------------------------------


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


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _to_device(batch: Any, device: torch.device) -> Any:
    to = getattr(batch, "to", None)
    return to(device) if callable(to) else batch


def _call_loss(loss_fn: LossFn, model: nn.Module, batch: Any) -> tuple[Tensor, float]:
    out = loss_fn(model, batch)
    if isinstance(out, tuple):
        loss, n = out
        n = float(n.item()) if isinstance(n, Tensor) else float(n)
    else:
        loss, n = out, float(getattr(batch, "num_tokens", 1))
    if not isinstance(loss, Tensor) or loss.dim() != 0:
        raise ValueError(f"loss_fn must return a scalar tensor (or (scalar, count)), got {_describe(loss)}")
    return loss, n


@torch.no_grad()
def evaluate_loss(
    model: nn.Module,
    batches: Iterable[Any],
    loss_fn: LossFn | None = None,
    *,
    device: torch.device | str | None = None,
    amp_dtype: torch.dtype | None = None,
) -> float:
    """Mean loss per real token over ``batches`` (each batch weighted by its token count).

    With the default ``loss_fn`` this is the plain cross-entropy (no label smoothing), so
    ``exp(evaluate_loss(...))`` is the perplexity. Runs in eval mode (no dropout) without gradients
    and restores the model's previous mode.

    Shape:
        batches as in :func:`fit`; returns a Python float.
    """
    loss_fn = loss_fn or functools.partial(token_cross_entropy, smoothing=0.0)
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    total, count = _loss_sums(model, batches, loss_fn, torch.device(device), amp_dtype)
    if count == 0:
        raise ValueError("batches yielded no tokens to evaluate on")
    return total / count


@torch.no_grad()
def _loss_sums(
    model: nn.Module, batches: Iterable[Any], loss_fn: LossFn, device: torch.device, amp_dtype: torch.dtype | None
) -> tuple[float, float]:
    """``(sum of loss x count, sum of counts)`` over ``batches``, in eval mode; the mode is restored."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0.0
    try:
        for batch in batches:
            batch = _to_device(batch, device)
            with _autocast(device, amp_dtype):
                loss, n = _call_loss(loss_fn, model, batch)
            total += float(loss.item()) * n
            count += n
    finally:
        model.train(was_training)
    return total, count


# --------------------------------------------------------------------------------------------
# Checkpoint files: safetensors + JSON, atomic
# --------------------------------------------------------------------------------------------


@dataclass
class TrainingState:
    """What a checkpoint needs beyond the weights to resume exactly: tensors and JSON scalars.

    ``tensors`` (optimizer moments and step counts, RNG states, the best weights so far) go to a
    safetensors file; ``scalars`` (optimizer hyper-parameters, scheduler step, data position, early
    stopping counters, gradient scaler) to the JSON sidecar. :func:`fit` fills and reads it.
    """

    tensors: dict[str, Tensor]
    scalars: dict[str, Any]


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


def _kill_point(point: str, step: int | None) -> None:
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
            raise TypeError(f"{name!r} is {_describe(t)}, expected a tensor")
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
        _kill_point("weights-written", step)
        state_record = state_aliases = None
        if training_state is not None:
            state_record, state_aliases = _safetensors_file(directory, "state", training_state.tensors)
            written.append(directory / state_record["name"])
        _kill_point("state-written", step)
        _complete_checkpoint(directory, model, weights_record, aliases, state_record, state_aliases, config=config,
                             history=history, tokenizer=tokenizer, step=step, epoch=epoch,
                             training_state=training_state, extra=extra)
    except BaseException:
        if not _names_files(directory, written):  # the JSON did not switch to them: they are debris
            for path in written:
                with contextlib.suppress(OSError):
                    path.unlink()
        raise
    _kill_point("json-written", step)
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


def _rotate(root: Path, keep_last_n: int | None, keep_every_steps: int | None = None) -> None:
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
        _kill_point("rotating", int(p.name.removeprefix("step-")))
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


# --------------------------------------------------------------------------------------------
# RNG and optimizer state <-> (tensors, JSON scalars)
# --------------------------------------------------------------------------------------------


def _capture_rng(prefix: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    tensors = {f"{prefix}.torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"{prefix}.cuda.{i}"] = s
    if torch.backends.mps.is_available():
        tensors[f"{prefix}.mps"] = torch.mps.get_rng_state()
    version, py_state, gauss_next = random.getstate()
    tensors[f"{prefix}.python"] = torch.tensor(py_state, dtype=torch.int64)
    np_name, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state()
    tensors[f"{prefix}.numpy"] = torch.from_numpy(np_keys.astype(np.int64))
    scalars = {
        "python_version": version,
        "python_gauss_next": gauss_next,
        "numpy_name": np_name,
        "numpy_pos": int(np_pos),
        "numpy_has_gauss": int(np_has_gauss),
        "numpy_cached_gaussian": float(np_cached),
    }
    return tensors, scalars


def _restore_rng(prefix: str, tensors: Mapping[str, Tensor], scalars: Mapping[str, Any]) -> None:
    torch.set_rng_state(tensors[f"{prefix}.torch_cpu"].cpu())
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            if f"{prefix}.cuda.{i}" in tensors:
                torch.cuda.set_rng_state(tensors[f"{prefix}.cuda.{i}"].cpu(), i)
    if torch.backends.mps.is_available() and f"{prefix}.mps" in tensors:
        torch.mps.set_rng_state(tensors[f"{prefix}.mps"].cpu())
    py_state = tuple(int(x) for x in tensors[f"{prefix}.python"].tolist())
    random.setstate((scalars["python_version"], py_state, scalars["python_gauss_next"]))
    np_keys = tensors[f"{prefix}.numpy"].cpu().numpy().astype(np.uint32)
    np.random.set_state(
        (
            scalars["numpy_name"],
            np_keys,
            scalars["numpy_pos"],
            scalars["numpy_has_gauss"],
            scalars["numpy_cached_gaussian"],
        )
    )


def _optimizer_to_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    other: dict[str, dict[str, Any]] = {}
    for idx, per_param in sd["state"].items():
        for name, value in per_param.items():
            if isinstance(value, Tensor):
                tensors[f"optimizer.state.{idx}.{name}"] = value
            else:
                other.setdefault(str(idx), {})[name] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "state_scalars": other}


def _optimizer_from_state(
    optimizer: torch.optim.Optimizer, tensors: Mapping[str, Tensor], scalars: Mapping[str, Any]
) -> None:
    state: dict[int, dict[str, Any]] = {}
    pattern = re.compile(r"^optimizer\.state\.(\d+)\.(.+)$")
    for key, value in tensors.items():
        m = pattern.match(key)
        if m:
            state.setdefault(int(m.group(1)), {})[m.group(2)] = value
    for idx, values in scalars["state_scalars"].items():
        state.setdefault(int(idx), {}).update(values)
    groups = [
        {k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in scalars["param_groups"]
    ]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": config.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps)


# --------------------------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------------------------


def _num_batches(batches: Iterable[Any]) -> int | None:
    try:
        return len(batches)  # type: ignore[arg-type]
    except TypeError:
        return None


def _total_steps(per_epoch: int | None, config: TrainConfig) -> int | None:
    by_epochs = None if per_epoch is None else per_epoch * config.epochs
    if config.max_steps is None:
        return by_epochs
    return config.max_steps if by_epochs is None else min(config.max_steps, by_epochs)


class _Interrupts:
    """SIGINT and SIGTERM during :func:`fit`, held until the current step is complete.

    Installed (main thread only, and only over the default handlers) for the duration of the loop:
    a signal sets ``pending`` and :meth:`settle`, called where the training state is consistent,
    raises ``KeyboardInterrupt`` (SIGTERM too, so that one ``except`` writes the final checkpoint).
    A second signal before that raises at once (a step that hangs can still be interrupted).
    """

    def __init__(self) -> None:
        self.pending: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _Interrupts:
        if threading.current_thread() is threading.main_thread():
            for sig, default in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL)):
                if signal.getsignal(sig) is default:  # leave ignored signals and custom handlers alone
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    @staticmethod
    def _error(signum: int) -> KeyboardInterrupt:
        return KeyboardInterrupt(f"training interrupted by {signal.Signals(signum).name}")

    def _handle(self, signum: int, frame: object) -> None:
        if self.pending is None:
            self.pending = signum
            return
        raise self._error(signum)

    def settle(self, agreed: bool | None = None) -> None:
        """Raise the held interrupt, if any (call only where a checkpoint would be exact).

        In a process group the processes decide together (``agreed``: whether any of them holds a
        signal), so that all of them stop at the same step; a process that holds none raises as if
        it had received SIGTERM (torchrun forwards it to all of them anyway).
        """
        if agreed is None:
            agreed = self.pending is not None
        if agreed:
            signum, self.pending = self.pending if self.pending is not None else signal.SIGTERM, None
            raise self._error(signum)


def _resolve_resume(resume_from: str | os.PathLike[str]) -> Path:
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


# --------------------------------------------------------------------------------------------
# Several processes: torchrun + DistributedDataParallel
# --------------------------------------------------------------------------------------------

_TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def init_distributed(device: str | torch.device | None = None) -> torch.device:
    """Join the process group that ``torchrun`` describes in the environment; returns this process's device.

    ``torchrun --nproc-per-node N prog ...`` starts ``N`` copies of ``prog`` and gives each the
    variables ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. This
    joins them into one process group: backend NCCL with process ``LOCAL_RANK`` on GPU
    ``cuda:LOCAL_RANK``, or gloo on the CPU. ``device``: ``None`` (CUDA when available, else the
    CPU), ``"cuda"`` (a GPU index in it is ignored: each process takes its local rank's) or
    ``"cpu"``. If the group already exists only the device is returned. Afterwards :func:`fit`
    trains with :class:`~torch.nn.parallel.DistributedDataParallel`; the attn-tutorial CLI calls
    this itself when ``WORLD_SIZE`` is above 1.
    """
    if not dist.is_available():
        raise RuntimeError("this PyTorch build has no torch.distributed; train in a single process")
    missing = [k for k in _TORCHRUN_ENV if k not in os.environ]
    if missing:
        raise ValueError(
            f"init_distributed needs the environment torchrun sets, but {', '.join(missing)} is missing; "
            "launch with torchrun --nproc-per-node N ..."
        )
    requested = None if device is None else torch.device(device)
    if requested is not None and requested.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be None, 'cpu' or 'cuda' to train in several processes, got {str(requested)!r}")
    use_cuda = torch.cuda.is_available() if requested is None else requested.type == "cuda"
    local_rank = int(os.environ["LOCAL_RANK"])
    if use_cuda:
        if not torch.cuda.is_available():
            raise RuntimeError("device='cuda' was requested, but CUDA is not available")
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA devices are visible; "
                "start at most that many processes per node"
            )
        chosen = torch.device("cuda", local_rank)
        torch.cuda.set_device(chosen)
    else:
        chosen = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return chosen


@dataclass(frozen=True)
class _Group:
    """The process group :func:`fit` trains in (``None`` from :meth:`current` when there is none)."""

    rank: int
    world_size: int
    device: torch.device  # where the tensors of collective calls live (CUDA for NCCL)

    @staticmethod
    def current() -> _Group | None:
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
            return None
        nccl = dist.get_backend() == "nccl"
        device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
        return _Group(dist.get_rank(), dist.get_world_size(), device)

    def sum(self, *values: float) -> list[float]:
        """Each value summed over all processes (float64)."""
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return [float(x) for x in t.tolist()]

    def any(self, *flags: bool) -> list[bool]:
        """Each flag or-ed over all processes: one decision that every process takes alike."""
        return [x > 0 for x in self.sum(*(float(bool(f)) for f in flags))]

    def barrier(self) -> None:
        if self.device.type == "cuda":
            dist.barrier(device_ids=[self.device.index])
        else:
            dist.barrier()


def _shard(batches: Iterable[Any], rank: int, world_size: int) -> Iterator[Any]:
    """Process ``rank``'s share of ``batches``: items ``rank, rank + W, rank + 2W, ...``.

    Only complete groups of ``W = world_size`` batches count; an incomplete last group is dropped,
    so every process takes the same number of steps (one that took a step more would wait forever
    for the others' gradients).
    """
    mine: Any = None
    for i, batch in enumerate(batches):
        if i % world_size == rank:
            mine = batch
        if i % world_size == world_size - 1:
            yield mine
            mine = None


def fit(
    model: nn.Module,
    train_batches: Iterable[Any],
    val_batches: Iterable[Any] | None = None,
    config: TrainConfig = TrainConfig(),  # noqa: B008 - frozen, so a shared default is safe
    *,
    loss_fn: LossFn | None = None,
    resume_from: str | os.PathLike[str] | None = None,
    callbacks: Sequence[Callable[[TrainEvent], bool | None]] | None = None,
    tokenizer: Any = None,
) -> History:
    """Train ``model`` on ``train_batches`` as ``config`` says; returns the :class:`History`.

    One optimizer step per batch: forward under autocast (if mixed precision is on), loss
    (default: :func:`token_cross_entropy` with ``config.label_smoothing``, the mean over the batch's
    real target tokens), backward (through a ``GradScaler`` for fp16), gradient-norm clipping (the
    norm before clipping is recorded), AdamW step with the learning rate :func:`lr_at` gives.

    * ``loss_fn(model, batch)`` replaces the default loss; it returns a scalar tensor or
      ``(mean loss, number of items averaged)``. It is used for training *and* validation.
      The default validates with the plain cross-entropy (no smoothing).
    * Validation every ``config.eval_every`` steps or at each epoch's end; with
      ``early_stopping_patience`` training stops after that many evaluations without improvement
      and the model ends with the weights of its best evaluation (``history.best_step``).
    * A fresh run calls ``set_seed(config.seed)`` first (model initialisation is the caller's).
      ``resume_from`` (a checkpoint directory, or a ``checkpoint_dir`` whose newest complete
      checkpoint is taken) restores weights, optimizer moments, schedule step, RNG states, gradient
      scaler, early-stopping state, history and data position, so that the run ends with the same
      weights as one that was never interrupted. This needs ``train_batches`` whose order depends
      only on the epoch (e.g. ``set_epoch(epoch)`` reshuffling, or a global-RNG shuffle at the start
      of each epoch) and the same ``config``; batches before the saved position are skipped.
    * ``callbacks`` are called with a :class:`TrainEvent` after every step and evaluation; returning
      ``True`` stops training.
    * ``tokenizer`` (a path, JSON or ``tokenizers.Tokenizer``) is recorded in every checkpoint.
    * Interrupting (``KeyboardInterrupt``: Ctrl-C, a notebook's interrupt, or SIGTERM, which
      ``fit`` turns into one while it runs in the main thread) writes a final checkpoint at the
      current step (when ``checkpoint_dir`` is set) and re-raises, so resuming loses nothing and
      still ends with the weights of an uninterrupted run. A signal is honoured at the end of the
      step it arrives in; a second one interrupts at once. An interrupt raised where the state is not
      that of a whole step (inside the update, or before that step's evaluation has run, e.g. by a
      step callback when an evaluation is due) writes no checkpoint: the last one stays the newest.

    The model is moved to the chosen device and left in the mode (train/eval) it came in.

    Several processes (``torchrun``, after :func:`init_distributed` or any
    ``torch.distributed.init_process_group``): the same call, unchanged, in every process.

    * The model is wrapped in PyTorch's :class:`~torch.nn.parallel.DistributedDataParallel` for the
      training forward and backward (``loss_fn`` receives the wrapper: call it, and read attributes
      through ``getattr(model, "module", model)``), so the gradients are averaged over processes in
      the backward pass and every process takes the same optimizer step. Rank 0's initial weights
      are broadcast to the others when the wrapper is built.
    * Every process must iterate ``train_batches`` in the same order (a ``BatchIterator`` with the
      same seed does; ``fit`` seeds every process with ``config.seed``). Process ``r`` of ``W``
      trains on batches ``r, r + W, ...`` of each epoch; an incomplete last group of ``W`` batches
      is dropped, so an epoch has ``len(train_batches) // W`` steps and each step sees ``W`` batches.
    * Validation batches are split the same way (none dropped) and the loss sums added up; the
      training loss and token counts in the history are likewise summed over processes, so every
      process returns the same history numbers (wall-clock times are each process's own).
    * Only rank 0 writes checkpoints and shows a progress bar; a process returns once rank 0's
      checkpoints are complete. Stopping (callbacks, early stopping, signals) is decided jointly.
      Resuming mid-epoch needs the same number of processes; random states are rank 0's.

    Shape:
        each batch: ``src``, ``src_mask`` ``(B, S)``; ``tgt_in``, ``tgt_out``, ``tgt_mask`` ``(B, T)``
        (masks bool, ``True`` = real token); the model's logits ``(B, T, V)``.

    Reference: AdamW (decoupled weight decay), warmup and label smoothing as in :cite:p:`vaswani2017`,
    section 5.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if config.early_stopping_patience is not None and val_batches is None:
        raise ValueError(
            f"config.early_stopping_patience={config.early_stopping_patience} needs val_batches, got None"
        )
    callbacks = list(callbacks or [])
    device = default_device(config.device)
    procs = _Group.current()  # None: a single process
    world_size = 1 if procs is None else procs.world_size
    is_main = procs is None or procs.rank == 0
    if procs is not None and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())  # this process's GPU
    amp_dtype, use_scaler = amp_settings(device, config.amp)
    model.to(device)
    was_training = model.training
    optimizer = _make_optimizer(model, config)
    scaler = torch.amp.GradScaler(device.type) if use_scaler else None
    train_loss_fn = loss_fn or functools.partial(token_cross_entropy, smoothing=config.label_smoothing)
    val_loss_fn = loss_fn or functools.partial(token_cross_entropy, smoothing=0.0)
    per_epoch = _num_batches(train_batches)
    if per_epoch is not None:
        per_epoch //= world_size  # each process's share (see _shard)
    total_steps = _total_steps(per_epoch, config)
    if config.schedule in ("cosine", "linear") and total_steps is None:
        raise ValueError(
            f"schedule={config.schedule!r} needs the number of steps: set config.max_steps, or pass "
            "train_batches with a len()"
        )
    params = [p for p in model.parameters() if p.requires_grad]
    ckpt_root = Path(config.checkpoint_dir) if config.checkpoint_dir is not None else None

    # ---- fresh start or resume ---------------------------------------------------------------
    history = History(device=str(device), amp_dtype=str(amp_dtype).removeprefix("torch.") if amp_dtype else None)
    step, start_epoch, skip = 0, 0, 0
    best_state: dict[str, Tensor] | None = None
    bad_evals = 0
    resume_rng: tuple[Mapping[str, Tensor], Mapping[str, Any]] | None = None
    if resume_from is None:
        set_seed(config.seed)
    else:
        ckpt = load_checkpoint(_resolve_resume(resume_from), model)
        if ckpt.training_state is None:
            raise UserError(
                f"{ckpt.path} has weights but no training state, so training cannot resume exactly; load it with "
                "load_checkpoint(path, model) and call fit without resume_from to fine-tune from it"
            )
        tensors, scalars = ckpt.training_state.tensors, ckpt.training_state.scalars
        _optimizer_from_state(optimizer, tensors, scalars["optimizer"])
        if scaler is not None and scalars.get("grad_scaler"):
            scaler.load_state_dict(scalars["grad_scaler"])
        if ckpt.metadata.get("history"):
            history = dataclasses.replace(
                History.from_dict(ckpt.metadata["history"]), device=history.device, amp_dtype=history.amp_dtype
            )
        step = scalars["scheduler_step"]
        start_epoch, skip = scalars["position"]["epoch"], scalars["position"]["step_in_epoch"]
        saved_world = scalars.get("world_size", 1)
        if skip > 0 and saved_world != world_size:
            raise UserError(
                f"{ckpt.path} was written in the middle of an epoch by {saved_world} process(es); resume it with "
                f"{saved_world}, not {world_size} (the position in the epoch counts each process's share of batches)"
            )
        bad_evals = scalars["early_stopping"]["bad_evals"]
        if scalars["early_stopping"]["has_best_weights"]:
            best_state = {k.removeprefix("best."): v for k, v in tensors.items() if k.startswith("best.")}
        resume_rng = (tensors, scalars["rng"])

    def snapshot() -> dict[str, Tensor]:
        return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}

    def training_state(epoch: int, step_in_epoch: int, epoch_rng: tuple[dict[str, Tensor], dict[str, Any]]) -> TrainingState:
        opt_tensors, opt_scalars = _optimizer_to_state(optimizer)
        now_tensors, now_scalars = _capture_rng("rng.now")
        tensors = {**opt_tensors, **now_tensors, **epoch_rng[0]}
        if best_state is not None:
            tensors.update({f"best.{k}": v for k, v in best_state.items()})
        scalars = {
            "optimizer": opt_scalars,
            "scheduler_step": step,
            "position": {"epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": step},
            "world_size": world_size,  # processes sharing the batches; step_in_epoch counts one's share
            "rng": {"now": now_scalars, "epoch_start": epoch_rng[1]},
            "early_stopping": {"bad_evals": bad_evals, "has_best_weights": best_state is not None},
            "grad_scaler": scaler.state_dict() if scaler is not None else None,
        }
        return TrainingState(tensors=tensors, scalars=scalars)

    last_saved: int | None = None  # the step of the last checkpoint this call wrote

    def checkpoint(epoch: int, step_in_epoch: int, epoch_rng: tuple[dict[str, Tensor], dict[str, Any]]) -> None:
        nonlocal last_saved
        if ckpt_root is None:
            return
        if not is_main:  # rank 0 writes for everyone (the weights are the same in every process)
            last_saved = step
            return
        history.wall_time = wall_before + (time.perf_counter() - t_start)
        target = ckpt_root / f"step-{step:08d}"
        try:
            save_checkpoint(
                target,
                model,
                config=config,
                history=history,
                tokenizer=tokenizer,
                step=step,
                epoch=epoch,
                training_state=training_state(epoch, step_in_epoch, epoch_rng),
                extra={"step_in_epoch": step_in_epoch},
            )
        except OSError as err:  # a full disk, a quota: say what is safe and what to do
            previous = latest_checkpoint(ckpt_root)
            safe = f"the newest complete checkpoint, {previous}, is intact" if previous else "no earlier checkpoint exists"
            raise OSError(
                err.errno,
                f"{err.strerror or err} while writing checkpoint {target}; {safe}: free space, then resume from it "
                "(attn-tutorial train --resume, or fit(resume_from=...))",
                str(target),
            ) from err
        last_saved = step
        _rotate(ckpt_root, config.keep_last_n, config.keep_every_steps)

    def run_eval(epoch: int) -> bool:
        """Evaluate, update early stopping; True if training should stop."""
        nonlocal best_state, bad_evals
        assert val_batches is not None
        if procs is None:
            val = evaluate_loss(model, val_batches, val_loss_fn, device=device, amp_dtype=amp_dtype)
        else:  # each process a share of the batches (none dropped), then the sums over processes
            share = itertools.islice(val_batches, procs.rank, None, procs.world_size)
            total, count = procs.sum(*_loss_sums(model, share, val_loss_fn, device, amp_dtype))
            if count == 0:
                raise ValueError("val_batches yielded no tokens to evaluate on")
            val = total / count
        history.eval_step.append(step)
        history.val_loss.append(val)
        history.val_perplexity.append(math.exp(val) if val < 700 else math.inf)
        stop = False
        if history.best_val_loss is None or val < history.best_val_loss:
            history.best_val_loss, history.best_step, bad_evals = val, step, 0
            if config.early_stopping_patience is not None:
                best_state = snapshot()
        else:
            bad_evals += 1
            if config.early_stopping_patience is not None and bad_evals >= config.early_stopping_patience:
                history.stopped_early = stop = True
        event = TrainEvent("eval", step, epoch, val, history, model)
        return any([bool(cb(event)) for cb in callbacks]) or stop

    # What the training forward and backward call: in a process group, the DistributedDataParallel
    # wrapper, which broadcasts rank 0's weights now and averages the gradients in every backward.
    train_model: nn.Module = model
    if procs is not None:
        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def agree(*flags: bool) -> list[bool]:
        return list(flags) if procs is None else procs.any(*flags)

    wall_before = history.wall_time
    t_start = time.perf_counter()
    bar = tqdm(total=total_steps, initial=step, disable=not (config.progress and is_main), desc="train", unit="step", dynamic_ncols=True)
    stop = history.stopped_early or (config.max_steps is not None and step >= config.max_steps)
    # The (epoch, step_in_epoch, epoch_rng) a checkpoint written right now would resume from exactly,
    # or None in the middle of a step (an interrupt there writes no checkpoint).
    resumable: tuple[int, int, tuple[dict[str, Tensor], dict[str, Any]]] | None = None
    interrupts = _Interrupts()
    model.train()
    try:
        interrupts.__enter__()
        for epoch in range(start_epoch, config.epochs):
            resumable = None
            if stop:
                break
            resuming_mid_epoch = resume_rng is not None and skip > 0
            if resume_rng is not None:
                _restore_rng("rng.epoch_start" if resuming_mid_epoch else "rng.now", resume_rng[0], resume_rng[1]["epoch_start" if resuming_mid_epoch else "now"])
            epoch_rng = _capture_rng("rng.epoch_start")
            set_epoch = getattr(train_batches, "set_epoch", None)
            if callable(set_epoch):
                set_epoch(epoch)
            iterator = iter(train_batches) if procs is None else _shard(train_batches, procs.rank, procs.world_size)
            step_in_epoch = 0
            if resuming_mid_epoch:
                assert resume_rng is not None
                for _ in range(skip):
                    if next(iterator, None) is None:
                        raise UserError(
                            f"cannot resume at batch {skip} of epoch {epoch}: train_batches now has fewer batches"
                        )
                step_in_epoch = skip
                _restore_rng("rng.now", resume_rng[0], resume_rng[1]["now"])
            resume_rng = None
            t_last = time.perf_counter()
            for batch in iterator:
                resumable = None
                step += 1
                step_in_epoch += 1
                lr = lr_at(step, config, total_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                batch = _to_device(batch, device)
                with _autocast(device, amp_dtype):
                    loss, n_tokens = _call_loss(train_loss_fn, train_model, batch)
                loss_value = float(loss.detach().item())
                if procs is not None:  # the loss over all processes' batches (a NaN anywhere stops all)
                    weighted, n_tokens = procs.sum(loss_value * n_tokens, n_tokens)
                    loss_value = weighted / n_tokens if n_tokens > 0 else weighted
                if not math.isfinite(loss_value):
                    raise TrainingDivergedError(
                        f"the training loss is {loss_value} at step {step} (epoch {epoch}); try a lower lr "
                        f"(now {lr:.3g}), more warmup_steps or grad_clip"
                    )
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)
                else:
                    loss.backward()
                _kill_point("step", step)
                max_norm = config.grad_clip if config.grad_clip is not None else math.inf
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                now = time.perf_counter()
                history.step.append(step)
                history.epoch.append(epoch)
                history.train_loss.append(loss_value)
                history.lr.append(lr)
                history.grad_norm.append(grad_norm)
                history.tokens_per_sec.append(n_tokens / max(now - t_last, 1e-9))
                eval_due = val_batches is not None and config.eval_every != "epoch" and step % int(config.eval_every) == 0
                if not eval_due:  # the step is complete; with an evaluation due, only once that has run
                    resumable = (epoch, step_in_epoch, epoch_rng)
                bar.update(1)
                if step % config.log_every == 0 or step == 1:
                    bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", refresh=False)
                event = TrainEvent("step", step, epoch, loss_value, history, model)
                stop = any([bool(cb(event)) for cb in callbacks])
                if eval_due:
                    stop = run_eval(epoch) or stop
                    resumable = (epoch, step_in_epoch, epoch_rng)
                if config.max_steps is not None and step >= config.max_steps:
                    stop = True
                stop, interrupted = agree(stop, interrupts.pending is not None)
                if stop and step_in_epoch != per_epoch:  # stopping in the middle of an epoch
                    checkpoint(epoch, step_in_epoch, epoch_rng)
                    break
                every = config.checkpoint_every_steps
                if not stop and every is not None and step % every == 0:
                    checkpoint(epoch, step_in_epoch, epoch_rng)
                interrupts.settle(interrupted if procs is not None else None)  # a signal that arrived during this step stops here
                if stop:  # on the epoch's last batch: finish the epoch below first
                    break
                t_last = time.perf_counter()
            if stop and step_in_epoch != per_epoch:
                break
            # The epoch ran to its end (or stops on its last batch).
            resumable = None  # its evaluation and checkpoint are still to come
            if step_in_epoch == 0:
                raise ValueError(
                    f"train_batches yielded no batches in epoch {epoch}; pass a re-iterable (a list, or an "
                    "object whose __iter__ starts over), not a one-shot generator"
                    + ("" if procs is None else f", with at least {world_size} batches (one per process)")
                )
            if val_batches is not None and config.eval_every == "epoch":
                stop = run_eval(epoch) or stop
            stop, interrupted = agree(stop, interrupts.pending is not None)
            next_epoch = (epoch + 1, 0, _capture_rng("rng.epoch_start"))
            if stop or epoch == config.epochs - 1 or config.checkpoint_every_steps is None:
                checkpoint(*next_epoch)
            resumable = next_epoch
            interrupts.settle(interrupted if procs is not None else None)  # a signal during the epoch's evaluation stops here, between epochs
        # A signal during the last step: the final checkpoint is written.
        interrupts.settle(None if procs is None else procs.any(interrupts.pending is not None)[0])
    except KeyboardInterrupt:
        interrupts.__exit__()
        if resumable is not None and ckpt_root is not None and last_saved != step:
            checkpoint(*resumable)
        raise
    finally:
        interrupts.__exit__()
        bar.close()
        history.wall_time = wall_before + (time.perf_counter() - t_start)
        model.train(was_training)
    if config.early_stopping_patience is not None and best_state is not None:
        model.load_state_dict(best_state)
        if ckpt_root is not None and is_main:
            save_checkpoint(ckpt_root / "best", model, config=config, history=history, tokenizer=tokenizer, step=history.best_step)
    if procs is not None:
        procs.barrier()  # rank 0's checkpoints are complete when fit returns, in every process
    return history
