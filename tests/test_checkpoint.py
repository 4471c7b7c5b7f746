"""Checkpoints (attn_tutorial.checkpoint): contents, atomicity, rotation, averaging, fp16 export, no pickle, a full disk.

Everything runs on CPU with the tiny model and batches of ``tests/_tiny.py``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from _tiny import (  # tests/_tiny.py: the tiny model and batches
    BASE,
    VOCAB,
    EpochShuffled,
    TinyConfig,
    TinySeq2Seq,
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
    load_exported,
    save_checkpoint,
)
from attn_tutorial import checkpoint as checkpoint_mod

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

    monkeypatch.setattr(checkpoint_mod, "_write_json_atomic", crash)
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
    from attn_tutorial import date_vocab, train_bpe
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

    real_writer, real_fdopen = checkpoint_mod.atomic_write_bytes, os.fdopen

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

    monkeypatch.setattr(checkpoint_mod, "atomic_write_bytes", writer)
    root = tmp_path / "run"
    run_cfg = dataclasses.replace(cfg, checkpoint_dir=str(root), checkpoint_every_steps=2, keep_last_n=None)
    with pytest.raises(OSError) as info:
        fit(fresh_model(0), EpochShuffled(train), val, run_cfg)
    assert info.value.errno == errno.ENOSPC
    assert "step-00000004" in str(info.value) and f"{root / 'step-00000002'}, is intact" in str(info.value)
    monkeypatch.setattr(checkpoint_mod, "atomic_write_bytes", real_writer)
    assert latest_checkpoint(root) == root / "step-00000002"
    previous = load_checkpoint(root / "step-00000002")  # complete; every file's SHA-256 checked
    assert previous.step == 2 and previous.training_state is not None
    assert list((root / "step-00000004").iterdir()) == []  # no partial, temporary or orphaned file left
    resumed = fresh_model(9)
    fit(resumed, EpochShuffled(train), val, run_cfg, resume_from=root)
    assert_same_weights(weights(straight), weights(resumed))  # rtol=0, atol=0
