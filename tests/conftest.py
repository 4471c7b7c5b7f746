"""Shared test set-up: threads, hypothesis profiles, matplotlib, and the Multi30K fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import pytest
import torch

matplotlib.use("Agg")  # no display: every figure of the tests is drawn off-screen

import matplotlib.pyplot as plt  # noqa: E402
from hypothesis import settings as _hypothesis_settings  # noqa: E402

import attn_tutorial as at  # noqa: E402
from attn_tutorial.runtime import DATA_ENV_VAR  # noqa: E402

# Every model in the unit tests is tiny: on a 2-core machine, one intra-op thread is several times
# faster than two (no contention with pytest's own process or a parallel job). Set once, here.
torch.set_num_threads(int(os.environ.get("ATTN_TUTORIAL_TEST_THREADS", "1")))

# Hypothesis profiles. "ci" (selected when $CI is set): derandomized, so every CI run tries the same
# examples, and no example database, so a failure found on one machine is not replayed only there;
# a failing example is printed with its reproduction blob. Locally hypothesis's default profile
# (random examples, a local database that replays failures). $HYPOTHESIS_PROFILE overrides both.
_hypothesis_settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
_hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "default"))


@pytest.fixture(autouse=True)
def _close_figures():
    """Every test starts and ends with no open figure (a leak would only show as memory)."""
    plt.close("all")
    yield
    plt.close("all")


@pytest.fixture(scope="session")
def multi30k_root() -> Path:
    """The folder with the real Multi30K files: skip locally without it, fail in CI."""
    env = os.environ.get(DATA_ENV_VAR)
    msg = (
        f"{DATA_ENV_VAR} is not set: point it at the folder that holds multi30k/ "
        "(the absolute path of ../shared/data) to run the tests that read Multi30K"
    )
    if not env:
        if os.environ.get("CI"):
            pytest.fail(msg + " (CI must run them)")
        pytest.skip(msg)
    root = Path(env) / "multi30k"
    if not root.is_dir():
        pytest.fail(f"{DATA_ENV_VAR}={env!r} has no multi30k/ folder")
    return root


@pytest.fixture(scope="session")
def bpe(multi30k_root: Path) -> at.SubwordTokenizer:
    """A joint 8k BPE trained once per session on train de+en (a few seconds)."""
    train = at.load_multi30k("train", "de", "en")
    return at.train_bpe([s for pair in train for s in pair], vocab_size=8000)
