"""Toy tasks, character level and seeded: date normalisation and sequence reversal.

* Date normalisation (:func:`make_date_pairs`, :func:`date_dataset`): 20 :data:`DATE_FORMATS` such as
  ``"saturday 21 november 2026"`` or ``"3-Mar-99"``, all mapped to ISO ``"2026-11-21"``, the attention
  chapters' classic task :cite:p:`bahdanau2015`.
* Sequence reversal (:func:`make_reversal_pairs`, :func:`reversal_dataset`) for the bottleneck chapter.

Every generator takes a seed and uses a local ``random.Random``: nothing here reads or changes
global random state.
"""

from __future__ import annotations

import datetime as _dt
import random
import string
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass

from ._checks import check_int
from .tokens import CharVocab

__all__ = [
    "DATES_SPLITS",
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
]


#: The split names of a character task (:class:`CharTaskSplits`), as the CLI takes them.
DATES_SPLITS = ("train", "val", "test")

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
    check_int("yy", yy)
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
    check_int("n", n)
    check_int("seed", seed)
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
        check_int(name, value)
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
    check_int("n", n)
    check_int("min_len", min_len, 1)
    check_int("max_len", max_len, 1)
    check_int("seed", seed)
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
        check_int(name, value)
    pairs = make_reversal_pairs(n_train + n_val + n_test, min_len, max_len, seed, alphabet=alphabet)
    chars = _REVERSAL_ALPHABETS.get(alphabet, alphabet)
    return CharTaskSplits(*_split3(pairs, n_train, n_val), vocab=CharVocab(chars))


