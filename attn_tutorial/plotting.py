"""Plotting helpers shared by the chapters.

Every function takes ``ax=None`` (a new figure and axes are created when it is ``None``), draws
on the axes, labels them, and returns them. None calls ``plt.show()``: the notebook decides when
a figure is shown. Tensors (on any device, with or without grad) and NumPy arrays are accepted
wherever an array is expected.

Chapters add their own plot functions here; keep each one general-purpose and list it in
``__all__``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes

__all__ = [
    "to_numpy",
    "plot_attention_heatmap",
    "plot_kernel_regression",
    "plot_weights_over_keys",
    "plot_loss_curve",
    "plot_mask",
    "plot_scaling",
    "plot_qkv_sources",
    "plot_attention_heads",
    "plot_positional_encoding",
    "plot_metric_vs_length",
]

ArrayLike = Any  # torch.Tensor | np.ndarray | Sequence[float]


def to_numpy(x: ArrayLike) -> np.ndarray:
    """A NumPy copy of ``x``: tensors are detached and moved to the CPU; lists become arrays."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype in (torch.bfloat16, torch.float16):
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def _new_axes(ax: Axes | None, figsize: tuple[float, float]) -> Axes:
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def plot_attention_heatmap(
    weights: ArrayLike,
    ax: Axes | None = None,
    xlabels: Sequence[str] | None = None,
    ylabels: Sequence[str] | None = None,
    xlabel: str = "Keys",
    ylabel: str = "Queries",
    title: str | None = None,
    cmap: str = "Reds",
    colorbar: bool = True,
    annotate: bool = False,
    vmin: float | None = 0.0,
    vmax: float | None = None,
    fmt: str = ".2f",
) -> Axes:
    """Draw a matrix of attention weights: one row per query, one column per key.

    Args:
        weights: a 2-D array; entry ``[j, i]`` is how much query ``j`` attends to key ``i``
            (leading dimensions of size 1 are squeezed away).
        ax: axes to draw on; a new figure is created when ``None``.
        xlabels, ylabels: tick labels for the keys (columns) and queries (rows), e.g. tokens;
            their lengths must match the matrix.
        xlabel, ylabel, title: axis labels and title (default title "Attention weights").
        cmap: a Matplotlib colormap name.
        colorbar: add a colour bar.
        annotate: write each weight in its cell (for small matrices).
        vmin, vmax: colour limits (default 0 and the matrix maximum).
        fmt: format of the annotations.

    Shape:
        weights: ``(Lq, Lk)``.

    Returns:
        The axes.
    """
    w = to_numpy(weights)
    while w.ndim > 2 and w.shape[0] == 1:
        w = w[0]
    if w.ndim != 2:
        raise ValueError(f"weights must be a 2-D (queries, keys) matrix, got shape {tuple(w.shape)}")
    n_q, n_k = w.shape
    if xlabels is not None and len(xlabels) != n_k:
        raise ValueError(f"xlabels has {len(xlabels)} entries but weights has {n_k} key columns")
    if ylabels is not None and len(ylabels) != n_q:
        raise ValueError(f"ylabels has {len(ylabels)} entries but weights has {n_q} query rows")
    ax = _new_axes(ax, (min(1.0 + 0.45 * n_k, 8.0) + 1.0, min(1.0 + 0.45 * n_q, 6.0)))
    image = ax.imshow(w, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")
    if xlabels is not None:
        ax.set_xticks(range(n_k), labels=list(xlabels), rotation=90 if n_k > 6 else 0)
    if ylabels is not None:
        ax.set_yticks(range(n_q), labels=list(ylabels))
    if annotate:
        shade = image.norm(w)  # position of each weight on the colour scale, 0..1
        for j in range(n_q):
            for i in range(n_k):
                colour = "white" if shade[j, i] > 0.6 else "black"
                ax.text(i, j, format(w[j, i], fmt), ha="center", va="center", color=colour, fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title("Attention weights" if title is None else title)
    if colorbar:
        ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return ax


def plot_kernel_regression(
    keys: ArrayLike,
    values: ArrayLike,
    queries: ArrayLike | None = None,
    estimates: ArrayLike | Mapping[str, ArrayLike] | None = None,
    *,
    truth: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    query: float | None = None,
    query_estimate: float | None = None,
    ax: Axes | None = None,
    title: str | None = None,
    xlabel: str = "x",
    ylabel: str = "y",
    legend: bool = True,
) -> Axes:
    """Draw a 1-D regression: training pairs, estimate curve(s), the truth and one query.

    Args:
        keys, values: the training pairs :math:`(x_i, y_i)`, drawn as points.
        queries: positions the estimates are evaluated at (required with ``estimates``/``truth``).
        estimates: one curve, or a mapping ``label -> curve`` to compare several.
        truth: the true function on ``queries`` (dashed).
        weights: attention weights of one query over the keys; points are then sized and coloured
            by their weight, which shows *where the query looks*.
        query, query_estimate: a query position (vertical line) and the estimate there (a star).
        ax: axes to draw on; a new figure is created when ``None``.
        title, xlabel, ylabel, legend: labelling.

    Shape:
        keys, values, weights: ``(n,)``; queries, truth and every estimate: ``(Lq,)``.

    Returns:
        The axes.
    """
    x, y = to_numpy(keys).reshape(-1), to_numpy(values).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"keys and values must have the same length, got {x.shape[0]} and {y.shape[0]}")
    ax = _new_axes(ax, (6.4, 3.6))
    if weights is not None:
        w = to_numpy(weights).reshape(-1)
        if w.shape != x.shape:
            raise ValueError(f"weights must have one entry per key ({x.shape[0]}), got shape {w.shape}")
        top = w.max() if w.size and w.max() > 0 else 1.0
        ax.scatter(x, y, s=8 + 120 * w / top, c=w, cmap="Reds", vmin=0, vmax=top,
                   edgecolors="0.3", linewidths=0.5, label="keys, sized by weight", zorder=3)
    else:
        ax.scatter(x, y, s=14, color="0.45", alpha=0.8, label="training data", zorder=3)
    curves: dict[str, ArrayLike] = {}
    if isinstance(estimates, Mapping):
        curves = dict(estimates)
    elif estimates is not None:
        curves = {"estimate": estimates}
    if (curves or truth is not None) and queries is None:
        raise ValueError("queries is required to draw estimates or the truth")
    if queries is not None:
        q = to_numpy(queries).reshape(-1)
        if truth is not None:
            ax.plot(q, to_numpy(truth).reshape(-1), "k--", lw=1.2, label="truth")
        for label, curve in curves.items():
            c = to_numpy(curve).reshape(-1)
            if c.shape != q.shape:
                raise ValueError(f"estimate {label!r} has shape {c.shape}, expected {q.shape} (one per query)")
            ax.plot(q, c, lw=2, label=label)
    if query is not None:
        ax.axvline(float(query), color="tab:red", lw=1, alpha=0.7, label="query")
        if query_estimate is not None:
            ax.plot([float(query)], [float(query_estimate)], marker="*", ms=14, color="tab:red",
                    markeredgecolor="k", zorder=4, label="estimate at query")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title("Nadaraya-Watson kernel regression" if title is None else title)
    if legend:
        ax.legend(fontsize=8, loc="best")
    return ax


def plot_weights_over_keys(
    keys: ArrayLike,
    weights: ArrayLike,
    ax: Axes | None = None,
    *,
    query: float | None = None,
    title: str | None = None,
    xlabel: str = "key position",
    ylabel: str = "attention weight",
) -> Axes:
    """One query's attention weights drawn as stems at the keys' positions.

    Args:
        keys: key positions (numbers; e.g. inputs :math:`x_i` or token indices).
        weights: the query's weights over those keys.
        ax: axes to draw on; a new figure is created when ``None``.
        query: the query's position, drawn as a vertical line.
        title, xlabel, ylabel: labelling.

    Shape:
        keys, weights: ``(n,)``.

    Returns:
        The axes.
    """
    x, w = to_numpy(keys).reshape(-1), to_numpy(weights).reshape(-1)
    if x.shape != w.shape:
        raise ValueError(f"keys and weights must have the same length, got {x.shape[0]} and {w.shape[0]}")
    ax = _new_axes(ax, (6.4, 2.4))
    ax.vlines(x, 0, w, color="tab:red", lw=1.5)
    ax.plot(x, w, "o", color="tab:red", ms=3)
    if query is not None:
        ax.axvline(float(query), color="tab:red", lw=1, alpha=0.5, ls=":")
    ax.set_ylim(bottom=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title("Weights of one query over the keys" if title is None else title)
    return ax


def plot_loss_curve(
    history: Sequence[float] | Mapping[str, Sequence[float]],
    ax: Axes | None = None,
    *,
    keys: Sequence[str] | None = None,
    xlabel: str = "step",
    ylabel: str = "loss",
    title: str | None = None,
    logy: bool = False,
) -> Axes:
    """Draw one or several training curves.

    Args:
        history: a sequence of numbers (one curve), or a mapping ``name -> sequence`` such as
            ``{"train_loss": [...], "valid_loss": [...], "lr": [...]}``.
        ax: axes to draw on; a new figure is created when ``None``.
        keys: for a mapping, the curves to draw; by default every name containing ``"loss"``.
        xlabel, ylabel, title: labelling (default title "Training loss").
        logy: logarithmic y axis.

    Returns:
        The axes.
    """
    if isinstance(history, Mapping):
        names = list(keys) if keys is not None else [k for k in history if "loss" in str(k)]
        missing = [k for k in names if k not in history]
        if missing:
            raise ValueError(f"keys {missing} are not in history, which has {sorted(map(str, history))}")
        if not names:
            raise ValueError(
                f"history has no curve whose name contains 'loss' ({sorted(map(str, history))}); pass keys="
            )
        curves = {k: to_numpy(history[k]).reshape(-1) for k in names}
    else:
        curves = {ylabel: to_numpy(history).reshape(-1)}
    if any(c.size == 0 for c in curves.values()):
        raise ValueError("history holds an empty curve")
    ax = _new_axes(ax, (5.0, 3.0))
    for name, c in curves.items():
        ax.plot(np.arange(c.size), c, lw=1.8, label=name)
    if logy:
        ax.set_yscale("log")
    if len(curves) > 1:
        ax.legend(fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title("Training loss" if title is None else title)
    return ax


# --------------------------------------------------------------------------------------------
# Part II (scores, masks, self- and cross-attention)
# --------------------------------------------------------------------------------------------


def plot_mask(
    mask: ArrayLike,
    ax: Axes | None = None,
    xlabels: Sequence[str] | None = None,
    ylabels: Sequence[str] | None = None,
    xlabel: str = "Keys (attended to)",
    ylabel: str = "Queries",
    title: str | None = None,
    annotate: bool | None = None,
) -> Axes:
    """Draw a boolean attention mask (``True`` = may attend) as a grid of filled and empty cells.

    Allowed cells are dark and marked with a tick, blocked cells are light and marked with a cross
    (when ``annotate``, the default for masks up to 12 x 12), so the figure reads the same in print.

    Args:
        mask: a 2-D boolean array, ``True`` = may attend (leading dimensions of size 1 are squeezed).
        ax: axes to draw on; a new figure is created when ``None``.
        xlabels, ylabels: tick labels for keys (columns) and queries (rows).
        xlabel, ylabel, title: labelling (default title "Mask (dark = may attend)").
        annotate: mark every cell; default ``True`` for masks with at most 12 rows and columns.

    Shape:
        mask: ``(Lq, Lk)``.

    Returns:
        The axes.
    """
    m = to_numpy(mask)
    while m.ndim > 2 and m.shape[0] == 1:
        m = m[0]
    if m.ndim != 2:
        raise ValueError(f"mask must be a 2-D (queries, keys) matrix, got shape {tuple(m.shape)}")
    if m.dtype != np.bool_:
        raise ValueError(f"mask must be boolean (True = may attend), got dtype {m.dtype}")
    n_q, n_k = m.shape
    if xlabels is not None and len(xlabels) != n_k:
        raise ValueError(f"xlabels has {len(xlabels)} entries but mask has {n_k} key columns")
    if ylabels is not None and len(ylabels) != n_q:
        raise ValueError(f"ylabels has {len(ylabels)} entries but mask has {n_q} query rows")
    ax = _new_axes(ax, (min(1.0 + 0.45 * n_k, 8.0), min(1.0 + 0.45 * n_q, 6.0)))
    ax.imshow(m.astype(float), cmap="Blues", vmin=-0.3, vmax=1.0, aspect="equal", interpolation="nearest")
    ax.set_xticks(np.arange(-0.5, n_k, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, n_q, 1), minor=True)
    ax.grid(which="minor", color="white", linewidth=1.0)
    ax.tick_params(which="minor", length=0)
    ax.set_xticks(range(n_k), labels=list(xlabels) if xlabels is not None else [str(i) for i in range(n_k)],
                  rotation=90 if xlabels is not None and n_k > 6 else 0)
    ax.set_yticks(range(n_q), labels=list(ylabels) if ylabels is not None else [str(j) for j in range(n_q)])
    if annotate is None:
        annotate = n_q <= 12 and n_k <= 12
    if annotate:
        for j in range(n_q):
            for i in range(n_k):
                ax.text(i, j, "✓" if m[j, i] else "×", ha="center", va="center", fontsize=9,
                        color="white" if m[j, i] else "0.5")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title("Mask (dark = may attend)" if title is None else title)
    return ax


def plot_scaling(
    sizes: ArrayLike,
    series: Mapping[str, ArrayLike],
    ax: Axes | None = None,
    *,
    reference_slopes: Sequence[float] = (1.0, 2.0),
    xlabel: str = "sequence length L",
    ylabel: str = "time (s)",
    title: str | None = None,
) -> Axes:
    """Log-log plot of measurements against a size, with dashed reference lines of given slopes.

    A quantity that grows like :math:`L^p` is a straight line of slope :math:`p` on log-log axes; the
    reference lines (anchored at the first point of the first series) make the slope easy to read.

    Args:
        sizes: the x values (positive), e.g. sequence lengths.
        series: ``label -> values`` (positive, one per size); NaN entries are skipped.
        ax: axes to draw on; a new figure is created when ``None``.
        reference_slopes: slopes of the dashed guides (``()`` for none).
        xlabel, ylabel, title: labelling (default title "Scaling").

    Shape:
        sizes and every series: ``(n,)``.

    Returns:
        The axes.
    """
    x = to_numpy(sizes).astype(float).reshape(-1)
    if x.size == 0 or np.any(x <= 0):
        raise ValueError(f"sizes must be non-empty and positive for log axes, got {x.tolist()}")
    if not series:
        raise ValueError("series is empty; pass at least one label -> values entry")
    ax = _new_axes(ax, (5.0, 3.6))
    first: np.ndarray | None = None
    for label, values in series.items():
        y = to_numpy(values).astype(float).reshape(-1)
        if y.shape != x.shape:
            raise ValueError(f"series {label!r} has {y.size} values but there are {x.size} sizes")
        ax.plot(x, y, "o-", lw=1.8, ms=4, label=label)
        if first is None:
            first = y
    assert first is not None
    finite = np.flatnonzero(np.isfinite(first) & (first > 0))
    if finite.size:
        x0, y0 = x[finite[0]], first[finite[0]]
        for p in reference_slopes:
            ax.plot(x, y0 * (x / x0) ** p, ls="--", lw=1, color="0.5")
            ax.annotate(f"slope {p:g}", (x[-1], y0 * (x[-1] / x0) ** p), fontsize=8, color="0.4",
                        ha="right", va="bottom")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title("Scaling" if title is None else title)
    ax.legend(fontsize=8)
    return ax


def plot_qkv_sources(kind: str = "self", ax: Axes | None = None, title: str | None = None) -> Axes:
    """A diagram of where queries, keys and values come from in self- or cross-attention.

    ``kind="self"``: one sequence X feeds all three projections. ``kind="cross"``: the queries come
    from a target sequence Y (e.g. the decoder), keys and values from a source sequence X (the encoder).

    Args:
        kind: ``"self"`` or ``"cross"``.
        ax: axes to draw on; a new figure is created when ``None``.
        title: default "Self-attention" or "Cross-attention".

    Returns:
        The axes.
    """
    if kind not in ("self", "cross"):
        raise ValueError(f"kind must be 'self' or 'cross', got {kind!r}")
    ax = _new_axes(ax, (5.0, 3.6))
    box = {"boxstyle": "round,pad=0.4", "linewidth": 1.2}

    def node(x: float, y: float, text: str, colour: str) -> None:
        ax.text(x, y, text, ha="center", va="center", fontsize=11, bbox={**box, "facecolor": colour})

    def arrow(x0: float, y0: float, x1: float, y1: float) -> None:
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0), arrowprops={"arrowstyle": "->", "lw": 1.4, "color": "0.25"})

    # Sources at the bottom, projections in the middle, attention on top.
    if kind == "self":
        node(0.5, 0.08, "X  (L x d)", "#dbe9f6")
        for x in (0.2, 0.5, 0.8):
            arrow(0.5, 0.14, x, 0.38)
    else:
        node(0.2, 0.08, "Y  (target, $L_q$ x d)", "#fde0c5")
        node(0.68, 0.08, "X  (source, $L_k$ x d)", "#dbe9f6")
        arrow(0.2, 0.14, 0.2, 0.38)
        arrow(0.68, 0.14, 0.5, 0.38)
        arrow(0.68, 0.14, 0.8, 0.38)
    q_src = "X" if kind == "self" else "Y"
    for x, name in ((0.2, f"Q = {q_src}$W_Q$"), (0.5, "K = X$W_K$"), (0.8, "V = X$W_V$")):
        node(x, 0.45, name, "#eeeeee")
        arrow(x, 0.52, 0.5, 0.74)
    node(0.5, 0.8, "softmax($QK^T/\\sqrt{d_k}$) V", "#e5f5e0")
    arrow(0.5, 0.86, 0.5, 0.97)
    ax.text(0.5, 1.0, "one output per query", ha="center", va="bottom", fontsize=9)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.08)
    ax.set_axis_off()
    ax.set_title(("Self-attention" if kind == "self" else "Cross-attention") if title is None else title)
    return ax


# --------------------------------------------------------------------------------------------
# Part II, chapters 5-7: heads, positions, local attention
# --------------------------------------------------------------------------------------------


def plot_attention_heads(
    weights: ArrayLike,
    axes: Sequence[Axes] | np.ndarray | None = None,
    xlabels: Sequence[str] | None = None,
    ylabels: Sequence[str] | None = None,
    ncols: int = 4,
    titles: Sequence[str] | None = None,
    suptitle: str | None = None,
    cmap: str = "Reds",
) -> np.ndarray:
    """Draw one attention heatmap per head, side by side on a common colour scale [0, max].

    Args:
        weights: per-head weights; entry ``[h, j, i]`` is how much query ``j`` attends to key ``i``
            in head ``h`` (a leading batch dimension of size 1 is squeezed away).
        axes: at least ``H`` axes to draw on (extra axes are switched off); a new figure with
            ``ncols`` columns is created when ``None``.
        xlabels, ylabels: tick labels of keys and queries (see :func:`plot_attention_heatmap`).
        ncols: columns of the new figure's grid.
        titles: one title per head (default ``"head h"``).
        suptitle: a title for the whole figure.
        cmap: a Matplotlib colormap name.

    Shape:
        weights: ``(H, Lq, Lk)``.

    Returns:
        The flat array of axes (one per head, then any unused ones).
    """
    w = to_numpy(weights)
    while w.ndim > 3 and w.shape[0] == 1:
        w = w[0]
    if w.ndim != 3:
        raise ValueError(f"weights must be a 3-D (heads, queries, keys) array, got shape {tuple(w.shape)}")
    n_heads = w.shape[0]
    if titles is not None and len(titles) != n_heads:
        raise ValueError(f"titles has {len(titles)} entries but weights has {n_heads} heads")
    if axes is None:
        if not isinstance(ncols, int) or ncols < 1:
            raise ValueError(f"ncols must be a positive int, got {ncols!r}")
        cols = min(ncols, n_heads)
        rows = -(-n_heads // cols)
        fig, grid = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.0 * rows), squeeze=False,
                                 layout="constrained")
        axes = grid.ravel()
    else:
        axes = np.asarray(axes, dtype=object).ravel()
        if len(axes) < n_heads:
            raise ValueError(f"axes has {len(axes)} entries but weights has {n_heads} heads; expected at least {n_heads}")
    vmax = float(np.nanmax(w)) if w.size else 1.0
    for h, ax in enumerate(axes):
        if h >= n_heads:
            ax.axis("off")
            continue
        plot_attention_heatmap(w[h], ax=ax, xlabels=xlabels, ylabels=ylabels, cmap=cmap, colorbar=False,
                               vmax=vmax, title=titles[h] if titles is not None else f"head {h}")
    if suptitle is not None:
        axes[0].figure.suptitle(suptitle)
    return axes


def plot_positional_encoding(
    encoding: ArrayLike,
    ax: Axes | None = None,
    title: str | None = None,
    cmap: str = "RdBu_r",
    colorbar: bool = True,
) -> Axes:
    """Draw a positional-encoding table: one row per position, one column per feature.

    Args:
        encoding: the table, e.g. :func:`~attn_tutorial.positional.sinusoidal_encoding`.
        ax: axes to draw on; a new figure is created when ``None``.
        title: default "Positional encoding".
        cmap: a diverging Matplotlib colormap (sinusoidal values lie in [-1, 1]).
        colorbar: add a colour bar.

    Shape:
        encoding: ``(max_len, d_model)``.

    Returns:
        The axes.
    """
    pe = to_numpy(encoding)
    if pe.ndim != 2:
        raise ValueError(f"encoding must be a 2-D (positions, features) array, got shape {tuple(pe.shape)}")
    ax = _new_axes(ax, (7.0, 4.5))
    bound = float(np.abs(pe).max()) if pe.size else 1.0
    image = ax.imshow(pe, cmap=cmap, vmin=-bound, vmax=bound, aspect="auto", interpolation="nearest")
    ax.set_xlabel("Feature i")
    ax.set_ylabel("Position")
    ax.set_title("Positional encoding" if title is None else title)
    if colorbar:
        ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return ax


def plot_metric_vs_length(
    results: Mapping[str, Sequence[float | None]],
    lengths: Sequence[int],
    ax: Axes | None = None,
    train_length: int | None = None,
    ylabel: str = "Accuracy",
    title: str | None = None,
) -> Axes:
    """Draw one curve per model of a metric against the test sequence length.

    A ``None`` entry means the model cannot process that length at all (for example learned
    position embeddings beyond their table): the curve stops there and ends in a cross.

    Args:
        results: model name -> one value per entry of ``lengths`` (``None`` = cannot run).
        lengths: the test lengths (x axis).
        ax: axes to draw on; a new figure is created when ``None``.
        train_length: the longest training length, drawn as a dashed vertical line.
        ylabel, title: labels (default title "Length extrapolation").

    Shape:
        each ``results[name]``: ``(len(lengths),)``.

    Returns:
        The axes.
    """
    lengths = list(lengths)
    ax = _new_axes(ax, (7.0, 4.0))
    for name, values in results.items():
        values = list(values)
        if len(values) != len(lengths):
            raise ValueError(f"results[{name!r}] has {len(values)} values but lengths has {len(lengths)}")
        xs = [n for n, v in zip(lengths, values) if v is not None]
        ys = [v for v in values if v is not None]
        (line,) = ax.plot(xs, ys, marker="o", label=name)
        if len(xs) < len(lengths) and xs:
            ax.plot([xs[-1]], [ys[-1]], marker="x", markersize=12, color=line.get_color())
    if train_length is not None:
        ax.axvline(train_length, color="grey", linestyle="--", linewidth=1, label=f"train length {train_length}")
    if lengths and min(lengths) > 0 and max(lengths) / min(lengths) >= 8:
        ax.set_xscale("log", base=2)
        ax.set_xticks(lengths, labels=[str(n) for n in lengths])
    ax.set_xlabel("Test sequence length")
    ax.set_ylabel(ylabel)
    ax.set_title("Length extrapolation" if title is None else title)
    ax.legend(fontsize="small")
    return ax

