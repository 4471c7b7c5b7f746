"""Benchmark: attn_tutorial's attention paths against PyTorch's, like with like, in one process.

Run from the repository root:

    .venv/bin/python benchmarks/attention.py            # CPU, the shapes below (a few minutes)
    .venv/bin/python benchmarks/attention.py --quick    # two shapes, shorter timings
    .venv/bin/python benchmarks/attention.py --threads 1 --budget 5   # steadier on a busy machine
    .venv/bin/python benchmarks/attention.py --device cuda --dtype bfloat16

Two comparisons, each on identical inputs, timed with ``torch.utils.benchmark.Timer``:

1. **Kernel**: on pre-projected ``q, k, v`` of shape ``(B, H, L, Dh)``: our fast path
   ``attn_tutorial.fused_attention`` and our transparent ``scaled_dot_product_attention`` (which
   materialises the weights) against ``torch.nn.functional.scaled_dot_product_attention``, without a
   mask and with a ``(B, 1, 1, L)`` key padding mask.
2. **Module**: ``attn_tutorial.MultiHeadAttention`` (self-attention, eval mode, no grad), fast path
   (``need_weights=False``) and transparent path (``need_weights=True``) against
   ``nn.MultiheadAttention(batch_first=True)`` with the same weights and ``need_weights=False``.

Ratios are ours / PyTorch's (1.00 = same speed, >1 = slower). Each comparison is one pair timed
one call at a time in alternation (see ``best_times``); ``ratio`` is the median of the back-to-back
ratios and ``r(min)`` the ratio of the fastest calls. On a shared or busy machine both are far more
stable than medians of separate blocks; when they disagree, the machine was too busy to tell.
The fast path claim checked here: kernel ratio <= 1.15 for every shape (exit status 1 otherwise).
The transparent path is expected to be several times slower: it writes the (L, L) weights to memory.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.benchmark import Timer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from attn_tutorial import MultiHeadAttention, fused_attention, scaled_dot_product_attention  # noqa: E402

SHAPES = [  # (batch, heads, length, head dim)
    (32, 4, 32, 32),
    (8, 8, 128, 64),
    (4, 8, 256, 64),
    (1, 8, 1024, 64),
]
QUICK_SHAPES = [(8, 8, 128, 64), (2, 8, 512, 64)]
LIMIT = 1.15
VERBOSE = False


def best_times(fns: dict[str, Callable[[], object]], budget_s: float, seed: int = 0) -> dict[str, float]:
    """Time a pair ``{"torch": ..., "ours": ...}`` one call at a time, in alternation.

    Each callable is warmed up with ``Timer.blocked_autorange``; then the two take turns, one
    ``Timer.timeit(1)`` each in a shuffled order (so that neither always runs right after the other),
    for as many rounds as fit in ``budget_s`` (at least 40, at most 400). Returns each one's fastest
    call (other processes can only make a call slower, never faster) and ``"ratio"``: the median over
    rounds of ``ours / torch`` from calls made back to back, which cancels slow phases of the machine
    that hit both.
    """
    timers = {name: Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads()) for name, fn in fns.items()}
    per_call = {name: t.blocked_autorange(min_run_time=0.05).median for name, t in timers.items()}  # warm-up
    rounds = int(min(400, max(40, budget_s / sum(per_call.values()))))
    order, rng = list(timers), random.Random(seed)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        rng.shuffle(order)
        for name in order:
            samples[name].append(timers[name].timeit(1).times[0])
    ratios = sorted(o / t for o, t in zip(samples["ours"], samples["torch"]))
    if VERBOSE:
        print(f"   {rounds} rounds; medians (ms):", {k: round(1e3 * sorted(v)[len(v) // 2], 3) for k, v in samples.items()})
    return {"torch": min(samples["torch"]), "ours": min(samples["ours"]), "ratio": ratios[len(ratios) // 2]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--quick", action="store_true", help="two shapes, shorter timings")
    parser.add_argument("--budget", type=float, default=None, help="seconds of alternating timing per row and comparison")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--verbose", action="store_true", help="also print each contender's median call time")
    args = parser.parse_args()
    global VERBOSE
    VERBOSE = args.verbose
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    shapes = QUICK_SHAPES if args.quick else SHAPES
    budget = args.budget if args.budget is not None else (0.5 if args.quick else 2.0)
    torch.manual_seed(0)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    load = "n/a" if not hasattr(os, "getloadavg") else " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"device: {device} ({name}), dtype: {args.dtype}, torch {torch.__version__}, threads: {torch.get_num_threads()}")
    print(f"CPU cores: {os.cpu_count()}, load average before the run: {load}")
    print(
        "times in ms: fastest of many alternating single calls (torch.utils.benchmark.Timer); ratio: median "
        f"of ours / PyTorch over back-to-back call pairs; r(min): ratio of the fastest calls; limit {LIMIT:.2f}x"
    )
    print("kernels run on pre-projected (B, H, L, Dh) tensors; modules on (B, L, H * Dh) self-attention input\n")

    header = f"{'(B, H, L, Dh)':<18} {'mask':<5} {'comparison (ours vs PyTorch)':<52} {'PyTorch':>9} {'ours':>9} {'ratio':>6} {'r(min)':>6}"
    print(header)
    print("-" * len(header))
    worst = 0.0
    with torch.inference_mode():
        for B, H, L, Dh in shapes:
            E = H * Dh
            q, k, v = (torch.randn(B, H, L, Dh, device=device, dtype=dtype) for _ in range(3))
            x = torch.randn(B, L, E, device=device, dtype=dtype)
            ref = nn.MultiheadAttention(E, H, batch_first=True).to(device, dtype).eval()
            ours = MultiHeadAttention.from_torch(ref).eval()
            lengths = torch.randint(L // 2, L + 1, (B,), device=device)
            keep = torch.arange(L, device=device)[None, :] < lengths[:, None]  # (B, L): True = real token
            for masked in (False, True):
                mask = keep[:, None, None, :] if masked else None  # (B, 1, 1, L), True = may attend
                ignore = ~keep if masked else None  # nn.MultiheadAttention's polarity: True = ignore
                sdpa = lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # noqa: E731
                fast = best_times({"torch": sdpa, "ours": lambda: fused_attention(q, k, v, mask)}, budget)
                transparent = best_times(
                    {"torch": sdpa, "ours": lambda: scaled_dot_product_attention(q, k, v, mask)}, budget
                )
                torch_mha = lambda: ref(x, x, x, key_padding_mask=ignore, need_weights=False)  # noqa: E731
                mha_fast = best_times({"torch": torch_mha, "ours": lambda: ours(x, x, x, mask, need_weights=False)}, budget)
                mha_weights = best_times(
                    {"torch": torch_mha, "ours": lambda: ours(x, x, x, mask, need_weights=True)}, budget
                )
                r_fused = fast["ratio"]
                worst = max(worst, r_fused)
                rows = [
                    ("fused_attention vs F.scaled_dot_product_attention", fast),
                    ("scaled_dot_product_attention vs F.sdpa (transparent)", transparent),
                    ("MHA need_weights=False vs nn.MHA need_weights=False", mha_fast),
                    ("MHA need_weights=True vs nn.MHA need_weights=False", mha_weights),
                ]
                for i, (label, t) in enumerate(rows):
                    shape = f"({B}, {H}, {L}, {Dh})" if i == 0 else ""
                    kind = ("pad" if masked else "none") if i == 0 else ""
                    print(
                        f"{shape:<18} {kind:<5} {label:<52} {1e3 * t['torch']:>9.3f} {1e3 * t['ours']:>9.3f} "
                        f"{t['ratio']:>6.2f} {t['ours'] / t['torch']:>6.2f}",
                        flush=True,
                    )
    verdict = "OK" if worst <= LIMIT else "SLOWER THAN CLAIMED"
    print(f"\nworst fast-path kernel ratio: {worst:.3f} (limit {LIMIT:.2f}): {verdict}")
    return 0 if worst <= LIMIT else 1


if __name__ == "__main__":
    raise SystemExit(main())
