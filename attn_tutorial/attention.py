"""Attention, one idea at a time: scores, a masked softmax, and the weighted average.

Every attention mechanism in the book is the same three steps :cite:p:`bahdanau2015,luong2015,vaswani2017`:

1. a **score** :math:`e_{ts} = \\mathrm{score}(q_t, k_s)` says how well query :math:`t` matches key :math:`s`;
2. a **softmax** over the keys turns scores into weights :math:`\\alpha_{ts} \\ge 0`,
   :math:`\\sum_s \\alpha_{ts} = 1` (masked keys get exactly 0);
3. the **output** is the weighted average of the values, :math:`o_t = \\sum_s \\alpha_{ts} v_s`.

Conventions (the whole package follows them):

* batch first; extra leading dimensions (heads, ...) are allowed wherever shapes say ``...``;
* boolean masks, ``True`` = *may attend* (the convention of ``torch.nn.functional.scaled_dot_product_attention``;
  ``nn.MultiheadAttention``'s ``key_padding_mask`` uses the opposite one, ``True`` = ignore);
* a query whose keys are all masked gets all-zero weights and an all-zero output, never NaN;
* attention functions and modules return ``(output, weights)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import (
    broadcast,
    check_attention,
    check_count,
    check_counts,
    check_dropout,
    check_key_lengths,
    check_key_padding,
    check_lengths,
    check_mask,
    check_positions,
    check_positive,
    check_score_inputs,
    check_tensor,
    check_values,
    shape,
)

__all__ = [
    "masked_softmax",
    "scaled_dot_product_attention",
    "fused_attention",
    "causal_mask",
    "padding_mask",
    "key_padding_to_attn_mask",
    "select_positions",
    "sliding_window_mask",
    "gaussian_window",
    "local_m_mask",
    "local_p_weights",
    "DotProductScore",
    "ScaledDotProductScore",
    "AdditiveScore",
    "GeneralScore",
    "CosineScore",
    "LocationScore",
    "Attention",
    "LocalPAttention",
]

_LOW_PRECISION = (torch.float16, torch.bfloat16)

#: Since PyTorch 2.5, ``F.scaled_dot_product_attention`` on the CPU returns zeros (not NaN) for a query
#: whose keys are all masked, so :func:`fused_attention` skips its own check there; the test suite
#: checks this for the installed version. Elsewhere (CUDA, MPS, older PyTorch) the check stays on.
_CPU_SDPA_ZEROES_EMPTY_ROWS = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 5)


# --------------------------------------------------------------------------------------------
# Softmax and scaled dot-product attention
# --------------------------------------------------------------------------------------------


def masked_softmax(scores: Tensor, mask: Tensor | None = None, dim: int = -1) -> Tensor:
    """Numerically stable softmax over ``dim`` that gives masked positions exactly zero weight.

    .. math:: \\alpha_s = \\frac{m_s \\exp(e_s - \\max_{s'} e_{s'})}{\\sum_{s'} m_{s'} \\exp(e_{s'} - \\max e)}

    where the max runs over unmasked entries. Subtracting it changes nothing mathematically but keeps
    every ``exp`` in ``(0, 1]``, so logits of ``1e4`` or ``1e30`` do not overflow.

    Edge cases, all decided on purpose:

    * a row whose entries are all masked (or all ``-inf``) gives all zeros, never NaN;
    * ``-inf`` logits behave like masked entries;
    * ``+inf`` logits win outright: the row's weight is shared equally by its ``+inf`` entries (a finite
      logit equal to the dtype's largest value would tie with them);
    * NaN logits propagate (they are a bug upstream, hiding them would not help).

    float16 and bfloat16 scores are computed in float32 and the result is cast back to the input
    dtype (the exponentials and the sum are where half precision loses accuracy); float32 and
    float64 are computed in their own precision. Gradients flow as for ``torch.softmax``.

    Args:
        scores: attention logits, any shape.
        mask: boolean, broadcastable to ``scores.shape``; ``True`` = may attend, ``False`` = weight 0.
        dim: the dimension to normalise over (the keys).

    Shape:
        ``scores``: ``(..., Lk)`` (with ``dim=-1``); ``mask``: broadcastable to it; output: like ``scores``.

    Reference: the softmax of attention weights, :cite:p:`bahdanau2015` eq. 6.
    """
    check_tensor("scores", scores, floating=True)
    check_mask(mask, scores.shape, "scores")
    return _masked_softmax(scores, mask, dim)


def _masked_softmax(scores: Tensor, mask: Tensor | None, dim: int = -1, owned: bool = False) -> Tensor:
    """:func:`masked_softmax` without the checks. ``owned``: ``scores`` is the caller's temporary, free
    to overwrite (no copy of the ``(Lq, Lk)`` matrix is made)."""
    x = scores.float() if scores.dtype in _LOW_PRECISION else scores
    if mask is not None:
        x = x.masked_fill(~mask, float("-inf"))
    return _softmax_edge_rows(x, dim, inplace=owned or x is not scores).to(scores.dtype)


def _softmax_edge_rows(x: Tensor, dim: int, inplace: bool) -> Tensor:
    """``torch.softmax`` (one fused kernel: subtract the row max, exponentiate, normalise) with the edge
    cases decided on the device, without asking it anything (no host sync; a temporary is reused, not copied):

    * ``+inf`` becomes the dtype's largest value, so the ``+inf`` entries share their row and the rest get
      ``exp(x - max) = 0``;
    * a row whose entries are all ``-inf`` (all masked) is computed on zeros, then zeroed (zero gradient);
    * NaN is left alone, so it propagates.

    Other rows go through untouched: their weights and gradients are exactly ``torch.softmax``'s.
    """
    empty = x.detach().amax(dim=dim, keepdim=True) == float("-inf")  # (..., 1): nothing to attend to
    x = x if inplace else x.clone()  # inplace: x is a temporary nobody else holds (no backward pass saved it)
    x.nan_to_num_(nan=float("nan"), posinf=torch.finfo(x.dtype).max, neginf=float("-inf")).masked_fill_(empty, 0.0)
    weights = torch.softmax(x, dim=dim)
    # softmax saves its output for the backward pass: overwrite it only when there will be none
    return weights.masked_fill(empty, 0.0) if weights.requires_grad else weights.masked_fill_(empty, 0.0)


def causal_mask(Lq: int, Lk: int | None = None, device: torch.device | str | None = None) -> Tensor:
    """Boolean causal mask, ``True`` = may attend: query ``i`` may attend key ``j`` iff ``j <= i``.

    Aligned top-left like PyTorch's ``is_causal=True`` (``torch.ones(Lq, Lk).tril()``): with ``Lq < Lk``
    the last keys are hidden from every query; with ``Lq > Lk`` the last queries see every key.

    Shape:
        output: ``(Lq, Lk)`` with ``Lk = Lq`` by default.

    Reference: the decoder self-attention mask of :cite:p:`vaswani2017`, section 3.2.3.
    """
    Lk = Lq if Lk is None else Lk
    check_counts(allow_zero=True, Lq=Lq, Lk=Lk)
    return torch.ones(Lq, Lk, dtype=torch.bool, device=device).tril()


def padding_mask(lengths: Tensor | Sequence[int], max_len: int | None = None) -> Tensor:
    """Key padding mask from sequence lengths, ``True`` = real token (may be attended).

    ``padding_mask([2, 3], 4)`` is ``[[T, T, F, F], [T, T, T, F]]``: sequences are left-aligned and
    padded at the end. ``max_len`` defaults to ``max(lengths)``.

    Shape:
        ``lengths``: ``(batch,)``; output: ``(batch, max_len)``.
    """
    lengths = torch.as_tensor(lengths)
    max_len = check_lengths(lengths, max_len)
    return torch.arange(max_len, device=lengths.device) < lengths[:, None]


def key_padding_to_attn_mask(key_padding: Tensor, with_heads_dim: bool = True) -> Tensor:
    """Turn a key padding mask ``(batch, Lk)`` (``True`` = real token) into an attention mask.

    The result broadcasts against attention scores: ``(batch, 1, 1, Lk)`` for multi-head scores
    ``(batch, heads, Lq, Lk)`` (default) or ``(batch, 1, Lk)`` for single-head scores ``(batch, Lq, Lk)``.
    ``True`` = may attend. To convert ``nn.MultiheadAttention``'s ``key_padding_mask`` (``True`` = ignore),
    pass ``~key_padding_mask``.

    Shape:
        ``key_padding``: ``(batch, Lk)``; output: ``(batch, 1, 1, Lk)`` or ``(batch, 1, Lk)``.
    """
    check_key_padding(key_padding)
    return key_padding[:, None, None, :] if with_heads_dim else key_padding[:, None, :]


def select_positions(x: Tensor, positions: Tensor | None, like: Tensor, name: str = "logits_mask") -> Tensor:
    """Keep the rows of ``x`` where ``positions`` is ``True``, flattened in row-major order.

    Decoders use it to run the output layer only at real target tokens (``positions`` = the target
    padding mask, ``True`` = real token); ``positions=None`` returns ``x`` unchanged. ``like`` is the
    tensor whose ``(B, T)`` shape ``positions`` must have (the decoder input), and ``name`` the argument
    named in the error.

    Shape:
        ``x`` ``(B, T, D)``, ``positions`` ``(B, T)`` bool -> ``(N, D)`` with ``N = positions.sum()``.
    """
    if positions is None:
        return x
    check_positions(positions, like, name)
    return x[positions]


def sliding_window_mask(L: int, window: int, causal: bool = False, device: torch.device | str | None = None) -> Tensor:
    """Banded mask, ``True`` = may attend: query ``i`` sees key ``j`` iff ``|i - j| <= window``
    (and ``j <= i`` when ``causal``).

    Each query sees at most ``2 * window + 1`` keys (``window + 1`` if causal), the local attention
    pattern of sparse and long-document Transformers :cite:p:`child2019sparse,beltagy2020longformer`.

    Shape:
        output: ``(L, L)``.
    """
    check_counts(allow_zero=True, window=window, L=L)
    pos = torch.arange(L, device=device)
    offset = pos[:, None] - pos[None, :]  # (L, L): i - j
    mask = offset.abs() <= window
    if causal:
        mask &= offset >= 0
    return mask


def scaled_dot_product_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    mask: Tensor | None = None,
    *,
    scale: float | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    bias: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Scaled dot-product attention, written out so that the weights can be returned.

    .. math:: \\mathrm{Attention}(Q, K, V) = \\mathrm{softmax}\\!\\left(\\frac{Q K^\\top}{\\sqrt{d_k}}\\right) V

    Args:
        query, key, value: same dtype; leading (batch, head) dimensions broadcast like ``torch.matmul``.
        mask: boolean, broadcastable to ``(..., Lq, Lk)``; ``True`` = may attend (as in
            ``torch.nn.functional.scaled_dot_product_attention``).
        scale: multiplies the scores; default ``1 / sqrt(Dk)``.
        dropout_p: dropout on the weights, applied whenever ``dropout_p > 0`` (pass 0 in evaluation).
        is_causal: also apply :func:`causal_mask` (top-left aligned); combined with ``mask`` by AND.
        bias: float, broadcastable to ``(..., Lq, Lk)``, added to the scaled scores before the softmax:
            :math:`\\mathrm{softmax}(Q K^\\top / \\sqrt{d_k} + B)`, e.g. ALiBi
            (:func:`~attn_tutorial.positional.alibi_bias`) or a T5-style relative bias
            :cite:p:`press2022alibi,raffel2020t5`. ``-inf`` entries act as masked keys.

    Returns:
        ``(output, weights)``; ``weights`` are the ones actually used for the output, i.e. *after*
        dropout. A query with every key masked gets zero weights and a zero output (never NaN).

    Shape:
        ``query`` ``(..., Lq, Dk)``, ``key`` ``(..., Lk, Dk)``, ``value`` ``(..., Lk, Dv)``
        -> ``output`` ``(..., Lq, Dv)``, ``weights`` ``(..., Lq, Lk)``.

    Edge cases: ``Lq == 0`` returns empty tensors (there is nothing to compute, nothing is wrong);
    ``Lk == 0`` raises ``ValueError`` naming ``key``: with no keys, attention is undefined and an empty
    source is almost always a bug upstream. Half-precision softmax runs in float32 (see
    :func:`masked_softmax`).

    Reference: :cite:p:`vaswani2017`, eq. 1.
    """
    check_attention(query, key, value, mask, dropout_p, bias)
    return _attention(query, key, value, mask, scale, dropout_p, is_causal, bias)


def _causal(q: Tensor, k: Tensor) -> Tensor:
    return torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()  # (Lq, Lk), top-left


def _attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, scale: float | None = None,
    dropout_p: float = 0.0, is_causal: bool = False, bias: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The core of :func:`scaled_dot_product_attention`, for callers that checked their inputs."""
    if is_causal:
        mask = _causal(q, k) if mask is None else mask & _causal(q, k)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q * scale) @ k.transpose(-2, -1)  # (..., Lq, Lk); scaling q is cheaper than scaling scores
    if bias is not None:
        scores = scores + bias
    weights = _masked_softmax(scores, mask, owned=True)  # (..., Lq, Lk)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p, training=True)
    return weights @ v, weights  # (..., Lq, Dv), (..., Lq, Lk)


def fused_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    mask: Tensor | None = None,
    *,
    scale: float | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    bias: Tensor | None = None,
) -> tuple[Tensor, None]:
    """The fast path: the same computation as :func:`scaled_dot_product_attention` through PyTorch's fused
    ``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient kernels).

    Fused kernels never build the ``(Lq, Lk)`` weight matrix, which is why they are fast and why they
    cannot return it: ``weights`` is always ``None``. Differences from calling PyTorch directly: the
    same argument checks and messages as :func:`scaled_dot_product_attention`, ``mask`` and
    ``is_causal`` may be combined (AND), and rows with every key masked are guaranteed to give a zero
    output. Some backends return NaN there; those rows are then zeroed with one elementwise pass over
    the output (skipped on the CPU with PyTorch >= 2.5, whose kernels already return zeros).

    Args and Shape: as :func:`scaled_dot_product_attention`; ``mask`` is boolean, ``True`` = may attend;
    ``bias`` (float) becomes PyTorch's float ``attn_mask``, with the masked entries set to ``-inf``.

    Reference: :cite:p:`dao2022flashattention`.
    """
    check_attention(query, key, value, mask, dropout_p, bias)
    return _fused(query, key, value, mask, scale, dropout_p, is_causal, bias), None


def _fused(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, scale: float | None = None,
    dropout_p: float = 0.0, is_causal: bool = False, bias: Tensor | None = None,
) -> Tensor:
    """The core of :func:`fused_attention` (the output only), for callers that checked their inputs."""
    if bias is not None:
        allowed = bias > float("-inf")  # what the bias itself leaves visible
        if mask is not None:
            allowed = allowed & mask
        if is_causal:
            allowed = allowed & _causal(q, k)
        float_mask = bias.masked_fill(~allowed, float("-inf"))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=float_mask, dropout_p=dropout_p, scale=scale)
        row_visible = allowed.any(dim=-1, keepdim=True)  # a float mask gives NaN for rows with nothing visible
        return out.masked_fill(~row_visible.expand(out.shape), 0.0)
    if mask is not None and is_causal:
        mask, is_causal = mask & _causal(q, k), False
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale)
    on_cpu = out.device.type == "cpu"
    if mask is not None and not (on_cpu and _CPU_SDPA_ZEROES_EMPTY_ROWS):
        # A query with no visible key: force an exact zero output (no NaN), as the transparent path does.
        row_visible = mask.any(dim=-1, keepdim=True)  # (..., Lq or 1, 1), as cheap as the mask itself
        # On CPU, look first and pay for a pass over the output only when such a row exists; on an
        # accelerator, always do the pass rather than wait for the device to answer the question.
        if not on_cpu or not bool(row_visible.all()):
            # expand: masked_fill with a stride-0 boolean mask is many times slower on CPU
            out = out.masked_fill(~row_visible.expand(out.shape), 0.0)
    return out


# --------------------------------------------------------------------------------------------
# Score functions: forward(query (B, Lq, Dq), key (B, Lk, Dk)) -> scores (B, Lq, Lk)
# --------------------------------------------------------------------------------------------


class DotProductScore(nn.Module):
    """Dot-product score :math:`e_{ts} = q_t^\\top k_s` (:cite:p:`luong2015`, "dot").

    Shape:
        ``query`` ``(..., Lq, D)``, ``key`` ``(..., Lk, D)`` -> scores ``(..., Lq, Lk)``.
    """

    def forward(self, query: Tensor, key: Tensor) -> Tensor:
        check_score_inputs(query, key, same_size=" (use GeneralScore or AdditiveScore for different sizes)")
        return query @ key.transpose(-2, -1)


class ScaledDotProductScore(DotProductScore):
    """Scaled dot-product score :math:`e_{ts} = q_t^\\top k_s / \\sqrt{d}` (:cite:p:`vaswani2017`).

    Dividing by :math:`\\sqrt{d}` keeps the scores' variance near 1 for unit-variance inputs, so the
    softmax does not saturate as the dimension grows.

    Shape:
        ``query`` ``(..., Lq, D)``, ``key`` ``(..., Lk, D)`` -> scores ``(..., Lq, Lk)``.
    """

    def forward(self, query: Tensor, key: Tensor) -> Tensor:
        return super().forward(query, key) / math.sqrt(query.shape[-1])


class AdditiveScore(nn.Module):
    """Additive (Bahdanau, "concat") score :math:`e_{ts} = v^\\top \\tanh(W_q q_t + W_k k_s)`.

    A one-hidden-layer MLP on the pair; query and key may have different sizes.

    Shape:
        ``query`` ``(..., Lq, query_dim)``, ``key`` ``(..., Lk, key_dim)`` -> scores ``(..., Lq, Lk)``.
        The intermediate ``(..., Lq, Lk, hidden_dim)`` tensor is what makes it costlier than a dot product.

    Reference: :cite:p:`bahdanau2015`, appendix A.1.2.
    """

    def __init__(self, query_dim: int, key_dim: int, hidden_dim: int, bias: bool = False) -> None:
        super().__init__()
        self.query_dim, self.key_dim, self.hidden_dim = query_dim, key_dim, hidden_dim
        self.w_q = nn.Linear(query_dim, hidden_dim, bias=bias)
        self.w_k = nn.Linear(key_dim, hidden_dim, bias=bias)
        self.v = nn.Linear(hidden_dim, 1, bias=False)

    def forward(self, query: Tensor, key: Tensor) -> Tensor:
        check_score_inputs(query, key, self.query_dim, self.key_dim)
        q = self.w_q(query).unsqueeze(-2)  # (..., Lq, 1, H)
        k = self.w_k(key).unsqueeze(-3)  # (..., 1, Lk, H)
        return self.v(torch.tanh(q + k)).squeeze(-1)  # (..., Lq, Lk)


class GeneralScore(nn.Module):
    """Bilinear ("general") score :math:`e_{ts} = q_t^\\top W k_s` with :math:`W \\in \\mathbb{R}^{d_q \\times d_k}`.

    Shape:
        ``query`` ``(..., Lq, query_dim)``, ``key`` ``(..., Lk, key_dim)`` -> scores ``(..., Lq, Lk)``.

    Reference: :cite:p:`luong2015`, eq. 8.
    """

    def __init__(self, query_dim: int, key_dim: int) -> None:
        super().__init__()
        self.query_dim, self.key_dim = query_dim, key_dim
        self.weight = nn.Parameter(torch.empty(query_dim, key_dim))
        nn.init.xavier_uniform_(self.weight)

    def forward(self, query: Tensor, key: Tensor) -> Tensor:
        check_score_inputs(query, key, self.query_dim, self.key_dim)
        return (query @ self.weight) @ key.transpose(-2, -1)  # (..., Lq, Dk) @ (..., Dk, Lk)


class CosineScore(nn.Module):
    """Cosine score :math:`e_{ts} = \\cos(q_t, k_s) / \\tau`, bounded in :math:`[-1/\\tau, 1/\\tau]`.

    With ``learnable=True`` the inverse temperature :math:`1/\\tau` is a parameter (stored as its log,
    initialised from ``temperature``), as in content-based addressing :cite:p:`graves2014ntm`.

    Shape:
        ``query`` ``(..., Lq, D)``, ``key`` ``(..., Lk, D)`` -> scores ``(..., Lq, Lk)``.
    """

    def __init__(self, temperature: float = 1.0, learnable: bool = False, eps: float = 1e-8) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        log_scale = torch.tensor(-math.log(temperature))
        if learnable:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)
        self.eps = eps

    def forward(self, query: Tensor, key: Tensor) -> Tensor:
        check_score_inputs(query, key, same_size="")
        q = F.normalize(query, dim=-1, eps=self.eps)
        k = F.normalize(key, dim=-1, eps=self.eps)
        return (q @ k.transpose(-2, -1)) * self.log_scale.exp().to(query.dtype)


class LocationScore(nn.Module):
    """Location-based score :math:`e_t = W_a h_t`: the weights depend only on the query, not on key content.

    ``num_keys`` is the longest source the module can address; with ``Lk < num_keys`` the first ``Lk``
    scores are used. The keys are only consulted for their number.

    Shape:
        ``query`` ``(..., Lq, query_dim)``, ``key`` ``(..., Lk, any)`` with ``Lk <= num_keys`` -> scores ``(..., Lq, Lk)``.

    Reference: :cite:p:`luong2015`, eq. 8 ("location").
    """

    def __init__(self, query_dim: int, num_keys: int) -> None:
        super().__init__()
        self.query_dim, self.num_keys = query_dim, num_keys
        self.proj = nn.Linear(query_dim, num_keys)

    def forward(self, query: Tensor, key: Tensor) -> Tensor:
        check_score_inputs(query, key, self.query_dim, num_keys=self.num_keys)
        Lk, batch = key.shape[-2], broadcast(query.shape[:-2], key.shape[:-2])
        return self.proj(query)[..., :Lk].expand(*batch, -1, Lk)  # (..., Lq, Lk)


class Attention(nn.Module):
    """Generic attention: any score module, a masked softmax and the weighted average of the values.

    .. math:: \\alpha_{ts} = \\mathrm{softmax}_s(\\mathrm{score}(q_t, k_s)), \\qquad o_t = \\sum_s \\alpha_{ts} v_s

    ``forward(query, key, value, mask=None)`` returns ``(output, weights)``; ``mask`` is boolean,
    broadcastable to ``(..., Lq, Lk)``, ``True`` = may attend. Dropout (on the weights) is active
    only in training mode; the returned weights are the ones used (after dropout).

    Shape:
        ``query`` ``(..., Lq, Dq)``, ``key`` ``(..., Lk, Dk)``, ``value`` ``(..., Lk, Dv)``
        -> ``output`` ``(..., Lq, Dv)``, ``weights`` ``(..., Lq, Lk)``.

    Reference: :cite:p:`bahdanau2015,luong2015`.
    """

    def __init__(self, score: nn.Module, dropout: float = 0.0) -> None:
        super().__init__()
        check_dropout(dropout, "dropout_p")
        self.score = score
        self.dropout = nn.Dropout(dropout)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_values(value, key)
        scores = self.score(query, key)  # (..., Lq, Lk)
        check_mask(mask, scores.shape, "attention scores (..., Lq, Lk)")
        weights = self.dropout(_masked_softmax(scores, mask))  # (..., Lq, Lk)
        return weights @ value, weights


# --------------------------------------------------------------------------------------------
# Luong et al.'s local attention (section 3.2)
# --------------------------------------------------------------------------------------------


def gaussian_window(positions: Tensor, center: Tensor, sigma: float | Tensor) -> Tensor:
    """Unnormalised Gaussian :math:`\\exp(-(s - p_t)^2 / (2\\sigma^2))`, broadcasting ``positions`` against ``center``.

    Shape:
        ``positions`` e.g. ``(Lk,)``, ``center`` e.g. ``(..., Lq, 1)`` -> broadcast shape, e.g. ``(..., Lq, Lk)``.

    Reference: :cite:p:`luong2015`, eq. 10.
    """
    positions = torch.as_tensor(positions)
    center = torch.as_tensor(center)
    sigma = torch.as_tensor(sigma, dtype=torch.promote_types(center.dtype, torch.float32))
    check_positive("sigma", sigma)
    return torch.exp(-((positions - center) ** 2) / (2 * sigma**2))


def local_m_mask(Lk: int, centers: Tensor, window: int) -> Tensor:
    """Local-m (monotonic) window, ``True`` = may attend: key ``s`` is visible to query ``t`` iff
    ``|s - p_t| <= window``, with centres ``p_t`` given (``p_t = t`` for monotonic alignment).

    Shape:
        ``centers`` ``(..., Lq)`` (int or float) -> mask ``(..., Lq, Lk)``.

    Reference: :cite:p:`luong2015`, section 3.2 ("local-m").
    """
    check_count("window", window, allow_zero=True)
    centers = torch.as_tensor(centers)
    s = torch.arange(Lk, device=centers.device)
    return (s - centers.unsqueeze(-1)).abs() <= window  # (..., Lq, Lk)


def local_p_weights(scores: Tensor, centers: Tensor, window: int, mask: Tensor | None = None) -> Tensor:
    """Local-p weights: a softmax restricted to the window :math:`[p_t - D, p_t + D]`, times a Gaussian.

    .. math:: a_t(s) = \\mathrm{align}(h_t, \\bar h_s)\\, \\exp\\!\\left(-\\frac{(s - p_t)^2}{2\\sigma^2}\\right), \\quad \\sigma = D / 2

    As in the paper the Gaussian is applied after the softmax, so the weights of a row sum to at most 1.
    ``mask`` (boolean, ``True`` = may attend, broadcastable to ``scores``) further restricts the window.

    Shape:
        ``scores`` ``(..., Lq, Lk)``, ``centers`` ``(..., Lq)`` (float) -> weights ``(..., Lq, Lk)``.

    Reference: :cite:p:`luong2015`, eq. 9-10.
    """
    check_count("window", window, what=" (D in the paper)")
    check_mask(mask, scores.shape, "scores")
    return _local_p_weights(scores, centers, window, mask)


def _local_p_weights(scores: Tensor, centers: Tensor, window: int, mask: Tensor | None) -> Tensor:
    """:func:`local_p_weights` without the checks."""
    Lk = scores.shape[-1]
    s = torch.arange(Lk, device=scores.device)
    in_window = (s - centers.unsqueeze(-1)).abs() <= window  # (..., Lq, Lk): local_m_mask
    if mask is not None:
        in_window = in_window & mask
    align = _masked_softmax(scores, in_window)
    positions = torch.arange(Lk, device=scores.device, dtype=scores.dtype)
    return align * gaussian_window(positions, centers.unsqueeze(-1), window / 2.0).to(scores.dtype)


class LocalPAttention(nn.Module):
    """Luong's local-p (predictive) attention.

    The centre of each query's window is predicted, :math:`p_t = S \\cdot \\mathrm{sigmoid}(v_p^\\top \\tanh(W_p h_t))`,
    and the weights are :func:`local_p_weights` with :math:`\\sigma = D/2`. Positions are 0-based, so
    ``S = length - 1`` (the last real key), per example when ``key_lengths`` is given.

    Args:
        query_dim, key_dim: feature sizes of queries (decoder states) and keys (encoder states).
        window: the half-width ``D``.
        score: ``"general"`` (:class:`GeneralScore`), ``"dot"`` (:class:`DotProductScore`) or
            ``"concat"`` (:class:`AdditiveScore` with ``hidden_dim = query_dim``).

    ``forward(query, key, value, mask=None, key_lengths=None)`` returns ``(context, weights)``;
    ``mask`` is boolean, broadcastable to ``(B, Lq, Lk)``, ``True`` = may attend.

    Shape:
        ``query`` ``(B, Lq, query_dim)``, ``key`` ``(B, Lk, key_dim)``, ``value`` ``(B, Lk, Dv)``,
        ``key_lengths`` ``(B,)`` -> ``context`` ``(B, Lq, Dv)``, ``weights`` ``(B, Lq, Lk)``.

    Reference: :cite:p:`luong2015`, section 3.2, eq. 9-10.
    """

    def __init__(self, query_dim: int, key_dim: int, window: int, score: str = "general") -> None:
        super().__init__()
        if score == "general":
            self.score: nn.Module = GeneralScore(query_dim, key_dim)
        elif score == "dot":
            if query_dim != key_dim:
                raise ValueError(f"score='dot' needs query_dim == key_dim, got {query_dim} and {key_dim}")
            self.score = DotProductScore()
        elif score == "concat":
            self.score = AdditiveScore(query_dim, key_dim, query_dim)
        else:
            raise ValueError(f"score must be 'general', 'dot' or 'concat', got {score!r}")
        check_count("window", window)
        self.window = window
        self.w_p = nn.Linear(query_dim, query_dim, bias=False)
        self.v_p = nn.Linear(query_dim, 1, bias=False)

    def predict_centers(self, query: Tensor, key_lengths: Tensor) -> Tensor:
        """:math:`p_t = S \\cdot \\mathrm{sigmoid}(v_p^\\top \\tanh(W_p h_t))` with ``S = key_lengths - 1``; shape ``(B, Lq)``."""
        gate = torch.sigmoid(self.v_p(torch.tanh(self.w_p(query)))).squeeze(-1)  # (B, Lq)
        return (key_lengths.to(gate.dtype) - 1).unsqueeze(-1) * gate

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        mask: Tensor | None = None,
        key_lengths: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        check_tensor("query", query, min_dim=3, floating=True)
        check_values(value, key, min_dim=3)
        B, Lk = key.shape[0], key.shape[-2]
        key_lengths = torch.full((B,), Lk, device=key.device) if key_lengths is None else torch.as_tensor(key_lengths, device=key.device)
        check_key_lengths(key_lengths, key)
        scores = self.score(query, key)  # (B, Lq, Lk)
        valid = torch.arange(Lk, device=key.device) < key_lengths[:, None, None]  # (B, 1, Lk): padding_mask
        check_mask(mask, scores.shape, "attention scores (B, Lq, Lk)")
        if mask is not None:
            valid = valid & mask
        return self._attend(scores, query, value, valid, key_lengths)

    def attend(self, query: Tensor, key: Tensor, value: Tensor, valid: Tensor, key_lengths: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`forward` without its checks, for a caller that has validated its inputs once (a decoder
        calls this at every step: checking ``key_lengths`` against ``Lk`` would read them from the device,
        one host synchronisation per step). ``valid`` ``(B, 1 or Lq, Lk)``, ``True`` = may attend (padding
        included), ``key_lengths`` ``(B,)`` in ``[1, Lk]``; returns ``(context, weights)`` as :meth:`forward`.
        """
        return self._attend(self.score(query, key), query, value, valid, key_lengths)

    def _attend(self, scores: Tensor, query: Tensor, value: Tensor, valid: Tensor, key_lengths: Tensor) -> tuple[Tensor, Tensor]:
        centers = self.predict_centers(query, key_lengths)  # (B, Lq)
        weights = _local_p_weights(scores, centers, self.window, valid)  # (B, Lq, Lk)
        return weights @ value, weights
