"""The encoder-decoder Transformer, built from this package's multi-head attention and positions.

.. math::
    \\text{pre-norm:}\\;\\; x \\leftarrow x + \\mathrm{Sublayer}(\\mathrm{LN}(x)), \\qquad
    \\text{post-norm:}\\;\\; x \\leftarrow \\mathrm{LN}(x + \\mathrm{Sublayer}(x))

An encoder layer has two sublayers (self-attention, feed-forward
:math:`\\mathrm{FFN}(x) = W_2\\, \\mathrm{act}(W_1 x + b_1) + b_2`); a decoder layer three (causal
self-attention, cross-attention to the encoder output, feed-forward). Token embeddings are multiplied
by :math:`\\sqrt{d_\\text{model}}` before positions are added :cite:p:`vaswani2017`.

*Post-norm* is the original arrangement of :cite:p:`vaswani2017`; it needs a learning-rate warmup
because at initialisation the gradients near the output are large. *Pre-norm* puts the layer norm
inside the residual branch, so the residual path is an identity from input to output and training is
stable with less warmup; it then needs one final layer norm after the last layer of each stack
:cite:p:`xiong2020prenorm`.

``positions``: ``"sinusoidal"`` (added to the embeddings), ``"learned"`` (added; cannot go beyond
``max_len``) or ``"rope"`` (no vector added; queries and keys of every *self*-attention are rotated by
their positions, :func:`~attn_tutorial.positional.apply_rope`; cross-attention is left unrotated, since
source and target positions are not on one axis).

Incremental decoding (:meth:`Transformer.encode` / :meth:`Transformer.decode_step`, the protocol of
:mod:`attn_tutorial.decoding`) keeps a key/value cache: each decoder layer stores the keys and values of
the tokens generated so far, and the cross-attention keys and values of the source are projected once
in :meth:`~Transformer.encode`. A step then costs one query against the cache instead of re-running the
decoder over the whole prefix; the outputs equal full recomputation (tested).

Masks are boolean, ``True`` = real token (may be attended). Batch first; attention maps are
``(B, H, Lq, Lk)``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import fused_attention, scaled_dot_product_attention, select_positions
from .efficient import append_kv, reorder_kv
from .multihead import MultiHeadAttention
from .positional import LearnedPositionalEmbedding, SinusoidalPositionalEncoding, apply_rope

__all__ = ["TransformerConfig", "TransformerState", "AttentionMaps", "EncoderLayer", "DecoderLayer", "Transformer"]

_POSITIONS = ("sinusoidal", "learned", "rope")
_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}


@dataclass(frozen=True)
class TransformerConfig:
    """Hyper-parameters of :class:`Transformer`.

    Args:
        src_vocab_size: source vocabulary (the joint vocabulary when ``share_embeddings``).
        tgt_vocab_size: target vocabulary; ``None`` = ``src_vocab_size``.
        d_model, num_heads, d_ff: model width, heads (must divide ``d_model``), feed-forward width.
        num_encoder_layers, num_decoder_layers: depth of each stack.
        dropout: on the embeddings+positions, after every sublayer and inside the feed-forward.
        attn_dropout: on the attention weights.
        activation: ``"relu"`` (the paper) or ``"gelu"``.
        norm_first: pre-norm (``True``) or post-norm (``False``, the paper), see the module docstring.
        positions: ``"sinusoidal"``, ``"learned"`` or ``"rope"``.
        max_len: longest sequence the position table covers (learned positions cannot go beyond it).
        share_embeddings: one embedding table for source and target (joint vocabulary).
        tie_embeddings: the output layer reuses the target embedding table :cite:p:`press2017tying`.
        pad_id: padding id (its embedding row stays zero).
    """

    src_vocab_size: int
    tgt_vocab_size: int | None = None
    d_model: int = 256
    num_heads: int = 4
    num_encoder_layers: int = 3
    num_decoder_layers: int = 3
    d_ff: int = 1024
    dropout: float = 0.1
    attn_dropout: float = 0.0
    activation: str = "relu"
    norm_first: bool = True
    positions: str = "sinusoidal"
    max_len: int = 256
    share_embeddings: bool = True
    tie_embeddings: bool = True
    pad_id: int = 0

    def __post_init__(self) -> None:
        for name in ("src_vocab_size", "d_model", "num_heads", "d_ff", "max_len"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"TransformerConfig.{name} must be a positive int, got {v!r}")
        for name in ("num_encoder_layers", "num_decoder_layers"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"TransformerConfig.{name} must be an int >= 0, got {v!r}")
        if self.tgt_vocab_size is not None and (not isinstance(self.tgt_vocab_size, int) or self.tgt_vocab_size < 1):
            raise ValueError(f"TransformerConfig.tgt_vocab_size must be a positive int or None, got {self.tgt_vocab_size!r}")
        if self.d_model % self.num_heads:
            raise ValueError(f"TransformerConfig: d_model={self.d_model} is not divisible by num_heads={self.num_heads}")
        if self.positions == "rope" and (self.d_model // self.num_heads) % 2:
            raise ValueError(f"TransformerConfig: positions='rope' needs an even head size, got d_model/num_heads = {self.d_model // self.num_heads}")
        for name in ("dropout", "attn_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"TransformerConfig.{name} must be in [0, 1), got {getattr(self, name)!r}")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"TransformerConfig.activation must be one of {tuple(_ACTIVATIONS)}, got {self.activation!r}")
        if self.positions not in _POSITIONS:
            raise ValueError(f"TransformerConfig.positions must be one of {_POSITIONS}, got {self.positions!r}")
        if self.share_embeddings and self.tgt_vocab_size not in (None, self.src_vocab_size):
            raise ValueError("TransformerConfig: share_embeddings needs tgt_vocab_size None or equal to src_vocab_size")
        if not 0 <= self.pad_id < min(self.src_vocab_size, self.tgt_vocab):
            raise ValueError(f"TransformerConfig.pad_id must be a valid id, got {self.pad_id!r}")

    @property
    def tgt_vocab(self) -> int:
        return self.src_vocab_size if self.tgt_vocab_size is None else self.tgt_vocab_size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------
# Attention through the package's MultiHeadAttention, with positions and a cache
# --------------------------------------------------------------------------------------------


def _heads(mha: MultiHeadAttention, proj: nn.Linear, x: Tensor) -> Tensor:
    """Project ``x`` ``(B, L, E)`` with ``proj`` and split heads -> ``(B, H, L, Dh)``."""
    return mha._split_heads(proj(x))


def _attend(
    mha: MultiHeadAttention, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, need_weights: bool, is_causal: bool = False
) -> tuple[Tensor, Tensor | None]:
    """Heads ``q`` ``(B, H, Lq, Dh)``, ``k``/``v`` ``(B, H, Lk, Dh)`` -> ``(out (B, Lq, E), weights (B, H, Lq, Lk) or None)``."""
    p = mha.dropout if mha.training else 0.0
    attend = scaled_dot_product_attention if need_weights else fused_attention
    out, w = attend(q, k, v, mask, dropout_p=p, is_causal=is_causal)
    B, _, Lq, _ = q.shape
    return mha.out_proj(out.transpose(1, 2).reshape(B, Lq, mha.embed_dim)), w


def _self_attention(
    mha: MultiHeadAttention, x: Tensor, mask: Tensor | None, need_weights: bool, rope: bool, is_causal: bool = False
) -> tuple[Tensor, Tensor | None]:
    """Self-attention of ``x`` ``(B, L, E)``; with ``rope`` queries and keys are rotated by position."""
    if not rope:  # exactly the package's module
        return mha(x, x, x, mask, need_weights=need_weights, average_attn_weights=False, is_causal=is_causal)
    q, k, v = (_heads(mha, p, x) for p in (mha.q_proj, mha.k_proj, mha.v_proj))
    return _attend(mha, apply_rope(q), apply_rope(k), v, mask, need_weights, is_causal)


# --------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------


class _FeedForward(nn.Module):
    """:math:`W_2\\, \\mathrm{dropout}(\\mathrm{act}(W_1 x + b_1)) + b_2`. Shape: ``(..., d_model)`` -> same."""

    def __init__(self, c: TransformerConfig) -> None:
        super().__init__()
        self.w1, self.w2 = nn.Linear(c.d_model, c.d_ff), nn.Linear(c.d_ff, c.d_model)
        self.act, self.dropout = _ACTIVATIONS[c.activation], nn.Dropout(c.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(self.dropout(self.act(self.w1(x))))


class EncoderLayer(nn.Module):
    """Self-attention then feed-forward, each in a residual block (pre- or post-norm).

    Shape:
        ``x`` ``(B, S, d_model)``, ``mask`` broadcastable to ``(B, H, S, S)`` (True = may attend)
        -> ``(x (B, S, d_model), weights (B, H, S, S) or None)``.
    """

    def __init__(self, c: TransformerConfig) -> None:
        super().__init__()
        self.c = c
        self.self_attn = MultiHeadAttention(c.d_model, c.num_heads, dropout=c.attn_dropout)
        self.ff = _FeedForward(c)
        self.norm1, self.norm2 = nn.LayerNorm(c.d_model), nn.LayerNorm(c.d_model)
        self.dropout = nn.Dropout(c.dropout)

    def forward(self, x: Tensor, mask: Tensor | None, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        rope = self.c.positions == "rope"
        if self.c.norm_first:
            a, w = _self_attention(self.self_attn, self.norm1(x), mask, need_weights, rope)
            x = x + self.dropout(a)
            return x + self.dropout(self.ff(self.norm2(x))), w
        a, w = _self_attention(self.self_attn, x, mask, need_weights, rope)
        x = self.norm1(x + self.dropout(a))
        return self.norm2(x + self.dropout(self.ff(x))), w


class DecoderLayer(nn.Module):
    """Causal self-attention, cross-attention to the encoder output, feed-forward; residual blocks.

    ``forward`` runs teacher forcing over a whole target prefix; ``step`` runs one new position against a
    key/value cache (see :class:`TransformerState`).

    Shape:
        ``x`` ``(B, T, d_model)``, ``memory`` ``(B, S, d_model)``, ``memory_mask`` broadcastable to
        ``(B, H, T, S)`` -> ``(x, self weights (B, H, T, T) or None, cross weights (B, H, T, S) or None)``.
    """

    def __init__(self, c: TransformerConfig) -> None:
        super().__init__()
        self.c = c
        self.self_attn = MultiHeadAttention(c.d_model, c.num_heads, dropout=c.attn_dropout)
        self.cross_attn = MultiHeadAttention(c.d_model, c.num_heads, dropout=c.attn_dropout)
        self.ff = _FeedForward(c)
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(c.d_model) for _ in range(3))
        self.dropout = nn.Dropout(c.dropout)

    def _cross(self, x: Tensor, memory: Tensor, memory_mask: Tensor | None, need_weights: bool) -> tuple[Tensor, Tensor | None]:
        return self.cross_attn(x, memory, memory, memory_mask, need_weights=need_weights, average_attn_weights=False)

    def forward(
        self, x: Tensor, memory: Tensor, memory_mask: Tensor | None, need_weights: bool = False
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        rope = self.c.positions == "rope"
        if self.c.norm_first:
            a, ws = _self_attention(self.self_attn, self.norm1(x), None, need_weights, rope, is_causal=True)
            x = x + self.dropout(a)
            a, wc = self._cross(self.norm2(x), memory, memory_mask, need_weights)
            x = x + self.dropout(a)
            return x + self.dropout(self.ff(self.norm3(x))), ws, wc
        a, ws = _self_attention(self.self_attn, x, None, need_weights, rope, is_causal=True)
        x = self.norm1(x + self.dropout(a))
        a, wc = self._cross(x, memory, memory_mask, need_weights)
        x = self.norm2(x + self.dropout(a))
        return self.norm3(x + self.dropout(self.ff(x))), ws, wc

    def step(
        self, x: Tensor, cache: tuple[Tensor, Tensor] | None, cross_kv: tuple[Tensor, Tensor], memory_mask: Tensor,
        position: int,
    ) -> tuple[Tensor, tuple[Tensor, Tensor], Tensor]:
        """One new position ``x`` ``(B, 1, d_model)``; ``cache`` = keys/values ``(B, H, t, Dh)`` of the
        earlier positions (``None`` at the first step), ``cross_kv`` the source's projected keys/values.

        Returns ``(x (B, 1, d_model), new cache (B, H, t + 1, Dh) each, cross weights (B, H, 1, S))``.
        """
        rope = self.c.positions == "rope"
        h = self.norm1(x) if self.c.norm_first else x
        sa = self.self_attn
        q, k, v = (_heads(sa, p, h) for p in (sa.q_proj, sa.k_proj, sa.v_proj))  # (B, H, 1, Dh)
        if rope:
            pos = torch.tensor([position], device=x.device)
            q, k = apply_rope(q, pos), apply_rope(k, pos)
        k, v = append_kv(cache, k, v)  # (B, H, t + 1, Dh)
        a, _ = _attend(sa, q, k, v, None, need_weights=False)  # the new position may see every cached one
        x = x + self.dropout(a) if self.c.norm_first else self.norm1(x + self.dropout(a))
        h = self.norm2(x) if self.c.norm_first else x
        ca = self.cross_attn
        a, wc = _attend(ca, _heads(ca, ca.q_proj, h), cross_kv[0], cross_kv[1], memory_mask, need_weights=True)
        x = x + self.dropout(a) if self.c.norm_first else self.norm2(x + self.dropout(a))
        x = x + self.dropout(self.ff(self.norm3(x))) if self.c.norm_first else self.norm3(x + self.dropout(self.ff(x)))
        assert wc is not None
        return x, (k, v), wc


# --------------------------------------------------------------------------------------------
# Decoding state and attention maps
# --------------------------------------------------------------------------------------------


@dataclass
class TransformerState:
    """What :meth:`Transformer.decode_step` carries between steps.

    * ``memory`` ``(B, S, d_model)``: the encoder output; ``src_mask`` ``(B, S)`` bool, True = real token;
    * ``cross_kv``: per decoder layer, the source's keys and values ``(B, H, S, Dh)``, projected once;
    * ``cache``: per decoder layer, keys and values ``(B, H, t, Dh)`` of the ``t = step`` tokens fed so
      far (``None`` before the first step), grown with :func:`~attn_tutorial.efficient.append_kv`;
    * ``prefix`` ``(B, t)``: the tokens fed so far, kept instead of the cache when the model's
      ``use_kv_cache`` is ``False`` (``None`` otherwise).
    """

    memory: Tensor
    src_mask: Tensor
    cross_kv: list[tuple[Tensor, Tensor]]
    cache: list[tuple[Tensor, Tensor] | None]
    step: int = 0
    prefix: Tensor | None = None

    def reorder(self, indices: Tensor) -> TransformerState:
        """Row ``i`` of the result is row ``indices[i]`` of ``self``."""
        pick = lambda t: t.index_select(0, indices)  # noqa: E731
        return TransformerState(
            pick(self.memory),
            pick(self.src_mask),
            [(pick(k), pick(v)) for k, v in self.cross_kv],
            [reorder_kv(c, indices) for c in self.cache],
            self.step,
            None if self.prefix is None else pick(self.prefix),
        )

    @property
    def batch_size(self) -> int:
        return self.memory.shape[0]

    def __repr__(self) -> str:
        return f"TransformerState(batch={self.batch_size}, src_len={self.memory.shape[1]}, step={self.step})"


@dataclass
class AttentionMaps:
    """Every attention map of one teacher-forced forward pass, one tensor per layer, heads kept.

    Shape:
        ``encoder_self[l]`` ``(B, H, S, S)``, ``decoder_self[l]`` ``(B, H, T, T)``,
        ``cross[l]`` ``(B, H, T, S)``.
    """

    encoder_self: list[Tensor] = field(default_factory=list)
    decoder_self: list[Tensor] = field(default_factory=list)
    cross: list[Tensor] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


class Transformer(nn.Module):
    """Encoder-decoder Transformer for translation (see the module docstring and :class:`TransformerConfig`).

    .. math:: p(y_t \\mid y_{<t}, x) = \\mathrm{softmax}(W_s\\, z_t + b_s)

    where :math:`z_t` is the last decoder layer's output (after the final layer norm with pre-norm).

    * ``forward(src, src_mask, tgt_in, tgt_mask, return_attention=False, logits_mask=None)``: teacher
      forcing, logits ``(B, T, V)``; with ``return_attention=True`` returns ``(logits, maps)`` where
      ``maps`` is an :class:`AttentionMaps` with every self- and cross-attention map; with
      ``logits_mask`` ``(B, T)`` bool only those positions' logits, ``(N, V)``.
    * ``encode`` / ``decode_step``: the incremental protocol of :mod:`attn_tutorial.decoding`, with a
      key/value cache; ``decode_step`` returns the last layer's cross-attention averaged over heads.
    * ``decode_step_uncached``: the same step recomputed from the whole prefix (for tests and timing).
    * ``use_kv_cache`` (attribute, default ``True``): set it to ``False`` and ``decode_step`` keeps the
      fed tokens instead of keys and values and re-runs the decoder over the whole prefix at every step
      (the encoder output is still computed once); ``attn-tutorial translate --no-kv-cache`` does this.

    Shape:
        ``src``/``src_mask`` ``(B, S)``, ``tgt_in``/``tgt_mask`` ``(B, T)`` -> logits ``(B, T, V)``.

    Reference: :cite:p:`vaswani2017`.
    """

    accepts_logits_mask = True
    use_kv_cache = True

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        if not isinstance(config, TransformerConfig):
            raise TypeError(f"config must be a TransformerConfig, got {type(config).__name__}")
        self.config = c = config
        self.src_embed = nn.Embedding(c.src_vocab_size, c.d_model, padding_idx=c.pad_id)
        self.tgt_embed = self.src_embed if c.share_embeddings else nn.Embedding(c.tgt_vocab, c.d_model, padding_idx=c.pad_id)
        for emb in {id(self.src_embed): self.src_embed, id(self.tgt_embed): self.tgt_embed}.values():
            # std d^-1/2, so that sqrt(d) * embedding has unit-size entries and tied logits start O(1).
            nn.init.normal_(emb.weight, std=c.d_model**-0.5)
            with torch.no_grad():
                emb.weight[c.pad_id].zero_()
        self.positions: nn.Module
        if c.positions == "sinusoidal":
            self.positions = SinusoidalPositionalEncoding(c.d_model, c.max_len)
        elif c.positions == "learned":
            self.positions = LearnedPositionalEmbedding(c.max_len, c.d_model)
        else:
            self.positions = nn.Identity()
        self.dropout = nn.Dropout(c.dropout)
        self.encoder_layers = nn.ModuleList(EncoderLayer(c) for _ in range(c.num_encoder_layers))
        self.decoder_layers = nn.ModuleList(DecoderLayer(c) for _ in range(c.num_decoder_layers))
        final = (lambda: nn.LayerNorm(c.d_model)) if c.norm_first else nn.Identity
        self.encoder_norm, self.decoder_norm = final(), final()
        self.generator = nn.Linear(c.d_model, c.tgt_vocab)
        if c.tie_embeddings:
            self.generator.weight = self.tgt_embed.weight

    # ---- pieces ---------------------------------------------------------------------------------

    def _embed(self, emb: nn.Embedding, tokens: Tensor, offset: int = 0) -> Tensor:
        x = emb(tokens) * math.sqrt(self.config.d_model)  # (B, L, d)
        if self.config.positions != "rope":
            x = self.positions(x, offset=offset)
        return self.dropout(x)

    def _check(self, src: Tensor, src_mask: Tensor, name: str = "src") -> None:
        if not isinstance(src, Tensor) or src.dim() != 2 or src.dtype != torch.long:
            raise ValueError(f"{name} must be a (B, L) torch.long tensor of token ids, got {src!r:.80}")
        if not isinstance(src_mask, Tensor) or src_mask.dtype != torch.bool or src_mask.shape != src.shape:
            what = f"shape {tuple(src_mask.shape)} and dtype {src_mask.dtype}" if isinstance(src_mask, Tensor) else type(src_mask).__name__
            raise ValueError(f"{name}_mask must be a bool tensor of shape {tuple(src.shape)} (as {name}), True = real token; got {what}")
        vocab = self.config.src_vocab_size if name == "src" else self.config.tgt_vocab
        if src.numel() and (int(src.min()) < 0 or int(src.max()) >= vocab):
            raise ValueError(f"{name} holds ids in [{int(src.min())}, {int(src.max())}]; expected ids in [0, {vocab}) (vocabulary size)")
        if src.shape[1] > self.config.max_len and self.config.positions == "learned":
            raise ValueError(f"{name} has length {src.shape[1]} > max_len={self.config.max_len}: learned positions cannot go further")

    def _pad_empty(self, src: Tensor, src_mask: Tensor) -> tuple[Tensor, Tensor]:
        """A batch with no source column gets one padding column (masked: attention to it gives zeros)."""
        if src.shape[1] == 0:
            return src.new_full((src.shape[0], 1), self.config.pad_id), src_mask.new_zeros(src.shape[0], 1)
        return src, src_mask

    def _encode(self, src: Tensor, src_mask: Tensor, need_weights: bool) -> tuple[Tensor, list[Tensor]]:
        x = self._embed(self.src_embed, src)
        mask = src_mask[:, None, None, :]  # (B, 1, 1, S): keys that may be attended
        maps = []
        for layer in self.encoder_layers:
            x, w = layer(x, mask, need_weights)
            if w is not None:
                maps.append(w)
        return self.encoder_norm(x), maps

    # ---- teacher forcing ------------------------------------------------------------------------

    def forward(
        self,
        src: Tensor,
        src_mask: Tensor,
        tgt_in: Tensor,
        tgt_mask: Tensor,
        return_attention: bool = False,
        logits_mask: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, AttentionMaps]:
        """Teacher-forced logits; masks ``True`` = real token (see the class docstring).

        ``tgt_mask`` is checked but not needed: with the causal mask, padding at the end of ``tgt_in``
        cannot change the real positions' logits.

        Shape:
            ``src``/``src_mask`` ``(B, S)``, ``tgt_in``/``tgt_mask`` ``(B, T)`` -> logits ``(B, T, V)``
            (``(N, V)`` with ``logits_mask``) [, :class:`AttentionMaps`].
        """
        self._check(src, src_mask, "src")
        self._check(tgt_in, tgt_mask, "tgt")
        if tgt_in.shape[0] != src.shape[0]:
            raise ValueError(f"tgt_in has shape {tuple(tgt_in.shape)}; expected batch size {src.shape[0]} (as src)")
        src, src_mask = self._pad_empty(src, src_mask)
        maps = AttentionMaps()
        memory, maps.encoder_self = self._encode(src, src_mask, return_attention)
        x = self._embed(self.tgt_embed, tgt_in)
        memory_mask = src_mask[:, None, None, :]
        for layer in self.decoder_layers:
            x, ws, wc = layer(x, memory, memory_mask, return_attention)
            if return_attention:
                maps.decoder_self.append(ws)
                maps.cross.append(wc)
        x = self.decoder_norm(x)  # (B, T, d)
        x = select_positions(x, logits_mask, tgt_in)  # (N, d) with a logits_mask
        logits = self.generator(x)
        return (logits, maps) if return_attention else logits

    # ---- incremental decoding -------------------------------------------------------------------

    def encode(self, src: Tensor, src_mask: Tensor) -> TransformerState:
        """Encoder output and each decoder layer's cross-attention keys/values, projected once.

        Shape:
            ``src`` ``(B, S)`` long, ``src_mask`` ``(B, S)`` bool -> a :class:`TransformerState` of batch ``B``.
        """
        self._check(src, src_mask, "src")
        src, src_mask = self._pad_empty(src, src_mask)
        memory, _ = self._encode(src, src_mask, need_weights=False)
        cross_kv = [
            (_heads(l.cross_attn, l.cross_attn.k_proj, memory), _heads(l.cross_attn, l.cross_attn.v_proj, memory))
            for l in self.decoder_layers
        ]
        return TransformerState(memory, src_mask, cross_kv, [None] * len(self.decoder_layers))

    def decode_step(self, state: TransformerState, prev_tokens: Tensor) -> tuple[Tensor, TransformerState, Tensor]:
        """Feed ``prev_tokens`` at position ``state.step``; attend to the cache; return next-token log-probs.

        Shape:
            ``prev_tokens`` ``(B,)`` long -> ``log_probs`` ``(B, V)``, new state, attention ``(B, S)``
            (last layer's cross-attention, mean over heads).
        """
        if not isinstance(prev_tokens, Tensor) or prev_tokens.shape != (state.batch_size,) or prev_tokens.dtype != torch.long:
            raise ValueError(f"prev_tokens must be a ({state.batch_size},) torch.long tensor, got {prev_tokens!r:.80}")
        if self.config.positions == "learned" and state.step >= self.config.max_len:
            raise ValueError(f"decoding step {state.step} >= max_len={self.config.max_len}: learned positions cannot go further")
        if not self.use_kv_cache:
            return self._decode_step_prefix(state, prev_tokens)
        x = self._embed(self.tgt_embed, prev_tokens[:, None], offset=state.step)  # (B, 1, d)
        memory_mask = state.src_mask[:, None, None, :]
        cache, wc = [], None
        for layer, kv, past in zip(self.decoder_layers, state.cross_kv, state.cache):
            x, new, wc = layer.step(x, past, kv, memory_mask, state.step)
            cache.append(new)
        logits = self.generator(self.decoder_norm(x[:, 0]))  # (B, V)
        attn = wc.mean(1)[:, 0] if wc is not None else state.src_mask.new_zeros(state.src_mask.shape, dtype=logits.dtype)
        new_state = TransformerState(state.memory, state.src_mask, state.cross_kv, cache, state.step + 1)
        return F.log_softmax(logits.float(), dim=-1), new_state, attn

    def _decode_step_prefix(self, state: TransformerState, prev_tokens: Tensor) -> tuple[Tensor, TransformerState, Tensor]:
        """:meth:`decode_step` without a key/value cache: the decoder runs over every token fed so far."""
        prefix = prev_tokens[:, None] if state.prefix is None else torch.cat([state.prefix, prev_tokens[:, None]], 1)  # (B, t + 1)
        x = self._embed(self.tgt_embed, prefix)  # (B, t + 1, d)
        memory_mask = state.src_mask[:, None, None, :]
        wc = None
        for layer in self.decoder_layers:
            x, _, wc = layer(x, state.memory, memory_mask, need_weights=True)
        logits = self.generator(self.decoder_norm(x[:, -1]))  # (B, V): only the last position is new
        attn = wc[:, :, -1].mean(1) if wc is not None else state.src_mask.new_zeros(state.src_mask.shape, dtype=logits.dtype)
        new_state = TransformerState(state.memory, state.src_mask, state.cross_kv, state.cache, state.step + 1, prefix)
        return F.log_softmax(logits.float(), dim=-1), new_state, attn

    def decode_step_uncached(self, src: Tensor, src_mask: Tensor, prefix: Tensor) -> Tensor:
        """Next-token log-probs after ``prefix`` ``(B, t)`` (BOS first), recomputing the whole decoder.

        What :meth:`decode_step` computes with its cache; slower by about the prefix length.

        Shape:
            ``src``/``src_mask`` ``(B, S)``, ``prefix`` ``(B, t)`` -> ``(B, V)``.
        """
        logits = self(src, src_mask, prefix, torch.ones_like(prefix, dtype=torch.bool))
        assert isinstance(logits, Tensor)
        return F.log_softmax(logits[:, -1].float(), dim=-1)

    def num_parameters(self) -> int:
        """Number of distinct trainable parameters (tied weights counted once)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
