"""Greedy decoding and beam search: exactness on toy tables, agreement with the model, batching."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st

from attn_tutorial import (
    BOS_ID,
    EOS_ID,
    DecodeResult,
    IncrementalDecoder,
    MarkovTableModel,
    Seq2Seq,
    Seq2SeqConfig,
    beam_search,
    decode_length_limits,
    greedy_decode,
    length_penalty,
    padding_mask,
)

A, B, C = 4, 5, 6  # three "words" after the special ids PAD=0, BOS=1, EOS=2, UNK=3
V = 7


# ---------------------------------------------------------------------------------- helpers


def brute_force_all(model: MarkovTableModel, limit: int, alpha: float = 0.0, kind: str = "gnmt") -> list[tuple[list[int], float]]:
    """Every output the searches may return (documented conventions) with its ranking score.

    Finished: ``w_1 .. w_n EOS`` with ``n + 1 <= limit`` steps; unfinished: ``limit`` non-EOS tokens.
    Ranking score: log p / lp(|Y|), ``|Y|`` = steps taken (EOS included). Depth-first over the table,
    skipping zero-probability continuations.
    """
    table = model.table.tolist()
    found: list[tuple[list[int], float]] = []

    def visit(prefix: list[int], logp: float) -> None:
        candidates = []
        if len(prefix) == limit:  # the length limit: an unfinished hypothesis
            candidates.append((logp / float(length_penalty(limit, alpha, kind)), prefix))
        else:
            last = prefix[-1] if prefix else BOS_ID
            if table[last][EOS_ID] > -math.inf:
                candidates.append(((logp + table[last][EOS_ID]) / float(length_penalty(len(prefix) + 1, alpha, kind)), prefix))
            for w, lp in enumerate(table[last]):
                if w != EOS_ID and lp > -math.inf:
                    visit([*prefix, w], logp + lp)
        found.extend((list(seq), score) for score, seq in candidates)

    visit([], 0.0)
    return found


def brute_force_best(model: MarkovTableModel, limit: int, alpha: float = 0.0, kind: str = "gnmt") -> tuple[list[int], float]:
    """The first output (in depth-first order) with the highest score of :func:`brute_force_all`."""
    best: tuple[list[int], float] = ([], -math.inf)
    for seq, score in brute_force_all(model, limit, alpha, kind):
        if score > best[1]:
            best = (seq, score)
    return best


def one_source(n: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.full((1, n), 4), torch.ones(1, n, dtype=torch.bool)


def garden_path_model() -> MarkovTableModel:
    """The worked example: the best first word (A, 0.5) leads to a poor continuation.

    Greedy: A then EOS, p = 0.5 * 0.4 = 0.20. Best: B then EOS, p = 0.4 * 0.9 = 0.36.
    """
    return MarkovTableModel.from_transitions(
        {BOS_ID: {A: 0.5, B: 0.4, C: 0.1}, A: {EOS_ID: 0.4, B: 0.3, C: 0.3}, B: {EOS_ID: 0.9, C: 0.1}, C: {EOS_ID: 1.0}}, V
    )


def make_seq2seq(attention: str, seed: int = 0) -> Seq2Seq:
    """A random float64 model with a spread-out output bias, so that some outputs end with EOS."""
    torch.manual_seed(seed)
    model = Seq2Seq(Seq2SeqConfig(src_vocab_size=10, tgt_vocab_size=9, emb_dim=6, hidden_dim=8, attention=attention)).double().eval()
    with torch.no_grad():
        model.generator.bias.copy_(0.3 * torch.randn(9, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
        model.generator.bias[EOS_ID] = 0.3
        model.generator.weight.mul_(1.5)
    return model


def source_batch(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = padding_mask(lengths, max(lengths) if lengths else 0)
    return torch.randint(4, 10, mask.shape, generator=g) * mask, mask


@torch.no_grad()
def teacher_forced_log_prob(model: Seq2Seq, src: torch.Tensor, src_mask: torch.Tensor, tokens: list[int], finished: bool) -> float:
    """log p(tokens [+ EOS] | src) recomputed with one teacher-forced forward pass."""
    tgt_in = torch.tensor([[BOS_ID, *tokens]])
    tgt_out = torch.tensor([[*tokens, EOS_ID]])
    logits = model(src, src_mask, tgt_in, torch.ones_like(tgt_in, dtype=torch.bool))
    per_step = F.log_softmax(logits, -1).gather(2, tgt_out[..., None]).squeeze(-1)[0]  # (T,)
    return float(per_step.sum() if finished else per_step[:-1].sum())


def assert_same_results(a: DecodeResult, b: DecodeResult, atol: float = 0.0) -> None:
    assert a.tokens == b.tokens and a.finished == b.finished
    torch.testing.assert_close(torch.tensor(a.log_probs), torch.tensor(b.log_probs), rtol=0, atol=atol)
    torch.testing.assert_close(torch.tensor(a.scores), torch.tensor(b.scores), rtol=0, atol=atol)
    assert (a.attention is None) == (b.attention is None)
    for x, y in zip(a.attention or [], b.attention or []):
        torch.testing.assert_close(x, y, rtol=0, atol=max(atol, 1e-15))


# ---------------------------------------------------------------------------------- the worked example


def test_beam_search_escapes_the_garden_path_that_greedy_takes() -> None:
    model = garden_path_model()
    src, src_mask = one_source()
    best, best_score = brute_force_best(model, limit=5)
    assert best == [B] and best_score == pytest.approx(math.log(0.4 * 0.9), abs=1e-12)
    greedy = greedy_decode(model, src, src_mask, max_len=5)
    assert greedy.tokens == [[A]] and greedy.log_probs[0] == pytest.approx(math.log(0.5 * 0.4), abs=1e-12)
    beam = beam_search(model, src, src_mask, beam_size=2, max_len=5)
    assert beam.tokens == [[B]] and beam.finished == [True]
    assert beam.log_probs[0] == pytest.approx(best_score, abs=1e-12)
    # One beam is greedy: it can't see that the runner-up first word has the better future.
    assert beam_search(model, src, src_mask, beam_size=1, max_len=5).tokens == [[A]]


def short_or_long_model() -> MarkovTableModel:
    """[A] is the most probable output (p = 0.385); [B, C] is more probable *per token* (p = 0.271)."""
    return MarkovTableModel.from_transitions(
        {BOS_ID: {A: 0.7, B: 0.3}, A: {EOS_ID: 0.55, A: 0.45}, B: {C: 0.95, EOS_ID: 0.05}, C: {EOS_ID: 0.95, C: 0.05}}, V
    )


@pytest.mark.parametrize(("alpha", "kind", "expected"), [(0.0, "gnmt", [A]), (1.0, "power", [B, C]), (3.0, "gnmt", [B, C])])
def test_length_penalty_changes_the_ranking_as_documented(alpha: float, kind: str, expected: list[int]) -> None:
    model = short_or_long_model()
    src, src_mask = one_source()
    best, best_score = brute_force_best(model, limit=6, alpha=alpha, kind=kind)
    assert best == expected
    result = beam_search(model, src, src_mask, beam_size=3, max_len=6, length_penalty_alpha=alpha, length_penalty_kind=kind)
    assert result.tokens == [expected]
    assert result.scores[0] == pytest.approx(best_score, abs=1e-12)
    steps = len(expected) + 1
    assert result.scores[0] == pytest.approx(result.log_probs[0] / float(length_penalty(steps, alpha, kind)), abs=1e-12)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    limit=st.integers(1, 4),
    alpha=st.sampled_from([0.0, 0.6, 1.0]),
    kind=st.sampled_from(["gnmt", "power"]),
)
@example(seed=9234, limit=4, alpha=0.0, kind="gnmt")  # [4, 0, 1, 0] and [0, 1, 4, 0] tie bit for bit
def test_a_beam_wide_enough_to_keep_everything_is_exact(seed: int, limit: int, alpha: float, kind: str) -> None:
    """With k >= n**limit nothing is pruned (every EOS candidate ranks in the top k): beam search must return
    a brute-force optimum. Its score must be the best score; when several outputs share that score (an
    exact tie, not a search error) any of them is right."""
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(seed)
    n = 5  # PAD, BOS, EOS, UNK, A
    model = MarkovTableModel(torch.log_softmax(3 * torch.randn(n, n, generator=g, dtype=torch.float64), -1))
    src, src_mask = one_source()
    everything = brute_force_all(model, limit, alpha, kind)
    best_score = max(score for _, score in everything)
    tied_best = [seq for seq, score in everything if score >= best_score - 1e-12]
    result = beam_search(model, src, src_mask, beam_size=n**limit, max_len=limit, length_penalty_alpha=alpha, length_penalty_kind=kind)
    assert result.scores[0] == pytest.approx(best_score, abs=1e-10)
    assert result.tokens[0] in tied_best
    finished = result.finished[0]
    assert result.log_probs[0] == pytest.approx(model.sequence_log_prob(result.tokens[0], eos_id=EOS_ID if finished else None), abs=1e-10)


def test_the_tie_example_really_is_a_tie() -> None:
    """seed 9234, limit 4, alpha 0: two outputs with bit-identical scores (why the test above accepts either)."""
    g = torch.Generator().manual_seed(9234)
    model = MarkovTableModel(torch.log_softmax(3 * torch.randn(5, 5, generator=g, dtype=torch.float64), -1))
    everything = brute_force_all(model, 4, 0.0, "gnmt")
    best_score = max(score for _, score in everything)
    assert sorted(seq for seq, score in everything if score == best_score) == [[0, 1, 4, 0], [4, 0, 1, 0]]


# ---------------------------------------------------------------------------------- agreement with the model


@pytest.mark.parametrize("attention", ["none", "bahdanau", "luong"])
def test_beam_of_one_is_greedy(attention: str) -> None:
    model = make_seq2seq(attention)
    src, src_mask = source_batch([5, 3, 0, 4, 1])
    greedy = greedy_decode(model, src, src_mask, max_len_a=1.0, max_len_b=3)
    beam = beam_search(model, src, src_mask, beam_size=1, max_len_a=1.0, max_len_b=3)
    assert_same_results(beam, greedy)
    assert any(len(t) > 0 for t in greedy.tokens)  # not a comparison of empty outputs


@pytest.mark.parametrize(("attention", "beam_size", "alpha"), [("bahdanau", 4, 0.0), ("luong", 3, 1.0), ("none", 2, 0.6)])
def test_beam_scores_are_the_models_log_probabilities(attention: str, beam_size: int, alpha: float) -> None:
    """The returned log-probability equals teacher forcing on the returned tokens (float64, 1e-10)."""
    model = make_seq2seq(attention)
    src, src_mask = source_batch([5, 3, 4, 2])
    result = beam_search(model, src, src_mask, beam_size=beam_size, length_penalty_alpha=alpha, max_len_b=4)
    for i, (tokens, finished) in enumerate(zip(result.tokens, result.finished)):
        n = int(src_mask[i].sum())
        recomputed = teacher_forced_log_prob(model, src[i : i + 1, :n], src_mask[i : i + 1, :n], tokens, finished)
        assert result.log_probs[i] == pytest.approx(recomputed, abs=1e-10)
        steps = len(tokens) + int(finished)
        assert result.scores[i] == pytest.approx(result.log_probs[i] / float(length_penalty(steps, alpha)), abs=1e-12)
        assert result.attention is not None and result.attention[i].shape == (len(tokens), n)


def test_greedy_attention_is_what_teacher_forcing_shows() -> None:
    model = make_seq2seq("bahdanau")
    src, src_mask = source_batch([4, 2])
    result = greedy_decode(model, src, src_mask)
    assert result.attention is not None
    for i, tokens in enumerate(result.tokens):
        n = int(src_mask[i].sum())
        tgt_in = torch.tensor([[BOS_ID, *tokens]])
        _, attn = model(src[i : i + 1, :n], src_mask[i : i + 1, :n], tgt_in, torch.ones_like(tgt_in, dtype=torch.bool), return_attention=True)
        torch.testing.assert_close(result.attention[i], attn[0, : len(tokens)], rtol=0, atol=1e-12)
        torch.testing.assert_close(result.attention[i].sum(-1), torch.ones(len(tokens), dtype=torch.float64), rtol=0, atol=1e-12)


def _random_transformer(seed: int = 0):
    from attn_tutorial.transformer import Transformer, TransformerConfig

    torch.manual_seed(seed)
    cfg = TransformerConfig(src_vocab_size=10, tgt_vocab_size=9, share_embeddings=False, tie_embeddings=False, d_model=8, num_heads=2,
                            num_encoder_layers=1, num_decoder_layers=2, d_ff=16, dropout=0.0)
    model = Transformer(cfg).double().eval()
    with torch.no_grad():
        model.generator.bias.copy_(0.3 * torch.randn(9, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
        model.generator.bias[EOS_ID] = 0.3
    return model


# model, source lengths, source seed, max_len_b, beam length penalty, whether the outputs end at different
# steps (the random GRU mostly emits EOS at once; the Transformer's outputs end at EOS and at the limit)
BATCH_CASES = {
    "gru-luong": (lambda: make_seq2seq("luong", seed=1), [6, 2, 0, 4, 3], 3, 4, 0.6, False),
    "transformer": (lambda: _random_transformer(seed=1), [1, 7, 0, 3, 5, 2], 4, 3, 1.5, True),
}


@pytest.mark.parametrize("case", BATCH_CASES)
@pytest.mark.parametrize("search", ["greedy", "beam"])
def test_batched_equals_one_by_one(search: str, case: str) -> None:
    """A sentence decodes the same in a batch as alone. The searches drop the rows of finished sentences
    from the model state (for the Transformer, a key/value cache per layer); the sentences still
    decoding must not notice."""
    make, lengths, seed, max_len_b, alpha, varied = BATCH_CASES[case]
    model = make()
    src, src_mask = source_batch(lengths, seed=seed)

    def run(s: torch.Tensor, m: torch.Tensor) -> DecodeResult:
        if search == "greedy":
            return greedy_decode(model, s, m, max_len_b=max_len_b)
        return beam_search(model, s, m, beam_size=3, length_penalty_alpha=alpha, max_len_b=max_len_b)

    batched = run(src, src_mask)
    if varied:  # the sentences really end at different steps, some at EOS and some at their length limit
        real = [f for f, n in zip(batched.finished, lengths) if n]
        assert len({len(t) for t in batched.tokens}) > 2 and any(real) and not all(real), (batched.tokens, batched.finished)
    for i, n in enumerate(lengths):
        alone = run(src[i : i + 1, :n], src_mask[i : i + 1, :n])
        single = DecodeResult(
            [batched.tokens[i]], None if batched.attention is None else [batched.attention[i]],
            [batched.log_probs[i]], [batched.scores[i]], [batched.finished[i]],
        )
        assert_same_results(single, alone, atol=1e-10)


class _CountingRows:
    """Wraps a model and records how many rows each decoder step computes."""

    def __init__(self, model: IncrementalDecoder) -> None:
        self.model, self.rows = model, []

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor):
        return self.model.encode(src, src_mask)

    def decode_step(self, state, prev_tokens: torch.Tensor):
        self.rows.append(len(prev_tokens))
        return self.model.decode_step(state, prev_tokens)


@pytest.mark.parametrize("search", ["greedy", "beam"])
def test_finished_sentences_leave_the_batch(search: str) -> None:
    # A table that never emits EOS: every sentence decodes to its own limit L_i = S_i + 1 (a = 1, b = 1).
    never_stops = MarkovTableModel.from_transitions({BOS_ID: {A: 0.5, B: 0.5}, A: {A: 0.6, B: 0.4}, B: {A: 0.5, B: 0.5}}, V)
    lengths = [1, 0, 3, 1]  # limits 2, 0, 4, 2
    src, src_mask = torch.full((4, 3), 5) * padding_mask(lengths, 3), padding_mask(lengths, 3)
    counting = _CountingRows(never_stops)
    k = 1 if search == "greedy" else 2
    result = (greedy_decode(counting, src, src_mask, max_len_a=1, max_len_b=1) if search == "greedy"
              else beam_search(counting, src, src_mask, beam_size=k, max_len_a=1, max_len_b=1))
    assert [len(t) for t in result.tokens] == [2, 0, 4, 2]
    # Steps 1-2 compute the three non-empty sentences, steps 3-4 only the long one; the empty source none.
    assert counting.rows == [3 * k, 3 * k, k, k], counting.rows


# ---------------------------------------------------------------------------------- lengths and edge cases


def test_length_limit_is_relative_to_the_source() -> None:
    mask = padding_mask([0, 1, 4, 7], 7)
    assert decode_length_limits(mask, 1.5, 2).tolist() == [0, math.floor(1.5 + 2), 8, math.floor(10.5 + 2)]
    assert decode_length_limits(mask, 1.5, 2, max_len=9).tolist() == [0, 3, 8, 9]
    never_stops = MarkovTableModel.from_transitions({BOS_ID: {A: 1.0}, A: {A: 0.6, B: 0.4}, B: {A: 1.0}}, V)
    src = torch.full((4, 7), 5) * mask
    for result in (greedy_decode(never_stops, src, mask, max_len_a=1.5, max_len_b=2),
                   beam_search(never_stops, src, mask, beam_size=2, max_len_a=1.5, max_len_b=2)):
        assert [len(t) for t in result.tokens] == [0, 3, 8, 12] and result.finished == [False] * 4
        assert result.attention is not None and [tuple(a.shape) for a in result.attention] == [(0, 0), (3, 1), (8, 4), (12, 7)]


def test_empty_sources_decode_to_empty_outputs() -> None:
    model = make_seq2seq("bahdanau")
    for src, src_mask in (source_batch([0, 3]), source_batch([0, 0]), (torch.zeros(2, 0, dtype=torch.long), torch.zeros(2, 0, dtype=torch.bool))):
        for result in (greedy_decode(model, src, src_mask), beam_search(model, src, src_mask, beam_size=3)):
            assert result.tokens[0] == [] and result.log_probs[0] == 0.0 and result.finished[0] is False
            assert result.attention is not None and result.attention[0].shape == (0, 0)


def test_eos_first_gives_an_empty_finished_output() -> None:
    model = MarkovTableModel.from_transitions({BOS_ID: {EOS_ID: 0.9, A: 0.1}, A: {EOS_ID: 1.0}}, V)
    src, src_mask = one_source()
    for result in (greedy_decode(model, src, src_mask), beam_search(model, src, src_mask, beam_size=2)):
        assert result.tokens == [[]] and result.finished == [True]
        assert result.log_probs[0] == pytest.approx(math.log(0.9), abs=1e-12)


def test_decoding_restores_training_mode() -> None:
    model = make_seq2seq("bahdanau").train()
    src, src_mask = source_batch([3])
    greedy_decode(model, src, src_mask)
    beam_search(model, src, src_mask, beam_size=2)
    assert model.training


def test_length_penalty_values() -> None:
    torch.testing.assert_close(length_penalty(torch.tensor([1, 7]), 0.6), torch.tensor([1.0, 2.0**0.6], dtype=torch.float64), rtol=0, atol=1e-15)
    assert float(length_penalty(9, 0.0)) == 1.0 and float(length_penalty(4, 1.0, "power")) == 4.0
    with pytest.raises(ValueError, match="alpha"):
        length_penalty(3, -0.5)
    with pytest.raises(ValueError, match="kind must be 'gnmt' or 'power'"):
        length_penalty(3, 1.0, "wu")


def test_bad_arguments_are_named() -> None:
    model = garden_path_model()
    src, src_mask = one_source()
    assert isinstance(model, IncrementalDecoder) and isinstance(make_seq2seq("none"), IncrementalDecoder)
    with pytest.raises(ValueError, match="beam_size must be a positive int"):
        beam_search(model, src, src_mask, beam_size=0)
    with pytest.raises(ValueError, match="src_mask must be a boolean tensor of shape"):
        greedy_decode(model, src, src_mask.long())
    with pytest.raises(TypeError, match="model must implement encode"):
        greedy_decode(object(), src, src_mask)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="every row of table must be a log-distribution"):
        MarkovTableModel(torch.zeros(3, 3))
