"""Several processes: ``torchrun`` and :class:`~torch.nn.parallel.DistributedDataParallel`.

:func:`init_distributed` joins the process group ``torchrun`` describes; :func:`~attn_tutorial.train.fit`
then trains in every process with the same call. ``ProcessGroup`` is what the loop needs of the group
(sums and joint decisions over processes, a barrier); ``shard`` gives each process its share of
the batches.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import distributed as dist

__all__ = [
    "init_distributed",
]


_TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def init_distributed(device: str | torch.device | None = None) -> torch.device:
    """Join the process group that ``torchrun`` describes in the environment; returns this process's device.

    ``torchrun --nproc-per-node N prog ...`` starts ``N`` copies of ``prog`` and gives each the
    variables ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. This
    joins them into one process group: backend NCCL with process ``LOCAL_RANK`` on GPU
    ``cuda:LOCAL_RANK``, or gloo on the CPU. ``device``: ``None`` (CUDA when available, else the
    CPU), ``"cuda"`` (a GPU index in it is ignored: each process takes its local rank's) or
    ``"cpu"``. If the group already exists only the device is returned. Afterwards :func:`~attn_tutorial.train.fit`
    trains with :class:`~torch.nn.parallel.DistributedDataParallel`; the attn-tutorial CLI calls
    this itself when ``WORLD_SIZE`` is above 1.
    """
    if not dist.is_available():
        raise RuntimeError("this PyTorch build has no torch.distributed; train in a single process")
    missing = [k for k in _TORCHRUN_ENV if k not in os.environ]
    if missing:
        raise ValueError(
            f"init_distributed needs the environment torchrun sets, but {', '.join(missing)} is missing; "
            "launch with torchrun --nproc-per-node N ..."
        )
    requested = None if device is None else torch.device(device)
    if requested is not None and requested.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be None, 'cpu' or 'cuda' to train in several processes, got {str(requested)!r}")
    use_cuda = torch.cuda.is_available() if requested is None else requested.type == "cuda"
    local_rank = int(os.environ["LOCAL_RANK"])
    if use_cuda:
        if not torch.cuda.is_available():
            raise RuntimeError("device='cuda' was requested, but CUDA is not available")
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA devices are visible; "
                "start at most that many processes per node"
            )
        chosen = torch.device("cuda", local_rank)
        torch.cuda.set_device(chosen)
    else:
        chosen = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return chosen


@dataclass(frozen=True)
class ProcessGroup:
    """The process group :func:`~attn_tutorial.train.fit` trains in (``None`` from :meth:`current` when there is none)."""

    rank: int
    world_size: int
    device: torch.device  # where the tensors of collective calls live (CUDA for NCCL)

    @staticmethod
    def current() -> ProcessGroup | None:
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
            return None
        nccl = dist.get_backend() == "nccl"
        device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
        return ProcessGroup(dist.get_rank(), dist.get_world_size(), device)

    def sum(self, *values: float) -> list[float]:
        """Each value summed over all processes (float64)."""
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return [float(x) for x in t.tolist()]

    def any(self, *flags: bool) -> list[bool]:
        """Each flag or-ed over all processes: one decision that every process takes alike."""
        return [x > 0 for x in self.sum(*(float(bool(f)) for f in flags))]

    def barrier(self) -> None:
        if self.device.type == "cuda":
            dist.barrier(device_ids=[self.device.index])
        else:
            dist.barrier()


def shard(batches: Iterable[Any], rank: int, world_size: int) -> Iterator[Any]:
    """Process ``rank``'s share of ``batches``: items ``rank, rank + W, rank + 2W, ...``.

    Only complete groups of ``W = world_size`` batches count; an incomplete last group is dropped,
    so every process takes the same number of steps (one that took a step more would wait forever
    for the others' gradients).
    """
    mine: Any = None
    for i, batch in enumerate(batches):
        if i % world_size == rank:
            mine = batch
        if i % world_size == world_size - 1:
            yield mine
            mine = None


def barrier() -> None:
    """Wait until every process of the group gets here (nothing to wait for in a single process)."""
    group = ProcessGroup.current()
    if group is not None:
        group.barrier()
