"""Turning a trained model into translations: greedy decoding and beam search, batched.

Both searches only talk to the model through the :class:`IncrementalDecoder` protocol, so the same
code decodes the recurrent models of :mod:`attn_tutorial.seq2seq`, the Transformer, and the toy
:class:`MarkovTableModel` below (a fixed table of next-token log-probabilities, small enough to
check by hand which sequence is best).

Conventions shared by both searches:

* decoding starts from ``bos_id`` and a hypothesis *finishes* when it produces ``eos_id``;
* sentence ``i`` may take at most ``L_i = min(max_len, floor(max_len_a * S_i + max_len_b))`` decoder
  steps, where ``S_i`` is its number of real source tokens; the step that produces EOS counts. A
  hypothesis that reaches ``L_i`` steps without EOS is returned unfinished (``finished=False``);
* an empty source sentence (``S_i = 0``) gets ``L_i = 0``: an empty translation, log-probability 0,
  ``finished=False``, and no model step is spent on it;
* returned tokens exclude BOS and EOS; ``attention[i]`` has one row per returned token (the EOS
  step's row is dropped) and one column per real source token, shape ``(T_i, S_i)``;
* ``log_probs[i]`` is the model's log-probability of the returned tokens *plus* EOS when
  ``finished[i]``, i.e. exactly what teacher forcing on ``BOS + tokens -> tokens + EOS`` sums to;
* masks are boolean, ``True`` = real token (may be attended).

Models with dropout are switched to ``eval()`` for the search and restored afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from .tokens import BOS_ID, EOS_ID

__all__ = [
    "DecoderState",
    "IncrementalDecoder",
    "DecodeResult",
    "decode_length_limits",
    "length_penalty",
    "greedy_decode",
    "beam_search",
    "MarkovTableModel",
]


# --------------------------------------------------------------------------------------------
# The protocol every decodable model implements
# --------------------------------------------------------------------------------------------


class DecoderState(Protocol):
    """Whatever a model carries between decoder steps; the search only ever reorders it."""

    def reorder(self, indices: Tensor) -> DecoderState:
        """Row ``i`` of the result is row ``indices[i]`` of ``self`` (select, repeat or permute beams; the
        searches also drop the rows of finished sentences, so ``indices`` may be shorter than the batch)."""
        ...


@runtime_checkable
class IncrementalDecoder(Protocol):
    """A model that can be decoded one token at a time.

    * ``encode(src, src_mask) -> state``: ``src`` ``(B, S)`` long, ``src_mask`` ``(B, S)`` bool with
      ``True`` = real token (may be attended);
    * ``decode_step(state, prev_tokens) -> (log_probs, new_state, attention)``: ``prev_tokens`` ``(B,)``
      long (BOS at the first step) -> ``log_probs`` ``(B, V)`` (normalised), a new state (the old one
      stays valid), and the attention of this step over the source ``(B, S)``, or ``None`` if the model
      has none to show.

    Implemented by :class:`attn_tutorial.seq2seq.Seq2Seq` and :class:`MarkovTableModel`.
    """

    def encode(self, src: Tensor, src_mask: Tensor) -> Any: ...

    def decode_step(self, state: Any, prev_tokens: Tensor) -> tuple[Tensor, Any, Tensor | None]: ...


@dataclass(frozen=True)
class DecodeResult:
    """The chosen hypothesis of each sentence of a batch (see the module docstring for conventions).

    Attributes:
        tokens: ``B`` lists of token ids, without BOS and EOS.
        attention: ``B`` tensors ``(T_i, S_i)``, one row per returned token; ``None`` if the model returns no attention.
        log_probs: ``B`` floats, the model's total log-probability of ``tokens`` (+ EOS if finished).
        scores: ``B`` floats, the score the search ranked by: ``log_probs / lp(|Y|)`` for beam search
            (:func:`length_penalty`, ``|Y|`` counts EOS), equal to ``log_probs`` for greedy decoding.
        finished: ``B`` bools, whether the hypothesis ended with EOS (rather than the length limit).
    """

    tokens: list[list[int]]
    attention: list[Tensor] | None
    log_probs: list[float]
    scores: list[float]
    finished: list[bool]


# --------------------------------------------------------------------------------------------
# Length limit and length penalty
# --------------------------------------------------------------------------------------------


def decode_length_limits(src_mask: Tensor, max_len_a: float = 2.0, max_len_b: int = 10, max_len: int | None = None) -> Tensor:
    """Per-sentence step limit ``L_i = min(max_len, floor(a * S_i + b))``, and 0 for an empty source.

    ``src_mask`` is boolean, ``True`` = real token. The default ``a = 2, b = 10`` leaves room for
    targets twice as long as the source plus ten tokens.

    Shape:
        ``src_mask`` ``(B, S)`` -> ``(B,)`` long.
    """
    if not isinstance(src_mask, Tensor) or src_mask.dtype != torch.bool or src_mask.dim() != 2:
        what = f"shape {tuple(src_mask.shape)} and dtype {src_mask.dtype}" if isinstance(src_mask, Tensor) else type(src_mask).__name__
        raise ValueError(f"src_mask must be a boolean (B, S) tensor, True = real token; got {what}")
    if max_len_a < 0 or max_len_b < 0 or (max_len is not None and max_len < 0):
        raise ValueError(f"max_len_a, max_len_b and max_len must be non-negative, got {max_len_a!r}, {max_len_b!r}, {max_len!r}")
    src_len = src_mask.sum(-1).cpu()
    limits = torch.floor(max_len_a * src_len.double() + max_len_b).long()
    if max_len is not None:
        limits = limits.clamp(max=max_len)
    return torch.where(src_len > 0, limits, torch.zeros_like(limits))


def length_penalty(length: Tensor | int, alpha: float, kind: str = "gnmt") -> Tensor:
    """The divisor :math:`lp(|Y|)` of beam search's ranking score :math:`\\log p(Y \\mid X) / lp(|Y|)`.

    * ``kind="gnmt"``: :math:`lp(|Y|) = ((5 + |Y|) / 6)^\\alpha` (:cite:t:`wu2016gnmt`, eq. 14);
    * ``kind="power"``: :math:`lp(|Y|) = |Y|^\\alpha`; ``alpha = 1`` is plain length normalisation
      (the average log-probability per token).

    ``alpha = 0`` gives :math:`lp = 1` (pure log-probability, which favours short outputs because every
    token costs log-probability); larger ``alpha`` favours longer hypotheses. ``|Y|`` counts EOS.
    """
    if kind not in ("gnmt", "power"):
        raise ValueError(f"kind must be 'gnmt' or 'power', got {kind!r}")
    if not alpha >= 0:
        raise ValueError(f"alpha (the length penalty) must be >= 0, got {alpha!r}")
    length = torch.as_tensor(length, dtype=torch.float64)
    base = (5.0 + length) / 6.0 if kind == "gnmt" else length
    return base**alpha


# --------------------------------------------------------------------------------------------
# Searches
# --------------------------------------------------------------------------------------------


@contextmanager
def _eval_mode(model: object) -> Iterator[None]:
    was_training = isinstance(model, nn.Module) and model.training
    if was_training:
        model.eval()  # type: ignore[union-attr]
    try:
        yield
    finally:
        if was_training:
            model.train()  # type: ignore[union-attr]


def _check_inputs(model: object, src: Tensor, src_mask: Tensor) -> None:
    if not isinstance(model, IncrementalDecoder):
        raise TypeError(f"model must implement encode(src, src_mask) and decode_step(state, prev_tokens), got {type(model).__name__}")
    if not isinstance(src, Tensor) or src.dim() != 2:
        raise ValueError(f"src must be a (B, S) tensor of token ids, got {tuple(src.shape) if isinstance(src, Tensor) else type(src).__name__}")
    if not isinstance(src_mask, Tensor) or src_mask.shape != src.shape or src_mask.dtype != torch.bool:
        what = f"shape {tuple(src_mask.shape)} and dtype {src_mask.dtype}" if isinstance(src_mask, Tensor) else type(src_mask).__name__
        raise ValueError(f"src_mask must be a boolean tensor of shape {tuple(src.shape)} (as src), True = real token; got {what}")


def _collect_attention(history: Tensor | None, n_tokens: list[int], src_len: Tensor, ran: bool) -> list[Tensor] | None:
    """Per-sentence ``(T_i, S_i)`` attention from a ``(B, T, S')`` history; ``None`` if the model gave none."""
    if history is None:
        return None if ran else [torch.zeros(0, int(n_src), dtype=torch.float64) for n_src in src_len.tolist()]
    return [history[i, :n, : int(src_len[i])].cpu() for i, n in enumerate(n_tokens)]


@torch.no_grad()
def greedy_decode(
    model: IncrementalDecoder,
    src: Tensor,
    src_mask: Tensor,
    *,
    max_len_a: float = 2.0,
    max_len_b: int = 10,
    max_len: int | None = None,
    bos_id: int = BOS_ID,
    eos_id: int = EOS_ID,
) -> DecodeResult:
    """Greedy decoding: at every step take the most probable next token, :math:`y_t = \\arg\\max_y p(y \\mid y_{<t}, x)`.

    Batched: all sentences advance together; a sentence stops at EOS or at its length limit
    :func:`decode_length_limits` (``max_len_a * S_i + max_len_b``, capped by ``max_len``) and then
    leaves the batch, so later steps only compute the sentences still decoding. ``src_mask``
    is boolean, ``True`` = real token. Conventions: see the module docstring.

    Shape:
        ``src`` ``(B, S)`` long, ``src_mask`` ``(B, S)`` bool -> :class:`DecodeResult` with ``B`` entries.
    """
    _check_inputs(model, src, src_mask)
    B = src.shape[0]
    limits = decode_length_limits(src_mask, max_len_a, max_len_b, max_len).to(src.device)
    src_len = src_mask.sum(-1)
    max_steps = int(limits.max()) if B else 0
    tokens = torch.full((B, max_steps), eos_id, dtype=torch.long, device=src.device)
    attn_history: Tensor | None = None  # (B, max_steps, S'), created at the first step that returns attention
    log_prob = torch.zeros(B, dtype=torch.float64, device=src.device)
    n_steps = torch.zeros(B, dtype=torch.long, device=src.device)
    finished = torch.zeros(B, dtype=torch.bool, device=src.device)
    ids = torch.nonzero(limits > 0).flatten()  # (A,) original index of each sentence still decoding
    with _eval_mode(model):
        state = model.encode(src, src_mask)
        if len(ids) < B:  # empty sources take no step
            state = state.reorder(ids)
        prev = torch.full((len(ids),), bos_id, dtype=torch.long, device=src.device)
        for t in range(max_steps):
            if not len(ids):
                break
            log_probs, state, attn = model.decode_step(state, prev)  # (A, V), state, (A, S') or None
            best = log_probs.argmax(-1)  # (A,)
            log_prob[ids] += log_probs.gather(1, best[:, None]).squeeze(1).double()
            tokens[ids, t] = best
            if attn is not None:
                if attn_history is None:
                    attn_history = torch.zeros(B, max_steps, attn.shape[-1], dtype=torch.float64, device=src.device)
                attn_history[ids, t] = attn.to(torch.float64)
            n_steps[ids] += 1
            is_eos = best == eos_id
            finished[ids] = is_eos
            going = ~is_eos & (t + 1 < limits[ids])  # (A,)
            if not bool(going.all()):  # a finished sentence leaves the batch
                state, ids, best = state.reorder(torch.nonzero(going).flatten()), ids[going], best[going]
            prev = best
    n_tokens = (n_steps - finished.long()).tolist()  # the EOS step is not returned
    out_tokens = [tokens[i, :n].tolist() for i, n in enumerate(n_tokens)]
    out_attn = _collect_attention(attn_history, n_tokens, src_len, ran=max_steps > 0)
    lps = log_prob.tolist()
    return DecodeResult(out_tokens, out_attn, lps, list(lps), finished.tolist())


@torch.no_grad()
def beam_search(
    model: IncrementalDecoder,
    src: Tensor,
    src_mask: Tensor,
    beam_size: int = 5,
    *,
    length_penalty_alpha: float = 0.0,
    length_penalty_kind: str = "gnmt",
    max_len_a: float = 2.0,
    max_len_b: int = 10,
    max_len: int | None = None,
    bos_id: int = BOS_ID,
    eos_id: int = EOS_ID,
) -> DecodeResult:
    """Batched beam search: keep the ``beam_size`` most probable prefixes of every sentence.

    At each step every live prefix :math:`y_{<t}` is extended by every token, the candidates are ranked
    by :math:`\\log p(y_{\\le t} \\mid x)` and the best ``2k`` are examined: those among the top ``k``
    that end in EOS become finished hypotheses, ranked by :math:`\\log p(Y \\mid x) / lp(|Y|)`
    (:func:`length_penalty` with ``length_penalty_alpha`` and ``length_penalty_kind``), and the best ``k``
    that do not end in EOS stay alive. (Looking at ``2k`` candidates guarantees ``k`` live ones.)

    A sentence stops when no live prefix can still beat its best finished hypothesis: log-probabilities
    only fall as a prefix grows and :math:`lp` is largest at the length limit :math:`L_i`, so
    :math:`\\log p(y_{\\le t}) / lp(L_i)` bounds every completion. At :math:`L_i` the live prefixes compete
    as unfinished hypotheses. A sentence that is done leaves the batch (its rows are dropped from the
    model's state), so the cost of a step follows the sentences still searching: with a length
    penalty that rewards length (``alpha > 1``) most sentences search to their own limit, and a long
    one no longer keeps the whole batch running. With ``beam_size=1`` and ``alpha=0`` this is exactly greedy decoding.
    ``src_mask`` is boolean, ``True`` = real token. Other conventions: see the module docstring.

    Shape:
        ``src`` ``(B, S)`` long, ``src_mask`` ``(B, S)`` bool -> :class:`DecodeResult` with ``B`` entries.

    Reference: beam search for NMT as in :cite:t:`sutskever2014seq2seq`; length penalty of :cite:t:`wu2016gnmt`.
    """
    _check_inputs(model, src, src_mask)
    if not isinstance(beam_size, int) or isinstance(beam_size, bool) or beam_size < 1:
        raise ValueError(f"beam_size must be a positive int, got {beam_size!r}")
    length_penalty(1, length_penalty_alpha, length_penalty_kind)  # validates alpha and kind
    B, S = src.shape
    K = beam_size
    device = src.device
    limits = decode_length_limits(src_mask, max_len_a, max_len_b, max_len).to(device)
    src_len = src_mask.sum(-1)
    lp_at_limit = length_penalty(limits.clamp(min=1), length_penalty_alpha, length_penalty_kind).to(device)  # (B,)

    # The best hypothesis found so far for each sentence (an empty source's empty output is final at once).
    best_score = torch.where(limits > 0, float("-inf"), 0.0).to(torch.float64)  # (B,)
    best: list[tuple[Tensor, Tensor | None, float, bool]] = [
        (torch.zeros(0, dtype=torch.long), None, 0.0, False) for _ in range(B)
    ]

    # Sentences still searching ("active"), A of them; a sentence leaves the batch as soon as it is done,
    # so the work per step follows the sentences still searching, not the longest one in the batch.
    ids = torch.nonzero(limits > 0).flatten()  # (A,) original index of each active sentence
    lim, lp_lim = limits[ids], lp_at_limit[ids]  # (A,)
    with _eval_mode(model):
        state = model.encode(src, src_mask).reorder(ids.repeat_interleave(K))  # A*K rows
        beam_scores = torch.full((len(ids), K), float("-inf"), dtype=torch.float64, device=device)
        beam_scores[:, 0] = 0.0  # one live prefix (BOS) per sentence at the start
        history = torch.zeros(len(ids) * K, 0, dtype=torch.long, device=device)  # (A*K, t) tokens of each live prefix
        attn_history: Tensor | None = None  # (A*K, t, S)
        prev = torch.full((len(ids) * K,), bos_id, dtype=torch.long, device=device)
        rank = torch.arange(2 * K, device=device)
        steps_ran = False
        t = 0
        while len(ids):
            A = len(ids)
            log_probs, state, attn = model.decode_step(state, prev)  # (A*K, V), state, (A*K, S) or None
            steps_ran = True
            V = log_probs.shape[-1]
            if attn is not None:
                step_attn = attn.to(torch.float64)[:, None, :]  # (A*K, 1, S)
                attn_history = step_attn if attn_history is None else torch.cat([attn_history, step_attn], 1)
            cand = (beam_scores.reshape(A * K, 1) + log_probs.to(torch.float64)).view(A, K * V)  # (A, K*V)
            n_cand = min(2 * K, K * V)
            top_scores, top_idx = cand.topk(n_cand, dim=-1)  # (A, 2K), sorted best first
            parent = top_idx // V  # (A, 2K) beam index within the sentence
            token = top_idx % V
            rows = torch.arange(A, device=device)[:, None] * K + parent  # (A, 2K) row in the A*K batch

            # 1. Candidates in the top k that end in EOS: finished hypotheses of length t + 1.
            is_eos = token == eos_id
            lp_now = float(length_penalty(t + 1, length_penalty_alpha, length_penalty_kind))
            eligible = is_eos & (rank[:n_cand] < K) & torch.isfinite(top_scores)
            norm = torch.where(eligible, top_scores / lp_now, float("-inf"))
            cand_best, j = norm.max(-1)  # (A,)
            for a in torch.nonzero(cand_best > best_score[ids]).flatten().tolist():
                r, i = int(rows[a, j[a]]), int(ids[a])
                h = None if attn_history is None else attn_history[r, :t]
                best[i] = (history[r], h, float(top_scores[a, j[a]]), True)
                best_score[i] = cand_best[a]

            # 2. The best k candidates that do not end in EOS stay alive, best first (ranks are distinct).
            keep = torch.where(is_eos, rank[:n_cand] + 2 * K, rank[:n_cand]).argsort(-1)[:, :K]  # (A, K)
            beam_scores = top_scores.gather(1, keep)
            new_tokens = token.gather(1, keep)
            select = rows.gather(1, keep)  # (A, K) row of the A*K batch each new live prefix extends

            # 3. At the length limit the live prefixes compete as unfinished hypotheses.
            at_limit = lim == t + 1
            if bool(at_limit.any()):
                alive_norm = beam_scores / lp_now  # (A, K)
                a_best, a_j = alive_norm.max(-1)
                for a in torch.nonzero(at_limit).flatten().tolist():
                    i = int(ids[a])
                    if float(a_best[a]) > float(best_score[i]) or float(best_score[i]) == float("-inf"):
                        r = int(select[a, a_j[a]])
                        h = None if attn_history is None else attn_history[r]
                        best[i] = (torch.cat([history[r], new_tokens[a, a_j[a], None]]), h, float(beam_scores[a, a_j[a]]), False)
                        best_score[i] = a_best[a]

            # 4. A sentence is done when no live prefix can beat its best finished hypothesis.
            bound = (beam_scores / lp_lim[:, None]).max(-1).values  # (A,)
            going = ~at_limit & (best_score[ids] < bound)  # (A,)

            # 5. Only the sentences still going stay in the batch, with their k live prefixes.
            select, new_tokens = select[going].reshape(-1), new_tokens[going].reshape(-1, 1)  # (A'*K,), (A'*K, 1)
            state = state.reorder(select)
            history = torch.cat([history[select], new_tokens], 1)  # (A'*K, t+1)
            if attn_history is not None:
                attn_history = attn_history[select]
            prev = new_tokens.reshape(-1)
            beam_scores, ids, lim, lp_lim = beam_scores[going], ids[going], lim[going], lp_lim[going]
            t += 1

    out_tokens = [h[0].tolist() for h in best]
    if attn_history is None:
        out_attn = _collect_attention(None, [], src_len, ran=steps_ran)
    else:
        padded = torch.zeros(B, max(len(tk) for tk in out_tokens), attn_history.shape[-1], dtype=torch.float64)
        for i, h in enumerate(best):
            if h[1] is not None:
                padded[i, : len(out_tokens[i])] = h[1].cpu()
        out_attn = _collect_attention(padded, [len(tk) for tk in out_tokens], src_len.cpu(), ran=True)
    return DecodeResult(out_tokens, out_attn, [h[2] for h in best], best_score.tolist(), [h[3] for h in best])


# --------------------------------------------------------------------------------------------
# A toy model for worked examples
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _TableState:
    src_mask: Tensor  # (B, S)
    step: int = 0

    def reorder(self, indices: Tensor) -> _TableState:
        return replace(self, src_mask=self.src_mask.index_select(0, indices))


class MarkovTableModel:
    """A "model" whose next-token distribution depends only on the previous token: a fixed table.

    .. math:: \\log p(y_t \\mid y_{<t}, x) = \\texttt{table}[y_{t-1}, y_t]

    It ignores the source (its attention is uniform over the real source tokens, zeros for an empty
    source) and is small enough to enumerate every output: the reference against which greedy and beam
    search can be checked. It implements :class:`IncrementalDecoder`.

    Shape:
        ``table`` ``(V, V)`` of log-probabilities; each row must be a distribution (``logsumexp = 0``).

    The garden path: after BOS, word 4 is likeliest (0.5) but rarely ends well (EOS 0.4); word 5 (0.4)
    almost always does (EOS 0.9). Greedy returns ``[4]`` (p = 0.20), a beam of two ``[5]`` (p = 0.36).

    >>> m = MarkovTableModel.from_transitions(
    ...     {BOS_ID: {4: 0.5, 5: 0.4, 6: 0.1}, 4: {EOS_ID: 0.4, 5: 0.3, 6: 0.3}, 5: {EOS_ID: 0.9, 6: 0.1}, 6: {EOS_ID: 1.0}}, 7)
    >>> src, src_mask = torch.tensor([[4, 5]]), torch.tensor([[True, True]])
    >>> greedy_decode(m, src, src_mask).tokens, beam_search(m, src, src_mask, beam_size=2).tokens
    ([[4]], [[5]])
    """

    def __init__(self, table: Tensor) -> None:
        if not isinstance(table, Tensor) or table.dim() != 2 or table.shape[0] != table.shape[1] or not table.is_floating_point():
            raise ValueError(f"table must be a floating (V, V) tensor of log-probabilities, got {table!r}")
        sums = table.logsumexp(-1)
        if not torch.allclose(sums, torch.zeros_like(sums), atol=1e-6):
            raise ValueError(f"every row of table must be a log-distribution (logsumexp 0), got row sums of probabilities {sums.exp().tolist()}")
        self.table = table

    @classmethod
    def from_transitions(cls, transitions: Mapping[int, Mapping[int, float]], vocab_size: int) -> MarkovTableModel:
        """Build the table from probabilities ``{prev: {next: p}}``; missing entries have probability 0.

        A previous token without an entry (PAD, UNK, EOS, ...) always continues with itself, which keeps
        every row a distribution.
        """
        probs = torch.zeros(vocab_size, vocab_size, dtype=torch.float64)
        for prev in range(vocab_size):
            row = transitions.get(prev)
            if row is None:
                probs[prev, prev] = 1.0
            else:
                for nxt, p in row.items():
                    probs[prev, nxt] = p
        return cls(probs.log())

    def encode(self, src: Tensor, src_mask: Tensor) -> _TableState:
        return _TableState(src_mask)

    def decode_step(self, state: _TableState, prev_tokens: Tensor) -> tuple[Tensor, _TableState, Tensor]:
        log_probs = self.table[prev_tokens]  # (B, V)
        mask = state.src_mask.to(self.table.dtype)  # (B, S)
        attn = mask / mask.sum(-1, keepdim=True).clamp(min=1.0)
        return log_probs, replace(state, step=state.step + 1), attn

    def sequence_log_prob(self, tokens: list[int], bos_id: int = BOS_ID, eos_id: int | None = EOS_ID) -> float:
        """:math:`\\log p(y)` of ``tokens`` (+ EOS unless ``eos_id`` is None), summed along the table."""
        path = [bos_id, *tokens] + ([] if eos_id is None else [eos_id])
        return float(sum(self.table[a, b] for a, b in zip(path[:-1], path[1:])))
