"""Benchmark: what efficient attention buys, in time and memory, on this machine.

Run from the repository root (``make bench-efficient`` does the first line):

    .venv/bin/python benchmarks/efficient.py --out benchmarks/results/efficient.json
    .venv/bin/python benchmarks/efficient.py --memory-only          # no timings (a busy machine)
    .venv/bin/python benchmarks/efficient.py --lengths 256 1024 --sentences 50   # a quick look

Four tables, printed and saved as JSON with the device, torch version and thread count:

1. **Attention against sequence length** (``B=1, H=4, d=64``, float32, self-attention, no mask):
   the naive path that materialises the ``(L, L)`` weights (:func:`attn_tutorial.scaled_dot_product_attention`),
   :func:`attn_tutorial.tiled_attention` (block 128) and PyTorch's ``F.scaled_dot_product_attention``.
   *Peak extra memory* is measured in a fresh subprocess per (method, length): the process warms the
   method up on a short input (``L=256``), creates ``q, k, v``, then reads the resident-set high-water
   mark (``resource.getrusage(...).ru_maxrss``) before and after one call; the difference is the memory
   the call needed on top of its inputs and output buffers already touched (the output itself, ``L x d``
   floats, is included: a few MiB at most). (``tracemalloc`` cannot see PyTorch's allocations, and PyTorch
   keeps no allocator statistics on the CPU.) A fresh process per measurement keeps one method's freed
   memory from hiding another's peak. Lengths go on doubling after 8,192 while the naive path's
   expected ``(L, L)`` matrices fit in ``--max-gib``; the other two go two steps further.
   Time: median of ``--repeats`` calls. Ratios are relative to SDPA.
2. **Decoding with the shipped Transformer**: greedy decoding of ``--sentences`` test sentences with the
   key/value cache and without it (``Transformer.use_kv_cache = False``: the decoder reruns over the
   prefix), through the CLI (``attn-tutorial translate`` with and without ``--no-kv-cache``, in
   subprocesses; outputs asserted identical) and in-process.
3. **A long synthetic generation**: one source sentence, the decoder forced on for ``--gen-tokens``
   steps (EOS ignored), cached against uncached: milliseconds per token at several lengths.
4. **K/V cache bytes per token** for multi-head, grouped-query and multi-query attention, for the shipped
   Transformer's shape and for a 7B-class decoder shape (32 layers, 32 heads of 128; formula, fp16).

Timings depend on the load: on a machine shared with other jobs, only ratios measured back to back mean
anything, and even those drift. Memory does not depend on the load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from attn_tutorial import (  # noqa: E402
    kv_cache_bytes_per_token,
    load_multi30k,
    load_pretrained,
    scaled_dot_product_attention,
    tiled_attention,
    translate_sentences,
)

METHODS = ("naive", "tiled", "sdpa")
SHAPE = dict(B=1, H=4, D=64)


def _run_method(method: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    if method == "naive":
        return scaled_dot_product_attention(q, k, v)[0]
    if method == "tiled":
        return tiled_attention(q, k, v, block_size=128)[0]
    return torch.nn.functional.scaled_dot_product_attention(q, k, v)


def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def measure_one(method: str, L: int, repeats: int, timing: bool) -> dict:
    """In this (fresh) process: peak extra memory of one call, then the median time of ``repeats`` calls."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        small = [torch.randn(SHAPE["B"], SHAPE["H"], 256, SHAPE["D"], generator=g) for _ in range(3)]
        _run_method(method, *small)  # warm up on a short input: kernels and thread pools, not the peak
        q, k, v = (torch.randn(SHAPE["B"], SHAPE["H"], L, SHAPE["D"], generator=g) for _ in range(3))
        before = _rss_bytes()  # the high-water mark so far: inputs and warm-up included
        out = _run_method(method, q, k, v)
        peak_extra = max(0, _rss_bytes() - before)
        del out
        times = []
        for _ in range(repeats if timing else 0):
            t0 = time.perf_counter()
            _run_method(method, q, k, v)
            times.append(time.perf_counter() - t0)
    return {"method": method, "L": L, "peak_extra_bytes": peak_extra, "seconds": statistics.median(times) if times else None}


def _subprocess_measure(method: str, L: int, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--_measure", method, str(L), "--repeats", str(args.repeats), "--threads", str(args.threads)]
    if args.memory_only:
        cmd.append("--memory-only")
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    if done.returncode != 0:
        return {"method": method, "L": L, "error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def attention_table(args: argparse.Namespace) -> list[dict]:
    rows = []
    lengths = list(args.lengths)
    L = lengths[-1]
    bytes_naive = lambda n: 2 * SHAPE["B"] * SHAPE["H"] * n * n * 4  # noqa: E731 (scores + weights)
    while bytes_naive(2 * L) <= args.max_gib * 2**30:
        L *= 2
        lengths.append(L)
    extra = [lengths[-1] * 2, lengths[-1] * 4] if args.extend else []
    for n in lengths + extra:
        for method in METHODS:
            if method == "naive" and n in extra:
                continue
            rows.append(_subprocess_measure(method, n, args))
            r = rows[-1]
            if "error" in r:  # e.g. out of memory: say so, never print a zero that was not measured
                print(f"  measured {method:5s} L={n:6d}: FAILED ({r['error']})", flush=True)
                continue
            mib = r["peak_extra_bytes"] / 2**20
            print(f"  measured {method:5s} L={n:6d}: peak extra {mib:9.1f} MiB" + (f", {r['seconds'] * 1e3:9.1f} ms" if r.get("seconds") else ""), flush=True)
    return rows


def print_attention_table(rows: list[dict]) -> None:
    by = {(r["method"], r["L"]): r for r in rows if "error" not in r}
    print("\nAttention, B=1 H=4 d=64 float32: peak extra memory (MiB) and time (ms); ratios to SDPA")
    print(f"{'L':>7} | {'naive MiB':>10} {'tiled MiB':>10} {'sdpa MiB':>9} {'tiled/naive':>11} | {'naive ms':>9} {'tiled ms':>9} {'sdpa ms':>9} {'naive/sdpa':>10} {'tiled/sdpa':>10}")
    for L in sorted({r["L"] for r in rows}):
        m = {k: by.get((k, L), {}) for k in METHODS}
        mem = {k: m[k].get("peak_extra_bytes") for k in METHODS}
        sec = {k: m[k].get("seconds") for k in METHODS}
        f_mem = lambda x: f"{x / 2**20:10.1f}" if x is not None else f"{'-':>10}"  # noqa: E731
        f_ms = lambda x: f"{x * 1e3:9.1f}" if x else f"{'-':>9}"  # noqa: E731
        ratio_mem = f"{mem['tiled'] / mem['naive']:11.3f}" if mem["naive"] and mem["tiled"] is not None else f"{'-':>11}"
        r = lambda a: f"{sec[a] / sec['sdpa']:10.2f}" if sec[a] and sec["sdpa"] else f"{'-':>10}"  # noqa: E731
        print(f"{L:7d} | {f_mem(mem['naive'])} {f_mem(mem['tiled'])} {f_mem(mem['sdpa'])[1:]} {ratio_mem} | "
              f"{f_ms(sec['naive'])} {f_ms(sec['tiled'])} {f_ms(sec['sdpa'])} {r('naive')} {r('tiled')}")


def decoding_table(args: argparse.Namespace) -> dict:
    model, tokenizer, _ = load_pretrained("transformer")
    sources = [s for s, _ in load_multi30k("test_2016_flickr")[: args.sentences]]
    result: dict = {"sentences": len(sources)}
    outs = {}
    for cached in (True, False):
        model.use_kv_cache = cached
        t0 = time.perf_counter()
        outs[cached] = translate_sentences(model, tokenizer, sources, beam_size=1, batch_size=64)
        result[f"in_process_seconds_{'cached' if cached else 'uncached'}"] = time.perf_counter() - t0
    model.use_kv_cache = True
    assert outs[True] == outs[False], "greedy outputs differ with and without the cache"
    text = "".join(s + "\n" for s in sources)
    cli = {}
    for flag in ([], ["--no-kv-cache"]):
        cmd = [sys.executable, "-m", "attn_tutorial", "translate", "--model", "transformer", "--threads", str(args.threads), *flag]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, input=text, capture_output=True, text=True, check=True, cwd=ROOT)
        cli[bool(flag)] = (time.perf_counter() - t0, done.stdout)
    assert cli[False][1] == cli[True][1], "translate --no-kv-cache changed the output"
    result["cli_seconds_cached"], result["cli_seconds_uncached"] = cli[False][0], cli[True][0]
    result["cli_outputs_identical"] = True
    # A long generation: one source, the decoder kept going past EOS.
    src = torch.tensor([tokenizer.encode(sources[0])])
    src_mask = torch.ones_like(src, dtype=torch.bool)
    marks = [m for m in (50, 100, 150, 200, args.gen_tokens) if m <= args.gen_tokens]
    for cached in (True, False):
        model.use_kv_cache = cached
        with torch.no_grad():
            state = model.encode(src, src_mask)
            prev, stamps, t0 = torch.tensor([1]), {}, time.perf_counter()
            for t in range(1, args.gen_tokens + 1):
                log_probs, state, _ = model.decode_step(state, prev)
                prev = log_probs.argmax(-1)
                if t in marks:
                    stamps[t] = time.perf_counter() - t0
        result[f"long_{'cached' if cached else 'uncached'}_cumulative_seconds"] = stamps
    model.use_kv_cache = True
    return result


def print_decoding_table(d: dict) -> None:
    print(f"\nShipped Transformer, greedy, {d['sentences']} test_2016_flickr sentences (seconds; speed-up = uncached / cached)")
    for where in ("in_process", "cli"):
        c, u = d[f"{where}_seconds_cached"], d[f"{where}_seconds_uncached"]
        print(f"  {where:10s}: cached {c:7.2f}  uncached {u:7.2f}  speed-up {u / c:5.2f}x")
    print("  outputs identical with and without --no-kv-cache: yes (asserted)")
    print("\nLong generation (one sentence, EOS ignored): cumulative seconds after t tokens")
    c, u = d["long_cached_cumulative_seconds"], d["long_uncached_cumulative_seconds"]
    for t in c:
        print(f"  t={int(t):4d}: cached {c[t]:7.3f}  uncached {u[t]:7.3f}  ratio {u[t] / c[t]:5.2f}x")


def cache_table() -> list[dict]:
    rows = []
    for name, layers, heads, dh, dtype in (("shipped transformer (decoder self-attention)", 3, 4, 64, torch.float32),
                                           ("7B-class decoder (formula)", 32, 32, 128, torch.float16)):
        for kv in sorted({heads, max(1, heads // 4), 1}, reverse=True):
            rows.append({"model": name, "num_heads": heads, "num_kv_heads": kv, "dtype": str(dtype),
                         "bytes_per_token": kv_cache_bytes_per_token(layers, kv, dh, dtype)})
    print("\nK/V cache per token and sequence: 2 x layers x kv heads x head dim x bytes")
    for r in rows:
        kind = "MHA" if r["num_kv_heads"] == r["num_heads"] else ("MQA" if r["num_kv_heads"] == 1 else "GQA")
        print(f"  {r['model']:45s} {kind} kv_heads={r['num_kv_heads']:3d}: {r['bytes_per_token'] / 1024:8.1f} KiB")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096, 8192])
    p.add_argument("--max-gib", type=float, default=4.0, help="go past the last length while naive's (L, L) matrices fit in this")
    p.add_argument("--no-extend", dest="extend", action="store_false", help="do not go two lengths further for tiled and SDPA")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--sentences", type=int, default=200)
    p.add_argument("--gen-tokens", type=int, default=250, help="long generation length (the shipped model's max_len is 256)")
    p.add_argument("--memory-only", action="store_true", help="measure memory and cache sizes only; no timings")
    p.add_argument("--out", type=Path, default=None, help="write the JSON here")
    p.add_argument("--_measure", nargs=2, metavar=("METHOD", "L"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args._measure:
        print(json.dumps(measure_one(args._measure[0], int(args._measure[1]), args.repeats, not args.memory_only)))
        return 0
    env = {"device": f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} logical cores)", "torch": torch.__version__,
           "threads": args.threads, "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    print("Environment:", json.dumps(env))
    rows = attention_table(args)
    print_attention_table(rows)
    report: dict = {"environment": env, "attention": rows, "kv_cache": cache_table()}
    if not args.memory_only:
        report["decoding"] = decoding_table(args)
        print_decoding_table(report["decoding"])
    at_8192 = {r["method"]: r.get("peak_extra_bytes") for r in rows if r["L"] == 8192}
    if at_8192.get("naive") and at_8192.get("tiled") is not None:
        ratio = at_8192["tiled"] / at_8192["naive"]
        report["tiled_over_naive_memory_at_8192"] = ratio
        print(f"\nTiled / naive peak extra memory at L=8192: {ratio:.4f} (goal: <= 0.1)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
