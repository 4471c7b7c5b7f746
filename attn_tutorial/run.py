"""The training pipeline behind ``attn-tutorial train``: a recipe in, a model directory out.

:func:`train_recipe` takes a :class:`TrainRequest` (what the command line was asked) and does, in
order: check the output directory (a new run, or ``resume`` of the run there, whose saved recipe must
agree), load the data, train the tokenizer on the training split only (joint BPE) or build the date
vocabulary, build the model, :func:`~attn_tutorial.train.fit` it with checkpoints and a log
(``train.log`` and stderr), then score greedy BLEU on the validation split and write the model
directory (:mod:`attn_tutorial.pretrained`): fp16 weights, tokenizer and a JSON card. Under
``torchrun`` every process runs it; rank 0 writes every file. The CLI only parses and calls this.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

import torch

from . import __version__
from .batching import BatchIterator
from .checkpoint import export_fp16, latest_checkpoint, load_checkpoint
from .configs import DataSpec, Recipe, apply_overrides, build_model, get_recipe
from .distributed import barrier, init_distributed
from .errors import DamagedFileError, UserError
from .metrics import bleu_signature, corpus_bleu
from .multi30k import MULTI30K_SPLITS, load_multi30k
from .pretrained import (
    CARD_FILE,
    MODEL_FILE,
    MODEL_FORMAT_VERSION,
    TOKENIZER_FILE,
    load_tokenizer,
    save_tokenizer,
    translate_sentences,
)
from .runtime import atomic_write_bytes, set_seed, user_device
from .tasks import DATES_SPLITS, date_dataset, date_vocab
from .tokens import train_bpe
from .train import TrainEvent, fit

__all__ = ["TrainRequest", "train_recipe", "load_split", "SHIP_MAX_BYTES"]


@dataclass(frozen=True)
class TrainRequest:
    """What ``attn-tutorial train`` was asked: a recipe, changes to it, and where the run goes.

    ``out`` defaults to ``runs/RECIPE``; ``overrides`` are ``section.field=value`` strings as ``--set``
    takes them; ``epochs``, ``max_steps`` and ``seed`` replace the recipe's when given; ``resume``
    continues the run in ``out``; ``batch_size`` is in sentences, for the final validation BLEU;
    ``argv`` is the command line, recorded in the card.
    """

    recipe: str
    out: str | os.PathLike[str] | None = None
    overrides: tuple[str, ...] = ()
    epochs: int | None = None
    max_steps: int | None = None
    seed: int | None = None
    resume: bool = False
    device: str | None = None
    batch_size: int = 64
    argv: tuple[str, ...] = ()


#: The most a model shipped inside the package may take on disk (fp16 weights).
SHIP_MAX_BYTES = 16 * 2**20

def load_split(spec: DataSpec, split: str) -> list[tuple[str, str]]:
    """The ``(source, target)`` pairs of ``split`` of a recipe's data set (all of them, no limits).

    Multi30K: one of ``attn_tutorial.multi30k.MULTI30K_SPLITS``; the date task: ``train``, ``val``
    or ``test``, regenerated from the recipe's sizes and seed.
    """
    if spec.dataset == "multi30k":
        if split not in MULTI30K_SPLITS:
            raise UserError(f"unknown split {split!r} for multi30k; choose one of {', '.join(MULTI30K_SPLITS)}")
        return load_multi30k(split, spec.src_lang, spec.tgt_lang)
    if split not in DATES_SPLITS:
        raise UserError(f"unknown split {split!r} for the date task; choose one of {', '.join(DATES_SPLITS)}")
    splits = date_dataset(spec.n_train, spec.n_val, spec.n_test, seed=spec.data_seed)
    return list(getattr(splits, split))


def first_pairs(pairs: list[tuple[str, str]], n: int | None) -> list[tuple[str, str]]:
    return pairs if n is None else pairs[:n]


class _Log:
    """Writes each line to stderr and appends it to ``train.log``."""

    def __init__(self, path: Path) -> None:
        self.file: TextIO = path.open("a", encoding="utf-8")
        self.t0 = time.perf_counter()

    def __call__(self, message: str) -> None:
        line = f"[{time.perf_counter() - self.t0:8.1f}s] {message}"
        print(line, file=sys.stderr, flush=True)
        self.file.write(line + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class _NoLog(_Log):
    """The log of processes other than rank 0 under torchrun: rank 0 speaks for all of them."""

    def __init__(self) -> None:
        pass

    def __call__(self, message: str) -> None:
        pass

    def close(self) -> None:
        pass


class _CountingBatches:
    """Wraps a :class:`BatchIterator` and counts the real target tokens it hands out (for tokens/s)."""

    def __init__(self, inner: BatchIterator) -> None:
        self.inner = inner
        self.tokens = 0

    def __len__(self) -> int:
        return len(self.inner)

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def __iter__(self) -> Iterator[Any]:
        for batch in self.inner:
            self.tokens += batch.num_tokens
            yield batch


class _Progress:
    """A :func:`fit` callback: logs loss, learning rate and tokens/s every ``every`` steps."""

    def __init__(self, log: _Log, batches: _CountingBatches, every: int) -> None:
        self.log, self.batches, self.every = log, batches, every
        self.t_last = time.perf_counter()
        self.tokens_last = 0
        self.train_seconds = 0.0
        self.train_tokens = 0

    def __call__(self, event: TrainEvent) -> None:
        now = time.perf_counter()
        if event.kind == "eval":
            self.log(f"step {event.step} epoch {event.epoch} val_loss {event.value:.4f} ppl {event.history.val_perplexity[-1]:.2f}")
            self.t_last, self.tokens_last = time.perf_counter(), self.batches.tokens
            return
        if event.step % self.every and event.step != 1:
            return
        dt, dn = now - self.t_last, self.batches.tokens - self.tokens_last
        self.train_seconds += dt
        self.train_tokens += dn
        h = event.history
        self.log(
            f"step {event.step} epoch {event.epoch} loss {event.value:.4f} lr {h.lr[-1]:.2e} "
            f"grad_norm {h.grad_norm[-1]:.2f} tok/s {dn / max(dt, 1e-9):.0f}"
        )
        self.t_last, self.tokens_last = now, self.batches.tokens


_RECIPE_FILE = "recipe.json"
_CHECKPOINTS = "checkpoints"


def _resolve_recipe(request: TrainRequest, device: torch.device, out: Path) -> Recipe:
    try:
        recipe = get_recipe(request.recipe)
    except KeyError as err:
        raise UserError(err.args[0]) from None
    try:
        recipe = apply_overrides(recipe, request.overrides)
    except (ValueError, TypeError, KeyError) as err:  # a bad --set: the recipe's own message
        raise UserError(" ".join(str(err.args[0] if isinstance(err, KeyError) and err.args else err).split())) from None
    train_updates: dict[str, Any] = {
        "device": str(device),
        "checkpoint_dir": str(out / _CHECKPOINTS),
        "checkpoint_every_steps": recipe.checkpoint_every_steps,
    }
    for name in ("epochs", "max_steps", "seed"):
        if getattr(request, name) is not None:
            train_updates[name] = getattr(request, name)
    try:
        return dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, **train_updates))
    except (ValueError, TypeError) as err:
        raise UserError(" ".join(str(err).split())) from None


def train_recipe(request: TrainRequest) -> Path:
    """Train the recipe ``request`` names and write its model directory; returns the directory.

    In one process, or in every process of a ``torchrun`` group (``WORLD_SIZE`` above 1), which it joins
    and leaves. Mistakes a user can fix (an unknown recipe, a bad override, an output directory that
    already holds a run, missing data) raise :class:`~attn_tutorial.errors.UserError` before anything is
    written.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size < 2:
        return _train_checked(request, user_device(request.device), world_size=1)
    # Started by torchrun: one process per GPU (or several on the CPU), joined into one group here.
    try:
        device = init_distributed(request.device)
    except RuntimeError as err:
        raise UserError(str(err)) from None
    try:
        return _train_checked(request, device, world_size=world_size)
    finally:
        torch.distributed.destroy_process_group()


def _train_checked(request: TrainRequest, device: torch.device, world_size: int) -> Path:
    is_main = world_size == 1 or torch.distributed.get_rank() == 0
    out = Path(request.out if request.out is not None else Path("runs") / request.recipe).expanduser().resolve()
    recipe = _resolve_recipe(request, device, out)
    ckpt_dir = out / _CHECKPOINTS
    previous = latest_checkpoint(ckpt_dir)
    fresh_restart = False
    if request.resume:
        if previous is None and (out / _RECIPE_FILE).is_file() and not (out / CARD_FILE).exists():
            # Killed before its first checkpoint: starting again from step 0 gives the same weights.
            fresh_restart = True
        elif previous is None:
            raise UserError(f"--resume: {ckpt_dir} holds no complete checkpoint to resume from (run without --resume to start)")
        try:
            saved = Recipe.from_dict(json.loads((out / _RECIPE_FILE).read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise UserError(f"--resume: {out / _RECIPE_FILE} is missing, so the run cannot be checked; is {out} a training run?") from None
        except (ValueError, TypeError, KeyError) as err:
            raise DamagedFileError(
                f"{out / _RECIPE_FILE} is damaged ({' '.join(str(err).split())}); it is a copy of the recipe: rewrite it "
                "from the card or from a checkpoint's checkpoint.json (train_config), or start a new run"
            ) from None
        for part in ("data", "tokenizer", "model_kind", "model"):
            if getattr(saved, part) != getattr(recipe, part):
                raise UserError(
                    f"--resume: the recipe's {part} differs from the run in {out} "
                    f"({getattr(saved, part)!r} there, {getattr(recipe, part)!r} now)"
                )
    elif previous is not None or (out / CARD_FILE).exists():
        raise UserError(f"{out} already holds a training run; pass --resume to continue it or choose another --out")
    # Load the data before anything is written, so that missing data leaves no half-made run behind.
    train_pairs = first_pairs(load_split(recipe.data, "train"), recipe.data.max_train_pairs)
    val_pairs = first_pairs(load_split(recipe.data, "val"), recipe.data.max_val_pairs)
    barrier()  # every process has checked the output directory before rank 0 writes to it
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out / _RECIPE_FILE, (json.dumps(recipe.to_dict(), indent=1) + "\n").encode())
    log = _Log(out / "train.log") if is_main else _NoLog()
    if fresh_restart:
        log(f"--resume: no complete checkpoint in {ckpt_dir} yet (the run stopped before its first): starting from step 0")
    try:
        return _train_run(
            request, recipe, device, out, previous if request.resume else None, log, train_pairs, val_pairs, world_size
        )
    finally:
        log.close()


def _train_run(
    request: TrainRequest, recipe: Recipe, device: torch.device, out: Path,
    resume_from: Path | None, log: _Log, train_pairs: list[tuple[str, str]], val_pairs: list[tuple[str, str]],
    world_size: int = 1,
) -> Path:
    spec = recipe.data
    is_main = world_size == 1 or torch.distributed.get_rank() == 0
    log(f"attn-tutorial {__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads), device {device}")
    if world_size > 1:
        log(f"{world_size} processes (torchrun), DistributedDataParallel with backend {torch.distributed.get_backend()}")
    log(f"recipe {recipe.name}: {recipe.description}; output {out}" + (f"; resuming from {resume_from.name}" if resume_from else ""))
    log(f"data {spec.dataset}: {len(train_pairs)} training pairs, {len(val_pairs)} validation pairs")

    tok_path = out / TOKENIZER_FILE
    if not is_main:  # rank 0 trains and saves the tokenizer; the others read it
        barrier()
        tokenizer = load_tokenizer(tok_path)
    elif resume_from is not None:  # the tokenizer the checkpoints were trained with
        tokenizer = load_tokenizer(tok_path)
        log(f"tokenizer loaded from {tok_path} ({tokenizer.vocab_size} ids)")
    else:
        t0 = time.perf_counter()
        if recipe.tokenizer.kind == "bpe":
            texts = [s for pair in train_pairs for s in pair]  # source and target, training split only
            tokenizer = train_bpe(texts, recipe.tokenizer.vocab_size, min_frequency=recipe.tokenizer.min_frequency)
        else:
            tokenizer = date_vocab()
        save_tokenizer(tokenizer, tok_path)
        log(f"tokenizer {recipe.tokenizer.kind} with {tokenizer.vocab_size} ids in {time.perf_counter() - t0:.1f}s -> {tok_path}")
    if is_main:
        barrier()

    cfg = recipe.train
    set_seed(cfg.seed)  # the model's initial weights
    try:
        model = build_model(recipe, tokenizer.vocab_size)
    except (ValueError, TypeError) as err:  # a model setting of --set the config refuses
        raise UserError(f"recipe {recipe.name}: {' '.join(str(err).split())}") from None
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log(f"model {recipe.model_kind} {recipe.model}: {n_params:,} parameters")
    try:
        batches = BatchIterator(train_pairs, tokenizer, spec.max_tokens, shuffle=True, seed=cfg.seed, max_len=spec.max_len)
        val_batches = BatchIterator(val_pairs, tokenizer, spec.max_tokens, shuffle=False, max_len=spec.max_len)
    except ValueError as err:  # e.g. data.max_tokens below one example's length, or no pairs at all
        raise UserError(f"recipe {recipe.name}: {' '.join(str(err).split())}") from None
    counting = _CountingBatches(batches)
    log(f"{len(batches)} batches per epoch (max_tokens {spec.max_tokens}), {cfg.epochs} epochs, max_steps {cfg.max_steps}")
    if world_size > 1:
        log(f"each process trains on one batch in {world_size}: {len(batches) // world_size} steps per epoch")
    progress = _Progress(log, counting, cfg.log_every)
    history = fit(
        model, counting, val_batches, cfg, resume_from=resume_from, callbacks=[progress], tokenizer=str(tok_path)
    )
    if not is_main:  # fit returned once rank 0's checkpoints were written; rank 0 evaluates and exports
        return out
    tps = progress.train_tokens / progress.train_seconds if progress.train_seconds > 0 else float("nan")
    log(f"training done: {history.num_steps} steps, {history.wall_time:.1f}s, {tps:.0f} target tokens/s")

    best = out / _CHECKPOINTS / "best"
    final = best if (best / "checkpoint.json").is_file() else latest_checkpoint(out / _CHECKPOINTS)
    if final is None:  # fit always writes one when checkpoint_dir is set
        raise UserError(f"no checkpoint was written under {out / _CHECKPOINTS}")
    t0 = time.perf_counter()
    model.eval()
    hyps = translate_sentences(model, tokenizer, [s for s, _ in val_pairs], batch_size=request.batch_size)
    score = corpus_bleu(hyps, [t for _, t in val_pairs])
    signature = bleu_signature()
    log(f"val BLEU (greedy, {len(val_pairs)} sentences) {score.score:.2f} in {time.perf_counter() - t0:.1f}s  {signature}")
    exported = export_fp16(final, out / MODEL_FILE, max_bytes=None)  # the size limit is checked when shipping
    size = exported.stat().st_size
    if size > SHIP_MAX_BYTES:
        log(f"warning: {MODEL_FILE} is {size / 2**20:.1f} MiB, more than the {SHIP_MAX_BYTES // 2**20} MiB a shipped model may take")
    meta = load_checkpoint(final, load_training_state=False).metadata
    card = {
        "name": out.name,
        "model_format": MODEL_FORMAT_VERSION,
        "recipe": recipe.to_dict(),
        "model_kind": recipe.model_kind,
        "command": shlex.join(
            ["attn-tutorial", *request.argv] if world_size == 1 else ["torchrun", "--nproc-per-node", str(world_size), "-m", "attn_tutorial", *request.argv]
        ),
        "world_size": world_size,
        "seed": cfg.seed,
        "device": str(device),
        "wall_time_s": round(history.wall_time, 2),
        "train_tokens_per_sec": None if tps != tps else round(tps, 1),
        "torch_version": torch.__version__,
        "attn_tutorial_version": __version__,
        "python_version": platform.python_version(),
        "git_commit": meta.get("git_commit"),
        "num_parameters": n_params,
        "vocab_size": tokenizer.vocab_size,
        "steps": history.num_steps,
        "checkpoint": final.name,
        "model_bytes": size,
        "final_train_loss": history.train_loss[-1] if history.train_loss else None,
        "val_loss": history.val_loss[-1] if history.val_loss else None,
        "val_bleu": round(score.score, 2),
        "val_bleu_sentences": len(val_pairs),
        "bleu_signature": signature,
        "decoding": "greedy",
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_bytes(out / CARD_FILE, (json.dumps(card, indent=1) + "\n").encode())  # last: completes the directory
    log(f"model directory written: {out} ({MODEL_FILE}, {TOKENIZER_FILE}, {CARD_FILE})")
    return out


