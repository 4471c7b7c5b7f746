"""Tests for ``benchmarks/decoding.py`` (chapter "Decoding and evaluation"): the uncached Transformer wrapper
must decode exactly what the key/value cache decodes, so that the benchmark compares equal work."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from attn_tutorial import beam_search, greedy_decode
from attn_tutorial.transformer import Transformer, TransformerConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("decoding_benchmark", ROOT / "benchmarks" / "decoding.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def _tiny(seed: int) -> tuple[Transformer, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    config = TransformerConfig(src_vocab_size=23, d_model=16, num_heads=2, num_encoder_layers=1, num_decoder_layers=2, d_ff=32, dropout=0.0)
    model = Transformer(config).eval()
    lengths = torch.tensor([5, 3, 1, 4])
    src = torch.randint(4, 23, (4, 5))
    src_mask = torch.arange(5)[None, :] < lengths[:, None]  # True = real token
    return model, src.masked_fill(~src_mask, 0), src_mask


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_uncached_greedy_equals_cached(bench: ModuleType, seed: int) -> None:
    model, src, src_mask = _tiny(seed)
    cached = greedy_decode(model, src, src_mask, max_len_b=6)
    uncached = greedy_decode(bench.UncachedTransformer(model), src, src_mask, max_len_b=6)
    assert cached.tokens == uncached.tokens and cached.finished == uncached.finished
    assert uncached.attention is None  # the wrapper returns no attention
    # float32 model: the two computations differ only by rounding
    torch.testing.assert_close(torch.tensor(uncached.log_probs), torch.tensor(cached.log_probs), rtol=0.0, atol=1e-4)


@pytest.mark.parametrize("seed", [0, 3])
def test_uncached_beam_equals_cached(bench: ModuleType, seed: int) -> None:
    model, src, src_mask = _tiny(seed)
    cached = beam_search(model, src, src_mask, beam_size=3, length_penalty_alpha=0.6, max_len_b=6)
    uncached = beam_search(bench.UncachedTransformer(model), src, src_mask, beam_size=3, length_penalty_alpha=0.6, max_len_b=6)
    assert cached.tokens == uncached.tokens
    torch.testing.assert_close(torch.tensor(uncached.scores), torch.tensor(cached.scores), rtol=0.0, atol=1e-4)


def test_prefix_state_reorder_selects_rows(bench: ModuleType) -> None:
    src = torch.arange(12).view(3, 4)
    state = bench.PrefixState(src, src > 2, src[:, :2] + 100)
    picked = state.reorder(torch.tensor([2, 2, 0]))
    assert torch.equal(picked.src, src[[2, 2, 0]])
    assert torch.equal(picked.src_mask, (src > 2)[[2, 2, 0]])
    assert torch.equal(picked.prefix, (src[:, :2] + 100)[[2, 2, 0]])


def test_make_batches_sorts_by_length_and_keeps_every_sentence(bench: ModuleType) -> None:
    class WordTokenizer:
        def encode(self, text: str) -> list[int]:
            return [4 + len(w) for w in text.split()]

    sentences = ["a bb ccc dddd", "e", "ff gg", "h i j k l m", "n o o"]
    batches = bench.make_batches(WordTokenizer(), sentences, batch_size=2)
    assert [src.shape[0] for src, _ in batches] == [2, 2, 1]
    lengths = [int(n) for _, mask in batches for n in mask.sum(-1)]
    assert lengths == sorted(len(s.split()) + 1 for s in sentences)  # + 1: the appended </s>
