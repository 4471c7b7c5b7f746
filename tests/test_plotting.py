"""Plot helpers (attn_tutorial.plotting): return labelled Axes, draw on the given axes or a new figure."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.axes import Axes

import attn_tutorial as at
from attn_tutorial.plotting import (
    plot_attention_heatmap,
    plot_kernel_regression,
    plot_loss_curve,
    plot_weights_over_keys,
    to_numpy,
)


def test_heatmap_new_figure_labels_and_data():
    w = torch.softmax(torch.randn(3, 4, requires_grad=True), dim=-1)
    before = len(plt.get_fignums())
    ax = plot_attention_heatmap(w, xlabels=list("abcd"), ylabels=["x", "y", "z"], title="T", annotate=True)
    assert isinstance(ax, Axes) and len(plt.get_fignums()) == before + 1
    assert ax.get_xlabel() == "Keys" and ax.get_ylabel() == "Queries" and ax.get_title() == "T"
    assert [t.get_text() for t in ax.get_xticklabels()] == list("abcd")
    assert [t.get_text() for t in ax.get_yticklabels()] == ["x", "y", "z"]
    np.testing.assert_allclose(ax.images[0].get_array(), w.detach().numpy(), rtol=1e-7, atol=0)
    assert len(ax.texts) == 12  # one annotation per cell
    assert len(ax.figure.axes) == 2  # the heatmap and its colour bar


def test_heatmap_draws_on_given_axes_without_colorbar():
    fig, (a, b) = plt.subplots(1, 2)
    ax = plot_attention_heatmap(np.eye(3)[None], ax=b, colorbar=False, xlabel="source", ylabel="target")
    assert ax is b and len(plt.get_fignums()) == 1 and len(fig.axes) == 2
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("source", "target", "Attention weights")


def test_heatmap_errors():
    with pytest.raises(ValueError, match="2-D"):
        plot_attention_heatmap(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="xlabels"):
        plot_attention_heatmap(np.zeros((2, 3)), xlabels=["a"])
    with pytest.raises(ValueError, match="ylabels"):
        plot_attention_heatmap(np.zeros((2, 3)), ylabels=["a"])


def test_kernel_regression_plot():
    x = torch.linspace(0, 5, 10)
    y = torch.sin(x)
    q = torch.linspace(0, 5, 30)
    ax = plot_kernel_regression(x, y, q, {"a": torch.cos(q), "b": q}, truth=torch.sin(q),
                                weights=torch.full((10,), 0.1), query=2.0, query_estimate=0.5)
    assert isinstance(ax, Axes)
    assert ax.get_xlabel() == "x" and ax.get_ylabel() == "y" and ax.get_title()
    labels = [line.get_label() for line in ax.get_lines()]
    for expected in ("truth", "a", "b", "query", "estimate at query"):
        assert expected in labels
    np.testing.assert_allclose(ax.get_lines()[1].get_ydata(), torch.cos(q).numpy(), rtol=1e-7)
    fig, own = plt.subplots()
    assert plot_kernel_regression(x, y, ax=own, title="data only") is own and own.get_title() == "data only"


def test_kernel_regression_plot_errors():
    x = torch.zeros(4)
    with pytest.raises(ValueError, match="same length"):
        plot_kernel_regression(x, torch.zeros(5))
    with pytest.raises(ValueError, match="queries"):
        plot_kernel_regression(x, x, estimates=torch.zeros(3))
    with pytest.raises(ValueError, match="weights"):
        plot_kernel_regression(x, x, weights=torch.zeros(3))
    with pytest.raises(ValueError, match="estimate"):
        plot_kernel_regression(x, x, torch.zeros(3), torch.zeros(2))


def test_weights_over_keys():
    ax = plot_weights_over_keys([0.0, 1.0, 2.0], torch.tensor([0.2, 0.5, 0.3]), query=1.2, title="w")
    assert isinstance(ax, Axes) and ax.get_title() == "w"
    assert ax.get_xlabel() == "key position" and ax.get_ylabel() == "attention weight"
    with pytest.raises(ValueError, match="same length"):
        plot_weights_over_keys([0.0], [0.1, 0.2])


def test_loss_curve_sequence_and_mapping():
    ax = plot_loss_curve([3.0, 2.0, 1.5])
    assert isinstance(ax, Axes) and ax.get_xlabel() == "step" and ax.get_ylabel() == "loss"
    assert ax.get_title() == "Training loss"
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), [3.0, 2.0, 1.5])
    hist = {"train_loss": [2.0, 1.0], "valid_loss": [2.5, 1.8], "lr": [0.1, 0.1]}
    fig, own = plt.subplots()
    ax = plot_loss_curve(hist, ax=own, logy=True, title="curves")
    assert ax is own and ax.get_yscale() == "log" and ax.get_title() == "curves"
    assert [line.get_label() for line in ax.get_lines()] == ["train_loss", "valid_loss"]
    ax = plot_loss_curve(hist, keys=["lr"], ylabel="learning rate")
    assert [line.get_label() for line in ax.get_lines()] == ["lr"] and ax.get_ylabel() == "learning rate"
    with pytest.raises(ValueError, match="not in history"):
        plot_loss_curve(hist, keys=["nope"])
    with pytest.raises(ValueError, match="loss"):
        plot_loss_curve({"lr": [1.0]})
    with pytest.raises(ValueError, match="empty"):
        plot_loss_curve([])


def test_to_numpy_handles_grad_and_half():
    t = torch.ones(2, dtype=torch.bfloat16, requires_grad=True)
    out = to_numpy(t * 2)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.tolist() == [2.0, 2.0]


@pytest.mark.parametrize(
    "draw",
    [
        lambda ax: plot_attention_heatmap(np.eye(2), ax=ax),
        lambda ax: plot_kernel_regression([0.0, 1.0], [1.0, 2.0], [0.5], [1.5], ax=ax),
        lambda ax: plot_weights_over_keys([0.0, 1.0], [0.4, 0.6], ax=ax),
        lambda ax: plot_loss_curve([1.0, 0.5], ax=ax),
    ],
    ids=["heatmap", "kernel_regression", "weights_over_keys", "loss_curve"],
)
def test_every_plot_creates_a_figure_only_when_ax_is_none(draw):
    ax = draw(None)
    assert isinstance(ax, Axes) and len(plt.get_fignums()) == 1
    assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title()
    fig, given = plt.subplots()
    assert draw(given) is given and len(plt.get_fignums()) == 2


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
