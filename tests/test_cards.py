"""Model cards read for people (attn_tutorial.cards): summaries, tables and the stored test outputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import attn_tutorial as at
from attn_tutorial.cards import OUTPUTS_DIR
from attn_tutorial.pretrained import CARD_FILE, pretrained_root


def _copy(name: str, tmp_path: Path) -> Path:
    dest = tmp_path / name
    shutil.copytree(pretrained_root() / name, dest)
    return dest


def test_summary_reads_the_budget_from_the_card(tmp_path: Path) -> None:
    card = json.loads((pretrained_root() / "bahdanau" / CARD_FILE).read_text())
    s = at.card_summary(card)
    assert s.name == "bahdanau" and s.attention == "bahdanau" and s.model_kind == "seq2seq"
    assert s.budget == (max(card["history"]["epoch"]) + 1, card["recipe"]["data"]["max_tokens"], card["steps"])
    assert s.parameters == card["num_parameters"] and s.alpha == at.card_length_penalty(card)
    assert s.test_bleu["test_2016_flickr"]["greedy"] == card["test_bleu"]["test_2016_flickr"]["greedy"]
    # Without a history, the epochs come from the command's --epochs, then from the recipe.
    del card["history"]
    card["command"] = "attn-tutorial train --recipe x --epochs 7"
    assert at.card_summary(card).epochs == 7
    card["command"] = "attn-tutorial train --recipe x"
    assert at.card_summary(card).epochs == card["recipe"]["train"]["epochs"]


def test_describe_and_table_show_every_budget_and_score() -> None:
    names = at.list_pretrained()
    table = at.results_table(names).splitlines()
    assert len(table) == 1 + len(names) and table[0].startswith("model")
    for name, line in zip(names, table[1:]):
        s = at.card_summary(name)
        assert line.startswith(name) and f"{s.batch_tokens:5d}" in line and f"{s.test_bleu['test_2016_flickr']['beam5']:6.2f}" in line
        text = at.describe_card(name)
        assert s.command in text and f"{s.batch_tokens:,}-token batches" in text and f"{s.parameters:,} parameters" in text


def test_load_test_outputs_reads_one_line_per_sentence(tmp_path: Path) -> None:
    d = _copy("gru-none", tmp_path)
    shutil.rmtree(d / OUTPUTS_DIR, ignore_errors=True)
    with pytest.raises(FileNotFoundError, match="--reevaluate"):
        at.load_test_outputs(str(d))
    (d / OUTPUTS_DIR).mkdir()
    (d / OUTPUTS_DIR / "test_2016_flickr.greedy.txt").write_text("a dog .\n\ntwo men\n", encoding="utf-8")
    assert at.load_test_outputs(str(d)) == ["a dog .", "", "two men"]
    with pytest.raises(ValueError, match="split must be one of"):
        at.load_test_outputs(str(d), "val")
    with pytest.raises(ValueError, match="decoding must be one of"):
        at.load_test_outputs(str(d), decoding="beam4")
    with pytest.raises(TypeError, match="card_or_name"):
        at.card_summary(42)  # type: ignore[arg-type]


def test_load_test_outputs_at_the_comparison_alpha(tmp_path: Path) -> None:
    d = _copy("gru-none", tmp_path)
    card = json.loads((d / "card.json").read_text())
    (d / OUTPUTS_DIR).mkdir(exist_ok=True)
    (d / OUTPUTS_DIR / "test_2016_flickr.beam5.txt").write_text("own alpha\n", encoding="utf-8")
    (d / OUTPUTS_DIR / "test_2016_flickr.beam5-alpha0.6.txt").write_text("comparison alpha\n", encoding="utf-8")
    for own, at_comparison in ((0.6, ["own alpha"]), (1.5, ["comparison alpha"])):
        card["eval"]["length_penalty_alpha"] = own
        (d / "card.json").write_text(json.dumps(card))
        assert at.load_test_outputs(str(d), "test_2016_flickr", "beam5", length_penalty_alpha=at.COMPARISON_ALPHA) == at_comparison
        assert at.load_test_outputs(str(d), "test_2016_flickr", "beam5", length_penalty_alpha=own) == ["own alpha"]
        assert at.load_test_outputs(str(d), "test_2016_flickr", "beam5") == ["own alpha"]
    with pytest.raises(ValueError, match=r"length_penalty_alpha must be None or 1.5 \(the card's\) or 0.6"):
        at.load_test_outputs(str(d), "test_2016_flickr", "beam5", length_penalty_alpha=1.0)
    with pytest.raises(ValueError, match="applies to decoding='beam5' only"):
        at.load_test_outputs(str(d), "test_2016_flickr", "greedy", length_penalty_alpha=0.6)


def test_load_experiment_reads_json_lines_and_names_what_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from attn_tutorial import cards

    monkeypatch.setattr(cards, "RESULTS_DIR", tmp_path)
    (tmp_path / "toy.jsonl").write_text('{"seed": 0, "x": 1.5}\n\n{"seed": 1, "x": 2.5}\n', encoding="utf-8")
    assert at.load_experiment("toy") == [{"seed": 0, "x": 1.5}, {"seed": 1, "x": 2.5}]
    with pytest.raises(FileNotFoundError, match=r"no stored results for experiment 'nope'.*known: \['toy'\].*synthetic_experiments.py nope"):
        at.load_experiment("nope")
