"""Model cards, read for people: what a shipped model is, how it was trained, what it scores.

Every shipped model (:func:`~attn_tutorial.pretrained.list_pretrained`) carries a ``card.json``: the
exact training command, the recipe the run used, seed, device, wall time, the steps it took, which
weights and which beam length penalty were chosen on validation, and its test BLEU. The chapters of
Part III show the same few facts again and again; this module is the one place that reads them:

* :func:`card_summary` turns a card into a :class:`CardSummary` (typed fields, budget included);
* :func:`describe_card` prints it in a few lines;
* :func:`results_table` lays several cards side by side, budget columns first;
* :func:`load_test_outputs` returns the test-set translations that ``scripts/ship_model.py`` stored
  next to the card, the outputs behind every BLEU on the card (for bootstrap intervals and analysis
  without decoding again);
* :func:`load_experiment` returns the stored runs of an experiment the book reports (one record per
  training run, with its seed, device and timing), written by ``scripts/synthetic_experiments.py``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .pretrained import CARD_FILE, card_length_penalty, read_card, resolve_model_dir

__all__ = [
    "CardSummary",
    "card_summary",
    "describe_card",
    "results_table",
    "load_test_outputs",
    "load_experiment",
    "OUTPUTS_DIR",
    "TEST_SPLITS",
    "COMPARISON_ALPHA",
]

#: Folder of a shipped model that holds its test-set translations, one file per split and decoding.
OUTPUTS_DIR = "outputs"
#: The test sets every shipped card reports.
TEST_SPLITS: tuple[str, ...] = ("test_2016_flickr", "test_2017_flickr")
_DECODINGS = ("greedy", "beam5")
#: The beam length penalty under which models are compared with the same search (Vaswani et al.'s
#: value, and what the GRUs' validation search chose). A model whose card chose another alpha also
#: stores its beam-5 test outputs at this one (``SPLIT.beam5-alpha0.6.txt``), with their BLEU under
#: ``card["eval"]["comparison"]``.
COMPARISON_ALPHA = 0.6


@dataclass(frozen=True)
class CardSummary:
    """The facts of a model card that the chapters show (``None`` where the card does not record one).

    ``epochs`` are the epochs trained (from the history, else the ``--epochs`` of the command, else the
    recipe's); ``batch_tokens`` the batch budget in padded tokens a side. Together with ``steps`` they
    are the training budget: compare models only at equal budgets. ``test_bleu`` maps a split to
    ``{"greedy": ..., "beam5": ...}``; ``decode_seconds`` likewise, for the card's decoding run.
    """

    name: str
    command: str
    model_kind: str
    attention: str | None
    parameters: int
    device: str
    seed: int | None
    epochs: int
    batch_tokens: int
    steps: int | None
    train_hours: float | None
    weights: str
    alpha: float
    interim: bool
    test_bleu: dict[str, dict[str, float]] = field(default_factory=dict)
    decode_seconds: dict[str, dict[str, float]] = field(default_factory=dict)
    decode_threads: int | None = None
    bleu_signature: str | None = None

    @property
    def budget(self) -> tuple[int, int, int | None]:
        """``(epochs, batch_tokens, steps)``: equal budgets make a controlled comparison."""
        return (self.epochs, self.batch_tokens, self.steps)


def _card(card_or_name: Mapping[str, Any] | str) -> tuple[str, dict[str, Any]]:
    if isinstance(card_or_name, str):
        directory = resolve_model_dir(card_or_name)
        return card_or_name, json.loads((directory / CARD_FILE).read_text())
    if not isinstance(card_or_name, Mapping):
        raise TypeError(f"card_or_name must be a shipped model's name or a card (a dict), got {type(card_or_name).__name__}")
    card = dict(card_or_name)
    return str(card.get("name", "model")), card


def _epochs(card: Mapping[str, Any]) -> int:
    history = card.get("history") or {}
    if history.get("epoch"):
        return int(max(history["epoch"])) + 1
    match = re.search(r"--epochs (\d+)", card.get("command", ""))
    return int(match.group(1)) if match else int(card["recipe"]["train"]["epochs"])


def card_summary(card_or_name: Mapping[str, Any] | str) -> CardSummary:
    """The :class:`CardSummary` of a shipped model (by name or directory) or of a card already read."""
    name, card = _card(card_or_name)
    recipe = card.get("recipe") or {}
    evaluation = card.get("eval") or {}
    selection = card.get("selection") or {}
    wall = card.get("wall_time_s")
    return CardSummary(
        name=name,
        command=card["command"],
        model_kind=card.get("model_kind", recipe.get("model_kind", "?")),
        attention=(recipe.get("model") or {}).get("attention"),
        parameters=int(card["num_parameters"]),
        device=str(card.get("device", "?")),
        seed=card.get("seed"),
        epochs=_epochs(card),
        batch_tokens=int(recipe["data"]["max_tokens"]),
        steps=card.get("steps"),
        train_hours=None if wall is None else wall / 3600,
        weights=str(selection.get("chosen", "run export")),
        alpha=card_length_penalty(card),
        interim=bool(card.get("interim", False)),
        test_bleu={k: dict(v) for k, v in (card.get("test_bleu") or {}).items()},
        decode_seconds={k: dict(v) for k, v in (evaluation.get("decode_seconds") or {}).items()},
        decode_threads=evaluation.get("decode_threads"),
        bleu_signature=evaluation.get("bleu_signature"),
    )


def _fmt(value: float | int | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def describe_card(card_or_name: Mapping[str, Any] | str) -> str:
    """A few lines for a reader: command, budget, size, device and time, chosen weights, test BLEU."""
    s = card_summary(card_or_name)
    lines = [
        f"{s.name}{' (interim checkpoint)' if s.interim else ''}: {s.model_kind}"
        + (f", attention {s.attention}" if s.attention else "") + f", {s.parameters:,} parameters",
        f"  command: {s.command}",
        f"  budget:  {s.epochs} epochs of {s.batch_tokens:,}-token batches = {_fmt(s.steps, ',')} steps; "
        f"{_fmt(s.train_hours, '.2f')} h on {s.device}, seed {s.seed}",
        f"  weights: {s.weights}; beam length penalty alpha {s.alpha:g}",
    ]
    for split, scores in s.test_bleu.items():
        lines.append(f"  {split} BLEU: greedy {_fmt(scores.get('greedy'), '.2f')}, beam 5 {_fmt(scores.get('beam5'), '.2f')}")
    return "\n".join(lines)


def results_table(names: Sequence[str], splits: Sequence[str] = TEST_SPLITS) -> str:
    """A fixed-width table of several shipped models: budget columns, then greedy and beam-5 BLEU per split."""
    rows = [card_summary(name) for name in names]
    head = f"{'model':12s} {'params':>7s} {'epochs':>6s} {'batch':>5s} {'steps':>6s} {'train':>7s} {'device':>6s} {'alpha':>5s}"
    head += "".join(f" | {split[5:9] + ' greedy':>11s} {'beam5':>6s}" for split in splits)
    lines = [head]
    for s in rows:
        line = (f"{s.name + ('*' if s.interim else ''):12s} {s.parameters / 1e6:6.2f}M {s.epochs:6d} {s.batch_tokens:5d} "
                f"{_fmt(s.steps, '6d'):>6s} {_fmt(s.train_hours, '6.2f') + 'h':>7s} {s.device:>6s} {s.alpha:5.2f}")
        for split in splits:
            scores = s.test_bleu.get(split, {})
            line += f" | {_fmt(scores.get('greedy'), '11.2f'):>11s} {_fmt(scores.get('beam5'), '6.2f'):>6s}"
        lines.append(line)
    if any(s.interim for s in rows):
        lines.append("* interim checkpoint: training still running, no test scores yet")
    return "\n".join(lines)


def load_test_outputs(name: str, split: str = "test_2016_flickr", decoding: str = "greedy",
                      length_penalty_alpha: float | None = None) -> list[str]:
    """The translations of ``split`` behind the card's BLEU (``decoding``: ``"greedy"`` or ``"beam5"``,
    beam search with the card's length penalty), one detokenised string per source sentence.

    ``length_penalty_alpha`` (beam 5 only): ``None`` or the card's own alpha for the outputs behind the
    card's beam-5 BLEU; :data:`COMPARISON_ALPHA` for beam 5 at that alpha, which every shipped model
    has (stored separately where the card chose another alpha), so that models can be compared under
    the same search.

    ``scripts/ship_model.py`` writes them when it scores a model; ``tests/test_shipped_models.py``
    checks that they give the card's BLEU and that decoding again reproduces them.
    """
    if split not in TEST_SPLITS:
        raise ValueError(f"split must be one of {TEST_SPLITS}, got {split!r}")
    if decoding not in _DECODINGS:
        raise ValueError(f"decoding must be one of {_DECODINGS}, got {decoding!r}")
    model_dir = resolve_model_dir(name)
    label = decoding
    if length_penalty_alpha is not None:
        if decoding != "beam5":
            raise ValueError(f"length_penalty_alpha applies to decoding='beam5' only, got decoding={decoding!r}")
        own = card_length_penalty(read_card(model_dir))
        if length_penalty_alpha != own:
            if length_penalty_alpha != COMPARISON_ALPHA:
                raise ValueError(f"length_penalty_alpha must be None or {own} (the card's) or {COMPARISON_ALPHA} "
                                 f"(stored for comparisons), got {length_penalty_alpha!r}")
            label = f"beam5-alpha{COMPARISON_ALPHA}"
    path = model_dir / OUTPUTS_DIR / f"{split}.{label}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: this model's test outputs were not stored; "
                                f"run `python scripts/ship_model.py --name {name} --reevaluate` to write them")
    return path.read_text(encoding="utf-8").split("\n")[:-1]


#: Where the stored experiment results live (inside the package, so an installed package has them).
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def load_experiment(name: str) -> list[dict[str, Any]]:
    """The stored runs of experiment ``name`` (``RESULTS_DIR/NAME.jsonl``), one dict per training run.

    Each record holds the run's settings (e.g. ``attention``, ``hidden``, ``seed``), its measurements and
    the command, device, thread count and torch version that produced it. The chapters read these
    instead of training for minutes; ``scripts/synthetic_experiments.py NAME`` reproduces them.
    """
    path = RESULTS_DIR / f"{name}.jsonl"
    if not path.is_file():
        known = sorted(p.stem for p in RESULTS_DIR.glob("*.jsonl")) if RESULTS_DIR.is_dir() else []
        raise FileNotFoundError(f"no stored results for experiment {name!r} ({path}); known: {known}; "
                                f"run `python scripts/synthetic_experiments.py {name}` to produce them")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
