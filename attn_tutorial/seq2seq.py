"""Recurrent encoder-decoders: no attention (Cho et al.), Bahdanau's and Luong's attention.

All three models share one encoder and differ only in how the decoder looks at the source:

* ``attention="none"``: the decoder sees a single summary vector :math:`c` of the source (the
  encoder's final bidirectional state), fed at every step, in the style of :cite:t:`cho2014gru`. Every
  source sentence, long or short, must squeeze through that one vector.
* ``attention="bahdanau"`` :cite:p:`bahdanau2015`: before computing the new state :math:`s_t`, the
  *previous* state :math:`s_{t-1}` scores every encoder output with an additive score,
  :math:`e_{ts} = v^\\top \\tanh(W s_{t-1} + U \\bar h_s)`; the context
  :math:`c_t = \\sum_s \\alpha_{ts} \\bar h_s` is concatenated to the input embedding of the GRU.
* ``attention="luong"`` :cite:p:`luong2015`: the GRU runs first; its *current* state :math:`h_t` queries the
  source (``dot``, ``general`` or ``concat`` score, ``global`` or ``local-p``), and the attentional
  hidden state :math:`\\tilde h_t = \\tanh(W_c [c_t; h_t])` predicts the next word. With input feeding
  (on by default) :math:`\\tilde h_{t-1}` is also concatenated to the next input embedding.

Conventions: batch first; masks are boolean with ``True`` = real token (may be attended); padding is
at the end of each row. The encoder packs sequences, so padding never changes any state; attention
gives padding exactly zero weight.

The model implements the incremental-decoding protocol of :mod:`attn_tutorial.decoding`:
``encode(src, src_mask) -> state``, ``decode_step(state, prev_tokens) -> (log_probs, state, attn)``
and ``state.reorder(indices)``, so greedy and beam search work for it and for the Transformer alike.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ._checks import check_count, check_prev_tokens, check_token_mask, check_tokens, pad_empty_source
from .attention import (
    AdditiveScore,
    Attention,
    DotProductScore,
    GeneralScore,
    LocalPAttention,
    _masked_softmax,
    select_positions,
)
from .multihead import _init_embedding, num_parameters

from .tokens import PAD_ID

__all__ = ["Seq2SeqConfig", "Seq2SeqState", "Seq2Seq", "Encoder", "BahdanauDecoder", "LuongDecoder", "PlainDecoder", "gru_cell"]

ATTENTION_KINDS = ("none", "bahdanau", "luong")
LUONG_SCORES = ("dot", "general", "concat")
LUONG_MODES = ("global", "local-p")


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seq2SeqConfig:
    """Hyper-parameters of :class:`Seq2Seq`; validated on construction, vary with ``dataclasses.replace``.

    Args:
        src_vocab_size: source vocabulary size.
        tgt_vocab_size: target vocabulary size; ``None`` = one vocabulary shared with the source.
        emb_dim: word embedding size (encoder and decoder).
        hidden_dim: GRU size; the encoder is bidirectional, so its outputs have ``2 * hidden_dim`` features.
        num_layers: stacked GRU layers in the encoder and in the decoder.
        dropout: on embeddings, between GRU layers and before the output layer (training mode only).
        attention: ``"none"``, ``"bahdanau"`` or ``"luong"``.
        luong_score: ``"dot"``, ``"general"`` or ``"concat"`` (Luong eq. 8; used when ``attention="luong"``).
        luong_mode: ``"global"`` or ``"local-p"`` (Luong section 3.2).
        local_window: half-width ``D`` of the local-p window (``sigma = D / 2``).
        input_feeding: Luong's input feeding of :math:`\\tilde h_{t-1}` (section 3.3).
        tie_embeddings: share the decoder's input embedding with the output layer :cite:p:`press2017tying`;
            a bias-free projection maps the ``hidden_dim`` read-out to ``emb_dim`` first if they differ.
            The tied (and, with ``share_embeddings``, shared) table is initialised from
            :math:`\\mathcal N(0, 1/\\text{emb\\_dim})` instead of PyTorch's :math:`\\mathcal N(0, 1)`, so that
            a fresh model's logits are :math:`O(1)` and its loss starts near :math:`\\ln V` (the scale that
            :cite:t:`vaswani2017` imply by multiplying tied embeddings by :math:`\\sqrt{d}`).
        share_embeddings: encoder and decoder use one embedding table (needs a shared vocabulary).
        pad_id: the padding token id (its embedding is zero and receives no gradient).
    """

    src_vocab_size: int
    tgt_vocab_size: int | None = None
    emb_dim: int = 32
    hidden_dim: int = 64
    num_layers: int = 1
    dropout: float = 0.0
    attention: str = "bahdanau"
    luong_score: str = "general"
    luong_mode: str = "global"
    local_window: int = 5
    input_feeding: bool = True
    tie_embeddings: bool = False
    share_embeddings: bool = False
    pad_id: int = PAD_ID

    def __post_init__(self) -> None:
        for name in ("src_vocab_size", "emb_dim", "hidden_dim", "num_layers", "local_window"):
            check_count(f"Seq2SeqConfig.{name}", getattr(self, name))
        if self.tgt_vocab_size is not None and (
            not isinstance(self.tgt_vocab_size, int) or isinstance(self.tgt_vocab_size, bool) or self.tgt_vocab_size < 1
        ):
            raise ValueError(f"Seq2SeqConfig.tgt_vocab_size must be a positive int or None (shared vocabulary), got {self.tgt_vocab_size!r}")
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0):
            raise ValueError(f"Seq2SeqConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if self.attention not in ATTENTION_KINDS:
            raise ValueError(f"Seq2SeqConfig.attention must be one of {ATTENTION_KINDS}, got {self.attention!r}")
        if self.luong_score not in LUONG_SCORES:
            raise ValueError(f"Seq2SeqConfig.luong_score must be one of {LUONG_SCORES}, got {self.luong_score!r}")
        if self.luong_mode not in LUONG_MODES:
            raise ValueError(f"Seq2SeqConfig.luong_mode must be one of {LUONG_MODES}, got {self.luong_mode!r}")
        if not isinstance(self.pad_id, int) or not 0 <= self.pad_id < min(self.src_vocab_size, self.tgt_vocab):
            raise ValueError(f"Seq2SeqConfig.pad_id must be a token id of both vocabularies, got {self.pad_id!r}")
        if self.share_embeddings and self.tgt_vocab != self.src_vocab_size:
            raise ValueError(
                f"Seq2SeqConfig.share_embeddings=True needs one shared vocabulary, got src_vocab_size={self.src_vocab_size} "
                f"and tgt_vocab_size={self.tgt_vocab_size}; set tgt_vocab_size=None or share_embeddings=False"
            )

    @property
    def tgt_vocab(self) -> int:
        """The target vocabulary size (``src_vocab_size`` when the vocabulary is shared)."""
        return self.src_vocab_size if self.tgt_vocab_size is None else self.tgt_vocab_size

    @property
    def enc_dim(self) -> int:
        """Feature size of the encoder outputs, forward and backward states concatenated."""
        return 2 * self.hidden_dim


# --------------------------------------------------------------------------------------------
# Decoder state (what `encode` returns and `decode_step` carries forward)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seq2SeqState:
    """Everything a decoder needs between steps. Immutable: every step returns a new state.

    Attributes:
        hidden: decoder GRU state, ``(num_layers, B, H)``.
        memory: what attention reads, ``(B, S, D)``: the encoder outputs (``D = 2H``, Bahdanau) or their
            projection to ``H`` (Luong); zeros at padded positions.
        src_mask: ``(B, S)`` boolean, ``True`` = real source token (may be attended).
        src_lengths: ``(B,)`` number of real source tokens.
        feed: ``(B, F)`` or ``None``: the source summary :math:`c` (``attention="none"``, ``F = 2H``),
            the previous attentional state :math:`\\tilde h_{t-1}` (Luong with input feeding, ``F = H``),
            ``None`` otherwise.
        keys: ``(B, S, H)`` or ``None``: Bahdanau's key projection :math:`U \\bar h_s` of ``memory``, computed
            once per sentence in ``encode`` instead of at every decoder step (it does not depend on the step).
        step: number of target tokens consumed so far (an int, the same for every row).
    """

    hidden: Tensor
    memory: Tensor
    src_mask: Tensor
    src_lengths: Tensor
    feed: Tensor | None = None
    keys: Tensor | None = None
    step: int = 0

    def reorder(self, indices: Tensor) -> Seq2SeqState:
        """Select (and/or repeat) batch rows: row ``i`` of the result is row ``indices[i]`` of ``self``.

        Beam search uses it to expand each sentence to ``k`` beams (``indices = arange(B).repeat_interleave(k)``)
        and to follow the surviving hypotheses after each step.

        Shape:
            ``indices`` ``(B',)`` long -> a state with batch size ``B'``.
        """
        indices = indices.to(self.memory.device)
        return replace(
            self,
            hidden=self.hidden.index_select(1, indices),  # (L, B', H)
            memory=self.memory.index_select(0, indices),
            src_mask=self.src_mask.index_select(0, indices),
            src_lengths=self.src_lengths.index_select(0, indices),
            feed=None if self.feed is None else self.feed.index_select(0, indices),
            keys=None if self.keys is None else self.keys.index_select(0, indices),
        )

    @property
    def batch_size(self) -> int:
        return self.memory.shape[0]

    def __repr__(self) -> str:  # tensors would print in full
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            parts.append(f"{f.name}={tuple(value.shape)}" if isinstance(value, Tensor) else f"{f.name}={value!r}")
        return f"Seq2SeqState({', '.join(parts)})"


# --------------------------------------------------------------------------------------------
# One GRU step, written out (what torch.nn.GRU computes; the chapters' inline decoder steps use it)
# --------------------------------------------------------------------------------------------


def gru_cell(x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor) -> Tensor:
    """One step of a GRU :cite:p:`cho2014gru` in PyTorch's convention, with ``torch.nn.GRU``'s weights.

    .. math::
        r = \\sigma(W_r x + b_{ir} + U_r h + b_{hr}), \\quad z = \\sigma(W_z x + b_{iz} + U_z h + b_{hz}),

        n = \\tanh\\big(W_n x + b_{in} + r \\odot (U_n h + b_{hn})\\big), \\quad h' = (1 - z) \\odot n + z \\odot h

    ``w_ih`` and ``w_hh`` stack the gates' matrices as ``[r; z; n]`` (``nn.GRU``'s ``weight_ih_l0`` and
    ``weight_hh_l0``), ``b_ih`` and ``b_hh`` their biases. Teaching code: ``nn.GRU`` is the fast path.

    Shape:
        ``x`` ``(B, I)``, ``h`` ``(B, H)``, ``w_ih`` ``(3H, I)``, ``w_hh`` ``(3H, H)``, ``b_ih``/``b_hh`` ``(3H,)`` -> ``(B, H)``.
    """
    x_r, x_z, x_n = (x @ w_ih.T + b_ih).chunk(3, dim=-1)  # (B, H) each
    h_r, h_z, h_n = (h @ w_hh.T + b_hh).chunk(3, dim=-1)
    r = torch.sigmoid(x_r + h_r)  # reset gate
    z = torch.sigmoid(x_z + h_z)  # update gate
    n = torch.tanh(x_n + r * h_n)  # candidate state
    return (1 - z) * n + z * h


# --------------------------------------------------------------------------------------------
# Encoder
# --------------------------------------------------------------------------------------------


class Encoder(nn.Module):
    """Bidirectional GRU over packed sequences, so padding never affects any state.

    .. math:: \\bar h_s = [\\overrightarrow{h}_s; \\overleftarrow{h}_s]

    ``forward(src_emb, lengths)`` returns ``(outputs, final)``: ``outputs`` are zero at padded
    positions; ``final`` concatenates, per layer, the forward state after the last *real* token and
    the backward state after the first token. A row of length 0 (an empty sentence) gets zero
    outputs and a zero final state.

    Shape:
        ``src_emb`` ``(B, S, E)``, ``lengths`` ``(B,)`` -> ``outputs`` ``(B, S, 2H)``, ``final`` ``(num_layers, B, 2H)``.

    Reference: :cite:p:`bahdanau2015`, section 3.2.
    """

    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__()
        self.num_layers, self.hidden_dim = config.num_layers, config.hidden_dim
        self.rnn = nn.GRU(
            config.emb_dim,
            config.hidden_dim,
            num_layers=config.num_layers,
            batch_first=True,
            bidirectional=True,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
        )

    def forward(self, src_emb: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        B, S, _ = src_emb.shape
        # pack_padded_sequence rejects length 0: run empty rows on one (padding) step, then zero them.
        packed = pack_padded_sequence(src_emb, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        out_packed, h_n = self.rnn(packed)  # h_n: (num_layers * 2, B, H)
        outputs, _ = pad_packed_sequence(out_packed, batch_first=True, total_length=S)  # (B, S, 2H)
        nonempty = (lengths > 0).to(outputs.dtype)
        outputs = outputs * nonempty[:, None, None]
        h_n = h_n.view(self.num_layers, 2, B, self.hidden_dim)  # (L, direction, B, H)
        final = torch.cat([h_n[:, 0], h_n[:, 1]], dim=-1) * nonempty[None, :, None]  # (L, B, 2H)
        return outputs, final


# --------------------------------------------------------------------------------------------
# Decoders. Each has init_state(...), step(emb_t, state) and forward(emb, state); step returns
# (readout (B, H), attention (B, S), new state) and the model's output layer turns readouts into logits.
# --------------------------------------------------------------------------------------------


class _RecurrentDecoder(nn.Module):
    """Shared parts: the GRU, the bridge :math:`s_0 = \\tanh(W_b \\bar h_{\\mathrm{final}})` from the
    encoder's final state (one per layer), and the teacher-forcing loop over ``step``."""

    def __init__(self, config: Seq2SeqConfig, input_dim: int) -> None:
        super().__init__()
        self.config = config
        H = config.hidden_dim
        # Bridge: s_0 = tanh(W_b [h_fwd_last; h_bwd_first]), one per layer.
        self.bridge = nn.Linear(config.enc_dim, H)
        self.rnn = nn.GRU(
            input_dim, H, num_layers=config.num_layers, batch_first=True, dropout=config.dropout if config.num_layers > 1 else 0.0
        )

    def initial_hidden(self, final: Tensor) -> Tensor:
        return torch.tanh(self.bridge(final))  # (L, B, H)

    def step(self, emb_t: Tensor, state: Seq2SeqState) -> tuple[Tensor, Tensor, Seq2SeqState]:
        raise NotImplementedError

    def forward(self, emb: Tensor, state: Seq2SeqState) -> tuple[Tensor, Tensor, Seq2SeqState]:
        """Teacher forcing: run ``step`` over ``emb`` ``(B, T, E)`` -> readouts ``(B, T, H)``, attention ``(B, T, S)``."""
        readouts, attns = [], []
        for emb_t in emb.unbind(1):  # unbind, not emb[:, t]: its backward is one stack, not T zero-filled copies
            readout, attn, state = self.step(emb_t, state)
            readouts.append(readout)
            attns.append(attn)
        B, S = state.src_mask.shape
        if not readouts:  # T == 0
            return emb.new_zeros(B, 0, self.config.hidden_dim), emb.new_zeros(B, 0, S), state
        return torch.stack(readouts, 1), torch.stack(attns, 1), state


class PlainDecoder(_RecurrentDecoder):
    """Decoder without attention: one fixed summary :math:`c` of the source, fed at every step.

    .. math::
        s_t = \\mathrm{GRU}([e(y_{t-1}); c],\\, s_{t-1}), \\qquad
        o_t = \\tanh(W_o [s_t; c; e(y_{t-1})])

    with :math:`c` the encoder's final bidirectional state (top layer). The returned "attention" is
    all zeros, shape ``(B, S)`` per step: the model looks at no source position in particular.

    Shape:
        ``step``: ``emb_t`` ``(B, E)`` -> read-out ``(B, H)``, attention ``(B, S)``, new state;
        ``forward``: ``emb`` ``(B, T, E)`` -> read-outs ``(B, T, H)``, attention ``(B, T, S)``, final state.

    Reference: :cite:p:`cho2014gru`.
    """

    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__(config, config.emb_dim + config.enc_dim)
        self.readout = nn.Linear(config.hidden_dim + config.enc_dim + config.emb_dim, config.hidden_dim)

    def init_state(self, enc_out: Tensor, final: Tensor, src_mask: Tensor, lengths: Tensor) -> Seq2SeqState:
        return Seq2SeqState(self.initial_hidden(final), enc_out, src_mask, lengths, feed=final[-1])

    def step(self, emb_t: Tensor, state: Seq2SeqState) -> tuple[Tensor, Tensor, Seq2SeqState]:
        c = state.feed  # (B, 2H)
        assert c is not None
        out, hidden = self.rnn(torch.cat([emb_t, c], -1).unsqueeze(1), state.hidden)  # out: (B, 1, H)
        s_t = out.squeeze(1)
        readout = torch.tanh(self.readout(torch.cat([s_t, c, emb_t], -1)))  # (B, H)
        attn = torch.zeros_like(state.src_mask, dtype=readout.dtype)  # (B, S): no attention
        return readout, attn, replace(state, hidden=hidden, step=state.step + 1)


class BahdanauDecoder(_RecurrentDecoder):
    """Bahdanau attention: the previous state queries the source, the context enters the GRU input.

    .. math::
        e_{ts} = v^\\top \\tanh(W s_{t-1} + U \\bar h_s), \\quad
        \\alpha_{ts} = \\mathrm{softmax}_s(e_{ts}), \\quad
        c_t = \\sum_s \\alpha_{ts} \\bar h_s

        s_t = \\mathrm{GRU}([e(y_{t-1}); c_t],\\, s_{t-1}), \\qquad
        o_t = \\tanh(W_o [s_t; c_t; e(y_{t-1})])

    :math:`s_{t-1}` is the top GRU layer; padding gets weight 0. (The paper's maxout read-out is
    replaced by ``tanh``.) The keys :math:`U \\bar h_s` do not depend on :math:`t`: ``init_state`` computes
    them once per sentence (``state.keys``) and every step reuses them, which saves a
    ``(B, S, 2H) x (2H, H)`` product per step; :meth:`attend` is ``self.attention`` on those cached keys.

    Shape:
        ``step``: ``emb_t`` ``(B, E)`` -> read-out ``(B, H)``, attention ``(B, S)``, new state;
        ``forward``: ``emb`` ``(B, T, E)`` -> read-outs ``(B, T, H)``, attention ``(B, T, S)``, final state.

    Reference: :cite:p:`bahdanau2015`, section 3.1 and appendix A.
    """

    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__(config, config.emb_dim + config.enc_dim)
        self.attention = Attention(AdditiveScore(config.hidden_dim, config.enc_dim, config.hidden_dim))
        self.readout = nn.Linear(config.hidden_dim + config.enc_dim + config.emb_dim, config.hidden_dim)

    def init_state(self, enc_out: Tensor, final: Tensor, src_mask: Tensor, lengths: Tensor) -> Seq2SeqState:
        keys = self.attention.score.w_k(enc_out)  # (B, S, H): U h_s, once per sentence
        return Seq2SeqState(self.initial_hidden(final), enc_out, src_mask, lengths, keys=keys)

    def attend(self, query: Tensor, state: Seq2SeqState) -> tuple[Tensor, Tensor]:
        """Context and weights for queries ``query`` ``(B, H)`` from the cached keys; mask ``True`` = real token.

        Shape:
            ``query`` ``(B, H)`` -> ``context`` ``(B, 2H)``, ``weights`` ``(B, S)``.
        """
        score = self.attention.score
        assert state.keys is not None
        e = score.v(torch.tanh(score.w_q(query).unsqueeze(1) + state.keys)).squeeze(-1)  # (B, S): v^T tanh(W s + U h_s)
        weights = self.attention.dropout(_masked_softmax(e, state.src_mask))  # (B, S): inputs checked by encode
        return (weights.unsqueeze(1) @ state.memory).squeeze(1), weights  # (B, 2H), (B, S)

    def step(self, emb_t: Tensor, state: Seq2SeqState) -> tuple[Tensor, Tensor, Seq2SeqState]:
        c_t, attn = self.attend(state.hidden[-1], state)  # query s_{t-1}, top layer: (B, 2H), (B, S)
        out, hidden = self.rnn(torch.cat([emb_t, c_t], -1).unsqueeze(1), state.hidden)  # (B, 1, H)
        s_t = out.squeeze(1)
        readout = torch.tanh(self.readout(torch.cat([s_t, c_t, emb_t], -1)))  # (B, H)
        return readout, attn, replace(state, hidden=hidden, step=state.step + 1)


class LuongDecoder(_RecurrentDecoder):
    """Luong attention: the current state queries the source; an attentional state predicts the word.

    .. math::
        h_t = \\mathrm{GRU}([e(y_{t-1}); \\tilde h_{t-1}],\\, h_{t-1}), \\quad
        c_t = \\sum_s \\alpha_{ts} \\bar m_s, \\quad
        \\tilde h_t = \\tanh(W_c [c_t; h_t])

    with :math:`\\alpha_t = \\mathrm{softmax}(\\mathrm{score}(h_t, \\bar m_s))` (``global``) or the local-p
    weights (Gaussian-damped softmax in a window around a predicted centre :math:`p_t`; their rows sum to
    *at most* 1). :math:`\\bar m_s = W_m \\bar h_s` projects the bidirectional encoder outputs to
    ``hidden_dim`` so that the ``dot`` score is defined. Without input feeding the GRU input is
    :math:`e(y_{t-1})` only, and teacher forcing runs the GRU and the attention over all steps at once.

    Shape:
        ``step``: ``emb_t`` ``(B, E)`` -> read-out ``(B, H)``, attention ``(B, S)``, new state;
        ``forward``: ``emb`` ``(B, T, E)`` -> read-outs ``(B, T, H)``, attention ``(B, T, S)``, final state.

    Reference: :cite:p:`luong2015`, sections 3.1-3.3.
    """

    def __init__(self, config: Seq2SeqConfig) -> None:
        H = config.hidden_dim
        super().__init__(config, config.emb_dim + (H if config.input_feeding else 0))
        self.memory_proj = nn.Linear(config.enc_dim, H, bias=False)
        if config.luong_mode == "local-p":
            self.attention: nn.Module = LocalPAttention(H, H, config.local_window, score=config.luong_score)
        else:
            score = {"dot": DotProductScore, "general": lambda: GeneralScore(H, H), "concat": lambda: AdditiveScore(H, H, H)}
            self.attention = Attention(score[config.luong_score]())
        self.w_c = nn.Linear(2 * H, H, bias=False)

    def init_state(self, enc_out: Tensor, final: Tensor, src_mask: Tensor, lengths: Tensor) -> Seq2SeqState:
        memory = self.memory_proj(enc_out)  # (B, S, H)
        hidden = self.initial_hidden(final)
        feed = hidden.new_zeros(hidden.shape[1:]) if self.config.input_feeding else None  # h~_0 = 0
        return Seq2SeqState(hidden, memory, src_mask, lengths, feed=feed)

    def attend(self, h: Tensor, state: Seq2SeqState) -> tuple[Tensor, Tensor]:
        """Attentional states for queries ``h`` ``(B, T, H)`` -> ``(h_tilde (B, T, H), weights (B, T, S))``."""
        mask = state.src_mask[:, None, :]  # (B, 1, S), True = real source token
        if isinstance(self.attention, LocalPAttention):
            # An empty source has no centre to predict; clamp its length to 1, the mask still hides everything.
            # The mask and lengths were checked by encode (left-aligned, so the mask is the padding mask):
            # the unchecked call keeps each step free of host synchronisation.
            lengths = state.src_lengths.clamp(min=1)
            context, weights = self.attention.attend(h, state.memory, state.memory, mask, lengths)
        else:
            context, weights = self.attention(h, state.memory, state.memory, mask)
        return torch.tanh(self.w_c(torch.cat([context, h], -1))), weights  # (B, T, H), (B, T, S)

    def step(self, emb_t: Tensor, state: Seq2SeqState) -> tuple[Tensor, Tensor, Seq2SeqState]:
        x = emb_t if state.feed is None else torch.cat([emb_t, state.feed], -1)
        out, hidden = self.rnn(x.unsqueeze(1), state.hidden)  # out: (B, 1, H) = h_t
        h_tilde, attn = self.attend(out, state)  # (B, 1, H), (B, 1, S)
        h_tilde = h_tilde.squeeze(1)
        feed = h_tilde if self.config.input_feeding else None
        return h_tilde, attn.squeeze(1), replace(state, hidden=hidden, feed=feed, step=state.step + 1)

    def forward(self, emb: Tensor, state: Seq2SeqState) -> tuple[Tensor, Tensor, Seq2SeqState]:
        if self.config.input_feeding or emb.shape[1] == 0:
            return super().forward(emb, state)
        # Without input feeding nothing flows from attention back into the GRU: run it over all steps at once.
        out, hidden = self.rnn(emb, state.hidden)  # (B, T, H)
        h_tilde, attn = self.attend(out, state)
        return h_tilde, attn, replace(state, hidden=hidden, step=state.step + emb.shape[1])


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


class Seq2Seq(nn.Module):
    """Recurrent encoder-decoder with no, Bahdanau or Luong attention (see :class:`Seq2SeqConfig`).

    .. math:: p(y_t \\mid y_{<t}, x) = \\mathrm{softmax}(W_s\\, o_t + b_s)

    where :math:`o_t` is the decoder's read-out (Bahdanau, no attention) or attentional state
    :math:`\\tilde h_t` (Luong).

    * ``forward(src, src_mask, tgt_in, tgt_mask, return_attention=False)``: teacher forcing, returns
      logits ``(B, T, V)``, or ``(logits, attention (B, T, S))`` with ``return_attention=True``.
      ``tgt_mask`` is checked but not needed: the decoder reads left to right, so padding at the end
      of ``tgt_in`` cannot change the logits of real positions; the loss must ignore padded positions.
    * ``encode(src, src_mask) -> Seq2SeqState`` and
      ``decode_step(state, prev_tokens) -> (log_probs (B, V), new_state, attention (B, S))`` for
      :mod:`attn_tutorial.decoding`.

    Attention rows sum to 1 over the real source tokens for global attention, to at most 1 for
    local-p, and are all zeros for ``attention="none"`` (no attention; also for an empty source).
    A source batch with ``S == 0`` columns is padded to one padding column (so attention is ``(.., 1)``).
    Masks are boolean, ``True`` = real token (may be attended), padding at the end of each row.

    Shape:
        ``src`` ``(B, S)`` long, ``src_mask`` ``(B, S)`` bool, ``tgt_in`` ``(B, T)`` long, ``tgt_mask``
        ``(B, T)`` bool -> logits ``(B, T, V)``, attention ``(B, T, S)``.

    Reference: :cite:p:`bahdanau2015,luong2015`.
    """

    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__()
        if not isinstance(config, Seq2SeqConfig):
            raise TypeError(f"config must be a Seq2SeqConfig, got {type(config).__name__}")
        self.config = c = config
        self.src_embed = nn.Embedding(c.src_vocab_size, c.emb_dim, padding_idx=c.pad_id)
        self.tgt_embed = self.src_embed if c.share_embeddings else nn.Embedding(c.tgt_vocab, c.emb_dim, padding_idx=c.pad_id)
        self.dropout = nn.Dropout(c.dropout)
        self.encoder = Encoder(c)
        decoder_cls = {"none": PlainDecoder, "bahdanau": BahdanauDecoder, "luong": LuongDecoder}[c.attention]
        self.decoder: _RecurrentDecoder = decoder_cls(c)
        # Output layer: logits = W_s o_t + b; with tied embeddings W_s is the target embedding table.
        if c.tie_embeddings and c.hidden_dim != c.emb_dim:
            self.pre_output: nn.Module = nn.Linear(c.hidden_dim, c.emb_dim, bias=False)
        else:
            self.pre_output = nn.Identity()
        self.generator = nn.Linear(c.emb_dim if c.tie_embeddings else c.hidden_dim, c.tgt_vocab)
        if c.tie_embeddings:
            self.generator.weight = self.tgt_embed.weight
            _init_embedding(self.tgt_embed, c.pad_id)  # a fresh model's loss starts near ln V, the uniform guess

    # ---- the decoding protocol ----------------------------------------------------------------

    def encode(self, src: Tensor, src_mask: Tensor) -> Seq2SeqState:
        """Run the encoder and build the decoder's initial state. ``src_mask``: ``True`` = real token.

        Shape:
            ``src`` ``(B, S)`` long, ``src_mask`` ``(B, S)`` bool -> a :class:`Seq2SeqState` of batch ``B``.
        """
        check_tokens("src", src, self.config.src_vocab_size)
        lengths = check_token_mask("src_mask", src_mask, src, "src", left_aligned=True)
        src, src_mask = pad_empty_source(src, src_mask, self.config.pad_id)
        emb = self.dropout(self.src_embed(src))  # (B, S, E)
        enc_out, final = self.encoder(emb, lengths)  # (B, S, 2H), (L, B, 2H)
        return self.decoder.init_state(enc_out, final, src_mask, lengths)

    def decode_step(self, state: Seq2SeqState, prev_tokens: Tensor) -> tuple[Tensor, Seq2SeqState, Tensor]:
        """One decoder step: feed ``prev_tokens`` (BOS at the start), get the next token's log-probabilities.

        Shape:
            ``prev_tokens`` ``(B,)`` long -> ``log_probs`` ``(B, V)``, new state, attention ``(B, S)``.
        """
        check_prev_tokens(prev_tokens, state.batch_size)
        emb_t = self.dropout(self.tgt_embed(prev_tokens))  # (B, E)
        readout, attn, state = self.decoder.step(emb_t, state)
        logits = self.generator(self.pre_output(self.dropout(readout)))  # (B, V)
        return F.log_softmax(logits, dim=-1), state, attn

    # ---- teacher forcing ----------------------------------------------------------------------

    #: ``forward`` takes ``logits_mask`` (see :func:`~attn_tutorial.losses.token_cross_entropy`).
    accepts_logits_mask = True

    def forward(
        self,
        src: Tensor,
        src_mask: Tensor,
        tgt_in: Tensor,
        tgt_mask: Tensor,
        return_attention: bool = False,
        logits_mask: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Teacher-forced logits (see the class docstring). Masks: ``True`` = real token.

        ``logits_mask`` ``(B, T)`` bool: compute the output layer only where it is ``True`` and return
        those logits flattened, ``(N, V)`` with ``N = logits_mask.sum()``, in row-major order. The
        output layer is about a third of a training step; padding is a fifth of the positions.

        Shape:
            ``src``/``src_mask`` ``(B, S)``, ``tgt_in``/``tgt_mask`` ``(B, T)`` -> logits ``(B, T, V)``
            (or ``(N, V)`` with ``logits_mask``) [, attention ``(B, T, S)``].
        """
        state = self.encode(src, src_mask)
        check_tokens("tgt_in", tgt_in, self.config.tgt_vocab, batch=src.shape[0])
        check_token_mask("tgt_mask", tgt_mask, tgt_in, "tgt_in", left_aligned=True)
        emb = self.dropout(self.tgt_embed(tgt_in))  # (B, T, E)
        readouts, attn, _ = self.decoder(emb, state)  # (B, T, H), (B, T, S)
        readouts = select_positions(readouts, logits_mask, tgt_in)  # (N, H) with a logits_mask
        logits = self.generator(self.pre_output(self.dropout(readouts)))  # (B, T, V)
        return (logits, attn) if return_attention else logits

    def num_parameters(self) -> int:
        """Number of distinct trainable parameters (tied weights counted once)."""
        return num_parameters(self)
