"""Attention in plain NumPy (float64): the "read it" version, short enough to check by hand.

No validation, no dropout, no tricks beyond the max subtraction. The PyTorch modules in
:mod:`attn_tutorial.attention` and :mod:`attn_tutorial.multihead` are tested against these functions.
Masks are boolean, ``True`` = may attend; a row with nothing to attend gets zero weights.
Weight matrices follow ``nn.Linear``: ``y = x @ w.T + b`` with ``w`` of shape ``(out, in)``.
"""

from __future__ import annotations

import numpy as np

# The functions keep their natural names inside this module (``numpy_ref.masked_softmax``); the package
# re-exports them with an ``np_`` prefix so they never shadow the PyTorch versions of the same name.
__all__ = ["np_softmax", "np_masked_softmax", "np_scaled_dot_product_attention", "np_multi_head_attention", "np_tiled_attention"]


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """:math:`\\exp(x_i - \\max x) / \\sum_j \\exp(x_j - \\max x)` along ``axis``. Shape: like ``x``."""
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def masked_softmax(x: np.ndarray, mask: np.ndarray | None, axis: int = -1) -> np.ndarray:
    """Softmax over the entries where ``mask`` is True (may attend); masked entries get 0, and an
    all-masked row is all zeros. Shape: ``x`` any, ``mask`` broadcastable to it; output like ``x``."""
    x = np.asarray(x, dtype=np.float64)
    if mask is None:
        return softmax(x, axis)
    mask = np.broadcast_to(mask, x.shape)
    x_max = np.where(mask, x, -np.inf).max(axis=axis, keepdims=True)
    x_max = np.where(np.isfinite(x_max), x_max, 0.0)  # all-masked rows: any shift will do
    e = np.where(mask, np.exp(x - x_max), 0.0)
    total = e.sum(axis=axis, keepdims=True)
    return e / np.where(total > 0, total, 1.0)


def scaled_dot_product_attention(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None = None, scale: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """:math:`\\mathrm{softmax}(q k^\\top \\cdot \\mathrm{scale})\\, v` with ``scale = 1/sqrt(Dk)`` by default.

    Shape: ``q`` ``(..., Lq, Dk)``, ``k`` ``(..., Lk, Dk)``, ``v`` ``(..., Lk, Dv)``, ``mask`` broadcastable
    to ``(..., Lq, Lk)`` -> ``(out (..., Lq, Dv), weights (..., Lq, Lk))``. Reference: :cite:p:`vaswani2017`, eq. 1.
    """
    q, k, v = (np.asarray(t, dtype=np.float64) for t in (q, k, v))
    if scale is None:
        scale = 1.0 / np.sqrt(q.shape[-1])
    scores = q @ np.swapaxes(k, -1, -2) * scale  # (..., Lq, Lk)
    weights = masked_softmax(scores, mask)
    return weights @ v, weights


def multi_head_attention(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    w_q: np.ndarray,
    w_k: np.ndarray,
    w_v: np.ndarray,
    w_o: np.ndarray,
    num_heads: int,
    b_q: np.ndarray | None = None,
    b_k: np.ndarray | None = None,
    b_v: np.ndarray | None = None,
    b_o: np.ndarray | None = None,
    mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Multi-head attention: project, split into heads, attend per head, merge, project back.

    Shape: ``q`` ``(B, Lq, E)``, ``k`` ``(B, Lk, kdim)``, ``v`` ``(B, Lk, vdim)``; ``w_q`` ``(E, E)``,
    ``w_k`` ``(E, kdim)``, ``w_v`` ``(E, vdim)``, ``w_o`` ``(E, E)``; ``mask`` broadcastable to
    ``(B, H, Lq, Lk)`` -> ``(out (B, Lq, E), weights per head (B, H, Lq, Lk))``.
    Reference: :cite:p:`vaswani2017`, section 3.2.2.
    """

    def linear(x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
        y = np.asarray(x, dtype=np.float64) @ np.asarray(w, dtype=np.float64).T
        return y if b is None else y + b

    def split_heads(x: np.ndarray) -> np.ndarray:
        B, L, E = x.shape
        return x.reshape(B, L, num_heads, E // num_heads).transpose(0, 2, 1, 3)  # (B, H, L, Dh)

    qh = split_heads(linear(q, w_q, b_q))  # (B, H, Lq, Dh)
    kh = split_heads(linear(k, w_k, b_k))  # (B, H, Lk, Dh)
    vh = split_heads(linear(v, w_v, b_v))  # (B, H, Lk, Dh)
    heads, weights = scaled_dot_product_attention(qh, kh, vh, mask)  # (B, H, Lq, Dh), (B, H, Lq, Lk)
    B, H, Lq, Dh = heads.shape
    merged = heads.transpose(0, 2, 1, 3).reshape(B, Lq, H * Dh)  # (B, Lq, E)
    return linear(merged, w_o, b_o), weights


def tiled_attention(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None = None, block_size: int = 64
) -> np.ndarray:
    """Exact attention one tile at a time with the online softmax :cite:p:`milakov2018online`.

    For every query block, walk over the key blocks keeping per query the running max ``m``, the running
    sum ``ell`` and the unnormalised output ``acc``; when a block raises the max, shrink the old sums by
    ``exp(m_old - m_new)``. Only a ``(block, block)`` tile of scores exists at any time. A query with no
    visible key gets a zero output. The PyTorch version is :func:`attn_tutorial.efficient.tiled_attention`.

    Shape: ``q`` ``(..., Lq, D)``, ``k`` ``(..., Lk, D)``, ``v`` ``(..., Lk, Dv)``, ``mask`` broadcastable to
    ``(..., Lq, Lk)`` (True = may attend) -> ``(..., Lq, Dv)``.
    """
    q, k, v = (np.asarray(t, dtype=np.float64) for t in (q, k, v))
    Lq, Lk = q.shape[-2], k.shape[-2]
    batch = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    if mask is not None:
        mask = np.broadcast_to(mask, (*batch, Lq, Lk))
    out = np.zeros((*batch, Lq, v.shape[-1]))
    scale = 1.0 / np.sqrt(q.shape[-1])
    for qs in range(0, Lq, block_size):
        qb = q[..., qs : qs + block_size, :] * scale
        m = np.full((*batch, qb.shape[-2], 1), -np.inf)  # running max
        ell = np.zeros((*batch, qb.shape[-2], 1))  # running sum of exp(s - m)
        acc = np.zeros((*batch, qb.shape[-2], v.shape[-1]))  # running sum of exp(s - m) * v
        for ks in range(0, Lk, block_size):
            s = qb @ np.swapaxes(k[..., ks : ks + block_size, :], -1, -2)  # one tile of scores
            if mask is not None:
                s = np.where(mask[..., qs : qs + block_size, ks : ks + block_size], s, -np.inf)
            m_new = np.maximum(m, s.max(axis=-1, keepdims=True))
            shift = np.where(np.isfinite(m_new), m_new, 0.0)  # nothing visible yet: any shift will do
            p = np.exp(s - shift)
            ell = np.exp(m - shift) * ell + p.sum(axis=-1, keepdims=True)
            acc = np.exp(m - shift) * acc + p @ v[..., ks : ks + block_size, :]
            m = m_new
        out[..., qs : qs + block_size, :] = acc / np.where(ell > 0, ell, 1.0)
    return out


np_softmax = softmax
np_masked_softmax = masked_softmax
np_scaled_dot_product_attention = scaled_dot_product_attention
np_multi_head_attention = multi_head_attention
np_tiled_attention = tiled_attention
