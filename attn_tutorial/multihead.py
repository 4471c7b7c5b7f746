"""Multi-head attention: several scaled dot-product attentions in parallel, in learned subspaces.

.. math::

    \\mathrm{MultiHead}(Q, K, V) = \\mathrm{Concat}(\\mathrm{head}_1, \\dots, \\mathrm{head}_h) W^O,
    \\qquad \\mathrm{head}_i = \\mathrm{Attention}(Q W_i^Q, K W_i^K, V W_i^V)

:cite:p:`vaswani2017`, section 3.2.2. Batch first; heads are their own dimension ``(B, H, L, Dh)``.
Masks are boolean, ``True`` = may attend.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .attention import _check_mask, _check_tensor, _shape, fused_attention, scaled_dot_product_attention

__all__ = ["MultiHeadAttention", "num_parameters"]


def num_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    """Number of scalar parameters in ``module`` (only those with ``requires_grad`` by default)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


class MultiHeadAttention(nn.Module):
    """Multi-head attention with separate query/key/value projections, batch first.

    Args:
        embed_dim: model size ``E`` (queries' feature size and the output size).
        num_heads: ``H``; must divide ``embed_dim``, each head has ``Dh = E / H`` features.
        dropout: dropout on the attention weights, active only in training mode.
        bias: biases in the four projections.
        kdim, vdim: feature sizes of ``key`` and ``value`` (default ``embed_dim``), e.g. for cross-attention
            to an encoder of another width.

    ``forward(query, key, value, mask=None, need_weights=True, average_attn_weights=True, is_causal=False)``
    returns ``(output, weights)``:

    * ``need_weights=True``: the transparent path, :func:`~attn_tutorial.attention.scaled_dot_product_attention`
      written out in PyTorch; ``weights`` are ``(B, Lq, Lk)`` averaged over heads, or ``(B, H, Lq, Lk)``
      with ``average_attn_weights=False``;
    * ``need_weights=False``: the fast path, :func:`~attn_tutorial.attention.fused_attention` (PyTorch's fused
      kernels); ``weights`` is ``None``. Both paths compute the same output (up to rounding).

    Masks: boolean, ``True`` = may attend, broadcastable to ``(B, H, Lq, Lk)``. A 2-D mask is ``(Lq, Lk)``;
    a 3-D mask is read as ``(B, Lq, Lk)`` (a heads dimension is inserted, so it is *not* right-aligned
    against ``(B, H, Lq, Lk)``). A key padding mask ``padding`` ``(B, Lk)`` with ``True`` = real token is
    passed as ``mask=padding[:, None, None, :]`` (see :func:`~attn_tutorial.attention.key_padding_to_attn_mask`);
    ``nn.MultiheadAttention``'s ``key_padding_mask`` and its boolean ``attn_mask`` mean the opposite (``True`` =
    blocked), pass ``(~key_padding_mask)[:, None, None, :]``.
    ``is_causal=True`` adds the top-left causal mask (AND). A query with every key masked gets a zero output,
    where ``nn.MultiheadAttention`` returns NaN with its default ``need_weights=True`` (zeros with
    ``need_weights=False``, checked on torch 2.13).

    Shape:
        ``query`` ``(B, Lq, E)``, ``key`` ``(B, Lk, kdim)``, ``value`` ``(B, Lk, vdim)``
        -> ``output`` ``(B, Lq, E)``, ``weights`` ``(B, Lq, Lk)`` / ``(B, H, Lq, Lk)`` / ``None``.

    Reference: :cite:p:`vaswani2017`, section 3.2.2.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        kdim: int | None = None,
        vdim: int | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(embed_dim, int) or embed_dim <= 0:
            raise ValueError(f"embed_dim must be a positive int, got {embed_dim!r}")
        if not isinstance(num_heads, int) or num_heads <= 0:
            raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")
        if embed_dim % num_heads != 0:
            raise ValueError(
                f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}; "
                "expected embed_dim % num_heads == 0 so that every head gets embed_dim // num_heads features"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        self.kdim = embed_dim if kdim is None else kdim
        self.vdim = embed_dim if vdim is None else vdim
        self.dropout = dropout
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(self.kdim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(self.vdim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # Same scheme as nn.MultiheadAttention: Xavier-uniform in-projections, zero biases.
        for proj in (self.q_proj, self.k_proj, self.v_proj):
            nn.init.xavier_uniform_(proj.weight)
            if proj.bias is not None:
                nn.init.zeros_(proj.bias)
        if self.out_proj.bias is not None:
            nn.init.zeros_(self.out_proj.bias)

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, head_dim={self.head_dim}, dropout={self.dropout}"

    @classmethod
    def from_torch(cls, module: nn.MultiheadAttention) -> MultiHeadAttention:
        """A :class:`MultiHeadAttention` with the same weights as ``module``.

        Copies ``in_proj_weight``/``in_proj_bias`` (split into query, key, value thirds) or, when
        ``kdim``/``vdim`` differ from ``embed_dim``, ``q/k/v_proj_weight``, and ``out_proj``. The weights
        do not depend on ``module.batch_first``: either works, but our module always takes batch-first
        input. ``add_bias_kv`` and ``add_zero_attn`` are not supported (ValueError).
        """
        if not isinstance(module, nn.MultiheadAttention):
            raise TypeError(f"module must be an nn.MultiheadAttention, got {type(module).__name__}")
        if module.bias_k is not None or module.add_zero_attn:
            raise ValueError("module uses add_bias_kv or add_zero_attn, which MultiHeadAttention does not implement")
        bias = module.in_proj_bias is not None
        ours = cls(
            module.embed_dim,
            module.num_heads,
            dropout=module.dropout,
            bias=bias,
            kdim=module.kdim,
            vdim=module.vdim,
        )
        ref = module.in_proj_weight if module.in_proj_weight is not None else module.q_proj_weight
        ours = ours.to(device=ref.device, dtype=ref.dtype)
        E = module.embed_dim
        with torch.no_grad():
            if module._qkv_same_embed_dim:
                w_q, w_k, w_v = module.in_proj_weight.split(E, dim=0)
            else:
                w_q, w_k, w_v = module.q_proj_weight, module.k_proj_weight, module.v_proj_weight
            for proj, w in zip((ours.q_proj, ours.k_proj, ours.v_proj), (w_q, w_k, w_v)):
                proj.weight.copy_(w)
            if bias:
                for proj, b in zip((ours.q_proj, ours.k_proj, ours.v_proj), module.in_proj_bias.split(E)):
                    proj.bias.copy_(b)
            ours.out_proj.weight.copy_(module.out_proj.weight)
            if ours.out_proj.bias is not None:
                if module.out_proj.bias is None:
                    nn.init.zeros_(ours.out_proj.bias)
                else:
                    ours.out_proj.bias.copy_(module.out_proj.bias)
        ours.train(module.training)
        return ours

    def _split_heads(self, x: Tensor) -> Tensor:
        B, L, _ = x.shape
        return x.view(B, L, self.num_heads, self.head_dim).transpose(1, 2)  # (B, L, E) -> (B, H, L, Dh)

    def _check_inputs(self, query: Tensor, key: Tensor, value: Tensor) -> None:
        for name, t, dim in (("query", query, self.embed_dim), ("key", key, self.kdim), ("value", value, self.vdim)):
            _check_tensor(name, t, floating=True)
            if t.dim() != 3 or t.shape[-1] != dim:
                raise ValueError(f"{name} has shape {_shape(t)}; expected (batch, length, {dim}) (batch first)")
        if key.shape[0] != query.shape[0] or value.shape[0] != query.shape[0]:
            raise ValueError(
                f"query {_shape(query)}, key {_shape(key)} and value {_shape(value)} have different batch sizes; "
                "expected the same batch size (batch first)"
            )
        if value.shape[1] != key.shape[1]:
            raise ValueError(f"value has shape {_shape(value)} but key has length {key.shape[1]}; expected value.shape[1] == {key.shape[1]}")

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        mask: Tensor | None = None,
        need_weights: bool = True,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        self._check_inputs(query, key, value)
        B, Lq, _ = query.shape
        Lk = key.shape[1]
        if mask is not None:
            _check_tensor("mask", mask)
            if mask.dim() == 3:
                mask = mask.unsqueeze(1)  # (B, Lq, Lk) -> (B, 1, Lq, Lk): one mask for every head
            _check_mask(mask, (B, self.num_heads, Lq, Lk), "multi-head scores (B, H, Lq, Lk)")
        q = self._split_heads(self.q_proj(query))  # (B, H, Lq, Dh)
        k = self._split_heads(self.k_proj(key))  # (B, H, Lk, Dh)
        v = self._split_heads(self.v_proj(value))  # (B, H, Lk, Dh)
        dropout_p = self.dropout if self.training else 0.0
        if need_weights:
            out, weights = scaled_dot_product_attention(q, k, v, mask, dropout_p=dropout_p, is_causal=is_causal)
        else:
            out, weights = fused_attention(q, k, v, mask, dropout_p=dropout_p, is_causal=is_causal)
        out = out.transpose(1, 2).reshape(B, Lq, self.embed_dim)  # (B, H, Lq, Dh) -> (B, Lq, E)
        out = self.out_proj(out)  # (B, Lq, E)
        if weights is not None and average_attn_weights:
            weights = weights.mean(dim=1)  # (B, H, Lq, Lk) -> (B, Lq, Lk)
        return out, weights
