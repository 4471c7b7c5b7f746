"""Input checks shared by the package's public functions (private: not part of the API).

The rule of the package: a public function or module checks its arguments once, at the door, with
the helpers here, and raises an error that names the argument, what it got and what was expected.
The inner functions it calls trust their callers and do not check again.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor


def is_int(x: object) -> bool:
    """True for Python and NumPy integers, but not for ``bool`` (``True`` is not a count)."""
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def is_real(x: object) -> bool:
    """True for finite Python and NumPy ints and floats, ``bool`` excluded."""
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool) and math.isfinite(x)


def check_int(name: str, value: object, minimum: int = 0) -> None:
    """Raise ``ValueError`` unless ``value`` is an int (not a bool) ``>= minimum``."""
    if not is_int(value) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def describe(x: object) -> str:
    """What ``x`` is, for an error message: ``"a torch.float32 tensor of shape (2, 3)"`` or ``"int 3"``."""
    if isinstance(x, torch.Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    return f"{type(x).__name__} {x!r}"


# --------------------------------------------------------------------------------------------
# Counts and tensors (the model modules: attention, multihead, positional, efficient, ...)
# --------------------------------------------------------------------------------------------


def check_count(name: str, n: object, allow_zero: bool = False, what: str = "") -> None:
    """Raise ``ValueError`` unless ``n`` is a positive (or, ``allow_zero``, non-negative) int, ``bool`` excluded."""
    if not is_int(n) or n < (0 if allow_zero else 1):
        raise ValueError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} int{what}, got {n!r}")


def check_counts(allow_zero: bool = False, **counts: object) -> None:
    """:func:`check_count` for each ``name=value``."""
    for name, n in counts.items():
        check_count(name, n, allow_zero)


def shape(t: Tensor) -> str:
    """``t``'s shape as a tuple string, for messages."""
    return str(tuple(t.shape))


def check_tensor(name: str, t: object, min_dim: int = 0, floating: bool = False) -> None:
    """A ``Tensor`` with at least ``min_dim`` dimensions (and a floating dtype if ``floating``)."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() < min_dim:
        raise ValueError(f"{name} has shape {shape(t)} but needs at least {min_dim} dimensions; expected {name}.dim() >= {min_dim}")
    if floating and not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype} (shape {shape(t)})")


def broadcast(*shapes: Sequence[int]) -> tuple[int, ...] | None:
    """NumPy broadcasting of shapes in plain Python (``None`` if they do not broadcast).

    ``torch.broadcast_shapes`` builds tensors to find out and costs a few hundred microseconds on a
    busy CPU: more than a small fused attention kernel. This helper costs about a microsecond.
    """
    if all(s == shapes[0] for s in shapes[1:]):  # the common case, no work
        return tuple(shapes[0]) if shapes else ()
    ndim = max(len(s) for s in shapes)
    out = [1] * ndim
    for s in shapes:
        for i, n in enumerate(s, start=ndim - len(s)):
            if n != 1:
                if out[i] not in (1, n):
                    return None
                out[i] = n
    return tuple(out)


def check_mask(mask: object, target: Sequence[int], target_name: str, name: str = "mask") -> Tensor | None:
    """A boolean mask (``True`` = may attend) that broadcasts to ``target`` without growing it (or ``None``)."""
    if mask is None:
        return None
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name} must be a boolean torch.Tensor (True = may attend), got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(
            f"{name} has dtype {mask.dtype} (shape {shape(mask)}) but must be torch.bool with True = may attend; "
            f"convert a 0/1 mask with mask.bool(), an additive -inf mask with (mask == 0)"
        )
    target = tuple(target)
    if broadcast(mask.shape, target) != target:
        raise ValueError(
            f"{name} has shape {shape(mask)} which does not broadcast to the {target_name} shape {target}; "
            f"expected a shape broadcastable to {target}, e.g. {target[-2:]} or a (batch, 1, ..., Lk) key padding mask"
        )
    return mask


def check_lengths(lengths: Tensor, max_len: int | None) -> int:
    """1-D non-negative integer ``lengths``, none longer than ``max_len``; returns ``max_len`` (default: the longest)."""
    if lengths.dim() != 1 or lengths.is_floating_point() or lengths.dtype == torch.bool:
        raise ValueError(f"lengths must be a 1-D integer tensor, got shape {shape(lengths)} and dtype {lengths.dtype}")
    if lengths.numel() and int(lengths.min()) < 0:
        raise ValueError(f"lengths must be non-negative, got {lengths.tolist()}")
    longest = int(lengths.max()) if lengths.numel() else 0
    if max_len is not None and longest > max_len:
        raise ValueError(f"lengths has a sequence of length {longest} but max_len is {max_len}; expected max(lengths) <= max_len")
    return longest if max_len is None else max_len


def check_key_padding(key_padding: object) -> None:
    check_tensor("key_padding", key_padding)
    assert isinstance(key_padding, Tensor)
    if key_padding.dtype != torch.bool or key_padding.dim() != 2:
        raise ValueError(
            f"key_padding has shape {shape(key_padding)} and dtype {key_padding.dtype}; "
            "expected a boolean (batch, Lk) tensor with True = real token"
        )


def check_positions(positions: object, like: Tensor, name: str) -> None:
    """A boolean ``(B, T)`` selection of ``like``'s positions (e.g. a ``logits_mask``)."""
    if not isinstance(positions, Tensor) or positions.dtype != torch.bool or positions.shape != like.shape:
        got = f"shape {shape(positions)} and dtype {positions.dtype}" if isinstance(positions, Tensor) else type(positions).__name__
        raise ValueError(f"{name} must be a bool tensor of shape {tuple(like.shape)} (as the decoder input), got {got}")


def check_key_lengths(key_lengths: Tensor, key: Tensor) -> None:
    """One length in ``[1, Lk]`` per batch element of ``key`` ``(B, Lk, D)``."""
    B, Lk = key.shape[0], key.shape[-2]
    if key_lengths.shape != (B,):
        raise ValueError(f"key_lengths has shape {shape(key_lengths)}; expected ({B},), one length per batch element")
    if bool((key_lengths < 1).any()) or bool((key_lengths > Lk).any()):
        raise ValueError(f"key_lengths must lie in [1, {Lk}] (Lk of key {shape(key)}), got {key_lengths.tolist()}")


def check_dropout(dropout_p: float, name: str = "dropout_p") -> None:
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {dropout_p!r}")


def check_qkv(query: object, key: object, value: object) -> None:
    """Floating ``(..., L, D)`` query/key/value of one dtype, ``Dq == Dk``, ``Lk == Lv >= 1``, batch dims broadcasting."""
    for name, t in (("query", query), ("key", key), ("value", value)):
        check_tensor(name, t, min_dim=2, floating=True)
    assert isinstance(query, Tensor) and isinstance(key, Tensor) and isinstance(value, Tensor)
    if key.shape[-1] != query.shape[-1]:
        raise ValueError(f"key has shape {shape(key)} but query has feature size {query.shape[-1]}; expected key.shape[-1] == {query.shape[-1]}")
    if value.shape[-2] != key.shape[-2]:
        raise ValueError(
            f"value has shape {shape(value)} but key has length {key.shape[-2]} (shape {shape(key)}); "
            f"expected value.shape[-2] == {key.shape[-2]}, one value per key"
        )
    if key.shape[-2] == 0:
        raise ValueError(
            f"key has shape {shape(key)}: there are no keys to attend to (Lk == 0); "
            "expected at least one key (mask keys out instead of removing them all)"
        )
    if not (query.dtype == key.dtype == value.dtype):
        raise TypeError(f"query, key and value must share a dtype, got {query.dtype}, {key.dtype} and {value.dtype}")
    if broadcast(query.shape[:-2], key.shape[:-2], value.shape[:-2]) is None:
        raise ValueError(
            f"the leading (batch) dimensions of query {shape(query)}, key {shape(key)} and value {shape(value)} "
            "do not broadcast; expected matching or broadcastable batch shapes"
        )


def scores_shape(query: Tensor, key: Tensor) -> tuple[int, ...]:
    """``(*batch, Lq, Lk)`` of ``query @ key.T`` (inputs already checked by :func:`check_qkv`)."""
    batch = broadcast(query.shape[:-2], key.shape[:-2])
    assert batch is not None  # checked by check_qkv
    return (*batch, query.shape[-2], key.shape[-2])


def check_bias(bias: object, query: Tensor, target: Sequence[int]) -> Tensor:
    """An additive ``bias``: a floating tensor of the query's dtype broadcasting to ``target``."""
    if not isinstance(bias, Tensor) or not bias.is_floating_point():
        got = f"dtype {bias.dtype}" if isinstance(bias, Tensor) else type(bias).__name__
        raise TypeError(f"bias must be a floating-point torch.Tensor added to the scores, got {got}; pass boolean masks as mask")
    if bias.dtype != query.dtype:
        raise TypeError(f"bias has dtype {bias.dtype} but query has {query.dtype}; expected the same dtype")
    if broadcast(bias.shape, tuple(target)) != tuple(target):
        raise ValueError(f"bias has shape {shape(bias)} which does not broadcast to the attention scores shape {tuple(target)}")
    return bias


def check_attention(
    query: object, key: object, value: object, mask: object = None, dropout_p: float = 0.0, bias: object = None
) -> tuple[int, ...]:
    """Every argument check of an attention function, once; returns the scores' shape ``(..., Lq, Lk)``."""
    check_qkv(query, key, value)
    check_dropout(dropout_p)
    assert isinstance(query, Tensor) and isinstance(key, Tensor)
    target = scores_shape(query, key)
    if mask is not None:
        check_mask(mask, target, "attention scores (..., Lq, Lk)")
    if bias is not None:
        check_bias(bias, query, target)
    return target


def check_values(value: object, key: object, min_dim: int = 2) -> None:
    """Floating ``key`` and ``value`` with one value per key and at least one key."""
    check_tensor("key", key, min_dim=min_dim, floating=True)
    check_tensor("value", value, min_dim=min_dim, floating=True)
    assert isinstance(key, Tensor) and isinstance(value, Tensor)
    if value.shape[-2] != key.shape[-2]:
        raise ValueError(
            f"value has shape {shape(value)} but key has length {key.shape[-2]} (shape {shape(key)}); "
            f"expected value.shape[-2] == {key.shape[-2]}"
        )
    if key.shape[-2] == 0:
        raise ValueError(f"key has shape {shape(key)}: there are no keys to attend to; expected Lk >= 1")


def check_score_inputs(
    query: object, key: object, query_dim: int | None = None, key_dim: int | None = None, same_size: str | None = None,
    num_keys: int | None = None,
) -> None:
    """Floating ``(..., L, D)`` query and key of the sizes a score module expects; ``same_size`` (a hint
    for the message, possibly empty) asks for ``key.shape[-1] == query.shape[-1]``; ``num_keys`` for at most
    that many keys and batch dimensions that broadcast."""
    check_tensor("query", query, min_dim=2, floating=True)
    check_tensor("key", key, min_dim=2, floating=True)
    assert isinstance(query, Tensor) and isinstance(key, Tensor)
    if query_dim is not None and query.shape[-1] != query_dim:
        raise ValueError(f"query has shape {shape(query)}; expected query.shape[-1] == query_dim == {query_dim}")
    if key_dim is not None and key.shape[-1] != key_dim:
        raise ValueError(f"key has shape {shape(key)}; expected key.shape[-1] == key_dim == {key_dim}")
    if same_size is not None and key.shape[-1] != query.shape[-1]:
        raise ValueError(
            f"key has shape {shape(key)} but query has feature size {query.shape[-1]}; "
            f"expected key.shape[-1] == {query.shape[-1]}{same_size}"
        )
    if num_keys is not None and key.shape[-2] > num_keys:
        raise ValueError(f"key has shape {shape(key)} with Lk = {key.shape[-2]} keys but num_keys is {num_keys}; expected Lk <= num_keys")
    if num_keys is not None and broadcast(query.shape[:-2], key.shape[:-2]) is None:
        raise ValueError(f"query {shape(query)} and key {shape(key)} have batch dimensions that do not broadcast")


def check_positive(name: str, value: Tensor) -> None:
    if bool((value <= 0).any()):
        raise ValueError(f"{name} must be > 0, got {value.tolist()}")


# --------------------------------------------------------------------------------------------
# Translation models' inputs (Seq2Seq, Transformer): token ids and their padding masks
# --------------------------------------------------------------------------------------------


def shape_and_dtype(t: object) -> str:
    return f"shape {tuple(t.shape)} and dtype {t.dtype}" if isinstance(t, Tensor) else type(t).__name__


def check_tokens(name: str, tokens: object, vocab: int, batch: int | None = None) -> Tensor:
    """A ``(B, L)`` ``torch.long`` tensor of ids in ``[0, vocab)`` (with ``B == batch`` if given)."""
    if not isinstance(tokens, Tensor) or tokens.dim() != 2 or tokens.dtype != torch.long:
        raise ValueError(f"{name} must be a (B, L) torch.long tensor of token ids, got {shape_and_dtype(tokens)}")
    if batch is not None and tokens.shape[0] != batch:
        raise ValueError(f"{name} has shape {tuple(tokens.shape)}; expected batch size {batch} (as src)")
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab):
        raise ValueError(f"{name} holds ids in [{int(tokens.min())}, {int(tokens.max())}]; expected ids in [0, {vocab}) (vocabulary size)")
    return tokens


def check_token_mask(name: str, mask: object, like: Tensor, like_name: str, left_aligned: bool = False) -> Tensor:
    """A boolean padding mask of ``like``'s shape, ``True`` = real token; returns the lengths ``(B,)``.
    ``left_aligned``: the real tokens must come first in each row (padding at the end)."""
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.shape != like.shape:
        raise ValueError(
            f"{name} must be a boolean tensor of shape {tuple(like.shape)} (as {like_name}), True = real token; got {shape_and_dtype(mask)}"
        )
    lengths = mask.sum(-1)
    if left_aligned and not torch.equal(mask, torch.arange(mask.shape[-1], device=mask.device) < lengths[:, None]):
        raise ValueError(
            f"{name} must be True for the real tokens and False for padding at the end of each row "
            f"(left-aligned), got {mask.int().tolist()}"
        )
    return lengths


def check_prev_tokens(prev_tokens: object, batch: int) -> None:
    """The ``(B,)`` ``torch.long`` tokens a decoding step feeds."""
    if not isinstance(prev_tokens, Tensor) or prev_tokens.shape != (batch,) or prev_tokens.dtype != torch.long:
        raise ValueError(f"prev_tokens must be a ({batch},) torch.long tensor, got {shape_and_dtype(prev_tokens)}")


def pad_empty_source(src: Tensor, src_mask: Tensor, pad_id: int) -> tuple[Tensor, Tensor]:
    """A batch with no source column gets one padding column (masked: attention to it gives zeros)."""
    if src.shape[1] == 0:
        return src.new_full((src.shape[0], 1), pad_id), src_mask.new_zeros(src.shape[0], 1)
    return src, src_mask


def check_multihead(
    mha: Any, query: object, key: object, value: object, mask: object, past: tuple[Tensor, Tensor] | None
) -> Tensor | None:
    """``MultiHeadAttention.forward``'s inputs: batch-first ``(B, L, dim)`` query/key/value of the module's
    sizes (``key``/``value`` may be ``None`` with a cache ``past``) and a boolean mask broadcasting to
    ``(B, H, Lq, Lk)``, ``Lk`` counting the cached keys. Returns the mask, a 3-D one as ``(B, 1, Lq, Lk)``."""
    given = [("query", query, mha.embed_dim)]
    if key is not None or value is not None or past is None:
        given += [("key", key, mha.kdim), ("value", value, mha.vdim)]
    for name, t, dim in given:
        check_tensor(name, t, floating=True)
        assert isinstance(t, Tensor)
        if t.dim() != 3 or t.shape[-1] != dim:
            raise ValueError(f"{name} has shape {shape(t)}; expected (batch, length, {dim}) (batch first)")
    assert isinstance(query, Tensor)
    Lk = 0 if past is None else past[0].shape[-2]
    if len(given) == 3:
        assert isinstance(key, Tensor) and isinstance(value, Tensor)
        if key.shape[0] != query.shape[0] or value.shape[0] != query.shape[0]:
            raise ValueError(
                f"query {shape(query)}, key {shape(key)} and value {shape(value)} have different batch sizes; "
                "expected the same batch size (batch first)"
            )
        if value.shape[1] != key.shape[1]:
            raise ValueError(f"value has shape {shape(value)} but key has length {key.shape[1]}; expected value.shape[1] == {key.shape[1]}")
        Lk += key.shape[1]
    if mask is None:
        return None
    check_tensor("mask", mask)
    assert isinstance(mask, Tensor)
    if mask.dim() == 3:
        mask = mask.unsqueeze(1)  # (B, Lq, Lk) -> (B, 1, Lq, Lk): one mask for every head
    return check_mask(mask, (query.shape[0], mha.num_heads, query.shape[1], Lk), "multi-head scores (B, H, Lq, Lk)")


# --------------------------------------------------------------------------------------------
# Positions
# --------------------------------------------------------------------------------------------


def check_features(module: Any, x: object, offset: int, too_long: str) -> None:
    """``x`` ``(..., L, module.d_model)`` whose positions ``offset .. offset + L - 1`` fit in ``module.max_len``;
    ``too_long`` is the message (a format string) for positions beyond it."""
    check_tensor("x", x, min_dim=2, floating=True)
    assert isinstance(x, Tensor)
    L = x.shape[-2]
    if x.shape[-1] != module.d_model:
        raise ValueError(f"x has shape {shape(x)}; expected (batch, length, {module.d_model}) with d_model = {module.d_model}")
    if offset + L > module.max_len:
        raise ValueError(too_long.format(x=shape(x), L=L, offset=offset, last=offset + L - 1, max_len=module.max_len))


def check_rope_input(x: object, positions: object) -> None:
    """Floating ``x`` ``(..., L, D)`` with ``D`` even, and one position per row (``positions`` ``(..., L)`` or ``None``)."""
    check_tensor("x", x, min_dim=2, floating=True)
    assert isinstance(x, Tensor)
    L, D = x.shape[-2], x.shape[-1]
    if D % 2:
        raise ValueError(f"x has shape {shape(x)}; expected an even feature size D to form (2i, 2i+1) pairs, got D={D}")
    if positions is not None and (positions := torch.as_tensor(positions)).shape[-1:] != (L,):
        raise ValueError(f"positions has shape {shape(positions)}; expected a last dimension of L = {L} (x has shape {shape(x)})")
