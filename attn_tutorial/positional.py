"""Positions: attention alone is blind to order, these functions give it a sense of position.

* absolute: sinusoidal encodings :cite:p:`vaswani2017` and learned embeddings;
* relative through rotation: a sinusoidal code at ``pos + k`` is a fixed rotation of the code at ``pos``
  (:func:`relative_shift_matrix`), which rotary embeddings (RoPE) :cite:p:`su2021roformer` build on;
* relative through a bias: ALiBi :cite:p:`press2022alibi` subtracts a per-head slope times the distance.

Shapes are batch first: ``(B, L, D)`` for token features, ``(B, H, L, Dh)`` for heads.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ._checks import check_count, check_counts, check_features, check_rope_input

__all__ = [
    "sinusoidal_encoding",
    "SinusoidalPositionalEncoding",
    "LearnedPositionalEmbedding",
    "relative_shift_matrix",
    "rope_angles",
    "apply_rope",
    "alibi_slopes",
    "alibi_bias",
]


def _frequencies(d_model: int, base: float) -> Tensor:
    """:math:`\\omega_i = \\mathrm{base}^{-2i/d}` for ``i = 0 .. ceil(d/2) - 1``, in float64."""
    i = torch.arange(0, d_model, 2, dtype=torch.float64)  # 2i
    return base ** (-i / d_model)


def sinusoidal_encoding(
    max_len: int,
    d_model: int,
    base: float = 10000.0,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """The sinusoidal position table of the Transformer.

    .. math:: PE_{pos, 2i} = \\sin(pos / \\mathrm{base}^{2i/d}), \\qquad PE_{pos, 2i+1} = \\cos(pos / \\mathrm{base}^{2i/d})

    Each pair of columns is a clock hand turning at its own frequency, from one turn per :math:`2\\pi`
    positions (``i = 0``) down to one per :math:`2\\pi \\cdot \\mathrm{base}` positions. An odd ``d_model``
    is allowed: the last column is the sine of the next frequency, without its cosine. Computed in
    float64, then cast to ``dtype``.

    Shape:
        output: ``(max_len, d_model)``.

    Reference: :cite:p:`vaswani2017`, section 3.5.
    """
    check_count("max_len", max_len, allow_zero=True)
    check_count("d_model", d_model)
    if not base > 1:
        raise ValueError(f"base must be > 1, got {base!r}")
    pos = torch.arange(max_len, dtype=torch.float64)[:, None]  # (max_len, 1)
    angles = pos * _frequencies(d_model, base)  # (max_len, ceil(d/2))
    pe = torch.empty(max_len, d_model, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(angles)
    pe[:, 1::2] = torch.cos(angles[:, : d_model // 2])
    return pe.to(dtype=dtype, device=device)


class SinusoidalPositionalEncoding(nn.Module):
    """Adds the fixed :func:`sinusoidal_encoding` to token features, then applies dropout.

    ``forward(x, offset=0)`` adds the rows ``offset .. offset + L - 1`` (``offset`` lets a decoder that
    generates one token at a time use the right positions). The table is a non-persistent buffer:
    it moves with ``.to()`` and is not saved in checkpoints (it is recomputed).

    Shape:
        ``x`` ``(B, L, d_model)`` -> ``(B, L, d_model)``, with ``offset + L <= max_len``.

    Reference: :cite:p:`vaswani2017`, section 3.5.
    """

    pe: Tensor
    _TOO_LONG = (
        "x has shape {x}: positions {offset}..{last} exceed max_len = {max_len}; "
        "expected offset + length <= max_len (build the module with a larger max_len)"
    )

    def __init__(self, d_model: int, max_len: int = 5000, dropout: float = 0.0, base: float = 10000.0) -> None:
        super().__init__()
        self.d_model, self.max_len = d_model, max_len
        self.register_buffer("pe", sinusoidal_encoding(max_len, d_model, base), persistent=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        check_features(self, x, offset, self._TOO_LONG)
        return self.dropout(x + self.pe[offset : offset + x.shape[-2]].to(x.dtype))


class LearnedPositionalEmbedding(nn.Module):
    """A learned vector per position, added to token features (BERT/GPT style).

    Unlike :class:`SinusoidalPositionalEncoding` it cannot go beyond ``max_len`` positions: longer input
    raises ``ValueError`` naming both lengths.

    Shape:
        ``x`` ``(B, L, d_model)`` -> ``(B, L, d_model)``, with ``offset + L <= max_len``.

    Reference: :cite:p:`gehring2017convs2s` (learned position embeddings in a sequence-to-sequence model).
    """

    _TOO_LONG = (
        "x has shape {x} with length {L} (offset {offset}) but max_len is {max_len}; "
        "expected offset + length <= max_len: learned positions cannot extrapolate"
    )

    def __init__(self, max_len: int, d_model: int) -> None:
        super().__init__()
        check_counts(max_len=max_len, d_model=d_model)
        self.max_len, self.d_model = max_len, d_model
        self.embedding = nn.Embedding(max_len, d_model)
        nn.init.normal_(self.embedding.weight, std=0.02)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        check_features(self, x, offset, self._TOO_LONG)
        positions = torch.arange(offset, offset + x.shape[-2], device=x.device)
        return x + self.embedding(positions).to(x.dtype)


def relative_shift_matrix(k: int | float, d_model: int, base: float = 10000.0, *, dtype: torch.dtype = torch.float64) -> Tensor:
    """The fixed linear map :math:`M_k` with :math:`PE_{pos+k} = M_k\\, PE_{pos}` for every ``pos``.

    Row form: ``sinusoidal_encoding(...)[pos + k] == sinusoidal_encoding(...)[pos] @ M_k.T``. ``M_k`` is
    block diagonal; the block for the pair ``(2i, 2i+1) = (sin, cos)`` with :math:`\\theta = k\\,\\omega_i` is

    .. math:: \\begin{pmatrix} \\cos\\theta & \\sin\\theta \\\\ -\\sin\\theta & \\cos\\theta \\end{pmatrix}

    by the angle-addition formulas. It depends on ``k`` but not on ``pos``: this is why relative
    offsets are easy for attention to read off sinusoidal codes. Needs an even ``d_model``.

    Shape:
        output: ``(d_model, d_model)``.

    Reference: :cite:p:`vaswani2017`, section 3.5 ("PE_{pos+k} can be represented as a linear function of PE_{pos}").
    """
    check_count("d_model", d_model)
    if d_model % 2:
        raise ValueError(f"d_model must be even for a rotation per (sin, cos) pair, got d_model={d_model}")
    theta = k * _frequencies(d_model, base)  # (d/2,)
    c, s = torch.cos(theta), torch.sin(theta)
    m = torch.zeros(d_model, d_model, dtype=torch.float64)
    idx = torch.arange(0, d_model, 2)
    m[idx, idx], m[idx, idx + 1] = c, s
    m[idx + 1, idx], m[idx + 1, idx + 1] = -s, c
    return m.to(dtype)


def rope_angles(positions: Tensor, dim: int, base: float = 10000.0) -> Tensor:
    """Rotation angles :math:`\\theta_{pos, i} = pos \\cdot \\mathrm{base}^{-2i/D}`, in float64.

    Shape:
        ``positions`` ``(..., L)`` -> ``(..., L, dim // 2)``.
    """
    positions = torch.as_tensor(positions)
    return positions.to(torch.float64)[..., None] * _frequencies(dim, base).to(positions.device)


def apply_rope(x: Tensor, positions: Tensor | None = None, base: float = 10000.0) -> Tensor:
    """Rotary position embedding: rotate each feature pair by an angle proportional to the position.

    .. math::
        \\begin{pmatrix} x'_{2i} \\\\ x'_{2i+1} \\end{pmatrix} =
        \\begin{pmatrix} \\cos\\theta & -\\sin\\theta \\\\ \\sin\\theta & \\cos\\theta \\end{pmatrix}
        \\begin{pmatrix} x_{2i} \\\\ x_{2i+1} \\end{pmatrix}, \\qquad \\theta = pos \\cdot \\mathrm{base}^{-2i/D}

    Pairing convention: **interleaved** pairs ``(0, 1), (2, 3), ...`` as in RoFormer (some libraries
    rotate ``(i, i + D/2)`` instead; the two differ by a fixed permutation of features). Applied to both
    queries and keys, :math:`\\langle R_m q, R_n k \\rangle` depends on the positions only through
    ``m - n``; rotations preserve norms. Angles are computed in float64; the rotation runs in the input's
    dtype (float32 for float16/bfloat16 input, cast back).

    Args:
        x: features, ``D`` even.
        positions: ``(L,)`` or broadcastable to ``x.shape[:-1]``; default ``0 .. L-1``.

    Shape:
        ``x`` ``(..., L, D)`` -> ``(..., L, D)``.

    Reference: :cite:p:`su2021roformer`, eq. 13-15.
    """
    check_rope_input(x, positions)
    L, D = x.shape[-2], x.shape[-1]
    positions = torch.arange(L) if positions is None else torch.as_tensor(positions)
    compute = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    theta = rope_angles(positions.cpu(), D, base)  # (..., L, D/2), float64 on the CPU (MPS has no float64)
    cos = theta.cos().to(device=x.device, dtype=compute)
    sin = theta.sin().to(device=x.device, dtype=compute)
    xc = x.to(compute)
    x_even, x_odd = xc[..., 0::2], xc[..., 1::2]  # (..., L, D/2) each
    out = torch.stack((x_even * cos - x_odd * sin, x_even * sin + x_odd * cos), dim=-1)  # (..., L, D/2, 2)
    return out.flatten(-2).to(x.dtype)  # (..., L, D), pairs interleaved again


def alibi_slopes(num_heads: int) -> Tensor:
    """ALiBi's per-head slopes: a geometric sequence starting at and with ratio :math:`2^{-8/n}`.

    For ``n`` a power of two, slope ``h`` (``h = 0..n-1``) is :math:`2^{-8(h+1)/n}`: for 8 heads
    ``1/2, 1/4, ..., 1/256``. Otherwise, as in the paper's code: the slopes of the closest smaller
    power of two ``m``, followed by every other slope of ``2m`` heads, until there are ``n``.

    Shape:
        output: ``(num_heads,)``, float32.

    Reference: :cite:p:`press2022alibi`, section 3.
    """
    check_count("num_heads", num_heads)

    def power_of_two(n: int) -> list[float]:
        return [2.0 ** (-8.0 * (h + 1) / n) for h in range(n)]

    m = 2 ** int(math.floor(math.log2(num_heads)))
    slopes = power_of_two(m)
    if m < num_heads:
        slopes += power_of_two(2 * m)[0::2][: num_heads - m]
    return torch.tensor(slopes, dtype=torch.float32)


def alibi_bias(
    num_heads: int,
    Lq: int,
    Lk: int | None = None,
    causal: bool = True,
    device: torch.device | str | None = None,
) -> Tensor:
    """ALiBi's additive attention bias: ``-slope_h * distance``, added to the scores before the softmax.

    Query ``i`` and key ``j`` sit at positions ``i`` and ``j`` (top-left aligned, like
    :func:`~attn_tutorial.attention.causal_mask`). The bias is never positive: farther keys are penalised
    more, steeper for heads with larger slopes.

    * ``causal=True`` (the paper's setting, a language model): bias ``-slope * (i - j)`` for ``j <= i`` and
      ``-inf`` for future keys ``j > i``, so the bias also *is* the causal mask;
    * ``causal=False`` (symmetric, e.g. an encoder): ``-slope * |i - j|`` everywhere.

    Shape:
        output: ``(num_heads, Lq, Lk)``, float32; add it to scores ``(B, num_heads, Lq, Lk)``.

    Reference: :cite:p:`press2022alibi`, section 3 and figure 3.
    """
    Lk = Lq if Lk is None else Lk
    check_counts(allow_zero=True, Lq=Lq, Lk=Lk)
    i = torch.arange(Lq, device=device)[:, None]
    j = torch.arange(Lk, device=device)[None, :]
    offset = (j - i).to(torch.float32)  # (Lq, Lk): -(distance), <= 0 for past keys
    slopes = alibi_slopes(num_heads).to(device)[:, None, None]  # (H, 1, 1)
    if causal:
        bias = slopes * offset.clamp_max(0)  # (H, Lq, Lk)
        return bias.masked_fill(offset > 0, float("-inf"))
    return -(slopes * offset.abs()) + 0.0  # (H, Lq, Lk); + 0.0 turns -0.0 on the diagonal into 0.0
