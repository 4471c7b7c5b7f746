"""The synthetic experiments behind Part III's claims, with seeds, written to ``attn_tutorial/results/``.

Usage, from the repository root (each run appends to a JSON-lines file and is skipped when found
there, so an interrupted experiment resumes where it stopped):

    .venv/bin/python scripts/synthetic_experiments.py bottleneck --threads 1   # chapter 8

``bottleneck``: digit-string reversal (lengths 1 to 12) without attention for hidden sizes 32, 64 and
128, and with Bahdanau attention for 32 and 64, each with seeds 0, 1, 2. Every model trains *to a
plateau*: a constant learning rate after warm-up, validation loss every 100 steps, stop after 3
evaluations without a new best (the best weights are restored), or at 1,500 steps. Then greedy exact
match and per-character accuracy on 200 fresh strings at each even length 2..12, and the length at
which exact match falls to 50%.

The output file (``attn_tutorial/results/bottleneck.jsonl``) holds one JSON object per run, with the
device, thread count, torch version, wall and CPU time. Chapter 8 reads it with
``at.load_experiment("bottleneck")`` and says which command made it; nothing here runs when the book
is built.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
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
REV_TEST_LENGTHS = list(range(2, REV_TRAIN_MAX + 1, 2))
REV_HIDDEN = {"none": (32, 64, 128), "bahdanau": (32, 64)}
REV_SEEDS = (0, 1, 2)


def reversal_splits() -> at.CharTaskSplits:
    """6,000 training and 300 validation strings of lengths 1..12 (digits), no source shared."""
    return at.reversal_dataset(6000, 300, 0, min_len=1, max_len=REV_TRAIN_MAX, seed=0)


def fresh_reversals(splits: at.CharTaskSplits, length: int, n: int = 200) -> list[tuple[str, str]]:
    """``n`` distinct digit strings of ``length`` seen in neither training nor validation, reversed."""
    rng, pairs = random.Random(length), []
    seen = {s for s, _ in splits.train} | {s for s, _ in splits.val}
    while len(pairs) < n:
        s = "".join(rng.choices("0123456789", k=length))
        if s not in seen:
            seen.add(s)
            pairs.append((s, s[::-1]))
    return pairs


def greedy_strings(model: torch.nn.Module, vocab: at.CharVocab, sources: list[str]) -> list[str]:
    batch = at.collate([(vocab.encode(s), []) for s in sources], pad_to_multiple_of=1)
    return [vocab.decode(t) for t in at.greedy_decode(model, batch.src, batch.src_mask).tokens]


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
    config = at.TrainConfig(epochs=1000, max_steps=1500, lr=5e-3, warmup_steps=50, schedule="constant",
                            eval_every=100, early_stopping_patience=3, seed=seed, device="cpu", progress=False)
    t0, c0 = time.perf_counter(), time.process_time()
    history = at.fit(model, train, val, config)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    model.eval()
    scores = {L: exact_and_chars(model, vocab, fresh_reversals(splits, L)) for L in REV_TEST_LENGTHS}
    exact = [scores[L][0] for L in REV_TEST_LENGTHS]
    return {
        "attention": attention, "hidden": hidden, "seed": seed, "parameters": model.num_parameters(),
        "steps": history.num_steps, "best_step": history.best_step, "best_val_loss": history.best_val_loss,
        "stopped_early": history.stopped_early, "lengths": REV_TEST_LENGTHS, "exact": exact,
        "per_char": [scores[L][1] for L in REV_TEST_LENGTHS], "length_at_50": length_at_half(REV_TEST_LENGTHS, exact),
        "train_wall_s": round(wall, 1), "train_cpu_s": round(cpu, 1),
    }


def bottleneck_runs() -> list[dict]:
    # seed 0 of every configuration first, so that a cut-off experiment still covers every size
    return [dict(attention=a, hidden=h, seed=s) for s in REV_SEEDS for a, sizes in REV_HIDDEN.items() for h in sizes]


# ---------------------------------------------------------------------------------------------


def _environment(threads: int) -> dict:
    return {"device": "cpu", "processor": platform.processor() or platform.machine(), "threads": threads,
            "torch": torch.__version__, "python": platform.python_version()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", choices=("bottleneck",))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="JSON-lines file (default: attn_tutorial/results/EXPERIMENT.jsonl)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = args.out or RESULTS / f"{args.experiment}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    done = [json.loads(line) for line in out.read_text().splitlines() if line.strip()] if out.exists() else []
    env = _environment(args.threads)
    command = f"python scripts/synthetic_experiments.py {args.experiment} --threads {args.threads}"

    def record(result: dict) -> None:
        result.update(env, command=command)
        with out.open("a") as f:
            f.write(json.dumps(result) + "\n")
        done.append(result)
        print(json.dumps({k: v for k, v in result.items() if k not in ("val_curve", "per_char")}), flush=True)

    for run in bottleneck_runs():
        if not any(all(r[k] == v for k, v in run.items()) for r in done):
            record(run_bottleneck(**run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
