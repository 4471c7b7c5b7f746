"""Interactive explorers (ipywidgets) for the chapters.

Each explorer wraps the plot functions of :mod:`attn_tutorial.plotting` with
``ipywidgets.interactive_output``, and returns an :class:`Explorer`: an ``ipywidgets.VBox`` that
also exposes its controls, a text readout and the latest computed values, so it can be driven and
tested without a browser (``explorer.controls["query"].value = 1.0`` redraws and updates
``explorer.state``). In the rendered book, which has no kernel, explorers show their initial
state; every chapter puts a static figure beside them.

Chapters add their own explorers here; list them in ``__all__``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
from IPython.display import display
from torch import Tensor

from .kernel_regression import KERNELS, make_regression_data, nadaraya_watson, target_function
from .plotting import plot_kernel_regression, plot_weights_over_keys

__all__ = ["Explorer", "kernel_regression_explorer", "temperature_explorer", "mask_explorer", "self_cross_explorer", "head_explorer", "sliding_window_explorer", "positional_encoding_explorer"]


class Explorer(widgets.VBox):
    """A ``VBox`` of controls, a readout and a plot output, with handles on each part.

    Attributes:
        controls: the input widgets by name (the keyword arguments of the update function).
        readout: an ``HTML`` widget with the current numbers in words.
        output: the ``Output`` widget the figure is drawn into.
        state: the latest computed values (updated on every change of a control).
    """

    def __init__(
        self,
        controls: Mapping[str, widgets.Widget],
        update: Callable[..., dict[str, Any]],
        draw: Callable[[dict[str, Any]], plt.Figure],
        describe: Callable[[dict[str, Any]], str],
        **kwargs: Any,
    ) -> None:
        self.controls: dict[str, widgets.Widget] = dict(controls)
        self.readout = widgets.HTML()
        self.state: dict[str, Any] = {}

        def redraw(**values: Any) -> None:
            self.state = update(**values)
            self.readout.value = describe(self.state)
            fig = draw(self.state)
            display(fig)
            plt.close(fig)

        self.output = widgets.interactive_output(redraw, self.controls)
        box = widgets.HBox(list(self.controls.values()), layout=widgets.Layout(flex_flow="row wrap"))
        super().__init__([box, self.readout, self.output], **kwargs)


def kernel_regression_explorer(
    keys: Tensor | None = None,
    values: Tensor | None = None,
    *,
    truth: Callable[[Tensor], Tensor] | None = target_function,
    query: float = 2.5,
    bandwidth: float = 0.5,
    kernel: str = "gaussian",
    num_grid: int = 200,
    figsize: tuple[float, float] = (7.0, 5.0),
) -> Explorer:
    """An explorer of Nadaraya-Watson regression: query slider, log-bandwidth slider, kernel menu.

    The top panel shows the training pairs sized by their weight for the chosen query, the
    estimate curve over the whole range, the truth and the estimate at the query; the bottom
    panel the query's weights over the keys (:func:`~attn_tutorial.plotting.plot_weights_over_keys`).

    Args:
        keys, values: training pairs; default ``make_regression_data(50, seed=0)``.
        truth: the true function, drawn dashed (``None`` to omit).
        query, bandwidth, kernel: initial control values.
        num_grid: number of positions the estimate curve is evaluated at.
        figsize: size of the figure.

    Shape:
        keys, values: ``(n,)``.

    Returns:
        An :class:`Explorer` with controls ``"query"``, ``"bandwidth"``, ``"kernel"`` and
        ``state`` keys ``query, bandwidth, kernel, estimate, weights, grid, curve, total_weight``.
    """
    if keys is None and values is None:
        keys, values = make_regression_data(50, seed=0)
    if keys is None or values is None:
        raise ValueError("pass both keys and values, or neither (for the chapter's data)")
    if keys.dim() != 1 or values.shape != keys.shape or keys.numel() == 0:
        raise ValueError(
            f"keys and values must both have shape (n,) with n >= 1, got {tuple(keys.shape)} and "
            f"{tuple(values.shape)}"
        )
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {sorted(KERNELS)}, got {kernel!r}")
    keys, values = keys.detach().cpu().double(), values.detach().cpu().double()
    lo, hi = float(keys.min()), float(keys.max())
    pad = 0.05 * (hi - lo) if hi > lo else 0.5
    lo, hi = lo - pad, hi + pad
    if not lo <= query <= hi:
        raise ValueError(f"query must lie in the data's range [{lo:.3g}, {hi:.3g}], got {query!r}")
    if not 0.01 <= bandwidth <= 10.0:
        raise ValueError(f"bandwidth must lie in the slider's range [0.01, 10], got {bandwidth!r}")
    grid = torch.linspace(lo, hi, num_grid, dtype=torch.float64)
    true_curve = truth(grid) if truth is not None else None

    controls = {
        "query": widgets.FloatSlider(value=query, min=lo, max=hi, step=(hi - lo) / 200,
                                     description="query q", continuous_update=True, readout_format=".2f"),
        "bandwidth": widgets.FloatLogSlider(value=bandwidth, base=10, min=-2, max=1, step=0.02,
                                            description="bandwidth h", readout_format=".3f"),
        "kernel": widgets.Dropdown(options=list(KERNELS), value=kernel, description="kernel"),
    }

    def update(query: float, bandwidth: float, kernel: str) -> dict[str, Any]:
        q = torch.tensor([query], dtype=torch.float64)
        estimate, weights = nadaraya_watson(q, keys, values, bandwidth=bandwidth, kernel=kernel)
        curve, _ = nadaraya_watson(grid, keys, values, bandwidth=bandwidth, kernel=kernel)
        return {"query": query, "bandwidth": bandwidth, "kernel": kernel,
                "estimate": float(estimate[0]), "weights": weights[0], "grid": grid, "curve": curve,
                "total_weight": float(weights[0].sum())}

    def describe(s: dict[str, Any]) -> str:
        if s["total_weight"] == 0:
            return (f"<b>no key within h = {s['bandwidth']:.3f} of q = {s['query']:.2f}</b>: the "
                    f"{s['kernel']} kernel gives every key weight 0, the estimate falls back to 0")
        top = int(torch.argmax(s["weights"]))
        eff = float(1.0 / (s["weights"] ** 2).sum())  # effective number of keys attended to
        return (f"f(q = {s['query']:.2f}) = <b>{s['estimate']:.3f}</b> &nbsp; largest weight "
                f"{float(s['weights'][top]):.3f} on the key at x = {float(keys[top]):.2f} &nbsp; "
                f"effective number of keys 1/&Sigma;&alpha;<sup>2</sup> = {eff:.1f}")

    def draw(s: dict[str, Any]) -> plt.Figure:
        fig, (top, bottom) = plt.subplots(2, 1, figsize=figsize, sharex=True,
                                          gridspec_kw={"height_ratios": [2.2, 1]})
        plot_kernel_regression(keys, values, grid, {f"estimate ({s['kernel']}, h = {s['bandwidth']:.3f})": s["curve"]},
                               truth=true_curve, weights=s["weights"], query=s["query"],
                               query_estimate=s["estimate"] if s["total_weight"] > 0 else None, ax=top,
                               xlabel="", title="Attention pooling: where does the query look?")
        plot_weights_over_keys(keys, s["weights"], ax=bottom, query=s["query"], xlabel="x (key position)",
                               title="")
        fig.tight_layout()
        return fig

    return Explorer(controls, update, draw, describe)


# --------------------------------------------------------------------------------------------
# Part II explorers: temperature and d_k, masks, self- versus cross-attention
# --------------------------------------------------------------------------------------------


def temperature_explorer(
    *,
    n_keys: int = 16,
    d_k: int = 64,
    temperature: float = 1.0,
    seed: int = 0,
    max_d_k: int = 1024,
    figsize: tuple[float, float] = (10.0, 3.2),
) -> Explorer:
    """Softmax weights of one random query over ``n_keys`` random keys, with and without :math:`1/\\sqrt{d_k}`.

    A query and keys are drawn once from :math:`\\mathcal N(0, I)` in ``max_d_k`` dimensions; the
    ``d_k`` slider uses their first ``d_k`` coordinates. The left panel shows
    :math:`\\mathrm{softmax}(q^\\top k_i / T)`, the right :math:`\\mathrm{softmax}(q^\\top k_i / (T\\sqrt{d_k}))`
    (:cite:p:`vaswani2017`, section 3.2.1).

    Args:
        n_keys: number of keys.
        d_k, temperature: initial control values (``d_k`` a power of two up to ``max_d_k``).
        seed: seed of the query and keys.
        max_d_k: the largest dimension offered.
        figsize: size of the figure.

    Returns:
        An :class:`Explorer` with controls ``"temperature"`` and ``"d_k"``; ``state`` keys
        ``temperature, d_k, unscaled, scaled`` (weights, shape ``(n_keys,)``) and
        ``entropy_unscaled, entropy_scaled`` (nats).
    """
    dims = [2**i for i in range(max_d_k.bit_length()) if 2**i <= max_d_k]
    if d_k not in dims:
        raise ValueError(f"d_k must be a power of two in {dims}, got {d_k!r}")
    if not 0.1 <= temperature <= 100.0:
        raise ValueError(f"temperature must lie in the slider's range [0.1, 100], got {temperature!r}")
    if n_keys < 1:
        raise ValueError(f"n_keys must be >= 1, got {n_keys!r}")
    gen = torch.Generator().manual_seed(seed)
    query = torch.randn(max_d_k, generator=gen, dtype=torch.float64)  # (max_d_k,)
    keys = torch.randn(n_keys, max_d_k, generator=gen, dtype=torch.float64)  # (n_keys, max_d_k)

    controls = {
        "temperature": widgets.FloatLogSlider(value=temperature, base=10, min=-1, max=2, step=0.05,
                                              description="temperature T", readout_format=".2f"),
        "d_k": widgets.SelectionSlider(options=dims, value=d_k, description="d_k"),
    }

    def entropy(p: Tensor) -> float:
        return float(-(p * p.clamp_min(1e-300).log()).sum())

    def update(temperature: float, d_k: int) -> dict[str, Any]:
        raw = keys[:, :d_k] @ query[:d_k]  # (n_keys,)
        unscaled = torch.softmax(raw / temperature, dim=-1)
        scaled = torch.softmax(raw / (temperature * d_k**0.5), dim=-1)
        return {"temperature": temperature, "d_k": d_k, "unscaled": unscaled, "scaled": scaled,
                "entropy_unscaled": entropy(unscaled), "entropy_scaled": entropy(scaled)}

    def describe(s: dict[str, Any]) -> str:
        return (f"unscaled: max weight {float(s['unscaled'].max()):.3f}, entropy {s['entropy_unscaled']:.2f} nats"
                f" &nbsp;|&nbsp; scaled: max weight {float(s['scaled'].max()):.3f}, entropy "
                f"{s['entropy_scaled']:.2f} nats (uniform: {torch.log(torch.tensor(float(n_keys))):.2f})")

    def draw(s: dict[str, Any]) -> plt.Figure:
        fig, (left, right) = plt.subplots(1, 2, figsize=figsize, sharey=True)
        positions = torch.arange(n_keys)
        plot_weights_over_keys(positions, s["unscaled"], ax=left, xlabel="key",
                               title=f"softmax(q·k / T), d_k = {s['d_k']}, T = {s['temperature']:.2f}")
        plot_weights_over_keys(positions, s["scaled"], ax=right, xlabel="key",
                               title=f"softmax(q·k / (T √d_k)), d_k = {s['d_k']}")
        left.set_ylim(0, 1.02)
        fig.tight_layout()
        return fig

    return Explorer(controls, update, draw, describe)


_MASK_PRESETS = ("causal", "padding", "causal + padding", "sliding window", "all visible")


def _preset_mask(preset: str, seq_len: int, length: int, window: int = 1) -> Tensor:
    from .attention import causal_mask, padding_mask, sliding_window_mask

    if preset == "causal":
        return causal_mask(seq_len)
    if preset == "padding":
        return padding_mask([length], seq_len).expand(seq_len, seq_len).clone()
    if preset == "causal + padding":
        return causal_mask(seq_len) & padding_mask([length], seq_len)
    if preset == "sliding window":
        return sliding_window_mask(seq_len, window)
    if preset == "all visible":
        return torch.ones(seq_len, seq_len, dtype=torch.bool)
    raise ValueError(f"preset must be one of {_MASK_PRESETS}, got {preset!r}")


def mask_explorer(
    scores: Tensor | None = None,
    *,
    preset: str = "causal + padding",
    length: int | None = None,
    seed: int = 0,
    figsize: tuple[float, float] = (10.0, 4.0),
) -> Explorer:
    """Click mask cells (or pick a preset and a sequence length) and see the masked-softmax weights.

    A grid of toggle buttons holds the mask, ``True`` (pressed) = may attend; a preset menu (causal,
    padding, causal + padding, sliding window, all visible) and a "real tokens" slider (the rest is
    padding) reset it. The weights are :func:`~attn_tutorial.attention.masked_softmax` of fixed
    scores: a blocked cell gets weight 0, and a row with no allowed cell gets all zeros (not NaN).

    Args:
        scores: a square ``(L, L)`` score matrix; default standard normal scores with ``L = 6``.
        preset, length: initial preset and number of real tokens (default ``L - 2``).
        seed: seed of the default scores.
        figsize: size of the figure.

    Shape:
        scores: ``(L, L)`` with ``1 <= L <= 10``.

    Returns:
        An :class:`Explorer` with controls ``"preset"``, ``"length"`` and ``"flips"`` (the cells
        toggled away from the preset, as text), the button grid as ``explorer.cells[j][i]``, and
        ``state`` keys ``mask, weights, row_sums, empty_rows``.
    """
    from .attention import masked_softmax

    if scores is None:
        scores = torch.randn(6, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    if scores.dim() != 2 or scores.shape[0] != scores.shape[1] or not 1 <= scores.shape[0] <= 10:
        raise ValueError(f"scores must be a square (L, L) matrix with 1 <= L <= 10, got shape {tuple(scores.shape)}")
    scores = scores.detach().cpu().double()
    L = scores.shape[0]
    length = max(L - 2, 1) if length is None else length
    if not 1 <= length <= L:
        raise ValueError(f"length must lie in [1, {L}], got {length!r}")
    if preset not in _MASK_PRESETS:
        raise ValueError(f"preset must be one of {_MASK_PRESETS}, got {preset!r}")

    controls = {
        "preset": widgets.Dropdown(options=list(_MASK_PRESETS), value=preset, description="preset"),
        "length": widgets.IntSlider(value=length, min=1, max=L, description="real tokens"),
        "flips": widgets.Text(value="", description="toggled", disabled=True),
    }
    cells = [[widgets.ToggleButton(value=False, description=" ", tooltip=f"query {j}, key {i}",
                                   layout=widgets.Layout(width="30px", height="26px", padding="0px"))
              for i in range(L)] for j in range(L)]
    syncing = {"on": False}

    def parse(flips: str) -> set[tuple[int, int]]:
        return {(int(a), int(b)) for a, b in (cell.split(",") for cell in flips.split(";") if cell)}

    def on_toggle(change: dict[str, Any], j: int, i: int) -> None:
        if syncing["on"]:
            return
        flips = parse(controls["flips"].value) ^ {(j, i)}
        controls["flips"].value = ";".join(f"{a},{b}" for a, b in sorted(flips))

    for j in range(L):
        for i in range(L):
            cells[j][i].observe(lambda change, j=j, i=i: on_toggle(change, j, i), names="value")

    def reset_flips(change: dict[str, Any]) -> None:
        controls["flips"].value = ""

    controls["preset"].observe(reset_flips, names="value")
    controls["length"].observe(reset_flips, names="value")

    def update(preset: str, length: int, flips: str) -> dict[str, Any]:
        mask = _preset_mask(preset, L, length)
        for j, i in parse(flips):
            mask[j, i] = ~mask[j, i]
        syncing["on"] = True
        try:
            for j in range(L):
                for i in range(L):
                    cells[j][i].value = bool(mask[j, i])
                    cells[j][i].button_style = "info" if mask[j, i] else ""
        finally:
            syncing["on"] = False
        weights = masked_softmax(scores, mask)
        return {"mask": mask, "weights": weights, "row_sums": weights.sum(-1),
                "empty_rows": [j for j in range(L) if not bool(mask[j].any())]}

    def describe(s: dict[str, Any]) -> str:
        empty = s["empty_rows"]
        text = f"{int(s['mask'].sum())} of {L * L} cells may attend; every row with an allowed cell sums to 1"
        if empty:
            text += f"; <b>rows {empty} have no allowed key</b>: their weights are all 0 (not NaN)"
        return text

    def draw(s: dict[str, Any]) -> plt.Figure:
        from .plotting import plot_attention_heatmap, plot_mask

        fig, (left, right) = plt.subplots(1, 2, figsize=figsize)
        plot_mask(s["mask"], ax=left, title="mask (True = may attend)")
        plot_attention_heatmap(s["weights"], ax=right, annotate=True, vmax=1.0, title="masked softmax weights")
        fig.tight_layout()
        return fig

    explorer = Explorer(controls, update, draw, describe)
    grid = widgets.VBox([widgets.HBox(row) for row in cells])
    explorer.children = (explorer.children[0], grid, *explorer.children[1:])
    explorer.cells = cells  # type: ignore[attr-defined]
    return explorer


def _word_vector(word: str, dim: int) -> Tensor:
    """A fixed random vector per word (seeded by a checksum, so it is the same in every process)."""
    import zlib

    gen = torch.Generator().manual_seed(zlib.crc32(word.lower().encode("utf-8")))
    return torch.randn(dim, generator=gen, dtype=torch.float64)


def self_cross_explorer(
    source: str = "the cat sat on the mat",
    target: str = "a cat is on a mat",
    *,
    mode: str = "self",
    dim: int = 32,
    figsize: tuple[float, float] = (6.0, 4.6),
) -> Explorer:
    """Type sentences and switch between self- and cross-attention to see who attends to whom.

    Each word is a fixed random vector in ``dim`` dimensions (the same word, the same vector; no
    training, no positions), and the projections are the identity, so a query matches a key when
    they are the same word. ``"self"``: queries, keys and values all come from ``source``.
    ``"cross"``: queries from ``target``, keys and values from ``source``.

    Args:
        source, target: whitespace-separated sentences (1 to 20 words).
        mode: ``"self"`` or ``"cross"``.
        dim: size of the word vectors.
        figsize: size of the figure.

    Returns:
        An :class:`Explorer` with controls ``"mode"``, ``"source"``, ``"target"`` and ``state`` keys
        ``mode, queries, keys, weights`` (``(Lq, Lk)``) and ``output`` (``(Lq, dim)``).
    """
    from .attention import scaled_dot_product_attention

    if mode not in ("self", "cross"):
        raise ValueError(f"mode must be 'self' or 'cross', got {mode!r}")
    controls = {
        "mode": widgets.ToggleButtons(options=["self", "cross"], value=mode, description="attention"),
        "source": widgets.Text(value=source, description="source", continuous_update=False),
        "target": widgets.Text(value=target, description="target", continuous_update=False),
    }

    def words(sentence: str) -> list[str]:
        return sentence.split()[:20] or ["<empty>"]

    def update(mode: str, source: str, target: str) -> dict[str, Any]:
        src = words(source)
        queries = src if mode == "self" else words(target)
        x = torch.stack([_word_vector(w, dim) for w in src])[None]  # (1, Lk, dim)
        y = torch.stack([_word_vector(w, dim) for w in queries])[None]  # (1, Lq, dim)
        output, weights = scaled_dot_product_attention(y, x, x)
        return {"mode": mode, "queries": queries, "keys": src, "weights": weights[0], "output": output[0]}

    def describe(s: dict[str, Any]) -> str:
        kind = "self-attention: Q, K, V from the source" if s["mode"] == "self" else \
            "cross-attention: Q from the target, K and V from the source"
        return f"{kind}; weights {len(s['queries'])} x {len(s['keys'])} (queries x keys)"

    def draw(s: dict[str, Any]) -> plt.Figure:
        from .plotting import plot_attention_heatmap

        fig, ax = plt.subplots(figsize=figsize)
        plot_attention_heatmap(s["weights"], ax=ax, xlabels=s["keys"], ylabels=s["queries"], vmax=1.0,
                               annotate=len(s["keys"]) <= 10, xlabel="keys (source)",
                               ylabel="queries (" + ("source" if s["mode"] == "self" else "target") + ")",
                               title=f"{s['mode']}-attention weights")
        fig.tight_layout()
        return fig

    return Explorer(controls, update, draw, describe)


# --------------------------------------------------------------------------------------------
# Part II, chapters 5-7: heads, positions, local attention
# --------------------------------------------------------------------------------------------

from collections.abc import Sequence  # noqa: E402


def head_explorer(
    weights: Mapping[Any, Tensor],
    labels: Sequence[str] | None = None,
    *,
    model: Any = None,
    head: int = 0,
    figsize: tuple[float, float] = (5.5, 4.5),
) -> Explorer:
    """An explorer of per-head attention weights: a menu of models (e.g. by number of heads), a head slider.

    Args:
        weights: model name -> its per-head weights for one input, e.g. ``{1: w1, 2: w2, 4: w4}``.
        labels: tick labels for the positions (queries and keys), e.g. the input tokens.
        model: the initially selected key of ``weights`` (default: the first).
        head: the initially selected head.
        figsize: size of the figure.

    Shape:
        each ``weights[name]``: ``(H, Lq, Lk)`` (``H`` may differ between models).

    Returns:
        An :class:`Explorer` with controls ``"model"`` and ``"head"`` (its maximum follows the chosen
        model) and ``state`` keys ``model, head, num_heads, weights, peak_keys``.
    """
    from .plotting import plot_attention_heatmap

    if not weights:
        raise ValueError("weights is empty; expected at least one model name -> (H, Lq, Lk) tensor")
    tables = {}
    for name, w in weights.items():
        w = torch.as_tensor(w).detach().cpu()
        if w.dim() != 3:
            raise ValueError(f"weights[{name!r}] has shape {tuple(w.shape)}; expected (heads, Lq, Lk)")
        tables[name] = w
    names = list(tables)
    model = names[0] if model is None else model
    if model not in tables:
        raise ValueError(f"model must be one of {names}, got {model!r}")
    if not 0 <= head < tables[model].shape[0]:
        raise ValueError(f"head must lie in [0, {tables[model].shape[0]}) for model {model!r}, got {head!r}")
    controls = {
        "model": widgets.Dropdown(options=[(str(n), n) for n in names], value=model, description="model"),
        "head": widgets.IntSlider(value=head, min=0, max=tables[model].shape[0] - 1, description="head"),
    }

    def follow_model(change: dict[str, Any]) -> None:
        controls["head"].max = tables[change["new"]].shape[0] - 1  # clamps the value when it shrinks

    controls["model"].observe(follow_model, names="value")

    def update(model: Any, head: int) -> dict[str, Any]:
        num_heads = tables[model].shape[0]
        head = min(head, num_heads - 1)
        w = tables[model][head]
        return {"model": model, "head": head, "num_heads": num_heads, "weights": w,
                "peak_keys": w.argmax(dim=-1).tolist()}

    def describe(s: dict[str, Any]) -> str:
        return (f"model <b>{s['model']}</b>, head {s['head']} of {s['num_heads']}: most-attended key per "
                f"query = {s['peak_keys']}")

    def draw(s: dict[str, Any]) -> plt.Figure:
        fig, ax = plt.subplots(figsize=figsize)
        plot_attention_heatmap(s["weights"], ax=ax, xlabels=labels, ylabels=labels,
                               title=f"model {s['model']}: head {s['head']}")
        fig.tight_layout()
        return fig

    return Explorer(controls, update, draw, describe)


def _receptive_field(mask: Tensor, layers: int) -> Tensor:
    """Which keys each position can reach through ``layers`` stacked attention layers with ``mask``.

    Position ``i`` reaches ``j`` after ``n`` layers iff there is a path ``i -> k_1 -> ... -> j`` of ``n``
    allowed hops: the boolean matrix power ``mask^n`` (``True`` = reachable). With a sliding window of
    half-width ``w`` the reach grows by ``w`` per layer: ``n`` layers see ``n * w`` positions to each side.

    Shape:
        ``mask`` ``(L, L)`` boolean, ``True`` = may attend -> ``(layers, L, L)``: entry ``[n - 1]`` is the
        reach after ``n`` layers.
    """
    if mask.dim() != 2 or mask.shape[0] != mask.shape[1] or mask.dtype != torch.bool:
        raise ValueError(f"mask has shape {tuple(mask.shape)} and dtype {mask.dtype}; expected a square boolean (L, L)")
    if not isinstance(layers, int) or layers < 1:
        raise ValueError(f"layers must be a positive int, got {layers!r}")
    step = mask.to(torch.float64)
    reach, out = step, [mask]
    for _ in range(layers - 1):
        reach = ((reach @ step) > 0).to(torch.float64)  # one more hop
        out.append(reach > 0)
    return torch.stack(out)


def sliding_window_explorer(
    length: int = 32,
    *,
    window: int = 2,
    position: int = 16,
    layers: int = 3,
    causal: bool = False,
    figsize: tuple[float, float] = (10.0, 4.0),
) -> Explorer:
    """An explorer of sliding-window attention: window, query position and depth sliders.

    The left panel is the mask of one layer (:func:`~attn_tutorial.attention.sliding_window_mask`) with the
    chosen query's row outlined; the right panel shows, for 1 to ``layers`` stacked layers, which positions
    the query can reach (the boolean matrix power of the mask).

    Args:
        length: sequence length ``L``.
        window, position, layers, causal: initial values (``causal`` is a checkbox).
        figsize: size of the figure.

    Shape:
        the drawn mask is ``(L, L)``; ``state["reach"]`` is ``(layers, L)``.

    Returns:
        An :class:`Explorer` with controls ``"window"``, ``"position"``, ``"layers"``, ``"causal"`` and
        ``state`` keys ``window, position, layers, causal, mask, reach, span``.
    """
    from .attention import sliding_window_mask
    from .plotting import plot_mask

    if not isinstance(length, int) or length < 2:
        raise ValueError(f"length must be an int >= 2, got {length!r}")
    if not 0 <= position < length:
        raise ValueError(f"position must lie in [0, {length}), got {position!r}")
    controls = {
        "window": widgets.IntSlider(value=window, min=0, max=max(1, length // 4), description="window w"),
        "position": widgets.IntSlider(value=position, min=0, max=length - 1, description="position t"),
        "layers": widgets.IntSlider(value=layers, min=1, max=8, description="layers"),
        "causal": widgets.Checkbox(value=causal, description="causal"),
    }

    def update(window: int, position: int, layers: int, causal: bool) -> dict[str, Any]:
        mask = sliding_window_mask(length, window, causal=causal)
        reach = _receptive_field(mask, layers)[:, position]  # (layers, L)
        seen = torch.nonzero(reach[-1]).flatten()
        return {"window": window, "position": position, "layers": layers, "causal": causal, "mask": mask,
                "reach": reach, "span": (int(seen.min()), int(seen.max()))}

    def describe(s: dict[str, Any]) -> str:
        lo, hi = s["span"]
        return (f"after {s['layers']} layer(s) with w = {s['window']}, position {s['position']} reaches keys "
                f"{lo}..{hi} (at most L&middot;w = {s['layers'] * s['window']} to each side)")

    def draw(s: dict[str, Any]) -> plt.Figure:
        fig, (left, right) = plt.subplots(1, 2, figsize=figsize, gridspec_kw={"width_ratios": [1, 1.6]})
        plot_mask(s["mask"], ax=left, annotate=False, title=f"one layer, w = {s['window']}")
        left.axhline(s["position"], color="tab:orange", linewidth=2)
        reach = s["reach"].to(torch.float64) * torch.arange(s["layers"], 0, -1, dtype=torch.float64)[:, None]
        right.imshow(reach.numpy(), cmap="Blues", vmin=0, vmax=s["layers"], aspect="auto", interpolation="nearest")
        right.axvline(s["position"], color="tab:orange", linewidth=2)
        right.set_yticks(range(s["layers"]), labels=[str(n) for n in range(1, s["layers"] + 1)])
        right.set_xlabel("Key position")
        right.set_ylabel("Layers stacked")
        right.set_title(f"What position {s['position']} can reach")
        fig.tight_layout()
        return fig

    return Explorer(controls, update, draw, describe)


def positional_encoding_explorer(
    *,
    d_model: int = 16,
    position: int = 5,
    offset: int = 3,
    max_len: int = 64,
    base: float = 10000.0,
    pairs_shown: int = 4,
    figsize: tuple[float, float] = (11.0, 6.5),
) -> Explorer:
    """An explorer of sinusoidal position codes and their shift-as-rotation property.

    The top panel draws :math:`PE_{pos}`, :math:`PE_{pos+k}` and :math:`M_k PE_{pos}` feature by feature
    (the last two coincide: :func:`~attn_tutorial.positional.relative_shift_matrix`); the bottom panels
    show the first ``pairs_shown`` (sin, cos) pairs as points on the unit circle, each turned by the
    angle :math:`k\\,\\omega_i` when the position moves by ``k``.

    Args:
        d_model, position, offset: initial values (``d_model`` is a menu of 8, 16, 32, 64).
        max_len: the largest position the sliders reach (``position + offset < 2 * max_len``).
        base: the frequency base (10000 in the Transformer).
        pairs_shown: number of (sin, cos) pairs drawn as clock hands.
        figsize: size of the figure.

    Shape:
        ``state["pe_pos"]``, ``state["pe_shifted"]``, ``state["rotated"]``: ``(d_model,)``.

    Returns:
        An :class:`Explorer` with controls ``"d_model"``, ``"position"``, ``"offset"`` and ``state`` keys
        ``d_model, position, offset, pe_pos, pe_shifted, rotated, max_error, angles``.
    """
    from .positional import relative_shift_matrix, sinusoidal_encoding

    choices = [8, 16, 32, 64]
    if d_model not in choices:
        raise ValueError(f"d_model must be one of {choices}, got {d_model!r}")
    if not 0 <= position < max_len or not 0 <= offset < max_len:
        raise ValueError(f"position and offset must lie in [0, {max_len}), got {position!r} and {offset!r}")
    if not 1 <= pairs_shown <= min(choices) // 2:
        raise ValueError(f"pairs_shown must lie in [1, {min(choices) // 2}], got {pairs_shown!r}")
    tables = {d: sinusoidal_encoding(2 * max_len, d, base, dtype=torch.float64) for d in choices}
    controls = {
        "d_model": widgets.Dropdown(options=choices, value=d_model, description="d_model"),
        "position": widgets.IntSlider(value=position, min=0, max=max_len - 1, description="position"),
        "offset": widgets.IntSlider(value=offset, min=0, max=max_len - 1, description="offset k"),
    }

    def update(d_model: int, position: int, offset: int) -> dict[str, Any]:
        pe = tables[d_model]
        m_k = relative_shift_matrix(offset, d_model, base)  # (d, d)
        rotated = m_k @ pe[position]
        angles = offset * base ** (-torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
        return {"d_model": d_model, "position": position, "offset": offset, "pe_pos": pe[position],
                "pe_shifted": pe[position + offset], "rotated": rotated, "angles": angles,
                "max_error": float((rotated - pe[position + offset]).abs().max())}

    def describe(s: dict[str, Any]) -> str:
        return (f"PE[{s['position']} + {s['offset']}] = M<sub>{s['offset']}</sub> PE[{s['position']}] up to "
                f"{s['max_error']:.1e}; pair 0 turns by {float(s['angles'][0]):.2f} rad, the last pair by "
                f"{float(s['angles'][-1]):.2e} rad")

    def draw(s: dict[str, Any]) -> plt.Figure:
        fig = plt.figure(figsize=figsize)
        grid = fig.add_gridspec(2, pairs_shown, height_ratios=[1.2, 1])
        top = fig.add_subplot(grid[0, :])
        feats = torch.arange(s["d_model"]).numpy()
        top.plot(feats, s["pe_pos"].numpy(), "o-", label=f"PE[{s['position']}]", color="tab:blue")
        top.plot(feats, s["pe_shifted"].numpy(), "s-", label=f"PE[{s['position'] + s['offset']}]", color="tab:orange")
        top.plot(feats, s["rotated"].numpy(), "x", markersize=10, label=f"M_{s['offset']} PE[{s['position']}]", color="black")
        top.set_xlabel("Feature")
        top.set_ylabel("Value")
        top.set_title("A shift by k positions is a fixed rotation of the code")
        top.legend(fontsize="small", loc="lower right")
        circle = torch.linspace(0, 2 * torch.pi, 200)
        for i in range(pairs_shown):
            ax = fig.add_subplot(grid[1, i])
            ax.plot(circle.cos().numpy(), circle.sin().numpy(), color="lightgrey")
            for vec, colour in ((s["pe_pos"], "tab:blue"), (s["pe_shifted"], "tab:orange")):
                # (sin, cos) pair drawn as the point (cos, sin) on the unit circle
                ax.plot([0, float(vec[2 * i + 1])], [0, float(vec[2 * i])], color=colour, linewidth=2)
            ax.set_aspect("equal")
            ax.set_xlim(-1.1, 1.1)
            ax.set_ylim(-1.1, 1.1)
            ax.set_xlabel(f"cos (feature {2 * i + 1})")
            ax.set_ylabel(f"sin (feature {2 * i})")
            ax.set_title(f"pair {i}: turn {float(s['angles'][i]):.2f} rad", fontsize="small")
        fig.tight_layout()
        return fig

    return Explorer(controls, update, draw, describe)
