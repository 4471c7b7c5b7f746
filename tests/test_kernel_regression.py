"""Nadaraya-Watson kernel regression (attn_tutorial.kernel_regression) against float64 references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attn_tutorial.kernel_regression import (
    KERNELS,
    NadarayaWatson,
    average_pooling,
    boxcar_kernel,
    epanechnikov_kernel,
    fit_bandwidth,
    gaussian_kernel,
    leave_one_out_mask,
    make_regression_data,
    nadaraya_watson,
    target_function,
)

# Tolerances: float64 computations agree to rounding; float32 to a few ulps of O(1) numbers.
F64 = dict(rtol=1e-10, atol=1e-12)
F32 = dict(rtol=1e-5, atol=1e-6)

NUMPY_KERNELS = {
    "gaussian": lambda u: np.exp(-0.5 * u**2) / math.sqrt(2 * math.pi),
    "boxcar": lambda u: 0.5 * (np.abs(u) <= 1.0),
    "epanechnikov": lambda u: 0.75 * np.maximum(0.0, 1.0 - u**2),
}


def reference_nw(q, x, y, h, kernel):
    """A direct double loop in float64 NumPy: sum_i K((q-x_i)/h) y_i / sum_i K((q-x_i)/h)."""
    q, x, y = (np.asarray(a, dtype=np.float64) for a in (q, x, y))
    k = NUMPY_KERNELS[kernel]
    est = np.zeros(len(q))
    w = np.zeros((len(q), len(x)))
    for j in range(len(q)):
        num = den = 0.0
        for i in range(len(x)):
            kij = float(k((q[j] - x[i]) / h))
            w[j, i] = kij
            num += kij * y[i]
            den += kij
        est[j] = num / den if den > 0 else 0.0
        w[j] = w[j] / den if den > 0 else 0.0
    return est, w


@pytest.mark.parametrize("kernel", sorted(KERNELS))
@pytest.mark.parametrize("h", [0.3, 1.0, 2.5])
def test_matches_direct_loop(kernel, h):
    x, y = make_regression_data(20, seed=1, dtype=torch.float64)
    q = torch.linspace(-0.5, 5.5, 13, dtype=torch.float64)
    est, w = nadaraya_watson(q, x, y, bandwidth=h, kernel=kernel)
    ref_est, ref_w = reference_nw(q.numpy(), x.numpy(), y.numpy(), h, kernel)
    torch.testing.assert_close(est, torch.from_numpy(ref_est), **F64)
    torch.testing.assert_close(w, torch.from_numpy(ref_w), **F64)


def test_float32_close_to_float64_reference():
    x, y = make_regression_data(30, seed=2)
    q = torch.linspace(0, 5, 17)
    est, _ = nadaraya_watson(q, x, y, bandwidth=0.4)
    ref, _ = reference_nw(q.numpy(), x.numpy(), y.numpy(), 0.4, "gaussian")
    torch.testing.assert_close(est, torch.from_numpy(ref).float(), **F32)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 12),
    lq=st.integers(1, 6),
    # distances are < 4, so u = d/h < 20 and exp(-u^2/2) > 1e-87 never underflows; below about
    # h = 0.1 the kernel form can underflow to 0/0 (then it reports zero weight, the softmax does not)
    h=st.floats(0.2, 20.0),
    seed=st.integers(0, 10_000),
)
def test_softmax_form_equals_normalized_kernel_form(n, lq, h, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, generator=g, dtype=torch.float64) * 4
    y = torch.randn(n, generator=g, dtype=torch.float64)
    q = torch.rand(lq, generator=g, dtype=torch.float64) * 4
    # the textbook softmax form, written out
    scores = -((q[:, None] - x[None, :]) ** 2) / (2 * h**2)
    w_softmax = torch.softmax(scores, dim=-1)
    # the normalized-kernel form, through the package with the kernel given as a plain callable
    _, w_kernel = nadaraya_watson(q, x, y, bandwidth=h, kernel=lambda u: torch.exp(-u * u / 2))
    est, w_pkg = nadaraya_watson(q, x, y, bandwidth=h)
    torch.testing.assert_close(w_kernel, w_softmax, **F64)
    torch.testing.assert_close(w_pkg, w_softmax, **F64)
    torch.testing.assert_close(est, w_softmax @ y, **F64)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 10),
    lq=st.integers(1, 6),
    h=st.floats(1e-3, 1e3),
    kernel=st.sampled_from(sorted(KERNELS)),
    seed=st.integers(0, 10_000),
)
def test_rows_sum_to_one_or_zero_and_estimate_in_value_range(n, lq, h, kernel, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, generator=g, dtype=torch.float64) * 5
    y = torch.randn(n, generator=g, dtype=torch.float64)
    q = torch.rand(lq, generator=g, dtype=torch.float64) * 5
    est, w = nadaraya_watson(q, x, y, bandwidth=h, kernel=kernel)
    assert torch.isfinite(est).all() and torch.isfinite(w).all()
    assert (w >= 0).all()
    sums = w.sum(-1)
    if kernel == "gaussian":
        torch.testing.assert_close(sums, torch.ones_like(sums), **F64)
    else:  # compact kernels: 1 where some key is within h, else exactly 0
        reachable = ((q[:, None] - x[None, :]).abs() <= h).any(-1)
        torch.testing.assert_close(sums, reachable.double(), **F64)
    # a convex combination stays inside the values' range
    ok = w.sum(-1) > 0
    assert (est[ok] >= y.min() - 1e-12).all() and (est[ok] <= y.max() + 1e-12).all()


def test_large_bandwidth_is_average_pooling():
    x, y = make_regression_data(25, seed=3, dtype=torch.float64)
    q = torch.linspace(0, 5, 7, dtype=torch.float64)
    avg, avg_w = average_pooling(q, y)
    torch.testing.assert_close(avg, torch.full_like(q, float(y.mean())), **F64)
    for kernel in KERNELS:
        est, w = nadaraya_watson(q, x, y, bandwidth=1e6, kernel=kernel)
        # kernel values differ from K(0) by O((5/1e6)^2) = 2.5e-11 relative
        torch.testing.assert_close(w, avg_w, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(est, avg, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("h", [1e-3, 1e-8, 1e-30])
def test_small_bandwidth_is_nearest_neighbour(h):
    x = torch.tensor([0.0, 1.0, 2.5, 4.0])
    y = torch.tensor([10.0, -1.0, 3.0, 7.0])
    q = torch.tensor([0.2, 0.9, 2.0, 3.3, 4.8, -2.0])
    est, w = nadaraya_watson(q, x, y, bandwidth=h)
    nearest = (q[:, None] - x[None, :]).abs().argmin(-1)
    torch.testing.assert_close(est, y[nearest], rtol=0, atol=0)
    torch.testing.assert_close(w, torch.nn.functional.one_hot(nearest, 4).float(), rtol=0, atol=0)


def test_small_bandwidth_tie_splits_weight():
    x = torch.tensor([0.0, 2.0], dtype=torch.float64)
    y = torch.tensor([1.0, 3.0], dtype=torch.float64)
    est, w = nadaraya_watson(torch.tensor([1.0], dtype=torch.float64), x, y, bandwidth=1e-6)
    torch.testing.assert_close(w, torch.tensor([[0.5, 0.5]], dtype=torch.float64), **F64)
    torch.testing.assert_close(est, torch.tensor([2.0], dtype=torch.float64), **F64)


def test_kernel_functions():
    u = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0], dtype=torch.float64)
    torch.testing.assert_close(gaussian_kernel(u), torch.from_numpy(NUMPY_KERNELS["gaussian"](u.numpy())), **F64)
    torch.testing.assert_close(boxcar_kernel(u), torch.tensor([0, 0.5, 0.5, 0.5, 0.5, 0.5, 0], dtype=torch.float64), **F64)
    torch.testing.assert_close(
        epanechnikov_kernel(u), torch.tensor([0, 0, 0.5625, 0.75, 0.5625, 0, 0], dtype=torch.float64), **F64
    )
    # each is a probability density: integrates to 1 (trapezoid rule on a fine grid)
    grid = torch.linspace(-8, 8, 160_001, dtype=torch.float64)
    for name, k in KERNELS.items():
        area = torch.trapezoid(k(grid), grid)
        torch.testing.assert_close(area, torch.tensor(1.0, dtype=torch.float64), rtol=0, atol=1e-4, msg=name)


def test_zero_total_weight_gives_zero_not_nan():
    x = torch.tensor([0.0, 1.0, 2.0])
    y = torch.tensor([5.0, 6.0, 7.0])
    q = torch.tensor([10.0, 1.2])
    for kernel in ("boxcar", "epanechnikov"):
        est, w = nadaraya_watson(q, x, y, bandwidth=0.5, kernel=kernel)
        torch.testing.assert_close(est[0], torch.tensor(0.0), rtol=0, atol=0)
        torch.testing.assert_close(w[0], torch.zeros(3), rtol=0, atol=0)
        torch.testing.assert_close(est[1], torch.tensor(6.0), **F32)  # only x=1 is within 0.5


def test_mask_true_means_may_attend_and_fully_masked_row_is_zero():
    x = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    y = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    q = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    mask = torch.tensor([[True, True, True], [False, True, True], [False, False, False]])
    est, w = nadaraya_watson(q, x, y, bandwidth=0.7, mask=mask)
    full, _ = nadaraya_watson(q[:1], x, y, bandwidth=0.7)
    sub, _ = nadaraya_watson(q[1:2], x[1:], y[1:], bandwidth=0.7)  # key 0 removed
    torch.testing.assert_close(est[0], full[0], **F64)
    torch.testing.assert_close(est[1], sub[0], **F64)
    assert w[1, 0] == 0
    torch.testing.assert_close(w[2], torch.zeros(3, dtype=torch.float64), rtol=0, atol=0)
    assert est[2] == 0
    # gradients stay finite with masked entries and a fully masked row
    h = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    qq = q.clone().requires_grad_()
    est, _ = nadaraya_watson(qq, x, y, bandwidth=h, mask=mask)
    est.sum().backward()
    assert torch.isfinite(h.grad) and torch.isfinite(qq.grad).all()


def test_batched_and_vector_values_match_unbatched():
    g = torch.Generator().manual_seed(0)
    b, lq, n, dv = 3, 4, 6, 2
    q = torch.rand(b, lq, generator=g, dtype=torch.float64) * 5
    x = torch.rand(b, n, generator=g, dtype=torch.float64) * 5
    v = torch.randn(b, n, dv, generator=g, dtype=torch.float64)
    est, w = nadaraya_watson(q, x, v, bandwidth=0.8)
    assert est.shape == (b, lq, dv) and w.shape == (b, lq, n)
    for i in range(b):
        for d in range(dv):
            e, wi = nadaraya_watson(q[i], x[i], v[i, :, d], bandwidth=0.8)
            torch.testing.assert_close(est[i, :, d], e, **F64)
            torch.testing.assert_close(w[i], wi, **F64)


def test_gradcheck_in_queries_values_and_bandwidth():
    g = torch.Generator().manual_seed(0)
    q = (torch.rand(3, generator=g, dtype=torch.float64) * 3).requires_grad_()
    x = torch.rand(5, generator=g, dtype=torch.float64) * 3
    y = torch.randn(5, generator=g, dtype=torch.float64).requires_grad_()
    h = torch.tensor(0.6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, y, h: nadaraya_watson(q, x, y, bandwidth=h)[0], (q, y, h))


def test_leave_one_out_mask_and_module():
    m = leave_one_out_mask(4)
    assert m.dtype == torch.bool and not m.diagonal().any() and m.sum() == 12
    x, y = make_regression_data(15, seed=4, dtype=torch.float64)
    model = NadarayaWatson(0.5).double()
    h = model.bandwidth  # 0.5 rounded through float32 at construction
    torch.testing.assert_close(h, torch.tensor(0.5, dtype=torch.float64), **F32)
    est, w = model(x, x, y, leave_one_out=True)
    assert (w.diagonal() == 0).all()
    # prediction i is the plain estimator on the other 14 points
    for i in (0, 7, 14):
        keep = torch.arange(15) != i
        ref, _ = nadaraya_watson(x[i : i + 1], x[keep], y[keep], bandwidth=h)
        torch.testing.assert_close(est[i : i + 1], ref, **F64)


def loo_loss(x, y, h):
    est, _ = nadaraya_watson(x, x, y, bandwidth=h, mask=leave_one_out_mask(len(x)))
    return float(torch.mean((est - y) ** 2))


def test_fit_bandwidth_decreases_loo_loss_and_lands_near_grid_optimum():
    x, y = make_regression_data(50, seed=0, dtype=torch.float64)
    model = NadarayaWatson(2.0).double()
    history = fit_bandwidth(model, x, y, steps=100, lr=0.1)
    h = float(model.bandwidth)
    assert len(history.loss) == 100 and len(history.bandwidth) == 100
    assert loo_loss(x, y, h) < 0.7 * loo_loss(x, y, 2.0)
    # compare with a brute-force search over a log grid: within one grid step of its optimum
    grid = np.logspace(-2, 1, 121)  # steps of 10**0.025, log step 0.058
    best = grid[int(np.argmin([loo_loss(x, y, float(g)) for g in grid]))]
    assert abs(math.log(h / best)) < 0.06, (h, best)
    assert loo_loss(x, y, h) <= loo_loss(x, y, float(best)) + 1e-6


def test_fit_without_leave_one_out_collapses_bandwidth():
    x, y = make_regression_data(30, seed=5, dtype=torch.float64)
    model = NadarayaWatson(1.0).double()
    history = fit_bandwidth(model, x, y, steps=100, lr=0.1, leave_one_out=False)
    assert history.bandwidth[-1] < 0.05 * history.bandwidth[0]
    assert history.loss[-1] < 0.05 * history.loss[0]


def test_sgd_also_works():
    x, y = make_regression_data(30, seed=6, dtype=torch.float64)
    model = NadarayaWatson(2.0).double()
    history = fit_bandwidth(model, x, y, steps=50, lr=0.5, optimizer="sgd")
    assert history.loss[-1] < history.loss[0]


def test_make_regression_data():
    x, y = make_regression_data(40, noise=0.0, seed=7, dtype=torch.float64)
    assert x.shape == y.shape == (40,) and x.dtype == torch.float64
    assert (x[1:] >= x[:-1]).all() and (x >= 0).all() and (x < 5).all()
    torch.testing.assert_close(y, 2 * torch.sin(x) + x**0.8, **F64)
    a = make_regression_data(10, seed=1)
    b = make_regression_data(10, seed=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a[0], make_regression_data(10, seed=2)[0])
    torch.testing.assert_close(target_function(torch.tensor([0.0])), torch.tensor([0.0]), rtol=0, atol=0)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"bandwidth": 0.0}, ValueError, "bandwidth"),
        ({"bandwidth": -1.0}, ValueError, "bandwidth"),
        ({"bandwidth": float("nan")}, ValueError, "bandwidth"),
        ({"bandwidth": torch.tensor([1.0, -2.0])}, ValueError, "bandwidth"),
        ({"bandwidth": "1"}, TypeError, "bandwidth"),
        ({"kernel": "triangle"}, ValueError, "kernel"),
        ({"mask": torch.ones(3, 4)}, TypeError, "mask"),
        ({"mask": torch.ones(3, 5, dtype=torch.bool)}, ValueError, "mask"),
    ],
)
def test_errors_name_the_argument(kwargs, error, match):
    q, x, y = torch.zeros(3), torch.zeros(4), torch.zeros(4)
    with pytest.raises(error, match=match):
        nadaraya_watson(q, x, y, **kwargs)


def test_shape_and_type_errors():
    with pytest.raises(ValueError, match="values"):
        nadaraya_watson(torch.zeros(3), torch.zeros(4), torch.zeros(5))
    with pytest.raises(TypeError, match="keys"):
        nadaraya_watson(torch.zeros(3), torch.zeros(4, dtype=torch.long), torch.zeros(4))
    with pytest.raises(ValueError, match="keys"):
        nadaraya_watson(torch.zeros(3), torch.zeros(0), torch.zeros(0))
    with pytest.raises(ValueError, match="bandwidth"):
        NadarayaWatson(0.0)
    with pytest.raises(ValueError, match="leave_one_out"):
        NadarayaWatson(1.0)(torch.zeros(3), torch.zeros(4), torch.zeros(4), leave_one_out=True)
    with pytest.raises(ValueError, match="learnable"):
        fit_bandwidth(NadarayaWatson(1.0, learnable=False), torch.zeros(4), torch.zeros(4))
    with pytest.raises(ValueError, match="n must"):
        make_regression_data(0)
    with pytest.raises(ValueError, match="low"):
        make_regression_data(5, low=-1.0)
