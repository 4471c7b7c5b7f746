"""Benchmark: attn_tutorial's attention paths against PyTorch's, like with like, in one process.

Run from the repository root:

    .venv/bin/python benchmarks/attention.py            # CPU, the shapes below (about a minute)
    .venv/bin/python benchmarks/attention.py --quick    # fewer shapes, shorter timings
    .venv/bin/python benchmarks/attention.py --device cuda --dtype bfloat16

Two comparisons, each on identical inputs with ``torch.utils.benchmark.Timer.blocked_autorange``:

1. **Kernel**: on pre-projected ``q, k, v`` of shape ``(B, H, L, Dh)``: our fast path
   ``attn_tutorial.fused_attention`` and our transparent ``scaled_dot_product_attention`` (which
   materialises the weights) against ``torch.nn.functional.scaled_dot_product_attention``, without a
   mask and with a ``(B, 1, 1, L)`` key padding mask.
2. **Module**: ``attn_tutorial.MultiHeadAttention`` (self-attention, eval mode, no grad), fast path
   (``need_weights=False``) and transparent path (``need_weights=True``) against
   ``nn.MultiheadAttention(batch_first=True)`` with the same weights and ``need_weights=False``.

Ratios are ours / PyTorch's (1.00 = same speed, >1 = slower). Each pair is timed in alternation
several rounds and the fastest block of each is kept, which damps noise from other processes.
The fast path claim checked here: kernel ratio <= 1.15 for every shape.
"""

from __future__ import annotations

import argparse
import platform
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


def best_times(fns: dict[str, Callable[[], object]], rounds: int, min_run_time: float) -> dict[str, float]:
    """Time each callable in alternation, ``rounds`` times with ``blocked_autorange``; return per-call seconds.

    The estimator is the fastest block over all rounds: other processes can only make a block slower,
    never faster, so the minimum is the least noisy estimate on a shared machine (medians are printed
    by ``--verbose`` for comparison).
    """
    best = {name: float("inf") for name in fns}
    medians: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            m = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads()).blocked_autorange(
                min_run_time=min_run_time
            )
            best[name] = min(best[name], min(m.times))
            medians[name].append(m.median)
    if VERBOSE:
        print("   medians (ms):", {k: [round(1e3 * t, 3) for t in v] for k, v in medians.items()})
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--quick", action="store_true", help="two shapes, shorter timings")
    parser.add_argument("--rounds", type=int, default=15, help="alternating timing rounds per shape")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--verbose", action="store_true", help="also print every round's median")
    args = parser.parse_args()
    global VERBOSE
    VERBOSE = args.verbose
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    shapes = QUICK_SHAPES if args.quick else SHAPES
    min_run_time = 0.02 if args.quick else 0.05
    torch.manual_seed(0)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"device: {device} ({name}), dtype: {args.dtype}, torch {torch.__version__}, threads: {torch.get_num_threads()}")
    print(f"times: fastest block of {args.rounds} alternating blocked_autorange rounds, in ms; ratio = ours / PyTorch; fast-path limit {LIMIT:.2f}x\n")

    header = (
        f"{'B':>3} {'H':>3} {'L':>5} {'Dh':>3} {'mask':>5} | {'F.sdpa':>8} {'fused':>8} {'ratio':>6} "
        f"{'transp.':>8} {'ratio':>6} | {'nn.MHA':>8} {'MHA fast':>8} {'ratio':>6} {'MHA w':>8} {'ratio':>6}"
    )
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
                kernel = best_times(
                    {
                        "torch": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
                        "fused": lambda: fused_attention(q, k, v, mask),
                        "transparent": lambda: scaled_dot_product_attention(q, k, v, mask),
                    },
                    args.rounds,
                    min_run_time,
                )
                module = best_times(
                    {
                        "torch": lambda: ref(x, x, x, key_padding_mask=ignore, need_weights=False),
                        "fast": lambda: ours(x, x, x, mask, need_weights=False),
                        "weights": lambda: ours(x, x, x, mask, need_weights=True),
                    },
                    args.rounds,
                    min_run_time,
                )
                r_fused = kernel["fused"] / kernel["torch"]
                worst = max(worst, r_fused)
                ms = {key: 1e3 * t for key, t in {**{f"k_{a}": b for a, b in kernel.items()}, **{f"m_{a}": b for a, b in module.items()}}.items()}
                print(
                    f"{B:>3} {H:>3} {L:>5} {Dh:>3} {'pad' if masked else 'none':>5} | "
                    f"{ms['k_torch']:>8.3f} {ms['k_fused']:>8.3f} {r_fused:>6.2f} "
                    f"{ms['k_transparent']:>8.3f} {kernel['transparent'] / kernel['torch']:>6.2f} | "
                    f"{ms['m_torch']:>8.3f} {ms['m_fast']:>8.3f} {module['fast'] / module['torch']:>6.2f} "
                    f"{ms['m_weights']:>8.3f} {module['weights'] / module['torch']:>6.2f}"
                )
    verdict = "OK" if worst <= LIMIT else "SLOWER THAN CLAIMED"
    print(f"\nworst fast-path kernel ratio: {worst:.3f} (limit {LIMIT:.2f}): {verdict}")
    return 0 if worst <= LIMIT else 1


if __name__ == "__main__":
    raise SystemExit(main())
