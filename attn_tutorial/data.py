"""Data for the book: toy tasks generated on the fly, Multi30K, subword tokens and batches.

Five parts, each usable on its own:

1. **Special tokens** shared by every vocabulary in the book: ``PAD_ID = 0`` (``"<pad>"``),
   ``BOS_ID = 1`` (``"<s>"``), ``EOS_ID = 2`` (``"</s>"``), ``UNK_ID = 3`` (``"<unk>"``).
2. **Toy tasks**, character level and seeded: date normalisation (:func:`make_date_pairs`, 20
   :data:`DATE_FORMATS` such as ``"saturday 21 november 2026"`` or ``"3-Mar-99"``, all mapped to
   ISO ``"2026-11-21"``), the attention chapter's classic task :cite:p:`bahdanau2015`, and sequence
   reversal (:func:`make_reversal_pairs`) for the bottleneck chapter. :class:`CharVocab` maps
   characters to ids.
3. **Multi30K** :cite:p:`elliott2016multi30k` (:func:`load_multi30k`): found locally or downloaded,
   always verified against the SHA-256 checksums embedded here before use.
4. **Subword tokens** (:class:`SubwordTokenizer`, :func:`train_bpe`): a joint byte-pair encoding
   trained with HF ``tokenizers`` on the training split only, NFKC-normalised, with a Metaspace
   pre-tokenizer so that decoding restores the text.
5. **Batches** (:class:`Batch`, :func:`collate`, :func:`token_budget_batches`,
   :class:`BatchIterator`): padded tensors with boolean masks (``True`` = real token, so *may be
   attended to*), grouped by length under a token budget.

Every generator takes a seed and uses a local ``random.Random`` or ``numpy.random.Generator``:
nothing here reads or changes global random state.
"""

from __future__ import annotations

import datetime as _dt
import gzip
import hashlib
import http.client
import itertools
import os
import random
import string
import time
import urllib.request
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from .errors import ChecksumError, UserError
from .runtime import DATA_ENV_VAR, atomic_write_bytes, data_dir

__all__ = [
    # special tokens
    "PAD_ID",
    "BOS_ID",
    "EOS_ID",
    "UNK_ID",
    "PAD_TOKEN",
    "BOS_TOKEN",
    "EOS_TOKEN",
    "UNK_TOKEN",
    "SPECIAL_TOKENS",
    "TextTokenizer",
    # toy tasks
    "CharVocab",
    "DateFormat",
    "DATE_FORMATS",
    "DATE_MIN",
    "DATE_MAX",
    "DATE_ALPHABET",
    "expand_two_digit_year",
    "format_date",
    "make_date_pairs",
    "date_vocab",
    "CharTaskSplits",
    "date_dataset",
    "make_reversal_pairs",
    "reversal_dataset",
    # Multi30K
    "MULTI30K_SPLITS",
    "MULTI30K_LANGS",
    "MULTI30K_SIZES",
    "MULTI30K_SHA256",
    "MULTI30K_URL",
    "ChecksumError",
    "DOWNLOAD_ATTEMPTS",
    "multi30k_path",
    "read_multi30k",
    "load_multi30k",
    # subwords
    "SubwordTokenizer",
    "train_bpe",
    # batches
    "DEFAULT_MAX_LEN",
    "Batch",
    "collate",
    "token_budget_batches",
    "BatchIterator",
]

# --------------------------------------------------------------------------------------------------
# 1. Special tokens
# --------------------------------------------------------------------------------------------------

PAD_ID = 0  #: padding; never a real token, masked out everywhere
BOS_ID = 1  #: beginning of sequence; the decoder's first input
EOS_ID = 2  #: end of sequence; the decoder's last target, also appended to every source
UNK_ID = 3  #: a character or piece the vocabulary does not know
PAD_TOKEN = "<pad>"
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
UNK_TOKEN = "<unk>"
#: The special tokens in id order, so that ``SPECIAL_TOKENS[PAD_ID] == "<pad>"`` and so on.
SPECIAL_TOKENS: tuple[str, ...] = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN)


@runtime_checkable
class TextTokenizer(Protocol):
    """What :class:`BatchIterator` needs from a tokenizer (:class:`CharVocab` and
    :class:`SubwordTokenizer` both qualify): ids never include BOS/EOS, ``decode`` stops at EOS."""

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int] | Tensor) -> str: ...


def _check_int(name: str, value: object, minimum: int = 0) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def _as_id_list(ids: Sequence[int] | Tensor, name: str = "ids") -> list[int]:
    if isinstance(ids, Tensor):
        if ids.dim() != 1:
            raise ValueError(f"{name} must be a 1-D tensor of token ids, got shape {tuple(ids.shape)}")
        return [int(i) for i in ids.tolist()]
    return [int(i) for i in ids]


def _as_id_array(ids: Sequence[int] | Tensor, name: str) -> np.ndarray:
    """``ids`` as a 1-D int64 array (fast for the lists of ints tokenizers return)."""
    arr = ids.detach().cpu().numpy() if isinstance(ids, Tensor) else np.asarray(ids)
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise ValueError(f"{name} must be a 1-D sequence of int token ids, got shape {arr.shape}, dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _strip_specials(ids: Sequence[int] | Tensor) -> list[int]:
    """The ids up to (not including) the first EOS, without PAD and BOS."""
    out: list[int] = []
    for i in _as_id_list(ids):
        if i == EOS_ID:
            break
        if i not in (PAD_ID, BOS_ID):
            out.append(i)
    return out


# --------------------------------------------------------------------------------------------------
# 2. Toy tasks: a character vocabulary, dates, reversal
# --------------------------------------------------------------------------------------------------


class CharVocab:
    """A character-level vocabulary: the four special tokens, then one id per character.

    ``CharVocab("abc")`` gives ``a -> 4, b -> 5, c -> 6``. Characters outside the alphabet encode to
    ``UNK_ID``. ``encode`` adds no BOS/EOS (batching adds them); ``decode`` stops at the first EOS,
    skips PAD and BOS, and writes ``UNK_ID`` as ``"<unk>"``.

    >>> v = CharVocab("ab"); v.encode("abz")
    [4, 5, 3]
    >>> v.decode([1, 4, 5, 2, 4, 0])
    'ab'
    """

    def __init__(self, alphabet: str | Sequence[str]) -> None:
        chars = list(alphabet)
        if not chars:
            raise ValueError("alphabet must hold at least one character, got an empty one")
        bad = [c for c in chars if not isinstance(c, str) or len(c) != 1]
        if bad:
            raise ValueError(f"alphabet must be single characters, got {bad[:5]!r}")
        if len(set(chars)) != len(chars):
            dup = sorted({c for c in chars if chars.count(c) > 1})
            raise ValueError(f"alphabet has repeated characters {dup!r}")
        self.itos: tuple[str, ...] = (*SPECIAL_TOKENS, *chars)
        self.stoi: dict[str, int] = {c: i + len(SPECIAL_TOKENS) for i, c in enumerate(chars)}

    @classmethod
    def fit(cls, texts: Sequence[str] | Sequence[tuple[str, str]]) -> CharVocab:
        """The vocabulary of every character in ``texts`` (strings or ``(src, tgt)`` pairs), sorted."""
        chars: set[str] = set()
        for item in texts:
            for text in (item,) if isinstance(item, str) else item:
                chars.update(text)
        return cls("".join(sorted(chars)))

    @property
    def alphabet(self) -> str:
        return "".join(self.itos[len(SPECIAL_TOKENS) :])

    @property
    def vocab_size(self) -> int:
        """Number of ids with the specials, ``4 + len(alphabet)``."""
        return len(self.itos)

    def __len__(self) -> int:
        return len(self.itos)

    def __repr__(self) -> str:
        return f"CharVocab({self.alphabet!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharVocab) and self.itos == other.itos

    def __hash__(self) -> int:
        return hash(self.itos)

    def encode(self, text: str) -> list[int]:
        """One id per character; unknown characters become ``UNK_ID``. No BOS/EOS."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return [self.stoi.get(c, UNK_ID) for c in text]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Sequence[int] | Tensor) -> str:
        """The text of ``ids`` up to the first EOS, skipping PAD and BOS."""
        out = []
        for i in _strip_specials(ids):
            if not 0 <= i < len(self.itos):
                raise ValueError(f"id {i} is outside this vocabulary of size {len(self.itos)}")
            out.append(self.itos[i])
        return "".join(out)

    def decode_batch(self, batch: Sequence[Sequence[int]] | Tensor) -> list[str]:
        return [self.decode(row) for row in batch]


#: The first and last date the date task generates (every two-digit year is unambiguous in it).
DATE_MIN = _dt.date(1950, 1, 1)
DATE_MAX = _dt.date(2049, 12, 31)

# English names, fixed here (``strftime("%A")`` would follow the user's locale).
_MONTHS = (
    "january", "february", "march", "april", "may", "june",
    "july", "august", "september", "october", "november", "december",
)  # fmt: skip
_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_CASES = ("lower", "title", "upper")


def expand_two_digit_year(yy: int) -> int:
    """The year a two-digit year stands for in the date task: ``50..99 -> 1950..1999`` and
    ``00..49 -> 2000..2049``.

    The task's dates run from 1950 to 2049 (``DATE_MIN``, ``DATE_MAX``), exactly one
    century, so ``yyyy % 100`` identifies the year and this pivot at 50 inverts it. (Python's
    ``strptime("%y")`` pivots at 69 instead; the task does not use it.)

    >>> expand_two_digit_year(99), expand_two_digit_year(26)
    (1999, 2026)
    """
    _check_int("yy", yy)
    if yy > 99:
        raise ValueError(f"yy must be in 0..99, got {yy}")
    return 1900 + yy if yy >= 50 else 2000 + yy


def _ordinal(day: int) -> str:
    """``1 -> "1st"``, ``2 -> "2nd"``, ``11 -> "11th"``, ``22 -> "22nd"``."""
    if 11 <= day % 100 <= 13:
        return f"{day}th"
    return f"{day}{ {1: 'st', 2: 'nd', 3: 'rd'}.get(day % 10, 'th')}"


@dataclass(frozen=True)
class DateFormat:
    """One way of writing a date: a ``str.format`` template and the case of its words.

    Template fields: ``{d}`` day (``3``), ``{dd}`` zero-padded day (``03``), ``{dth}`` ordinal day
    (``3rd``), ``{m}``/``{mm}`` month number, ``{month}``/``{mon}`` full/three-letter month name,
    ``{weekday}``/``{wkd}`` full/three-letter weekday, ``{yyyy}`` year, ``{yy}`` two-digit year (see
    :func:`expand_two_digit_year`). ``case`` (``"lower"``, ``"title"`` or ``"upper"``) applies to the
    month and weekday names only; the template's own words are written as they stand.
    """

    name: str
    template: str
    case: str = "lower"

    def __post_init__(self) -> None:
        if self.case not in _CASES:
            raise ValueError(f"case must be one of {_CASES}, got {self.case!r}")
        try:
            format_date(DATE_MIN, self)
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(f"template {self.template!r} of format {self.name!r} is invalid: {err!r}") from None


def format_date(date: _dt.date, fmt: DateFormat | str) -> str:
    """Write ``date`` in format ``fmt`` (a :class:`DateFormat` or the name of one in
    :data:`DATE_FORMATS`).

    >>> format_date(datetime.date(2026, 11, 21), "weekday_d_month_yyyy")
    'saturday 21 november 2026'
    """
    if isinstance(fmt, str):
        if fmt not in _FORMATS_BY_NAME:
            raise ValueError(f"unknown date format {fmt!r}; choose one of {sorted(_FORMATS_BY_NAME)}")
        fmt = _FORMATS_BY_NAME[fmt]
    cased = {"lower": str.lower, "title": str.title, "upper": str.upper}[fmt.case]
    month = _MONTHS[date.month - 1]
    weekday = _WEEKDAYS[date.weekday()]
    return fmt.template.format(
        d=date.day,
        dd=f"{date.day:02d}",
        dth=_ordinal(date.day),
        m=date.month,
        mm=f"{date.month:02d}",
        month=cased(month),
        mon=cased(month[:3]),
        weekday=cased(weekday),
        wkd=cased(weekday[:3]),
        yyyy=f"{date.year:04d}",
        yy=f"{date.year % 100:02d}",
    )


_FORMATS_BY_NAME: dict[str, DateFormat] = {}
#: The 20 ways the date task writes a date. Numeric formats are unambiguous because each order
#: has its own separator or year width: ``/`` and ``.`` with the year last are day-month-year,
#: ``-`` with the year last is month-day-year (US), and a four-digit year first is year-month-day.
DATE_FORMATS: tuple[DateFormat, ...] = (
    DateFormat("yyyy.mm.dd", "{yyyy}.{mm}.{dd}"),  # 2026.11.21
    DateFormat("dd/mm/yy", "{dd}/{mm}/{yy}"),  # 21/11/26
    DateFormat("d/m/yyyy", "{d}/{m}/{yyyy}"),  # 21/11/2026
    DateFormat("dd.mm.yyyy", "{dd}.{mm}.{yyyy}"),  # 21.11.2026
    DateFormat("d.m.yy", "{d}.{m}.{yy}"),  # 21.11.26
    DateFormat("mm-dd-yyyy", "{mm}-{dd}-{yyyy}"),  # 11-21-2026
    DateFormat("yyyymmdd", "{yyyy}{mm}{dd}"),  # 20261121
    DateFormat("mon_d_yyyy", "{mon} {d}, {yyyy}", "title"),  # Nov 21, 2026
    DateFormat("d_mon_yyyy", "{d} {mon} {yyyy}", "title"),  # 21 Nov 2026
    DateFormat("dd_mon_yyyy_upper", "{dd} {mon} {yyyy}", "upper"),  # 21 NOV 2026
    DateFormat("d-mon-yy", "{d}-{mon}-{yy}", "title"),  # 21-Nov-26
    DateFormat("weekday_d_month_yyyy", "{weekday} {d} {month} {yyyy}"),  # saturday 21 november 2026
    DateFormat("the_dth_of_month_yyyy", "the {dth} of {month} {yyyy}"),  # the 21st of november 2026
    DateFormat("month_dth_yyyy", "{month} {dth}, {yyyy}"),  # november 21st, 2026
    DateFormat("weekday_month_d_yyyy_upper", "{weekday}, {month} {d}, {yyyy}", "upper"),  # SATURDAY, NOVEMBER 21, 2026
    DateFormat("wkd_d_mon_yyyy", "{wkd}, {d} {mon} {yyyy}", "title"),  # Sat, 21 Nov 2026
    DateFormat("month_d_yyyy", "{month} {d} {yyyy}", "title"),  # November 21 2026
    DateFormat("d_month_yy", "{d} {month} {yy}"),  # 21 november 26
    DateFormat("yyyy_month_d", "{yyyy} {month} {d}"),  # 2026 november 21
    DateFormat("wkd_mon_dth_yyyy", "{wkd} {mon} {dth} {yyyy}"),  # sat nov 21st 2026
)  # fmt: skip
_FORMATS_BY_NAME.update({f.name: f for f in DATE_FORMATS})
assert len(_FORMATS_BY_NAME) == len(DATE_FORMATS), "date format names must be unique"

#: Every character a date source or target can contain (the fixed alphabet of :func:`date_vocab`).
DATE_ALPHABET = string.digits + string.ascii_lowercase + string.ascii_uppercase + " ,-./"


def date_vocab() -> CharVocab:
    """The fixed character vocabulary of the date task: specials, then :data:`DATE_ALPHABET`
    (4 + 67 = 71 ids). Fixed rather than fitted, so every split and every seed share it."""
    return CharVocab(DATE_ALPHABET)


def _resolve_formats(formats: Sequence[DateFormat | str] | None) -> list[DateFormat]:
    if formats is None:
        return list(DATE_FORMATS)
    out = []
    for f in formats:
        if isinstance(f, str):
            if f not in _FORMATS_BY_NAME:
                raise ValueError(f"unknown date format {f!r}; choose from {sorted(_FORMATS_BY_NAME)}")
            f = _FORMATS_BY_NAME[f]
        elif not isinstance(f, DateFormat):
            raise TypeError(f"formats must hold DateFormat objects or names, got {type(f).__name__}")
        out.append(f)
    if not out:
        raise ValueError("formats must name at least one format, got an empty sequence")
    return out


def _draw_distinct(
    n: int, draw: Callable[[], tuple[str, str]], exclude: Iterable[str], *, max_attempts: int, what: str
) -> list[tuple[str, str]]:
    """Call ``draw()`` until ``n`` pairs with distinct sources (none in ``exclude``) are collected."""
    exclude = set(exclude)
    seen = set(exclude)
    pairs: list[tuple[str, str]] = []
    for _ in range(max_attempts):
        if len(pairs) == n:
            break
        src, tgt = draw()
        if src not in seen:
            seen.add(src)
            pairs.append((src, tgt))
    if len(pairs) < n:
        raise RuntimeError(f"could not draw {n} new distinct {what}; exclude has {len(exclude)} sources")
    return pairs


def make_date_pairs(
    n: int,
    seed: int = 0,
    *,
    formats: Sequence[DateFormat | str] | None = None,
    exclude: Collection[str] = (),
) -> list[tuple[str, str]]:
    """``n`` pairs ``(human-written date, ISO date)`` with distinct sources, e.g.
    ``("the 3rd of march 1999", "1999-03-03")``.

    Each pair draws a date uniformly from ``DATE_MIN`` .. ``DATE_MAX`` and a format
    uniformly from ``formats`` (default all :data:`DATE_FORMATS`); weekday names are those of the
    real date. A source already drawn, or in ``exclude`` (say, a training set's sources), is drawn
    again. Deterministic for a ``seed``; uses its own ``random.Random(seed)``.
    """
    _check_int("n", n)
    _check_int("seed", seed)
    fmts = _resolve_formats(formats)
    lo, hi = DATE_MIN.toordinal(), DATE_MAX.toordinal()
    capacity = (hi - lo + 1) * len(fmts)
    if n > capacity // 2:
        raise ValueError(
            f"n={n} is too many distinct dates for {len(fmts)} formats (at most {capacity // 2}, half of "
            f"the {capacity} possible sources, so that sampling without repeats stays fast)"
        )
    rng = random.Random(seed)

    def draw() -> tuple[str, str]:
        date = _dt.date.fromordinal(rng.randint(lo, hi))
        return format_date(date, rng.choice(fmts)), date.isoformat()

    return _draw_distinct(n, draw, exclude, max_attempts=20 * n + 1000, what="dates")


@dataclass(frozen=True)
class CharTaskSplits:
    """Train / validation / test pairs of a character-level toy task and the vocabulary they use.

    The splits never share a source string. Turn them into batches with
    ``BatchIterator(splits.train, splits.vocab, ...)``.
    """

    train: list[tuple[str, str]]
    val: list[tuple[str, str]]
    test: list[tuple[str, str]]
    vocab: CharVocab


def _split3(pairs: list[tuple[str, str]], n_train: int, n_val: int) -> tuple[list, list, list]:
    return pairs[:n_train], pairs[n_train : n_train + n_val], pairs[n_train + n_val :]


def date_dataset(n_train: int, n_val: int, n_test: int = 0, seed: int = 0) -> CharTaskSplits:
    """The date-normalisation task split three ways, with :func:`date_vocab`.

    One call of :func:`make_date_pairs` with ``n_train + n_val + n_test`` distinct sources, cut in
    order, so no source string appears in two splits. Deterministic for ``seed``.
    """
    for name, value in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        _check_int(name, value)
    pairs = make_date_pairs(n_train + n_val + n_test, seed)
    return CharTaskSplits(*_split3(pairs, n_train, n_val), vocab=date_vocab())


_REVERSAL_ALPHABETS = {"digits": string.digits, "letters": string.ascii_lowercase}


def make_reversal_pairs(
    n: int,
    min_len: int = 1,
    max_len: int = 20,
    seed: int = 0,
    *,
    alphabet: str = "digits",
    exclude: Collection[str] = (),
) -> list[tuple[str, str]]:
    """``n`` pairs ``(s, s[::-1])`` with distinct sources, e.g. ``("40215", "51204")``.

    The length of each ``s`` is drawn uniformly from ``min_len..max_len`` (both included), then its
    characters uniformly from ``alphabet`` (``"digits"``, ``"letters"`` (a-z) or any string of
    distinct characters). A source already drawn or in ``exclude`` is drawn again, so when the short
    lengths run out of distinct strings (10 of length 1 with digits) they are rarer than
    uniform. Deterministic for ``seed``; uses its own ``random.Random(seed)``.
    """
    _check_int("n", n)
    _check_int("min_len", min_len, 1)
    _check_int("max_len", max_len, 1)
    _check_int("seed", seed)
    if min_len > max_len:
        raise ValueError(f"min_len={min_len} must be <= max_len={max_len}")
    chars = _REVERSAL_ALPHABETS.get(alphabet, alphabet)
    if not chars or len(set(chars)) != len(chars):
        raise ValueError(f"alphabet must be 'digits', 'letters' or a string of distinct characters, got {alphabet!r}")
    # Distinct strings of length min_len..max_len; past 10**12 the exact count no longer matters.
    capacity = min(sum(len(chars) ** k for k in range(min_len, min(max_len, min_len + 12) + 1)), 10**12)
    if n > capacity // 2:
        raise ValueError(f"n={n} is more than half of the {capacity} distinct strings of length {min_len}..{max_len}")
    rng = random.Random(seed)

    def draw() -> tuple[str, str]:
        s = "".join(rng.choices(chars, k=rng.randint(min_len, max_len)))
        return s, s[::-1]

    return _draw_distinct(n, draw, exclude, max_attempts=50 * n + 1000, what="strings")


def reversal_dataset(
    n_train: int,
    n_val: int,
    n_test: int = 0,
    min_len: int = 1,
    max_len: int = 20,
    seed: int = 0,
    *,
    alphabet: str = "digits",
) -> CharTaskSplits:
    """The reversal task split three ways (no shared sources), with a vocabulary of ``alphabet``."""
    for name, value in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        _check_int(name, value)
    pairs = make_reversal_pairs(n_train + n_val + n_test, min_len, max_len, seed, alphabet=alphabet)
    chars = _REVERSAL_ALPHABETS.get(alphabet, alphabet)
    return CharTaskSplits(*_split3(pairs, n_train, n_val), vocab=CharVocab(chars))


# --------------------------------------------------------------------------------------------------
# 3. Multi30K
# --------------------------------------------------------------------------------------------------

MULTI30K_SPLITS: tuple[str, ...] = ("train", "val", "test_2016_flickr", "test_2017_flickr")
MULTI30K_LANGS: tuple[str, ...] = ("de", "en", "fr")
#: Sentences per split (the same in every language).
MULTI30K_SIZES: dict[str, int] = {"train": 29_000, "val": 1_014, "test_2016_flickr": 1_000, "test_2017_flickr": 1_000}
#: Upstream location of the raw gzip files (task 1 of the Multi30K data repository).
MULTI30K_URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/{split}.{lang}.gz"
#: SHA-256 of every file, as listed in the data folder's ``SHA256SUMS`` (byte-identical to upstream).
MULTI30K_SHA256: dict[str, str] = {
    "test_2016_flickr.de.gz": "9204244e408ccb38d2a55cfcd344df15005fc42a07a6e55ca6c52b6ababb8cc8",
    "test_2016_flickr.en.gz": "611d361c6334bc7246101d48097c13cf5c4413c5befc793cc629934359d532d9",
    "test_2016_flickr.fr.gz": "6d326e188d259fb1d04ac19eae3af956559b3a0b93d7635e56c90987c40c8b90",
    "test_2017_flickr.de.gz": "a2c89666db00c495cd8513b9d708d5a3acc205d7de312ef2bf5fb7ebc1540aee",
    "test_2017_flickr.en.gz": "76a444ee25172e72695cddb13ae4a3bda59430617be88e0bb46b60504f054074",
    "test_2017_flickr.fr.gz": "3ba671ceb2299f3304ffafefea7a833d08632fbaf0ba18546f8a2ec2391af496",
    "train.de.gz": "726e39b2fa9eb9ffb6dc763fb35a179f80fae06ffc5d28b6ace5faa883de28a6",
    "train.en.gz": "d79cfa999dd4c51d2cb42499b6796d5a882c3a8a961923c25a898c90f8bbd56f",
    "train.fr.gz": "622e75069e9f4c577425c4f277116ce66e63a2401c0a2312d90073cb12379a3c",
    "val.de.gz": "f0cba2f995189cf5770f29a8a9a537a3ad3f51657ad873405082ff6863a5e75a",
    "val.en.gz": "14f7d25ddd868909a9213e361768460edcacdd6ab9d1e77b92560dc10c10dc28",
    "val.fr.gz": "ca3106f1a72390591d25f6c45cb4cd39dec4cd3f123e099748a3ce5256c160e9",
}

# (resolved path, mtime_ns, size) of files whose checksum was verified in this process.
_VERIFIED: set[tuple[str, int, int]] = set()


def _check_split_lang(split: str, lang: str, lang_name: str = "lang") -> None:
    if split not in MULTI30K_SPLITS:
        raise UserError(f"split must be one of {MULTI30K_SPLITS}, got {split!r}")
    if lang not in MULTI30K_LANGS:
        raise UserError(f"{lang_name} must be one of {MULTI30K_LANGS}, got {lang!r}")


def _fetch_url(url: str, timeout: float = 60.0) -> bytes:
    """Download ``url`` into memory (the files are at most 1.3 MB). Tests replace this function."""
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - fixed https URL
        return response.read()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _search_dirs(root: str | os.PathLike[str] | None) -> list[Path]:
    dirs: list[Path] = []
    if root is not None:
        dirs.append(Path(root).expanduser())
    dirs.append(data_dir() / "multi30k")  # $ATTN_TUTORIAL_DATA/multi30k, else the user cache
    return list(dict.fromkeys(dirs))


def _verified_bytes(path: Path) -> bytes:
    """The bytes of ``path`` after checking their SHA-256 (skipped when this path, with the same
    modification time and size, was verified before in this process)."""
    name = path.name
    data = path.read_bytes()
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if key in _VERIFIED and len(data) == stat.st_size:
        return data
    digest = _sha256(data)
    if digest != MULTI30K_SHA256[name]:
        raise ChecksumError(
            f"{path} is corrupted or not the expected version: SHA-256 {digest}, expected "
            f"{MULTI30K_SHA256[name]}; it was not used. Delete it (it is downloaded again, and checked, on the next "
            f"run) or restore a good copy from "
            f"{MULTI30K_URL.format(split=name.rsplit('.', 2)[0], lang=name.rsplit('.', 2)[1])}"
        )
    _VERIFIED.add(key)
    return data


#: How many times a download that was cut short (or arrived damaged) is started again from scratch.
DOWNLOAD_ATTEMPTS = 3
#: Failures that mean "the transfer broke off", worth starting again (being offline is not).
_CUT_SHORT = (http.client.IncompleteRead, http.client.RemoteDisconnected, ConnectionResetError, ConnectionAbortedError, TimeoutError)
#: A temporary download file (``.NAME.XXXX.part``) older than this is debris of a killed download.
_STALE_PART_SECONDS = 600.0


def _remove_stale_parts(target: Path) -> None:
    """Delete temporary files a killed download of ``target`` left behind (never used, never renamed)."""
    if not target.parent.is_dir():
        return
    now = time.time()
    for part in target.parent.glob(f".{target.name}.*.part"):
        try:
            if now - part.stat().st_mtime > _STALE_PART_SECONDS:  # a younger one may be another process's
                part.unlink()
        except OSError:
            pass


def _download_verified(url: str, name: str, searched: str, hint: str) -> bytes:
    """The bytes at ``url``, whose SHA-256 is checked; a transfer cut short or damaged is restarted."""
    expected = MULTI30K_SHA256[name]
    digests: list[str] = []
    for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
        try:
            data = _fetch_url(url)
        except _CUT_SHORT as err:
            if attempt < DOWNLOAD_ATTEMPTS:
                continue
            raise FileNotFoundError(
                f"Multi30K file {name} not found in: {searched}, and its download from {url} broke off "
                f"{DOWNLOAD_ATTEMPTS} times ({type(err).__name__}: {err}). {hint}."
            ) from None
        except Exception as err:  # noqa: BLE001 - any other network failure means "offline" here
            raise FileNotFoundError(
                f"Multi30K file {name} not found in: {searched}, and downloading it failed "
                f"({type(err).__name__}: {err}). {hint}."
            ) from None
        digest = _sha256(data)
        if digest == expected:
            return data
        digests.append(f"{digest[:12]}... ({len(data)} bytes)")
    raise ChecksumError(
        f"downloaded {url} {DOWNLOAD_ATTEMPTS} times and its SHA-256 was never {expected} (got {', '.join(digests)}); "
        f"nothing was written. Download it by hand into one of {searched}, check it with sha256sum, or set "
        f"{DATA_ENV_VAR} to a folder with good copies"
    )


def multi30k_path(split: str, lang: str, root: str | os.PathLike[str] | None = None, *, download: bool = True) -> Path:
    """The local, verified path of ``{split}.{lang}.gz``, downloading it if needed.

    Looks in ``root`` (a folder holding the ``.gz`` files directly), then in
    ``$ATTN_TUTORIAL_DATA/multi30k``, or, when that variable is unset, in the user cache
    ``~/.cache/attn_tutorial/multi30k`` (see :func:`attn_tutorial.runtime.data_dir`). A file found
    is checked against :data:`MULTI30K_SHA256` (:class:`ChecksumError` if it differs; it is never
    used). A missing file is downloaded from :data:`MULTI30K_URL` when ``download`` is true and
    verified in memory; a transfer that breaks off or arrives damaged is started again from scratch
    (up to :data:`DOWNLOAD_ATTEMPTS` times). Only verified bytes are written: to a temporary
    ``.NAME.XXXX.part`` file in ``root`` (or the data directory), synced, then renamed into place, so
    a killed download never leaves a half-written file under the real name (its temporary file is
    deleted by a later download). Missing and not downloadable: one ``FileNotFoundError`` naming
    the folders searched and the variable to set.
    """
    _check_split_lang(split, lang)
    name = f"{split}.{lang}.gz"
    dirs = _search_dirs(root)
    for d in dirs:
        candidate = d / name
        if candidate.is_file():
            _verified_bytes(candidate)
            return candidate
    url = MULTI30K_URL.format(split=split, lang=lang)
    searched = ", ".join(str(d) for d in dirs)
    hint = (
        f"Set {DATA_ENV_VAR} to the folder that holds 'multi30k/' (for example the absolute path of "
        f"../shared/data), pass root=, or download {url} into one of the folders searched"
    )
    if not download:
        raise FileNotFoundError(f"Multi30K file {name} not found in: {searched}. {hint}.")
    target = dirs[0] / name
    data = _download_verified(url, name, searched, hint)
    _remove_stale_parts(target)
    atomic_write_bytes(target, data)
    return target


def read_multi30k(split: str, lang: str, root: str | os.PathLike[str] | None = None, *, download: bool = True) -> list[str]:
    """The sentences of one Multi30K file, exactly as stored (only the line's ``"\\n"`` removed).

    Lines are split on ``"\\n"`` only (not on ``"\\r"`` or Unicode line separators, which
    ``str.splitlines`` would also split on).
    """
    path = multi30k_path(split, lang, root, download=download)
    text = gzip.decompress(_verified_bytes(path)).decode("utf-8")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def load_multi30k(
    split: str, src: str = "de", tgt: str = "en", root: str | os.PathLike[str] | None = None, *, download: bool = True
) -> list[tuple[str, str]]:
    """Aligned ``(source, target)`` sentence pairs of a Multi30K split :cite:p:`elliott2016multi30k`.

    ``split`` is one of ``MULTI30K_SPLITS`` (train 29,000 pairs, val 1,014, test_2016_flickr
    1,000, test_2017_flickr 1,000); ``src`` and ``tgt`` two different languages of
    ``MULTI30K_LANGS``. Where the files come from: :func:`multi30k_path`.

    >>> pairs = load_multi30k("val")  # doctest: +SKIP
    >>> pairs[0]  # doctest: +SKIP
    ('Eine Gruppe von Männern lädt Baumwolle auf einen Lastwagen', 'A group of men are loading cotton onto a truck')
    """
    _check_split_lang(split, src, "src")
    _check_split_lang(split, tgt, "tgt")
    if src == tgt:
        raise UserError(f"src and tgt must be different languages, got src=tgt={src!r}")
    source = read_multi30k(split, src, root, download=download)
    target = read_multi30k(split, tgt, root, download=download)
    if len(source) != len(target):
        raise UserError(f"{split}.{src} has {len(source)} lines but {split}.{tgt} has {len(target)}: the two files do not belong together")
    return list(zip(source, target, strict=True))


# --------------------------------------------------------------------------------------------------
# 4. Subword tokens
# --------------------------------------------------------------------------------------------------

_METASPACE = "\u2581"  # "▁", the visible space SentencePiece and Metaspace use


class SubwordTokenizer:
    """A byte-pair-encoding tokenizer (HF ``tokenizers``) with the book's special ids.

    Pipeline: NFKC normalisation, then Metaspace pre-tokenization (each space becomes ``"▁"``
    glued to the next word, and ``"▁"`` is also prepended to the text), then BPE merges. Decoding
    turns ``"▁"`` back into spaces, so ``decode(encode(text)) == text`` for any text that (a) is
    already NFKC-normal (otherwise it returns the NFKC form: a no-break space becomes a plain one,
    ``"ﬁ"`` becomes ``"fi"``), (b) does not start with whitespace, and (c) has only characters seen
    in training (others become ``"<unk>"``). On Multi30K's test sets all three hold for every
    German and English sentence; NFKC changes 44 training and 1 validation sentence of the German
    side, all through a no-break space (U+00A0) that becomes a plain space.

    ``encode`` adds no BOS/EOS (batching does); ``decode`` stops at the first EOS and skips PAD
    and BOS. Create one with :func:`train_bpe` or :meth:`load`.
    """

    def __init__(self, tokenizer: object) -> None:
        from tokenizers import Tokenizer

        if not isinstance(tokenizer, Tokenizer):
            raise TypeError(f"tokenizer must be a tokenizers.Tokenizer, got {type(tokenizer).__name__}")
        for i, tok in enumerate(SPECIAL_TOKENS):
            if tokenizer.token_to_id(tok) != i:
                raise ValueError(
                    f"special token {tok!r} must have id {i}, got {tokenizer.token_to_id(tok)!r}; "
                    "train with train_bpe() or pass special_tokens in the book's order"
                )
        self.tokenizer = tokenizer

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included."""
        return int(self.tokenizer.get_vocab_size(with_added_tokens=True))

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"SubwordTokenizer(vocab_size={self.vocab_size})"

    def encode(self, text: str) -> list[int]:
        """Subword ids of ``text`` (no BOS/EOS); the empty string gives ``[]``."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """:meth:`encode` for many texts at once (in parallel, in Rust)."""
        texts = list(texts)
        bad = [type(t).__name__ for t in texts if not isinstance(t, str)]
        if bad:
            raise TypeError(f"texts must all be str, got {bad[0]}")
        return [list(e.ids) for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def tokens(self, text: str) -> list[str]:
        """The subword strings of ``text``, e.g. ``['▁Ein', '▁Hund', '▁läuft', '.']``, for display."""
        return list(self.tokenizer.encode(text, add_special_tokens=False).tokens)

    def id_to_token(self, i: int) -> str:
        token = self.tokenizer.id_to_token(int(i))
        if token is None:
            raise ValueError(f"id {i} is outside this vocabulary of size {self.vocab_size}")
        return token

    def decode(self, ids: Sequence[int] | Tensor) -> str:
        """The text of ``ids`` up to the first EOS, skipping PAD and BOS (UNK shows as ``<unk>``)."""
        kept = _strip_specials(ids)
        bad = [i for i in kept if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"id {bad[0]} is outside this vocabulary of size {self.vocab_size}")
        return self.tokenizer.decode(kept, skip_special_tokens=False)

    def decode_batch(self, batch: Sequence[Sequence[int]] | Tensor) -> list[str]:
        return [self.decode(row) for row in batch]

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the tokenizer as JSON (the ``tokenizers`` library's own format), atomically."""
        path = Path(path)
        atomic_write_bytes(path, self.tokenizer.to_str(pretty=True).encode("utf-8"))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SubwordTokenizer:
        """Read a tokenizer written by :meth:`save` (or any ``tokenizers`` JSON with the book's specials)."""
        from tokenizers import Tokenizer

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no tokenizer file at {path}")
        return cls(Tokenizer.from_file(str(path)))


def train_bpe(
    texts: Sequence[str] | Iterator[str],
    vocab_size: int = 8000,
    *,
    min_frequency: int = 2,
    show_progress: bool = False,
) -> SubwordTokenizer:
    """Train a BPE tokenizer on ``texts`` (for translation: the source AND target sentences of the
    training split only, so that no test sentence leaks into the vocabulary).

    BPE starts from single characters and repeatedly merges the most frequent adjacent pair of
    symbols into a new symbol until the vocabulary holds ``vocab_size`` symbols (specials
    included); pairs seen fewer than ``min_frequency`` times are never merged. A joint vocabulary
    lets source and target share pieces (names, numbers) and an embedding matrix. On Multi30K
    train de+en (58,000 sentences) an 8k vocabulary trains in about 2.5 s on two cores.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    _check_int("vocab_size", vocab_size, len(SPECIAL_TOKENS) + 1)
    _check_int("min_frequency", min_frequency, 1)
    tokenizer = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement=_METASPACE, prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement=_METASPACE, prepend_scheme="always")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),  # ids 0..3 in this order
        show_progress=show_progress,
    )
    tokenizer.train_from_iterator(iter(texts), trainer=trainer)
    return SubwordTokenizer(tokenizer)


# --------------------------------------------------------------------------------------------------
# 5. Batches
# --------------------------------------------------------------------------------------------------

#: Default cap on a sequence's length in tokens, BOS/EOS included (longer ones are truncated). The
#: longest German or English Multi30K sentence has 55 tokens of a joint BPE-8k (train.de), so
#: nothing in it is cut; the cap only guards against stray very long inputs.
DEFAULT_MAX_LEN = 128


@dataclass(frozen=True, eq=False)
class Batch:
    """A padded batch for a sequence-to-sequence model. Masks are boolean, ``True`` = a real token
    (a key the model *may attend* to); padding (``PAD_ID``) is ``False``.

    * ``src``: source ids followed by EOS (so no source is empty and no attention row is fully
      masked);
    * ``tgt_in``: BOS followed by the target ids (the decoder's input, teacher forcing);
    * ``tgt_out``: the target ids followed by EOS (what the decoder must predict at each position),
      so ``tgt_out[:, t]`` is the token after ``tgt_in[:, t]``;
    * ``tgt_mask``: the padding mask of both ``tgt_in`` and ``tgt_out`` (the decoder combines it
      with a causal mask itself);
    * ``index``: each row's position in the data set it came from (to restore the original order).

    Shape:
        ``src``, ``src_mask``: ``(B, S)``; ``tgt_in``, ``tgt_out``, ``tgt_mask``: ``(B, T)``;
        ``index``: ``(B,)``. Ids are ``torch.long``, masks ``torch.bool``.
    """

    src: Tensor
    src_mask: Tensor
    tgt_in: Tensor
    tgt_out: Tensor
    tgt_mask: Tensor
    index: Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))

    def __post_init__(self) -> None:
        if self.src.dim() != 2:
            raise ValueError(f"src must be (B, S), got shape {tuple(self.src.shape)}")
        b = int(self.src.shape[0])
        if self.src_mask.shape != self.src.shape or self.src_mask.dtype != torch.bool:
            raise ValueError(
                f"src_mask must be torch.bool of src's shape {tuple(self.src.shape)} (True = real token), "
                f"got {self.src_mask.dtype} {tuple(self.src_mask.shape)}"
            )
        if self.tgt_in.dim() != 2 or self.tgt_in.shape[0] != b:
            raise ValueError(f"tgt_in must be (B={b}, T), got shape {tuple(self.tgt_in.shape)}")
        for name in ("tgt_out", "tgt_mask"):
            t = getattr(self, name)
            if t.shape != self.tgt_in.shape:
                raise ValueError(f"{name} must have tgt_in's shape {tuple(self.tgt_in.shape)}, got {tuple(t.shape)}")
        if self.tgt_mask.dtype != torch.bool:
            raise ValueError(f"tgt_mask must be torch.bool (True = real token), got {self.tgt_mask.dtype}")
        if self.index.numel() == 0:
            object.__setattr__(self, "index", torch.arange(b, device=self.src.device))
        elif self.index.shape != (b,):
            raise ValueError(f"index must be (B={b},), got shape {tuple(self.index.shape)}")

    def __len__(self) -> int:
        """The number of examples ``B``."""
        return int(self.src.shape[0])

    @property
    def num_tokens(self) -> int:
        """Number of real target tokens, EOS included and padding not; a per-token loss divides by it."""
        return int(self.tgt_mask.sum())

    @property
    def num_src_tokens(self) -> int:
        """Real source tokens (EOS included, padding not)."""
        return int(self.src_mask.sum())

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """A copy of the batch on ``device``."""
        names = ("src", "src_mask", "tgt_in", "tgt_out", "tgt_mask", "index")
        return Batch(*(getattr(self, n).to(device, non_blocking=non_blocking) for n in names))


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def collate(
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    pad_to_multiple_of: int = 8,
    *,
    index: Sequence[int] | None = None,
) -> Batch:
    """Pad ``(source ids, target ids)`` pairs (without BOS/EOS) into a :class:`Batch`.

    ``S = round_up(max_i (len(src_i) + 1), pad_to_multiple_of)`` and likewise ``T`` with the
    targets; the ``+ 1`` is the EOS (source and ``tgt_out``) or BOS (``tgt_in``). Rounding the
    lengths up to a multiple of 8 (``pad_to_multiple_of=1`` turns it off) costs a little padding
    but means far fewer distinct tensor shapes, so CPU kernels and allocator caches are reused
    instead of rebuilt at every step. Empty sequences are fine: the source is then ``[EOS]`` and
    the target ``tgt_out = [EOS]``.

    Shape:
        ``pairs``: ``B`` pairs of id lists -> a :class:`Batch` with ``(B, S)`` and ``(B, T)`` tensors.
    """
    _check_int("pad_to_multiple_of", pad_to_multiple_of, 1)
    if len(pairs) == 0:
        raise ValueError("pairs must hold at least one (source ids, target ids) pair, got none")
    srcs, tgts = [], []
    for k, pair in enumerate(pairs):
        if len(pair) != 2:
            raise ValueError(f"pairs[{k}] must be a (source ids, target ids) pair, got {len(pair)} items")
        srcs.append(_as_id_array(pair[0], f"pairs[{k}][0]"))
        tgts.append(_as_id_array(pair[1], f"pairs[{k}][1]"))
    b = len(pairs)
    s = _round_up(max(len(x) for x in srcs) + 1, pad_to_multiple_of)
    t = _round_up(max(len(y) for y in tgts) + 1, pad_to_multiple_of)
    # Filled in NumPy (one slice assignment per row), then shared with torch without a copy.
    src = np.full((b, s), PAD_ID, dtype=np.int64)
    tgt_in = np.full((b, t), PAD_ID, dtype=np.int64)
    tgt_out = np.full((b, t), PAD_ID, dtype=np.int64)
    for i, (x, y) in enumerate(zip(srcs, tgts)):
        src[i, : len(x)] = x
        src[i, len(x)] = EOS_ID
        tgt_in[i, 0] = BOS_ID
        tgt_in[i, 1 : len(y) + 1] = y
        tgt_out[i, : len(y)] = y
        tgt_out[i, len(y)] = EOS_ID
    src_lens = torch.tensor([len(x) + 1 for x in srcs])
    tgt_lens = torch.tensor([len(y) + 1 for y in tgts])
    src_mask = torch.arange(s) < src_lens[:, None]  # (B, S)
    tgt_mask = torch.arange(t) < tgt_lens[:, None]  # (B, T)
    src, tgt_in, tgt_out = (torch.from_numpy(a) for a in (src, tgt_in, tgt_out))
    idx = torch.arange(b) if index is None else torch.as_tensor(list(index), dtype=torch.long)
    if idx.shape != (b,):
        raise ValueError(f"index must hold one position per pair (B={b}), got shape {tuple(idx.shape)}")
    return Batch(src, src_mask, tgt_in, tgt_out, tgt_mask, idx)


def token_budget_batches(
    lengths: Sequence[int],
    max_tokens: int,
    *,
    shuffle: bool = True,
    seed: int = 0,
    epoch: int = 0,
    bucket_size: int = 4096,
    pad_to_multiple_of: int = 1,
) -> list[list[int]]:
    """Group example indices into batches of similar length whose padded size stays in budget.

    Every batch satisfies ``len(batch) * round_up(max(lengths[batch]), pad_to_multiple_of) <=
    max_tokens``, so batches of short sentences hold many and batches of long ones few: the work
    per step is about constant and little is spent on padding.

    With ``shuffle``: a random permutation (``numpy.random.default_rng((seed, epoch))``) is cut into
    buckets of ``bucket_size`` examples, each bucket is sorted by length and cut greedily into
    batches, and the batches are shuffled. Large random buckets keep batches tight while still
    mixing the data differently every epoch. Without ``shuffle``: one sort of everything by length
    (stable), batches in that order (for evaluation). Each index appears exactly once; the result
    depends only on ``(lengths, max_tokens, seed, epoch, ...)``.

    Raises ``ValueError`` if one example alone is over budget (truncate it or raise ``max_tokens``).
    """
    _check_int("max_tokens", max_tokens, 1)
    _check_int("seed", seed)
    _check_int("epoch", epoch)
    _check_int("bucket_size", bucket_size, 1)
    _check_int("pad_to_multiple_of", pad_to_multiple_of, 1)
    lens = np.asarray(lengths)
    if lens.ndim != 1 or (lens.size and not np.issubdtype(lens.dtype, np.integer)):
        raise ValueError(f"lengths must be a 1-D sequence of ints, got shape {lens.shape} and dtype {lens.dtype}")
    if lens.size and lens.min() < 1:
        raise ValueError(f"lengths must be >= 1, got {int(lens.min())} at index {int(lens.argmin())}")
    padded = -(-lens // pad_to_multiple_of) * pad_to_multiple_of
    if padded.size and padded.max() > max_tokens:
        i = int(padded.argmax())
        raise ValueError(
            f"example {i} alone needs {int(padded[i])} padded tokens > max_tokens={max_tokens}; "
            "truncate long sequences (BatchIterator(max_len=...)) or raise max_tokens"
        )
    if shuffle:
        rng = np.random.default_rng((seed, epoch))
        perm = rng.permutation(lens.size)
        buckets = [perm[i : i + bucket_size] for i in range(0, lens.size, bucket_size)]
    else:
        rng = None
        buckets = [np.arange(lens.size)]
    batches: list[list[int]] = []
    for bucket in buckets:
        order = bucket[np.argsort(lens[bucket], kind="stable")]
        current: list[int] = []
        width = 0
        for i in order.tolist():
            new_width = max(width, int(padded[i]))
            if current and (len(current) + 1) * new_width > max_tokens:
                batches.append(current)
                current, new_width = [], int(padded[i])
            current.append(i)
            width = new_width
        if current:
            batches.append(current)
    if rng is not None:
        batches = [batches[k] for k in rng.permutation(len(batches))]
    return batches


class BatchIterator:
    """Pairs of texts -> :class:`Batch` es under a token budget, re-shuffled each epoch.

    ``pairs`` are ``(source, target)`` strings encoded once here with ``tokenizer`` (and
    ``tgt_tokenizer`` for the targets, if given; default the same, as for a joint BPE), or already
    lists of ids when ``tokenizer`` is ``None``. Sequences longer than ``max_len`` tokens *with*
    their EOS/BOS are truncated to ``max_len`` (``None``: never; :attr:`num_truncated` counts them).
    Batches come from :func:`token_budget_batches` with ``lengths = max(len(src), len(tgt)) + 1``,
    so neither ``(B, S)`` nor ``(B, T)`` exceeds ``max_tokens`` elements. Call :meth:`set_epoch`
    before each epoch to get that epoch's order (as with PyTorch's ``DistributedSampler``).

    >>> it = BatchIterator([("ab", "ba"), ("", "")], CharVocab("ab"), max_tokens=16)
    >>> [tuple(b.src.shape) for b in it]
    [(2, 8)]
    """

    def __init__(
        self,
        pairs: Sequence[tuple[str, str]] | Sequence[tuple[Sequence[int], Sequence[int]]],
        tokenizer: TextTokenizer | None,
        max_tokens: int = 4096,
        shuffle: bool = True,
        seed: int = 0,
        *,
        max_len: int | None = DEFAULT_MAX_LEN,
        pad_to_multiple_of: int = 8,
        bucket_size: int = 4096,
        tgt_tokenizer: TextTokenizer | None = None,
    ) -> None:
        _check_int("max_tokens", max_tokens, 1)
        _check_int("seed", seed)
        _check_int("pad_to_multiple_of", pad_to_multiple_of, 1)
        _check_int("bucket_size", bucket_size, 1)
        if max_len is not None:
            _check_int("max_len", max_len, 2)
        if len(pairs) == 0:
            raise ValueError("pairs must hold at least one example, got none")
        if tokenizer is None:
            src_ids = _to_arrays([p[0] for p in pairs], "source ids")
            tgt_ids = _to_arrays([p[1] for p in pairs], "target ids")
        else:
            src_ids = _to_arrays(_encode_all(tokenizer, [p[0] for p in pairs]), "source ids")
            tgt_ids = _to_arrays(_encode_all(tgt_tokenizer or tokenizer, [p[1] for p in pairs]), "target ids")
        #: How many examples had their source or target cut to ``max_len``.
        self.num_truncated = 0
        if max_len is not None:
            keep = max_len - 1  # room for EOS (source, tgt_out) or BOS (tgt_in)
            self.num_truncated = sum(len(x) > keep or len(y) > keep for x, y in zip(src_ids, tgt_ids))
            src_ids = [x[:keep] for x in src_ids]
            tgt_ids = [y[:keep] for y in tgt_ids]
        #: The encoded examples, ``(source ids, target ids)`` as int64 arrays without BOS/EOS.
        self.examples: list[tuple[np.ndarray, np.ndarray]] = list(zip(src_ids, tgt_ids))
        #: ``max(len(source), len(target)) + 1`` per example: what the token budget counts.
        self.lengths: list[int] = [max(len(x), len(y)) + 1 for x, y in self.examples]
        longest = int(np.argmax(self.lengths))
        if _round_up(self.lengths[longest], pad_to_multiple_of) > max_tokens:
            raise ValueError(
                f"example {longest} alone needs {_round_up(self.lengths[longest], pad_to_multiple_of)} padded "
                f"tokens > max_tokens={max_tokens}; lower max_len (now {max_len}) or raise max_tokens"
            )
        self.max_tokens = max_tokens
        self.shuffle = shuffle
        self.seed = seed
        self.max_len = max_len
        self.pad_to_multiple_of = pad_to_multiple_of
        self.bucket_size = bucket_size
        self.epoch = 0
        self._batches: list[list[int]] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Use the batch order of ``epoch`` from now on (a different shuffle per epoch)."""
        _check_int("epoch", epoch)
        if epoch != self.epoch:
            self.epoch = epoch
            self._batches = None

    def batches(self) -> list[list[int]]:
        """This epoch's batches as lists of example indices."""
        if self._batches is None:
            self._batches = token_budget_batches(
                self.lengths,
                self.max_tokens,
                shuffle=self.shuffle,
                seed=self.seed,
                epoch=self.epoch,
                bucket_size=self.bucket_size,
                pad_to_multiple_of=self.pad_to_multiple_of,
            )
        return self._batches

    def __len__(self) -> int:
        """The number of batches in this epoch."""
        return len(self.batches())

    def __iter__(self) -> Iterator[Batch]:
        for idx in self.batches():
            yield collate([self.examples[i] for i in idx], self.pad_to_multiple_of, index=idx)

    @property
    def num_examples(self) -> int:
        return len(self.examples)


def _to_arrays(seqs: Sequence[Sequence[int]], name: str) -> list[np.ndarray]:
    """Lists of ids -> int64 array views into one flat array (one pass instead of one per list)."""
    seqs = [s.tolist() if isinstance(s, (Tensor, np.ndarray)) else s for s in seqs]
    sizes = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    try:
        flat = np.fromiter(itertools.chain.from_iterable(seqs), dtype=np.int64, count=int(sizes.sum()))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be sequences of int token ids ({err})") from None
    return np.split(flat, np.cumsum(sizes)[:-1]) if len(seqs) else []


def _encode_all(tokenizer: TextTokenizer, texts: list[str]) -> list[list[int]]:
    encode_batch = getattr(tokenizer, "encode_batch", None)
    if callable(encode_batch):
        return [list(x) for x in encode_batch(texts)]
    return [list(tokenizer.encode(t)) for t in texts]

