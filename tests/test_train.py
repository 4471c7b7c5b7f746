"""The training loop (attn_tutorial.train): config, schedule, loss, mixed precision, fit, early stopping.

Everything runs on CPU with the tiny model and batches of ``tests/_tiny.py``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import attn_tutorial
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
    History,
    TrainConfig,
    amp_settings,
    evaluate_loss,
    fit,
    label_smoothed_cross_entropy,
    latest_checkpoint,
    load_checkpoint,
    lr_at,
    save_checkpoint,
)
from attn_tutorial import train as train_mod
from attn_tutorial.runtime import autocast_dtype, set_seed

# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("epochs", 0),
        ("epochs", 1.5),
        ("max_steps", 0),
        ("lr", -1e-3),
        ("lr", float("nan")),
        ("betas", (0.9,)),
        ("betas", (0.9, 1.0)),
        ("weight_decay", -0.1),
        ("warmup_steps", -1),
        ("schedule", "exponential"),
        ("min_lr", 1.0),
        ("grad_clip", 0.0),
        ("label_smoothing", 1.0),
        ("early_stopping_patience", 0),
        ("eval_every", "step"),
        ("eval_every", 0),
        ("keep_last_n", 0),
        ("keep_every_steps", 0),
        ("seed", -3),
        ("device", "cuba"),
        ("amp", "yes"),
        ("log_every", 0),
        ("progress", 1),
        ("checkpoint_every_steps", 5),  # without a checkpoint_dir
    ],
)
def test_config_validation_names_field_and_value(field: str, value: Any) -> None:
    with pytest.raises(ValueError) as info:
        dataclasses.replace(TrainConfig(), **{field: value})
    message = str(info.value)
    assert f"TrainConfig.{field}" in message
    assert repr(value) in message


def test_config_variants_and_json_round_trip(tmp_path: Path) -> None:
    cfg = dataclasses.replace(BASE, checkpoint_dir=tmp_path, betas=[0.8, 0.9])  # type: ignore[arg-type]
    assert cfg.betas == (0.8, 0.9) and cfg.checkpoint_dir == str(tmp_path)
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 1.0  # type: ignore[misc]


def test_package_reexports_train() -> None:
    for name in train_mod.__all__:
        assert getattr(attn_tutorial, name) is getattr(train_mod, name)


# ----------------------------------------------------------------------------------------------
# Learning-rate schedule
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["constant", "inverse_sqrt", "cosine", "linear"])
def test_lr_warmup_is_linear_from_near_zero_to_peak(schedule: str) -> None:
    cfg = TrainConfig(lr=2e-3, warmup_steps=10, schedule=schedule, max_steps=100)
    assert lr_at(0, cfg) == 0.0
    warm = [lr_at(s, cfg) for s in range(1, 11)]
    assert warm[0] == pytest.approx(2e-3 / 10)
    np.testing.assert_allclose(np.diff(warm), 2e-3 / 10, rtol=1e-12)  # equal increments: linear
    assert warm[-1] == pytest.approx(2e-3)
    assert max(lr_at(s, cfg) for s in range(0, 150)) == pytest.approx(2e-3)


def test_lr_decay_shapes() -> None:
    lr, lo, w, total = 1e-3, 1e-5, 10, 110
    base = TrainConfig(lr=lr, min_lr=lo, warmup_steps=w, max_steps=total)
    const = dataclasses.replace(base, schedule="constant")
    assert all(lr_at(s, const) == lr for s in range(w, 200))
    inv = dataclasses.replace(base, schedule="inverse_sqrt")
    assert lr_at(4 * w, inv) == pytest.approx(lr / 2)  # lr * sqrt(w / s)
    assert lr_at(100 * w, inv) == pytest.approx(lr / 10)
    for name in ("cosine", "linear"):
        cfg = dataclasses.replace(base, schedule=name)
        decay = [lr_at(s, cfg) for s in range(w, total + 20)]
        assert all(b <= a for a, b in zip(decay, decay[1:])), f"{name} must not increase after warmup"
        assert lr_at(w + 50, cfg) == pytest.approx((lr + lo) / 2)  # half way through the decay
        assert lr_at(total, cfg) == pytest.approx(lo) and lr_at(total + 50, cfg) == pytest.approx(lo)
    cos, lin = dataclasses.replace(base, schedule="cosine"), dataclasses.replace(base, schedule="linear")
    assert lr_at(w + 25, cos) > lr_at(w + 25, lin)  # cosine stays high longer...
    assert lr_at(w + 75, cos) < lr_at(w + 75, lin)  # ...then falls below the line
    # Vaswani's d^-0.5 min(s^-0.5, s w^-1.5), rescaled to peak lr:
    d_model = 64
    for s in (1, 5, 10, 37, 400):
        vaswani = d_model**-0.5 * min(s**-0.5, s * w**-1.5)
        assert lr_at(s, dataclasses.replace(inv, min_lr=0.0)) == pytest.approx(vaswani * lr / (d_model**-0.5 * w**-0.5))


@settings(max_examples=60, deadline=None)
@given(
    step=st.integers(0, 500),
    warmup=st.integers(0, 50),
    total=st.integers(1, 300),
    schedule=st.sampled_from(["constant", "inverse_sqrt", "cosine", "linear"]),
)
def test_lr_is_bounded_by_peak(step: int, warmup: int, total: int, schedule: str) -> None:
    cfg = TrainConfig(lr=1e-3, min_lr=1e-5, warmup_steps=warmup, schedule=schedule)
    value = lr_at(step, cfg, total_steps=total)
    assert 0.0 <= value <= 1e-3 * (1 + 1e-12)
    if step > warmup and step > 0:
        assert value >= 1e-5 * (1 - 1e-12) or schedule == "constant"


def test_lr_decaying_schedule_needs_total_steps() -> None:
    with pytest.raises(ValueError, match="total_steps"):
        lr_at(5, TrainConfig(schedule="cosine"))
    with pytest.raises(ValueError, match="step must be"):
        lr_at(-1, TrainConfig())


# ----------------------------------------------------------------------------------------------
# Loss
# ----------------------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    B=st.integers(1, 3),
    T=st.integers(1, 5),
    V=st.integers(2, 7),
    smoothing=st.sampled_from([0.0, 0.1, 0.37]),
    seed=st.integers(0, 2**16),
)
def test_label_smoothed_cross_entropy_matches_pytorch_float64(B: int, T: int, V: int, smoothing: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(B, T, V, generator=g, dtype=torch.float64)).requires_grad_()
    target = torch.randint(0, V, (B, T), generator=g)
    mask = torch.rand(B, T, generator=g) < 0.7
    mask[0, 0] = True  # at least one real token
    ours = label_smoothed_cross_entropy(logits, target, mask, smoothing)
    ref_logits = logits.detach().clone().requires_grad_()
    ref = F.cross_entropy(
        ref_logits.reshape(-1, V), target.masked_fill(~mask, -100).reshape(-1), ignore_index=-100, label_smoothing=smoothing
    )
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(logits.grad, ref_logits.grad, rtol=1e-12, atol=1e-12)
    assert bool((logits.grad[~mask] == 0).all())  # padding gets no gradient
    total = label_smoothed_cross_entropy(logits.detach(), target, mask, smoothing, reduction="sum")
    torch.testing.assert_close(total, ref.detach() * mask.sum(), rtol=1e-12, atol=1e-12)


def test_loss_is_per_real_token_and_ignores_padding_values() -> None:
    logits = torch.randn(2, 4, 5, dtype=torch.float64)
    target = torch.randint(0, 5, (2, 4))
    mask = torch.tensor([[True, True, False, False], [True, False, False, False]])
    garbage = target.clone()
    garbage[~mask] = 4 - garbage[~mask]
    a = label_smoothed_cross_entropy(logits, target, mask, 0.1)
    b = label_smoothed_cross_entropy(logits, garbage, mask, 0.1)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    per_token = F.cross_entropy(logits[mask], target[mask], label_smoothing=0.1, reduction="none")
    torch.testing.assert_close(a, per_token.mean(), rtol=1e-12, atol=1e-12)  # 3 tokens, not 2 sentences


def test_loss_rejects_bad_inputs() -> None:
    logits, target, mask = torch.randn(2, 3, 4), torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"target must be an integer tensor of shape \(2, 3\)"):
        label_smoothed_cross_entropy(logits, target[:, :2], mask)
    with pytest.raises(ValueError, match="mask must be a bool tensor"):
        label_smoothed_cross_entropy(logits, target, mask.long())
    with pytest.raises(ValueError, match="smoothing"):
        label_smoothed_cross_entropy(logits, target, mask, 1.0)


# ----------------------------------------------------------------------------------------------
# Mixed precision settings (the CUDA paths are checked by their logic; this machine has no GPU)
# ----------------------------------------------------------------------------------------------


def test_amp_off_on_cpu_and_bf16_when_forced() -> None:
    assert autocast_dtype("cpu") is None
    assert amp_settings("cpu") == (None, False)
    assert amp_settings("cpu", amp=False) == (None, False)
    assert amp_settings("cpu", amp=True) == (torch.bfloat16, False)
    with pytest.raises(ValueError, match="amp=True"):
        amp_settings("mps", amp=True)


@pytest.mark.parametrize(("bf16", "expected"), [(True, (torch.bfloat16, False)), (False, (torch.float16, True))])
def test_amp_on_cuda_uses_bf16_or_fp16_with_scaler(monkeypatch: pytest.MonkeyPatch, bf16: bool, expected: tuple) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    assert autocast_dtype("cuda") == expected[0]
    assert amp_settings("cuda") == expected
    assert amp_settings("cuda", amp=True) == expected
    assert amp_settings("cuda:0", amp=False) == (None, False)


def test_bf16_autocast_training_runs_on_cpu() -> None:
    model = fresh_model()
    history = fit(model, make_batches(3, 0), config=dataclasses.replace(BASE, epochs=1, amp=True, eval_every="epoch"))
    assert history.amp_dtype == "bfloat16" and history.device == "cpu"
    assert all(math.isfinite(x) for x in history.train_loss)


# ----------------------------------------------------------------------------------------------
# fit: history, determinism, exact resume
# ----------------------------------------------------------------------------------------------


def test_fit_learns_and_fills_history() -> None:
    train, val = make_batches(6, 0), make_batches(2, 1)
    cfg = dataclasses.replace(BASE, epochs=4, lr=3e-2, eval_every="epoch", schedule="constant", warmup_steps=0)
    model = fresh_model(dropout=0.0)
    before = evaluate_loss(model, val)
    history = fit(model, train, val, cfg)
    n = 4 * 6
    assert history.step == list(range(1, n + 1)) and history.epoch == [e for e in range(4) for _ in range(6)]
    assert len(history.train_loss) == len(history.lr) == len(history.grad_norm) == len(history.tokens_per_sec) == n
    assert history.eval_step == [6, 12, 18, 24]
    torch.testing.assert_close(torch.tensor(history.val_perplexity, dtype=torch.float64), torch.tensor(history.val_loss, dtype=torch.float64).exp(), rtol=1e-12, atol=0)
    assert history.val_loss[-1] < before  # it learned something
    assert history.best_val_loss == min(history.val_loss)
    assert history.best_step == history.eval_step[history.val_loss.index(min(history.val_loss))]
    assert history.val_loss[-1] == pytest.approx(evaluate_loss(model, val), rel=1e-6)
    assert history.wall_time > 0 and all(t > 0 for t in history.tokens_per_sec)
    assert model.training  # mode restored (it came in training mode)
    assert History.from_dict(json.loads(json.dumps(history.to_dict()))) == history


@pytest.mark.parametrize(("max_steps", "evals", "position"), [(6, [4], (1, 2)), (8, [4, 8], (2, 0))])
def test_max_steps_stops_mid_epoch_or_after_the_epoch_end_work(
    tmp_path: Path, max_steps: int, evals: list[int], position: tuple[int, int]
) -> None:
    cfg = dataclasses.replace(BASE, epochs=5, max_steps=max_steps, eval_every="epoch", checkpoint_dir=str(tmp_path))
    history = fit(fresh_model(), make_batches(4, 0), make_batches(1, 1), cfg)
    assert history.step[-1] == max_steps and history.eval_step == evals
    ckpt = load_checkpoint(latest_checkpoint(tmp_path))  # type: ignore[arg-type]
    assert ckpt.training_state is not None and ckpt.step == max_steps
    pos = ckpt.training_state.scalars["position"]
    assert (pos["epoch"], pos["step_in_epoch"]) == position
    assert history.lr[-1] == pytest.approx(BASE.min_lr)  # the cosine reached its floor at max_steps


def test_grad_norm_is_recorded_before_clipping() -> None:
    batches = make_batches(1, 3)
    cfg = dataclasses.replace(BASE, epochs=1, grad_clip=1e-3, warmup_steps=0, schedule="constant")
    model = fresh_model(dropout=0.0)
    reference = fresh_model(dropout=0.0)
    reference.train()
    loss = label_smoothed_cross_entropy(reference(*(getattr(batches[0], n) for n in ("src", "src_mask", "tgt_in", "tgt_mask"))), batches[0].tgt_out, batches[0].tgt_mask, 0.1)
    loss.backward()
    expected = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in reference.parameters()]))
    history = fit(model, batches, config=cfg)
    assert history.grad_norm[0] == pytest.approx(float(expected), rel=1e-5)
    assert history.grad_norm[0] > 1e-3  # so clipping was active


def test_same_seed_gives_identical_losses_and_other_seed_does_not() -> None:
    train, val = make_batches(4, 0), make_batches(2, 1)

    def run(seed: int) -> tuple[History, dict[str, Tensor]]:
        model = fresh_model(0)
        return fit(model, EpochShuffled(train), val, dataclasses.replace(BASE, seed=seed)), weights(model)

    (h1, w1), (h2, w2), (h3, _) = run(7), run(7), run(8)
    assert h1.train_loss == h2.train_loss and h1.grad_norm == h2.grad_norm and h1.val_loss == h2.val_loss
    assert_same_weights(w1, w2)
    assert h1.train_loss != h3.train_loss  # dropout masks depend on the seed


@pytest.mark.parametrize("loader", ["set_epoch", "global_rng"])
@pytest.mark.parametrize("stop_at", [4, 6])  # 4: an epoch boundary; 6: in the middle of epoch 2
def test_resume_ends_with_the_same_weights_as_an_uninterrupted_run(tmp_path: Path, loader: str, stop_at: int) -> None:
    train, val = make_batches(4, 0), make_batches(2, 1)

    def data() -> Any:
        return EpochShuffled(train) if loader == "set_epoch" else GlobalRngShuffled(train)

    cfg = dataclasses.replace(BASE, early_stopping_patience=50)
    straight = fresh_model(0)
    h_straight = fit(straight, data(), val, cfg)  # no checkpoints at all

    ckpt_dir = str(tmp_path / "b")
    cfg = dataclasses.replace(cfg, checkpoint_dir=ckpt_dir, checkpoint_every_steps=5, keep_last_n=2)
    first = fresh_model(0)
    fit(first, data(), val, cfg, callbacks=[lambda e: e.kind == "step" and e.step == stop_at])
    assert latest_checkpoint(ckpt_dir) == Path(ckpt_dir) / f"step-{stop_at:08d}"

    # A "new process": other weights, other RNG states, new optimizer and data objects.
    set_seed(12345)
    random.random(), np.random.rand(), torch.rand(3)
    resumed = fresh_model(99)
    h_resumed = fit(resumed, data(), val, cfg, resume_from=ckpt_dir)

    # Exactly equal (atol=0, rtol=0): same operations on the same CPU in the same order.
    assert_same_weights(weights(straight), weights(resumed))
    assert h_resumed.train_loss == h_straight.train_loss
    assert h_resumed.lr == h_straight.lr and h_resumed.grad_norm == h_straight.grad_norm
    assert h_resumed.eval_step == h_straight.eval_step and h_resumed.val_loss == h_straight.val_loss
    assert h_resumed.step == list(range(1, 13))


def test_fp16_gradscaler_path_resumes_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA fp16 path (autocast + GradScaler), exercised on CPU, where both also exist."""
    monkeypatch.setattr(train_mod, "amp_settings", lambda device, amp=None: (torch.float16, True))
    train, val = make_batches(4, 0), make_batches(1, 1)
    straight = fresh_model(0)
    h_straight = fit(straight, EpochShuffled(train), val, BASE)
    assert h_straight.amp_dtype == "float16"
    cfg = dataclasses.replace(BASE, checkpoint_dir=str(tmp_path))
    fit(fresh_model(0), EpochShuffled(train), val, cfg, callbacks=[lambda e: e.step == 7])
    scaler_state = load_checkpoint(latest_checkpoint(tmp_path)).training_state.scalars["grad_scaler"]  # type: ignore[arg-type, union-attr]
    assert scaler_state["scale"] > 1 and scaler_state["_growth_tracker"] == 7
    resumed = fresh_model(1)
    h_resumed = fit(resumed, EpochShuffled(train), val, cfg, resume_from=tmp_path)
    assert h_resumed.train_loss == h_straight.train_loss
    assert_same_weights(weights(straight), weights(resumed))


def test_resume_refuses_missing_or_weights_only_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="refusing to start from scratch"):
        fit(fresh_model(), make_batches(2, 0), config=BASE, resume_from=tmp_path)
    save_checkpoint(tmp_path / "w", fresh_model())
    with pytest.raises(ValueError, match="no training state"):
        fit(fresh_model(), make_batches(2, 0), config=BASE, resume_from=tmp_path / "w")


# ----------------------------------------------------------------------------------------------
# Early stopping
# ----------------------------------------------------------------------------------------------


def test_early_stopping_stops_and_keeps_the_best_weights() -> None:
    train = make_batches(2, 0)
    val_script = iter([3.0, 2.0, 1.0, 1.5, 1.2, 1.1, 0.5, 0.1])  # best at the 3rd evaluation

    class Val:
        def __iter__(self):  # type: ignore[no-untyped-def]
            yield "val"

    def loss_fn(model: nn.Module, batch: Any) -> tuple[Tensor, int]:
        if batch == "val":
            return torch.tensor(next(val_script), dtype=torch.float64), 1
        return train_mod.token_cross_entropy(model, batch, smoothing=0.0)

    snapshots: dict[int, dict[str, Tensor]] = {}

    def remember(event: train_mod.TrainEvent) -> None:
        if event.kind == "eval":
            snapshots[event.step] = weights(event.model)

    cfg = dataclasses.replace(BASE, epochs=20, eval_every=2, early_stopping_patience=3)
    model = fresh_model()
    history = fit(model, train, Val(), cfg, loss_fn=loss_fn, callbacks=[remember])
    assert history.val_loss == [3.0, 2.0, 1.0, 1.5, 1.2, 1.1]  # stopped after 3 evaluations without progress
    assert history.stopped_early and history.best_step == 6 and history.best_val_loss == 1.0
    assert history.step[-1] == 12  # trained until the stopping evaluation, then stopped
    assert_same_weights(weights(model), snapshots[6])
    assert not all(torch.equal(a, b) for a, b in zip(snapshots[6].values(), snapshots[12].values()))


def test_early_stopping_needs_validation_data() -> None:
    with pytest.raises(ValueError, match="needs val_batches"):
        fit(fresh_model(), make_batches(2, 0), None, dataclasses.replace(BASE, early_stopping_patience=2))


# ----------------------------------------------------------------------------------------------
# Progress bar
# ----------------------------------------------------------------------------------------------


def test_progress_false_prints_nothing_and_true_shows_a_bar(capfd: pytest.CaptureFixture[str]) -> None:
    train, val = make_batches(2, 0), make_batches(1, 1)
    fit(fresh_model(), train, val, dataclasses.replace(BASE, epochs=2, progress=False))
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    fit(fresh_model(), train, val, dataclasses.replace(BASE, epochs=2, progress=True, log_every=1))
    out, err = capfd.readouterr()
    assert "train" in out + err and "4/4" in out + err


# ----------------------------------------------------------------------------------------------
