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

from ._checks import check_dropout, check_multihead
from .attention import _attention, _fused
from .positional import apply_rope

__all__ = ["MultiHeadAttention", "num_parameters"]

KVCache = tuple[Tensor, Tensor]


def num_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    """Number of scalar parameters in ``module`` (only those with ``requires_grad`` by default; tied weights count once)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def _init_embedding(emb: nn.Embedding, pad_id: int) -> None:
    """:math:`\\mathcal N(0, 1/d)` entries and a zero padding row: with tied output weights the logits of a
    fresh model are :math:`O(1)` (PyTorch's :math:`\\mathcal N(0, 1)` would make them :math:`O(\\sqrt d)`)."""
    nn.init.normal_(emb.weight, std=emb.embedding_dim**-0.5)
    with torch.no_grad():
        emb.weight[pad_id].zero_()


def append_kv(past: KVCache | None, key: Tensor, value: Tensor) -> KVCache:
    """The cache after the new positions: ``past`` keys/values with ``key``/``value`` appended along the sequence.

    ``past`` is ``None`` before the first step. Concatenation copies the cache (O(t) per step); a
    preallocated buffer would avoid the copy, at the price of a fixed maximum length.

    Shape:
        ``past`` ``((B, Hkv, t, Dh), (B, Hkv, t, Dv))`` or ``None``; ``key``/``value`` ``(B, Hkv, n, ·)``
        -> ``((B, Hkv, t + n, Dh), (B, Hkv, t + n, Dv))``.
    """
    if past is None:
        return key, value
    return torch.cat([past[0], key], dim=-2), torch.cat([past[1], value], dim=-2)


def repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    """Share each key/value head with ``n_rep`` consecutive query heads (a view, no copy until used).

    Shape: ``(B, Hkv, L, D)`` -> ``(B, Hkv * n_rep, L, D)``; query head ``h`` uses kv head ``h // n_rep``.
    """
    if n_rep == 1:
        return x
    B, Hkv, L, D = x.shape
    return x[:, :, None].expand(B, Hkv, n_rep, L, D).reshape(B, Hkv * n_rep, L, D)  # (B, H, L, D)


def reorder_kv(past: KVCache | None, indices: Tensor) -> KVCache | None:
    """Row ``i`` of the result is row ``indices[i]`` of ``past`` (beam search reorders its hypotheses).

    Shape: ``past`` ``((B, ...), (B, ...))`` or ``None``, ``indices`` ``(B',)`` -> ``((B', ...), (B', ...))``.
    """
    if past is None:
        return None
    return past[0].index_select(0, indices), past[1].index_select(0, indices)


class MultiHeadAttention(nn.Module):
    """Multi-head attention with separate query/key/value projections, batch first.

    Args:
        embed_dim: model size ``E`` (queries' feature size and the output size).
        num_heads: ``H``; must divide ``embed_dim``, each head has ``Dh = E / H`` features.
        dropout: dropout on the attention weights, active only in training mode.
        bias: biases in the four projections.
        kdim, vdim: feature sizes of ``key`` and ``value`` (default ``embed_dim``), e.g. for cross-attention
            to an encoder of another width.
        num_kv_heads: key/value heads (default ``num_heads``), each shared by ``num_heads / num_kv_heads``
            query heads (see :class:`~attn_tutorial.efficient.GroupedQueryAttention`).
        rope: rotate queries and keys by their positions (:func:`~attn_tutorial.positional.apply_rope`)
            after the projections, for self-attention.

    ``forward(query, key, value, mask=None, need_weights=True, average_attn_weights=True, is_causal=False,
    *, past=None, use_cache=False)`` returns ``(output, weights)`` (and the cache, see below):

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

    The steps are public, for layers that need them one at a time: :meth:`project` (queries, keys and
    values split into heads), :meth:`attend` (attention over the heads, merged and projected back),
    :meth:`split_heads` / :meth:`merge_heads`. ``forward`` checks its inputs once and then trusts them.

    Key/value cache (incremental decoding): ``forward(..., past=(k, v), use_cache=True)`` attends from the
    new queries to the cached keys/values ``(B, Hkv, t, Dh)`` followed by the new ones, and returns the
    grown cache as a third element (:func:`~attn_tutorial.efficient.append_kv`); ``past=None`` starts one. With ``key`` and
    ``value`` ``None`` it attends to ``past`` alone (cross-attention to a source projected once). With a
    cache, ``is_causal`` is aligned bottom-right: the new positions come after the cached ones, and with
    RoPE they are rotated by their positions ``t, t + 1, ...``.

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
        *,
        num_kv_heads: int | None = None,
        rope: bool = False,
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
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if not isinstance(num_kv_heads, int) or num_kv_heads < 1 or num_heads % num_kv_heads:
            raise ValueError(f"num_kv_heads={num_kv_heads!r} must be a positive int dividing num_heads={num_heads}")
        check_dropout(dropout, "dropout")
        self.embed_dim, self.num_heads, self.num_kv_heads = embed_dim, num_heads, num_kv_heads
        self.head_dim = embed_dim // num_heads
        self.kdim = embed_dim if kdim is None else kdim
        self.vdim = embed_dim if vdim is None else vdim
        self.dropout, self.rope = dropout, rope
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(self.kdim, num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(self.vdim, num_kv_heads * self.head_dim, bias=bias)
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

    # ---- the steps --------------------------------------------------------------------------------

    def split_heads(self, x: Tensor, heads: int | None = None) -> Tensor:
        """``(B, L, heads * Dh)`` -> ``(B, heads, L, Dh)``; ``heads`` defaults to ``num_heads``."""
        B, L, _ = x.shape
        return x.view(B, L, heads or self.num_heads, self.head_dim).transpose(1, 2)  # (B, heads, L, Dh)


    def merge_heads(self, x: Tensor) -> Tensor:
        """``(B, H, L, Dh)`` -> ``(B, L, H * Dh)``, the inverse of :meth:`split_heads`."""
        B, H, L, Dh = x.shape
        return x.transpose(1, 2).reshape(B, L, H * Dh)  # (B, L, E)

    def project_kv(self, key: Tensor, value: Tensor, offset: int = 0) -> KVCache:
        """Keys and values split into the ``num_kv_heads`` heads, ``(B, Hkv, Lk, Dh)`` each: what a cache
        stores. With ``rope`` the keys are rotated by their positions ``offset, offset + 1, ...``."""
        k = self.split_heads(self.k_proj(key), self.num_kv_heads)  # (B, Hkv, Lk, Dh)
        v = self.split_heads(self.v_proj(value), self.num_kv_heads)  # (B, Hkv, Lk, Dh)
        return (self._rotate(k, offset), v) if self.rope else (k, v)

    def project(self, query: Tensor, key: Tensor, value: Tensor, offset: int = 0) -> tuple[Tensor, Tensor, Tensor]:
        """The projections, split into heads: ``q`` ``(B, H, Lq, Dh)``, ``k``/``v`` ``(B, Hkv, Lk, Dh)``
        (queries and keys rotated by RoPE from position ``offset`` when ``rope``)."""
        return self._queries(query, offset), *self.project_kv(key, value, offset)

    def _queries(self, query: Tensor, offset: int) -> Tensor:
        q = self.split_heads(self.q_proj(query))  # (B, H, Lq, Dh)
        return self._rotate(q, offset) if self.rope else q

    def _rotate(self, x: Tensor, offset: int) -> Tensor:
        positions = None if offset == 0 else torch.arange(offset, offset + x.shape[-2])  # on the CPU, as apply_rope wants
        return apply_rope(x, positions)

    def attend(
        self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, need_weights: bool = True, is_causal: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """Attention of heads ``q`` ``(B, H, Lq, Dh)`` over ``k``/``v`` ``(B, Hkv, Lk, Dh)``, heads merged
        and projected back: ``(out (B, Lq, E), weights (B, H, Lq, Lk) or None)``. ``mask`` broadcasts
        to ``(B, H, Lq, Lk)``. No checks: :meth:`forward` checks, layers that call this trust their inputs."""
        n_rep = self.num_heads // self.num_kv_heads
        k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)  # (B, H, Lk, Dh): a no-op without grouped heads
        p = self.dropout if self.training else 0.0
        if need_weights:
            out, weights = _attention(q, k, v, mask, dropout_p=p, is_causal=is_causal)  # (B, H, Lq, Dh)
        else:
            out, weights = _fused(q, k, v, mask, dropout_p=p, is_causal=is_causal), None
        return self.out_proj(self.merge_heads(out)), weights  # (B, Lq, E)

    # ---- the module ---------------------------------------------------------------------------------

    def forward(
        self,
        query: Tensor,
        key: Tensor | None,
        value: Tensor | None,
        mask: Tensor | None = None,
        need_weights: bool = True,
        average_attn_weights: bool = True,
        is_causal: bool = False,
        *,
        past: KVCache | None = None,
        use_cache: bool = False,
    ) -> tuple[Tensor, Tensor | None] | tuple[Tensor, Tensor | None, KVCache]:
        mask = check_multihead(self, query, key, value, mask, past)  # a 3-D mask gets its heads dimension
        Lq, t = query.shape[1], 0 if past is None else past[0].shape[-2]  # t: positions already cached
        if key is None:  # attend to the cache alone (a source projected once)
            q, (k, v) = self._queries(query, t), past  # type: ignore[misc]
        else:
            q, k, v = self.project(query, key, value, t)  # (B, H, Lq, Dh), (B, Hkv, Lk, Dh) x 2
            k, v = append_kv(past, k, v)  # (B, Hkv, t + Lk, Dh)
        if is_causal and t:  # the new queries come after the cached keys: bottom-right alignment
            if Lq > 1:
                Lk = k.shape[-2]
                causal = torch.ones(Lq, Lk, dtype=torch.bool, device=q.device).tril(Lk - Lq)  # (Lq, Lk)
                mask = causal if mask is None else mask & causal
            is_causal = False  # a single new query sees every key
        out, weights = self.attend(q, k, v, mask, need_weights, is_causal)
        if weights is not None and average_attn_weights:
            weights = weights.mean(dim=1)  # (B, H, Lq, Lk) -> (B, Lq, Lk)
        return (out, weights, (k, v)) if use_cache else (out, weights)
