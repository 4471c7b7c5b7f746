"""Shared test set-up."""

from __future__ import annotations

import os

import torch

# Every model in the unit tests is tiny: on a 2-core machine, one intra-op thread is several times
# faster than two (no contention with pytest's own process or a parallel job). Set once, here.
torch.set_num_threads(int(os.environ.get("ATTN_TUTORIAL_TEST_THREADS", "1")))

# Hypothesis profiles. "ci" (selected when $CI is set): derandomized, so every CI run tries the same
# examples, and no example database, so a failure found on one machine is not replayed only there;
# a failing example is printed with its reproduction blob. Locally hypothesis's default profile
# (random examples, a local database that replays failures). $HYPOTHESIS_PROFILE overrides both.
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
_hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "default"))
