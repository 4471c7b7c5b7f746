"""The package's own exception for mistakes a user can fix, told apart from bugs.

:class:`UserError` marks a failure caused by what the user gave the package (an argument, a file,
a data set, a model directory) or by the machine (a full disk), with a message that names the thing,
says what is wrong with it and what to do. ``attn-tutorial`` reports these as one line on stderr and
exits with status 2; any other exception is a bug and keeps its traceback (plus a hint to report it).

``UserError`` subclasses ``ValueError``, so code written against the earlier ``ValueError`` still
catches it. :class:`ChecksumError` (a data file that does not match its SHA-256) and
:class:`DamagedFileError` (a model, tokenizer, card or checkpoint file that cannot be read) are
kinds of it.

>>> try:
...     raise DamagedFileError("m/card.json is not valid JSON; copy the model directory again")
... except ValueError as err:
...     isinstance(err, UserError)
True
"""

from __future__ import annotations

__all__ = ["UserError", "DamagedFileError", "TrainingDivergedError", "BUG_REPORT_URL"]  # ChecksumError is re-exported by .data

#: Where to report a bug (printed under the traceback of an unexpected error).
BUG_REPORT_URL = "https://github.com/attn-tutorial/attention-book/issues"


class UserError(ValueError):
    """A mistake the user can fix (bad argument, file, data or environment); its message says how."""


class DamagedFileError(UserError):
    """A file the package reads is truncated, corrupt, of the wrong kind or from a newer version."""


class ChecksumError(DamagedFileError):
    """A data file's SHA-256 is not the one the book expects (corrupted or a different version)."""


class TrainingDivergedError(UserError, FloatingPointError):
    """The training loss became NaN or infinite: the settings (learning rate, warmup, clipping) need changing."""
