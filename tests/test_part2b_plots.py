"""Plot functions and explorers of chapters 5-7 (multi-head attention, positions, local attention)."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import attn_tutorial as at  # noqa: E402
from attn_tutorial.widgets import _receptive_field  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# ----------------------------------------------------------------------------- plotting


def test_plot_attention_heads_draws_one_panel_per_head_on_a_shared_scale():
    w = torch.rand(3, 4, 5)
    axes = at.plot_attention_heads(w, ncols=2, xlabels=list("abcde"), ylabels=list("wxyz"))
    assert len(axes) == 4  # 2 x 2 grid for 3 heads
    assert [ax.get_title() for ax in axes[:3]] == ["head 0", "head 1", "head 2"]
    assert not axes[3].axison  # the unused panel is switched off
    for h in range(3):
        image = axes[h].get_images()[0]
        np.testing.assert_array_equal(image.get_array(), w[h].numpy())
        assert image.get_clim() == (0.0, pytest.approx(float(w.max())))
    assert [t.get_text() for t in axes[0].get_xticklabels()] == list("abcde")


def test_plot_attention_heads_uses_given_axes_and_titles():
    fig, grid = plt.subplots(1, 3)
    axes = at.plot_attention_heads(torch.rand(1, 2, 2, 2), axes=grid, titles=["left", "right"])  # batch of 1 squeezed
    assert axes[0] is grid[0] and axes[1].get_title() == "right" and not grid[2].axison


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"weights": torch.rand(4, 4)}, "3-D"), ({"weights": torch.rand(2, 3, 3), "titles": ["a"]}, "titles"),
     ({"weights": torch.rand(3, 3, 3), "axes": [None]}, "at least 3")],
)
def test_plot_attention_heads_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        at.plot_attention_heads(**kwargs)


def test_plot_positional_encoding_shows_the_table_on_a_symmetric_scale():
    pe = at.sinusoidal_encoding(20, 8)
    ax = at.plot_positional_encoding(pe)
    image = ax.get_images()[0]
    np.testing.assert_array_equal(image.get_array(), pe.numpy())
    low, high = image.get_clim()
    assert low == -high and high == pytest.approx(float(pe.abs().max()))
    assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title()
    with pytest.raises(ValueError, match="2-D"):
        at.plot_positional_encoding(torch.zeros(2, 3, 4))


def test_plot_metric_vs_length_stops_curves_at_none():
    lengths = [8, 16, 32, 64]
    ax = at.plot_metric_vs_length({"a": [1.0, 0.9, 0.5, 0.2], "b": [1.0, 1.0, None, None]}, lengths, train_length=16)
    lines = {line.get_label(): line for line in ax.get_lines()}
    np.testing.assert_array_equal(lines["a"].get_xdata(), lengths)
    np.testing.assert_array_equal(lines["b"].get_xdata(), [8, 16])
    assert "train length 16" in lines
    assert ax.get_xscale() == "log"
    with pytest.raises(ValueError, match="results\\['a'\\] has 1 values"):
        at.plot_metric_vs_length({"a": [1.0]}, lengths)


# ----------------------------------------------------------------------------- explorers


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
