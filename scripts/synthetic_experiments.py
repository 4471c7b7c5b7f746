"""The synthetic experiments behind Part III's claims, with seeds, written to ``attn_tutorial/results/``.

Usage, from the repository root (each run appends to a JSON-lines file and is skipped when found
there, so an interrupted experiment resumes where it stopped):

    .venv/bin/python scripts/synthetic_experiments.py bottleneck --threads 1   # chapter 8
    .venv/bin/python scripts/synthetic_experiments.py dates --threads 1        # chapters 8 to 11

``bottleneck``: digit-string reversal (lengths 1 to 12) without attention for hidden sizes 32, 64 and
128, and with Bahdanau attention for 32 and 64, each with seeds 0, 1, 2. Every model trains *to a
plateau*: a constant learning rate after warm-up, validation loss every 100 steps, stop after 5
evaluations without a new best (the best weights are restored), or at 6,000 steps. Then greedy exact
match and per-character accuracy on 200 fresh strings (in neither training nor validation) at each
length 3..12, and the length at which exact match falls to 50%. (Length 2 is not tested: all 100
two-digit strings occur in training.)

``dates``: the data of the recipe ``gru-bahdanau-dates`` (20,000 / 1,000 / 1,000 dates, batches of at
most 4,096 padded characters) and four decoders of about the same size: the recipe's GRU
encoder-decoder (E 32, H 64, shared embeddings) without attention, with Bahdanau attention, with
Luong attention (global, general score, input feeding), and a pre-norm Transformer (d_model 56, 4
heads, 2+2 layers, d_ff 96). All train for the same number of optimizer steps with the recipe's
optimiser and schedule (AdamW, warm-up 50 steps, cosine to 1e-5, gradient clipping 1.0). Each decoder
first trains with seed 0 at each learning rate of a small grid; the rate with the best *validation*
exact match (ties: the lower final validation loss) is its chosen rate, at which seeds 1 and 2 then
train. Reported per run: validation and test exact match (greedy), test per-character accuracy, test
exact match by input length, parameters, steps, wall and CPU time.

The output files (``attn_tutorial/results/NAME.jsonl``) hold one JSON object per run, with the
device, thread count, torch version, wall and CPU time. The chapters read them with
``at.load_experiment(NAME)`` and say which command made them; nothing here runs when the book is
built.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

import attn_tutorial as at  # noqa: E402

RESULTS = ROOT / "attn_tutorial" / "results"  # shipped with the package: at.load_experiment reads them

# ---------------------------------------------------------------------------------------------
# Reversal: the bottleneck
# ---------------------------------------------------------------------------------------------

REV_TRAIN_MAX = 12
REV_TEST_LENGTHS = list(range(3, REV_TRAIN_MAX + 1))  # every 2-digit string is in training: none fresh
REV_HIDDEN = {"none": (32, 64, 128), "bahdanau": (32, 64)}
REV_SEEDS = (0, 1, 2)
# A cap; the runs are meant to stop at their plateau first (hit_step_cap says). It was 3,000 at first: one run
# (no attention, H 32, seed 2) reached it still improving. The schedule is constant, so the cap changes no run
# that stops before it.
REV_MAX_STEPS = 6000
REV_PATIENCE = 5  # evaluations (of 100 steps each) without a new best validation loss


def reversal_splits() -> at.CharTaskSplits:
    """6,000 training and 300 validation strings of lengths 1..12 (digits), no source shared."""
    return at.reversal_dataset(6000, 300, 0, min_len=1, max_len=REV_TRAIN_MAX, seed=0)


def fresh_reversals(splits: at.CharTaskSplits, length: int, n: int = 200) -> list[tuple[str, str]]:
    """``n`` distinct digit strings of ``length`` seen in neither training nor validation, reversed."""
    rng, pairs = random.Random(length), []
    seen = {s for s, _ in splits.train} | {s for s, _ in splits.val}
    if 10**length - len({s for s in seen if len(s) == length}) < 2 * n:
        raise ValueError(f"fewer than {2 * n} unseen strings of length {length}")
    while len(pairs) < n:
        s = "".join(rng.choices("0123456789", k=length))
        if s not in seen:
            seen.add(s)
            pairs.append((s, s[::-1]))
    return pairs


def greedy_strings(model: torch.nn.Module, vocab: at.CharVocab, sources: list[str], max_len: int | None = None) -> list[str]:
    batch = at.collate([(vocab.encode(s), []) for s in sources], pad_to_multiple_of=1)
    return [vocab.decode(t) for t in at.greedy_decode(model, batch.src, batch.src_mask, max_len=max_len).tokens]


def exact_and_chars(model: torch.nn.Module, vocab: at.CharVocab, pairs: list[tuple[str, str]]) -> tuple[float, float]:
    """Exact match and per-character accuracy (reference characters right at their position)."""
    hyps = greedy_strings(model, vocab, [s for s, _ in pairs])
    exact = sum(h == r for h, (_, r) in zip(hyps, pairs)) / len(pairs)
    chars = sum(sum(a == b for a, b in zip(h, r)) / len(r) for h, (_, r) in zip(hyps, pairs)) / len(pairs)
    return exact, chars


def length_at_half(lengths: list[int], exact: list[float], level: float = 0.5) -> float | None:
    """The length at which exact match first falls below ``level``, linearly interpolated between the
    measured lengths; ``None`` when it never does in the measured range (and the first length if it
    starts below)."""
    if exact[0] < level:
        return float(lengths[0])
    for (l0, e0), (l1, e1) in zip(zip(lengths, exact), zip(lengths[1:], exact[1:])):
        if e1 < level <= e0:
            return l0 + (e0 - level) / (e0 - e1) * (l1 - l0)
    return None


def run_bottleneck(attention: str, hidden: int, seed: int) -> dict:
    splits = reversal_splits()
    vocab = splits.vocab
    at.set_seed(seed)
    model = at.Seq2Seq(at.Seq2SeqConfig(vocab.vocab_size, emb_dim=32, hidden_dim=hidden, attention=attention))
    train = at.BatchIterator(splits.train, vocab, 2048, seed=seed, pad_to_multiple_of=1)
    val = at.BatchIterator(splits.val, vocab, 4096, shuffle=False, pad_to_multiple_of=1)
    config = at.TrainConfig(epochs=1000, max_steps=REV_MAX_STEPS, lr=5e-3, warmup_steps=50, schedule="constant",
                            eval_every=100, early_stopping_patience=REV_PATIENCE, seed=seed, device="cpu", progress=False)
    t0, c0 = time.perf_counter(), time.process_time()
    history = at.fit(model, train, val, config)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    model.eval()
    scores = {L: exact_and_chars(model, vocab, fresh_reversals(splits, L)) for L in REV_TEST_LENGTHS}
    exact = [scores[L][0] for L in REV_TEST_LENGTHS]
    return {
        "attention": attention, "hidden": hidden, "seed": seed, "parameters": model.num_parameters(),
        "steps": history.num_steps, "best_step": history.best_step, "best_val_loss": history.best_val_loss,
        "stopped_early": history.stopped_early, "hit_step_cap": history.num_steps >= config.max_steps,
        "eval_steps": history.eval_step, "val_loss": [round(v, 4) for v in history.val_loss],
        "lengths": REV_TEST_LENGTHS, "exact": exact,
        "per_char": [scores[L][1] for L in REV_TEST_LENGTHS], "length_at_50": length_at_half(REV_TEST_LENGTHS, exact),
        "train_wall_s": round(wall, 1), "train_cpu_s": round(cpu, 1),
    }


def bottleneck_runs() -> list[dict]:
    # seed 0 of every configuration first, so that a cut-off experiment still covers every size
    return [dict(attention=a, hidden=h, seed=s) for s in REV_SEEDS for a, sizes in REV_HIDDEN.items() for h in sizes]


# ---------------------------------------------------------------------------------------------
# Dates: four decoders, one budget
# ---------------------------------------------------------------------------------------------

DATE_RECIPE = "gru-bahdanau-dates"  # its data, batches and optimiser settings
_GRU_DATES = dict(emb_dim=32, hidden_dim=64, share_embeddings=True)  # the recipe's model, attention aside
DATE_DECODERS: dict[str, tuple[str, dict]] = {
    "none": ("seq2seq", dict(_GRU_DATES, attention="none")),
    "bahdanau": ("seq2seq", dict(_GRU_DATES, attention="bahdanau")),
    "luong": ("seq2seq", dict(_GRU_DATES, attention="luong", luong_score="general", luong_mode="global",
                              input_feeding=True)),
    # about the recurrent models' size (104k to 123k parameters): 125,615
    "transformer": ("transformer", dict(d_model=56, num_heads=4, num_encoder_layers=2, num_decoder_layers=2,
                                        d_ff=96, dropout=0.0, max_len=128)),
}
DATE_LRS = (1e-3, 3e-3, 1e-2, 3e-2)  # 3e-2 added after the best of the first three was 1e-2 for every decoder
DATE_SEEDS = (0, 1, 2)
DATE_STEPS = 400
DATE_BUCKETS = ((6, 10), (11, 15), (16, 20), (21, 25), (26, 40))  # input length in characters


def date_splits() -> at.CharTaskSplits:
    spec = at.get_recipe(DATE_RECIPE).data
    return at.date_dataset(spec.n_train, spec.n_val, spec.n_test, seed=spec.data_seed)


def date_model(decoder: str, vocab_size: int) -> torch.nn.Module:
    kind, kwargs = DATE_DECODERS[decoder]
    if kind == "transformer":
        return at.Transformer(at.TransformerConfig(vocab_size, **kwargs))
    return at.Seq2Seq(at.Seq2SeqConfig(vocab_size, **kwargs))


def greedy_batched(model: torch.nn.Module, vocab: at.CharVocab, sources: list[str], batch: int = 250) -> list[str]:
    # at most 32 characters out: a date has 10, and a longer output is wrong however it goes on
    return [h for i in range(0, len(sources), batch) for h in greedy_strings(model, vocab, sources[i:i + batch], 32)]


def run_dates(decoder: str, lr: float, seed: int, steps: int = DATE_STEPS) -> dict:
    recipe = at.get_recipe(DATE_RECIPE)
    splits, spec = date_splits(), recipe.data
    vocab = splits.vocab
    at.set_seed(seed)
    model = date_model(decoder, vocab.vocab_size)
    train = at.BatchIterator(splits.train, vocab, spec.max_tokens, seed=seed, max_len=spec.max_len)
    val = at.BatchIterator(splits.val, vocab, spec.max_tokens, shuffle=False, max_len=spec.max_len)
    config = replace(recipe.train, epochs=1000, max_steps=steps, lr=lr, eval_every=100, seed=seed, device="cpu",
                     progress=False, checkpoint_dir=None)
    t0, c0 = time.perf_counter(), time.process_time()
    history = at.fit(model, train, val, config)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    model.eval()
    result: dict = {"decoder": decoder, "lr": lr, "seed": seed, "parameters": model.num_parameters(),
                    "model": {"kind": DATE_DECODERS[decoder][0], **DATE_DECODERS[decoder][1]},
                    "steps": history.num_steps, "batch_tokens": spec.max_tokens,
                    "eval_steps": history.eval_step, "val_loss": [round(v, 4) for v in history.val_loss]}
    for split in ("val", "test"):
        pairs = getattr(splits, split)
        hyps = greedy_batched(model, vocab, [s for s, _ in pairs])
        right = [h == r for h, (_, r) in zip(hyps, pairs)]
        result[f"{split}_exact"] = sum(right) / len(pairs)
        result[f"{split}_per_char"] = sum(sum(a == b for a, b in zip(h, r)) / len(r)
                                          for h, (_, r) in zip(hyps, pairs)) / len(pairs)
        if split == "test":
            result["test_by_length"] = [
                {"lengths": [lo, hi], "n": len(idx), "exact": sum(right[i] for i in idx) / len(idx)}
                for lo, hi in DATE_BUCKETS
                for idx in [[i for i, (s, _) in enumerate(pairs) if lo <= len(s) <= hi]] if idx]
    result.update(train_wall_s=round(wall, 1), train_cpu_s=round(cpu, 1))
    return result


def chosen_lr(done: list[dict], decoder: str) -> float | None:
    """The rate of ``decoder``'s seed-0 sweep with the best validation exact match (ties: lower final
    validation loss); ``None`` until every rate of the grid has run."""
    sweep = [r for r in done if r.get("decoder") == decoder and r["seed"] == DATE_SEEDS[0] and r["lr"] in DATE_LRS]
    if {r["lr"] for r in sweep} != set(DATE_LRS):
        return None
    return max(sweep, key=lambda r: (r["val_exact"], -r["val_loss"][-1]))["lr"]


def date_runs(done: list[dict], all_seeds: bool) -> list[dict]:
    """Phase 1: every decoder at every rate with seed 0. Phase 2: the other seeds at the chosen rate.
    Phase 3 (``all_seeds``): the other seeds at the other rates too."""
    runs = [dict(decoder=d, lr=lr, seed=DATE_SEEDS[0]) for lr in DATE_LRS for d in DATE_DECODERS]
    for d in DATE_DECODERS:
        lr = chosen_lr(done, d)
        if lr is not None:
            runs += [dict(decoder=d, lr=lr, seed=s) for s in DATE_SEEDS[1:]]
    if all_seeds:
        runs += [dict(decoder=d, lr=lr, seed=s) for s in DATE_SEEDS[1:] for lr in DATE_LRS for d in DATE_DECODERS]
    return runs


# ---------------------------------------------------------------------------------------------


def _environment(threads: int) -> dict:
    return {"device": "cpu", "processor": platform.processor() or platform.machine(), "threads": threads,
            "torch": torch.__version__, "python": platform.python_version()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", choices=("bottleneck", "dates"))
    parser.add_argument("--all-seeds", action="store_true", help="dates: also seeds 1, 2 at the rates not chosen")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="JSON-lines file (default: attn_tutorial/results/EXPERIMENT.jsonl)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = args.out or RESULTS / f"{args.experiment}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    done = [json.loads(line) for line in out.read_text().splitlines() if line.strip()] if out.exists() else []
    env = _environment(args.threads)
    command = f"python scripts/synthetic_experiments.py {args.experiment} --threads {args.threads}" + (" --all-seeds" if args.all_seeds else "")

    def record(result: dict) -> None:
        result.update(env, command=command)
        with out.open("a") as f:
            f.write(json.dumps(result) + "\n")
        done.append(result)
        print(json.dumps({k: v for k, v in result.items() if k not in ("eval_steps", "val_loss", "per_char")}), flush=True)

    def pending(run: dict) -> bool:
        return not any(all(r.get(k) == v for k, v in run.items()) for r in done)

    if args.experiment == "bottleneck":
        for run in bottleneck_runs():
            if pending(run):
                record(run_bottleneck(**run))
    else:
        # the list grows as the sweep finishes (phase 2 needs phase 1's choice): recompute after each run
        while (todo := [run for run in date_runs(done, args.all_seeds) if pending(run)]):
            record(run_dates(**todo[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
