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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import check_count, check_int, check_prev_tokens, check_token_mask, check_tokens, pad_empty_source
from .attention import select_positions
from .multihead import KVCache, MultiHeadAttention, _init_embedding, num_parameters, reorder_kv
from .positional import LearnedPositionalEmbedding, SinusoidalPositionalEncoding

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
            check_count(f"TransformerConfig.{name}", getattr(self, name))
        for name in ("num_encoder_layers", "num_decoder_layers"):
            check_int(f"TransformerConfig.{name}", getattr(self, name), minimum=0)
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


class _ResidualLayer(nn.Module):
    """What encoder and decoder layers share: the residual block around each sublayer."""

    c: TransformerConfig
    dropout: nn.Dropout

    def _residual(self, x: Tensor, norm: nn.Module, sublayer: Callable[[Tensor], Any]) -> Any:
        """Pre-norm ``x + sublayer(LN(x))`` or post-norm ``LN(x + sublayer(x))``. A sublayer that returns
        ``(output, *extras)`` (attention: its weights, a cache) gives ``(x, *extras)``; one that returns a tensor, ``x``."""
        if self.c.norm_first:  # pre-norm
            out = sublayer(norm(x))
            out, *extras = out if isinstance(out, tuple) else (out,)
            x = x + self.dropout(out)
        else:  # post-norm
            out = sublayer(x)
            out, *extras = out if isinstance(out, tuple) else (out,)
            x = norm(x + self.dropout(out))
        return (x, *extras) if extras else x


class EncoderLayer(_ResidualLayer):
    """Self-attention then feed-forward, each in a residual block (pre- or post-norm).

    Shape:
        ``x`` ``(B, S, d_model)``, ``mask`` broadcastable to ``(B, H, S, S)`` (True = may attend)
        -> ``(x (B, S, d_model), weights (B, H, S, S) or None)``.
    """

    def __init__(self, c: TransformerConfig) -> None:
        super().__init__()
        self.c = c
        self.self_attn = MultiHeadAttention(c.d_model, c.num_heads, dropout=c.attn_dropout, rope=c.positions == "rope")
        self.ff = _FeedForward(c)
        self.norm1, self.norm2 = nn.LayerNorm(c.d_model), nn.LayerNorm(c.d_model)
        self.dropout = nn.Dropout(c.dropout)

    def forward(self, x: Tensor, mask: Tensor | None, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        attend = lambda h: self.self_attn(h, h, h, mask, need_weights, average_attn_weights=False)  # noqa: E731
        x, w = self._residual(x, self.norm1, attend)  # (B, S, d), (B, H, S, S) or None
        return self._residual(x, self.norm2, self.ff), w


class DecoderLayer(_ResidualLayer):
    """Causal self-attention, cross-attention to the encoder output, feed-forward; residual blocks.

    ``forward(x, memory, memory_mask, need_weights=False)`` runs teacher forcing over a whole target prefix
    and returns ``(x, self weights, cross weights)``. With ``cross_kv`` (the source's keys and values,
    projected once by :meth:`Transformer.encode`) it runs incrementally: ``x`` holds the new positions,
    ``past`` the self-attention keys/values of the earlier ones (``None`` at the first step), and the
    result has a fourth element, the grown cache (see :class:`TransformerState`). One forward, two uses.

    Shape:
        ``x`` ``(B, T, d_model)``, ``memory`` ``(B, S, d_model)``, ``memory_mask`` broadcastable to
        ``(B, H, T, S)`` -> ``(x, self weights (B, H, T, T) or None, cross weights (B, H, T, S) or None)``
        [, cache ``(B, H, t + T, Dh)`` x 2].
    """

    def __init__(self, c: TransformerConfig) -> None:
        super().__init__()
        self.c = c
        self.self_attn = MultiHeadAttention(c.d_model, c.num_heads, dropout=c.attn_dropout, rope=c.positions == "rope")
        self.cross_attn = MultiHeadAttention(c.d_model, c.num_heads, dropout=c.attn_dropout)
        self.ff = _FeedForward(c)
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(c.d_model) for _ in range(3))
        self.dropout = nn.Dropout(c.dropout)

    def _cross(self, x: Tensor, memory: Tensor, memory_mask: Tensor | None, need_weights: bool) -> tuple[Tensor, Tensor | None]:
        return self.cross_attn(x, memory, memory, memory_mask, need_weights=need_weights, average_attn_weights=False)

    def forward(
        self, x: Tensor, memory: Tensor, memory_mask: Tensor | None, need_weights: bool = False,
        past: KVCache | None = None, cross_kv: KVCache | None = None,
    ) -> tuple[Tensor, Tensor | None, Tensor | None] | tuple[Tensor, Tensor | None, Tensor | None, KVCache]:
        cached = cross_kv is not None  # incremental decoding: x holds only the new positions

        def self_attention(h: Tensor) -> tuple[Any, ...]:  # causal; with a cache, after the earlier positions
            return self.self_attn(h, h, h, None, need_weights, average_attn_weights=False, is_causal=True, past=past, use_cache=cached)

        def cross_attention(h: Tensor) -> tuple[Tensor, Tensor | None]:
            if cached:  # the source's keys/values, projected once by Transformer.encode (weights for the decoder)
                return self.cross_attn(h, None, None, memory_mask, average_attn_weights=False, past=cross_kv)
            return self._cross(h, memory, memory_mask, need_weights)

        x, ws, *cache = self._residual(x, self.norm1, self_attention)  # (B, T, d), (B, H, T, t + T) or None[, cache]
        x, wc = self._residual(x, self.norm2, cross_attention)  # (B, T, d), (B, H, T, S) or None
        x = self._residual(x, self.norm3, self.ff)  # (B, T, d)
        return (x, ws, wc, *cache) if cached else (x, ws, wc)


# --------------------------------------------------------------------------------------------
# Decoding state and attention maps
# --------------------------------------------------------------------------------------------


@dataclass
class TransformerState:
    """What :meth:`Transformer.decode_step` carries between steps.

    * ``memory`` ``(B, S, d_model)``: the encoder output; ``src_mask`` ``(B, S)`` bool, True = real token;
    * ``cross_kv``: per decoder layer, the source's keys and values ``(B, H, S, Dh)``, projected once;
    * ``cache``: per decoder layer, keys and values ``(B, H, t, Dh)`` of the ``t = step`` tokens fed so
      far (``None`` before the first step), grown by the layers' self-attention
      (:class:`~attn_tutorial.multihead.MultiHeadAttention` with ``use_cache=True``, :func:`~attn_tutorial.efficient.append_kv`);
    * ``prefix`` ``(B, t)``: the tokens fed so far, kept instead of the cache when the model's
      ``use_kv_cache`` is ``False`` (``None`` otherwise).
    """

    memory: Tensor
    src_mask: Tensor
    cross_kv: list[KVCache]
    cache: list[KVCache | None]
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
            _init_embedding(emb, c.pad_id)  # sqrt(d) * embedding has unit-size entries, tied logits start O(1)
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

    def _check(self, tokens: Tensor, mask: Tensor, name: str, vocab: int, batch: int | None = None) -> None:
        check_tokens(name, tokens, vocab, batch)
        check_token_mask(f"{name.removesuffix('_in')}_mask", mask, tokens, name)
        if tokens.shape[1] > self.config.max_len and self.config.positions == "learned":
            raise ValueError(f"{name} has length {tokens.shape[1]} > max_len={self.config.max_len}: learned positions cannot go further")

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
        self._check(src, src_mask, "src", self.config.src_vocab_size)
        self._check(tgt_in, tgt_mask, "tgt_in", self.config.tgt_vocab, batch=src.shape[0])
        src, src_mask = pad_empty_source(src, src_mask, self.config.pad_id)
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
        self._check(src, src_mask, "src", self.config.src_vocab_size)
        src, src_mask = pad_empty_source(src, src_mask, self.config.pad_id)
        memory, _ = self._encode(src, src_mask, need_weights=False)
        cross_kv = [layer.cross_attn.project_kv(memory, memory) for layer in self.decoder_layers]  # (B, H, S, Dh) x 2
        return TransformerState(memory, src_mask, cross_kv, [None] * len(self.decoder_layers))

    def decode_step(self, state: TransformerState, prev_tokens: Tensor) -> tuple[Tensor, TransformerState, Tensor]:
        """Feed ``prev_tokens`` at position ``state.step``; attend to the cache; return next-token log-probs.

        Shape:
            ``prev_tokens`` ``(B,)`` long -> ``log_probs`` ``(B, V)``, new state, attention ``(B, S)``
            (last layer's cross-attention, mean over heads).
        """
        check_prev_tokens(prev_tokens, state.batch_size)
        if self.config.positions == "learned" and state.step >= self.config.max_len:
            raise ValueError(f"decoding step {state.step} >= max_len={self.config.max_len}: learned positions cannot go further")
        if not self.use_kv_cache:
            return self._decode_step_prefix(state, prev_tokens)
        x = self._embed(self.tgt_embed, prev_tokens[:, None], offset=state.step)  # (B, 1, d)
        memory_mask = state.src_mask[:, None, None, :]
        cache, wc = [], None
        for layer, kv, past in zip(self.decoder_layers, state.cross_kv, state.cache):
            x, _, wc, new = layer(x, state.memory, memory_mask, past=past, cross_kv=kv)  # the layer's forward, cached
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
        return num_parameters(self)
