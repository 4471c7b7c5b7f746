"""Shared test set-up."""

from __future__ import annotations

import os

import torch

# Every model in the unit tests is tiny: on a 2-core machine, one intra-op thread is several times
# faster than two (no contention with pytest's own process or a parallel job). Set once, here.
torch.set_num_threads(int(os.environ.get("ATTN_TUTORIAL_TEST_THREADS", "1")))
