"""Resumable state: what a training run needs beyond its weights to stop and go on exactly.

:class:`TrainingState` holds it as tensors (optimizer moments, RNG states, the best weights so far)
and JSON scalars (hyper-parameters, schedule step, data position, early-stopping counters); the
helpers here turn the optimizer and the random generators (Python, NumPy, torch CPU/CUDA/MPS) into
that form and back. ``Interrupts`` holds SIGINT/SIGTERM until a step is complete, so the
checkpoint written on an interrupt is one that resumes exactly. Used by :func:`~attn_tutorial.train.fit`.
"""

from __future__ import annotations

import random
import re
import signal
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "TrainingState",
]


@dataclass
class TrainingState:
    """What a checkpoint needs beyond the weights to resume exactly: tensors and JSON scalars.

    ``tensors`` (optimizer moments and step counts, RNG states, the best weights so far) go to a
    safetensors file; ``scalars`` (optimizer hyper-parameters, scheduler step, data position, early
    stopping counters, gradient scaler) to the JSON sidecar. :func:`~attn_tutorial.train.fit` fills and reads it.
    """

    tensors: dict[str, Tensor]
    scalars: dict[str, Any]


def capture_rng(prefix: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    tensors = {f"{prefix}.torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"{prefix}.cuda.{i}"] = s
    if torch.backends.mps.is_available():
        tensors[f"{prefix}.mps"] = torch.mps.get_rng_state()
    version, py_state, gauss_next = random.getstate()
    tensors[f"{prefix}.python"] = torch.tensor(py_state, dtype=torch.int64)
    np_name, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state()
    tensors[f"{prefix}.numpy"] = torch.from_numpy(np_keys.astype(np.int64))
    scalars = {
        "python_version": version,
        "python_gauss_next": gauss_next,
        "numpy_name": np_name,
        "numpy_pos": int(np_pos),
        "numpy_has_gauss": int(np_has_gauss),
        "numpy_cached_gaussian": float(np_cached),
    }
    return tensors, scalars


def restore_rng(prefix: str, tensors: Mapping[str, Tensor], scalars: Mapping[str, Any]) -> None:
    torch.set_rng_state(tensors[f"{prefix}.torch_cpu"].cpu())
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            if f"{prefix}.cuda.{i}" in tensors:
                torch.cuda.set_rng_state(tensors[f"{prefix}.cuda.{i}"].cpu(), i)
    if torch.backends.mps.is_available() and f"{prefix}.mps" in tensors:
        torch.mps.set_rng_state(tensors[f"{prefix}.mps"].cpu())
    py_state = tuple(int(x) for x in tensors[f"{prefix}.python"].tolist())
    random.setstate((scalars["python_version"], py_state, scalars["python_gauss_next"]))
    np_keys = tensors[f"{prefix}.numpy"].cpu().numpy().astype(np.uint32)
    np.random.set_state(
        (
            scalars["numpy_name"],
            np_keys,
            scalars["numpy_pos"],
            scalars["numpy_has_gauss"],
            scalars["numpy_cached_gaussian"],
        )
    )


def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    other: dict[str, dict[str, Any]] = {}
    for idx, per_param in sd["state"].items():
        for name, value in per_param.items():
            if isinstance(value, Tensor):
                tensors[f"optimizer.state.{idx}.{name}"] = value
            else:
                other.setdefault(str(idx), {})[name] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "state_scalars": other}


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, tensors: Mapping[str, Tensor], scalars: Mapping[str, Any]
) -> None:
    state: dict[int, dict[str, Any]] = {}
    pattern = re.compile(r"^optimizer\.state\.(\d+)\.(.+)$")
    for key, value in tensors.items():
        m = pattern.match(key)
        if m:
            state.setdefault(int(m.group(1)), {})[m.group(2)] = value
    for idx, values in scalars["state_scalars"].items():
        state.setdefault(int(idx), {}).update(values)
    groups = [
        {k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in scalars["param_groups"]
    ]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


class Interrupts:
    """SIGINT and SIGTERM during :func:`~attn_tutorial.train.fit`, held until the current step is complete.

    Installed (main thread only, and only over the default handlers) for the duration of the loop:
    a signal sets ``pending`` and :meth:`settle`, called where the training state is consistent,
    raises ``KeyboardInterrupt`` (SIGTERM too, so that one ``except`` writes the final checkpoint).
    A second signal before that raises at once (a step that hangs can still be interrupted).
    """

    def __init__(self) -> None:
        self.pending: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is threading.main_thread():
            for sig, default in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL)):
                if signal.getsignal(sig) is default:  # leave ignored signals and custom handlers alone
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()

    def restore(self) -> None:
        """Put the previous handlers back (again: a no-op)."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    @staticmethod
    def _error(signum: int) -> KeyboardInterrupt:
        return KeyboardInterrupt(f"training interrupted by {signal.Signals(signum).name}")

    def _handle(self, signum: int, frame: object) -> None:
        if self.pending is None:
            self.pending = signum
            return
        raise self._error(signum)

    def settle(self, agreed: bool | None = None) -> None:
        """Raise the held interrupt, if any (call only where a checkpoint would be exact).

        In a process group the processes decide together (``agreed``: whether any of them holds a
        signal), so that all of them stop at the same step; a process that holds none raises as if
        it had received SIGTERM (torchrun forwards it to all of them anyway).
        """
        if agreed is None:
            agreed = self.pending is not None
        if agreed:
            signum, self.pending = self.pending if self.pending is not None else signal.SIGTERM, None
            raise self._error(signum)
