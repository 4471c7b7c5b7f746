"""A tiny sequence-to-sequence model and tiny batches for the training tests (CPU, milliseconds).

Duck-typed like ``attn_tutorial.batching.Batch`` and the book's models, so the tests of the loop,
checkpoints and resume do not depend on the data or model modules.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from attn_tutorial import (
    TrainConfig,
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


