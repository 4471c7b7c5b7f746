"""Training in several processes: ``fit`` under torchrun with DistributedDataParallel (CPU, gloo).

One torchrun launch (2 processes, a tiny float64 Transformer, 9 batches of reversal pairs) is
shared by the tests below. Each process starts from *different* random weights, trains 2 steps,
stops mid-epoch (rank 0 writes a checkpoint), resumes from it and trains the 2 steps left (the 9th
batch is dropped so that both processes take the same number of steps). The tests check:

* the two processes end with bit-identical weights, which differ from the initial ones;
* they trained on disjoint batches, 4 each, covering batches 0-7;
* the result equals a single process trained on the concatenated pairs of batches
  ``(0, 1), (2, 3), ...``: with every batch holding the same number of target tokens, the mean of
  the two processes' mean losses *is* the mean loss of the concatenated batch, so the averaged
  gradients are the same numbers up to float64 rounding (tolerance 1e-8, stated below); the
  validation loss (3 batches split 2 + 1 over the processes) is the single-process one;
* only rank 0 wrote checkpoints, and a mid-epoch checkpoint of 2 processes refuses to resume in one.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import distributed as dist

from attn_tutorial import Batch, collate
from attn_tutorial import TrainConfig, evaluate_loss, fit, latest_checkpoint, load_checkpoint
from attn_tutorial.transformer import Transformer, TransformerConfig

pytestmark = [
    pytest.mark.slow,  # about 25 s: torchrun starts 2 Python processes that import torch
    pytest.mark.skipif(
        not (dist.is_available() and dist.is_gloo_available()),
        reason="this PyTorch build has no torch.distributed with the gloo backend",
    ),
]

WORLD_SIZE = 2
NUM_BATCHES = 9  # odd: the last one has no partner and must be dropped
ROWS, LENGTH, VOCAB = 4, 5, 12


def make_pairs() -> list[tuple[list[int], list[int]]]:
    """``NUM_BATCHES * ROWS`` reversal pairs of ids, all of length ``LENGTH`` (same token counts)."""
    g = torch.Generator().manual_seed(0)
    src = torch.randint(4, VOCAB, (NUM_BATCHES * ROWS, LENGTH), generator=g)  # ids 0-3 are PAD/BOS/EOS/UNK
    return [(row.tolist(), row.flip(0).tolist()) for row in src]


def make_batches(rows: int = ROWS) -> list[Batch]:
    """The pairs in order, ``rows`` per batch; ``index`` holds each row's position in :func:`make_pairs`."""
    pairs = make_pairs()
    return [collate(pairs[i : i + rows], index=range(i, min(i + rows, len(pairs)))) for i in range(0, len(pairs), rows)]


def make_model() -> Transformer:
    config = TransformerConfig(
        src_vocab_size=VOCAB, d_model=16, num_heads=2, num_encoder_layers=1, num_decoder_layers=1, d_ff=32, dropout=0.0
    )
    return Transformer(config).double()


def train_config(checkpoint_dir: str | None = None, max_steps: int | None = None) -> TrainConfig:
    return TrainConfig(
        epochs=1, max_steps=max_steps, lr=1e-2, device="cpu", progress=False, checkpoint_dir=checkpoint_dir
    )


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}  # clone: unties shared tensors


# Run by torchrun in each process: `python worker.py OUT`.
WORKER = """
import json, sys
import torch
from safetensors.torch import save_file
sys.path.insert(0, {tests!r})
from test_distributed import _state, make_batches, make_model, train_config
from attn_tutorial import fit, init_distributed, token_cross_entropy

out = sys.argv[1]
device = init_distributed("cpu")
rank = torch.distributed.get_rank()
torch.manual_seed(100 + rank)  # different initial weights: DistributedDataParallel must broadcast rank 0's
model = make_model()
save_file(_state(model), f"{{out}}/init-{{rank}}.safetensors")
seen = []

def loss_fn(m, batch):  # the default loss, recording which examples this process trained on
    if m.training:
        seen.append(batch.index.tolist())
    return token_cross_entropy(m, batch)

ckpt = f"{{out}}/checkpoints"
first = fit(model, make_batches(), config=train_config(ckpt, max_steps=2), loss_fn=loss_fn)
val = make_batches()[:3]  # validation is split too (rank 0: batches 0 and 2, rank 1: batch 1), nothing dropped
second = fit(model, make_batches(), val, config=train_config(ckpt), loss_fn=loss_fn, resume_from=ckpt)
save_file(_state(model), f"{{out}}/final-{{rank}}.safetensors")
with open(f"{{out}}/rank-{{rank}}.json", "w") as f:
    json.dump({{"seen": seen, "device": str(device), "loss_first": first.train_loss, "history": second.to_dict()}}, f)
torch.distributed.destroy_process_group()
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """Launch the worker under torchrun once; returns its output directory and the wall time (seconds)."""
    out = tmp_path_factory.mktemp("ddp")
    script = out / "worker.py"
    script.write_text(WORKER.format(tests=str(Path(__file__).parent)))
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(WORLD_SIZE),
        "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), str(script), str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "error"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return out, wall


def _ranks(out: Path) -> list[dict]:
    return [json.loads((out / f"rank-{r}.json").read_text()) for r in range(WORLD_SIZE)]


def test_processes_end_with_identical_weights_that_changed(ddp_run: tuple[Path, float]) -> None:
    out, _ = ddp_run
    init = [load_file(str(out / f"init-{r}.safetensors")) for r in range(WORLD_SIZE)]
    final = [load_file(str(out / f"final-{r}.safetensors")) for r in range(WORLD_SIZE)]
    assert any(not torch.equal(init[0][k], init[1][k]) for k in init[0])  # they really started apart
    for name in final[0]:
        assert torch.equal(final[0][name], final[1][name]), f"{name} differs between the processes"
    changed = [k for k in final[0] if final[0][k].is_floating_point() and not torch.equal(final[0][k], init[0][k])]
    assert len(changed) >= len(final[0]) // 2, f"only {changed} changed in training"
    histories = [r["history"] for r in _ranks(out)]
    for key in ("step", "train_loss", "grad_norm", "lr", "val_loss"):
        assert histories[0][key] == histories[1][key], f"history.{key} differs between the processes"
    assert histories[0]["step"] == [1, 2, 3, 4]  # 9 batches, 2 processes: 4 steps, the 9th batch dropped


def test_processes_train_on_disjoint_batches(ddp_run: tuple[Path, float]) -> None:
    ranks = _ranks(ddp_run[0])
    seen = [[tuple(ids) for ids in r["seen"]] for r in ranks]
    assert [len(s) for s in seen] == [4, 4]
    assert not set(seen[0]) & set(seen[1])
    batches = make_batches()
    expected = [[tuple(batches[i].index.tolist()) for i in range(r, 8, WORLD_SIZE)] for r in range(WORLD_SIZE)]
    assert seen == expected  # rank r: batches r, r + 2, ...; batch 8 (the odd one out) by nobody
    assert ranks[0]["device"] == ranks[1]["device"] == "cpu"


def test_two_processes_match_one_process_on_concatenated_batches(ddp_run: tuple[Path, float]) -> None:
    out, _ = ddp_run
    model = make_model()
    model.load_state_dict(load_file(str(out / "init-0.safetensors")))
    merged = make_batches(rows=WORLD_SIZE * ROWS)[:4]  # batches (0, 1), (2, 3), ... concatenated
    assert all(int(m.tgt_mask.sum()) == WORLD_SIZE * ROWS * (LENGTH + 1) for m in merged)
    history = fit(model, merged, config=train_config())
    final = load_file(str(out / "final-0.safetensors"))
    # Exact in exact arithmetic; float64 rounding (sums in another order, amplified a little by
    # Adam) measured below 1e-10, against weight changes of about 0.04: tolerance 1e-8.
    for name, value in _state(model).items():
        torch.testing.assert_close(value, final[name], rtol=1e-8, atol=1e-8, msg=lambda m, n=name: f"{n}: {m}")
    ddp_history = _ranks(out)[0]["history"]
    torch.testing.assert_close(torch.tensor(history.train_loss), torch.tensor(ddp_history["train_loss"]), rtol=1e-8, atol=1e-8)
    # The validation loss, summed over the processes' shares, is the single-process one on all batches.
    expected_val = evaluate_loss(model, make_batches()[:3])
    torch.testing.assert_close(torch.tensor(ddp_history["val_loss"]), torch.tensor([expected_val]), rtol=1e-8, atol=1e-8)


def test_only_rank_zero_writes_checkpoints_and_resume_needs_the_same_world_size(ddp_run: tuple[Path, float]) -> None:
    out, _ = ddp_run
    ckpt_dir = out / "checkpoints"
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["step-00000002", "step-00000004"]
    final = load_checkpoint(latest_checkpoint(ckpt_dir))
    for name, value in load_file(str(out / "final-0.safetensors")).items():
        assert torch.equal(final.weights[name], value)
    assert final.training_state is not None
    assert final.training_state.scalars["world_size"] == WORLD_SIZE
    # The step-2 checkpoint is mid-epoch: its position counts each process's share of the batches.
    with pytest.raises(ValueError, match="written in the middle of an epoch by 2 process"):
        fit(make_model(), make_batches(), config=train_config(), resume_from=ckpt_dir / "step-00000002")
