"""One training loop for every model in the book: :func:`fit`, its schedule and its history.

Each step minimises the objective of :mod:`attn_tutorial.losses` (label-smoothed cross-entropy per
real target token) with AdamW under a learning-rate schedule with linear warmup (:func:`lr_at`),
gradient clipping, optional mixed precision and early stopping on the validation loss.

What :func:`fit` expects of its inputs (duck-typed, so any model and data of this shape work):

* ``model(src, src_mask, tgt_in, tgt_mask)`` returns logits ``(B, T, V)`` (or a tuple whose first
  element is the logits); masks are boolean, ``True`` = real token / may attend.
* every batch has ``src (B, S)``, ``src_mask (B, S)``, ``tgt_in (B, T)``, ``tgt_out (B, T)``,
  ``tgt_mask (B, T)`` and ``.to(device)`` (:class:`attn_tutorial.batching.Batch`);
* ``train_batches`` can be iterated once per epoch; if it has ``set_epoch(epoch)`` it is called before
  each epoch (deterministic reshuffling).

What :func:`fit` promises, in detail (``tests/test_train.py``, ``tests/test_resume.py`` and
``tests/test_distributed.py`` check each point):

* **Losses.** ``loss_fn(model, batch)`` replaces the default loss; it returns a scalar tensor or
  ``(mean loss, number of items averaged)`` and is used for training *and* validation. The default
  validates with the plain cross-entropy (no smoothing).
* **Resume.** A fresh run calls ``set_seed(config.seed)`` first (model initialisation is the caller's).
  ``resume_from`` (a checkpoint directory, or a ``checkpoint_dir`` whose newest complete checkpoint is
  taken) restores weights, optimizer moments, schedule step, RNG states, gradient scaler,
  early-stopping state, history and data position, so that the run ends with the same weights as one
  that was never interrupted. This needs ``train_batches`` whose order depends only on the epoch
  (``set_epoch(epoch)`` reshuffling, or a global-RNG shuffle at the start of each epoch) and the same
  ``config``; batches before the saved position are skipped.
* **Interrupts.** ``KeyboardInterrupt`` (Ctrl-C, a notebook's interrupt, or SIGTERM, which ``fit`` turns
  into one while it runs in the main thread) writes a final checkpoint at the current step (when
  ``checkpoint_dir`` is set) and re-raises. A signal is honoured at the end of the step it arrives in; a
  second one interrupts at once. An interrupt raised where the state is not that of a whole step
  (inside the update, or before a due evaluation has run) writes no checkpoint: the last one stays the
  newest. The model is moved to the chosen device and left in the mode (train/eval) it came in.
* **Several processes** (``torchrun``, after :func:`~attn_tutorial.distributed.init_distributed` or any
  ``torch.distributed.init_process_group``): the same call, unchanged, in every process. The model is
  wrapped in :class:`~torch.nn.parallel.DistributedDataParallel` for the training forward and backward
  (``loss_fn`` receives the wrapper), so gradients are averaged in the backward pass and every process
  takes the same step; rank 0's initial weights are broadcast when the wrapper is built. Process ``r``
  of ``W`` trains on batches ``r, r + W, ...`` of each epoch (every process must iterate
  ``train_batches`` in the same order); an incomplete last group of ``W`` batches is dropped.
  Validation batches are split the same way (none dropped) and the loss sums added up; training losses
  and token counts are summed too, so every process returns the same history numbers. Only rank 0
  writes checkpoints and shows a progress bar; stopping (callbacks, early stopping, signals) is decided
  jointly. Resuming mid-epoch needs the same number of processes.

Checkpoints are written by :mod:`attn_tutorial.checkpoint`, the state that makes resuming exact
is captured by :mod:`attn_tutorial.resume`, and several processes are joined by
:mod:`attn_tutorial.distributed`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from ._checks import is_int
from .checkpoint import (
    kill_point,
    latest_checkpoint,
    load_checkpoint,
    resolve_resume,
    rotate_checkpoints,
    save_checkpoint,
)
from .configs import TrainConfig
from .distributed import ProcessGroup, shard
from .errors import TrainingDivergedError, UserError
from .losses import LossFn, call_loss, loss_sums, to_device, evaluate_loss, token_cross_entropy
from .resume import (
    Interrupts,
    TrainingState,
    capture_rng,
    load_optimizer_state,
    optimizer_state,
    restore_rng,
)
from .runtime import maybe_autocast, amp_settings, default_device, set_seed

__all__ = [
    "History",
    "TrainEvent",
    "lr_at",
    "fit",
]




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
    if not is_int(step) or step < 0:
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
    if not is_int(total) or total < 1:
        raise ValueError(f"total_steps must be a positive int, got {total!r}")
    p = min(max((step - w) / max(total - w, 1), 0.0), 1.0)
    shape = 0.5 * (1.0 + math.cos(math.pi * p)) if config.schedule == "cosine" else 1.0 - p
    return config.min_lr + (config.lr - config.min_lr) * shape


# --------------------------------------------------------------------------------------------
# History and events
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
# The loop
# --------------------------------------------------------------------------------------------

#: Where a checkpoint written now would resume exactly: ``(epoch, step in epoch, RNG at epoch start)``.
Position = tuple[int, int, tuple[dict[str, Tensor], dict[str, Any]]]


def _make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": config.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps)


def _steps_per_epoch(batches: Iterable[Any], world_size: int) -> int | None:
    """Each process's optimizer steps per epoch (``None`` when ``batches`` has no ``len``)."""
    try:
        return len(batches) // world_size  # type: ignore[arg-type]
    except TypeError:
        return None


def _total_steps(per_epoch: int | None, config: TrainConfig) -> int | None:
    by_epochs = None if per_epoch is None else per_epoch * config.epochs
    if config.max_steps is None:
        return by_epochs
    return config.max_steps if by_epochs is None else min(config.max_steps, by_epochs)


@dataclass(eq=False)
class _Run:
    """Everything one call of :func:`fit` carries from step to step: its only state.

    The methods are the loop's parts: :meth:`train_step` (forward, loss, backward, clip, update),
    :meth:`evaluate` (validation and early stopping), :meth:`save` (a checkpoint that resumes exactly).
    """

    model: nn.Module
    config: TrainConfig
    device: torch.device
    amp_dtype: torch.dtype | None
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    procs: ProcessGroup | None  # None: a single process
    train_loss: LossFn
    val_loss: LossFn
    per_epoch: int | None
    total_steps: int | None
    history: History
    callbacks: list[Callable[[TrainEvent], bool | None]]
    tokenizer: Any
    params: list[nn.Parameter]  # in the model's order (the clipped norm's sum depends on it)
    train_model: nn.Module | None = None  # the model, or its DistributedDataParallel wrapper
    step: int = 0
    best_state: dict[str, Tensor] | None = None
    bad_evals: int = 0
    last_saved: int | None = None  # the step of the last checkpoint this call wrote
    resumable: Position | None = None  # None in the middle of a step: an interrupt there saves nothing
    t_start: float = 0.0
    t_last: float = 0.0
    wall_before: float = 0.0
    bar: Any = None

    @classmethod
    def start(cls, model: nn.Module, train_batches: Iterable[Any], config: TrainConfig, loss_fn: LossFn | None,
              callbacks: Sequence[Callable[[TrainEvent], bool | None]] | None, tokenizer: Any) -> _Run:
        """Device, mixed precision, optimizer and schedule length for ``model``; the step counter at 0."""
        device = default_device(config.device)
        procs = ProcessGroup.current()
        if procs is not None and device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())  # this process's GPU
        amp_dtype, use_scaler = amp_settings(device, config.amp)
        model.to(device)
        per_epoch = _steps_per_epoch(train_batches, 1 if procs is None else procs.world_size)
        total_steps = _total_steps(per_epoch, config)
        if config.schedule in ("cosine", "linear") and total_steps is None:
            raise ValueError(f"schedule={config.schedule!r} needs the number of steps: set config.max_steps, or pass "
                             "train_batches with a len()")
        amp_name = str(amp_dtype).removeprefix("torch.") if amp_dtype else None
        return cls(model, config, device, amp_dtype, _make_optimizer(model, config),
                   torch.amp.GradScaler(device.type) if use_scaler else None, procs,
                   loss_fn or functools.partial(token_cross_entropy, smoothing=config.label_smoothing),
                   loss_fn or functools.partial(token_cross_entropy, smoothing=0.0), per_epoch, total_steps,
                   History(device=str(device), amp_dtype=amp_name), list(callbacks or []), tokenizer,
                   [p for p in model.parameters() if p.requires_grad])

    def restore(self, resume_from: str | os.PathLike[str] | None) -> tuple[int, int, Any]:
        """Seed a fresh run, or load weights and training state from a checkpoint.

        Returns ``(first epoch, batches of it already done, saved RNG states or None)``. Then wraps the
        model for several processes (the wrapper broadcasts rank 0's weights, so this comes after loading).
        """
        start_epoch, skip, saved_rng = 0, 0, None
        if resume_from is None:
            set_seed(self.config.seed)
        else:
            ckpt = load_checkpoint(resolve_resume(resume_from), self.model)
            if ckpt.training_state is None:
                raise UserError(f"{ckpt.path} has weights but no training state, so training cannot resume exactly; load "
                                "it with load_checkpoint(path, model) and call fit without resume_from to fine-tune from it")
            tensors, scalars = ckpt.training_state.tensors, ckpt.training_state.scalars
            load_optimizer_state(self.optimizer, tensors, scalars["optimizer"])
            if self.scaler is not None and scalars.get("grad_scaler"):
                self.scaler.load_state_dict(scalars["grad_scaler"])
            if ckpt.metadata.get("history"):
                saved = History.from_dict(ckpt.metadata["history"])
                self.history = dataclasses.replace(saved, device=self.history.device, amp_dtype=self.history.amp_dtype)
            self.step = scalars["scheduler_step"]
            start_epoch, skip = scalars["position"]["epoch"], scalars["position"]["step_in_epoch"]
            saved_world, world = scalars.get("world_size", 1), 1 if self.procs is None else self.procs.world_size
            if skip > 0 and saved_world != world:
                raise UserError(f"{ckpt.path} was written in the middle of an epoch by {saved_world} process(es); resume it "
                                f"with {saved_world}, not {world} (the position in the epoch counts each process's share of batches)")
            self.bad_evals = scalars["early_stopping"]["bad_evals"]
            if scalars["early_stopping"]["has_best_weights"]:
                self.best_state = {k.removeprefix("best."): v for k, v in tensors.items() if k.startswith("best.")}
            saved_rng = (tensors, scalars["rng"])
        self.train_model = self.model
        if self.procs is not None:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.model, device_ids=ids)
        return start_epoch, skip, saved_rng

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Train mode, a progress bar and the wall clock for the loop; afterwards the model's own mode."""
        was_training = self.model.training
        self.wall_before, self.t_start = self.history.wall_time, time.perf_counter()
        shown = self.config.progress and self.is_main
        self.bar = tqdm(total=self.total_steps, initial=self.step, disable=not shown, desc="train", unit="step", dynamic_ncols=True)
        self.model.train()
        try:
            yield
        finally:
            self.bar.close()
            self.history.wall_time = self.wall_before + (time.perf_counter() - self.t_start)
            self.model.train(was_training)

    @property
    def is_main(self) -> bool:
        return self.procs is None or self.procs.rank == 0

    def epoch_batches(self, train_batches: Iterable[Any], epoch: int, saved_rng: Any, skip: int) -> tuple[Iterator[Any], int, Any]:
        """This process's batches of ``epoch``, the number already done (on resume) and the RNG at its start."""
        mid_epoch = saved_rng is not None and skip > 0
        if saved_rng is not None:
            which = "epoch_start" if mid_epoch else "now"
            restore_rng(f"rng.{which}", saved_rng[0], saved_rng[1][which])
        epoch_rng = capture_rng("rng.epoch_start")
        if callable(set_epoch := getattr(train_batches, "set_epoch", None)):
            set_epoch(epoch)
        batches = iter(train_batches) if self.procs is None else shard(train_batches, self.procs.rank, self.procs.world_size)
        if not mid_epoch:
            return batches, 0, epoch_rng
        for _ in range(skip):
            if next(batches, None) is None:
                raise UserError(f"cannot resume at batch {skip} of epoch {epoch}: train_batches now has fewer batches")
        restore_rng("rng.now", saved_rng[0], saved_rng[1]["now"])
        return batches, skip, epoch_rng

    def train_step(self, batch: Any, epoch: int) -> float:
        """One optimizer step on ``batch``; records it in the history and returns its loss."""
        self.step += 1
        lr = lr_at(self.step, self.config, self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batch = to_device(batch, self.device)
        with maybe_autocast(self.device, self.amp_dtype):
            loss, n_tokens = call_loss(self.train_loss, self.train_model, batch)
        loss_value = float(loss.detach().item())
        if self.procs is not None:  # the loss over all processes' batches (a NaN anywhere stops all)
            weighted, n_tokens = self.procs.sum(loss_value * n_tokens, n_tokens)
            loss_value = weighted / n_tokens if n_tokens > 0 else weighted
        if not math.isfinite(loss_value):
            raise TrainingDivergedError(f"the training loss is {loss_value} at step {self.step} (epoch {epoch}); try a "
                                        f"lower lr (now {lr:.3g}), more warmup_steps or grad_clip")
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        kill_point("step", self.step)
        max_norm = self.config.grad_clip if self.config.grad_clip is not None else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, max_norm))
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        h, now = self.history, time.perf_counter()
        for values, value in ((h.step, self.step), (h.epoch, epoch), (h.train_loss, loss_value), (h.lr, lr), (h.grad_norm, grad_norm)):
            values.append(value)
        h.tokens_per_sec.append(n_tokens / max(now - self.t_last, 1e-9))
        self.bar.update(1)
        if self.step % self.config.log_every == 0 or self.step == 1:
            self.bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", refresh=False)
        return loss_value

    def notify(self, kind: str, epoch: int, value: float) -> bool:
        """Call every callback with the event; True if one of them asks to stop."""
        event = TrainEvent(kind, self.step, epoch, value, self.history, self.model)
        return any([bool(cb(event)) for cb in self.callbacks])  # a list: every callback is called

    def evaluate(self, val_batches: Iterable[Any], epoch: int) -> bool:
        """Validation loss into the history, early stopping updated; True if training should stop."""
        if self.procs is None:
            val = evaluate_loss(self.model, val_batches, self.val_loss, device=self.device, amp_dtype=self.amp_dtype)
        else:  # each process a share of the batches (none dropped), then the sums over processes
            share = itertools.islice(val_batches, self.procs.rank, None, self.procs.world_size)
            total, count = self.procs.sum(*loss_sums(self.model, share, self.val_loss, self.device, self.amp_dtype))
            if count == 0:
                raise ValueError("val_batches yielded no tokens to evaluate on")
            val = total / count
        h, patience = self.history, self.config.early_stopping_patience
        h.eval_step.append(self.step)
        h.val_loss.append(val)
        h.val_perplexity.append(math.exp(val) if val < 700 else math.inf)
        stop = False
        if h.best_val_loss is None or val < h.best_val_loss:
            h.best_val_loss, h.best_step, self.bad_evals = val, self.step, 0
            if patience is not None:
                self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        else:
            self.bad_evals += 1
            stop = h.stopped_early = patience is not None and self.bad_evals >= patience
        return self.notify("eval", epoch, val) or stop

    def agree(self, *flags: bool) -> list[bool]:
        """The flags or-ed over processes: a decision every process takes alike."""
        return list(flags) if self.procs is None else self.procs.any(*flags)

    def save(self, position: Position) -> None:
        """A checkpoint at the current step that resumes at ``position`` (rank 0 writes for everyone)."""
        root = self.config.checkpoint_dir
        if root is None:
            return
        if not self.is_main:
            self.last_saved = self.step
            return
        self.history.wall_time = self.wall_before + (time.perf_counter() - self.t_start)
        target = Path(root) / f"step-{self.step:08d}"
        try:
            save_checkpoint(target, self.model, config=self.config, history=self.history, tokenizer=self.tokenizer,
                            step=self.step, epoch=position[0], training_state=self._state(position),
                            extra={"step_in_epoch": position[1]})
        except OSError as err:  # a full disk, a quota: say what is safe and what to do
            previous = latest_checkpoint(root)
            safe = f"the newest complete checkpoint, {previous}, is intact" if previous else "no earlier checkpoint exists"
            raise OSError(err.errno, f"{err.strerror or err} while writing checkpoint {target}; {safe}: free space, "
                          "then resume from it (attn-tutorial train --resume, or fit(resume_from=...))", str(target)) from err
        self.last_saved = self.step
        rotate_checkpoints(Path(root), self.config.keep_last_n, self.config.keep_every_steps)

    def _state(self, position: Position) -> TrainingState:
        epoch, step_in_epoch, epoch_rng = position
        opt_tensors, opt_scalars = optimizer_state(self.optimizer)
        now_tensors, now_scalars = capture_rng("rng.now")
        tensors = {**opt_tensors, **now_tensors, **epoch_rng[0]}
        if self.best_state is not None:
            tensors.update({f"best.{k}": v for k, v in self.best_state.items()})
        return TrainingState(tensors=tensors, scalars={
            "optimizer": opt_scalars,
            "scheduler_step": self.step,
            "position": {"epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": self.step},
            "world_size": 1 if self.procs is None else self.procs.world_size,  # step_in_epoch counts one's share
            "rng": {"now": now_scalars, "epoch_start": epoch_rng[1]},
            "early_stopping": {"bad_evals": self.bad_evals, "has_best_weights": self.best_state is not None},
            "grad_scaler": self.scaler.state_dict() if self.scaler is not None else None,
        })

    def finish(self) -> None:
        """The best weights back in the model (early stopping), saved as ``best/``; processes in step."""
        if self.config.early_stopping_patience is not None and self.best_state is not None:
            self.model.load_state_dict(self.best_state)
            if self.config.checkpoint_dir is not None and self.is_main:
                save_checkpoint(Path(self.config.checkpoint_dir) / "best", self.model, config=self.config,
                                history=self.history, tokenizer=self.tokenizer, step=self.history.best_step)
        if self.procs is not None:
            self.procs.barrier()  # rank 0's checkpoints are complete when fit returns, in every process


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

    Each batch is one optimizer step: forward (under autocast with mixed precision), the loss
    (``loss_fn(model, batch)``, default :func:`~attn_tutorial.losses.token_cross_entropy` with label smoothing; validation
    uses the plain cross-entropy), backward, gradient clipping (the norm before clipping is recorded),
    AdamW with the learning rate of :func:`lr_at`. Validation every ``config.eval_every`` steps or at
    each epoch's end; early stopping ends with the best weights. A fresh run calls
    ``set_seed(config.seed)`` first. ``resume_from`` (a checkpoint or a ``checkpoint_dir``) restores
    weights, optimizer, schedule, RNG states, early stopping, history and data position, so the run
    ends with the weights of one never interrupted (``train_batches`` must be ordered by epoch alone,
    e.g. a ``BatchIterator``). ``callbacks`` get a :class:`TrainEvent` after every step and evaluation;
    returning ``True`` stops. ``tokenizer`` is recorded in every checkpoint.

    Ctrl-C or SIGTERM is honoured at the end of the step it arrives in: a final checkpoint is written,
    then ``KeyboardInterrupt`` is raised (a second signal interrupts at once). Under ``torchrun`` (after
    :func:`~attn_tutorial.distributed.init_distributed`) the same call runs in every process with
    ``DistributedDataParallel``: process ``r`` of ``W`` takes batches ``r, r + W, ...``, losses and
    decisions to stop are shared, rank 0 writes the checkpoints. The module's docstring spells out
    each of these promises.

    Shape:
        each batch: ``src``, ``src_mask`` ``(B, S)``; ``tgt_in``, ``tgt_out``, ``tgt_mask`` ``(B, T)``
        (masks bool, ``True`` = real token); the model's logits ``(B, T, V)``.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if config.early_stopping_patience is not None and val_batches is None:
        raise ValueError(f"config.early_stopping_patience={config.early_stopping_patience} needs val_batches, got None")
    run = _Run.start(model, train_batches, config, loss_fn, callbacks, tokenizer)
    start_epoch, skip, saved_rng = run.restore(resume_from)
    stop = run.history.stopped_early or (config.max_steps is not None and run.step >= config.max_steps)
    with Interrupts() as interrupts, run.running():
        try:
            for epoch in range(start_epoch, config.epochs):
                run.resumable = None  # until the epoch's first step is whole
                if stop:
                    break
                batches, step_in_epoch, epoch_rng = run.epoch_batches(train_batches, epoch, saved_rng, skip)
                saved_rng = None
                run.t_last = time.perf_counter()
                for batch in batches:
                    run.resumable = None
                    step_in_epoch += 1
                    loss = run.train_step(batch, epoch)
                    here = (epoch, step_in_epoch, epoch_rng)
                    eval_due = val_batches is not None and config.eval_every != "epoch" and run.step % int(config.eval_every) == 0
                    run.resumable = None if eval_due else here  # with an evaluation due, whole once it has run
                    stop = run.notify("step", epoch, loss)
                    if eval_due:
                        stop = run.evaluate(val_batches, epoch) or stop
                        run.resumable = here
                    if config.max_steps is not None and run.step >= config.max_steps:
                        stop = True
                    stop, interrupted = run.agree(stop, interrupts.pending is not None)
                    if stop and step_in_epoch != run.per_epoch:  # stopping in the middle of an epoch
                        run.save(here)
                        break
                    if not stop and config.checkpoint_every_steps and run.step % config.checkpoint_every_steps == 0:
                        run.save(here)
                    interrupts.settle(interrupted if run.procs is not None else None)  # a signal during this step
                    if stop:  # on the epoch's last batch: finish the epoch below first
                        break
                    run.t_last = time.perf_counter()
                if stop and step_in_epoch != run.per_epoch:
                    break
                # The epoch ran to its end (or stops on its last batch): evaluate, save, go on.
                run.resumable = None
                if step_in_epoch == 0:
                    raise ValueError(f"train_batches yielded no batches in epoch {epoch}; pass a re-iterable (a list, or an "
                                     "object whose __iter__ starts over), not a one-shot generator"
                                     + ("" if run.procs is None else f", with at least {run.procs.world_size} batches (one per process)"))
                if val_batches is not None and config.eval_every == "epoch":
                    stop = run.evaluate(val_batches, epoch) or stop
                stop, interrupted = run.agree(stop, interrupts.pending is not None)
                next_epoch = (epoch + 1, 0, capture_rng("rng.epoch_start"))
                if stop or epoch == config.epochs - 1 or config.checkpoint_every_steps is None:
                    run.save(next_epoch)
                run.resumable = next_epoch
                interrupts.settle(interrupted if run.procs is not None else None)  # a signal during the evaluation
            interrupts.settle(run.agree(interrupts.pending is not None)[0] if run.procs is not None else None)
        except KeyboardInterrupt:
            interrupts.restore()  # a second signal during the final save stops it at once
            if run.resumable is not None and config.checkpoint_dir is not None and run.last_saved != run.step:
                run.save(run.resumable)
            raise
    run.finish()
    return run.history
