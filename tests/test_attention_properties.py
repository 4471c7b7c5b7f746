"""Property-based tests (hypothesis) for attention: invariants that must hold for every input.

Small shapes and a modest number of examples keep this file to a few seconds. Values are float64;
comparisons that reorder floating-point sums use rtol=1e-10, atol=1e-12; properties that only
drop exactly-zero terms are checked at the same tolerance (they are exact in practice).
"""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attn_tutorial.attention import masked_softmax, scaled_dot_product_attention
from attn_tutorial.multihead import MultiHeadAttention

F64 = dict(rtol=1e-10, atol=1e-12)
SETTINGS = settings(max_examples=20, deadline=None, derandomize=True, database=None)


def tensor(seed: int, *shape: int, magnitude: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * magnitude


@st.composite
def bool_tensor(draw, shape):
    n = 1
    for s in shape:
        n *= s
    return torch.tensor(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=torch.bool).reshape(shape)


@st.composite
def attention_case(draw):
    B, Lq, Lk = draw(st.integers(1, 2)), draw(st.integers(1, 5)), draw(st.integers(1, 6))
    D, Dv = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**16))
    magnitude = draw(st.sampled_from([0.01, 1.0, 30.0, 1e3]))  # from near-uniform to saturated weights
    mask_shape = draw(st.sampled_from([(B, Lq, Lk), (Lq, Lk), (B, 1, Lk)]))
    mask = draw(bool_tensor(mask_shape))
    q = tensor(seed, B, Lq, D, magnitude=magnitude)
    k = tensor(seed + 1, B, Lk, D, magnitude=magnitude)
    v = tensor(seed + 2, B, Lk, Dv)
    return q, k, v, mask


@SETTINGS
@given(attention_case(), st.booleans())
def test_weights_are_a_distribution_over_visible_keys(case, is_causal):
    q, k, v, mask = case
    out, w = scaled_dot_product_attention(q, k, v, mask, is_causal=is_causal)
    visible = mask.expand(w.shape)
    if is_causal:
        visible = visible & torch.ones(w.shape[-2:], dtype=torch.bool).tril()
    assert torch.isfinite(w).all() and torch.isfinite(out).all()
    assert bool((w >= 0).all())
    assert torch.equal(w[~visible], torch.zeros(int((~visible).sum()), dtype=w.dtype))  # exactly 0
    expected_sums = visible.any(-1).to(w.dtype)  # 1 for rows with a visible key, 0 for fully masked rows
    torch.testing.assert_close(w.sum(-1), expected_sums, **F64)
    empty_rows = ~visible.any(-1)
    assert torch.equal(out[empty_rows], torch.zeros_like(out[empty_rows]))


@SETTINGS
@given(
    st.integers(1, 4),
    st.integers(1, 6),
    st.integers(0, 2**16),
    st.sampled_from([1.0, 1e2, 1e4, 1e30]),
)
def test_masked_softmax_is_finite_and_normalised_for_extreme_logits(rows, cols, seed, magnitude):
    x = tensor(seed, rows, cols, magnitude=magnitude)
    w = masked_softmax(x)
    assert torch.isfinite(w).all() and bool((w >= 0).all())
    torch.testing.assert_close(w.sum(-1), torch.ones(rows, dtype=w.dtype), **F64)
    # softmax is invariant to adding a constant per row
    torch.testing.assert_close(masked_softmax(x + 7.0), w, rtol=1e-6, atol=1e-9)


@SETTINGS
@given(st.integers(2, 6), st.integers(1, 4), st.integers(0, 2**16), st.data())
def test_causal_outputs_ignore_future_tokens(L, D, seed, data):
    t = data.draw(st.integers(0, L - 2), label="last unchanged position")
    x = tensor(seed, 2, L, D)
    x_future_changed = x.clone()
    x_future_changed[:, t + 1 :] = tensor(seed + 1, 2, L - t - 1, D, magnitude=10.0)
    out, _ = scaled_dot_product_attention(x, x, x, is_causal=True)
    out2, _ = scaled_dot_product_attention(x_future_changed, x_future_changed, x_future_changed, is_causal=True)
    torch.testing.assert_close(out2[:, : t + 1], out[:, : t + 1], **F64)

    torch.manual_seed(seed)
    mha = MultiHeadAttention(4, 2).double().eval()
    y, y2 = tensor(seed, 2, L, 4), tensor(seed, 2, L, 4)
    y2[:, t + 1 :] = tensor(seed + 2, 2, L - t - 1, 4)
    for need_weights in (True, False):
        a, _ = mha(y, y, y, is_causal=True, need_weights=need_weights)
        b, _ = mha(y2, y2, y2, is_causal=True, need_weights=need_weights)
        torch.testing.assert_close(b[:, : t + 1], a[:, : t + 1], **F64)
        assert not torch.allclose(b[:, t + 1 :], a[:, t + 1 :])  # the future really changed


@SETTINGS
@given(st.integers(1, 6), st.integers(0, 2**16), st.data())
def test_self_attention_is_permutation_equivariant(L, seed, data):
    perm = torch.tensor(data.draw(st.permutations(range(L)), label="perm"))
    torch.manual_seed(seed)
    mha = MultiHeadAttention(6, 3).double().eval()
    x = tensor(seed, 2, L, 6)
    out, w = mha(x, x, x, average_attn_weights=False)
    xp = x[:, perm]
    out_p, w_p = mha(xp, xp, xp, average_attn_weights=False)
    torch.testing.assert_close(out_p, out[:, perm], **F64)
    torch.testing.assert_close(w_p, w[:, :, perm][:, :, :, perm], **F64)
    fast_p, _ = mha(xp, xp, xp, need_weights=False)
    torch.testing.assert_close(fast_p, out[:, perm], **F64)


@SETTINGS
@given(attention_case(), st.integers(1, 4), st.integers(0, 2**16))
def test_appending_masked_padding_keys_changes_nothing(case, pad, seed):
    q, k, v, mask = case
    B, Lq, Lk = q.shape[0], q.shape[1], k.shape[1]
    k_pad = torch.cat([k, tensor(seed, B, pad, k.shape[-1], magnitude=100.0)], dim=1)
    v_pad = torch.cat([v, tensor(seed + 1, B, pad, v.shape[-1], magnitude=100.0)], dim=1)
    mask_full = mask.expand(B, Lq, Lk)
    mask_pad = torch.cat([mask_full, torch.zeros(B, Lq, pad, dtype=torch.bool)], dim=-1)
    out, w = scaled_dot_product_attention(q, k, v, mask_full)
    out_pad, w_pad = scaled_dot_product_attention(q, k_pad, v_pad, mask_pad)
    torch.testing.assert_close(out_pad, out, **F64)
    torch.testing.assert_close(w_pad[..., :Lk], w, **F64)
    assert torch.equal(w_pad[..., Lk:], torch.zeros_like(w_pad[..., Lk:]))


@SETTINGS
@given(st.integers(1, 5), st.integers(1, 5), st.integers(1, 3), st.integers(0, 2**16))
def test_mha_padding_invariance_on_both_paths(Lq, Lk, pad, seed):
    torch.manual_seed(seed)
    mha = MultiHeadAttention(4, 2, kdim=3, vdim=5).double().eval()
    q, k, v = tensor(seed, 2, Lq, 4), tensor(seed + 1, 2, Lk, 3), tensor(seed + 2, 2, Lk, 5)
    k_pad = torch.cat([k, tensor(seed + 3, 2, pad, 3)], dim=1)
    v_pad = torch.cat([v, tensor(seed + 4, 2, pad, 5)], dim=1)
    keep = torch.arange(Lk + pad) < Lk  # (Lk + pad,): True = real key
    for need_weights in (True, False):
        out, _ = mha(q, k, v, need_weights=need_weights)
        out_pad, _ = mha(q, k_pad, v_pad, mask=keep[None, None, None, :], need_weights=need_weights)
        torch.testing.assert_close(out_pad, out, **F64)
