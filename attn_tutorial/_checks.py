"""Input checks shared by the package's public functions (private: not part of the API).

The rule of the package: a public function or module checks its arguments once, at the door, with
the helpers here, and raises an error that names the argument, what it got and what was expected.
The inner functions it calls trust their callers and do not check again.
"""

from __future__ import annotations

import math

import numpy as np


def is_int(x: object) -> bool:
    """True for Python and NumPy integers, but not for ``bool`` (``True`` is not a count)."""
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def is_real(x: object) -> bool:
    """True for finite Python and NumPy ints and floats, ``bool`` excluded."""
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool) and math.isfinite(x)


def check_int(name: str, value: object, minimum: int = 0) -> None:
    """Raise ``ValueError`` unless ``value`` is an int (not a bool) ``>= minimum``."""
    if not is_int(value) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def describe(x: object) -> str:
    """What ``x`` is, for an error message: ``"a torch.float32 tensor of shape (2, 3)"`` or ``"int 3"``."""
    import torch  # the checks of plain values must not need torch at import

    if isinstance(x, torch.Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    return f"{type(x).__name__} {x!r}"
