"""Explorers (attn_tutorial.widgets) build without a browser and recompute when a control moves."""

from __future__ import annotations

import math

import ipywidgets as widgets
import matplotlib.pyplot as plt
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attn_tutorial as at
from attn_tutorial.kernel_regression import make_regression_data, nadaraya_watson
from attn_tutorial.widgets import Explorer, _receptive_field, kernel_regression_explorer

TOL = dict(rtol=1e-10, atol=1e-12)  # the explorer computes in float64


def test_explorer_builds_and_updates():
    x, y = make_regression_data(20, seed=0)
    ex = kernel_regression_explorer(x, y, query=2.0, bandwidth=0.5)
    assert isinstance(ex, widgets.Widget) and isinstance(ex, Explorer)
    assert set(ex.controls) == {"query", "bandwidth", "kernel"}
    assert ex.output in ex.children and ex.readout in ex.children
    assert len(plt.get_fignums()) == 0  # figures are closed after display

    def expected(q, h, kernel="gaussian"):
        est, _ = nadaraya_watson(torch.tensor([q], dtype=torch.float64), x.double(), y.double(), h, kernel)
        return float(est[0])

    torch.testing.assert_close(ex.state["estimate"], expected(2.0, 0.5), **TOL)
    first_readout = ex.readout.value
    ex.controls["query"].value = 4.0
    assert ex.state["query"] == 4.0
    torch.testing.assert_close(ex.state["estimate"], expected(4.0, 0.5), **TOL)
    assert ex.readout.value != first_readout and f"{ex.state['estimate']:.3f}" in ex.readout.value
    ex.controls["bandwidth"].value = 2.0
    torch.testing.assert_close(ex.state["estimate"], expected(4.0, 2.0), **TOL)
    ex.controls["kernel"].value = "epanechnikov"
    torch.testing.assert_close(ex.state["estimate"], expected(4.0, 2.0, "epanechnikov"), **TOL)
    torch.testing.assert_close(float(ex.state["weights"].sum()), 1.0, **TOL)
    assert ex.state["curve"].shape == ex.state["grid"].shape


def test_explorer_reports_zero_weight_without_nan():
    x = torch.tensor([0.0, 1.0, 4.0])
    y = torch.tensor([1.0, 2.0, 3.0])
    ex = kernel_regression_explorer(x, y, query=2.5, bandwidth=0.5, kernel="boxcar", truth=None)
    assert ex.state["total_weight"] == 0 and ex.state["estimate"] == 0.0
    assert "no key" in ex.readout.value
    assert torch.isfinite(ex.state["curve"]).all()


def test_explorer_default_data_and_errors():
    ex = kernel_regression_explorer()
    assert ex.state["weights"].shape == (50,)
    with pytest.raises(ValueError, match="keys and values"):
        kernel_regression_explorer(torch.zeros(3), None)
    with pytest.raises(ValueError, match="shape"):
        kernel_regression_explorer(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="kernel"):
        kernel_regression_explorer(kernel="triangle")
    with pytest.raises(ValueError, match="query"):
        kernel_regression_explorer(query=100.0)
    with pytest.raises(ValueError, match="bandwidth"):
        kernel_regression_explorer(bandwidth=0.0)


def test_temperature_explorer_scaling_keeps_entropy():
    ex = at.temperature_explorer(d_k=1, n_keys=16)
    low = ex.state["entropy_scaled"]
    ex.controls["d_k"].value = 1024
    # unscaled weights collapse onto one key, scaled ones keep a spread-out distribution
    assert ex.state["unscaled"].max() > 0.9
    assert ex.state["entropy_scaled"] > 0.5 * low
    torch.testing.assert_close(ex.state["scaled"].sum(), torch.tensor(1.0, dtype=torch.float64), atol=1e-12, rtol=0)
    cold = ex.state["entropy_unscaled"]
    ex.controls["temperature"].value = 100.0  # a high temperature spreads the unscaled weights again
    assert ex.state["entropy_unscaled"] > cold + 1.0
    with pytest.raises(ValueError, match="d_k"):
        at.temperature_explorer(d_k=3)


def test_mask_explorer_presets_and_cell_toggles():
    ex = at.mask_explorer(preset="causal")
    assert torch.equal(ex.state["mask"], at.causal_mask(6))
    # un-press every allowed cell of row 0: the row becomes empty and its weights all zero, not NaN
    ex.cells[0][0].value = False
    assert ex.state["empty_rows"] == [0]
    assert torch.equal(ex.state["weights"][0], torch.zeros(6, dtype=torch.float64))
    assert not ex.state["weights"].isnan().any()
    # press a future cell: it now gets weight
    ex.cells[1][3].value = True
    assert bool(ex.state["mask"][1, 3]) and ex.state["weights"][1, 3] > 0
    # changing the preset resets the toggles
    ex.controls["preset"].value = "padding"
    ex.controls["length"].value = 2
    expected = at.padding_mask([2], 6).expand(6, 6)
    assert torch.equal(ex.state["mask"], expected) and ex.controls["flips"].value == ""
    assert all(ex.cells[j][i].value == bool(expected[j, i]) for j in range(6) for i in range(6))
    with pytest.raises(ValueError, match="preset"):
        at.mask_explorer(preset="diagonal")


def test_self_cross_explorer_shapes_and_matching_words():
    ex = at.self_cross_explorer("the cat sat", "a cat", mode="self")
    assert ex.state["weights"].shape == (3, 3)
    ex.controls["mode"].value = "cross"
    w = ex.state["weights"]
    assert w.shape == (2, 3) and ex.state["queries"] == ["a", "cat"]
    assert int(w[1].argmax()) == 1  # "cat" finds "cat"
    torch.testing.assert_close(w.sum(-1), torch.ones(2, dtype=torch.float64), atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="mode"):
        at.self_cross_explorer(mode="both")


def test_head_explorer_follows_the_chosen_model_and_head():
    weights = {1: torch.rand(1, 4, 4), 4: torch.rand(4, 4, 4)}
    explorer = at.head_explorer(weights, labels=list("abcd"), model=4, head=3)
    torch.testing.assert_close(explorer.state["weights"], weights[4][3], rtol=0, atol=0)
    assert explorer.state["peak_keys"] == weights[4][3].argmax(-1).tolist()
    explorer.controls["model"].value = 1  # fewer heads: the head slider shrinks and clamps
    assert explorer.controls["head"].max == 0 and explorer.state["head"] == 0
    torch.testing.assert_close(explorer.state["weights"], weights[1][0], rtol=0, atol=0)
    with pytest.raises(ValueError, match="head must lie"):
        at.head_explorer(weights, model=1, head=1)
    with pytest.raises(ValueError, match="expected \\(heads, Lq, Lk\\)"):
        at.head_explorer({1: torch.rand(4, 4)})


def _reach_by_search(mask: torch.Tensor, start: int, hops: int) -> set[int]:
    frontier = {start}
    for _ in range(hops):
        frontier = {j for i in frontier for j in torch.nonzero(mask[i]).flatten().tolist()}
    return frontier


@settings(max_examples=25, deadline=None)
@given(length=st.integers(2, 12), window=st.integers(0, 4), layers=st.integers(1, 4), causal=st.booleans())
def test_receptive_field_matches_path_search(length, window, layers, causal):
    mask = at.sliding_window_mask(length, window, causal=causal)
    reach = _receptive_field(mask, layers)
    assert reach.shape == (layers, length, length)
    for n in range(1, layers + 1):
        for i in range(length):
            assert set(torch.nonzero(reach[n - 1, i]).flatten().tolist()) == _reach_by_search(mask, i, n)


def test_sliding_window_explorer_reach_grows_by_the_window_per_layer():
    explorer = at.sliding_window_explorer(24, window=2, position=12, layers=1)
    for layers in (2, 5):
        explorer.controls["layers"].value = layers
        assert explorer.state["span"] == (12 - 2 * layers, 12 + 2 * layers)
    explorer.controls["causal"].value = True
    assert explorer.state["span"] == (12 - 2 * 5, 12)
    explorer.controls["position"].value = 1  # clipped at the start of the sequence
    assert explorer.state["span"] == (0, 1)
    with pytest.raises(ValueError, match="position"):
        at.sliding_window_explorer(8, position=8)


@pytest.mark.parametrize(("d_model", "position", "offset"), [(8, 0, 0), (16, 5, 3), (64, 63, 63)])
def test_positional_encoding_explorer_rotation_reproduces_the_shifted_code(d_model, position, offset):
    explorer = at.positional_encoding_explorer(d_model=d_model, position=position, offset=offset)
    p = position + offset
    expected = torch.tensor([math.sin(p / 10000 ** (2 * (f // 2) / d_model)) if f % 2 == 0
                             else math.cos(p / 10000 ** (2 * (f // 2) / d_model)) for f in range(d_model)],
                            dtype=torch.float64)
    torch.testing.assert_close(explorer.state["pe_shifted"], expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(explorer.state["rotated"], expected, rtol=0, atol=1e-12)
    assert explorer.state["max_error"] < 1e-12


def test_positional_encoding_explorer_updates_and_validates():
    explorer = at.positional_encoding_explorer()
    explorer.controls["d_model"].value = 32
    explorer.controls["offset"].value = 10
    assert explorer.state["pe_pos"].shape == (32,) and explorer.state["offset"] == 10
    assert float(explorer.state["angles"][0]) == pytest.approx(10.0)  # omega_0 = 1
    with pytest.raises(ValueError, match="d_model"):
        at.positional_encoding_explorer(d_model=12)
