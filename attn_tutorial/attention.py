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
# Validation helpers (private): every message names the argument, its shape and what was expected.
# --------------------------------------------------------------------------------------------


def _shape(t: Tensor) -> str:
    return str(tuple(t.shape))


def _check_tensor(name: str, t: object, min_dim: int = 0, floating: bool = False) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() < min_dim:
        raise ValueError(
            f"{name} has shape {_shape(t)} but needs at least {min_dim} dimensions; "
            f"expected {name}.dim() >= {min_dim}"
        )
    if floating and not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype} (shape {_shape(t)})")


def _broadcast(*shapes: Sequence[int]) -> tuple[int, ...] | None:
    """NumPy broadcasting of shapes in plain Python (``None`` if they do not broadcast).

    ``torch.broadcast_shapes`` builds tensors to find out and costs a few hundred microseconds on a
    busy CPU: more than a small fused attention kernel. This helper costs about a microsecond.
    """
    if all(s == shapes[0] for s in shapes[1:]):  # the common case, no work
        return tuple(shapes[0]) if shapes else ()
    ndim = max(len(s) for s in shapes)
    out = [1] * ndim
    for shape in shapes:
        for i, n in enumerate(shape, start=ndim - len(shape)):
            if n != 1:
                if out[i] not in (1, n):
                    return None
                out[i] = n
    return tuple(out)


def _check_mask(mask: object, target: Sequence[int], target_name: str, name: str = "mask") -> Tensor:
    """Check that ``mask`` is boolean and broadcasts to ``target`` without growing it."""
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name} must be a boolean torch.Tensor (True = may attend), got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(
            f"{name} has dtype {mask.dtype} (shape {_shape(mask)}) but must be torch.bool with True = may attend; "
            f"convert a 0/1 mask with mask.bool(), an additive -inf mask with (mask == 0)"
        )
    target = tuple(target)
    if _broadcast(mask.shape, target) != target:
        raise ValueError(
            f"{name} has shape {_shape(mask)} which does not broadcast to the {target_name} shape {target}; "
            f"expected a shape broadcastable to {target}, e.g. {target[-2:]} or a (batch, 1, ..., Lk) key padding mask"
        )
    return mask


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
    * ``+inf`` logits win outright: the row's weight is shared equally by its ``+inf`` entries;
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
    _check_tensor("scores", scores, floating=True)
    out_dtype = scores.dtype
    x = scores.float() if scores.dtype in _LOW_PRECISION else scores
    if mask is not None:
        _check_mask(mask, x.shape, "scores")
        x = x.masked_fill(~mask, float("-inf"))
    # The row max is a constant shift; softmax is invariant to it, so no gradient has to flow through it.
    row_max = x.detach().amax(dim=dim, keepdim=True)
    if bool(torch.isfinite(row_max).all()):
        # The common case: every row has a finite max. torch.softmax performs exactly the steps below
        # (subtract the row max, exponentiate, normalise) in one fused kernel; masked entries are -inf
        # and get exp(-inf) = 0 exactly.
        return torch.softmax(x, dim=dim).to(out_dtype)
    # Written out, for rows that are fully masked (max -inf), hold +inf, or NaN (which propagates).
    has_pos_inf = row_max == float("inf")
    # Rows with all entries masked / -inf have max -inf: shift by 0 instead (every exp is then 0).
    shift = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    shifted = x - shift
    if bool(has_pos_inf.any()):
        # +inf entries share the row: logit 0 for them, -inf for everything else in that row.
        inf_logits = torch.where(x == float("inf"), torch.zeros_like(x), torch.full_like(x, float("-inf")))
        shifted = torch.where(has_pos_inf, inf_logits, shifted)
    e = torch.exp(shifted)
    denom = e.sum(dim=dim, keepdim=True)
    # denom >= 1 whenever the row has an unmasked finite entry (its max contributes exp(0) = 1);
    # it is 0 only for fully masked rows, where e is all zeros: divide those by 1 to get zeros.
    weights = e / torch.where(denom > 0, denom, torch.ones_like(denom))
    return weights.to(out_dtype)


def causal_mask(Lq: int, Lk: int | None = None, device: torch.device | str | None = None) -> Tensor:
    """Boolean causal mask, ``True`` = may attend: query ``i`` may attend key ``j`` iff ``j <= i``.

    Aligned top-left like PyTorch's ``is_causal=True`` (``torch.ones(Lq, Lk).tril()``): with ``Lq < Lk``
    the last keys are hidden from every query; with ``Lq > Lk`` the last queries see every key.

    Shape:
        output: ``(Lq, Lk)`` with ``Lk = Lq`` by default.

    Reference: the decoder self-attention mask of :cite:p:`vaswani2017`, section 3.2.3.
    """
    Lk = Lq if Lk is None else Lk
    for name, n in (("Lq", Lq), ("Lk", Lk)):
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"{name} must be a non-negative int, got {n!r}")
    return torch.ones(Lq, Lk, dtype=torch.bool, device=device).tril()


def padding_mask(lengths: Tensor | Sequence[int], max_len: int | None = None) -> Tensor:
    """Key padding mask from sequence lengths, ``True`` = real token (may be attended).

    ``padding_mask([2, 3], 4)`` is ``[[T, T, F, F], [T, T, T, F]]``: sequences are left-aligned and
    padded at the end. ``max_len`` defaults to ``max(lengths)``.

    Shape:
        ``lengths``: ``(batch,)``; output: ``(batch, max_len)``.
    """
    lengths = torch.as_tensor(lengths)
    if lengths.dim() != 1 or lengths.is_floating_point() or lengths.dtype == torch.bool:
        raise ValueError(f"lengths must be a 1-D integer tensor, got shape {_shape(lengths)} and dtype {lengths.dtype}")
    if lengths.numel() and int(lengths.min()) < 0:
        raise ValueError(f"lengths must be non-negative, got {lengths.tolist()}")
    longest = int(lengths.max()) if lengths.numel() else 0
    if max_len is None:
        max_len = longest
    if longest > max_len:
        raise ValueError(f"lengths has a sequence of length {longest} but max_len is {max_len}; expected max(lengths) <= max_len")
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
    _check_tensor("key_padding", key_padding)
    if key_padding.dtype != torch.bool or key_padding.dim() != 2:
        raise ValueError(
            f"key_padding has shape {_shape(key_padding)} and dtype {key_padding.dtype}; "
            "expected a boolean (batch, Lk) tensor with True = real token"
        )
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
    if not isinstance(positions, Tensor) or positions.dtype != torch.bool or positions.shape != like.shape:
        got = f"shape {_shape(positions)} and dtype {positions.dtype}" if isinstance(positions, Tensor) else type(positions).__name__
        raise ValueError(f"{name} must be a bool tensor of shape {tuple(like.shape)} (as the decoder input), got {got}")
    return x[positions]


def sliding_window_mask(L: int, window: int, causal: bool = False, device: torch.device | str | None = None) -> Tensor:
    """Banded mask, ``True`` = may attend: query ``i`` sees key ``j`` iff ``|i - j| <= window``
    (and ``j <= i`` when ``causal``).

    Each query sees at most ``2 * window + 1`` keys (``window + 1`` if causal), the local attention
    pattern of sparse and long-document Transformers :cite:p:`child2019sparse,beltagy2020longformer`.

    Shape:
        output: ``(L, L)``.
    """
    if not isinstance(window, int) or isinstance(window, bool) or window < 0:
        raise ValueError(f"window must be a non-negative int, got {window!r}")
    if not isinstance(L, int) or isinstance(L, bool) or L < 0:
        raise ValueError(f"L must be a non-negative int, got {L!r}")
    pos = torch.arange(L, device=device)
    offset = pos[:, None] - pos[None, :]  # (L, L): i - j
    mask = offset.abs() <= window
    if causal:
        mask &= offset >= 0
    return mask


def _check_qkv(query: Tensor, key: Tensor, value: Tensor) -> None:
    _check_tensor("query", query, min_dim=2, floating=True)
    _check_tensor("key", key, min_dim=2, floating=True)
    _check_tensor("value", value, min_dim=2, floating=True)
    if key.shape[-1] != query.shape[-1]:
        raise ValueError(
            f"key has shape {_shape(key)} but query has feature size {query.shape[-1]}; "
            f"expected key.shape[-1] == {query.shape[-1]}"
        )
    if value.shape[-2] != key.shape[-2]:
        raise ValueError(
            f"value has shape {_shape(value)} but key has length {key.shape[-2]} (shape {_shape(key)}); "
            f"expected value.shape[-2] == {key.shape[-2]}, one value per key"
        )
    if key.shape[-2] == 0:
        raise ValueError(
            f"key has shape {_shape(key)}: there are no keys to attend to (Lk == 0); "
            "expected at least one key (mask keys out instead of removing them all)"
        )
    if not (query.dtype == key.dtype == value.dtype):
        raise TypeError(f"query, key and value must share a dtype, got {query.dtype}, {key.dtype} and {value.dtype}")
    if _broadcast(query.shape[:-2], key.shape[:-2], value.shape[:-2]) is None:
        raise ValueError(
            f"the leading (batch) dimensions of query {_shape(query)}, key {_shape(key)} and value {_shape(value)} "
            "do not broadcast; expected matching or broadcastable batch shapes"
        )


def _check_dropout(dropout_p: float) -> None:
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p!r}")


def _scores_shape(query: Tensor, key: Tensor) -> tuple[int, ...]:
    batch = _broadcast(query.shape[:-2], key.shape[:-2])
    assert batch is not None  # checked by _check_qkv
    return (*batch, query.shape[-2], key.shape[-2])


def _check_bias(bias: object, query: Tensor, target: Sequence[int]) -> Tensor:
    """Check that an additive ``bias`` is a floating tensor of the query's dtype broadcasting to ``target``."""
    if not isinstance(bias, Tensor) or not bias.is_floating_point():
        got = f"dtype {bias.dtype}" if isinstance(bias, Tensor) else type(bias).__name__
        raise TypeError(f"bias must be a floating-point torch.Tensor added to the scores, got {got}; pass boolean masks as mask")
    if bias.dtype != query.dtype:
        raise TypeError(f"bias has dtype {bias.dtype} but query has {query.dtype}; expected the same dtype")
    if _broadcast(bias.shape, tuple(target)) != tuple(target):
        raise ValueError(f"bias has shape {_shape(bias)} which does not broadcast to the attention scores shape {tuple(target)}")
    return bias


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
    _check_qkv(query, key, value)
    _check_dropout(dropout_p)
    scores_shape = _scores_shape(query, key)
    if mask is not None:
        _check_mask(mask, scores_shape, "attention scores (..., Lq, Lk)")
    if is_causal:
        causal = causal_mask(query.shape[-2], key.shape[-2], device=query.device)
        mask = causal if mask is None else mask & causal
    if scale is None:
        scale = 1.0 / math.sqrt(query.shape[-1])
    scores = (query * scale) @ key.transpose(-2, -1)  # (..., Lq, Lk); scaling q is cheaper than scaling scores
    if bias is not None:
        scores = scores + _check_bias(bias, query, scores_shape)  # (..., Lq, Lk)
    weights = masked_softmax(scores, mask, dim=-1)  # (..., Lq, Lk)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p, training=True)
    return weights @ value, weights  # (..., Lq, Dv), (..., Lq, Lk)


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
    _check_qkv(query, key, value)
    _check_dropout(dropout_p)
    if bias is not None:
        shape = _scores_shape(query, key)
        _check_bias(bias, query, shape)
        allowed = bias > float("-inf")  # what the bias itself leaves visible
        if mask is not None:
            _check_mask(mask, shape, "attention scores (..., Lq, Lk)")
            allowed = allowed & mask
        if is_causal:
            allowed = allowed & causal_mask(query.shape[-2], key.shape[-2], device=query.device)
        float_mask = bias.masked_fill(~allowed, float("-inf"))
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=float_mask, dropout_p=dropout_p, scale=scale)
        row_visible = allowed.any(dim=-1, keepdim=True)  # a float mask gives NaN for rows with nothing visible
        return out.masked_fill(~row_visible.expand(out.shape), 0.0), None
    if mask is not None:
        _check_mask(mask, _scores_shape(query, key), "attention scores (..., Lq, Lk)")
        if is_causal:
            mask = mask & causal_mask(query.shape[-2], key.shape[-2], device=query.device)
            is_causal = False
    out = F.scaled_dot_product_attention(
        query, key, value, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale
    )
    on_cpu = out.device.type == "cpu"
    if mask is not None and not (on_cpu and _CPU_SDPA_ZEROES_EMPTY_ROWS):
        # A query with no visible key: force an exact zero output (no NaN), as the transparent path does.
        row_visible = mask.any(dim=-1, keepdim=True)  # (..., Lq or 1, 1), as cheap as the mask itself
        # On CPU, look first and pay for a pass over the output only when such a row exists; on an
        # accelerator, always do the pass rather than wait for the device to answer the question.
        if not on_cpu or not bool(row_visible.all()):
            # expand: masked_fill with a stride-0 boolean mask is many times slower on CPU
            out = out.masked_fill(~row_visible.expand(out.shape), 0.0)
    return out, None


# --------------------------------------------------------------------------------------------
# Score functions: forward(query (B, Lq, Dq), key (B, Lk, Dk)) -> scores (B, Lq, Lk)
# --------------------------------------------------------------------------------------------


def _check_score_inputs(query: Tensor, key: Tensor, query_dim: int | None = None, key_dim: int | None = None) -> None:
    _check_tensor("query", query, min_dim=2, floating=True)
    _check_tensor("key", key, min_dim=2, floating=True)
    if query_dim is not None and query.shape[-1] != query_dim:
        raise ValueError(f"query has shape {_shape(query)}; expected query.shape[-1] == query_dim == {query_dim}")
    if key_dim is not None and key.shape[-1] != key_dim:
        raise ValueError(f"key has shape {_shape(key)}; expected key.shape[-1] == key_dim == {key_dim}")


class DotProductScore(nn.Module):
    """Dot-product score :math:`e_{ts} = q_t^\\top k_s` (:cite:p:`luong2015`, "dot").

    Shape:
        ``query`` ``(..., Lq, D)``, ``key`` ``(..., Lk, D)`` -> scores ``(..., Lq, Lk)``.
    """

    def forward(self, query: Tensor, key: Tensor) -> Tensor:
        _check_score_inputs(query, key)
        if key.shape[-1] != query.shape[-1]:
            raise ValueError(
                f"key has shape {_shape(key)} but query has feature size {query.shape[-1]}; "
                f"expected key.shape[-1] == {query.shape[-1]} (use GeneralScore or AdditiveScore for different sizes)"
            )
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
        _check_score_inputs(query, key, self.query_dim, self.key_dim)
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
        _check_score_inputs(query, key, self.query_dim, self.key_dim)
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
        _check_score_inputs(query, key)
        if key.shape[-1] != query.shape[-1]:
            raise ValueError(
                f"key has shape {_shape(key)} but query has feature size {query.shape[-1]}; expected key.shape[-1] == {query.shape[-1]}"
            )
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
        _check_score_inputs(query, key, self.query_dim)
        Lk = key.shape[-2]
        if Lk > self.num_keys:
            raise ValueError(f"key has shape {_shape(key)} with Lk = {Lk} keys but num_keys is {self.num_keys}; expected Lk <= num_keys")
        scores = self.proj(query)[..., :Lk]  # (..., Lq, Lk)
        batch = _broadcast(query.shape[:-2], key.shape[:-2])
        if batch is None:
            raise ValueError(f"query {_shape(query)} and key {_shape(key)} have batch dimensions that do not broadcast")
        return scores.expand(*batch, *scores.shape[-2:])


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
        _check_dropout(dropout)
        self.score = score
        self.dropout = nn.Dropout(dropout)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_tensor("value", value, min_dim=2, floating=True)
        if value.shape[-2] != key.shape[-2]:
            raise ValueError(
                f"value has shape {_shape(value)} but key has length {key.shape[-2]} (shape {_shape(key)}); "
                f"expected value.shape[-2] == {key.shape[-2]}"
            )
        if key.shape[-2] == 0:
            raise ValueError(f"key has shape {_shape(key)}: there are no keys to attend to; expected Lk >= 1")
        scores = self.score(query, key)  # (..., Lq, Lk)
        if mask is not None:
            _check_mask(mask, scores.shape, "attention scores (..., Lq, Lk)")
        weights = self.dropout(masked_softmax(scores, mask))  # (..., Lq, Lk)
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
    if bool((sigma <= 0).any()):
        raise ValueError(f"sigma must be > 0, got {sigma.tolist()}")
    return torch.exp(-((positions - center) ** 2) / (2 * sigma**2))


def local_m_mask(Lk: int, centers: Tensor, window: int) -> Tensor:
    """Local-m (monotonic) window, ``True`` = may attend: key ``s`` is visible to query ``t`` iff
    ``|s - p_t| <= window``, with centres ``p_t`` given (``p_t = t`` for monotonic alignment).

    Shape:
        ``centers`` ``(..., Lq)`` (int or float) -> mask ``(..., Lq, Lk)``.

    Reference: :cite:p:`luong2015`, section 3.2 ("local-m").
    """
    if not isinstance(window, int) or isinstance(window, bool) or window < 0:
        raise ValueError(f"window must be a non-negative int, got {window!r}")
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
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise ValueError(f"window must be a positive int (D in the paper), got {window!r}")
    Lk = scores.shape[-1]
    in_window = local_m_mask(Lk, centers, window)  # (..., Lq, Lk)
    if mask is not None:
        _check_mask(mask, scores.shape, "scores")
        in_window = in_window & mask
    align = masked_softmax(scores, in_window)
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
        if not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be a positive int, got {window!r}")
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
        _check_tensor("query", query, min_dim=3, floating=True)
        _check_tensor("key", key, min_dim=3, floating=True)
        _check_tensor("value", value, min_dim=3, floating=True)
        B, Lk = key.shape[0], key.shape[-2]
        if value.shape[-2] != Lk:
            raise ValueError(f"value has shape {_shape(value)} but key has length {Lk}; expected value.shape[-2] == {Lk}")
        if key_lengths is None:
            key_lengths = torch.full((B,), Lk, device=key.device)
        key_lengths = torch.as_tensor(key_lengths, device=key.device)
        if key_lengths.shape != (B,):
            raise ValueError(f"key_lengths has shape {_shape(key_lengths)}; expected ({B},), one length per batch element")
        if bool((key_lengths < 1).any()) or bool((key_lengths > Lk).any()):
            raise ValueError(f"key_lengths must lie in [1, {Lk}] (Lk of key {_shape(key)}), got {key_lengths.tolist()}")
        scores = self.score(query, key)  # (B, Lq, Lk)
        valid = padding_mask(key_lengths, Lk)[:, None, :]  # (B, 1, Lk)
        if mask is not None:
            _check_mask(mask, scores.shape, "attention scores (B, Lq, Lk)")
            valid = valid & mask
        centers = self.predict_centers(query, key_lengths)  # (B, Lq)
        weights = local_p_weights(scores, centers, self.window, valid)  # (B, Lq, Lk)
        return weights @ value, weights
