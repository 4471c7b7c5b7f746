"""Turn a finished ``attn-tutorial train`` run into a model shipped inside the package.

    python scripts/ship_model.py runs/gru-bahdanau --name bahdanau
    python scripts/ship_model.py runs/transformer --name transformer --average 1,2,3,4,5
    python scripts/ship_model.py runs/transformer --name transformer --average-spaced 5,10
    python scripts/ship_model.py --name luong --reevaluate    # same BLEU (checked), timings on idle cores
    python scripts/ship_model.py --name luong --reevaluate --alphas 0.6,1.0,1.5   # choose alpha on validation

1. Weights: the run's exported ``model.safetensors`` (its best or last checkpoint), or, with
   ``--average``, every candidate "average of the newest N step checkpoints" for the N listed (with
   ``--average-spaced``, of the newest N at multiples of ``--every`` steps, further apart); the
   candidate with the best *validation* BLEU (beam ``--select-beam``) is kept. Then, with ``--alphas``,
   the beam-search length penalty with the best validation BLEU for those weights; the card records
   it and ``attn-tutorial translate/evaluate`` use it by default. Test sets are never used for a choice.
2. The fp16 file must fit the 16 MiB limit of a shipped model (:data:`attn_tutorial.run.SHIP_MAX_BYTES`).
3. ``card.json`` gains ``test_bleu``: sacreBLEU (cased, detokenised, 13a) on test_2016_flickr and
   test_2017_flickr with greedy decoding and beam 5, computed here with the same code path as
   ``attn-tutorial evaluate``; ``tests/test_shipped_models.py`` recomputes them from the shipped files.

Writes ``attn_tutorial/pretrained/NAME/`` (model.safetensors, tokenizer.json, card.json, and
``outputs/SPLIT.DECODING.txt``: the test translations behind every BLEU on the card, which the chapters
use for bootstrap intervals, and, where the chosen alpha is not 0.6, ``SPLIT.beam5-alpha0.6.txt`` for
comparisons under one search, their BLEU in ``card["eval"]["comparison"]``; ``--reevaluate
--keep-timings`` writes them for an already shipped model).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from attn_tutorial.cards import COMPARISON_ALPHA, OUTPUTS_DIR
from attn_tutorial.run import SHIP_MAX_BYTES
from attn_tutorial.configs import DataSpec, Recipe, build_model
from attn_tutorial import load_multi30k
from attn_tutorial.metrics import bleu_signature, corpus_bleu
from attn_tutorial.pretrained import (
    CARD_FILE,
    DEFAULT_LENGTH_PENALTY_ALPHA,
    MODEL_FILE,
    TOKENIZER_FILE,
    card_length_penalty,
    load_pretrained,
    load_tokenizer,
    pretrained_root,
    translate_sentences,
)
from attn_tutorial import average_checkpoints, export_fp16, load_checkpoint, save_checkpoint

#: What the card reports for every shipped model (the test reproduces each entry).
EVAL_SPLITS = ("test_2016_flickr", "test_2017_flickr")
EVAL_BEAMS = {"greedy": 1, "beam5": 5}


def _decode(model_dir: Path, split: str, beam: int, spec: DataSpec, alpha: float = DEFAULT_LENGTH_PENALTY_ALPHA) -> tuple[float, float, list[str]]:
    """BLEU, decoding seconds and the translations of ``split`` (greedy for ``beam=1``)."""
    model, tokenizer, _ = load_pretrained(model_dir)
    pairs = load_multi30k(split, spec.src_lang, spec.tgt_lang)
    t0 = time.perf_counter()
    hyps = translate_sentences(model, tokenizer, [s for s, _ in pairs], beam_size=beam, length_penalty_alpha=alpha)
    return corpus_bleu(hyps, [t for _, t in pairs]).score, time.perf_counter() - t0, hyps


def _bleu(model_dir: Path, split: str, beam: int, spec: DataSpec, alpha: float = DEFAULT_LENGTH_PENALTY_ALPHA) -> tuple[float, float]:
    score, seconds, _ = _decode(model_dir, split, beam, spec, alpha)
    return score, seconds


def _write_outputs(model_dir: Path, outputs: dict[tuple[str, str], list[str]]) -> None:
    """Store the test translations behind the card's BLEU: ``outputs/SPLIT.DECODING.txt``, one line each."""
    folder = model_dir / OUTPUTS_DIR
    folder.mkdir(exist_ok=True)
    for (split, label), hyps in outputs.items():
        (folder / f"{split}.{label}.txt").write_text("".join(h + "\n" for h in hyps), encoding="utf-8")


def _candidate(run: Path, out: Path, n: int | None, every: int | None = None) -> Path:
    """A model directory in ``out`` with the run's own export (``n=None``) or the average of the newest n
    step checkpoints (with ``every``: of the newest n whose step is a multiple of ``every``)."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(run / TOKENIZER_FILE, out / TOKENIZER_FILE)
    shutil.copy(run / CARD_FILE, out / CARD_FILE)
    if n is None:
        shutil.copy(run / MODEL_FILE, out / MODEL_FILE)
        return out
    steps = sorted((p for p in (run / "checkpoints").iterdir() if p.name.startswith("step-")), key=lambda p: int(p.name.split("-")[1]))
    if every:
        steps = [p for p in steps if int(p.name.split("-")[1]) % every == 0]
    if len(steps) < n:
        raise SystemExit(f"--average {n}: only {len(steps)} step checkpoints{f' at multiples of {every}' if every else ''} in {run / 'checkpoints'}")
    chosen = steps[-n:]
    recipe = Recipe.from_dict(json.loads((run / CARD_FILE).read_text())["recipe"])
    model = build_model(recipe, load_tokenizer(run / TOKENIZER_FILE).vocab_size)
    model.load_state_dict(average_checkpoints(chosen))
    newest = load_checkpoint(chosen[-1], load_training_state=False).metadata
    ckpt = save_checkpoint(out / "averaged", model, tokenizer=str(run / TOKENIZER_FILE), step=newest.get("step"),
                           extra={"averaged": [p.name for p in chosen]})
    export_fp16(ckpt, out / MODEL_FILE, max_bytes=None)
    shutil.rmtree(ckpt)
    card = json.loads((out / CARD_FILE).read_text())
    card["averaged_checkpoints"] = [p.name for p in chosen]
    card["model_bytes"] = (out / MODEL_FILE).stat().st_size  # the averaged export, not the run's (loading checks it)
    (out / CARD_FILE).write_text(json.dumps(card, indent=1) + "\n")
    return out


def _evaluate(model_dir: Path, spec: DataSpec, alpha: float) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]], dict[str, object] | None]:
    """Test BLEU and decoding seconds of ``model_dir`` for every split and beam the card reports (beam
    search with length penalty ``alpha``); the translations go to ``model_dir/outputs/``.

    Where ``alpha`` is not :data:`~attn_tutorial.cards.COMPARISON_ALPHA`, beam 5 at that alpha too
    (``outputs/SPLIT.beam5-alpha0.6.txt``), so that the chapters compare models under one search
    without decoding again; its BLEU is the third value returned (``None`` when not needed)."""
    results: dict[str, dict[str, float]] = {}
    seconds: dict[str, dict[str, float]] = {}
    outputs: dict[tuple[str, str], list[str]] = {}
    for split in EVAL_SPLITS:
        for label, beam in EVAL_BEAMS.items():
            score, secs, outputs[split, label] = _decode(model_dir, split, beam, spec, alpha)
            results.setdefault(split, {})[label] = round(score, 2)
            seconds.setdefault(split, {})[label] = round(secs, 1)
            print(f"{split} {label}: BLEU {score:.2f} ({secs:.0f}s)", flush=True)
    comparison: dict[str, object] | None = None
    if alpha != COMPARISON_ALPHA:
        scores: dict[str, dict[str, float]] = {}
        for split in EVAL_SPLITS:
            score, secs, outputs[split, f"beam5-alpha{COMPARISON_ALPHA}"] = _decode(model_dir, split, 5, spec, COMPARISON_ALPHA)
            scores[split] = {"beam5": round(score, 2)}
            print(f"{split} beam5 alpha {COMPARISON_ALPHA}: BLEU {score:.2f} ({secs:.0f}s)", flush=True)
        comparison = {"length_penalty_alpha": COMPARISON_ALPHA, "test_bleu": scores,
                      "outputs": f"{OUTPUTS_DIR}/SPLIT.beam5-alpha{COMPARISON_ALPHA}.txt"}
    _write_outputs(model_dir, outputs)
    return results, seconds, comparison


def _eval_record(seconds: dict[str, dict[str, float]], alpha: float) -> dict[str, object]:
    return {
        "bleu_signature": bleu_signature(),
        "length_penalty_alpha": alpha,
        "batch_size": 64,
        "decode_seconds": seconds,
        "decode_device": "cpu",
        "decode_threads": torch.get_num_threads(),
        "python_version": platform.python_version(),
        "command": "attn-tutorial evaluate --model NAME --split SPLIT [--beam 5]",
    }


def _select_alpha(model_dir: Path, spec: DataSpec, alphas: list[float], beam: int) -> tuple[float, dict[str, float]]:
    """The length penalty among ``alphas`` with the best validation BLEU (beam ``beam``), and every score."""
    scores: dict[str, float] = {}
    for alpha in alphas if len(alphas) > 1 else ():
        score, secs = _bleu(model_dir, "val", beam, spec, alpha)
        scores[str(alpha)] = round(score, 2)
        print(f"val BLEU beam {beam} {score:.2f}  alpha {alpha}  ({secs:.0f}s)", flush=True)
    return max(alphas, key=lambda a: scores.get(str(a), 0.0)), scores


def reevaluate(name: str, alphas: list[float], beam: int, keep_timings: bool = False) -> int:
    """Decode the test sets again with an already shipped model: same BLEU (checked), new timings,
    and the translations stored in ``outputs/`` (with ``keep_timings``: the card's timings stay, for a
    machine that is not idle).

    For timings measured on a loaded machine: run this on idle cores so that every card's decoding
    speed is comparable. The weights and the scores do not change; a score that does is an error.
    With several ``alphas``: first choose the beam length penalty on validation BLEU, as a new ship
    would; then only the greedy scores (which no length penalty touches) must stay the same.
    """
    model_dir = pretrained_root() / name
    card = json.loads((model_dir / CARD_FILE).read_text())
    spec = DataSpec(**card["recipe"]["data"])
    alpha = card_length_penalty(card)
    if len(alphas) > 1:
        alpha, alpha_scores = _select_alpha(model_dir, spec, alphas, beam)
        card.setdefault("selection", {})["length_penalty_alpha"] = {"candidates": alpha_scores, "chosen": alpha}
    results, seconds, comparison = _evaluate(model_dir, spec, alpha)
    for split, scores in results.items():
        for label, score in scores.items():
            if label == "greedy" or len(alphas) <= 1:
                if abs(score - card["test_bleu"][split][label]) > 0.05:
                    raise SystemExit(f"{name} {split} {label}: BLEU {score} but the card says {card['test_bleu'][split][label]}")
    if len(alphas) > 1:  # new beam scores with the chosen alpha (the greedy ones checked unchanged above)
        card["test_bleu"] = results
    if not keep_timings:
        card["eval"] = _eval_record(seconds, alpha)
    card["eval"].pop("comparison", None)
    if comparison is not None:
        card["eval"]["comparison"] = comparison
    (model_dir / CARD_FILE).write_text(json.dumps(card, indent=1) + "\n")
    print(f"re-evaluated {model_dir}: {json.dumps(seconds)}" + (" (timings not stored)" if keep_timings else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, nargs="?", help="the --out directory of a finished attn-tutorial train run")
    ap.add_argument("--name", required=True, help="name of the shipped model (attn_tutorial/pretrained/NAME)")
    ap.add_argument("--reevaluate", action="store_true",
                    help="no RUN: decode the test sets again with the shipped NAME, check its BLEU, store new timings")
    ap.add_argument("--average", default="", help="comma-separated N: also try the average of the newest N checkpoints")
    ap.add_argument("--average-spaced", default="",
                    help="comma-separated N: also try the average of the newest N checkpoints whose step is a "
                         "multiple of --every (those kept by TrainConfig.keep_every_steps)")
    ap.add_argument("--every", type=int, default=None,
                    help="spacing for --average-spaced (default: the run's TrainConfig.keep_every_steps)")
    ap.add_argument("--select-beam", type=int, default=5, help="beam used for the validation BLEU that selects (default 5)")
    ap.add_argument("--alphas", default=str(DEFAULT_LENGTH_PENALTY_ALPHA),
                    help="comma-separated GNMT length penalties: the best on validation BLEU (beam --select-beam, "
                         "chosen weights) goes in the card and is what beam search uses (default 0.6 only)")
    ap.add_argument("--keep-timings", action="store_true",
                    help="with --reevaluate: keep the card's decoding timings (the machine is not idle)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    alphas = [float(x) for x in args.alphas.split(",") if x.strip()]
    if args.reevaluate:
        return reevaluate(args.name, alphas, args.select_beam, args.keep_timings)
    if args.run is None:
        ap.error("RUN is required (unless --reevaluate)")
    run: Path = args.run
    card = json.loads((run / CARD_FILE).read_text())
    spec = DataSpec(**card["recipe"]["data"])
    with tempfile.TemporaryDirectory() as tmp:
        candidates: dict[str, Path] = {"run export": _candidate(run, Path(tmp) / "export", None)}
        for n in [int(x) for x in args.average.split(",") if x.strip()]:
            candidates[f"average of newest {n}"] = _candidate(run, Path(tmp) / f"avg{n}", n)
        every = args.every or card["recipe"]["train"].get("keep_every_steps")
        for n in [int(x) for x in args.average_spaced.split(",") if x.strip()]:
            if not every:
                raise SystemExit("--average-spaced: the run kept no spaced checkpoints (no keep_every_steps); give --every")
            label = f"average of newest {n} at multiples of {every} steps"
            candidates[label] = _candidate(run, Path(tmp) / f"avg{n}x{every}", n, every)
        selection: dict[str, float | None] = {}
        if len(candidates) == 1:  # nothing to choose: no validation decoding
            selection = {"run export": None}
        for label, path in candidates.items() if len(candidates) > 1 else ():
            score, secs = _bleu(path, "val", args.select_beam, spec)
            selection[label] = round(score, 2)
            print(f"val BLEU beam {args.select_beam} {score:.2f}  {label}  ({secs:.0f}s)", flush=True)
        best = max(selection, key=lambda k: selection[k] or 0.0)
        chosen = candidates[best]
        alpha, alpha_scores = _select_alpha(chosen, spec, alphas, args.select_beam)
        size = (chosen / MODEL_FILE).stat().st_size
        if size > SHIP_MAX_BYTES:
            raise SystemExit(f"{MODEL_FILE} is {size} bytes, over the {SHIP_MAX_BYTES} a shipped model may take")
        card = json.loads((chosen / CARD_FILE).read_text())
        final = run / "checkpoints" / card["checkpoint"]
        history = load_checkpoint(final, load_training_state=False).metadata.get("history") if final.is_dir() else None
        if history:  # the training curves, for the chapters' plots
            card["history"] = history
        results, seconds, comparison = _evaluate(chosen, spec, alpha)
        card.update(
            {
                "name": args.name,
                "model_bytes": size,
                "selection": {
                    "by": f"validation BLEU, beam {args.select_beam}",
                    "candidates": selection,
                    "chosen": best,
                    "length_penalty_alpha": {"candidates": alpha_scores, "chosen": alpha},
                },
                "test_bleu": results,
                "eval": _eval_record(seconds, alpha) | ({"comparison": comparison} if comparison else {}),
            }
        )
        (chosen / CARD_FILE).write_text(json.dumps(card, indent=1) + "\n")
        dest = pretrained_root() / args.name
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        for f in (MODEL_FILE, TOKENIZER_FILE, CARD_FILE):
            shutil.copy(chosen / f, dest / f)
        shutil.copytree(chosen / OUTPUTS_DIR, dest / OUTPUTS_DIR)
    print(f"shipped {dest} ({size / 2**20:.1f} MiB): {json.dumps(results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
