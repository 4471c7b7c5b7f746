"""The NumPy reference agrees with PyTorch (float64, rtol=1e-10, atol=1e-12)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import attn_tutorial
from attn_tutorial import numpy_ref
from attn_tutorial.attention import masked_softmax, scaled_dot_product_attention

TOL = dict(rtol=1e-10, atol=1e-12)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def close(a: np.ndarray, b: torch.Tensor) -> None:
    torch.testing.assert_close(torch.from_numpy(np.asarray(a)), b.detach().double(), **TOL)


def test_package_reexports_with_np_prefix_without_shadowing():
    assert attn_tutorial.np_masked_softmax is numpy_ref.masked_softmax
    assert attn_tutorial.np_multi_head_attention is numpy_ref.multi_head_attention
    assert attn_tutorial.masked_softmax is masked_softmax  # the torch version keeps its name


@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_softmax_matches_torch(axis):
    x = rng().normal(size=(3, 4, 5)) * 10
    close(numpy_ref.softmax(x, axis), torch.softmax(torch.from_numpy(x), axis))
    close(numpy_ref.softmax(np.array([1e4, 0.0, -1e4])), torch.tensor([1.0, 0.0, 0.0]))


def test_masked_softmax_matches_torch_including_fully_masked_rows():
    x = rng(1).normal(size=(2, 4, 6))
    mask = rng(2).random((2, 4, 6)) < 0.5
    mask[1, 3] = False
    out = numpy_ref.masked_softmax(x, mask)
    close(out, masked_softmax(torch.from_numpy(x), torch.from_numpy(mask)))
    assert np.all(out[1, 3] == 0.0) and np.all(out[~mask] == 0.0)
    close(numpy_ref.masked_softmax(x, None, axis=1), torch.softmax(torch.from_numpy(x), 1))


@pytest.mark.parametrize("mask_shape", [None, (5, 7), (2, 1, 1, 7), (3, 1, 7), (2, 3, 5, 7)])
def test_sdpa_matches_torch(mask_shape):
    r = rng(3)
    q, k, v = r.normal(size=(2, 3, 5, 4)), r.normal(size=(2, 3, 7, 4)), r.normal(size=(2, 3, 7, 6))
    mask = None
    if mask_shape is not None:
        mask = r.random(mask_shape) < 0.6
        mask[..., 0] = True
    tq, tk, tv = map(torch.from_numpy, (q, k, v))
    tmask = None if mask is None else torch.from_numpy(mask)
    out, w = numpy_ref.scaled_dot_product_attention(q, k, v, mask)
    ours, ours_w = scaled_dot_product_attention(tq, tk, tv, tmask)
    close(out, ours)
    close(w, ours_w)
    close(out, F.scaled_dot_product_attention(tq, tk, tv, attn_mask=tmask))
    out_s, _ = numpy_ref.scaled_dot_product_attention(q, k, v, mask, scale=0.3)
    close(out_s, F.scaled_dot_product_attention(tq, tk, tv, attn_mask=tmask, scale=0.3))


@pytest.mark.parametrize("kdim,vdim", [(None, None), (6, 10)])
@pytest.mark.parametrize("bias", [True, False])
def test_multi_head_attention_matches_nn_multihead_attention(kdim, vdim, bias):
    torch.manual_seed(0)
    E, H = 8, 2
    ref = nn.MultiheadAttention(E, H, kdim=kdim, vdim=vdim, bias=bias, batch_first=True).double().eval()
    if bias:
        with torch.no_grad():
            ref.in_proj_bias.normal_()
            ref.out_proj.bias.normal_()
    r = rng(4)
    q, k, v = r.normal(size=(3, 5, E)), r.normal(size=(3, 7, kdim or E)), r.normal(size=(3, 7, vdim or E))
    if ref._qkv_same_embed_dim:
        w_q, w_k, w_v = (w.detach().numpy() for w in ref.in_proj_weight.split(E))
    else:
        w_q, w_k, w_v = (w.detach().numpy() for w in (ref.q_proj_weight, ref.k_proj_weight, ref.v_proj_weight))
    biases = dict(b_q=None, b_k=None, b_v=None, b_o=None)
    if bias:
        b_q, b_k, b_v = (b.detach().numpy() for b in ref.in_proj_bias.split(E))
        biases = dict(b_q=b_q, b_k=b_k, b_v=b_v, b_o=ref.out_proj.bias.detach().numpy())
    keep = np.ones((3, 7), dtype=bool)
    keep[1, 4:] = False
    out, w = numpy_ref.multi_head_attention(
        q, k, v, w_q, w_k, w_v, ref.out_proj.weight.detach().numpy(), H, mask=keep[:, None, None, :], **biases
    )
    expected, expected_w = ref(*map(torch.from_numpy, (q, k, v)), key_padding_mask=torch.from_numpy(~keep), average_attn_weights=False)
    close(out, expected)
    close(w, expected_w)
