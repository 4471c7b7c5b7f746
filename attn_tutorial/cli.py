"""The ``attn-tutorial`` command line.

* ``attn-tutorial info`` prints what the package sees: its version, PyTorch's, the device it would
  compute on, and where it looks for data.
* ``attn-tutorial train --recipe NAME`` trains a model of the book from a named recipe
  (:mod:`attn_tutorial.configs`): it trains the tokenizer if needed (joint BPE on the training split
  only) and saves it beside the checkpoints, logs to stderr and ``train.log``, checkpoints often
  (``--resume`` continues), and at the end scores greedy BLEU on the validation split and writes a
  model directory (:mod:`attn_tutorial.pretrained`): fp16 weights, tokenizer and a JSON card.
  Under ``torchrun --nproc-per-node N -m attn_tutorial train ...`` it trains in ``N`` processes with
  DistributedDataParallel (see :func:`attn_tutorial.train.fit`); rank 0 writes every file.
* ``attn-tutorial translate --model NAME_OR_DIR`` reads one sentence per line on stdin and writes
  one translation per line on stdout: the same number of lines, in order, an empty line for an empty
  line.
* ``attn-tutorial evaluate --model NAME_OR_DIR --split SPLIT`` prints sacreBLEU with its signature
  (``--json`` for machine-readable output).

Every expected failure (unknown recipe, model or split, missing data, an unavailable device, a bad
``--set``) exits with status 2 and one line on stderr; set ``ATTN_TUTORIAL_DEBUG=1`` for the traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

import torch

from . import __version__
from .configs import DataSpec, Recipe, apply_overrides, build_model, get_recipe, list_recipes
from .data import MULTI30K_SPLITS, BatchIterator, date_dataset, date_vocab, load_multi30k, train_bpe
from .metrics import bleu_signature, corpus_bleu
from .pretrained import (
    CARD_FILE,
    MODEL_FILE,
    TOKENIZER_FILE,
    card_length_penalty,
    list_pretrained,
    load_pretrained,
    load_tokenizer,
    save_tokenizer,
    translate_sentences,
)
from .runtime import DATA_ENV_VAR, autocast_dtype, data_dir, default_device, set_seed
from .train import TrainEvent, export_fp16, fit, init_distributed, latest_checkpoint, load_checkpoint

__all__ = ["build_parser", "main", "load_split", "CLIError"]

DATES_SPLITS = ("train", "val", "test")
#: The most a model shipped inside the package may take on disk (fp16 weights).
SHIP_MAX_BYTES = 16 * 2**20


class CLIError(Exception):
    """An expected failure: reported as one line on stderr with exit status 2."""


def _device(name: str | None) -> torch.device:
    try:
        return default_device(name)
    except (RuntimeError, TypeError) as err:  # an accelerator that is not here, or a malformed name
        raise CLIError(str(err) if isinstance(err, RuntimeError) else f"invalid --device {name!r}") from None


def _info(args: argparse.Namespace) -> int:
    device = _device(args.device)
    amp = autocast_dtype(device)
    try:
        data: str = str(data_dir())
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"attn_tutorial {__version__}")
    print(f"python        {platform.python_version()}")
    print(f"torch         {torch.__version__} ({torch.get_num_threads()} threads)")
    print(f"device        {device}" + (f" (mixed precision: {str(amp).removeprefix('torch.')})" if amp else ""))
    print(f"data          {data} (set {DATA_ENV_VAR} to change)")
    return 0


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def load_split(spec: DataSpec, split: str) -> list[tuple[str, str]]:
    """The ``(source, target)`` pairs of ``split`` of a recipe's data set (all of them, no limits).

    Multi30K: one of ``attn_tutorial.data.MULTI30K_SPLITS``; the date task: ``train``, ``val``
    or ``test``, regenerated from the recipe's sizes and seed.
    """
    if spec.dataset == "multi30k":
        if split not in MULTI30K_SPLITS:
            raise CLIError(f"unknown split {split!r} for multi30k; choose one of {', '.join(MULTI30K_SPLITS)}")
        return load_multi30k(split, spec.src_lang, spec.tgt_lang)
    if split not in DATES_SPLITS:
        raise CLIError(f"unknown split {split!r} for the date task; choose one of {', '.join(DATES_SPLITS)}")
    splits = date_dataset(spec.n_train, spec.n_val, spec.n_test, seed=spec.data_seed)
    return list(getattr(splits, split))


def _limit(pairs: list[tuple[str, str]], n: int | None) -> list[tuple[str, str]]:
    return pairs if n is None else pairs[:n]


# --------------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------------


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


def _resolve_recipe(args: argparse.Namespace, device: torch.device, out: Path) -> Recipe:
    try:
        recipe = get_recipe(args.recipe)
    except KeyError as err:
        raise CLIError(err.args[0]) from None
    recipe = apply_overrides(recipe, args.set or [])
    train_updates: dict[str, Any] = {
        "device": str(device),
        "checkpoint_dir": str(out / _CHECKPOINTS),
        "checkpoint_every_steps": recipe.checkpoint_every_steps,
    }
    for name in ("epochs", "max_steps", "seed"):
        if getattr(args, name) is not None:
            train_updates[name] = getattr(args, name)
    return dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, **train_updates))


def _train(args: argparse.Namespace, argv: Sequence[str]) -> int:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size < 2:
        return _train_checked(args, argv, _device(args.device), world_size=1)
    # Started by torchrun: one process per GPU (or several on the CPU), joined into one group here.
    try:
        device = init_distributed(args.device)
    except RuntimeError as err:
        raise CLIError(str(err)) from None
    try:
        return _train_checked(args, argv, device, world_size=world_size)
    finally:
        torch.distributed.destroy_process_group()


def _barrier(world_size: int) -> None:
    """Wait until every process of the torchrun group gets here (nothing to wait for in one process)."""
    if world_size < 2:
        return
    if torch.distributed.get_backend() == "nccl":
        torch.distributed.barrier(device_ids=[torch.cuda.current_device()])
    else:
        torch.distributed.barrier()


def _train_checked(args: argparse.Namespace, argv: Sequence[str], device: torch.device, world_size: int) -> int:
    is_main = world_size == 1 or torch.distributed.get_rank() == 0
    out = Path(args.out if args.out is not None else Path("runs") / args.recipe).expanduser().resolve()
    recipe = _resolve_recipe(args, device, out)
    ckpt_dir = out / _CHECKPOINTS
    previous = latest_checkpoint(ckpt_dir)
    if args.resume:
        if previous is None:
            raise CLIError(f"--resume: {ckpt_dir} holds no complete checkpoint to resume from")
        saved = Recipe.from_dict(json.loads((out / _RECIPE_FILE).read_text()))
        for part in ("data", "tokenizer", "model_kind", "model"):
            if getattr(saved, part) != getattr(recipe, part):
                raise CLIError(
                    f"--resume: the recipe's {part} differs from the run in {out} "
                    f"({getattr(saved, part)!r} there, {getattr(recipe, part)!r} now)"
                )
    elif previous is not None or (out / CARD_FILE).exists():
        raise CLIError(f"{out} already holds a training run; pass --resume to continue it or choose another --out")
    # Load the data before anything is written, so that missing data leaves no half-made run behind.
    train_pairs = _limit(load_split(recipe.data, "train"), recipe.data.max_train_pairs)
    val_pairs = _limit(load_split(recipe.data, "val"), recipe.data.max_val_pairs)
    _barrier(world_size)  # every process has checked the output directory before rank 0 writes to it
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / _RECIPE_FILE).write_text(json.dumps(recipe.to_dict(), indent=1) + "\n")
    log = _Log(out / "train.log") if is_main else _NoLog()
    try:
        return _train_run(
            args, argv, recipe, device, out, previous if args.resume else None, log, train_pairs, val_pairs, world_size
        )
    finally:
        log.close()


def _train_run(
    args: argparse.Namespace, argv: Sequence[str], recipe: Recipe, device: torch.device, out: Path,
    resume_from: Path | None, log: _Log, train_pairs: list[tuple[str, str]], val_pairs: list[tuple[str, str]],
    world_size: int = 1,
) -> int:
    spec = recipe.data
    is_main = world_size == 1 or torch.distributed.get_rank() == 0
    log(f"attn-tutorial {__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads), device {device}")
    if world_size > 1:
        log(f"{world_size} processes (torchrun), DistributedDataParallel with backend {torch.distributed.get_backend()}")
    log(f"recipe {recipe.name}: {recipe.description}; output {out}" + (f"; resuming from {resume_from.name}" if resume_from else ""))
    log(f"data {spec.dataset}: {len(train_pairs)} training pairs, {len(val_pairs)} validation pairs")

    tok_path = out / TOKENIZER_FILE
    if not is_main:  # rank 0 trains and saves the tokenizer; the others read it
        _barrier(world_size)
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
        _barrier(world_size)

    cfg = recipe.train
    set_seed(cfg.seed)  # the model's initial weights
    model = build_model(recipe, tokenizer.vocab_size)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log(f"model {recipe.model_kind} {recipe.model}: {n_params:,} parameters")
    batches = BatchIterator(train_pairs, tokenizer, spec.max_tokens, shuffle=True, seed=cfg.seed, max_len=spec.max_len)
    val_batches = BatchIterator(val_pairs, tokenizer, spec.max_tokens, shuffle=False, max_len=spec.max_len)
    counting = _CountingBatches(batches)
    log(f"{len(batches)} batches per epoch (max_tokens {spec.max_tokens}), {cfg.epochs} epochs, max_steps {cfg.max_steps}")
    if world_size > 1:
        log(f"each process trains on one batch in {world_size}: {len(batches) // world_size} steps per epoch")
    progress = _Progress(log, counting, cfg.log_every)
    history = fit(
        model, counting, val_batches, cfg, resume_from=resume_from, callbacks=[progress], tokenizer=str(tok_path)
    )
    if not is_main:  # fit returned once rank 0's checkpoints were written; rank 0 evaluates and exports
        return 0
    tps = progress.train_tokens / progress.train_seconds if progress.train_seconds > 0 else float("nan")
    log(f"training done: {history.num_steps} steps, {history.wall_time:.1f}s, {tps:.0f} target tokens/s")

    best = out / _CHECKPOINTS / "best"
    final = best if (best / "checkpoint.json").is_file() else latest_checkpoint(out / _CHECKPOINTS)
    if final is None:  # fit always writes one when checkpoint_dir is set
        raise CLIError(f"no checkpoint was written under {out / _CHECKPOINTS}")
    t0 = time.perf_counter()
    model.eval()
    hyps = translate_sentences(model, tokenizer, [s for s, _ in val_pairs], batch_size=args.batch_size)
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
        "recipe": recipe.to_dict(),
        "model_kind": recipe.model_kind,
        "command": shlex.join(
            ["attn-tutorial", *argv] if world_size == 1 else ["torchrun", "--nproc-per-node", str(world_size), "-m", "attn_tutorial", *argv]
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
    (out / CARD_FILE).write_text(json.dumps(card, indent=1) + "\n")
    log(f"model directory written: {out} ({MODEL_FILE}, {TOKENIZER_FILE}, {CARD_FILE})")
    return 0


# --------------------------------------------------------------------------------------------
# translate and evaluate
# --------------------------------------------------------------------------------------------


def _read_lines(stream: TextIO) -> list[str]:
    """Lines of ``stream``: split on ``\\n`` (a final ``\\n`` ends the last line, it does not start a new one)."""
    text = stream.read()
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def _load_model(args: argparse.Namespace) -> tuple[Any, Any, dict[str, Any]]:
    device = _device(args.device)
    try:
        return load_pretrained(args.model, device=device)
    except FileNotFoundError as err:
        raise CLIError(str(err)) from None


def _decode_options(args: argparse.Namespace, card: dict[str, Any]) -> dict[str, Any]:
    alpha = card_length_penalty(card) if args.alpha is None else args.alpha
    return {"beam_size": args.beam, "length_penalty_alpha": alpha, "batch_size": args.batch_size, "max_len": args.max_len}


def _utf8(stream: TextIO) -> None:
    """Read and write UTF-8 whatever the locale says (German text must survive a C locale)."""
    encoding = (getattr(stream, "encoding", None) or "utf-8").lower().replace("-", "")
    reconfigure = getattr(stream, "reconfigure", None)
    if encoding != "utf8" and callable(reconfigure):
        reconfigure(encoding="utf-8")


def _translate(args: argparse.Namespace) -> int:
    model, tokenizer, card = _load_model(args)
    if args.no_kv_cache and hasattr(model, "use_kv_cache"):
        model.use_kv_cache = False  # Transformer.decode_step then re-runs the decoder over the prefix
    _utf8(sys.stdin)
    _utf8(sys.stdout)
    lines = _read_lines(sys.stdin)
    outputs = translate_sentences(model, tokenizer, lines, **_decode_options(args, card))
    assert len(outputs) == len(lines)
    sys.stdout.write("".join(f"{o}\n" for o in outputs))
    sys.stdout.flush()
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    model, tokenizer, card = _load_model(args)
    spec = DataSpec(**card["recipe"]["data"])
    pairs = _limit(load_split(spec, args.split), args.limit)
    t0 = time.perf_counter()
    options = _decode_options(args, card)
    hyps = translate_sentences(model, tokenizer, [s for s, _ in pairs], **options)
    seconds = time.perf_counter() - t0
    score = corpus_bleu(hyps, [t for _, t in pairs])
    signature = bleu_signature()
    if args.json:
        print(json.dumps({
            "model": str(args.model),
            "split": args.split,
            "sentences": len(pairs),
            "beam": args.beam,
            "length_penalty_alpha": options["length_penalty_alpha"],
            "score": score.score,
            "signature": signature,
            "bleu": score.format(signature=signature),
            "precisions": list(score.precisions),
            "bp": score.bp,
            "decode_seconds": round(seconds, 3),
        }))
    else:
        print(score.format(signature=signature))
    return 0


# --------------------------------------------------------------------------------------------
# Parser and entry point
# --------------------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _nonnegative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a float >= 0, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite float >= 0, got {text!r}")
    return value


def _add_decoding_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a shipped model's name or a model directory (from 'train')")
    p.add_argument("--beam", type=_positive_int, default=1, help="beam size (1 = greedy, the default)")
    p.add_argument("--alpha", type=_nonnegative_float, default=None,
                   help="GNMT length penalty of beam search (default: the one in the model's card, chosen on "
                        "validation BLEU, else 0.6)")
    p.add_argument("--max-len", type=_positive_int, default=None, help="cap on output tokens per sentence")
    p.add_argument("--batch-size", type=_positive_int, default=64, help="sentences decoded together (default 64)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: the best available)")
    _add_threads(p)


def _add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threads", type=_positive_int, default=None,
        help="CPU threads for PyTorch (default: PyTorch's choice; 1 is often fastest for small models on a busy machine)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attn-tutorial",
        description="Companion tools of the book 'Attention, from intuition to translation'.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    info = sub.add_parser("info", help="print versions, the compute device and the data directory")
    info.add_argument("--device", default=None, help="override the device (cpu, cuda, cuda:1, mps)")
    info.set_defaults(func=_info)

    train = sub.add_parser(
        "train",
        help="train a model from a named recipe",
        description=f"Train a model from a named recipe. Recipes: {', '.join(list_recipes())}.",
    )
    train.add_argument("--recipe", required=True, help=f"one of: {', '.join(list_recipes())}")
    train.add_argument("--out", default=None, help="output directory (default: runs/RECIPE)")
    train.add_argument("--epochs", type=_positive_int, default=None, help="override the recipe's epochs")
    train.add_argument("--max-steps", type=_positive_int, default=None, help="stop after this many optimizer steps")
    train.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: the best available)")
    train.add_argument("--seed", type=int, default=None, help="override the recipe's seed")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    train.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override a recipe field, e.g. model.hidden_dim=256, train.lr=3e-4, data.max_train_pairs=1000 (repeatable)",
    )
    train.add_argument("--batch-size", type=_positive_int, default=64, help="sentences per batch for the final val BLEU")
    _add_threads(train)
    train.set_defaults(func=_train, needs_argv=True)

    tr = sub.add_parser(
        "translate",
        help="translate stdin to stdout, line by line",
        description="Translate one sentence per line from stdin to stdout: the same number of lines, in "
        f"order, an empty line for an empty line. Shipped models: {', '.join(list_pretrained()) or 'none yet'}.",
    )
    _add_decoding_options(tr)
    tr.add_argument(
        "--no-kv-cache", action="store_true",
        help="Transformer models: recompute the decoder over the whole prefix at every step instead of keeping "
             "a key/value cache (same output, slower; for measuring what the cache buys). Recurrent models have no such cache",
    )
    tr.set_defaults(func=_translate)

    ev = sub.add_parser("evaluate", help="sacreBLEU of a model on a split, with its signature")
    _add_decoding_options(ev)
    ev.add_argument("--split", required=True, help=f"multi30k: {', '.join(MULTI30K_SPLITS)}; dates: {', '.join(DATES_SPLITS)}")
    ev.add_argument("--limit", type=_positive_int, default=None, help="score only the first N sentences")
    ev.add_argument("--json", action="store_true", help="print one JSON object (score, signature, ...)")
    ev.set_defaults(func=_evaluate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``attn-tutorial`` console script; returns the exit status.

    Expected failures exit with status 2 and one line ``attn-tutorial: error: ...`` on stderr.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "threads", None) is not None:
        torch.set_num_threads(args.threads)
    try:
        if getattr(args, "needs_argv", False):
            return int(args.func(args, argv))
        return int(args.func(args))
    except (CLIError, FileNotFoundError, ValueError) as exc:
        # CLIError: our own checks (unknown names, an unavailable device); FileNotFoundError: missing
        # data or files (the data module's message); ValueError: a bad --set or config value.
        if os.environ.get("ATTN_TUTORIAL_DEBUG"):
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        parser.exit(2, f"attn-tutorial: error: {message}\n")


if __name__ == "__main__":
    sys.exit(main())
