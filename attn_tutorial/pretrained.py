"""Trained models, shipped with the package or made by ``attn-tutorial train``: find, load, translate.

A *model directory* holds three files and nothing else is needed to translate with it:

* ``model.safetensors``: the weights in float16, written by :func:`~attn_tutorial.train.export_fp16`
  (at most 16 MiB), with the model's config in the file's header;
* ``tokenizer.json``: the tokenizer (the ``tokenizers`` library's JSON for a BPE, or
  ``{"kind": "char", "alphabet": ...}`` for a character vocabulary), see :func:`save_tokenizer`;
* ``card.json``: the model card: the recipe (:class:`~attn_tutorial.configs.Recipe`), the exact
  command line, seed, device, wall time, torch version, git commit, parameter count and validation
  BLEU.

The models shipped with the package live in ``attn_tutorial/pretrained/<name>/`` (:func:`list_pretrained`);
any other model directory (e.g. the ``--out`` folder of ``attn-tutorial train``) loads the same way.
:func:`load_pretrained` upcasts the weights to float32 on the CPU and returns the model in eval mode.
:func:`translate_sentences` turns a list of sentences into translations, batched, in input order.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .configs import MODEL_KINDS
from .data import DEFAULT_MAX_LEN, CharVocab, SubwordTokenizer, TextTokenizer, collate
from .decoding import beam_search, greedy_decode
from .train import load_exported

__all__ = [
    "MODEL_FILE",
    "TOKENIZER_FILE",
    "CARD_FILE",
    "pretrained_root",
    "list_pretrained",
    "resolve_model_dir",
    "save_tokenizer",
    "load_tokenizer",
    "load_pretrained",
    "translate_sentences",
    "DEFAULT_LENGTH_PENALTY_ALPHA",
    "card_length_penalty",
]

#: File names inside a model directory.
MODEL_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
CARD_FILE = "card.json"
#: GNMT length penalty of beam search when a model's card names none (:cite:t:`wu2016gnmt` use 0.6-1.0).
DEFAULT_LENGTH_PENALTY_ALPHA = 0.6


def card_length_penalty(card: Mapping[str, Any]) -> float:
    """The beam-search length penalty ``alpha`` a model's card records (``card["eval"]["length_penalty_alpha"]``,
    chosen on validation BLEU by ``scripts/ship_model.py``), else :data:`DEFAULT_LENGTH_PENALTY_ALPHA`."""
    value = (card.get("eval") or {}).get("length_penalty_alpha", DEFAULT_LENGTH_PENALTY_ALPHA)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"card eval.length_penalty_alpha must be a float >= 0, got {value!r}")
    return float(value)


def pretrained_root() -> Path:
    """The folder of the shipped models, ``attn_tutorial/pretrained/`` (it may not exist yet)."""
    return Path(__file__).resolve().parent / "pretrained"


def _is_model_dir(path: Path) -> bool:
    return path.is_dir() and all((path / f).is_file() for f in (MODEL_FILE, TOKENIZER_FILE, CARD_FILE))


def list_pretrained() -> list[str]:
    """Names of the shipped models (complete model directories under :func:`pretrained_root`), sorted.

    An empty list when none is shipped.
    """
    root = pretrained_root()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if _is_model_dir(p))


def resolve_model_dir(name_or_dir: str | os.PathLike[str]) -> Path:
    """The model directory a name or path refers to.

    A path to an existing directory is used as it is (it must hold the three files); otherwise
    ``name_or_dir`` must be the name of a shipped model. Raises ``FileNotFoundError`` naming what
    is missing and the shipped models.
    """
    path = Path(name_or_dir).expanduser()
    if path.is_dir():
        missing = [f for f in (MODEL_FILE, TOKENIZER_FILE, CARD_FILE) if not (path / f).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{path} is not a model directory: it lacks {', '.join(missing)} (a finished "
                "'attn-tutorial train' run writes all three)"
            )
        return path
    shipped = list_pretrained()
    if str(name_or_dir) in shipped:
        return pretrained_root() / str(name_or_dir)
    known = ", ".join(shipped) if shipped else "none is shipped yet"
    raise FileNotFoundError(f"unknown model {os.fspath(name_or_dir)!r}: not a directory and not a shipped model ({known})")


def save_tokenizer(tokenizer: TextTokenizer, path: str | os.PathLike[str]) -> Path:
    """Write a :class:`~attn_tutorial.data.SubwordTokenizer` or :class:`~attn_tutorial.data.CharVocab` as JSON."""
    path = Path(path)
    if isinstance(tokenizer, SubwordTokenizer):
        return tokenizer.save(path)
    if isinstance(tokenizer, CharVocab):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps({"kind": "char", "alphabet": tokenizer.alphabet}, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
        return path
    raise TypeError(f"tokenizer must be a SubwordTokenizer or a CharVocab, got {type(tokenizer).__name__}")


def load_tokenizer(path: str | os.PathLike[str]) -> SubwordTokenizer | CharVocab:
    """Read a tokenizer written by :func:`save_tokenizer`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer file at {path}")
    obj = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(obj, dict) and obj.get("kind") == "char":
        return CharVocab(obj["alphabet"])
    return SubwordTokenizer.load(path)


def load_pretrained(
    name_or_dir: str | os.PathLike[str], device: torch.device | str | None = None
) -> tuple[nn.Module, SubwordTokenizer | CharVocab, dict[str, Any]]:
    """Load a model directory: ``(model, tokenizer, card)``.

    ``name_or_dir`` is a shipped model's name (:func:`list_pretrained`) or a model directory
    (:func:`resolve_model_dir`). The float16 weights are upcast to float32 on the CPU, then the model
    moves to ``device`` (default: stays on the CPU) and is put in eval mode.

    >>> model, tok, card = load_pretrained("runs/gru-bahdanau-multi30k")  # doctest: +SKIP
    >>> card["val_bleu"]  # doctest: +SKIP
    """
    directory = resolve_model_dir(name_or_dir)
    card = json.loads((directory / CARD_FILE).read_text(encoding="utf-8"))
    kind = card.get("model_kind")
    if kind not in MODEL_KINDS:
        raise ValueError(f"{directory / CARD_FILE} names model_kind={kind!r}; known kinds: {tuple(MODEL_KINDS)}")
    config_cls, model_cls = MODEL_KINDS[kind]
    exported = load_exported(directory / MODEL_FILE, dtype=torch.float32, map_location="cpu")
    model_config = exported.metadata.get("model_config")
    if not isinstance(model_config, dict):
        raise ValueError(f"{directory / MODEL_FILE} holds no model config in its header")
    model = model_cls(config_cls(**model_config))
    model.load_state_dict(exported.weights)
    tokenizer = load_tokenizer(directory / TOKENIZER_FILE)
    vocab = model_config.get("src_vocab_size")
    if vocab is not None and vocab != tokenizer.vocab_size:
        raise ValueError(f"{directory}: the model expects {vocab} token ids but the tokenizer has {tokenizer.vocab_size}")
    if device is not None:
        model.to(torch.device(device))
    model.eval()
    return model, tokenizer, card


@torch.no_grad()
def translate_sentences(
    model: nn.Module,
    tokenizer: TextTokenizer,
    sentences: Sequence[str],
    *,
    beam_size: int = 1,
    length_penalty_alpha: float = DEFAULT_LENGTH_PENALTY_ALPHA,
    batch_size: int = 64,
    max_len: int | None = None,
    max_len_a: float = 2.0,
    max_len_b: int = 10,
    max_src_len: int = DEFAULT_MAX_LEN,
) -> list[str]:
    """Translate ``sentences``: one output string per input, in input order.

    A sentence that is empty (or only whitespace) gives ``""`` without running the model. The others
    are encoded, sorted by length and decoded in batches of ``batch_size`` (greedy when
    ``beam_size == 1``, else :func:`~attn_tutorial.decoding.beam_search` with the GNMT length
    penalty ``length_penalty_alpha``), then put back in input order. Sources longer than
    ``max_src_len`` tokens (with EOS) are truncated; outputs stop at ``min(max_len, max_len_a * S + max_len_b)``
    tokens. Outputs never contain a newline. Runs on the model's device.

    Shape:
        ``N`` strings -> ``N`` strings.
    """
    if isinstance(sentences, str):
        raise TypeError("sentences must be a list of strings, got a single str")
    if not isinstance(beam_size, int) or isinstance(beam_size, bool) or beam_size < 1:
        raise ValueError(f"beam_size must be a positive int, got {beam_size!r}")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    outputs = [""] * len(sentences)
    todo = [i for i, s in enumerate(sentences) if s.strip()]
    texts = [sentences[i].strip() for i in todo]
    encode_batch = getattr(tokenizer, "encode_batch", None)
    encoded = encode_batch(texts) if callable(encode_batch) else [tokenizer.encode(t) for t in texts]
    ids = {i: list(x)[: max_src_len - 1] for i, x in zip(todo, encoded)}
    todo.sort(key=lambda i: len(ids[i]))
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        batch = collate([(ids[i], []) for i in chunk], pad_to_multiple_of=1)
        src, src_mask = batch.src.to(device), batch.src_mask.to(device)
        limits = {"max_len": max_len, "max_len_a": max_len_a, "max_len_b": max_len_b}
        if beam_size == 1:
            result = greedy_decode(model, src, src_mask, **limits)  # type: ignore[arg-type]
        else:
            result = beam_search(model, src, src_mask, beam_size, length_penalty_alpha=length_penalty_alpha, **limits)  # type: ignore[arg-type]
        for i, tokens in zip(chunk, result.tokens):
            outputs[i] = " ".join(tokenizer.decode(tokens).splitlines()).strip()
    return outputs
