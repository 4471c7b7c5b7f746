"""Interrupted training never loses work: SIGKILL at any moment, a full disk, checkpoints of older versions.

A tiny run of the date recipe (a second) is killed with SIGKILL, in a forked child process, at named points
(in the middle of a step, between writing the weights and the training state, between the state and
the JSON that completes a checkpoint, after it, while rotation deletes an old checkpoint) and at
random moments, resumed with ``--resume`` each time, and must end with exactly (bit for bit) the
weights of a run that was never interrupted. The kill points are a test hook of
``attn_tutorial.train`` (``ATTN_TUTORIAL_TEST_KILL_AT=POINT@STEP``). The child is forked from the test
process (``multiprocessing``'s fork start method, POSIX only), so it starts in milliseconds instead of
importing torch again; it runs ``attn_tutorial.cli.main`` exactly as the console script does.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from attn_tutorial.cli import main
from attn_tutorial.pretrained import MODEL_FILE, load_pretrained
from attn_tutorial.train import CHECKPOINT_JSON, average_checkpoints, export_fp16, latest_checkpoint, load_checkpoint

FIXTURE = Path(__file__).parent / "fixtures" / "run-v0.1.0"  # written by the checkpoint code of 0.1.0

TINY_DATES = [
    "--recipe", "gru-bahdanau-dates", "--device", "cpu", "--threads", "1",
    "--set", "data.n_train=64", "--set", "data.n_val=12", "--set", "data.n_test=12",
    "--set", "data.max_tokens=256", "--set", "model.emb_dim=8", "--set", "model.hidden_dim=12",
    "--set", "train.log_every=1", "--set", "train.keep_last_n=2",
]  # fmt: skip


pytestmark = pytest.mark.skipif(
    sys.platform == "win32" or "fork" not in multiprocessing.get_all_start_methods(), reason="needs fork and SIGKILL"
)


def _child(argv: list[str], kill_at: str | None) -> None:
    os.environ.pop("ATTN_TUTORIAL_TEST_KILL_AT", None)
    if kill_at is not None:
        os.environ["ATTN_TUTORIAL_TEST_KILL_AT"] = kill_at
    sys.exit(main(argv))


def _start(out: Path, *extra: str, kill_at: str | None = None) -> multiprocessing.process.BaseProcess:
    """``attn-tutorial train`` in a forked child process (killed by the hook at ``kill_at``, if given)."""
    argv = ["train", *TINY_DATES, "--out", str(out), *extra]
    proc = multiprocessing.get_context("fork").Process(target=_child, args=(argv, kill_at))
    proc.start()
    return proc


def _cli(out: Path, *extra: str, kill_at: str | None = None, timeout: float = 300) -> int:
    """Run to the end (or to the kill); the exit code, ``-9`` when SIGKILL ended it."""
    proc = _start(out, *extra, kill_at=kill_at)
    proc.join(timeout)
    if proc.exitcode is None:
        proc.kill()
        raise AssertionError(f"train did not finish in {timeout} s")
    return int(proc.exitcode)


def _weights(ckpt_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(ckpt_dir, load_training_state=False).weights


def _assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def _straight(out: Path, steps: int, every: int) -> None:
    """The uninterrupted reference run, in this process (one thread, as the subprocesses)."""
    argv = ["train", *TINY_DATES, "--out", str(out), "--max-steps", str(steps), "--set", f"train.checkpoint_every_steps={every}"]
    assert main(argv) == 0


def _no_debris(ckpt_root: Path) -> None:
    for p in ckpt_root.iterdir():
        assert not p.name.startswith("."), f"left behind: {p.name}"
        assert (p / CHECKPOINT_JSON).is_file(), f"incomplete checkpoint left: {p.name}"
        assert not list(p.glob(".*.part")), f"temporary files left in {p.name}"


def test_sigkill_at_named_points_then_resume_gives_the_uninterrupted_weights(tmp_path: Path) -> None:
    steps, every = 10, 2
    straight = tmp_path / "straight"
    _straight(straight, steps, every)
    run = tmp_path / "killed"
    common = ["--max-steps", str(steps), "--set", f"train.checkpoint_every_steps={every}"]
    # (kill point, the newest complete checkpoint it must leave behind)
    plan = [
        ("step@1", None),  # before the first checkpoint: --resume starts from step 0
        ("step@3", 2),  # in the middle of a step (after the backward pass, before the update)
        ("weights-written@4", 2),  # step-4's weights on disk, its state and JSON not
        ("rotating@2", 6),  # step-6 complete; step-2 renamed out of the way by rotation, not yet deleted
        ("state-written@8", 6),  # weights and state on disk, the JSON that completes it not
        ("json-written@8", 8),  # complete, but older checkpoints not yet rotated away
    ]
    for k, (point, expected) in enumerate(plan):
        code = _cli(run, *common, *(["--resume"] if k else []), kill_at=point)
        assert code == -signal.SIGKILL, f"{point}: not killed (exit code {code})"
        latest = latest_checkpoint(run / "checkpoints")
        assert (latest.name if latest else None) == (f"step-{expected:08d}" if expected else None), point
        if latest is not None:
            load_checkpoint(latest)  # complete and intact (SHA-256 checked)
    assert _cli(run, *common, "--resume") == 0
    final = run / "checkpoints" / f"step-{steps:08d}"
    _assert_bitwise_equal(_weights(final), _weights(straight / "checkpoints" / f"step-{steps:08d}"))
    _assert_bitwise_equal(load_file(str(run / MODEL_FILE)), load_file(str(straight / MODEL_FILE)))
    assert load_checkpoint(final).metadata["history"]["step"] == list(range(1, steps + 1))
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000008", "step-00000010"]
    _no_debris(run / "checkpoints")
    assert "starting from step 0" in (run / "train.log").read_text()


def _wait_for(path: Path, text: str, timeout: float = 120) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if path.is_file() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.02)
    raise AssertionError(f"{text!r} never appeared in {path}")


def test_sigkill_at_random_moments_then_resume_gives_the_uninterrupted_weights(tmp_path: Path) -> None:
    """A checkpoint every step, so most random moments fall inside a checkpoint write or a rotation."""
    steps, every = 24, 1
    straight = tmp_path / "straight"
    _straight(straight, steps, every)
    run = tmp_path / "killed"
    common = ["--max-steps", str(steps), "--set", f"train.checkpoint_every_steps={every}"]
    rng = random.Random(15)
    for k, after_step in enumerate((3, 9, 16)):
        proc = _start(run, *common, *(["--resume"] if k else []))
        try:
            _wait_for(run / "train.log", f"step {after_step} epoch")
            time.sleep(rng.uniform(0.0, 0.1))
        finally:
            assert proc.pid is not None
            os.kill(proc.pid, signal.SIGKILL)
            proc.join(60)
        latest = latest_checkpoint(run / "checkpoints")
        assert latest is not None
        load_checkpoint(latest)  # whatever the moment, the newest complete checkpoint is intact
    assert _cli(run, *common, "--resume") == 0
    _assert_bitwise_equal(
        _weights(run / "checkpoints" / f"step-{steps:08d}"), _weights(straight / "checkpoints" / f"step-{steps:08d}")
    )
    _no_debris(run / "checkpoints")


def test_a_run_written_by_the_previous_checkpoint_code_loads_resumes_and_exports_as_before(tmp_path: Path) -> None:
    """tests/fixtures/run-v0.1.0: a 2-step run written by attn_tutorial 0.1.0 before issue 15's changes."""
    run = tmp_path / "old"
    shutil.copytree(FIXTURE, run)
    ckpt_dir = run / "checkpoints" / "step-00000002"
    old = load_checkpoint(ckpt_dir)
    assert old.step == 2 and old.training_state is not None and old.metadata["format_version"] == 1
    # Its export is what the current export_fp16 writes from its checkpoint: the same tensors and header
    # (the order of the header's keys is safetensors' own and varies from process to process).
    again = export_fp16(ckpt_dir, tmp_path / "again.safetensors")
    _assert_bitwise_equal(load_file(str(again)), load_file(str(FIXTURE / MODEL_FILE)))
    with safe_open(str(again), framework="pt") as new, safe_open(str(FIXTURE / MODEL_FILE), framework="pt") as shipped:
        assert new.metadata() == shipped.metadata()
    _assert_bitwise_equal(average_checkpoints([ckpt_dir]), old.weights)
    model, _, card = load_pretrained(run)  # a card without model_format or model_bytes checks
    assert "model_format" not in card
    # Resume it to step 4 with today's code: the same weights as a fresh 4-step run (bit for bit).
    argv = ["train", *TINY_DATES, "--set", "train.checkpoint_every_steps=2", "--max-steps", "4"]
    assert main([*argv, "--out", str(run), "--resume"]) == 0
    assert main([*argv, "--out", str(tmp_path / "fresh")]) == 0
    _assert_bitwise_equal(
        _weights(run / "checkpoints" / "step-00000004"), _weights(tmp_path / "fresh" / "checkpoints" / "step-00000004")
    )
    assert json.loads((run / "card.json").read_text())["model_format"] == 1
