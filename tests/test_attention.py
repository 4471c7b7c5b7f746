"""Unit and parity tests for attn_tutorial.attention.

Tolerances (stated once, used throughout):
* float64 against a float64 reference: rtol=1e-10, atol=1e-12 (a few ulps of accumulated rounding);
* float32 against PyTorch's float32 kernel: rtol=1e-5, atol=1e-6 (different summation orders);
* float16 / bfloat16 against float64: atol=2e-3 / 1.6e-2 (about two ulps at 1.0), rtol=0.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from attn_tutorial import attention as attention_module
from attn_tutorial.attention import (
    AdditiveScore,
    Attention,
    CosineScore,
    DotProductScore,
    GeneralScore,
    LocalPAttention,
    LocationScore,
    ScaledDotProductScore,
    causal_mask,
    fused_attention,
    gaussian_window,
    key_padding_to_attn_mask,
    local_m_mask,
    local_p_weights,
    masked_softmax,
    padding_mask,
    scaled_dot_product_attention,
    sliding_window_mask,
)

TOL = {
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    torch.float32: dict(rtol=1e-5, atol=1e-6),
}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape: int, dtype: torch.dtype = torch.float64, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=gen(seed), dtype=dtype)


def random_mask(*shape: int, seed: int = 0, p: float = 0.6) -> torch.Tensor:
    """A random boolean mask whose every row has at least one True (key 0 is always visible)."""
    mask = torch.rand(*shape, generator=gen(seed)) < p
    mask[..., 0] = True
    return mask


def reference_attention(q, k, v, mask=None, scale=None):
    """An independent float64 reference, one query row at a time with Python loops over rows."""
    q, k, v = q.double(), k.double(), v.double()
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = torch.einsum("...qd,...kd->...qk", q, k) * scale
    if mask is not None:
        mask = mask.expand(scores.shape)
    weights = torch.zeros_like(scores)
    flat_s = scores.reshape(-1, scores.shape[-1])
    flat_w = weights.view(-1, scores.shape[-1])
    flat_m = None if mask is None else mask.reshape(-1, scores.shape[-1])
    for r in range(flat_s.shape[0]):
        allowed = torch.ones(flat_s.shape[1], dtype=torch.bool) if flat_m is None else flat_m[r]
        if allowed.any():
            e = torch.exp(flat_s[r][allowed] - flat_s[r][allowed].max())
            flat_w[r][allowed] = e / e.sum()
    return weights @ v, weights


# ---------------------------------------------------------------- masked_softmax


def test_masked_softmax_matches_torch_softmax_without_mask():
    x = randn(3, 4, 7)
    torch.testing.assert_close(masked_softmax(x), torch.softmax(x, -1), **TOL[torch.float64])
    torch.testing.assert_close(masked_softmax(x, dim=1), torch.softmax(x, 1), **TOL[torch.float64])


def test_masked_softmax_masked_entries_exactly_zero_and_rows_renormalised():
    x = randn(2, 5)
    mask = torch.tensor([[True, False, True, False, True], [False, False, False, False, True]])
    w = masked_softmax(x, mask)
    assert torch.equal(w[~mask], torch.zeros(int((~mask).sum()), dtype=w.dtype))
    expected0 = torch.softmax(x[0, [0, 2, 4]], -1)
    torch.testing.assert_close(w[0, [0, 2, 4]], expected0, **TOL[torch.float64])
    assert w[1, 4].item() == 1.0


def test_masked_softmax_fully_masked_row_is_zero_not_nan():
    x = randn(3, 4)
    mask = torch.tensor([True, True, False])[:, None].expand(3, 4)
    w = masked_softmax(x, mask)
    assert not torch.isnan(w).any()
    assert torch.equal(w[2], torch.zeros(4, dtype=w.dtype))
    torch.testing.assert_close(w[:2].sum(-1), torch.ones(2, dtype=w.dtype), **TOL[torch.float64])
    # all -inf logits behave like a fully masked row
    w_inf = masked_softmax(torch.full((2, 3), float("-inf")))
    assert torch.equal(w_inf, torch.zeros(2, 3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_masked_softmax_large_logits(dtype):
    big = 1e4
    x = torch.tensor([[big, 0.0, -big], [big, big, 0.0]], dtype=dtype)
    w = masked_softmax(x)
    assert w.dtype == dtype
    assert torch.isfinite(w).all()
    expected = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]], dtype=dtype)
    torch.testing.assert_close(w, expected, rtol=0, atol=0)


def test_masked_softmax_huge_and_infinite_logits():
    x = torch.tensor([[1e30, 1e30 - 1e24, 0.0], [float("inf"), 5.0, float("inf")], [float("-inf"), 0.0, 0.0]])
    w = masked_softmax(x)
    assert torch.isfinite(w).all()
    # 1e30 - 1e24 is 1e24 below the max: weight exp(-1e24) == 0
    torch.testing.assert_close(w[0], torch.tensor([1.0, 0.0, 0.0]), rtol=0, atol=0)
    # +inf logits share the row equally
    torch.testing.assert_close(w[1], torch.tensor([0.5, 0.0, 0.5]), rtol=0, atol=0)
    # -inf behaves like masked
    torch.testing.assert_close(w[2], torch.tensor([0.0, 0.5, 0.5]), rtol=0, atol=0)


@pytest.mark.parametrize("dtype,atol", [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)])
def test_masked_softmax_half_precision_close_to_float64(dtype, atol):
    x = randn(4, 9) * 3
    mask = random_mask(4, 9, seed=1)
    mask[3] = False
    w = masked_softmax(x.to(dtype), mask)
    assert w.dtype == dtype
    torch.testing.assert_close(w.double(), masked_softmax(x, mask), rtol=0, atol=atol)
    assert torch.equal(w[3], torch.zeros(9, dtype=dtype))


def test_masked_softmax_gradient_matches_torch_softmax():
    x = randn(3, 5).requires_grad_()
    g = randn(3, 5, seed=1)
    (masked_softmax(x) * g).sum().backward()
    ours = x.grad.clone()
    x.grad = None
    (torch.softmax(x, -1) * g).sum().backward()
    torch.testing.assert_close(ours, x.grad, **TOL[torch.float64])


def test_masked_softmax_rejects_bad_masks():
    x = randn(2, 3, 4)
    with pytest.raises(TypeError, match=r"mask has dtype torch.float32 \(shape \(3, 4\)\).*torch.bool"):
        masked_softmax(x, torch.ones(3, 4))
    with pytest.raises(ValueError, match=r"mask has shape \(5, 4\).*\(2, 3, 4\)"):
        masked_softmax(x, torch.ones(5, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"mask has shape \(1, 2, 3, 4\)"):  # would grow the scores
        masked_softmax(x, torch.ones(1, 2, 3, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="scores must be a floating-point tensor"):
        masked_softmax(torch.ones(2, 3, dtype=torch.long))


# ---------------------------------------------------------------- scaled_dot_product_attention parity


SHAPES = {
    "2d": ((5, 8), (7, 8), (7, 6)),
    "3d": ((2, 5, 8), (2, 7, 8), (2, 7, 6)),
    "4d": ((2, 3, 5, 8), (2, 3, 7, 8), (2, 3, 7, 6)),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("rank", ["2d", "3d", "4d"])
def test_sdpa_matches_torch_without_mask(rank, dtype):
    qs, ks, vs = SHAPES[rank]
    q, k, v = randn(*qs, dtype=dtype, seed=1), randn(*ks, dtype=dtype, seed=2), randn(*vs, dtype=dtype, seed=3)
    out, w = scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), **TOL[dtype])
    ref_out, ref_w = reference_attention(q, k, v)
    torch.testing.assert_close(w, ref_w.to(dtype), **TOL[dtype])
    torch.testing.assert_close(out, ref_out.to(dtype), **TOL[dtype])


MASK_SHAPES = [
    ("4d", (5, 7)),  # (Lq, Lk)
    ("4d", (3, 5, 7)),  # (H, Lq, Lk)
    ("4d", (2, 3, 5, 7)),  # full
    ("4d", (2, 1, 1, 7)),  # key padding, broadcast over heads and queries
    ("4d", (2, 1, 5, 7)),  # per batch, shared by heads
    ("3d", (5, 7)),
    ("3d", (2, 5, 7)),
    ("3d", (2, 1, 7)),
    ("2d", (5, 7)),
    ("2d", (7,)),  # one key mask for every query
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("rank,mask_shape", MASK_SHAPES)
def test_sdpa_matches_torch_with_every_mask_rank(rank, mask_shape, dtype):
    qs, ks, vs = SHAPES[rank]
    q, k, v = randn(*qs, dtype=dtype, seed=1), randn(*ks, dtype=dtype, seed=2), randn(*vs, dtype=dtype, seed=3)
    mask = random_mask(*mask_shape, seed=4)
    out, w = scaled_dot_product_attention(q, k, v, mask)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), **TOL[dtype])
    ref_out, ref_w = reference_attention(q, k, v, mask)
    torch.testing.assert_close(w, ref_w.to(dtype), **TOL[dtype])
    assert torch.equal(w.masked_select(~mask.expand(w.shape)), torch.zeros(int((~mask.expand(w.shape)).sum()), dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("Lq,Lk", [(5, 5), (3, 7), (7, 3)])
def test_sdpa_causal_matches_torch_top_left(Lq, Lk, dtype):
    q, k, v = randn(2, 2, Lq, 4, dtype=dtype, seed=1), randn(2, 2, Lk, 4, dtype=dtype, seed=2), randn(2, 2, Lk, 3, dtype=dtype, seed=3)
    out, w = scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True), **TOL[dtype])
    tril = torch.ones(Lq, Lk).tril().bool()
    assert torch.equal(w[..., ~tril], torch.zeros_like(w[..., ~tril]))
    torch.testing.assert_close(w, reference_attention(q, k, v, tril)[1].to(dtype), **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sdpa_mask_and_causal_combine_with_and(dtype):
    q, k, v = randn(2, 5, 4, dtype=dtype, seed=1), randn(2, 6, 4, dtype=dtype, seed=2), randn(2, 6, 3, dtype=dtype, seed=3)
    mask = random_mask(2, 1, 6, seed=5)
    combined = mask & torch.ones(5, 6, dtype=torch.bool).tril()
    out, w = scaled_dot_product_attention(q, k, v, mask, is_causal=True)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=combined)
    torch.testing.assert_close(out, expected, **TOL[dtype])
    torch.testing.assert_close(w, reference_attention(q, k, v, combined)[1].to(dtype), **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sdpa_custom_scale(dtype):
    q, k, v = randn(2, 4, 8, dtype=dtype, seed=1), randn(2, 6, 8, dtype=dtype, seed=2), randn(2, 6, 3, dtype=dtype, seed=3)
    out, w = scaled_dot_product_attention(q, k, v, scale=0.7)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, scale=0.7), **TOL[dtype])
    torch.testing.assert_close(w, reference_attention(q, k, v, scale=0.7)[1].to(dtype), **TOL[dtype])
    # a different scale really changes the result
    assert not torch.allclose(out, scaled_dot_product_attention(q, k, v)[0])


def test_sdpa_fully_masked_row_gives_zero_weights_and_output():
    q, k, v = randn(2, 3, 4), randn(2, 5, 4, seed=1), randn(2, 5, 6, seed=2)
    mask = torch.ones(2, 3, 5, dtype=torch.bool)
    mask[1, 2] = False
    out, w = scaled_dot_product_attention(q, k, v, mask)
    assert not torch.isnan(out).any()
    assert torch.equal(out[1, 2], torch.zeros(6, dtype=out.dtype))
    assert torch.equal(w[1, 2], torch.zeros(5, dtype=w.dtype))
    fast, none = fused_attention(q, k, v, mask)
    assert none is None
    torch.testing.assert_close(fast, out, **TOL[torch.float64])
    assert torch.equal(fast[1, 2], torch.zeros(6, dtype=out.dtype))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("requires_grad", [False, True])
def test_torch_cpu_sdpa_returns_zeros_for_fully_masked_rows(dtype, requires_grad):
    """The assumption behind attention._CPU_SDPA_ZEROES_EMPTY_ROWS, checked on the installed PyTorch."""
    if not attention_module._CPU_SDPA_ZEROES_EMPTY_ROWS:
        pytest.skip("PyTorch < 2.5: fused_attention checks for fully masked rows itself")
    for shape in [(2, 3, 5, 8), (1, 2, 40, 16)]:  # a tiny and a larger problem (different CPU kernels)
        q = randn(*shape, dtype=dtype).requires_grad_(requires_grad)
        k, v = randn(*shape, dtype=dtype, seed=1), randn(*shape, dtype=dtype, seed=2)
        mask = random_mask(shape[0], 1, shape[2], shape[2], seed=3)
        mask[0, 0, 1] = False  # one query sees nothing
        key_padding = torch.ones(shape[0], 1, 1, shape[2], dtype=torch.bool)
        key_padding[-1] = False  # a whole sequence of padding
        for m in (mask, key_padding):
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=m)
            empty = ~m.any(-1)  # (..., Lq or 1)
            assert torch.equal(out[empty.expand(out.shape[:-1])], torch.zeros_like(out[empty.expand(out.shape[:-1])]))


def test_fused_attention_repairs_a_backend_that_returns_nan(monkeypatch):
    """Some fused kernels (older PyTorch, some GPU backends) return NaN for fully masked rows."""
    original = F.scaled_dot_product_attention

    def nan_on_empty_rows(q, k, v, attn_mask=None, **kwargs):
        out = original(q, k, v, attn_mask=attn_mask, **kwargs)
        if attn_mask is not None:
            out = out.masked_fill(~attn_mask.any(-1, keepdim=True), float("nan"))
        return out

    monkeypatch.setattr(F, "scaled_dot_product_attention", nan_on_empty_rows)
    monkeypatch.setattr(attention_module, "_CPU_SDPA_ZEROES_EMPTY_ROWS", False)  # behave as on such a backend
    q, k, v = randn(2, 3, 4), randn(2, 5, 4, seed=1), randn(2, 5, 6, seed=2)
    mask = random_mask(2, 3, 5, seed=3)
    mask[0, 1] = False
    assert torch.isnan(F.scaled_dot_product_attention(q, k, v, attn_mask=mask)).any()  # the fake works
    out, _ = fused_attention(q, k, v, mask)
    assert not torch.isnan(out).any()
    torch.testing.assert_close(out, scaled_dot_product_attention(q, k, v, mask)[0], **TOL[torch.float64])


@pytest.mark.parametrize("dtype,atol", [(torch.float16, 1e-2), (torch.bfloat16, 6e-2)])
def test_sdpa_half_precision(dtype, atol):
    q, k, v = randn(2, 4, 8, seed=1), randn(2, 6, 8, seed=2), randn(2, 6, 3, seed=3)
    mask = random_mask(2, 4, 6, seed=4)
    mask[0, 1] = False
    out, w = scaled_dot_product_attention(q.to(dtype), k.to(dtype), v.to(dtype), mask)
    assert out.dtype == w.dtype == dtype
    assert torch.isfinite(out).all()
    ref_out, ref_w = reference_attention(q.to(dtype), k.to(dtype), v.to(dtype), mask)  # same rounded inputs
    torch.testing.assert_close(out.double(), ref_out, rtol=0, atol=atol)
    torch.testing.assert_close(w.double(), ref_w, rtol=0, atol=atol)


def test_sdpa_large_logits_stay_finite():
    q = torch.full((1, 2, 4), 50.0)  # q.k = 1e4, times 1/sqrt(4) -> 5e3 logits
    k = torch.cat([torch.full((1, 1, 4), 50.0), torch.zeros(1, 2, 4)], dim=1)
    v = torch.eye(3)[None]
    out, w = scaled_dot_product_attention(q, k, v)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(w, torch.tensor([[[1.0, 0.0, 0.0]] * 2]), rtol=0, atol=0)


def test_sdpa_empty_queries_give_empty_output():
    out, w = scaled_dot_product_attention(randn(2, 0, 4), randn(2, 5, 4), randn(2, 5, 3))
    assert out.shape == (2, 0, 3) and w.shape == (2, 0, 5)


def test_sdpa_dropout_returns_the_weights_it_used():
    q, k, v = randn(2, 6, 4), randn(2, 8, 4, seed=1), randn(2, 8, 3, seed=2)
    torch.manual_seed(0)
    out, w = scaled_dot_product_attention(q, k, v, dropout_p=0.5)
    _, clean = scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(out, w @ v, **TOL[torch.float64])
    dropped = w == 0
    assert dropped.any() and (~dropped).any()
    torch.testing.assert_close(w[~dropped], clean[~dropped] * 2, **TOL[torch.float64])
    # dropout_p=0 is deterministic
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, dropout_p=0.0)[1], clean, rtol=0, atol=0)


def test_sdpa_gradcheck_with_mask():
    q = randn(2, 3, 4).requires_grad_()
    k = randn(2, 5, 4, seed=1).requires_grad_()
    v = randn(2, 5, 2, seed=2).requires_grad_()
    mask = random_mask(2, 3, 5, seed=3)
    mask[1, 2] = False  # a fully masked row: gradient exactly zero, no NaN

    def f(q, k, v):
        return scaled_dot_product_attention(q, k, v, mask, is_causal=True)

    assert torch.autograd.gradcheck(f, (q, k, v))


@pytest.mark.parametrize("mask_shape", [None, (4, 6), (2, 1, 1, 6), (2, 3, 4, 6)])
@pytest.mark.parametrize("is_causal", [False, True])
def test_fused_attention_matches_transparent_path(mask_shape, is_causal):
    q, k, v = randn(2, 3, 4, 8, seed=1), randn(2, 3, 6, 8, seed=2), randn(2, 3, 6, 5, seed=3)
    mask = None if mask_shape is None else random_mask(*mask_shape, seed=4)
    fast, _ = fused_attention(q, k, v, mask, is_causal=is_causal)
    slow, _ = scaled_dot_product_attention(q, k, v, mask, is_causal=is_causal)
    torch.testing.assert_close(fast, slow, **TOL[torch.float64])


# ---------------------------------------------------------------- errors


def test_sdpa_error_feature_size_mismatch():
    with pytest.raises(ValueError, match=r"key has shape \(2, 5, 8\) but query has feature size 16; expected key.shape\[-1\] == 16"):
        scaled_dot_product_attention(randn(2, 3, 16), randn(2, 5, 8), randn(2, 5, 8))


def test_sdpa_error_key_value_length_mismatch():
    with pytest.raises(ValueError, match=r"value has shape \(2, 4, 8\) but key has length 5.*expected value.shape\[-2\] == 5"):
        scaled_dot_product_attention(randn(2, 3, 8), randn(2, 5, 8), randn(2, 4, 8))


def test_sdpa_error_non_boolean_mask():
    with pytest.raises(TypeError, match=r"mask has dtype torch.int64 \(shape \(3, 5\)\) but must be torch.bool"):
        scaled_dot_product_attention(randn(2, 3, 8), randn(2, 5, 8), randn(2, 5, 8), torch.ones(3, 5, dtype=torch.long))


def test_sdpa_error_non_broadcastable_mask():
    with pytest.raises(ValueError, match=r"mask has shape \(3, 4\) which does not broadcast to .* \(2, 3, 5\)"):
        scaled_dot_product_attention(randn(2, 3, 8), randn(2, 5, 8), randn(2, 5, 8), torch.ones(3, 4, dtype=torch.bool))


def test_sdpa_error_no_keys():
    with pytest.raises(ValueError, match=r"key has shape \(2, 0, 8\): there are no keys to attend to"):
        scaled_dot_product_attention(randn(2, 3, 8), randn(2, 0, 8), randn(2, 0, 8))


def test_sdpa_error_too_few_dims():
    with pytest.raises(ValueError, match=r"query has shape \(8,\) but needs at least 2 dimensions"):
        scaled_dot_product_attention(randn(8), randn(5, 8), randn(5, 8))


def test_sdpa_error_batch_mismatch_dtype_and_dropout():
    with pytest.raises(ValueError, match=r"leading \(batch\) dimensions of query \(2, 3, 8\), key \(3, 5, 8\)"):
        scaled_dot_product_attention(randn(2, 3, 8), randn(3, 5, 8), randn(3, 5, 8))
    with pytest.raises(TypeError, match="must share a dtype"):
        scaled_dot_product_attention(randn(2, 3, 8), randn(2, 5, 8, dtype=torch.float32), randn(2, 5, 8))
    with pytest.raises(TypeError, match="key must be a torch.Tensor"):
        scaled_dot_product_attention(randn(2, 3, 8), [[0.0]], randn(2, 5, 8))
    with pytest.raises(ValueError, match=r"dropout_p must be in \[0, 1\)"):
        scaled_dot_product_attention(randn(2, 3, 8), randn(2, 5, 8), randn(2, 5, 8), dropout_p=1.0)


# ---------------------------------------------------------------- mask helpers


def test_causal_mask_matches_tril_and_torch_convention():
    assert torch.equal(causal_mask(3), torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1]], dtype=torch.bool))
    assert torch.equal(causal_mask(2, 4), torch.ones(2, 4).tril().bool())
    assert torch.equal(causal_mask(4, 2), torch.ones(4, 2).tril().bool())
    with pytest.raises(ValueError, match="Lk must be a non-negative int"):
        causal_mask(3, -1)


def test_padding_mask_and_key_padding_conversion():
    pm = padding_mask(torch.tensor([2, 3, 0]), 4)
    expected = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(pm, expected)
    assert torch.equal(padding_mask([1, 2]), torch.tensor([[True, False], [True, True]]))
    assert key_padding_to_attn_mask(pm).shape == (3, 1, 1, 4)
    assert key_padding_to_attn_mask(pm, with_heads_dim=False).shape == (3, 1, 4)
    assert torch.equal(key_padding_to_attn_mask(pm)[1, 0, 0], expected[1])
    with pytest.raises(ValueError, match="max_len is 2"):
        padding_mask([3], 2)
    with pytest.raises(ValueError, match=r"key_padding has shape \(4,\)"):
        key_padding_to_attn_mask(torch.ones(4, dtype=torch.bool))


@pytest.mark.parametrize("causal", [False, True])
def test_sliding_window_mask_against_loop(causal):
    L, window = 7, 2
    m = sliding_window_mask(L, window, causal=causal)
    for i in range(L):
        for j in range(L):
            assert bool(m[i, j]) == (abs(i - j) <= window and (j <= i or not causal))


# ---------------------------------------------------------------- score modules and Attention


def test_score_modules_against_their_formulas():
    q, k = randn(2, 3, 4, dtype=torch.float32), randn(2, 5, 4, dtype=torch.float32, seed=1)
    tol = TOL[torch.float32]
    torch.testing.assert_close(DotProductScore()(q, k), torch.einsum("bqd,bkd->bqk", q, k), **tol)
    torch.testing.assert_close(ScaledDotProductScore()(q, k), torch.einsum("bqd,bkd->bqk", q, k) / 2.0, **tol)

    general = GeneralScore(4, 4)
    expected = torch.einsum("bqd,de,bke->bqk", q, general.weight.detach(), k)
    torch.testing.assert_close(general(q, k), expected, **tol)

    add = AdditiveScore(4, 4, 6)
    s = add(q, k)
    b, i, j = 1, 2, 3
    one = add.v.weight @ torch.tanh(add.w_q.weight @ q[b, i] + add.w_k.weight @ k[b, j])
    torch.testing.assert_close(s[b, i, j], one.squeeze(), **tol)

    cos = CosineScore(temperature=0.5)
    expected = F.cosine_similarity(q[b, i], k[b, j], dim=0) / 0.5
    torch.testing.assert_close(cos(q, k)[b, i, j], expected, **tol)
    learnable = CosineScore(0.5, learnable=True)
    assert [n for n, _ in learnable.named_parameters()] == ["log_scale"]
    torch.testing.assert_close(learnable(q, k), cos(q, k), **tol)

    loc = LocationScore(4, 8)
    s = loc(q, k)
    assert s.shape == (2, 3, 5)
    torch.testing.assert_close(s, loc.proj(q)[..., :5], **tol)
    # depends only on the query: changing the keys' content changes nothing
    torch.testing.assert_close(loc(q, k * 3 + 1), s, rtol=0, atol=0)


def test_score_modules_accept_different_query_and_key_sizes():
    q, k = randn(2, 3, 4, dtype=torch.float32), randn(2, 5, 6, dtype=torch.float32, seed=1)
    assert AdditiveScore(4, 6, 8)(q, k).shape == (2, 3, 5)
    assert GeneralScore(4, 6)(q, k).shape == (2, 3, 5)
    with pytest.raises(ValueError, match=r"key has shape \(2, 5, 6\) but query has feature size 4"):
        DotProductScore()(q, k)
    with pytest.raises(ValueError, match=r"key has shape \(2, 5, 6\); expected key.shape\[-1\] == key_dim == 4"):
        GeneralScore(4, 4)(q, k)
    with pytest.raises(ValueError, match=r"Lk = 5 keys but num_keys is 3"):
        LocationScore(4, 3)(q, k)


def test_attention_module_with_scaled_dot_equals_sdpa():
    q, k, v = randn(2, 3, 4), randn(2, 5, 4, seed=1), randn(2, 5, 6, seed=2)
    mask = random_mask(2, 1, 5, seed=3)
    out, w = Attention(ScaledDotProductScore())(q, k, v, mask)
    ref_out, ref_w = scaled_dot_product_attention(q, k, v, mask)
    torch.testing.assert_close(out, ref_out, **TOL[torch.float64])
    torch.testing.assert_close(w, ref_w, **TOL[torch.float64])


def test_attention_module_with_additive_score_is_weighted_average():
    torch.manual_seed(0)
    att = Attention(AdditiveScore(4, 3, 5)).double()
    q, k, v = randn(2, 3, 4), randn(2, 6, 3, seed=1), randn(2, 6, 2, seed=2)
    mask = random_mask(2, 3, 6, seed=3)
    out, w = att(q, k, v, mask)
    scores = att.score(q, k)
    expected_w = torch.softmax(scores.masked_fill(~mask, float("-inf")), -1)
    torch.testing.assert_close(w, expected_w, **TOL[torch.float64])
    torch.testing.assert_close(out, expected_w @ v, **TOL[torch.float64])
    with pytest.raises(ValueError, match=r"value has shape \(2, 5, 2\) but key has length 6"):
        att(q, k, v[:, :5], mask)


# ---------------------------------------------------------------- Luong local attention


def test_gaussian_window_formula():
    s = torch.arange(6, dtype=torch.float64)
    g = gaussian_window(s, torch.tensor(2.5, dtype=torch.float64), 1.5)
    expected = torch.tensor([math.exp(-((x - 2.5) ** 2) / (2 * 1.5**2)) for x in range(6)], dtype=torch.float64)
    torch.testing.assert_close(g, expected, **TOL[torch.float64])
    with pytest.raises(ValueError, match="sigma must be > 0"):
        gaussian_window(s, 1.0, 0.0)


def test_local_m_mask_centres_on_position():
    m = local_m_mask(6, torch.arange(4), window=1)
    for t in range(4):
        for s in range(6):
            assert bool(m[t, s]) == (abs(s - t) <= 1)


def test_local_p_weights_match_paper_formula():
    scores = randn(2, 3, 8)
    centers = torch.tensor([[1.2, 4.0, 6.7], [0.0, 3.5, 7.0]], dtype=torch.float64)
    D = 2
    w = local_p_weights(scores, centers, D)
    for b in range(2):
        for t in range(3):
            p = centers[b, t].item()
            inside = [s for s in range(8) if abs(s - p) <= D]
            align = torch.softmax(scores[b, t, inside], -1)
            gauss = torch.tensor([math.exp(-((s - p) ** 2) / (2 * (D / 2) ** 2)) for s in inside], dtype=torch.float64)
            expected = torch.zeros(8, dtype=torch.float64)
            expected[inside] = align * gauss
            torch.testing.assert_close(w[b, t], expected, **TOL[torch.float64])


def test_local_p_attention_module_respects_window_and_lengths():
    torch.manual_seed(0)
    att = LocalPAttention(6, 4, window=2).double()
    q, k, v = randn(2, 5, 6), randn(2, 9, 4, seed=1), randn(2, 9, 3, seed=2)
    lengths = torch.tensor([9, 5])
    ctx, w = att(q, k, v, key_lengths=lengths)
    assert ctx.shape == (2, 5, 3) and w.shape == (2, 5, 9)
    assert torch.equal(w[1, :, 5:], torch.zeros(5, 4, dtype=w.dtype))  # padding never attended
    centers = att.predict_centers(q, lengths)
    assert bool((centers >= 0).all()) and bool((centers <= (lengths - 1)[:, None]).all())
    positions = torch.arange(9, dtype=torch.float64)
    outside = (positions - centers[..., None]).abs() > 2
    assert torch.equal(w[outside], torch.zeros(int(outside.sum()), dtype=w.dtype))
    assert bool((w.sum(-1) <= 1 + 1e-12).all())
    torch.testing.assert_close(ctx, w @ v, **TOL[torch.float64])
    with pytest.raises(ValueError, match=r"key_lengths must lie in \[1, 9\]"):
        att(q, k, v, key_lengths=torch.tensor([10, 3]))
    with pytest.raises(ValueError, match="score must be 'general', 'dot' or 'concat'"):
        LocalPAttention(6, 4, 2, score="bogus")


def test_select_positions_keeps_masked_rows_in_row_major_order() -> None:
    """``select_positions`` returns the rows where the mask is True, in order; None is a no-op."""
    x = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    like = torch.zeros(2, 3, dtype=torch.long)
    positions = torch.tensor([[True, False, True], [False, True, False]])
    got = attention_module.select_positions(x, positions, like)
    assert torch.equal(got, torch.stack([x[0, 0], x[0, 2], x[1, 1]]))
    assert attention_module.select_positions(x, None, like) is x
    with pytest.raises(ValueError, match=r"logits_mask must be a bool tensor of shape \(2, 3\).*got shape \(2, 2\)"):
        attention_module.select_positions(x, positions[:, :2], like)
    with pytest.raises(ValueError, match=r"positions must be a bool tensor.*torch.int64"):
        attention_module.select_positions(x, positions.long(), like, name="positions")


# ---- no device-to-host sync on the hot path (issue 16) -------------------------------------------


class _CountHostReads(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the operations that read a tensor's value back to Python (``bool(t)``, ``t.item()``,
    ``int(t)``): on a GPU each one waits for the device."""

    READS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.is_nonzero.default, torch.ops.aten.equal.default}

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.reads += func in self.READS
        return func(*args, **(kwargs or {}))


def test_masked_softmax_and_attention_never_read_back_from_the_device() -> None:
    from attn_tutorial.multihead import MultiHeadAttention

    g = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 3, 4, 5, generator=g)
    scores[0, 0, 0, 1] = float("inf")  # the edge cases are handled on the device too
    mask = torch.rand(2, 1, 4, 5, generator=g) > 0.3
    mask[0, 0, 0, 1] = True
    mask[1, 0, 2] = False  # a fully masked row
    q, k, v = (torch.randn(2, 3, 4, 8, generator=g, requires_grad=True) for _ in range(3))
    mha = MultiHeadAttention(8, 2)
    x = torch.randn(2, 4, 8, generator=g)
    with _CountHostReads() as counter:
        weights = masked_softmax(scores, mask)
        out, _ = scaled_dot_product_attention(q, k, v, mask[..., :4], is_causal=True)
        out.sum().backward()
        mha(x, x, x, mask[:, :, :, :4], average_attn_weights=False)
        out, _, cache = mha(x, x, x, is_causal=True, use_cache=True)
        mha(x[:, :1], x[:, :1], x[:, :1], is_causal=True, past=cache, use_cache=True)
    assert counter.reads == 0
    assert torch.equal(weights[1, 0, 2], torch.zeros(5)) and weights[0, 0, 0, 1] == 1.0
