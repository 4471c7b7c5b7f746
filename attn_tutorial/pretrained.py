"""Trained models, shipped with the package or made by ``attn-tutorial train``: find, load, translate.

A *model directory* holds three files and nothing else is needed to translate with it:

* ``model.safetensors``: the weights in float16, written by :func:`~attn_tutorial.checkpoint.export_fp16`
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
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .batching import DEFAULT_MAX_LEN, collate
from .checkpoint import load_exported
from .configs import MODEL_KINDS
from .decoding import beam_search, greedy_decode
from .errors import DamagedFileError
from .runtime import atomic_write_bytes
from .tokens import CharVocab, SubwordTokenizer, TextTokenizer, encode_all

__all__ = [
    "MODEL_FILE",
    "TOKENIZER_FILE",
    "CARD_FILE",
    "pretrained_root",
    "list_pretrained",
    "resolve_model_dir",
    "save_tokenizer",
    "load_tokenizer",
    "read_card",
    "load_pretrained",
    "translate_sentences",
    "DEFAULT_LENGTH_PENALTY_ALPHA",
    "card_length_penalty",
    "MODEL_FORMAT_VERSION",
    "model_position_limit",
    "split_for_model",
]

#: File names inside a model directory.
MODEL_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
CARD_FILE = "card.json"
#: The model-directory format this version reads and writes (``card["model_format"]``; a card
#: without it is format 1). A directory of a higher format comes from a newer package and is refused.
MODEL_FORMAT_VERSION = 1
#: GNMT length penalty of beam search when a model's card names none (:cite:t:`wu2016gnmt` use 0.6-1.0).
DEFAULT_LENGTH_PENALTY_ALPHA = 0.6


def card_length_penalty(card: Mapping[str, Any]) -> float:
    """The beam-search length penalty ``alpha`` a model's card records (``card["eval"]["length_penalty_alpha"]``,
    chosen on validation BLEU by ``scripts/ship_model.py``), else :data:`DEFAULT_LENGTH_PENALTY_ALPHA`."""
    value = (card.get("eval") or {}).get("length_penalty_alpha", DEFAULT_LENGTH_PENALTY_ALPHA)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise DamagedFileError(f"card eval.length_penalty_alpha must be a float >= 0, got {value!r}")
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
    """Write a :class:`~attn_tutorial.tokens.SubwordTokenizer` or :class:`~attn_tutorial.tokens.CharVocab` as JSON."""
    path = Path(path)
    if isinstance(tokenizer, SubwordTokenizer):
        return tokenizer.save(path)
    if isinstance(tokenizer, CharVocab):
        text = json.dumps({"kind": "char", "alphabet": tokenizer.alphabet}, ensure_ascii=False) + "\n"
        atomic_write_bytes(path, text.encode("utf-8"))  # temporary file, fsync, rename
        return path
    raise TypeError(f"tokenizer must be a SubwordTokenizer or a CharVocab, got {type(tokenizer).__name__}")


def _remedy(path: Path) -> str:
    """What to do about a damaged file of a model directory: reinstall a shipped one, else copy it again."""
    try:
        path.resolve().relative_to(pretrained_root().resolve())
    except ValueError:
        return (
            "copy the model directory again from where it came from, or export it again from its training run "
            "('attn-tutorial train --resume --out RUN' writes a fresh one)"
        )
    return "the installed package is damaged: reinstall it (pip install --force-reinstall attn-tutorial)"


def _package_version() -> str:
    import attn_tutorial

    return str(getattr(attn_tutorial, "__version__", "0"))


def _version_key(text: object) -> tuple[int, ...]:
    """``"0.10.2rc1"`` -> ``(0, 10, 2)``: the leading numeric release part, enough to tell newer from older."""
    parts = []
    for piece in str(text).split("."):
        m = re.match(r"\d+", piece)
        if m is None:
            break
        parts.append(int(m.group()))
        if m.end() != len(piece):
            break
    return tuple(parts)


def _newer_version_note(card: Mapping[str, Any]) -> str:
    """A hint when the card says a newer package made the directory ("" otherwise)."""
    made_by = card.get("attn_tutorial_version")
    if made_by is not None and _version_key(made_by) > _version_key(_package_version()):
        return (
            f"; it was made by attn_tutorial {made_by}, newer than this {_package_version()}: "
            "upgrade (pip install -U attn-tutorial)"
        )
    return ""


def load_tokenizer(path: str | os.PathLike[str]) -> SubwordTokenizer | CharVocab:
    """Read a tokenizer written by :func:`save_tokenizer`.

    A missing file raises ``FileNotFoundError``; a file that is not a valid tokenizer (not JSON,
    cut short, wrong structure, special tokens out of place) raises
    :class:`~attn_tutorial.errors.DamagedFileError` naming the file and what to do.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer file at {path}")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DamagedFileError(f"{path} is not a valid tokenizer file (not JSON: {err}); {_remedy(path)}") from None
    try:
        if isinstance(obj, dict) and obj.get("kind") == "char":
            return CharVocab(obj["alphabet"])
        return SubwordTokenizer.load(path)
    except Exception as err:  # noqa: BLE001 - the tokenizers library raises a bare Exception for bad JSON
        detail = " ".join(str(err).split()) or type(err).__name__
        raise DamagedFileError(f"{path} is not a valid tokenizer file ({detail}); {_remedy(path)}") from None


def read_card(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The checked ``card.json`` of a model directory.

    Raises :class:`~attn_tutorial.errors.DamagedFileError` (one line: the file, what is wrong, what
    to do) when the card is not JSON, lacks ``model_kind`` or ``recipe`` (with its ``data``), names an
    unknown model kind, or has a ``model_format`` above :data:`MODEL_FORMAT_VERSION` (a directory
    written by a newer package).
    """
    path = Path(directory) / CARD_FILE
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DamagedFileError(f"{path} is not a valid model card (not JSON: {err}); {_remedy(path)}") from None
    if not isinstance(card, dict):
        raise DamagedFileError(f"{path} is not a valid model card (a JSON {type(card).__name__}, not an object); {_remedy(path)}")
    fmt = card.get("model_format", 1)
    if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt > MODEL_FORMAT_VERSION:
        raise DamagedFileError(
            f"{path.parent} is a model directory of format {fmt!r}, written by a newer attn_tutorial "
            f"({card.get('attn_tutorial_version', 'unknown version')}); this is {_package_version()}, which reads format "
            f"{MODEL_FORMAT_VERSION}: upgrade (pip install -U attn-tutorial)"
        )
    missing = [k for k in ("model_kind", "recipe") if k not in card]
    recipe = card.get("recipe")
    if "recipe" in card and not (isinstance(recipe, dict) and isinstance(recipe.get("data"), dict)):
        missing.append("recipe.data")
    if missing:
        raise DamagedFileError(
            f"{path} lacks the field(s) {', '.join(missing)} a model card must have{_newer_version_note(card)}; "
            f"{_remedy(path)}"
        )
    if card["model_kind"] not in MODEL_KINDS:
        raise DamagedFileError(
            f"{path} names model_kind={card['model_kind']!r}; this version knows {', '.join(MODEL_KINDS)}"
            f"{_newer_version_note(card) or '; ' + _remedy(path)}"
        )
    return card


def load_pretrained(
    name_or_dir: str | os.PathLike[str], device: torch.device | str | None = None
) -> tuple[nn.Module, SubwordTokenizer | CharVocab, dict[str, Any]]:
    """Load a model directory: ``(model, tokenizer, card)``.

    ``name_or_dir`` is a shipped model's name (:func:`list_pretrained`) or a model directory
    (:func:`resolve_model_dir`). The float16 weights are upcast to float32 on the CPU, then the model
    moves to ``device`` (default: stays on the CPU) and is put in eval mode.

    Every file is checked: a missing one raises ``FileNotFoundError``; a weights file cut short or
    corrupt, a tokenizer that is not valid, a card with missing fields, weights that do not fit the
    card's model, or a directory written by a newer package raise
    :class:`~attn_tutorial.errors.DamagedFileError` with one line naming the file, what is wrong and
    what to do (:func:`read_card`, :func:`load_tokenizer`).

    >>> model, tok, card = load_pretrained("runs/gru-bahdanau-multi30k")  # doctest: +SKIP
    >>> card["val_bleu"]  # doctest: +SKIP
    """
    directory = resolve_model_dir(name_or_dir)
    card = read_card(directory)
    config_cls, model_cls = MODEL_KINDS[card["model_kind"]]
    weights_path = directory / MODEL_FILE
    newer = _newer_version_note(card)
    expected_bytes = card.get("model_bytes")
    size = weights_path.stat().st_size
    if isinstance(expected_bytes, int) and not isinstance(expected_bytes, bool) and expected_bytes != size:
        raise DamagedFileError(
            f"{weights_path} has {size} bytes but its card records {expected_bytes}: the file is "
            f"{'cut short (an interrupted copy?)' if size < expected_bytes else 'not the one the card describes'}; "
            f"{_remedy(weights_path)}"
        )
    try:
        exported = load_exported(weights_path, dtype=torch.float32, map_location="cpu")
    except Exception as err:  # noqa: BLE001 - safetensors raises its own SafetensorError, json a JSONDecodeError
        detail = " ".join(str(err).split()) or type(err).__name__
        raise DamagedFileError(
            f"{weights_path} cannot be read: it is truncated, corrupt or not an exported model ({detail}){newer}; "
            f"{_remedy(weights_path)}"
        ) from None
    model_config = exported.metadata.get("model_config")
    if not isinstance(model_config, dict):
        raise DamagedFileError(f"{weights_path} holds no model config in its header{newer}; {_remedy(weights_path)}")
    try:
        model = model_cls(config_cls(**model_config))
        model.load_state_dict(exported.weights)
    except (TypeError, ValueError, RuntimeError) as err:
        detail = " ".join(str(err).split())[:300]
        raise DamagedFileError(
            f"{weights_path} does not fit the {card['model_kind']} model its header describes ({detail}){newer}; "
            f"{_remedy(weights_path)}"
        ) from None
    tokenizer = load_tokenizer(directory / TOKENIZER_FILE)
    vocab = model_config.get("src_vocab_size")
    if vocab is not None and vocab != tokenizer.vocab_size:
        raise DamagedFileError(
            f"{directory}: the model expects {vocab} token ids but the tokenizer has {tokenizer.vocab_size} "
            f"({TOKENIZER_FILE} belongs to another model); {_remedy(directory / TOKENIZER_FILE)}"
        )
    if device is not None:
        model.to(torch.device(device))
    model.eval()
    return model, tokenizer, card


def model_position_limit(model: nn.Module) -> int | None:
    """The longest sequence a model's position table covers (a Transformer's ``config.max_len`` with
    sinusoidal or learned positions), or ``None`` when nothing limits it (recurrent models, RoPE).

    Sources of at most this many tokens (EOS included) can be encoded, and decoding can take at most
    this many steps; :func:`translate_sentences` keeps to both.
    """
    config = getattr(model, "config", None)
    if getattr(config, "positions", None) in ("sinusoidal", "learned"):
        limit = getattr(config, "max_len", None)
        return int(limit) if isinstance(limit, int) else None
    return None


#: Sentence-final punctuation, optionally followed by closing quotes or brackets, then whitespace.
_SENTENCE_END = re.compile(r"[.!?\u2026\u3002\uff01\uff1f][\"'\u201d\u2019\u00bb)\]]*\s*$")


def _token_spans(tokenizer: TextTokenizer, text: str) -> list[tuple[int, int]]:
    """``(start, end)`` character offsets in ``text`` of each token ``tokenizer`` makes of it."""
    if isinstance(tokenizer, SubwordTokenizer):
        return [tuple(o) for o in tokenizer.tokenizer.encode(text, add_special_tokens=False).offsets]  # type: ignore[misc]
    if isinstance(tokenizer, CharVocab):
        return [(i, i + 1) for i in range(len(text))]
    spans: list[tuple[int, int]] = []  # any other tokenizer: count the tokens of each word
    for m in re.finditer(r"\S+\s*", text):
        spans += [(m.start(), m.end())] * max(1, len(tokenizer.encode(m.group())))
    return spans


def split_for_model(text: str, tokenizer: TextTokenizer, max_tokens: int) -> list[str]:
    """Cut ``text`` into pieces of at most ``max_tokens`` tokens each, to translate one by one.

    A text that fits is returned whole (``[text]``). Otherwise each piece ends at the last sentence
    punctuation (``. ! ? …`` and their CJK forms, with any closing quotes) that keeps it within
    ``max_tokens``; without one, at the last space; without one either (a very long word, text
    without spaces), at the token limit itself. Pieces are stripped; empty ones are dropped.
    Re-encoding a piece cut inside a word can give a token or two more than counted here;
    :func:`translate_sentences` truncates such a piece to the model's limit.

    >>> split_for_model("ab. cd", CharVocab("abcd. "), 4)
    ['ab.', 'cd']
    """
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens must be a positive int, got {max_tokens!r}")
    spans = _token_spans(tokenizer, text)
    if len(spans) <= max_tokens:
        return [text]
    pieces: list[str] = []
    cs, ts = 0, 0  # the current piece starts at character cs, token ts
    while len(spans) - ts > max_tokens:
        sentence = space = None
        for k in range(ts + max_tokens, ts, -1):  # the piece would end just before token k
            cut = spans[k][0]
            if cut <= cs:
                continue
            head = text[cs:cut]
            if _SENTENCE_END.search(head):
                sentence = k
                break
            if space is None and (head[-1].isspace() or text[cut].isspace()):
                space = k
        k = sentence or space or ts + max_tokens
        cut = spans[k][0]
        if cut <= cs:  # tokens that all start where the piece starts (one character made into many tokens)
            later = [j for j in range(k, len(spans)) if spans[j][0] > cs]
            if not later:
                break
            k = later[0]
            cut = spans[k][0]
        pieces.append(text[cs:cut])
        cs, ts = cut, k
    pieces.append(text[cs:])
    return [p.strip() for p in pieces if p.strip()]


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
    on_split: Callable[[int, int], None] | None = None,
) -> list[str]:
    """Translate ``sentences``: one output string per input, in input order.

    A sentence that is empty (or only whitespace) gives ``""`` without running the model. The others
    are encoded, sorted by length and decoded in batches of ``batch_size`` (greedy when
    ``beam_size == 1``, else :func:`~attn_tutorial.decoding.beam_search` with the GNMT length
    penalty ``length_penalty_alpha``), then put back in input order. Outputs never contain a line
    break (any ``str.splitlines`` separator becomes a space). Runs on the model's device.

    Long sentences: a source may take ``P = min(max_src_len, model_position_limit(model))`` tokens
    with its EOS. A longer sentence is cut by :func:`split_for_model` into pieces of at most ``P - 1``
    tokens (at sentence punctuation where there is some), the pieces are translated like sentences
    and their translations joined with a space; ``on_split(index, pieces)`` is called for each such
    sentence (the CLI warns). A piece whose re-encoding is still too long is truncated.

    Bounded work: each piece's output stops after ``min(max_len, floor(max_len_a * S + max_len_b))``
    tokens, ``S`` its source length with EOS, and never beyond the model's position table; so time
    and memory per sentence grow at most linearly with its length.

    Shape:
        ``N`` strings -> ``N`` strings.
    """
    if isinstance(sentences, str):
        raise TypeError("sentences must be a list of strings, got a single str")
    if not isinstance(beam_size, int) or isinstance(beam_size, bool) or beam_size < 1:
        raise ValueError(f"beam_size must be a positive int, got {beam_size!r}")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if not isinstance(max_src_len, int) or isinstance(max_src_len, bool) or max_src_len < 2:
        raise ValueError(f"max_src_len must be an int >= 2 (a token and EOS), got {max_src_len!r}")
    positions = model_position_limit(model)
    if positions is not None:  # neither the source nor the output may run past the position table
        max_src_len = min(max_src_len, positions)
        max_len = positions if max_len is None else min(max_len, positions)
    keep = max_src_len - 1  # tokens of a piece, without its EOS
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    outputs = [""] * len(sentences)
    todo = [i for i, s in enumerate(sentences) if s.strip()]
    texts = [sentences[i].strip() for i in todo]
    encoded = encode_all(tokenizer, texts)
    # Work units: (sentence index, piece number, ids); a sentence that fits is one piece.
    units: list[tuple[int, int, list[int]]] = []
    for i, text, x in zip(todo, texts, encoded):
        x = list(x)
        if len(x) <= keep:
            units.append((i, 0, x))
            continue
        pieces = split_for_model(text, tokenizer, keep)
        if on_split is not None:
            on_split(i, len(pieces))
        piece_ids = encode_all(tokenizer, pieces)
        units += [(i, k, list(p)[:keep]) for k, p in enumerate(piece_ids)]
    order = sorted(range(len(units)), key=lambda u: len(units[u][2]))
    translated: dict[tuple[int, int], str] = {}
    for start in range(0, len(order), batch_size):
        chunk = [units[u] for u in order[start : start + batch_size]]
        batch = collate([(x, []) for _, _, x in chunk], pad_to_multiple_of=1)
        src, src_mask = batch.src.to(device), batch.src_mask.to(device)
        limits = {"max_len": max_len, "max_len_a": max_len_a, "max_len_b": max_len_b}
        if beam_size == 1:
            result = greedy_decode(model, src, src_mask, **limits)  # type: ignore[arg-type]
        else:
            result = beam_search(model, src, src_mask, beam_size, length_penalty_alpha=length_penalty_alpha, **limits)  # type: ignore[arg-type]
        for (i, k, _), tokens in zip(chunk, result.tokens):
            translated[i, k] = " ".join(tokenizer.decode(tokens).splitlines()).strip()
    for i, k, _ in units:
        if k == 0:
            outputs[i] = translated[i, 0]
        elif translated[i, k]:
            outputs[i] = f"{outputs[i]} {translated[i, k]}".strip()
    return outputs
