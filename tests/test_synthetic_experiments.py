"""scripts/synthetic_experiments.py: its small pure functions, and that the stored results are the runs it makes.

Nothing here trains a model: the experiments take minutes to tens of minutes, and the chapters read their
stored results (``at.load_experiment``). These tests check that those results are complete and were made
with the settings the script now has, so that a change to the script without re-running it fails here.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

import attn_tutorial as at

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def se():  # the script, imported as a module (it is not part of the package)
    spec = importlib.util.spec_from_file_location("synthetic_experiments", ROOT / "scripts" / "synthetic_experiments.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_length_at_half_interpolates_and_says_when_it_never_falls(se) -> None:
    assert se.length_at_half([3, 4, 5], [1.0, 0.6, 0.2]) == pytest.approx(4.25)
    assert se.length_at_half([3, 4, 5], [1.0, 0.9, 0.8]) is None
    assert se.length_at_half([3, 4, 5], [0.4, 0.3, 0.2]) == 3.0
    assert se.length_at_half([3, 4], [0.8, 0.5]) is None  # exactly 0.5 is not below it


def test_chosen_rate_waits_for_the_whole_grid_and_breaks_ties_on_validation_loss(se) -> None:
    lrs = se.DATE_LRS
    runs = [{"decoder": "none", "seed": 0, "lr": lr, "val_exact": 0.5, "val_loss": [1.0, 0.5 - i / 100]}
            for i, lr in enumerate(lrs)]
    assert se.chosen_lr(runs[:-1], "none") is None
    assert se.chosen_lr(runs, "none") == lrs[-1]  # equal exact match: the lowest final validation loss
    runs[0]["val_exact"] = 0.6
    assert se.chosen_lr(runs, "none") == lrs[0]
    todo = se.date_runs(runs, all_seeds=False)
    assert {(r["decoder"], r["lr"], r["seed"]) for r in todo if r["seed"]} == {("none", lrs[0], 1), ("none", lrs[0], 2)}


def test_stored_bottleneck_runs_are_the_scripts_runs(se) -> None:
    stored = at.load_experiment("bottleneck")
    assert sorted((r["attention"], r["hidden"], r["seed"]) for r in stored) == sorted(
        (r["attention"], r["hidden"], r["seed"]) for r in se.bottleneck_runs())
    for r in stored:
        assert r["lengths"] == se.REV_TEST_LENGTHS and len(r["exact"]) == len(r["lengths"])
        assert r["steps"] <= se.REV_MAX_STEPS and not r["hit_step_cap"] and r["stopped_early"]
        expected = se.length_at_half(r["lengths"], r["exact"])
        assert (expected is None and r["length_at_50"] is None) or math.isclose(expected, r["length_at_50"])


def test_stored_date_runs_cover_the_sweep_and_the_chosen_rates(se) -> None:
    stored = at.load_experiment("dates")
    assert {r["steps"] for r in stored} == {se.DATE_STEPS}
    for decoder in se.DATE_DECODERS:
        assert {r["lr"] for r in stored if r["decoder"] == decoder and r["seed"] == 0} == set(se.DATE_LRS)
        lr = se.chosen_lr(stored, decoder)
        assert sorted(r["seed"] for r in stored if r["decoder"] == decoder and r["lr"] == lr) == list(se.DATE_SEEDS)
    assert not [run for run in se.date_runs(stored, all_seeds=False)
                if not any(all(r.get(k) == v for k, v in run.items()) for r in stored)], "runs missing"
