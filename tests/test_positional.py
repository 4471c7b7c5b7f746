"""Tests for attn_tutorial.positional, each against a direct formula or an invariance.

Tolerances: float64 rtol=1e-10, atol=1e-12; float32 tables vs float64 loops atol=1e-6.
"""

from __future__ import annotations

import math

import pytest
import torch

from attn_tutorial.positional import (
    LearnedPositionalEmbedding,
    SinusoidalPositionalEncoding,
    alibi_bias,
    alibi_slopes,
    apply_rope,
    relative_shift_matrix,
    sinusoidal_encoding,
)

F64 = dict(rtol=1e-10, atol=1e-12)


def randn(*shape: int, dtype: torch.dtype = torch.float64, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("d_model", [8, 7])
def test_sinusoidal_encoding_elementwise_against_loop(d_model):
    max_len, base = 30, 10000.0
    pe = sinusoidal_encoding(max_len, d_model, base, dtype=torch.float64)
    assert pe.shape == (max_len, d_model)
    for pos in range(max_len):
        for col in range(d_model):
            i = col // 2
            angle = pos / base ** (2 * i / d_model)
            expected = math.sin(angle) if col % 2 == 0 else math.cos(angle)
            assert abs(pe[pos, col].item() - expected) < 1e-12, (pos, col)
    torch.testing.assert_close(sinusoidal_encoding(max_len, d_model), pe.float(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("k", [1, 3, 17, -5])
def test_relative_shift_is_a_rotation_independent_of_position(k):
    d, max_len = 16, 64
    pe = sinusoidal_encoding(max_len, d, dtype=torch.float64)
    m = relative_shift_matrix(k, d)
    positions = range(max(0, -k), min(max_len, max_len - k))
    for pos in positions:  # PE[pos + k] = M_k PE[pos], for every pos
        torch.testing.assert_close(m @ pe[pos], pe[pos + k], **F64)
    torch.testing.assert_close(m @ m.T, torch.eye(d, dtype=torch.float64), **F64)  # orthogonal
    torch.testing.assert_close(relative_shift_matrix(2, d) @ m, relative_shift_matrix(k + 2, d), **F64)
    off_block = torch.ones(d, d, dtype=torch.bool)
    for i in range(0, d, 2):
        off_block[i : i + 2, i : i + 2] = False
    assert torch.equal(m[off_block], torch.zeros(int(off_block.sum()), dtype=m.dtype))
    with pytest.raises(ValueError, match="d_model must be even"):
        relative_shift_matrix(k, 7)


def test_sinusoidal_module_adds_table_with_offset_and_checks_length():
    mod = SinusoidalPositionalEncoding(6, max_len=10)
    x = randn(2, 4, 6, dtype=torch.float32)
    pe = sinusoidal_encoding(10, 6)
    torch.testing.assert_close(mod(x), x + pe[:4], rtol=0, atol=0)
    torch.testing.assert_close(mod(x, offset=3), x + pe[3:7], rtol=0, atol=0)
    assert "pe" not in mod.state_dict()
    with pytest.raises(ValueError, match=r"positions 8\.\.11 exceed max_len = 10"):
        mod(x, offset=8)
    with pytest.raises(ValueError, match=r"x has shape \(2, 4, 5\); expected \(batch, length, 6\)"):
        mod(x[..., :5])


def test_learned_positional_embedding():
    torch.manual_seed(0)
    mod = LearnedPositionalEmbedding(max_len=5, d_model=4)
    x = randn(2, 3, 4, dtype=torch.float32)
    torch.testing.assert_close(mod(x), x + mod.embedding.weight[:3], rtol=0, atol=0)
    torch.testing.assert_close(mod(x, offset=2), x + mod.embedding.weight[2:5], rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"length 6 \(offset 0\) but max_len is 5"):
        mod(randn(1, 6, 4, dtype=torch.float32))


def test_rope_matches_complex_multiplication():
    x = randn(2, 5, 8)
    out = apply_rope(x)
    for pos in range(5):
        for i in range(4):
            theta = pos * 10000.0 ** (-2 * i / 8)
            z = complex(x[1, pos, 2 * i].item(), x[1, pos, 2 * i + 1].item()) * complex(math.cos(theta), math.sin(theta))
            assert abs(out[1, pos, 2 * i].item() - z.real) < 1e-12
            assert abs(out[1, pos, 2 * i + 1].item() - z.imag) < 1e-12


def test_rope_preserves_norms_and_position_zero():
    x = randn(3, 2, 6, 8)
    out = apply_rope(x)
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1), **F64)
    torch.testing.assert_close(out[..., 0, :], x[..., 0, :], rtol=0, atol=0)
    assert not torch.allclose(out[..., 1:, :], x[..., 1:, :])


@pytest.mark.parametrize("shift", [1, 7, 100])
def test_rope_dot_product_depends_only_on_offset(shift):
    q, k = randn(4, 16), randn(4, 16, seed=1)
    m = torch.tensor([0, 3, 5, 9])  # query positions
    n = torch.tensor([2, 3, 1, 20])  # key positions
    dots = (apply_rope(q, m) * apply_rope(k, n)).sum(-1)
    shifted = (apply_rope(q, m + shift) * apply_rope(k, n + shift)).sum(-1)
    torch.testing.assert_close(shifted, dots, rtol=1e-9, atol=1e-9)
    # and it is not the plain dot product: position information is really there
    assert not torch.allclose(dots, (q * k).sum(-1))


def test_rope_dtype_and_errors():
    x = randn(2, 4, 8)
    for dtype, atol in [(torch.float16, 4e-3), (torch.bfloat16, 3e-2)]:
        out = apply_rope(x.to(dtype))
        assert out.dtype == dtype
        torch.testing.assert_close(out.double(), apply_rope(x.to(dtype).double()), rtol=0, atol=atol)
    with pytest.raises(ValueError, match=r"x has shape \(2, 4, 7\); expected an even feature size"):
        apply_rope(randn(2, 4, 7))
    with pytest.raises(ValueError, match=r"positions has shape \(3,\); expected a last dimension of L = 4"):
        apply_rope(x, torch.arange(3))


def test_alibi_slopes_are_the_papers_sequence():
    expected8 = torch.tensor([1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 32, 1 / 64, 1 / 128, 1 / 256])
    torch.testing.assert_close(alibi_slopes(8), expected8, rtol=0, atol=0)
    torch.testing.assert_close(alibi_slopes(4), torch.tensor([1 / 4, 1 / 16, 1 / 64, 1 / 256]), rtol=0, atol=0)
    # 16 heads: ratio and start 2^-0.5
    torch.testing.assert_close(alibi_slopes(16), torch.tensor([2 ** (-0.5 * (h + 1)) for h in range(16)]), rtol=1e-6, atol=0)
    # 6 heads (not a power of two): the 4-head slopes, then every other slope of the 8-head sequence
    expected6 = torch.tensor([1 / 4, 1 / 16, 1 / 64, 1 / 256, 1 / 2, 1 / 8])
    torch.testing.assert_close(alibi_slopes(6), expected6, rtol=0, atol=0)


@pytest.mark.parametrize("causal", [True, False])
def test_alibi_bias_against_loop(causal):
    H, Lq, Lk = 4, 5, 7
    bias = alibi_bias(H, Lq, Lk, causal=causal)
    slopes = [2 ** (-8 * (h + 1) / H) for h in range(H)]
    assert bias.shape == (H, Lq, Lk)
    for h in range(H):
        for i in range(Lq):
            for j in range(Lk):
                if causal and j > i:
                    assert bias[h, i, j].item() == float("-inf")
                else:
                    assert abs(bias[h, i, j].item() - (-slopes[h] * abs(i - j))) < 1e-7
    assert bool((bias <= 0).all())


def test_alibi_causal_bias_works_as_additive_mask():
    from attn_tutorial.attention import masked_softmax

    bias = alibi_bias(2, 4)
    w = masked_softmax(torch.zeros(2, 4, 4) + bias)
    assert torch.equal(w.triu(1), torch.zeros_like(w))
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 4), rtol=0, atol=1e-6)
    assert bool((w[:, 3, 3] > w[:, 3, 0]).all())  # nearer keys get more weight
