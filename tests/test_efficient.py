"""attn_tutorial.efficient: tiled attention (forward, backward, NumPy), grouped-query attention, key/value
caches shared with the Transformer, sliding windows, linear attention, the additive bias of the attention
functions, and ``translate --no-kv-cache``.

References are independent: PyTorch's ``F.scaled_dot_product_attention`` and autograd through the dense
computation in float64, the NumPy reference, and the explicit masked/normalised matrices. Tolerances:
float64 comparisons ``atol=rtol=1e-10`` (1e-9 for long sums), float32 against a float64 reference
``atol=rtol=1e-5``.
"""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from attn_tutorial import (
    CausalLMConfig,
    GroupedQueryAttention,
    MultiHeadAttention,
    TinyCausalLM,
    Transformer,
    TransformerConfig,
    alibi_bias,
    append_kv,
    causal_mask,
    fused_attention,
    greedy_decode,
    kv_cache_bytes_per_token,
    kv_cache_nbytes,
    linear_attention,
    linear_attention_step,
    np_tiled_attention,
    reorder_kv,
    repeat_kv,
    scaled_dot_product_attention,
    sliding_window_attention,
    sliding_window_global_mask,
    sliding_window_mask,
    tiled_attention,
    tiled_attention_forward,
)

F64 = dict(atol=1e-10, rtol=1e-10)
F32 = dict(atol=1e-5, rtol=1e-5)


def _sdpa_ref(q, k, v, mask=None, is_causal=False):
    """PyTorch's kernel with the package's convention made explicit: rows with nothing visible give 0."""
    Lq, Lk = q.shape[-2], k.shape[-2]
    allowed = torch.ones(Lq, Lk, dtype=torch.bool)
    if mask is not None:
        allowed = allowed & mask
    if is_causal:
        allowed = allowed & causal_mask(Lq, Lk)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    batch = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    visible = allowed.expand(*batch, Lq, Lk).any(-1, keepdim=True)
    return out.masked_fill(~visible, 0.0)


def _qkv(batch, Lq, Lk, D, Dv, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*batch, Lq, D, generator=g, dtype=dtype), torch.randn(*batch, Lk, D, generator=g, dtype=dtype),
            torch.randn(*batch, Lk, Dv, generator=g, dtype=dtype))


# ---- tiled attention: forward ------------------------------------------------------------------

MASK_SHAPES = {
    "none": None,
    "2d": lambda B, H, Lq, Lk: (Lq, Lk),
    "3d": lambda B, H, Lq, Lk: (H, Lq, Lk),
    "4d": lambda B, H, Lq, Lk: (B, H, Lq, Lk),
    "key-padding": lambda B, H, Lq, Lk: (B, 1, 1, Lk),
    "per-query": lambda B, H, Lq, Lk: (1, 1, Lq, 1),
}


@pytest.mark.parametrize("mask_kind", list(MASK_SHAPES))
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("Lq,Lk,block", [(9, 9, 4), (5, 11, 3), (11, 5, 4), (1, 7, 128), (16, 16, 16)])
def test_tiled_equals_sdpa_float64(mask_kind, is_causal, Lq, Lk, block) -> None:
    B, H = 2, 3
    q, k, v = _qkv((B, H), Lq, Lk, 8, 5)
    shape = MASK_SHAPES[mask_kind]
    mask = None if shape is None else torch.rand(shape(B, H, Lq, Lk), generator=torch.Generator().manual_seed(1)) > 0.3
    out, w = tiled_attention(q, k, v, mask, is_causal=is_causal, block_size=block)
    assert w is None
    torch.testing.assert_close(out, _sdpa_ref(q, k, v, mask, is_causal), **F64)


def test_tiled_float32_against_float64_reference_and_long_sequences() -> None:
    q, k, v = _qkv((1, 2), 300, 257, 16, 16, dtype=torch.float32)
    mask = torch.rand(300, 257, generator=torch.Generator().manual_seed(2)) > 0.1
    ref = _sdpa_ref(q.double(), k.double(), v.double(), mask, True)
    torch.testing.assert_close(tiled_attention(q, k, v, mask, is_causal=True, block_size=64)[0].double(), ref, **F32)
    torch.testing.assert_close(tiled_attention(q, k, v)[0].double(), _sdpa_ref(q.double(), k.double(), v.double()), **F32)


def test_tiled_fully_masked_rows_give_zero_and_lse_minus_inf() -> None:
    q, k, v = _qkv((2,), 6, 7, 4, 3)
    mask = torch.ones(6, 7, dtype=torch.bool)
    mask[1] = False
    mask[4, :] = False
    out, lse = tiled_attention_forward(q, k, v, mask, block_size=2)
    assert torch.equal(out[:, [1, 4]], torch.zeros(2, 2, 3, dtype=q.dtype))
    assert bool(torch.isneginf(lse[:, [1, 4]]).all()) and bool(torch.isfinite(lse[:, [0, 2, 3, 5]]).all())
    torch.testing.assert_close(lse, torch.logsumexp((q @ k.mT / 2).masked_fill(~mask, float("-inf")), -1), **F64)
    torch.testing.assert_close(out, scaled_dot_product_attention(q, k, v, mask)[0], **F64)


def test_tiled_broadcast_batch_dims_scale_and_3d_inputs() -> None:
    q, _, _ = _qkv((2, 3), 5, 6, 4, 4)
    _, k, v = _qkv((1, 3), 5, 6, 4, 4, seed=1)  # keys shared across the batch
    torch.testing.assert_close(tiled_attention(q, k, v, block_size=2)[0], _sdpa_ref(q, k, v), **F64)
    q3, k3, v3 = _qkv((2,), 5, 6, 4, 2)
    mask = torch.rand(2, 5, 6, generator=torch.Generator().manual_seed(3)) > 0.5
    ref = F.scaled_dot_product_attention(q3, k3, v3, attn_mask=mask, scale=0.3).nan_to_num(0.0)
    ref = ref.masked_fill(~mask.any(-1, keepdim=True), 0.0)
    torch.testing.assert_close(tiled_attention(q3, k3, v3, mask, scale=0.3, block_size=4)[0], ref, **F64)


def test_tiled_rejects_bad_arguments() -> None:
    q, k, v = _qkv((1,), 3, 4, 2, 2)
    with pytest.raises(ValueError, match="block_size"):
        tiled_attention(q, k, v, block_size=0)
    with pytest.raises(TypeError, match="mask"):
        tiled_attention(q, k, v, torch.ones(3, 4))
    with pytest.raises(ValueError, match="mask"):
        tiled_attention(q, k, v, torch.ones(3, 5, dtype=torch.bool))


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    Lq=st.integers(1, 12), Lk=st.integers(1, 12), D=st.integers(1, 6), Dv=st.integers(1, 5),
    block=st.integers(1, 13), is_causal=st.booleans(), p=st.floats(0.0, 1.0), seed=st.integers(0, 2**16),
)
def test_tiled_property_matches_dense(Lq, Lk, D, Dv, block, is_causal, p, seed) -> None:
    q, k, v = _qkv((2,), Lq, Lk, D, Dv, seed=seed)
    mask = torch.rand(2, Lq, Lk, generator=torch.Generator().manual_seed(seed)) >= p
    out = tiled_attention(q, k, v, mask, is_causal=is_causal, block_size=block)[0]
    torch.testing.assert_close(out, _sdpa_ref(q, k, v, mask, is_causal), **F64)
    torch.testing.assert_close(out, scaled_dot_product_attention(q, k, v, mask, is_causal=is_causal)[0], **F64)


def test_numpy_tiled_matches_torch_tiled() -> None:
    q, k, v = _qkv((2, 2), 13, 10, 4, 3)
    mask = torch.rand(2, 1, 13, 10, generator=torch.Generator().manual_seed(4)) > 0.4
    mask[0, 0, 3] = False
    ours = tiled_attention(q, k, v, mask, block_size=4)[0].numpy()
    np.testing.assert_allclose(np_tiled_attention(q.numpy(), k.numpy(), v.numpy(), mask.numpy(), block_size=3), ours, atol=1e-10, rtol=1e-10)
    np.testing.assert_allclose(np_tiled_attention(q.numpy(), k.numpy(), v.numpy()), tiled_attention(q, k, v)[0].numpy(), atol=1e-10, rtol=1e-10)


# ---- tiled attention: backward by recomputation -------------------------------------------------


@pytest.mark.parametrize("is_causal,masked", [(False, False), (True, False), (False, True), (True, True)])
def test_tiled_gradcheck_float64(is_causal, masked) -> None:
    q, k, v = (t.requires_grad_() for t in _qkv((1, 2), 5, 6, 3, 2))
    mask = None
    if masked:
        mask = torch.rand(5, 6, generator=torch.Generator().manual_seed(5)) > 0.4
        mask[2] = False  # a fully masked row: zero output, zero gradient
    fn = lambda q, k, v: tiled_attention(q, k, v, mask, is_causal=is_causal, block_size=2)[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v))


def test_tiled_gradients_equal_dense_autograd_with_broadcast_keys() -> None:
    q, _, _ = _qkv((2, 3), 7, 9, 4, 4)
    _, k, v = _qkv((1, 3), 7, 9, 4, 5, seed=1)
    mask = torch.rand(2, 1, 7, 9, generator=torch.Generator().manual_seed(6)) > 0.3
    grads = []
    for fn in (lambda *a: tiled_attention(*a, mask, is_causal=True, block_size=3)[0],
               lambda *a: scaled_dot_product_attention(*a, mask, is_causal=True)[0]):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out = fn(*leaves)
        out.backward(torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out))
        grads.append([t.grad for t in leaves])
    for ours, ref in zip(*grads):
        torch.testing.assert_close(ours, ref, **F64)
    assert grads[0][1].shape == k.shape  # summed back over the broadcast batch dimension


def test_tiled_saves_only_linear_memory_for_backward() -> None:
    q, k, v = (t.requires_grad_() for t in _qkv((1,), 64, 64, 4, 4, dtype=torch.float32))
    saved: list[int] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        tiled_attention(q, k, v, block_size=16)[0].sum().backward()
    assert max(saved) <= 64 * 4  # q, k, v, out (L * d) and lse (L): nothing of size L * L


# ---- key/value caches and grouped-query attention ----------------------------------------------


def test_append_and_reorder_kv() -> None:
    k1, v1 = torch.randn(3, 2, 4, 5), torch.randn(3, 2, 4, 5)
    assert append_kv(None, k1, v1) == (k1, v1)
    k, v = append_kv((k1, v1), k1[:, :, :1], v1[:, :, :1])
    assert k.shape == (3, 2, 5, 5) and torch.equal(k[:, :, 4], k1[:, :, 0]) and torch.equal(v[:, :, :4], v1)
    idx = torch.tensor([2, 2, 0])
    rk, rv = reorder_kv((k, v), idx)
    assert torch.equal(rk, k[idx]) and torch.equal(rv, v[idx]) and reorder_kv(None, idx) is None


@pytest.mark.parametrize("num_kv_heads", [1, 2, 8])
def test_kv_cache_bytes_per_token_formula(num_kv_heads) -> None:
    assert kv_cache_bytes_per_token(3, num_kv_heads, 16) == 2 * 3 * num_kv_heads * 16 * 4
    assert kv_cache_bytes_per_token(3, num_kv_heads, 16, torch.bfloat16) == 2 * 3 * num_kv_heads * 16 * 2
    lm = TinyCausalLM(CausalLMConfig(11, d_model=32, num_heads=8, num_kv_heads=num_kv_heads, num_layers=3)).eval()
    _, caches = lm._run(torch.randint(0, 11, (2, 7)), [None] * 3, 0)
    assert kv_cache_nbytes(caches) == 2 * 7 * kv_cache_bytes_per_token(3, num_kv_heads, 4)  # batch * tokens * per token
    with pytest.raises(ValueError, match="num_kv_heads"):
        kv_cache_bytes_per_token(3, 0, 16)


def test_gqa_equals_multihead_when_kv_heads_equal_heads() -> None:
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4).double().eval()
    gqa = GroupedQueryAttention.from_multihead(mha, 4)
    assert sum(p.numel() for p in gqa.parameters()) == sum(p.numel() for p in mha.parameters())
    x, mem = torch.randn(2, 5, 16, dtype=torch.float64), torch.randn(2, 7, 16, dtype=torch.float64)
    mask = torch.rand(2, 5, 7) > 0.3
    for need_weights in (True, False):
        ours, w = gqa(x, mem, mem, mask, need_weights=need_weights, average_attn_weights=False)
        ref, w_ref = mha(x, mem, mem, mask, need_weights=need_weights, average_attn_weights=False)
        torch.testing.assert_close(ours, ref, **F64)
        if need_weights:
            torch.testing.assert_close(w, w_ref, **F64)
    torch.testing.assert_close(gqa(x, x, x, is_causal=True)[0], mha(x, x, x, is_causal=True)[0], **F64)


def test_gqa_conversion_mean_pools_key_value_heads() -> None:
    torch.manual_seed(1)
    mha = MultiHeadAttention(24, 6).double().eval()
    for Hkv in (1, 2, 3):
        gqa = GroupedQueryAttention.from_multihead(mha, Hkv)
        assert gqa.k_proj.weight.shape == (Hkv * 4, 24) and gqa.num_kv_heads == Hkv
        x = torch.randn(2, 5, 24, dtype=torch.float64)
        k, v = gqa.project_kv(x, x)  # (B, Hkv, L, Dh)
        k_all = mha.split_heads(mha.k_proj(x))  # (B, 6, L, Dh): keys are linear, so pooling weights = pooling keys
        torch.testing.assert_close(k, k_all.view(2, Hkv, 6 // Hkv, 5, 4).mean(2), **F64)
        # Query head h attends with kv head h // (H / Hkv): the explicit grouped computation.
        q = mha.split_heads(mha.q_proj(x))
        out = scaled_dot_product_attention(q, repeat_kv(k, 6 // Hkv), repeat_kv(v, 6 // Hkv))[0]
        torch.testing.assert_close(gqa(x, x, x)[0], mha.out_proj(out.transpose(1, 2).reshape(2, 5, 24)), **F64)
    with pytest.raises(ValueError, match="num_kv_heads"):
        GroupedQueryAttention(24, 6, 4)


@pytest.mark.parametrize("attention,kv", [("dense", None), ("dense", 1), ("sliding", 2), ("linear", 2)])
def test_tiny_lm_cached_generation_equals_recomputation(attention, kv) -> None:
    torch.manual_seed(2)
    lm = TinyCausalLM(CausalLMConfig(13, d_model=32, num_heads=4, num_kv_heads=kv, attention=attention, window=3)).double().eval()
    prompt = torch.randint(0, 13, (3, 6))
    with torch.no_grad():
        assert torch.equal(lm.generate(prompt, 12), lm.generate(prompt, 12, use_cache=False))
        # and the cached step logits equal the full forward pass at every position
        tokens = lm.generate(prompt, 5)
        logits, caches = lm._run(tokens[:, :6], [None] * 2, 0)
        for t in range(6, tokens.shape[1]):
            step, caches = lm._run(tokens[:, t : t + 1], caches, t)
            torch.testing.assert_close(step[:, 0], lm(tokens[:, : t + 1])[:, -1], atol=1e-9, rtol=1e-9)


def test_transformer_without_kv_cache_decodes_identically() -> None:
    torch.manual_seed(3)
    model = Transformer(TransformerConfig(30, d_model=32, num_heads=4, d_ff=64, num_encoder_layers=2, num_decoder_layers=2)).eval()
    src = torch.randint(4, 30, (3, 7))
    src_mask = torch.ones_like(src, dtype=torch.bool)
    src_mask[1, 5:] = False
    cached = greedy_decode(model, src, src_mask, max_len=12)
    model.use_kv_cache = False
    uncached = greedy_decode(model, src, src_mask, max_len=12)
    assert cached.tokens == uncached.tokens and len(cached.tokens[0]) > 0
    for a, b in zip(cached.attention, uncached.attention):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.tensor(cached.log_probs), torch.tensor(uncached.log_probs), atol=1e-4, rtol=1e-5)
    state = model.encode(src, src_mask)
    lp, state, attn = model.decode_step(state, torch.ones(3, dtype=torch.long))
    assert state.cache[0] is None and state.prefix.shape == (3, 1) and attn.shape == (3, 7)


def test_cli_translate_no_kv_cache_gives_identical_output(capsys, monkeypatch) -> None:
    from attn_tutorial.cli import main
    from attn_tutorial.pretrained import list_pretrained

    if "transformer" not in list_pretrained():
        pytest.skip("the shipped transformer is not present")
    text = "Ein Mann fährt Fahrrad.\nZwei Hunde spielen im Schnee.\n\nEine Frau liest ein Buch im Park.\n"
    outs = []
    for extra in ([], ["--no-kv-cache"]):
        monkeypatch.setattr(sys, "stdin", io.StringIO(text))
        capsys.readouterr()
        assert main(["translate", "--model", "transformer", "--beam", "2", "--max-len", "30", *extra]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1] and len(outs[0].splitlines()) == 4 and outs[0].split("\n")[2] == ""


# ---- sliding windows and linear attention ------------------------------------------------------


@pytest.mark.parametrize("window,num_global,is_causal,block", [(0, 0, False, 4), (2, 0, False, 3), (2, 0, True, 5), (3, 2, False, 4), (1, 3, True, 2), (20, 0, False, 4)])
def test_sliding_window_equals_dense_with_band_mask(window, num_global, is_causal, block) -> None:
    q, k, v = _qkv((2, 2), 17, 17, 4, 3)
    mask = sliding_window_global_mask(17, window, num_global, causal=is_causal)
    out, _ = sliding_window_attention(q, k, v, window, num_global=num_global, is_causal=is_causal, block_size=block)
    torch.testing.assert_close(out, _sdpa_ref(q, k, v, mask), **F64)
    if num_global == 0:
        assert torch.equal(mask, sliding_window_mask(17, window, causal=is_causal))
    else:
        assert bool(mask[:num_global].all()) and bool(mask[:, :num_global].all()) if not is_causal else bool(mask[:, 0].all())


def _explicit_linear(q, k, v, causal):
    phi_q, phi_k = F.elu(q) + 1, F.elu(k) + 1
    a = phi_q @ phi_k.mT  # (..., Lq, Lk): the kernel matrix, made explicit
    if causal:
        a = a * causal_mask(q.shape[-2], k.shape[-2])
    return (a / (a.sum(-1, keepdim=True) + 1e-6)) @ v


@pytest.mark.parametrize("causal", [False, True])
def test_linear_attention_equals_explicit_normalised_form(causal) -> None:
    q, k, v = _qkv((2, 3), 9, 9 if causal else 6, 4, 5)
    torch.testing.assert_close(linear_attention(q, k, v, is_causal=causal)[0], _explicit_linear(q, k, v, causal), **F64)


def test_linear_attention_recurrent_equals_causal_cumsum() -> None:
    q, k, v = _qkv((2, 3), 11, 11, 4, 5)
    causal = linear_attention(q, k, v, is_causal=True)[0]
    state, outs = None, []
    for t in range(11):
        o, state = linear_attention_step(q[..., t, :], k[..., t, :], v[..., t, :], state)
        outs.append(o)
    torch.testing.assert_close(torch.stack(outs, dim=-2), causal, **F64)
    assert state.s.shape == (2, 3, 4, 5) and state.nbytes == (2 * 3 * 4 * 5 + 2 * 3 * 4) * 8  # constant in length


# ---- additive bias of the attention functions --------------------------------------------------


@pytest.mark.parametrize("with_mask", [False, True])
def test_bias_matches_sdpa_float_mask(with_mask) -> None:
    q, k, v = _qkv((2, 4), 6, 6, 8, 8)
    bias = alibi_bias(4, 6, causal=False).double()  # (H, Lq, Lk), finite
    mask = None
    float_mask = bias
    if with_mask:
        mask = torch.rand(2, 1, 6, 6, generator=torch.Generator().manual_seed(7)) > 0.3
        mask[0, 0, 2] = False
        float_mask = bias.masked_fill(~mask, float("-inf"))
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=float_mask).nan_to_num(0.0)
    if with_mask:
        ref = ref.masked_fill(~mask.any(-1, keepdim=True), 0.0)
    for fn in (scaled_dot_product_attention, fused_attention):
        torch.testing.assert_close(fn(q, k, v, mask, bias=bias)[0], ref, **F64)
    out, w = scaled_dot_product_attention(q, k, v, mask, bias=bias)
    torch.testing.assert_close(w, torch.softmax(q @ k.mT / 8**0.5 + float_mask, -1).nan_to_num(0.0), **F64)


def test_causal_alibi_bias_with_inf_and_is_causal() -> None:
    q, k, v = _qkv((1, 2), 5, 5, 4, 4)
    bias = alibi_bias(2, 5).double()  # causal: -inf above the diagonal
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    for fn in (scaled_dot_product_attention, fused_attention):
        torch.testing.assert_close(fn(q, k, v, bias=bias)[0], ref, **F64)
        torch.testing.assert_close(fn(q, k, v, bias=alibi_bias(2, 5, causal=False).double(), is_causal=True)[0], ref, **F64)
    with pytest.raises(TypeError, match="bias"):
        scaled_dot_product_attention(q, k, v, bias=torch.ones(5, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="bias"):
        fused_attention(q, k, v, bias=torch.zeros(3, 5, 5, dtype=torch.float64))


# ---- memory ---------------------------------------------------------------------------------------


def test_peak_tensor_bytes_sees_the_quadratic_matrices_and_tiles_avoid_them() -> None:
    from attn_tutorial import peak_tensor_bytes

    H, L, D = 2, 512, 16
    q = torch.randn(1, H, L, D)
    with torch.no_grad():
        _, naive = peak_tensor_bytes(scaled_dot_product_attention, q, q, q)
        _, tiled = peak_tensor_bytes(tiled_attention, q, q, q, block_size=64)
    scores = H * L * L * 4
    assert 2 * scores <= naive <= 2 * scores + 4 * H * L * D * 4  # scores and weights alive together
    assert tiled <= naive / 10 and tiled >= H * L * D * 4  # the output is counted, no (L, L) matrix
    _, nothing = peak_tensor_bytes(lambda: None)
    assert nothing == 0
