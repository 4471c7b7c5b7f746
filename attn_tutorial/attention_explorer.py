"""Every attention map of a trained Transformer on a sentence, and an explorer to browse them.

A translation Transformer :cite:p:`vaswani2017` has three kinds of attention, each with
``layers x heads`` maps:

* **encoder self-attention**: source pieces attend to source pieces, ``(S, S)`` per head;
* **decoder self-attention**: each target prefix position attends to itself and the earlier ones
  (causal), ``(T, T)``;
* **cross-attention**: each decoder position attends to the source, ``(T, S)``.

:func:`translate_with_attention` translates sentences greedily
(:func:`~attn_tutorial.decoding.greedy_decode`), then *teacher-forces* the model's own output
``BOS + y_1 ... y_n`` through :meth:`Transformer.forward(..., return_attention=True)
<attn_tutorial.transformer.Transformer.forward>` to collect all the maps at once. Row ``t`` of a
cross-attention map is the attention used while predicting output piece ``t`` (``y_{t+1}`` in
1-based terms; the last row predicts EOS), the same rows greedy decoding attends with (tested).

:func:`transformer_attention_explorer` wraps them in an :class:`~attn_tutorial.widgets.Explorer`: type or pick a
sentence, choose the attention kind, the layer and a head (or the mean over heads). The model is
only run when the sentence changes (results are cached per sentence); nothing is trained.

Masks are boolean, ``True`` = real token (may be attended).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
from torch import Tensor

from .batching import collate
from .decoding import greedy_decode
from .plotting import plot_attention_heatmap
from .tokens import BOS_ID, EOS_ID, SPECIAL_TOKENS, TextTokenizer
from .transformer import Transformer
from .widgets import Explorer

__all__ = ["ATTENTION_KINDS", "TranslationAttention", "translate_with_attention", "transformer_attention_explorer"]

#: The attention kinds of an encoder-decoder Transformer, by the names this module uses.
ATTENTION_KINDS = ("encoder-self", "decoder-self", "cross")

_KIND_TITLES = {"encoder-self": "encoder self-attention", "decoder-self": "decoder self-attention",
                "cross": "cross-attention"}


@dataclass(frozen=True)
class TranslationAttention:
    """One sentence, its greedy translation and every attention map of the teacher-forced output.

    Attributes:
        source: the input sentence.
        translation: the decoded output text.
        src_pieces: the source pieces plus ``"</s>"`` (the EOS every source ends with), ``S`` labels.
        in_pieces: the decoder inputs ``"<s>", y_1, ..., y_n``, ``T = n + 1`` labels.
        out_pieces: what each decoder position predicts ``y_1, ..., y_n`` then ``"</s>"`` (or ``"…"``
            when decoding stopped at the length limit), ``T`` labels.
        encoder_self: ``(L_enc, H, S, S)`` weights.
        decoder_self: ``(L_dec, H, T, T)`` weights (causal: zero above the diagonal).
        cross: ``(L_dec, H, T, S)`` weights.
        finished: whether the greedy output ended with EOS.

    Every row of every map sums to 1 over the real positions.
    """

    source: str
    translation: str
    src_pieces: list[str]
    in_pieces: list[str]
    out_pieces: list[str]
    encoder_self: Tensor
    decoder_self: Tensor
    cross: Tensor
    finished: bool

    def maps(self, kind: str) -> Tensor:
        """All layers and heads of one kind: ``(L, H, Lq, Lk)``."""
        if kind not in ATTENTION_KINDS:
            raise ValueError(f"kind must be one of {ATTENTION_KINDS}, got {kind!r}")
        return {"encoder-self": self.encoder_self, "decoder-self": self.decoder_self, "cross": self.cross}[kind]

    def weights(self, kind: str, layer: int, head: int | str = "mean") -> Tensor:
        """One map ``(Lq, Lk)``: layer ``layer`` (0-based, negative counts from the end), head ``head``
        (an int) or the mean over heads (``"mean"``)."""
        maps = self.maps(kind)
        n_layers, n_heads = maps.shape[:2]
        if not isinstance(layer, int) or not -n_layers <= layer < n_layers:
            raise ValueError(f"layer must be an int in [{-n_layers}, {n_layers}) for {kind} ({n_layers} layers), got {layer!r}")
        if head == "mean":
            return maps[layer].mean(0)
        if not isinstance(head, int) or isinstance(head, bool) or not 0 <= head < n_heads:
            raise ValueError(f"head must be 'mean' or an int in [0, {n_heads}), got {head!r}")
        return maps[layer, head]

    def labels(self, kind: str) -> tuple[list[str], list[str]]:
        """``(key labels, query labels)`` for a map of ``kind``."""
        if kind == "encoder-self":
            return self.src_pieces, self.src_pieces
        if kind == "decoder-self":
            return self.in_pieces, self.in_pieces
        if kind == "cross":
            return self.src_pieces, self.out_pieces
        raise ValueError(f"kind must be one of {ATTENTION_KINDS}, got {kind!r}")


def _piece(tokenizer: TextTokenizer, i: int) -> str:
    if 0 <= i < len(SPECIAL_TOKENS):
        return SPECIAL_TOKENS[i]
    id_to_token = getattr(tokenizer, "id_to_token", None)
    return str(id_to_token(i)) if callable(id_to_token) else tokenizer.decode([i])


@torch.no_grad()
def translate_with_attention(
    model: Transformer,
    tokenizer: TextTokenizer,
    sentences: Sequence[str],
    *,
    max_len_a: float = 2.0,
    max_len_b: int = 10,
    max_len: int | None = None,
) -> list[TranslationAttention]:
    """Greedy translations of ``sentences`` and every attention map of the model on its own output.

    Two passes, both batched over the sentences: :func:`~attn_tutorial.decoding.greedy_decode`
    (with the length limit ``min(max_len, max_len_a * S + max_len_b)``), then one teacher-forced
    :meth:`~attn_tutorial.transformer.Transformer.forward` on ``BOS + output`` with
    ``return_attention=True``; padding is cut off each sentence's maps. The model is put in eval
    mode for the call and restored afterwards (no dropout in the maps).

    Shape:
        ``N`` sentences -> ``N`` :class:`TranslationAttention` records (``S_i`` = pieces + 1,
        ``T_i`` = output pieces + 1).
    """
    if not isinstance(model, Transformer):
        raise TypeError(f"model must be an attn_tutorial Transformer (it needs all attention maps), got {type(model).__name__}")
    if isinstance(sentences, str) or not all(isinstance(s, str) for s in sentences):
        raise TypeError("sentences must be a list of strings")
    if len(sentences) == 0:
        return []
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        src_ids = [list(tokenizer.encode(s.strip())) for s in sentences]
        batch = collate([(ids, []) for ids in src_ids], pad_to_multiple_of=1)
        src, src_mask = batch.src.to(device), batch.src_mask.to(device)
        result = greedy_decode(model, src, src_mask, max_len_a=max_len_a, max_len_b=max_len_b, max_len=max_len)
        forced = collate([(ids, out) for ids, out in zip(src_ids, result.tokens)], pad_to_multiple_of=1)
        tgt_in, tgt_mask = forced.tgt_in.to(device), forced.tgt_mask.to(device)
        _, maps = model(src, src_mask, tgt_in, tgt_mask, return_attention=True)
    finally:
        model.train(was_training)
    stack = lambda ws: torch.stack(ws, dim=1).float().cpu() if ws else None  # noqa: E731  L x (B, H, q, k) -> (B, L, H, q, k)
    enc, dec, cross = stack(maps.encoder_self), stack(maps.decoder_self), stack(maps.cross)
    B, H = len(sentences), model.config.num_heads
    records = []
    for i, (sentence, ids, out) in enumerate(zip(sentences, src_ids, result.tokens)):
        S, T = len(ids) + 1, len(out) + 1
        empty = lambda q, k: torch.zeros(0, H, q, k)  # noqa: E731  (a stack with no layers)
        records.append(TranslationAttention(
            source=sentence,
            translation=" ".join(tokenizer.decode(out).splitlines()).strip(),
            src_pieces=[_piece(tokenizer, t) for t in ids] + [SPECIAL_TOKENS[EOS_ID]],
            in_pieces=[SPECIAL_TOKENS[BOS_ID]] + [_piece(tokenizer, t) for t in out],
            out_pieces=[_piece(tokenizer, t) for t in out] + [SPECIAL_TOKENS[EOS_ID] if result.finished[i] else "…"],
            encoder_self=enc[i, :, :, :S, :S].clone() if enc is not None else empty(S, S),
            decoder_self=dec[i, :, :, :T, :T].clone() if dec is not None else empty(T, T),
            cross=cross[i, :, :, :T, :S].clone() if cross is not None else empty(T, S),
            finished=bool(result.finished[i]),
        ))
    assert len(records) == B
    return records


def _entropy(w: Tensor) -> Tensor:
    """Entropy (nats) of each row of ``w`` ``(..., Lk)``; zero weights contribute 0."""
    return -(w * w.clamp_min(1e-30).log()).sum(-1)


def transformer_attention_explorer(
    model: Transformer,
    tokenizer: TextTokenizer,
    sentences: Sequence[str],
    *,
    sentence: str | None = None,
    kind: str = "cross",
    layer: int = -1,
    head: int | str = "mean",
    max_len: int = 60,
    figsize: tuple[float, float] = (7.5, 5.5),
) -> Explorer:
    """An explorer of a trained Transformer's attention maps on a sentence you pick or type.

    Controls: a combo box with ``sentences`` to pick from (any other text can be typed; it is
    translated when you press Enter), the attention kind (:data:`ATTENTION_KINDS`), the layer (its
    menu follows the kind: the encoder and decoder may differ in depth) and a head or ``"mean"``.
    The readout gives the translation and the mean entropy of the shown rows against the uniform
    distribution's. Each sentence runs :func:`translate_with_attention` once and is cached.

    Args:
        model, tokenizer: a trained :class:`~attn_tutorial.transformer.Transformer` and its tokenizer.
        sentences: the sentences offered in the menu (at least one).
        sentence: the initial sentence (default ``sentences[0]``).
        kind, layer, head: initial controls (``layer`` 0-based, negative counts from the end).
        max_len: the longest translation decoded, in pieces.
        figsize: size of the figure.

    Shape:
        ``state["weights"]`` ``(Lq, Lk)``; ``state["record"]`` the sentence's :class:`TranslationAttention`.

    Returns:
        An :class:`~attn_tutorial.widgets.Explorer` with controls ``"sentence"``, ``"kind"``,
        ``"layer"``, ``"head"`` and ``state`` keys ``sentence, kind, layer, head, record, weights,
        xlabels, ylabels, entropy, uniform_entropy``.
    """
    if not isinstance(model, Transformer):
        raise TypeError(f"model must be an attn_tutorial Transformer, got {type(model).__name__}")
    sentences = list(sentences)
    if not sentences or not all(isinstance(s, str) for s in sentences):
        raise ValueError("sentences must be a non-empty list of strings (the menu of the explorer)")
    sentence = sentences[0] if sentence is None else sentence
    if kind not in ATTENTION_KINDS:
        raise ValueError(f"kind must be one of {ATTENTION_KINDS}, got {kind!r}")
    depth = {"encoder-self": model.config.num_encoder_layers, "decoder-self": model.config.num_decoder_layers,
             "cross": model.config.num_decoder_layers}
    kinds = [k for k in ATTENTION_KINDS if depth[k] > 0]
    if kind not in kinds:
        raise ValueError(f"the model has no {_KIND_TITLES[kind]} layers; kind must be one of {tuple(kinds)}")
    if not isinstance(layer, int) or not -depth[kind] <= layer < depth[kind]:
        raise ValueError(f"layer must be an int in [{-depth[kind]}, {depth[kind]}) for {kind}, got {layer!r}")
    n_heads = model.config.num_heads
    if head != "mean" and (not isinstance(head, int) or isinstance(head, bool) or not 0 <= head < n_heads):
        raise ValueError(f"head must be 'mean' or an int in [0, {n_heads}), got {head!r}")
    cache: dict[str, TranslationAttention] = {}

    def record_for(text: str) -> TranslationAttention:
        if text not in cache:
            cache[text] = translate_with_attention(model, tokenizer, [text], max_len=max_len)[0]
        return cache[text]

    def layer_options(k: str) -> list[tuple[str, int]]:
        return [(f"layer {n + 1}", n) for n in range(depth[k])]

    controls = {
        "sentence": widgets.Combobox(value=sentence, options=sentences, ensure_option=False, continuous_update=False,
                                     placeholder="type a sentence and press Enter", description="sentence",
                                     layout=widgets.Layout(width="95%")),
        "kind": widgets.Dropdown(options=[(_KIND_TITLES[k], k) for k in kinds], value=kind, description="attention"),
        "layer": widgets.Dropdown(options=layer_options(kind), value=layer % depth[kind], description="layer"),
        "head": widgets.Dropdown(options=[("mean over heads", "mean")] + [(f"head {h}", h) for h in range(n_heads)],
                                 value=head, description="head"),
    }

    def follow_kind(change: dict[str, Any]) -> None:
        old = controls["layer"].value
        options = layer_options(change["new"])
        controls["layer"].options = options
        controls["layer"].value = min(old if old is not None else 0, len(options) - 1)

    controls["kind"].observe(follow_kind, names="value")

    def update(sentence: str, kind: str, layer: int | None, head: int | str) -> dict[str, Any]:
        rec = record_for(sentence)
        n = rec.maps(kind).shape[0]
        layer = min(0 if layer is None else layer, n - 1)
        w = rec.weights(kind, layer, head)
        xlabels, ylabels = rec.labels(kind)
        lq, lk = w.shape
        # keys each row may attend: all of them, except in the causal decoder self-attention (row t sees t + 1)
        allowed = torch.arange(1, lq + 1, dtype=torch.float64) if kind == "decoder-self" else torch.full((lq,), float(lk), dtype=torch.float64)
        return {"sentence": sentence, "kind": kind, "layer": layer, "head": head, "record": rec, "weights": w,
                "xlabels": xlabels, "ylabels": ylabels, "entropy": float(_entropy(w.double()).mean()),
                "uniform_entropy": float(allowed.log().mean())}

    def describe(s: dict[str, Any]) -> str:
        which = "mean over heads" if s["head"] == "mean" else f"head {s['head']}"
        return (f"translation: <i>{s['record'].translation or '(empty)'}</i><br>{_KIND_TITLES[s['kind']]}, layer "
                f"{s['layer'] + 1}, {which}: mean row entropy {s['entropy']:.2f} nats (uniform rows: "
                f"{s['uniform_entropy']:.2f})")

    def draw(s: dict[str, Any]) -> plt.Figure:
        fig, ax = plt.subplots(figsize=figsize)
        which = "mean over heads" if s["head"] == "mean" else f"head {s['head']}"
        axis = {"encoder-self": ("source piece (key)", "source piece (query)"),
                "decoder-self": ("decoder input (key)", "decoder input (query)"),
                "cross": ("source piece (key)", "output piece being predicted (query)")}[s["kind"]]
        plot_attention_heatmap(s["weights"], ax=ax, xlabels=s["xlabels"], ylabels=s["ylabels"], xlabel=axis[0],
                               ylabel=axis[1], vmax=1.0,
                               title=f"{_KIND_TITLES[s['kind']]}, layer {s['layer'] + 1}, {which}")
        fig.tight_layout()
        return fig

    return Explorer(controls, update, draw, describe)
