"""The ``attn-tutorial`` command line.

``attn-tutorial info`` prints what the package sees: its version, PyTorch's, the device it would
compute on, and where it looks for data. Later parts of the book add commands that train,
translate and evaluate; each is a subcommand here.
"""

from __future__ import annotations

import argparse
import platform
import sys
from collections.abc import Sequence

import torch

from . import __version__
from .runtime import DATA_ENV_VAR, autocast_dtype, data_dir, default_device

__all__ = ["build_parser", "main"]


def _info(args: argparse.Namespace) -> int:
    device = default_device(args.device)
    amp = autocast_dtype(device)
    try:
        data: str = str(data_dir())
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"attn_tutorial {__version__}")
    print(f"python        {platform.python_version()}")
    print(f"torch         {torch.__version__} ({torch.get_num_threads()} threads)")
    print(f"device        {device}" + (f" (mixed precision: {str(amp).removeprefix('torch.')})" if amp else ""))
    print(f"data          {data} (set {DATA_ENV_VAR} to change)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attn-tutorial",
        description="Companion tools of the book 'Attention, from intuition to translation'.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    info = sub.add_parser("info", help="print versions, the compute device and the data directory")
    info.add_argument("--device", default=None, help="override the device (cpu, cuda, cuda:1, mps)")
    info.set_defaults(func=_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``attn-tutorial`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except RuntimeError as exc:  # e.g. an unavailable device was requested
        parser.exit(2, f"attn-tutorial: error: {exc}\n")


if __name__ == "__main__":
    sys.exit(main())
