"""Interrupted training never loses work: SIGKILL at any moment, a full disk, checkpoints of older versions.

A tiny run of the date recipe (a second) is killed with SIGKILL, in a forked child process, at named points
(in the middle of a step, between writing the weights and the training state, between the state and
the JSON that completes a checkpoint, after it, while rotation deletes an old checkpoint) and at
random moments, resumed with ``--resume`` each time, and must end with exactly (bit for bit) the
weights of a run that was never interrupted. The kill points are a test hook of
``attn_tutorial.checkpoint`` and ``attn_tutorial.train`` (``ATTN_TUTORIAL_TEST_KILL_AT=POINT@STEP``). The child is forked from the test
process (``multiprocessing``'s fork start method, POSIX only), so it starts in milliseconds instead of
importing torch again; it runs ``attn_tutorial.cli.main`` exactly as the console script does.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import random
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from _tiny import (  # tests/_tiny.py: the tiny model and batches
    BASE,
    EpochShuffled,
    GlobalRngShuffled,
    assert_same_weights,
    fresh_model,
    make_batches,
    weights,
)
from attn_tutorial import (
    CHECKPOINT_JSON,
    History,
    average_checkpoints,
    export_fp16,
    fit,
    latest_checkpoint,
    load_checkpoint,
)
from attn_tutorial.cli import main
from attn_tutorial.pretrained import MODEL_FILE, load_pretrained
from attn_tutorial.runtime import set_seed

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


# ----------------------------------------------------------------------------------------------
# Ctrl-C and SIGTERM during fit: held to the end of the step, then a checkpoint that resumes exactly
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stop_at", [4, 5, 6])  # 4: an epoch's last batch; 5: mid-epoch; 6: an evaluation is due
def test_keyboard_interrupt_writes_a_checkpoint_that_resumes_exactly(tmp_path: Path, stop_at: int) -> None:
    train, val = make_batches(4, 0), make_batches(2, 1)
    cfg = dataclasses.replace(BASE, early_stopping_patience=50)  # eval_every=3, 4 batches per epoch
    straight = fresh_model(0)
    h_straight = fit(straight, GlobalRngShuffled(train), val, cfg)

    def interrupt(event: Any) -> None:
        if event.kind == "step" and event.step == stop_at:
            raise KeyboardInterrupt

    ckpt_dir = tmp_path / "run"
    cfg = dataclasses.replace(cfg, checkpoint_dir=str(ckpt_dir), keep_last_n=None)  # checkpoints at epoch ends
    with pytest.raises(KeyboardInterrupt):
        fit(fresh_model(0), GlobalRngShuffled(train), val, cfg, callbacks=[interrupt])
    # Step 6 is interrupted before its evaluation ran: no exact checkpoint exists, the epoch-end one stays newest.
    expected = 4 if stop_at == 6 else stop_at
    latest = latest_checkpoint(ckpt_dir)
    assert latest == ckpt_dir / f"step-{expected:08d}" and (latest / CHECKPOINT_JSON).is_file()
    ckpt = load_checkpoint(latest)
    assert ckpt.step == expected and ckpt.training_state is not None
    assert ckpt.training_state.scalars["position"]["global_step"] == expected
    assert History.from_dict(ckpt.metadata["history"]).step == list(range(1, expected + 1))

    set_seed(12345)
    resumed = fresh_model(99)
    h_resumed = fit(resumed, GlobalRngShuffled(train), val, cfg, resume_from=ckpt_dir)
    assert_same_weights(weights(straight), weights(resumed))  # rtol=0, atol=0
    assert h_resumed.train_loss == h_straight.train_loss and h_resumed.lr == h_straight.lr
    assert h_resumed.eval_step == h_straight.eval_step and h_resumed.val_loss == h_straight.val_loss


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_fit_after_the_step_with_a_checkpoint(tmp_path: Path, signum: int) -> None:
    default = signal.SIG_DFL if signum == signal.SIGTERM else signal.default_int_handler
    if signal.getsignal(signum) is not default:
        pytest.skip(f"{signal.Signals(signum).name} has a custom handler here; fit leaves those alone")
    train = make_batches(4, 0)
    cfg = dataclasses.replace(BASE, checkpoint_dir=str(tmp_path), keep_last_n=None)
    straight = fresh_model(0)
    fit(straight, EpochShuffled(train), None, dataclasses.replace(cfg, checkpoint_dir=None))

    def send(event: Any) -> None:
        if event.step == 6:
            os.kill(os.getpid(), signum)  # arrives in the middle of step 6's bookkeeping

    with pytest.raises(KeyboardInterrupt, match=signal.Signals(signum).name):
        fit(fresh_model(0), EpochShuffled(train), None, cfg, callbacks=[send])
    assert signal.getsignal(signum) is default  # fit put the previous handler back
    assert latest_checkpoint(tmp_path) == tmp_path / "step-00000006"
    resumed = fresh_model(3)
    fit(resumed, EpochShuffled(train), None, cfg, resume_from=tmp_path)
    assert_same_weights(weights(straight), weights(resumed))  # rtol=0, atol=0


def test_a_signal_during_the_epoch_end_evaluation_checkpoints_between_epochs(tmp_path: Path) -> None:
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        pytest.skip("SIGTERM has a custom handler here; fit leaves those alone")
    train, val = make_batches(4, 0), make_batches(2, 1)
    cfg = dataclasses.replace(BASE, eval_every="epoch", early_stopping_patience=50)
    straight = fresh_model(0)
    fit(straight, GlobalRngShuffled(train), val, cfg)

    def send(event: Any) -> None:
        if event.kind == "eval" and event.step == 4:
            os.kill(os.getpid(), signal.SIGTERM)

    # checkpoint_every_steps=3: no regular checkpoint at the end of epoch 0 (step 4), only at step 3
    cfg = dataclasses.replace(cfg, checkpoint_dir=str(tmp_path), checkpoint_every_steps=3, keep_last_n=None)
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        fit(fresh_model(0), GlobalRngShuffled(train), val, cfg, callbacks=[send])
    ckpt = load_checkpoint(tmp_path / "step-00000004")
    assert ckpt.training_state is not None
    assert ckpt.training_state.scalars["position"] == {"epoch": 1, "step_in_epoch": 0, "global_step": 4}
    resumed = fresh_model(5)
    h = fit(resumed, GlobalRngShuffled(train), val, cfg, resume_from=tmp_path)
    assert h.eval_step == [4, 8, 12]  # the epoch-0 evaluation is neither lost nor repeated
    assert_same_weights(weights(straight), weights(resumed))  # rtol=0, atol=0
