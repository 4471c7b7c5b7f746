"""Named training recipes: everything ``attn-tutorial train --recipe NAME`` needs, as frozen dataclasses.

A :class:`Recipe` is four parts, each validated on construction:

* :class:`DataSpec`: which data set (``"multi30k"`` or the ``"dates"`` task of
  :func:`~attn_tutorial.tasks.date_dataset`), how much of it, and how it is batched;
* :class:`TokenizerSpec`: a joint BPE trained on the training split only (``"bpe"``) or the fixed
  character vocabulary of the toy task (``"char"``);
* the model: a ``model_kind`` (a key of :data:`MODEL_KINDS`, e.g. ``"seq2seq"``) and the keyword
  arguments of that kind's config class *without* the vocabulary size, which the tokenizer decides;
* a :class:`TrainConfig`: what :func:`~attn_tutorial.train.fit` does, from the learning rate to checkpoints.

A later model (the Transformer) slots in by adding one entry to :data:`MODEL_KINDS` (config class,
model class) and its recipes to :data:`RECIPES`; nothing else changes. Variants are made with
:func:`apply_overrides` (the CLI's ``--set key=value``), e.g. ``model.hidden_dim=32`` or
``train.lr=3e-4``, which validates again.

Why these defaults for Multi30K (German to English, 29k pairs, about 0.4M target tokens per epoch,
two CPU cores): a joint BPE of 8k pieces with one embedding table shared by encoder, decoder and the
output layer (``share_embeddings`` + ``tie_embeddings`` :cite:p:`press2017tying`) keeps the model small
where it costs most (the vocabulary). The GRU has 384 units: with 512 the Bahdanau model has 9.5M
parameters, 18 MiB in float16, over the 16 MiB a model shipped inside the package may take; with 384
the three models have 5.8-6.5M parameters (at most 12.5 MiB) and need fewer operations per step.
Dropout 0.3 and label smoothing 0.1 :cite:p:`vaswani2017` fight over-fitting of a 29k-sentence corpus;
Adam at ``1e-3`` with a warmup of about one epoch (150 steps of about 2,700 target tokens) and a cosine
decay over eight epochs.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ._checks import is_int, is_real
from .seq2seq import Seq2Seq, Seq2SeqConfig
from .transformer import Transformer, TransformerConfig

__all__ = [
    "SCHEDULES",
    "TrainConfig",
    "DATASETS",
    "TOKENIZER_KINDS",
    "MODEL_KINDS",
    "DataSpec",
    "TokenizerSpec",
    "Recipe",
    "RECIPES",
    "get_recipe",
    "list_recipes",
    "apply_overrides",
    "parse_override",
    "build_model",
]

#: Data sets a recipe can train on.
DATASETS = ("multi30k", "dates")
#: Tokenizers a recipe can use, a joint BPE trained on the training split, or characters.
TOKENIZER_KINDS = ("bpe", "char")

#: Model kinds, name -> (config dataclass, model class). The config takes the vocabulary size as
#: ``src_vocab_size`` (one joint vocabulary); everything else comes from ``Recipe.model``.
MODEL_KINDS: dict[str, tuple[type, Callable[[Any], nn.Module]]] = {
    "seq2seq": (Seq2SeqConfig, Seq2Seq),
    "transformer": (TransformerConfig, Transformer),
}


#: The learning-rate schedules :func:`~attn_tutorial.train.lr_at` knows (all after a linear warmup).
SCHEDULES = ("constant", "inverse_sqrt", "cosine", "linear")


@dataclass(frozen=True)
class TrainConfig:
    """Everything :func:`~attn_tutorial.train.fit` needs to know, validated on construction.

    Frozen: make variants with ``dataclasses.replace(config, lr=3e-4)`` (which validates again).
    Every invalid value raises ``ValueError`` naming the field and the value.

    Args:
        epochs: passes over ``train_batches`` (an upper bound when ``max_steps`` is set).
        max_steps: stop after this many optimizer steps in total (``None``: run all epochs).
        lr: peak learning rate, reached at the end of the warmup.
        betas, eps: AdamW's moment decay rates and denominator constant (defaults from
            :cite:p:`vaswani2017`, section 5.3).
        weight_decay: AdamW's decoupled weight decay, applied to matrices only (parameters with two
            or more dimensions); biases and normalisation gains are not decayed.
        warmup_steps: the learning rate rises linearly from ``lr / warmup_steps`` to ``lr`` over these steps.
        schedule: what happens after the warmup, one of :data:`SCHEDULES` (see :func:`~attn_tutorial.train.lr_at`).
        min_lr: the floor of the decaying schedules (``cosine``, ``linear``, ``inverse_sqrt``).
        grad_clip: clip the global gradient 2-norm to this value (``None``: no clipping; the norm is
            recorded either way, before clipping).
        label_smoothing: ``epsilon`` of the default loss (training only; validation reports the plain
            cross-entropy, so ``exp(val_loss)`` is a perplexity).
        early_stopping_patience: stop after this many evaluations without a new best validation loss,
            then restore the best weights (``None``: no early stopping, the last weights are kept).
        eval_every: evaluate on ``val_batches`` every this many steps, or ``"epoch"`` at the end of
            every epoch.
        checkpoint_dir: where to write ``step-NNNNNNNN/`` checkpoints (``None``: no checkpoints).
        checkpoint_every_steps: checkpoint every this many steps (``None``: at the end of every epoch).
            A checkpoint is also written when training ends, whatever the reason.
        keep_last_n: keep only the newest ``n`` step checkpoints (``None``: keep all).
        keep_every_steps: rotation also spares every step checkpoint whose step is a multiple of this
            (``None``: none), so that checkpoint averaging can reach further back than the newest
            ``keep_last_n``. Must be a multiple of ``checkpoint_every_steps`` when that is set.
        seed: seeds Python, NumPy and PyTorch at the start of a fresh run (dropout, shuffling).
        device: ``"cpu"``, ``"cuda"``, ``"mps"``... (``None``: CUDA, then Apple MPS, then CPU).
        amp: mixed precision. ``None``: automatic, bf16 on GPUs that support it, else fp16 with a
            gradient scaler, off on CPU and MPS; ``True``: as automatic on CUDA, bf16 on CPU;
            ``False``: always float32.
        log_every: update the progress bar's loss/lr display every this many steps.
        progress: show a tqdm progress bar (notebook or terminal); ``False`` prints nothing at all.
    """

    epochs: int = 1
    max_steps: int | None = None
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-9
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: str = "constant"
    min_lr: float = 0.0
    grad_clip: float | None = 1.0
    label_smoothing: float = 0.0
    early_stopping_patience: int | None = None
    eval_every: int | str = "epoch"
    checkpoint_dir: str | None = None
    checkpoint_every_steps: int | None = None
    keep_last_n: int | None = 3
    keep_every_steps: int | None = None
    seed: int = 0
    device: str | None = None
    amp: bool | None = None
    log_every: int = 10
    progress: bool = True

    def __post_init__(self) -> None:  # noqa: C901 - one check per field reads best flat
        def bad(name: str, expected: str) -> ValueError:
            return ValueError(f"TrainConfig.{name} must be {expected}, got {getattr(self, name)!r}")

        def positive_int(name: str, optional: bool = False) -> None:
            value = getattr(self, name)
            if optional and value is None:
                return
            if not is_int(value) or value < 1:
                raise bad(name, "a positive int" + (" or None" if optional else ""))

        positive_int("epochs")
        positive_int("max_steps", optional=True)
        if not is_real(self.lr) or self.lr <= 0:
            raise bad("lr", "a positive finite float")
        betas = self.betas
        if isinstance(betas, list):  # from JSON
            betas = tuple(betas)
            object.__setattr__(self, "betas", betas)
        if not (isinstance(betas, tuple) and len(betas) == 2 and all(is_real(b) and 0 <= b < 1 for b in betas)):
            raise bad("betas", "a pair of floats in [0, 1)")
        if not is_real(self.eps) or self.eps <= 0:
            raise bad("eps", "a positive finite float")
        if not is_real(self.weight_decay) or self.weight_decay < 0:
            raise bad("weight_decay", "a finite float >= 0")
        if not is_int(self.warmup_steps) or self.warmup_steps < 0:
            raise bad("warmup_steps", "an int >= 0")
        if self.schedule not in SCHEDULES:
            raise bad("schedule", f"one of {SCHEDULES}")
        if not is_real(self.min_lr) or not 0 <= self.min_lr <= self.lr:
            raise bad("min_lr", f"a float in [0, lr={self.lr!r}]")
        if self.grad_clip is not None and (not is_real(self.grad_clip) or self.grad_clip <= 0):
            raise bad("grad_clip", "a positive finite float or None")
        if not is_real(self.label_smoothing) or not 0 <= self.label_smoothing < 1:
            raise bad("label_smoothing", "a float in [0, 1)")
        positive_int("early_stopping_patience", optional=True)
        if self.eval_every != "epoch" and (not is_int(self.eval_every) or self.eval_every < 1):
            raise bad("eval_every", "a positive int (steps) or 'epoch'")
        if self.checkpoint_dir is not None:
            if not isinstance(self.checkpoint_dir, (str, os.PathLike)) or str(self.checkpoint_dir) == "":
                raise bad("checkpoint_dir", "a non-empty path (str or os.PathLike) or None")
            object.__setattr__(self, "checkpoint_dir", os.fspath(self.checkpoint_dir))
        positive_int("checkpoint_every_steps", optional=True)
        if self.checkpoint_every_steps is not None and self.checkpoint_dir is None:
            raise bad("checkpoint_every_steps", "None when checkpoint_dir is None (nowhere to write)")
        positive_int("keep_last_n", optional=True)
        positive_int("keep_every_steps", optional=True)
        if self.keep_every_steps is not None and self.checkpoint_every_steps is not None:
            if self.keep_every_steps % self.checkpoint_every_steps:  # else those steps are never saved
                raise bad("keep_every_steps", f"a multiple of checkpoint_every_steps={self.checkpoint_every_steps!r}")
        if not is_int(self.seed) or self.seed < 0:
            raise bad("seed", "an int >= 0")
        if self.device is not None:
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError) as err:
                raise bad("device", "None or a device string such as 'cpu', 'cuda', 'cuda:1' or 'mps'") from err
        if self.amp is not None and not isinstance(self.amp, bool):
            raise bad("amp", "True, False or None (automatic)")
        positive_int("log_every")
        if not isinstance(self.progress, bool):
            raise bad("progress", "True or False")

    def to_dict(self) -> dict[str, Any]:
        """The configuration as a JSON-serialisable dict (``betas`` becomes a list)."""
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``TypeError``."""
        return cls(**dict(d))


def _positive_int_or_none(owner: str, name: str, value: object) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ValueError(f"{owner}.{name} must be a positive int or None, got {value!r}")


@dataclass(frozen=True)
class DataSpec:
    """Which data a recipe trains on and how it is batched.

    Args:
        dataset: one of :data:`DATASETS`.
        src_lang, tgt_lang: Multi30K languages (ignored by ``"dates"``).
        max_train_pairs: keep only the first ``n`` training pairs (``None``: all); for quick runs and tests.
        max_val_pairs: keep only the first ``n`` validation pairs for the loss and the final BLEU.
        n_train, n_val, n_test, data_seed: sizes and seed of the ``"dates"`` task's three splits.
        max_tokens: padded-token budget of a training batch (:class:`~attn_tutorial.batching.BatchIterator`).
        max_len: longest sequence in tokens, BOS/EOS included (longer ones are truncated in training).
    """

    dataset: str = "multi30k"
    src_lang: str = "de"
    tgt_lang: str = "en"
    max_train_pairs: int | None = None
    max_val_pairs: int | None = None
    n_train: int = 20_000
    n_val: int = 1_000
    n_test: int = 1_000
    data_seed: int = 0
    max_tokens: int = 4096
    max_len: int = 128

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"DataSpec.dataset must be one of {DATASETS}, got {self.dataset!r}")
        for name in ("max_train_pairs", "max_val_pairs"):
            _positive_int_or_none("DataSpec", name, getattr(self, name))
        for name in ("n_train", "n_val", "max_tokens", "max_len"):
            _positive_int_or_none("DataSpec", name, getattr(self, name))
            if getattr(self, name) is None:
                raise ValueError(f"DataSpec.{name} must be a positive int, got None")
        if not isinstance(self.n_test, int) or self.n_test < 0 or not isinstance(self.data_seed, int) or self.data_seed < 0:
            raise ValueError(f"DataSpec.n_test and data_seed must be ints >= 0, got {self.n_test!r}, {self.data_seed!r}")
        if self.max_len < 2:
            raise ValueError(f"DataSpec.max_len must be >= 2 (a token and its EOS), got {self.max_len!r}")


@dataclass(frozen=True)
class TokenizerSpec:
    """How text becomes ids: ``kind="bpe"`` trains a joint BPE of ``vocab_size`` pieces on the
    source and target sides of the training split only (:func:`~attn_tutorial.tokens.train_bpe`);
    ``kind="char"`` uses the toy task's fixed :func:`~attn_tutorial.tasks.date_vocab`."""

    kind: str = "bpe"
    vocab_size: int = 8000
    min_frequency: int = 2

    def __post_init__(self) -> None:
        if self.kind not in TOKENIZER_KINDS:
            raise ValueError(f"TokenizerSpec.kind must be one of {TOKENIZER_KINDS}, got {self.kind!r}")
        for name in ("vocab_size", "min_frequency"):
            _positive_int_or_none("TokenizerSpec", name, getattr(self, name))
        if self.vocab_size is None or self.vocab_size < 5:
            raise ValueError(f"TokenizerSpec.vocab_size must be an int >= 5 (4 special tokens + 1), got {self.vocab_size!r}")


@dataclass(frozen=True)
class Recipe:
    """A named, complete training set-up: data + tokenizer + model + training configuration.

    ``model`` holds the keyword arguments of ``MODEL_KINDS[model_kind]``'s config class except the
    vocabulary size; it is checked on construction by building that config with a placeholder
    vocabulary. ``train`` has no ``checkpoint_dir`` (the CLI sets it to ``OUT/checkpoints``); the run
    then checkpoints every ``checkpoint_every_steps`` steps (``None``: at the end of every epoch). Serialise with ``Recipe.to_dict``, restore with ``Recipe.from_dict``.
    """

    name: str
    description: str
    data: DataSpec
    tokenizer: TokenizerSpec
    model_kind: str
    model: Mapping[str, Any]
    train: TrainConfig
    tags: tuple[str, ...] = field(default_factory=tuple)
    checkpoint_every_steps: int | None = 100

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"Recipe.name must be a non-empty string, got {self.name!r}")
        _positive_int_or_none("Recipe", "checkpoint_every_steps", self.checkpoint_every_steps)
        if self.model_kind not in MODEL_KINDS:
            raise ValueError(f"Recipe.model_kind must be one of {tuple(MODEL_KINDS)}, got {self.model_kind!r}")
        object.__setattr__(self, "model", dict(self.model))
        self.model_config(max(self.tokenizer.vocab_size, 8))  # validates the model's keyword arguments
        if self.data.dataset == "dates" and self.tokenizer.kind != "char":
            raise ValueError("the 'dates' data set is character level: set tokenizer.kind='char'")

    def model_config(self, vocab_size: int) -> Any:
        """The model's config dataclass for a joint vocabulary of ``vocab_size`` ids."""
        config_cls, _ = MODEL_KINDS[self.model_kind]
        try:
            return config_cls(src_vocab_size=vocab_size, **self.model)
        except TypeError as err:
            names = [f.name for f in dataclasses.fields(config_cls) if f.name != "src_vocab_size"]
            raise ValueError(f"Recipe.model has a key {config_cls.__name__} does not take ({err}); valid keys: {names}") from None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (inverse: ``Recipe.from_dict``)."""
        return {
            "name": self.name,
            "description": self.description,
            "data": dataclasses.asdict(self.data),
            "tokenizer": dataclasses.asdict(self.tokenizer),
            "model_kind": self.model_kind,
            "model": dict(self.model),
            "train": self.train.to_dict(),
            "tags": list(self.tags),
            "checkpoint_every_steps": self.checkpoint_every_steps,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Recipe:
        return cls(
            name=d["name"],
            description=d.get("description", ""),
            data=DataSpec(**d["data"]),
            tokenizer=TokenizerSpec(**d["tokenizer"]),
            model_kind=d["model_kind"],
            model=dict(d["model"]),
            train=TrainConfig.from_dict(d["train"]),
            tags=tuple(d.get("tags", ())),
            checkpoint_every_steps=d.get("checkpoint_every_steps"),
        )


def build_model(recipe: Recipe, vocab_size: int) -> nn.Module:
    """A freshly initialised model of ``recipe`` for a joint vocabulary of ``vocab_size`` ids."""
    _, model_cls = MODEL_KINDS[recipe.model_kind]
    return model_cls(recipe.model_config(vocab_size))


# --------------------------------------------------------------------------------------------
# The book's recipes
# --------------------------------------------------------------------------------------------

# The recurrent models of Part III on Multi30K: one joint BPE-8k, shared and tied embeddings.
_GRU_MULTI30K = {
    "emb_dim": 256,
    "hidden_dim": 384,  # 512 would not fit the 16 MiB fp16 limit of a shipped model (see the module docstring)
    "num_layers": 1,
    "dropout": 0.3,
    "share_embeddings": True,
    "tie_embeddings": True,
}
# What every recipe of Part III shares; each one below changes only what differs.
_TRAIN_BASE = TrainConfig(
    schedule="cosine",
    min_lr=1e-5,
    grad_clip=1.0,
    eval_every="epoch",
    keep_last_n=2,
    progress=False,
    log_every=20,
)
_TRAIN_MULTI30K = dataclasses.replace(
    _TRAIN_BASE, epochs=8, lr=1e-3, betas=(0.9, 0.98), eps=1e-9, warmup_steps=150, label_smoothing=0.1
)
# The Transformer of Part III: the base model's shape scaled to a 29k-sentence corpus and a CPU.
_TRANSFORMER_MULTI30K = {
    "d_model": 256,
    "num_heads": 4,
    "num_encoder_layers": 3,
    "num_decoder_layers": 3,
    "d_ff": 1024,
    # Dropout 0.1 with no attention dropout over-fitted 29k sentences: validation loss lowest at epoch 10
    # (1.92), 1.97 at epoch 20, validation BLEU 37.3 greedy. 0.3 and 0.1: 1.78 at 20 and still falling, 38.4.
    "dropout": 0.3,
    "attn_dropout": 0.1,
    "norm_first": True,
    "positions": "sinusoidal",
    "share_embeddings": True,
    "tie_embeddings": True,
}
_TRAIN_TRANSFORMER = dataclasses.replace(
    _TRAIN_MULTI30K,
    epochs=20,
    lr=2e-3,  # with dropout 0.3: validation loss 1.75 at epoch 20 and 39.2 BLEU greedy, against 1.79 and 38.4 with 1e-3
    weight_decay=0.0,
    warmup_steps=300,
    keep_last_n=5,
    keep_every_steps=250,  # also keep steps 250, 500, ...: averages over the last epochs (ship_model.py --average-spaced)
    amp=True,  # bf16 autocast, also on CPU: about 1.2x faster there
)
# lr 4e-3: 99% validation exact match after 275 steps (2e-3 needed about 425); benchmarks/date_task.py
_TRAIN_DATES = dataclasses.replace(_TRAIN_BASE, epochs=8, lr=4e-3, warmup_steps=50)


def _multi30k(name: str, description: str, **model: Any) -> Recipe:
    return Recipe(
        name=name,
        description=description,
        data=DataSpec(dataset="multi30k"),
        tokenizer=TokenizerSpec(kind="bpe", vocab_size=8000),
        model_kind="seq2seq",
        model={**_GRU_MULTI30K, **model},
        train=_TRAIN_MULTI30K,
        tags=("part3", "multi30k", "gru"),
        checkpoint_every_steps=50,  # steps take seconds on a CPU: lose at most a few minutes to a crash
    )


#: Every named recipe, by name.
RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        _multi30k(
            "gru-none-multi30k",
            "GRU encoder-decoder without attention (one summary vector), Multi30K de-en",
            attention="none",
        ),
        _multi30k(
            "gru-bahdanau-multi30k",
            "GRU encoder-decoder with Bahdanau (additive) attention, Multi30K de-en",
            attention="bahdanau",
        ),
        _multi30k(
            "gru-luong-multi30k",
            "GRU encoder-decoder with Luong attention (global, general score, input feeding), Multi30K de-en",
            attention="luong",
            luong_score="general",
            luong_mode="global",
            input_feeding=True,
        ),
        Recipe(
            name="transformer-multi30k",
            description="Pre-norm Transformer (d_model 256, 3+3 layers, 4 heads, ff 1024), Multi30K de-en",
            # Batches of at most 2,048 padded tokens a side: about 290 optimizer updates an epoch, twice
            # as many as with 4,096 for about the same CPU time (the cost per token barely depends on
            # the batch there). 4,096-token batches gave only 1,349 updates in 9 epochs.
            data=DataSpec(dataset="multi30k", max_tokens=2048),
            tokenizer=TokenizerSpec(kind="bpe", vocab_size=8000),
            model_kind="transformer",
            model=_TRANSFORMER_MULTI30K,
            train=_TRAIN_TRANSFORMER,
            tags=("part3", "multi30k", "transformer"),
            checkpoint_every_steps=50,
        ),
        Recipe(
            name="gru-bahdanau-dates",
            description="GRU encoder-decoder with Bahdanau attention on the date-normalisation task",
            data=DataSpec(dataset="dates", n_train=20_000, n_val=1_000, n_test=1_000, max_tokens=4096, max_len=64),
            tokenizer=TokenizerSpec(kind="char", vocab_size=8000),
            model_kind="seq2seq",
            model={"emb_dim": 32, "hidden_dim": 64, "attention": "bahdanau", "share_embeddings": True},
            train=_TRAIN_DATES,
            tags=("part3", "dates", "gru"),
        ),
    )
}


def list_recipes() -> list[str]:
    """The names of the recipes in :data:`RECIPES`, sorted."""
    return sorted(RECIPES)


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``; ``KeyError`` with the list of known names if there is none."""
    try:
        return RECIPES[name]
    except KeyError:
        raise KeyError(f"unknown recipe {name!r}; known recipes: {', '.join(list_recipes())}") from None


def parse_override(text: str) -> tuple[str, str, Any]:
    """``"model.hidden_dim=32"`` -> ``("model", "hidden_dim", 32)``.

    The part before the dot is ``data``, ``tokenizer``, ``model`` or ``train``. The value is read as
    JSON when it parses (``32``, ``3e-4``, ``true``, ``null``, ``[0.9, 0.98]``), with ``None``
    also meaning ``null`` and ``True``/``False`` booleans; otherwise it is kept as a string
    (``model.attention=luong``, ``model.attention=none``: lowercase ``none`` is a string).
    """
    if "=" not in text:
        raise ValueError(f"--set expects key=value (e.g. model.hidden_dim=32), got {text!r}")
    key, raw = text.split("=", 1)
    section, _, name = key.strip().partition(".")
    if section not in ("data", "tokenizer", "model", "train") or not name:
        raise ValueError(
            f"--set key must be data.NAME, tokenizer.NAME, model.NAME or train.NAME, got {key.strip()!r}"
        )
    raw = raw.strip()
    special = {"None": None, "True": True, "False": False}  # not "none": it is an attention kind
    if raw in special:
        value: Any = special[raw]
    else:
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
    if isinstance(value, list):
        value = tuple(value)
    return section, name, value


def apply_overrides(recipe: Recipe, overrides: Sequence[str] | Mapping[str, Any]) -> Recipe:
    """A copy of ``recipe`` with ``section.name=value`` overrides applied (and validated).

    ``overrides`` are ``--set`` strings (see :func:`parse_override`) or a mapping
    ``{"model.hidden_dim": 32}``. Unknown names raise ``ValueError`` naming the valid ones.
    """
    items = (
        [parse_override(f"{k}={json.dumps(v)}") for k, v in overrides.items()]
        if isinstance(overrides, Mapping)
        else [parse_override(o) for o in overrides]
    )
    data, tokenizer, model, train = recipe.data, recipe.tokenizer, dict(recipe.model), recipe.train
    every = recipe.checkpoint_every_steps
    for section, name, value in items:
        if section == "model":
            model[name] = value
            continue
        if section == "train" and name == "checkpoint_every_steps":  # kept on the recipe (see Recipe)
            every = value
            continue
        current = {"data": data, "tokenizer": tokenizer, "train": train}[section]
        valid = [f.name for f in dataclasses.fields(current)]
        if name not in valid:
            raise ValueError(f"--set {section}.{name}: {type(current).__name__} has no field {name!r}; valid: {valid}")
        updated = dataclasses.replace(current, **{name: value})
        if section == "data":
            data = updated
        elif section == "tokenizer":
            tokenizer = updated
        else:
            train = updated
    return dataclasses.replace(
        recipe, data=data, tokenizer=tokenizer, model=model, train=train, checkpoint_every_steps=every
    )
