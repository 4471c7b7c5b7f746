"""Efficient attention: exact attention in tiles, shared key/value heads, caches, cheaper variants.

* :func:`tiled_attention`: exact softmax attention computed block by block with the *online softmax*
  (a running maximum and a running sum per query) :cite:p:`milakov2018online`, so the ``(Lq, Lk)``
  score matrix is never held in memory; the backward pass recomputes the blocks from the saved
  log-sum-exp, as FlashAttention does :cite:p:`dao2022flashattention,dao2023flashattention2`.
* :class:`GroupedQueryAttention`: ``num_kv_heads`` key/value heads shared by groups of query heads,
  multi-query attention when it is 1 :cite:p:`shazeer2019mqa,ainslie2023gqa`.
* Key/value cache helpers (:func:`append_kv`, :func:`reorder_kv`, defined with
  :class:`~attn_tutorial.multihead.MultiHeadAttention`, whose ``forward(..., past=, use_cache=True)`` grows a
  cache; :func:`kv_cache_bytes_per_token`): the one implementation used by the Transformer's incremental
  decoding and by :class:`TinyCausalLM`.
* :func:`sliding_window_attention` (banded, with optional global tokens :cite:p:`beltagy2020longformer`)
  and :func:`linear_attention` / :func:`linear_attention_step` :cite:p:`katharopoulos2020linear`.

Conventions as everywhere in the package: batch first, ``(batch, heads, seq, dim)``, boolean masks with
``True`` = may attend, a query with no visible key gets a zero output (never NaN).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ._checks import broadcast, check_attention, check_count, check_counts, check_qkv, shape
from .attention import _fused
from .multihead import KVCache, MultiHeadAttention, append_kv, reorder_kv, repeat_kv

__all__ = [
    "tiled_attention",
    "tiled_attention_forward",
    "GroupedQueryAttention",
    "repeat_kv",
    "append_kv",
    "reorder_kv",
    "kv_cache_bytes_per_token",
    "kv_cache_nbytes",
    "peak_tensor_bytes",
    "sliding_window_global_mask",
    "sliding_window_attention",
    "elu_feature_map",
    "linear_attention",
    "LinearAttentionState",
    "linear_attention_step",
    "CausalLMConfig",
    "TinyCausalLM",
]

# --------------------------------------------------------------------------------------------
# Exact attention in tiles: the online softmax, forward and backward
# --------------------------------------------------------------------------------------------


def _mask_block(mask: Tensor | None, qs: int, qe: int, ks: int, ke: int) -> Tensor | None:
    """The ``[qs:qe, ks:ke]`` block of a mask broadcastable to ``(..., Lq, Lk)`` (size-1 dims kept)."""
    if mask is None:
        return None
    if mask.dim() >= 2 and mask.shape[-2] != 1:
        mask = mask[..., qs:qe, :]
    return mask[..., ks:ke] if mask.shape[-1] != 1 else mask


def _allowed(mask: Tensor | None, is_causal: bool, qs: int, qe: int, ks: int, ke: int, device: torch.device) -> Tensor | None:
    """Boolean ``(…, qe - qs, ke - ks)`` block of what may be attended (``None`` = everything)."""
    allowed = _mask_block(mask, qs, qe, ks, ke)
    if is_causal and ke - 1 > qs:  # some key in the block lies after some query: cut the upper triangle
        rows = torch.arange(qs, qe, device=device)[:, None]
        cols = torch.arange(ks, ke, device=device)[None, :]
        causal = cols <= rows  # (bq, bk), top-left aligned like causal_mask
        allowed = causal if allowed is None else allowed & causal
    return allowed


def _key_blocks(qs: int, qe: int, Lk: int, block: int, is_causal: bool) -> range:
    """Start of every key block a query block ``[qs, qe)`` must visit (causal: none after its last query)."""
    return range(0, min(Lk, qe) if is_causal else Lk, block)


def tiled_attention_forward(
    query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None = None, *,
    is_causal: bool = False, scale: float | None = None, block_size: int = 128,
) -> tuple[Tensor, Tensor]:
    """The forward pass of :func:`tiled_attention`; also returns the log-sum-exp of each query's scores.

    For each block of queries it walks over the blocks of keys keeping, per query, the running maximum
    :math:`m`, the running sum :math:`\\ell` and the unnormalised output :math:`a`:

    .. math::
        m' = \\max(m, \\max_j s_j), \\quad
        \\ell' = e^{m - m'} \\ell + \\sum_j e^{s_j - m'}, \\quad
        a' = e^{m - m'} a + \\sum_j e^{s_j - m'} v_j

    and returns :math:`o = a / \\ell` and :math:`\\mathrm{lse} = m + \\log \\ell` (``-inf`` for a query with
    no visible key, whose output is zero). No gradient is recorded.

    Shape:
        ``query`` ``(..., Lq, D)``, ``key`` ``(..., Lk, D)``, ``value`` ``(..., Lk, Dv)``
        -> ``output`` ``(..., Lq, Dv)``, ``lse`` ``(..., Lq)``.

    Reference: :cite:p:`milakov2018online`, algorithm 3; :cite:p:`dao2022flashattention`, algorithm 1.
    """
    check_attention(query, key, value, mask)
    check_count("block_size", block_size)
    return _tiled_forward(query, key, value, mask, is_causal, scale, block_size)


@torch.no_grad()
def _tiled_forward(
    query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, is_causal: bool, scale: float | None, block_size: int
) -> tuple[Tensor, Tensor]:
    """:func:`tiled_attention_forward` without the checks."""
    batch = broadcast(query.shape[:-2], key.shape[:-2], value.shape[:-2])
    assert batch is not None  # checked by check_qkv
    Lq, Lk, Dv = query.shape[-2], key.shape[-2], value.shape[-1]
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    out = query.new_zeros(*batch, Lq, Dv)
    lse = query.new_full((*batch, Lq), float("-inf"))
    for qs in range(0, Lq, block_size):
        qe = min(qs + block_size, Lq)
        q = query[..., qs:qe, :] * scale  # (..., bq, D)
        m = query.new_full((*batch, qe - qs, 1), float("-inf"))  # running max
        ell = query.new_zeros(*batch, qe - qs, 1)  # running sum of exponentials
        acc = query.new_zeros(*batch, qe - qs, Dv)  # running unnormalised output
        for ks in _key_blocks(qs, qe, Lk, block_size, is_causal):
            ke = min(ks + block_size, Lk)
            s = q @ key[..., ks:ke, :].transpose(-2, -1)  # (..., bq, bk): only this tile of scores
            allowed = _allowed(mask, is_causal, qs, qe, ks, ke, query.device)
            if allowed is not None:
                s = s.masked_fill(~allowed, float("-inf"))
            m_new = torch.maximum(m, s.amax(dim=-1, keepdim=True))
            shift = torch.where(torch.isfinite(m_new), m_new, torch.zeros_like(m_new))  # nothing seen yet: 0
            p = torch.exp(s - shift)  # (..., bq, bk); masked entries exp(-inf) = 0
            rescale = torch.exp(m - shift)  # how much the old running sums shrink
            ell = rescale * ell + p.sum(dim=-1, keepdim=True)
            acc = rescale * acc + p @ value[..., ks:ke, :]  # (..., bq, Dv)
            m = m_new
        out[..., qs:qe, :] = acc / torch.where(ell > 0, ell, torch.ones_like(ell))  # empty rows: 0 / 1 = 0
        lse[..., qs:qe] = (m + torch.log(ell)).squeeze(-1)  # -inf where nothing was visible
    return out, lse


class _TiledAttention(torch.autograd.Function):
    """Forward by :func:`tiled_attention_forward`; backward by recomputing each tile from ``lse``.

    Saved for backward: ``q, k, v, out, lse`` (and the boolean mask): memory linear in the length.
    """

    @staticmethod
    def forward(ctx, q, k, v, mask, is_causal, scale, block_size):  # type: ignore[override]
        out, lse = _tiled_forward(q, k, v, mask, is_causal, scale, block_size)
        ctx.save_for_backward(q, k, v, out, lse, mask)
        ctx.is_causal, ctx.scale, ctx.block_size = is_causal, scale, block_size
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        q, k, v, out, lse, mask = ctx.saved_tensors
        scale, block, is_causal = ctx.scale, ctx.block_size, ctx.is_causal
        Lq, Lk = q.shape[-2], k.shape[-2]
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        delta = (grad_out * out).sum(dim=-1, keepdim=True)  # (..., Lq, 1): D_i = do_i . o_i
        lse = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse)).unsqueeze(-1)  # empty rows: p = 0
        for qs in range(0, Lq, block):
            qe = min(qs + block, Lq)
            qb, do, lb, db = q[..., qs:qe, :], grad_out[..., qs:qe, :], lse[..., qs:qe, :], delta[..., qs:qe, :]
            for ks in _key_blocks(qs, qe, Lk, block, is_causal):
                ke = min(ks + block, Lk)
                kb, vb = k[..., ks:ke, :], v[..., ks:ke, :]
                s = (qb * scale) @ kb.transpose(-2, -1)  # recomputed tile of scores (..., bq, bk)
                allowed = _allowed(mask, is_causal, qs, qe, ks, ke, q.device)
                if allowed is not None:
                    s = s.masked_fill(~allowed, float("-inf"))
                p = torch.exp(s - lb)  # the softmax weights of the tile, from the saved log-sum-exp
                dv[..., ks:ke, :] += p.transpose(-2, -1) @ do
                ds = p * (do @ vb.transpose(-2, -1) - db)  # softmax backward: p * (dp - D)
                dq[..., qs:qe, :] += scale * (ds @ kb)
                dk[..., ks:ke, :] += scale * (ds.transpose(-2, -1) @ qb)
        return dq, dk, dv, None, None, None, None


def tiled_attention(
    query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None = None, *,
    is_causal: bool = False, scale: float | None = None, block_size: int = 128,
) -> tuple[Tensor, None]:
    """Exact softmax attention, block by block, never holding the ``(Lq, Lk)`` score matrix.

    .. math:: \\mathrm{Attention}(Q, K, V) = \\mathrm{softmax}\\!\\left(\\frac{Q K^\\top}{\\sqrt{d}}\\right) V

    computed with the online softmax (see :func:`tiled_attention_forward`). Extra memory is
    ``O(block_size * (Lk + Lq))`` per batch element and head instead of ``O(Lq * Lk)``. With
    ``is_causal`` the key blocks after a query block's last query are skipped altogether. Gradients are
    exact: the backward pass recomputes each tile from ``q, k, v``, the output and the per-query
    log-sum-exp (the FlashAttention recipe), so it too stores nothing quadratic. No dropout.

    Args:
        query, key, value: same dtype; leading (batch, head) dimensions broadcast.
        mask: boolean, broadcastable to ``(..., Lq, Lk)``; ``True`` = may attend. A query whose keys are
            all masked gets a zero output (the package's convention) and zero gradients.
        is_causal: top-left causal mask as :func:`~attn_tutorial.attention.causal_mask`; AND with ``mask``.
        scale: multiplies the scores; default ``1 / sqrt(D)``.
        block_size: queries and keys per tile.

    Returns:
        ``(output, None)``: like :func:`~attn_tutorial.attention.fused_attention`, a tiled kernel has no
        weight matrix to return.

    Shape:
        ``query`` ``(..., Lq, D)``, ``key`` ``(..., Lk, D)``, ``value`` ``(..., Lk, Dv)`` -> ``(..., Lq, Dv)``.

    Reference: :cite:p:`milakov2018online,dao2022flashattention,dao2023flashattention2`.
    """
    check_attention(query, key, value, mask)
    check_count("block_size", block_size)
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else float(scale)
    if not (torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))):
        return _tiled_forward(query, key, value, mask, is_causal, scale, block_size)[0], None
    batch = broadcast(query.shape[:-2], key.shape[:-2], value.shape[:-2])
    assert batch is not None
    # Expand broadcast batch dims so that the Function sees equal shapes; autograd sums them back.
    q, k, v = (t.expand(*batch, *t.shape[-2:]) for t in (query, key, value))
    return _TiledAttention.apply(q, k, v, mask, is_causal, scale, block_size), None


# --------------------------------------------------------------------------------------------
# Key/value caches (shared with attn_tutorial.transformer)
# --------------------------------------------------------------------------------------------


def kv_cache_bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype = torch.float32) -> int:
    """Bytes a key/value cache grows by per token and sequence: :math:`2 \\cdot n_\\text{layers} \\cdot H_{kv} \\cdot d_h \\cdot \\text{bytes}`.

    The factor 2 is one key and one value. Multi-head attention has ``H_kv = H``; grouped-query
    attention divides the cache by ``H / H_kv`` :cite:p:`shazeer2019mqa,ainslie2023gqa`.
    """
    check_counts(num_layers=num_layers, num_kv_heads=num_kv_heads, head_dim=head_dim)
    return 2 * num_layers * num_kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()


def kv_cache_nbytes(cache: Sequence[KVCache | None]) -> int:
    """Bytes held by a list of per-layer caches (``None`` entries count 0)."""
    return sum(k.nbytes + v.nbytes for kv in cache if kv is not None for k, v in [kv])


class _TensorMemory(TorchDispatchMode):
    """Counts the bytes of every storage an operation creates while it is alive; keeps the peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live, self.peak, self._alive = 0, 0, set()

    def _free(self, key: int, nbytes: int) -> None:
        self._alive.discard(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, Tensor) and t.device.type != "meta":
                key = t.untyped_storage().data_ptr()
                if key and key not in self._alive:  # a new storage, not a view of a counted one
                    nbytes = t.untyped_storage().nbytes()
                    self._alive.add(key)
                    self.live += nbytes
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(t.untyped_storage(), self._free, key, nbytes)  # fires when the storage dies
        return out


def peak_tensor_bytes(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, int]:
    """Run ``fn(*args, **kwargs)`` and return ``(result, peak bytes of the tensors it allocated)``.

    Counts the storage of every tensor created by a PyTorch operation inside ``fn`` from its creation
    until the storage is freed (views share it and count once; the inputs are not counted; the result is). Deterministic, unlike the
    process's resident size, but blind to buffers a fused C++ kernel allocates internally (such as those
    of ``F.scaled_dot_product_attention``): use it for code written with PyTorch operations.
    """
    tracker = _TensorMemory()
    with tracker:
        result = fn(*args, **kwargs)
    return result, tracker.peak


# --------------------------------------------------------------------------------------------
# Multi-query and grouped-query attention
# --------------------------------------------------------------------------------------------


class GroupedQueryAttention(MultiHeadAttention):
    """Multi-head attention whose ``num_heads`` query heads share ``num_kv_heads`` key/value heads.

    .. math:: \\mathrm{head}_h = \\mathrm{Attention}(Q W^Q_h,\\; K W^K_{g(h)},\\; V W^V_{g(h)}), \\quad g(h) = \\lfloor h\\, H_{kv} / H \\rfloor

    ``num_kv_heads == num_heads`` is :class:`~attn_tutorial.multihead.MultiHeadAttention` (same
    parameters, same outputs); ``num_kv_heads == 1`` is multi-query attention :cite:p:`shazeer2019mqa`;
    anything between is grouped-query attention :cite:p:`ainslie2023gqa`. The key/value projections and
    the cache shrink by ``num_heads / num_kv_heads``.

    It *is* a :class:`~attn_tutorial.multihead.MultiHeadAttention` with ``num_kv_heads`` key/value heads
    (only the initialisation differs: PyTorch's default for ``nn.Linear``), so it has the same ``forward``
    (``mask`` boolean, ``True`` = may attend, broadcastable to ``(B, H, Lq, Lk)``; a 3-D mask is
    ``(B, Lq, Lk)``; ``past=``/``use_cache=`` for a key/value cache) and the same steps: :meth:`~attn_tutorial.multihead.MultiHeadAttention.project_kv`
    gives the keys/values a cache stores (``H_kv`` heads) and :meth:`~attn_tutorial.multihead.MultiHeadAttention.attend` attends to them, each key/value
    head serving a group of query heads (:func:`repeat_kv`).

    Shape:
        ``query`` ``(B, Lq, E)``, ``key``/``value`` ``(B, Lk, E)`` -> ``(B, Lq, E)``, weights ``(B, Lq, Lk)``
        / ``(B, H, Lq, Lk)`` / ``None``.

    Reference: :cite:p:`shazeer2019mqa,ainslie2023gqa`.
    """

    def __init__(self, embed_dim: int, num_heads: int, num_kv_heads: int | None = None, dropout: float = 0.0, bias: bool = True) -> None:
        super().__init__(embed_dim, num_heads, dropout=dropout, bias=bias, num_kv_heads=num_kv_heads)

    def _reset_parameters(self) -> None:
        pass  # keep nn.Linear's default initialisation

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, num_kv_heads={self.num_kv_heads}"

    @classmethod
    def from_multihead(cls, mha: nn.Module, num_kv_heads: int) -> GroupedQueryAttention:
        """Convert a trained :class:`~attn_tutorial.multihead.MultiHeadAttention`: query and output
        projections are copied, each group's key and value heads are mean-pooled :cite:p:`ainslie2023gqa`."""
        H, Dh, E = mha.num_heads, mha.head_dim, mha.embed_dim
        bias = mha.q_proj.bias is not None
        gqa = cls(E, H, num_kv_heads, dropout=mha.dropout, bias=bias).to(mha.q_proj.weight)
        n_rep = H // num_kv_heads
        with torch.no_grad():
            for name in ("q_proj", "out_proj"):
                getattr(gqa, name).load_state_dict(getattr(mha, name).state_dict())
            for name in ("k_proj", "v_proj"):
                src, dst = getattr(mha, name), getattr(gqa, name)
                w = src.weight.view(num_kv_heads, n_rep, Dh, -1).mean(1)  # (Hkv, Dh, E): mean over each group
                dst.weight.copy_(w.reshape(num_kv_heads * Dh, -1))
                if bias:
                    dst.bias.copy_(src.bias.view(num_kv_heads, n_rep, Dh).mean(1).reshape(-1))
        return gqa.train(mha.training)


# --------------------------------------------------------------------------------------------
# Sliding windows
# --------------------------------------------------------------------------------------------


def _window_allowed(i: Tensor, j: Tensor, window: int, num_global: int, causal: bool) -> Tensor:
    allowed = ((i - j).abs() <= window) | (j < num_global) | (i < num_global)
    return allowed & (j <= i) if causal else allowed


def sliding_window_global_mask(
    L: int, window: int, num_global: int = 0, causal: bool = False, device: torch.device | str | None = None
) -> Tensor:
    """Banded mask with global tokens, ``True`` = may attend: query ``i`` sees key ``j`` iff
    ``|i - j| <= window``, or either of them is one of the first ``num_global`` positions (and ``j <= i``
    when ``causal``). With ``num_global=0`` it is :func:`~attn_tutorial.attention.sliding_window_mask`.

    Shape: output ``(L, L)``. Reference: :cite:p:`beltagy2020longformer`, section 3.1.
    """
    check_counts(allow_zero=True, window=window, num_global=num_global)
    pos = torch.arange(L, device=device)
    return _window_allowed(pos[:, None], pos[None, :], window, num_global, causal)


def sliding_window_attention(
    query: Tensor, key: Tensor, value: Tensor, window: int, *, num_global: int = 0, is_causal: bool = False, block_size: int = 128,
) -> tuple[Tensor, None]:
    """Self-attention restricted to a band of ``2 * window + 1`` keys (``window + 1`` if causal) plus
    ``num_global`` global tokens, computed block by block on the band only.

    .. math:: o_i = \\sum_{j:\\, M_{ij}} \\mathrm{softmax}_j(q_i^\\top k_j / \\sqrt d)\\, v_j, \\qquad M = \\text{sliding\\_window\\_global\\_mask}

    Equal to dense attention with :func:`sliding_window_global_mask` (tested), at a cost of
    ``O(L (block_size + 2 window + num_global))`` scores instead of ``O(L^2)``; the global rows are dense.

    Shape:
        ``query``/``key`` ``(..., L, D)``, ``value`` ``(..., L, Dv)`` -> ``((..., L, Dv), None)``.

    Reference: :cite:p:`beltagy2020longformer`.
    """
    check_qkv(query, key, value)
    check_counts(allow_zero=True, window=window, num_global=num_global)
    check_count("block_size", block_size)
    L = query.shape[-2]
    if key.shape[-2] != L:
        raise ValueError(f"sliding_window_attention is self-attention: query {shape(query)} and key {shape(key)} need the same length")
    pos = torch.arange(L, device=query.device)
    g = min(num_global, L)
    parts = []
    if g:  # global queries see every key (up to themselves if causal)
        m = _window_allowed(pos[:g, None], pos[None, :], window, g, is_causal)
        parts.append(_fused(query[..., :g, :], key, value, m))
    for qs in range(g, L, block_size):
        qe = min(qs + block_size, L)
        lo, hi = max(g, qs - window), min(L, qe if is_causal else qe + window)
        idx = torch.cat([pos[:g], pos[lo:hi]])  # the global keys, then the band of this block
        m = _window_allowed(pos[qs:qe, None], idx[None, :], window, g, is_causal)  # (bq, g + band)
        k, v = key.index_select(-2, idx), value.index_select(-2, idx)
        parts.append(_fused(query[..., qs:qe, :], k, v, m))
    return torch.cat(parts, dim=-2), None


# --------------------------------------------------------------------------------------------
# Linear attention
# --------------------------------------------------------------------------------------------


def elu_feature_map(x: Tensor) -> Tensor:
    """:math:`\\phi(x) = \\mathrm{elu}(x) + 1 > 0`, the feature map of :cite:p:`katharopoulos2020linear`. Shape: like ``x``."""
    return F.elu(x) + 1


def linear_attention(
    query: Tensor, key: Tensor, value: Tensor, *, is_causal: bool = False, eps: float = 1e-6
) -> tuple[Tensor, None]:
    """Linear attention: the softmax kernel replaced by a dot product of positive features.

    .. math:: o_i = \\frac{\\phi(q_i)^\\top \\sum_j \\phi(k_j) v_j^\\top}{\\phi(q_i)^\\top \\sum_j \\phi(k_j) + \\varepsilon}

    with :func:`elu_feature_map`. The sums are computed once (``O(L D Dv)`` instead of ``O(L^2 D)``);
    with ``is_causal`` they run over ``j <= i`` as cumulative sums (self-attention only). It equals the
    explicit normalised ``phi(Q) phi(K)^T`` form (tested) and, causal, the recurrent form
    :func:`linear_attention_step` used for decoding. No ``1/sqrt(d)`` scale, as in the paper.

    Shape:
        ``query`` ``(..., Lq, D)``, ``key`` ``(..., Lk, D)``, ``value`` ``(..., Lk, Dv)`` -> ``((..., Lq, Dv), None)``.

    Reference: :cite:p:`katharopoulos2020linear`, eq. 6 and 8-9.
    """
    check_qkv(query, key, value)
    q, k = elu_feature_map(query), elu_feature_map(key)  # (..., L, D), positive
    if not is_causal:
        kv = k.transpose(-2, -1) @ value  # (..., D, Dv): sum_j phi(k_j) v_j^T
        num, den = q @ kv, q @ k.sum(dim=-2).unsqueeze(-1)  # (..., Lq, Dv), (..., Lq, 1)
    else:
        if query.shape[-2] != key.shape[-2]:
            raise ValueError(f"causal linear attention needs query {shape(query)} and key {shape(key)} of the same length")
        kv = torch.cumsum(k.unsqueeze(-1) * value.unsqueeze(-2), dim=-3)  # (..., L, D, Dv): S_i = sum_{j<=i}
        z = torch.cumsum(k, dim=-2)  # (..., L, D)
        num = (q.unsqueeze(-2) @ kv).squeeze(-2)  # (..., L, Dv)
        den = (q * z).sum(dim=-1, keepdim=True)  # (..., L, 1)
    return num / (den + eps), None


@dataclass
class LinearAttentionState:
    """The recurrent state of causal linear attention: ``s`` :math:`= \\sum_j \\phi(k_j) v_j^\\top`
    ``(..., D, Dv)`` and ``z`` :math:`= \\sum_j \\phi(k_j)` ``(..., D)``: constant size, whatever the length."""

    s: Tensor
    z: Tensor

    @property
    def nbytes(self) -> int:
        return self.s.nbytes + self.z.nbytes


def linear_attention_step(
    query: Tensor, key: Tensor, value: Tensor, state: LinearAttentionState | None = None, *, eps: float = 1e-6
) -> tuple[Tensor, LinearAttentionState]:
    """One decoding step of causal linear attention, an RNN :cite:p:`katharopoulos2020linear` (section 3.4).

    .. math:: S_i = S_{i-1} + \\phi(k_i) v_i^\\top, \\quad z_i = z_{i-1} + \\phi(k_i), \\quad o_i = \\frac{\\phi(q_i)^\\top S_i}{\\phi(q_i)^\\top z_i + \\varepsilon}

    Shape:
        ``query``/``key`` ``(..., D)``, ``value`` ``(..., Dv)`` -> ``(output (..., Dv), new state)``.
    """
    q, k = elu_feature_map(query), elu_feature_map(key)
    s_add = k.unsqueeze(-1) * value.unsqueeze(-2)  # (..., D, Dv)
    state = LinearAttentionState(s_add, k) if state is None else LinearAttentionState(state.s + s_add, state.z + k)
    num = (q.unsqueeze(-2) @ state.s).squeeze(-2)  # (..., Dv)
    return num / ((q * state.z).sum(dim=-1, keepdim=True) + eps), state


# --------------------------------------------------------------------------------------------
# A tiny decoder-only language model to try the variants on
# --------------------------------------------------------------------------------------------

_ATTENTIONS = ("dense", "sliding", "linear")


@dataclass(frozen=True)
class CausalLMConfig:
    """Hyper-parameters of :class:`TinyCausalLM`; ``attention`` is ``"dense"``, ``"sliding"`` (causal band
    of ``window`` earlier tokens) or ``"linear"``; ``num_kv_heads`` (default ``num_heads``) shares key/value heads."""

    vocab_size: int
    d_model: int = 64
    num_heads: int = 4
    num_kv_heads: int | None = None
    num_layers: int = 2
    d_ff: int = 256
    max_len: int = 512
    attention: str = "dense"
    window: int = 16

    def __post_init__(self) -> None:
        if self.attention not in _ATTENTIONS:
            raise ValueError(f"CausalLMConfig.attention must be one of {_ATTENTIONS}, got {self.attention!r}")
        for name in ("vocab_size", "d_model", "num_heads", "num_layers", "d_ff", "max_len", "window"):
            check_count(f"CausalLMConfig.{name}", getattr(self, name))


class _Block(nn.Module):
    def __init__(self, c: CausalLMConfig) -> None:
        super().__init__()
        self.c = c
        self.attn = GroupedQueryAttention(c.d_model, c.num_heads, c.num_kv_heads)
        self.norm1, self.norm2 = nn.LayerNorm(c.d_model), nn.LayerNorm(c.d_model)
        self.ff = nn.Sequential(nn.Linear(c.d_model, c.d_ff), nn.GELU(), nn.Linear(c.d_ff, c.d_model))

    def _mix(self, h: Tensor, past: object) -> tuple[Tensor, object]:
        """Causal attention of ``h`` ``(B, T, E)`` after the cached positions ``past``; returns the new cache
        (keys/values, or a :class:`LinearAttentionState` per head). ``past is None``: a whole sequence."""
        a, c = self.attn, self.c
        if c.attention == "dense":  # the module's own cache: append, then attend to everything
            out, _, cache = a(h, h, h, need_weights=False, is_causal=True, past=past, use_cache=True)  # type: ignore[arg-type]
            return out, cache
        q, k, v = a.project(h, h, h)  # (B, H, T, Dh), (B, Hkv, T, Dh) x 2
        n_rep = a.num_heads // a.num_kv_heads
        if c.attention == "linear":
            k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
            if past is None:  # a whole sequence: cumulative sums; the state is their last entry
                out, _ = linear_attention(q, k, v, is_causal=True)
                phi_k = elu_feature_map(k)
                state: object = LinearAttentionState(phi_k.transpose(-2, -1) @ v, phi_k.sum(dim=-2))
            else:  # one step: the recurrent form
                o, state = linear_attention_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], past)  # type: ignore[arg-type]
                out = o.unsqueeze(2)
            return a.out_proj(a.merge_heads(out)), state  # (B, H, T, Dh) -> (B, T, E)
        cache = append_kv(past, k, v)  # type: ignore[arg-type]
        cache = (cache[0][:, :, -(c.window + 1):], cache[1][:, :, -(c.window + 1):])  # a step sees only the band
        if past is None:  # a whole sequence, block by block on the band
            out, _ = sliding_window_attention(q, repeat_kv(k, n_rep), repeat_kv(v, n_rep), c.window, is_causal=True)
            return a.out_proj(a.merge_heads(out)), cache
        return a.attend(q, *cache, need_weights=False)[0], cache  # one step against the band

    def forward(self, x: Tensor, past: object = None) -> tuple[Tensor, object]:
        a, cache = self._mix(self.norm1(x), past)
        x = x + a
        return x + self.ff(self.norm2(x)), cache


class TinyCausalLM(nn.Module):
    """A small pre-norm decoder-only Transformer (learned positions, tied output layer) whose attention
    is dense, sliding-window or linear, with ``num_kv_heads`` shared key/value heads.

    ``forward(tokens)`` gives next-token logits ``(B, T, V)`` for every position; ``generate(prompt, n,
    use_cache=True)`` extends ``prompt`` greedily by ``n`` tokens, feeding one token per step against a
    key/value cache (:func:`append_kv`; trimmed to the band for sliding windows; the recurrent state for
    linear attention), or recomputing the whole prefix each step with ``use_cache=False``.

    Shape: ``tokens`` ``(B, T)`` long -> ``(B, T, V)``; ``generate`` -> ``(B, T + n)``.

    Reference: the decoder of :cite:p:`vaswani2017` without cross-attention.
    """

    def __init__(self, config: CausalLMConfig) -> None:
        super().__init__()
        self.config = c = config
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.pos = nn.Embedding(c.max_len, c.d_model)
        self.blocks = nn.ModuleList(_Block(c) for _ in range(c.num_layers))
        self.norm = nn.LayerNorm(c.d_model)
        self.head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.head.weight = self.embed.weight

    def _run(self, tokens: Tensor, caches: list[object], offset: int) -> tuple[Tensor, list[object]]:
        if offset + tokens.shape[1] > self.config.max_len:
            raise ValueError(f"positions up to {offset + tokens.shape[1]} exceed max_len={self.config.max_len}")
        x = self.embed(tokens) + self.pos(torch.arange(offset, offset + tokens.shape[1], device=tokens.device))
        new = []
        for block, past in zip(self.blocks, caches):
            x, cache = block(x, past)
            new.append(cache)
        return self.head(self.norm(x)), new

    def forward(self, tokens: Tensor) -> Tensor:
        return self._run(tokens, [None] * len(self.blocks), 0)[0]

    @torch.no_grad()
    def generate(self, prompt: Tensor, num_tokens: int, use_cache: bool = True) -> Tensor:
        """Greedy continuation of ``prompt`` ``(B, T)`` by ``num_tokens`` tokens -> ``(B, T + num_tokens)``."""
        tokens = prompt
        if not use_cache:  # every step recomputes the whole prefix
            for _ in range(num_tokens):
                tokens = torch.cat([tokens, self(tokens)[:, -1].argmax(-1, keepdim=True)], dim=1)
            return tokens
        logits, caches = self._run(prompt, [None] * len(self.blocks), 0)  # the prompt in one pass, caches filled
        for i in range(num_tokens):
            nxt = logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
            tokens = torch.cat([tokens, nxt], dim=1)
            if i + 1 < num_tokens:
                logits, caches = self._run(nxt, caches, tokens.shape[1] - 1)
        return tokens
