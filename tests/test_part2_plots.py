"""Tests of the Part II plot functions and explorers (chapters 2-4)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import attn_tutorial as at  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_plot_mask_draws_the_mask_and_labels():
    mask = at.causal_mask(4)
    ax = at.plot_mask(mask, xlabels=list("abcd"), title="causal")
    image = ax.get_images()[0].get_array()
    np.testing.assert_array_equal(np.asarray(image) > 0.5, mask.numpy())
    assert ax.get_title() == "causal" and ax.get_xlabel() and ax.get_ylabel()
    ticks = sum(t.get_text() == "✓" for t in ax.texts)
    assert ticks == int(mask.sum())  # one tick per allowed cell, a cross elsewhere
    assert len(ax.texts) == 16


def test_plot_mask_rejects_non_boolean_and_bad_labels():
    with pytest.raises(ValueError, match="boolean"):
        at.plot_mask(torch.ones(3, 3))
    with pytest.raises(ValueError, match="xlabels"):
        at.plot_mask(at.causal_mask(3), xlabels=["a"])


def test_plot_scaling_uses_log_axes_and_reference_slopes():
    sizes = [8, 16, 32]
    ax = at.plot_scaling(sizes, {"quadratic": [1.0, 4.0, 16.0]}, reference_slopes=(2.0,))
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    lines = ax.get_lines()
    assert len(lines) == 2
    # the slope-2 guide is anchored at the first point, so it coincides with the quadratic series
    np.testing.assert_allclose(lines[1].get_ydata(), [1.0, 4.0, 16.0])
    with pytest.raises(ValueError, match="series 'x'"):
        at.plot_scaling(sizes, {"x": [1.0, 2.0]})
    with pytest.raises(ValueError, match="positive"):
        at.plot_scaling([0, 1], {"x": [1.0, 2.0]})


@pytest.mark.parametrize("kind", ["self", "cross"])
def test_plot_qkv_sources_names_the_sources(kind):
    ax = at.plot_qkv_sources(kind)
    texts = " ".join(t.get_text() for t in ax.texts)
    assert ("Y" in texts) == (kind == "cross")
    assert ax.get_title().lower().startswith(kind)
    with pytest.raises(ValueError, match="kind"):
        at.plot_qkv_sources("both")


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
