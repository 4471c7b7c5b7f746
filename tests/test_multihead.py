"""Parity and unit tests for attn_tutorial.multihead.MultiHeadAttention.

Tolerances: float64 rtol=1e-10, atol=1e-12 (same operations, different grouping);
float32 rtol=1e-5, atol=1e-6 (PyTorch's fused float32 kernels sum in another order).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attn_tutorial.multihead import MultiHeadAttention, num_parameters

TOL = {
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    torch.float32: dict(rtol=1e-5, atol=1e-6),
}


def randn(*shape: int, dtype: torch.dtype = torch.float64, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def make_pair(embed_dim=8, num_heads=2, kdim=None, vdim=None, bias=True, dtype=torch.float64, batch_first=True, seed=0):
    torch.manual_seed(seed)
    ref = nn.MultiheadAttention(embed_dim, num_heads, bias=bias, kdim=kdim, vdim=vdim, batch_first=batch_first)
    ref = ref.to(dtype).eval()
    if bias:  # torch initialises biases to zero; make them matter
        with torch.no_grad():
            ref.in_proj_bias.normal_()
            ref.out_proj.bias.normal_()
    return ref, MultiHeadAttention.from_torch(ref)


CASES = {
    "self": dict(kdim=None, vdim=None, self_attn=True),
    "cross_same_dims": dict(kdim=None, vdim=None, self_attn=False),
    "cross_kdim_vdim": dict(kdim=6, vdim=10, self_attn=False),
}


def inputs(case, dtype, B=3, Lq=5, Lk=7, E=8):
    cfg = CASES[case]
    q = randn(B, Lq, E, dtype=dtype, seed=1)
    if cfg["self_attn"]:
        return q, q, q
    k = randn(B, Lk, cfg["kdim"] or E, dtype=dtype, seed=2)
    v = randn(B, Lk, cfg["vdim"] or E, dtype=dtype, seed=3)
    return q, k, v


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("average", [True, False])
@pytest.mark.parametrize("case", list(CASES))
def test_from_torch_matches_nn_multihead_attention(case, average, dtype):
    cfg = CASES[case]
    ref, ours = make_pair(kdim=cfg["kdim"], vdim=cfg["vdim"], dtype=dtype)
    q, k, v = inputs(case, dtype)
    expected, expected_w = ref(q, k, v, average_attn_weights=average)
    out, w = ours(q, k, v, average_attn_weights=average)
    torch.testing.assert_close(out, expected, **TOL[dtype])
    torch.testing.assert_close(w, expected_w, **TOL[dtype])
    Lk = k.shape[1]
    assert w.shape == ((3, 5, Lk) if average else (3, 2, 5, Lk))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", list(CASES))
def test_from_torch_key_padding_mask_polarity(case, dtype):
    cfg = CASES[case]
    ref, ours = make_pair(kdim=cfg["kdim"], vdim=cfg["vdim"], dtype=dtype)
    q, k, v = inputs(case, dtype)
    Lk = k.shape[1]
    lengths = torch.tensor([Lk, 3, 1])
    ignore = torch.arange(Lk)[None, :] >= lengths[:, None]  # torch's polarity: True = ignore
    expected, expected_w = ref(q, k, v, key_padding_mask=ignore, average_attn_weights=False)
    for need_weights in (True, False):
        out, w = ours(q, k, v, mask=(~ignore)[:, None, None, :], need_weights=need_weights, average_attn_weights=False)
        torch.testing.assert_close(out, expected, **TOL[dtype])
        if need_weights:
            torch.testing.assert_close(w, expected_w, **TOL[dtype])
        else:
            assert w is None


@pytest.mark.parametrize("need_weights", [True, False])
def test_causal_matches_torch_attn_mask(need_weights):
    ref, ours = make_pair()
    x = randn(2, 6, 8)
    future = torch.ones(6, 6, dtype=torch.bool).triu(1)  # torch's bool attn_mask: True = not allowed
    expected, _ = ref(x, x, x, attn_mask=future)
    out, _ = ours(x, x, x, is_causal=True, need_weights=need_weights)
    torch.testing.assert_close(out, expected, **TOL[torch.float64])
    out2, _ = ours(x, x, x, mask=~future, need_weights=need_weights)
    torch.testing.assert_close(out2, expected, **TOL[torch.float64])


def test_from_torch_without_bias_and_not_batch_first():
    ref, ours = make_pair(bias=False, batch_first=False)
    assert ours.q_proj.bias is None and ours.out_proj.bias is None
    x = randn(3, 5, 8)
    expected, expected_w = ref(x.transpose(0, 1), x.transpose(0, 1), x.transpose(0, 1))  # (L, B, E) layout
    out, w = ours(x, x, x)
    torch.testing.assert_close(out, expected.transpose(0, 1), **TOL[torch.float64])
    torch.testing.assert_close(w, expected_w, **TOL[torch.float64])


def test_from_torch_rejects_bias_kv():
    ref = nn.MultiheadAttention(8, 2, add_bias_kv=True, batch_first=True)
    with pytest.raises(ValueError, match="add_bias_kv or add_zero_attn"):
        MultiHeadAttention.from_torch(ref)
    with pytest.raises(TypeError, match="module must be an nn.MultiheadAttention"):
        MultiHeadAttention.from_torch(nn.Linear(2, 2))


@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("mask_kind", [None, "2d", "3d", "4d", "padding"])
def test_fast_and_transparent_paths_agree(mask_kind, is_causal):
    _, mha = make_pair(kdim=6, vdim=10)
    q, k, v = inputs("cross_kdim_vdim", torch.float64, Lq=7)
    g = torch.Generator().manual_seed(5)
    masks = {
        None: None,
        "2d": torch.rand(7, 7, generator=g) < 0.6,
        "3d": torch.rand(3, 7, 7, generator=g) < 0.6,
        "4d": torch.rand(3, 2, 7, 7, generator=g) < 0.6,
        "padding": (torch.rand(3, 7, generator=g) < 0.6)[:, None, None, :],
    }
    mask = masks[mask_kind]
    fast, none = mha(q, k, v, mask, need_weights=False, is_causal=is_causal)
    slow, w = mha(q, k, v, mask, need_weights=True, is_causal=is_causal)
    assert none is None and w is not None
    assert not torch.isnan(fast).any()
    torch.testing.assert_close(fast, slow, **TOL[torch.float64])


def test_three_dimensional_mask_is_per_batch_not_per_head():
    _, mha = make_pair()
    x = randn(3, 5, 8)
    mask = torch.rand(3, 5, 5, generator=torch.Generator().manual_seed(1)) < 0.5
    mask[..., 0] = True
    a, wa = mha(x, x, x, mask, average_attn_weights=False)
    b, wb = mha(x, x, x, mask[:, None], average_attn_weights=False)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert torch.equal(wa[~mask[:, None].expand_as(wa)], torch.zeros(int((~mask).sum()) * 2, dtype=wa.dtype))


@pytest.mark.parametrize("need_weights", [True, False])
def test_fully_masked_query_gives_zero_attention_not_nan(need_weights):
    ref, mha = make_pair()
    x = randn(2, 4, 8)
    mask = torch.ones(2, 1, 4, 4, dtype=torch.bool)
    mask[1, 0, 2] = False  # query 2 of batch 1 sees nothing
    out, w = mha(x, x, x, mask, need_weights=need_weights)
    assert torch.isfinite(out).all()
    # the attention output is zero, so that row of the module output is just the output bias
    torch.testing.assert_close(out[1, 2], mha.out_proj.bias, **TOL[torch.float64])
    if need_weights:
        assert torch.equal(w[1, 2], torch.zeros(4, dtype=w.dtype))
    # batch 0 is unmasked: identical to calling without a mask, and to nn.MultiheadAttention
    torch.testing.assert_close(out[0], ref(x, x, x)[0][0], **TOL[torch.float64])


def test_dropout_only_in_training_and_weights_are_the_used_ones():
    torch.manual_seed(0)
    mha = MultiHeadAttention(8, 2, dropout=0.5).double()
    x = randn(2, 6, 8)
    mha.eval()
    a, _ = mha(x, x, x)
    b, _ = mha(x, x, x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    mha.train()
    _, w = mha(x, x, x, average_attn_weights=False)
    assert (w == 0).any()
    out_train, _ = mha(x, x, x, need_weights=False)
    assert not torch.allclose(out_train, a)


def test_gradcheck_both_paths():
    torch.manual_seed(0)
    mha = MultiHeadAttention(4, 2).double()
    q = randn(2, 3, 4).requires_grad_()
    kv = randn(2, 4, 4, seed=1).requires_grad_()
    mask = torch.tensor([[True, True, True, False], [True, False, False, False]])[:, None, None, :]
    for need_weights in (True, False):

        def f(q, kv, need_weights=need_weights):
            return mha(q, kv, kv, mask, need_weights=need_weights)[0]

        assert torch.autograd.gradcheck(f, (q, kv))


def test_errors_name_arguments_and_shapes():
    with pytest.raises(ValueError, match="embed_dim=10 is not divisible by num_heads=3"):
        MultiHeadAttention(10, 3)
    mha = MultiHeadAttention(8, 2, kdim=6)
    x = torch.randn(2, 5, 8)
    with pytest.raises(ValueError, match=r"key has shape \(2, 5, 8\); expected \(batch, length, 6\)"):
        mha(x, x, x)
    with pytest.raises(ValueError, match=r"query has shape \(5, 8\); expected \(batch, length, 8\)"):
        MultiHeadAttention(8, 2)(x[0], x[0], x[0])
    with pytest.raises(ValueError, match=r"mask has shape \(2, 1, 1, 4\) which does not broadcast .* \(2, 2, 5, 5\)"):
        MultiHeadAttention(8, 2)(x, x, x, torch.ones(2, 1, 1, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask has dtype torch.float32"):
        MultiHeadAttention(8, 2)(x, x, x, torch.ones(5, 5))
    with pytest.raises(ValueError, match="different batch sizes"):
        MultiHeadAttention(8, 2)(x, x[:1], x[:1])


def test_num_parameters_matches_torch():
    for kdim, vdim, bias in [(None, None, True), (6, 10, True), (None, None, False)]:
        ref = nn.MultiheadAttention(8, 2, kdim=kdim, vdim=vdim, bias=bias, batch_first=True)
        ours = MultiHeadAttention.from_torch(ref)
        assert num_parameters(ours) == sum(p.numel() for p in ref.parameters())
    frozen = MultiHeadAttention(8, 2)
    frozen.q_proj.requires_grad_(False)
    assert num_parameters(frozen) == num_parameters(frozen, trainable_only=False) - (64 + 8)


# ---- the public steps and the key/value cache (issue 16) ---------------------------------------


def _mha(rope: bool = False, seed: int = 0, **kw) -> MultiHeadAttention:
    torch.manual_seed(seed)
    mha = MultiHeadAttention(8, 2, rope=rope, **kw).double().eval()
    with torch.no_grad():
        for p in mha.parameters():
            if p.dim() == 1:
                p.normal_()  # non-zero biases
    return mha


def test_project_then_attend_is_forward_and_split_merge_are_inverse() -> None:
    mha = _mha()
    x, memory = randn(2, 5, 8), randn(2, 7, 8, seed=1)
    mask = randn(2, 1, 5, 7, seed=2) > -0.5
    q, k, v = mha.project(x, memory, memory)
    assert q.shape == (2, 2, 5, 4) and k.shape == v.shape == (2, 2, 7, 4)  # (B, H, L, Dh)
    out, w = mha.attend(q, k, v, mask[:, :, :, :])
    ref_out, ref_w = mha(x, memory, memory, mask, average_attn_weights=False)
    assert torch.equal(out, ref_out) and torch.equal(w, ref_w)
    assert torch.equal(mha.merge_heads(mha.split_heads(x)), x)


@pytest.mark.parametrize("rope", [False, True])
@pytest.mark.parametrize("need_weights", [True, False])
@pytest.mark.parametrize("chunk", [1, 2])
def test_kv_cache_steps_equal_full_causal_self_attention(rope: bool, need_weights: bool, chunk: int) -> None:
    """Feeding positions ``chunk`` at a time against the cache = one causal pass over the sequence."""
    mha = _mha(rope=rope)
    x = randn(3, 6, 8)
    full, _ = mha(x, x, x, is_causal=True, need_weights=need_weights)
    past, outs = None, []
    for t in range(0, 6, chunk):
        new = x[:, t : t + chunk]
        out, w, past = mha(new, new, new, need_weights=need_weights, is_causal=True, past=past, use_cache=True)
        outs.append(out)
        if need_weights:  # average over heads: (B, chunk, t + chunk), the future keys get zero weight
            assert w.shape == (3, new.shape[1], t + new.shape[1])
    torch.testing.assert_close(torch.cat(outs, 1), full, **TOL[torch.float64])
    assert past[0].shape == past[1].shape == (3, 2, 6, 4)  # (B, H, L, Dh)


def test_attending_to_a_cache_alone_is_cross_attention_to_its_source() -> None:
    mha = _mha()
    x, memory = randn(2, 3, 8), randn(2, 7, 8, seed=1)
    mask = torch.ones(2, 1, 1, 7, dtype=torch.bool)
    mask[1, ..., 5:] = False
    kv = mha.project_kv(memory, memory)  # projected once, e.g. when a source is encoded
    out, w = mha(x, None, None, mask, past=kv)
    ref_out, ref_w = mha(x, memory, memory, mask)
    assert torch.equal(out, ref_out) and torch.equal(w, ref_w)
