"""Benchmark: how fast do the shipped models translate, and what does the Transformer's key/value cache buy?

Run from the repository root:

    .venv/bin/python benchmarks/decoding.py                          # all 1,000 sentences of test_2016_flickr
    .venv/bin/python benchmarks/decoding.py --threads 1 --limit 200  # a quicker run on a busy machine

For the shipped Transformer it decodes the source sentences of ``--split`` (the first ``--limit`` of
them) three ways, in batches of ``--batch-size`` sentences sorted by length (as
:func:`attn_tutorial.translate_sentences` does):

* greedy with the key/value cache (:func:`attn_tutorial.decoding.greedy_decode` on the model: each step
  feeds one token and attends to the cached keys and values of the earlier ones);
* greedy *without* the cache: a wrapper whose ``decode_step`` calls
  :meth:`attn_tutorial.transformer.Transformer.decode_step_uncached` on the whole prefix, so step ``t``
  recomputes the decoder for all ``t`` tokens;
* beam search with ``--beam`` hypotheses (each model's GNMT length penalty from its card, as
  ``attn-tutorial translate`` uses it), with the cache.

and each shipped GRU model (``gru-none``, ``bahdanau``, ``luong``) greedily and with the beam. It
prints sentences per second (wall clock) and the CPU time of this process next to it (on a machine
shared with other jobs the wall time grows with the load, the CPU time hardly does), the mean output
length, the speed-up of the cache, the device, the thread count and the torch version; it asserts
that greedy decoding with and without the cache returns identical tokens (exit status 1 otherwise).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from attn_tutorial import beam_search, card_length_penalty, collate, greedy_decode, list_pretrained, load_multi30k, load_pretrained  # noqa: E402
from attn_tutorial import DEFAULT_MAX_LEN  # noqa: E402
from attn_tutorial.decoding import DecodeResult  # noqa: E402
from attn_tutorial.transformer import Transformer  # noqa: E402

GRU_MODELS = ("gru-none", "bahdanau", "luong")


@dataclass(frozen=True)
class PrefixState:
    """The state of uncached decoding: the source and every token fed so far (BOS first).

    Shape: ``src``/``src_mask`` ``(B, S)`` (mask ``True`` = real token), ``prefix`` ``(B, t)``.
    """

    src: Tensor
    src_mask: Tensor
    prefix: Tensor

    def reorder(self, indices: Tensor) -> PrefixState:
        """Row ``i`` of the result is row ``indices[i]`` of ``self`` (beam search selects and repeats rows)."""
        return PrefixState(self.src.index_select(0, indices), self.src_mask.index_select(0, indices), self.prefix.index_select(0, indices))


class UncachedTransformer:
    """A :class:`Transformer` decoded without its key/value cache: every step reruns the decoder on the whole prefix.

    Implements the ``encode``/``decode_step`` protocol of :mod:`attn_tutorial.decoding`; returns no attention.
    """

    def __init__(self, model: Transformer) -> None:
        self.model = model.eval()

    def encode(self, src: Tensor, src_mask: Tensor) -> PrefixState:
        return PrefixState(src, src_mask, src.new_zeros(src.shape[0], 0))

    def decode_step(self, state: PrefixState, prev_tokens: Tensor) -> tuple[Tensor, PrefixState, None]:
        prefix = torch.cat([state.prefix, prev_tokens[:, None]], dim=1)  # (B, t + 1)
        log_probs = self.model.decode_step_uncached(state.src, state.src_mask, prefix)  # (B, V)
        return log_probs, replace(state, prefix=prefix), None


def make_batches(tokenizer: object, sentences: list[str], batch_size: int) -> list[tuple[Tensor, Tensor]]:
    """``(src, src_mask)`` batches of the sentences sorted by length, as ``translate_sentences`` builds them."""
    ids = [list(tokenizer.encode(s.strip()))[: DEFAULT_MAX_LEN - 1] for s in sentences]  # type: ignore[attr-defined]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    batches = []
    for start in range(0, len(order), batch_size):
        batch = collate([(ids[i], []) for i in order[start : start + batch_size]], pad_to_multiple_of=1)
        batches.append((batch.src, batch.src_mask))
    return batches


def decode_all(decoder: object, batches: list[tuple[Tensor, Tensor]], beam: int, alpha: float = 0.0) -> tuple[float, float, list[list[int]]]:
    """Decode every batch; return (wall seconds, CPU seconds of this process, output tokens in batch order)."""
    tokens: list[list[int]] = []
    wall, cpu = time.perf_counter(), time.process_time()
    for src, src_mask in batches:
        result: DecodeResult
        if beam == 1:
            result = greedy_decode(decoder, src, src_mask)  # type: ignore[arg-type]
        else:
            result = beam_search(decoder, src, src_mask, beam, length_penalty_alpha=alpha)  # type: ignore[arg-type]
        tokens += result.tokens
    return time.perf_counter() - wall, time.process_time() - cpu, tokens


def report(label: str, n: int, wall: float, cpu: float, tokens: list[list[int]]) -> None:
    mean_len = sum(len(t) for t in tokens) / max(len(tokens), 1)
    print(f"{label:34s} {n / wall:9.1f} sent/s  wall {wall:7.2f} s  cpu {cpu:7.2f} s  mean output {mean_len:5.1f} tokens", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", default="test_2016_flickr", help="Multi30K split whose German sources are decoded")
    parser.add_argument("--limit", type=int, default=None, help="decode only the first N sentences")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: PyTorch's choice)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--models", default=None, help="comma-separated shipped models (default: all shipped)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    shipped = list_pretrained()
    names = args.models.split(",") if args.models else [m for m in ("transformer", *GRU_MODELS) if m in shipped]
    pairs = load_multi30k(args.split)[: args.limit]
    sentences = [s for s, _ in pairs]
    n = len(sentences)
    print(f"device cpu ({platform.processor() or platform.machine()}), {torch.get_num_threads()} thread(s), "
          f"torch {torch.__version__}, python {platform.python_version()}")
    print(f"{n} sentences of {args.split}, batches of {args.batch_size}, beam {args.beam} (each model's length penalty)")
    ok = True
    for name in names:
        model, tokenizer, card = load_pretrained(name)
        print(f"\n{name}{' (interim checkpoint)' if card.get('interim') else ''}: {card['num_parameters']:,} parameters")
        batches = make_batches(tokenizer, sentences, args.batch_size)
        wall, cpu, cached = decode_all(model, batches, 1)
        report("greedy" + (", key/value cache" if isinstance(model, Transformer) else ""), n, wall, cpu, cached)
        if isinstance(model, Transformer):
            wall_u, cpu_u, uncached = decode_all(UncachedTransformer(model), batches, 1)
            report("greedy, no cache", n, wall_u, cpu_u, uncached)
            same = sum(a == b for a, b in zip(cached, uncached))
            print(f"cache speed-up: {wall_u / wall:.2f}x wall, {cpu_u / cpu:.2f}x cpu; identical outputs: {same}/{n}")
            ok &= same == n
        alpha = card_length_penalty(card)
        wall_b, cpu_b, beamed = decode_all(model, batches, args.beam, alpha)
        report(f"beam {args.beam}, alpha {alpha}" + (", key/value cache" if isinstance(model, Transformer) else ""), n, wall_b, cpu_b, beamed)
    if not ok:
        print("FAILED: greedy decoding with and without the key/value cache gave different outputs")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
