"""The training machinery: schedule, loss, determinism, exact resume, early stopping, checkpoints.

Everything runs on CPU with a tiny model and tiny batches defined here (duck-typed like
``attn_tutorial.data.Batch``), so these tests do not depend on the data or model modules.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor, nn

import attn_tutorial
from attn_tutorial import train as train_mod
from attn_tutorial.runtime import autocast_dtype, set_seed
from attn_tutorial.train import (
    CHECKPOINT_JSON,
    History,
    TrainConfig,
    amp_settings,
    average_checkpoints,
    evaluate_loss,
    export_fp16,
    fit,
    label_smoothed_cross_entropy,
    latest_checkpoint,
    load_checkpoint,
    load_exported,
    lr_at,
    save_checkpoint,
)

PAD, BOS, EOS = 0, 1, 2
VOCAB = 12


# ----------------------------------------------------------------------------------------------
# A tiny model and tiny batches
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TinyBatch:
    src: Tensor
    src_mask: Tensor
    tgt_in: Tensor
    tgt_out: Tensor
    tgt_mask: Tensor

    def to(self, device: torch.device | str) -> TinyBatch:
        return TinyBatch(*(getattr(self, f.name).to(device) for f in dataclasses.fields(self)))

    @property
    def num_tokens(self) -> int:
        return int(self.tgt_mask.sum())


@dataclass(frozen=True)
class TinyConfig:
    vocab: int = VOCAB
    d: int = 16
    dropout: float = 0.3


class TinySeq2Seq(nn.Module):
    """Bag-of-source-words context + previous target token -> next token logits, with dropout."""

    def __init__(self, config: TinyConfig = TinyConfig()) -> None:
        super().__init__()
        self.config = config
        self.src_emb = nn.Embedding(config.vocab, config.d)
        self.tgt_emb = nn.Embedding(config.vocab, config.d)
        self.norm = nn.LayerNorm(config.d)
        self.drop = nn.Dropout(config.dropout)
        self.out = nn.Linear(config.d, config.vocab)

    def forward(
        self, src: Tensor, src_mask: Tensor, tgt_in: Tensor, tgt_mask: Tensor, return_attention: bool = False
    ) -> Tensor:
        m = src_mask.unsqueeze(-1).float()  # (B, S, 1), True = real token
        ctx = (self.src_emb(src) * m).sum(1) / m.sum(1).clamp(min=1)  # (B, d)
        h = self.drop(self.tgt_emb(tgt_in) + ctx[:, None, :])  # (B, T, d)
        return self.out(torch.tanh(self.norm(h)))  # (B, T, V)


def make_batches(n: int, seed: int, batch_size: int = 4, max_len: int = 6) -> list[TinyBatch]:
    """A copy task with padding: target = source, lengths vary."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        lengths = torch.randint(2, max_len + 1, (batch_size,), generator=g)
        src = torch.randint(3, VOCAB, (batch_size, max_len), generator=g)
        src_mask = torch.arange(max_len)[None, :] < lengths[:, None]
        src = src.masked_fill(~src_mask, PAD)
        tgt_out = torch.cat([src, torch.full((batch_size, 1), PAD)], dim=1)
        tgt_out[torch.arange(batch_size), lengths] = EOS
        tgt_in = torch.cat([torch.full((batch_size, 1), BOS), src], dim=1)
        tgt_mask = torch.arange(max_len + 1)[None, :] <= lengths[:, None]
        out.append(TinyBatch(src, src_mask, tgt_in, tgt_out, tgt_mask))
    return out


class EpochShuffled:
    """Deterministic reshuffling per epoch via ``set_epoch`` (like the book's batch iterator)."""

    def __init__(self, batches: list[TinyBatch], seed: int = 0) -> None:
        self.batches, self.seed, self.epoch = batches, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):  # type: ignore[no-untyped-def]
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter([self.batches[i] for i in torch.randperm(len(self.batches), generator=g).tolist()])


class GlobalRngShuffled:
    """Shuffles with the *global* torch RNG when iteration starts (like ``DataLoader(shuffle=True)``)."""

    def __init__(self, batches: list[TinyBatch]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter([self.batches[i] for i in torch.randperm(len(self.batches)).tolist()])


def fresh_model(seed: int = 0, dropout: float = 0.3) -> TinySeq2Seq:
    torch.manual_seed(seed)
    return TinySeq2Seq(TinyConfig(dropout=dropout))


BASE = TrainConfig(
    epochs=3,
    lr=1e-2,
    warmup_steps=3,
    schedule="cosine",
    min_lr=1e-4,
    weight_decay=0.01,
    grad_clip=0.5,
    label_smoothing=0.1,
    seed=7,
    device="cpu",
    progress=False,
    eval_every=3,
)


def weights(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=lambda m, k=k: f"{k}: {m}")


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
# Checkpoints: contents, atomicity, rotation, averaging, fp16 export
# ----------------------------------------------------------------------------------------------


def test_checkpoint_round_trip_and_sidecar(tmp_path: Path) -> None:
    model = fresh_model(1)
    history = History(step=[1], train_loss=[2.0], wall_time=1.5, device="cpu")
    path = save_checkpoint(tmp_path / "c", model, config=BASE, history=history, tokenizer="/data/bpe.json", step=1, epoch=0)
    meta = json.loads((path / CHECKPOINT_JSON).read_text())
    assert meta["model_config"] == {"vocab": VOCAB, "d": 16, "dropout": 0.3}
    assert meta["train_config"] == BASE.to_dict() and meta["history"] == history.to_dict()
    assert meta["tokenizer"] == {"path": "/data/bpe.json"} and meta["torch_version"] == torch.__version__
    assert meta["step"] == 1 and meta["wall_time"] == 1.5 and meta["device"] == "cpu"
    assert "git_commit" in meta  # a hash in a checkout, null elsewhere
    assert not list(path.glob("*.pkl")) and not list(path.glob("*.pt"))
    other = fresh_model(2)
    ckpt = load_checkpoint(path, other)
    assert_same_weights(weights(other), weights(model))
    assert ckpt.step == 1 and ckpt.training_state is None


def test_tied_weights_are_stored_once_and_restored(tmp_path: Path) -> None:
    model = fresh_model()
    model.tgt_emb.weight = model.src_emb.weight  # tie
    save_checkpoint(tmp_path, model)
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.metadata["aliases"] == {"tgt_emb.weight": "src_emb.weight"}
    assert ckpt.weights["tgt_emb.weight"] is ckpt.weights["src_emb.weight"]
    stored = load_file(str(tmp_path / ckpt.metadata["files"]["weights"]["name"]))
    assert "tgt_emb.weight" not in stored


def test_a_crash_before_the_json_leaves_the_old_checkpoint_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = fresh_model(1), fresh_model(2)
    save_checkpoint(tmp_path, old, step=1)

    def crash(path: Path, obj: Any) -> None:
        raise RuntimeError("simulated crash after the weights were written")

    monkeypatch.setattr(train_mod, "_write_json_atomic", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        save_checkpoint(tmp_path, new, step=2)
    assert len(list(tmp_path.glob("model-*.safetensors"))) == 1  # the failed save removed the weights it wrote
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.step == 1
    assert_same_weights(ckpt.weights, weights(old))
    # A crash while writing a brand-new step directory leaves an incomplete one that is ignored.
    with pytest.raises(RuntimeError):
        save_checkpoint(tmp_path / "root" / "step-00000009", new, step=9)
    monkeypatch.undo()
    save_checkpoint(tmp_path / "root" / "step-00000005", old, step=5)
    assert latest_checkpoint(tmp_path / "root") == tmp_path / "root" / "step-00000005"
    with pytest.raises(FileNotFoundError, match="checkpoint.json is missing"):
        load_checkpoint(tmp_path / "root" / "step-00000009")
    # A process killed before its JSON leaves orphaned files (it cannot clean up): the next successful save removes them.
    (tmp_path / "model-0123456789ab.safetensors").write_bytes(b"orphan of a killed save")
    save_checkpoint(tmp_path, new, step=3)
    assert len(list(tmp_path.glob("model-*.safetensors"))) == 1
    assert_same_weights(load_checkpoint(tmp_path).weights, weights(new))


def test_corrupt_weights_are_detected(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, fresh_model())
    (weights_file,) = tmp_path.glob("model-*.safetensors")
    data = bytearray(weights_file.read_bytes())
    data[-1] ^= 0xFF
    weights_file.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt"):
        load_checkpoint(tmp_path)


def test_keep_last_n_rotation(tmp_path: Path) -> None:
    cfg = dataclasses.replace(BASE, epochs=1, checkpoint_dir=str(tmp_path), checkpoint_every_steps=1, keep_last_n=2)
    fit(fresh_model(), make_batches(5, 0), config=cfg)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000004", "step-00000005"]
    for p in tmp_path.iterdir():
        assert (p / CHECKPOINT_JSON).is_file()
        assert len(list(p.glob("*.safetensors"))) == 2  # weights + training state, nothing stale


def test_keep_every_steps_spares_multiples_from_rotation(tmp_path: Path) -> None:
    cfg = dataclasses.replace(BASE, epochs=1, checkpoint_dir=str(tmp_path), checkpoint_every_steps=1, keep_last_n=2,
                              keep_every_steps=3)
    fit(fresh_model(), make_batches(8, 0), config=cfg)
    # the newest two (7, 8) and every multiple of 3 (3, 6); 1, 2, 4, 5 rotated away
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000003", "step-00000006", "step-00000007", "step-00000008"]
    with pytest.raises(ValueError, match=r"keep_every_steps must be a multiple of checkpoint_every_steps=2, got 3"):
        dataclasses.replace(cfg, checkpoint_every_steps=2)


def test_average_checkpoints_is_the_elementwise_mean(tmp_path: Path) -> None:
    models = [fresh_model(s) for s in range(3)]
    paths = [save_checkpoint(tmp_path / f"c{i}", m) for i, m in enumerate(models)]
    averaged = average_checkpoints(paths)
    for name, value in averaged.items():
        expected = sum(m.state_dict()[name].double() for m in models) / 3
        torch.testing.assert_close(value, expected.float(), rtol=0, atol=0)  # float64 mean cast to float32
    into = fresh_model(5)
    into.load_state_dict(averaged)
    with pytest.raises(ValueError, match="at least one"):
        average_checkpoints([])
    save_checkpoint(tmp_path / "odd", nn.Linear(2, 2))
    with pytest.raises(ValueError, match="does not share"):
        average_checkpoints([paths[0], tmp_path / "odd"])


def test_export_fp16_is_within_fp16_rounding(tmp_path: Path) -> None:
    model = fresh_model(3)
    with torch.no_grad():
        model.out.bias.mul_(1e-5)  # include small values near fp16's subnormal range
    save_checkpoint(tmp_path / "c", model, step=12, tokenizer='{"model": {}}')
    out = export_fp16(tmp_path / "c", tmp_path / "ship" / "tiny.safetensors")
    raw = load_file(str(out))
    original = model.state_dict()
    for name, value in raw.items():
        assert value.dtype == torch.float16
        assert torch.equal(value, original[name].half())  # round to nearest, nothing else
        # |x - fp16(x)| <= 2**-11 |x| for normal numbers, <= 2**-25 in the subnormal range
        torch.testing.assert_close(value.float(), original[name], rtol=2**-11, atol=2**-24)
    reloaded = load_exported(out, fresh_model(4))
    assert reloaded.metadata["step"] == 12 and reloaded.metadata["model_config"]["d"] == 16
    assert reloaded.metadata["tokenizer"] == {"json": '{"model": {}}'}
    assert all(v.dtype == torch.float32 for v in reloaded.weights.values())
    assert out.stat().st_size < 0.6 * sum(v.numel() * 4 for v in original.values()) + 4096
    with pytest.raises(ValueError, match="max_bytes"):
        export_fp16(tmp_path / "c", tmp_path / "too_big.safetensors", max_bytes=100)
    assert not (tmp_path / "too_big.safetensors").exists()
    with torch.no_grad():
        model.out.bias[0] = 1e6
    save_checkpoint(tmp_path / "big", model)
    with pytest.raises(ValueError, match="float16's range"):
        export_fp16(tmp_path / "big", tmp_path / "x.safetensors")


class TiedTiny(TinySeq2Seq):
    """One matrix for source embedding, target embedding and output projection (as shared+tied models do)."""

    def __init__(self, config: TinyConfig = TinyConfig()) -> None:
        super().__init__(config)
        self.tgt_emb.weight = self.src_emb.weight
        self.out.weight = self.src_emb.weight  # (V, d), like the embeddings


def test_export_fp16_stores_tied_weights_once_and_restores_the_tie(tmp_path: Path) -> None:
    cfg = TinyConfig(vocab=1000, d=64)
    torch.manual_seed(0)
    model = TiedTiny(cfg)
    save_checkpoint(tmp_path / "c", model)
    out = export_fp16(tmp_path / "c", tmp_path / "tied.safetensors")
    distinct_numel = sum(p.numel() for p in model.parameters())  # parameters() yields a shared one once
    by_name_numel = sum(v.numel() for v in model.state_dict().values())
    assert by_name_numel - distinct_numel == 2 * cfg.vocab * cfg.d  # the test means something
    # float16 payload of the distinct tensors plus a small JSON header (well under 4 KiB here)
    assert abs(out.stat().st_size - 2 * distinct_numel) < 4096
    with safe_open(str(out), framework="pt") as f:
        assert json.loads(f.metadata()["aliases"]) == {"tgt_emb.weight": "src_emb.weight", "out.weight": "src_emb.weight"}
        assert sorted(f.keys()) == ["norm.bias", "norm.weight", "out.bias", "src_emb.weight"]

    torch.manual_seed(1)
    fresh = TiedTiny(cfg)
    loaded = load_exported(out, fresh)  # load_state_dict is strict
    assert loaded.weights["out.weight"] is loaded.weights["src_emb.weight"]  # aliases are the same tensor
    for name, value in fresh.state_dict().items():  # every name, aliases included: the fp16 rounding of the original
        torch.testing.assert_close(value, model.state_dict()[name].half().float(), rtol=0, atol=0)
    # The tie is intact: still one Parameter, so training updates all three names together.
    assert fresh.tgt_emb.weight is fresh.src_emb.weight and fresh.out.weight is fresh.src_emb.weight
    # An untied model of the same shape loads it too, with equal (not shared) copies.
    untied = TinySeq2Seq(cfg)
    load_exported(out, untied)
    assert untied.out.weight is not untied.src_emb.weight
    assert torch.equal(untied.out.weight, untied.src_emb.weight) and torch.equal(untied.tgt_emb.weight, untied.src_emb.weight)


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


def _assert_json_or_safetensors_not_pickle(path: Path) -> None:
    """``path`` is a JSON file or a safetensors file (an 8-byte header length, a JSON header, then raw
    tensor bytes that exactly fill the rest), and not a pickle: not a zip archive (``torch.save``'s
    format, a pickle inside), ``pickletools`` cannot read it as a pickle opcode stream (parsed, never
    executed), and a JSON file has no pickle protocol header (the PROTO opcode ``0x80`` and a
    protocol number; a safetensors file's first byte is part of its header length, so may be 0x80)."""
    import pickletools
    import struct

    data = path.read_bytes()
    assert data[:4] != b"PK\x03\x04", f"{path.name} is a zip archive (torch.save format)"
    with pytest.raises(Exception):  # noqa: B017 - any parse error: not a pickle opcode stream
        for _ in pickletools.genops(data):
            pass
    if path.suffix == ".json":
        assert not (data[:1] == b"\x80" and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")), path.name
        json.loads(data.decode("utf-8"))
        return
    assert path.suffix == ".safetensors", f"{path.name}: the package writes only JSON and safetensors"
    (n,) = struct.unpack("<Q", data[:8])
    assert data[8:9] == b"{", f"{path.name}: no JSON header after the length"
    header = json.loads(data[8 : 8 + n])
    ends = [entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"]
    assert 8 + n + max(ends, default=0) == len(data), f"{path.name} holds bytes beyond its tensors"


def test_a_training_checkpoint_holds_the_full_state_and_no_pickle(tmp_path: Path) -> None:
    """No pickle in any file the package writes: checkpoints (step and best), fp16 exports, model cards,
    recipes and tokenizers (the CLI-made run in tests/fixtures included)."""
    cfg = dataclasses.replace(BASE, epochs=1, checkpoint_dir=str(tmp_path), early_stopping_patience=2, eval_every=1)
    fit(fresh_model(), make_batches(2, 0), make_batches(1, 1), cfg)
    export_fp16(tmp_path / "step-00000002", tmp_path / "export" / "model.safetensors")
    from attn_tutorial.data import date_vocab, train_bpe
    from attn_tutorial.pretrained import save_tokenizer

    save_tokenizer(date_vocab(), tmp_path / "tok" / "char.json")
    save_tokenizer(train_bpe(["ein Hund", "a dog"] * 3, vocab_size=30), tmp_path / "tok" / "bpe.json")
    fixture = Path(__file__).parent / "fixtures" / "run-v0.1.0"  # written by attn-tutorial train
    written = [p for root in (tmp_path, fixture) for p in root.rglob("*") if p.is_file()]
    assert {p.suffix for p in written} == {".json", ".safetensors"} and len(written) >= 15
    for path in written:
        _assert_json_or_safetensors_not_pickle(path)
    files = sorted(p.name.split("-")[0] for p in (tmp_path / "step-00000002").iterdir())
    assert files == ["checkpoint.json", "model", "state"]
    ckpt = load_checkpoint(tmp_path / "step-00000002")
    assert ckpt.training_state is not None
    names = set(ckpt.training_state.tensors)
    assert "rng.now.torch_cpu" in names and ckpt.training_state.tensors["rng.now.torch_cpu"].dtype == torch.uint8
    assert any(n.endswith(".exp_avg_sq") for n in names) and any(n.startswith("best.") for n in names)
    assert ckpt.training_state.scalars["position"] == {"epoch": 1, "step_in_epoch": 0, "global_step": 2}
    assert (tmp_path / "best" / CHECKPOINT_JSON).is_file()
    assert os.path.getsize(tmp_path / "step-00000002" / CHECKPOINT_JSON) > 0


# ----------------------------------------------------------------------------------------------
# A full disk during a checkpoint write (issue 15)
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fails", ["model-", "state-", "checkpoint.json"])
def test_a_full_disk_during_a_checkpoint_leaves_the_previous_one_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fails: str
) -> None:
    """The disk fills up while step 4's checkpoint is written (half of one file gets in): fit stops with
    ENOSPC naming the intact previous checkpoint, nothing half-written is left, and resuming from it
    ends with the weights of an uninterrupted run."""
    import errno

    train, val = make_batches(4, 0), make_batches(2, 1)
    cfg = dataclasses.replace(BASE, epochs=2, eval_every="epoch")
    straight = fresh_model(0)
    fit(straight, EpochShuffled(train), val, cfg)

    real_writer, real_fdopen = train_mod.atomic_write_bytes, os.fdopen

    class FullDisk:
        """A file on a full disk: the first half of the bytes gets in, then ENOSPC."""

        def __init__(self, fh: Any) -> None:
            self.fh = fh

        def __enter__(self) -> FullDisk:
            return self

        def __exit__(self, *exc: object) -> None:
            self.fh.close()

        def write(self, data: bytes) -> int:
            self.fh.write(data[: len(data) // 2])
            self.fh.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def writer(path: Any, data: bytes) -> None:
        path = Path(path)
        if path.parent.name == "step-00000004" and path.name.startswith(fails):
            monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: FullDisk(real_fdopen(fd, *a, **k)))
            try:
                real_writer(path, data)
            finally:
                monkeypatch.setattr(os, "fdopen", real_fdopen)
        else:
            real_writer(path, data)

    monkeypatch.setattr(train_mod, "atomic_write_bytes", writer)
    root = tmp_path / "run"
    run_cfg = dataclasses.replace(cfg, checkpoint_dir=str(root), checkpoint_every_steps=2, keep_last_n=None)
    with pytest.raises(OSError) as info:
        fit(fresh_model(0), EpochShuffled(train), val, run_cfg)
    assert info.value.errno == errno.ENOSPC
    assert "step-00000004" in str(info.value) and f"{root / 'step-00000002'}, is intact" in str(info.value)
    monkeypatch.setattr(train_mod, "atomic_write_bytes", real_writer)
    assert latest_checkpoint(root) == root / "step-00000002"
    previous = load_checkpoint(root / "step-00000002")  # complete; every file's SHA-256 checked
    assert previous.step == 2 and previous.training_state is not None
    assert list((root / "step-00000004").iterdir()) == []  # no partial, temporary or orphaned file left
    resumed = fresh_model(9)
    fit(resumed, EpochShuffled(train), val, run_cfg, resume_from=root)
    assert_same_weights(weights(straight), weights(resumed))  # rtol=0, atol=0
