"""Tests of attn_tutorial.tasks: the date task and the reversal task."""

from __future__ import annotations

import calendar
import datetime as dt
import random
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attn_tutorial as at

# --------------------------------------------------------------------------------------------------
# 2. the date task
# --------------------------------------------------------------------------------------------------

# English ordinals, written out by hand (not derived from the implementation's rule).
ORDINAL_SUFFIX = {1: "st", 2: "nd", 3: "rd", 4: "th", 11: "th", 12: "th", 13: "th", 21: "st", 22: "nd", 23: "rd", 24: "th", 30: "th", 31: "st"}  # fmt: skip
MONTHS = [m.lower() for m in calendar.month_name[1:]]
WEEKDAYS = [w.lower() for w in calendar.day_name]  # Monday first, as date.weekday()


def _template_regex(template: str) -> re.Pattern[str]:
    """A case-insensitive regex with named groups for a DateFormat template (the test's own parser)."""
    fields = {
        "d": r"(?P<d>\d{1,2})",
        "dd": r"(?P<d>\d{2})",
        "dth": r"(?P<d>\d{1,2})(?P<suffix>st|nd|rd|th)",
        "m": r"(?P<m>\d{1,2})",
        "mm": r"(?P<m>\d{2})",
        "month": r"(?P<month>[a-z]+)",
        "mon": r"(?P<mon>[a-z]{3})",
        "weekday": r"(?P<weekday>[a-z]+)",
        "wkd": r"(?P<wkd>[a-z]{3})",
        "yyyy": r"(?P<yyyy>\d{4})",
        "yy": r"(?P<yy>\d{2})",
    }
    parts = re.split(r"\{(\w+)\}", template)
    pattern = "".join(fields[p] if i % 2 else re.escape(p) for i, p in enumerate(parts))
    return re.compile(pattern, re.IGNORECASE)


def _read_date(text: str, template: str) -> dt.date | None:
    """The date ``text`` denotes when read with ``template``, or None if it cannot be read so."""
    match = _template_regex(template).fullmatch(text)
    if match is None:
        return None
    g = {k: v.lower() for k, v in match.groupdict().items() if v is not None}
    if "yyyy" in g:
        year = int(g["yyyy"])
    else:
        yy = int(g["yy"])
        year = 1900 + yy if yy >= 50 else 2000 + yy  # the documented pivot
    if "m" in g:
        month = int(g["m"])
    elif "month" in g:
        if g["month"] not in MONTHS:
            return None
        month = MONTHS.index(g["month"]) + 1
    else:
        abbrs = [m[:3] for m in MONTHS]
        if g["mon"] not in abbrs:
            return None
        month = abbrs.index(g["mon"]) + 1
    try:
        date = dt.date(year, month, int(g["d"]))
    except ValueError:
        return None
    if "weekday" in g and g["weekday"] != WEEKDAYS[date.weekday()]:
        return None
    if "wkd" in g and g["wkd"] != WEEKDAYS[date.weekday()][:3]:
        return None
    if "suffix" in g:
        suffix = {1: "st", 2: "nd", 3: "rd"}.get(date.day % 10, "th") if date.day not in (11, 12, 13) else "th"
        if g["suffix"] != suffix:
            return None
    return date


def test_ordinal_rule_used_by_the_test_parser_matches_english() -> None:
    for day, suffix in ORDINAL_SUFFIX.items():
        text = at.format_date(dt.date(2001, 1, day), "the_dth_of_month_yyyy")
        assert text == f"the {day}{suffix} of january 2001"
        assert _read_date(text, "the {dth} of {month} {yyyy}") == dt.date(2001, 1, day)


def test_there_are_many_distinct_date_formats() -> None:
    assert len(at.DATE_FORMATS) >= 15
    assert len({f.name for f in at.DATE_FORMATS}) == len(at.DATE_FORMATS)
    assert len({(f.template, f.case) for f in at.DATE_FORMATS}) == len(at.DATE_FORMATS)


@pytest.mark.parametrize(
    ("date", "expected"),
    [
        # Examples from the brief, in the formats it names. 21 Nov 2026 is a Saturday and
        # 3 Mar 1999 a Wednesday (checked against a calendar).
        (dt.date(2026, 11, 21), "saturday 21 november 2026"),
        (dt.date(2026, 11, 21), "21/11/26"),
        (dt.date(2026, 11, 21), "Nov 21, 2026"),
        (dt.date(1999, 3, 3), "the 3rd of march 1999"),
        (dt.date(2026, 11, 21), "2026.11.21"),
        (dt.date(2026, 11, 21), "21 Nov 2026"),
        (dt.date(2026, 11, 21), "november 21st, 2026"),
        (dt.date(1999, 3, 3), "WEDNESDAY, MARCH 3, 1999"),
        (dt.date(1999, 3, 3), "3-Mar-99"),
        (dt.date(2026, 11, 21), "Sat, 21 Nov 2026"),
        (dt.date(1950, 1, 1), "sun jan 1st 1950"),
        (dt.date(2049, 12, 31), "31.12.49"),
    ],
)
def test_known_dates_appear_in_some_format(date: dt.date, expected: str) -> None:
    assert expected in {at.format_date(date, f) for f in at.DATE_FORMATS}


@given(st.dates(min_value=at.DATE_MIN, max_value=at.DATE_MAX))
@settings(max_examples=60, deadline=None)
def test_every_format_reads_back_to_its_date_and_to_no_other(date: dt.date) -> None:
    """Each rendering denotes ``date`` under its own format, and under no format another date,
    even read case-insensitively: the task is unambiguous, weekdays and ordinals are right."""
    for fmt in at.DATE_FORMATS:
        text = at.format_date(date, fmt)
        assert _read_date(text, fmt.template) == date, (fmt.name, text)
        assert set(text) <= set(at.DATE_ALPHABET)
        for other in at.DATE_FORMATS:
            reading = _read_date(text, other.template)
            assert reading in (None, date), (text, fmt.name, other.name, reading)


def test_formats_are_injective_on_whole_years() -> None:
    """Every day of six years with telling two-digit years, in every format: no string twice."""
    seen: dict[str, dt.date] = {}
    for year in (1950, 1999, 2001, 2012, 2031, 2049):
        for ordinal in range(dt.date(year, 1, 1).toordinal(), dt.date(year, 12, 31).toordinal() + 1):
            date = dt.date.fromordinal(ordinal)
            for fmt in at.DATE_FORMATS:
                assert seen.setdefault(at.format_date(date, fmt), date) == date


def test_case_of_names_follows_the_format() -> None:
    date = dt.date(2026, 11, 21)
    for fmt in at.DATE_FORMATS:
        letters = re.sub(r"(?<=\d)(st|nd|rd|th)|\b(the|of)\b", "", at.format_date(date, fmt))
        letters = re.sub(r"[^A-Za-z]", " ", letters).split()
        for word in letters:
            expected = {"lower": word.lower(), "upper": word.upper(), "title": word.title()}[fmt.case]
            assert word == expected, (fmt.name, word)


def test_two_digit_years_map_one_to_one_onto_the_range() -> None:
    years = [at.expand_two_digit_year(yy) for yy in range(100)]
    assert sorted(years) == list(range(at.DATE_MIN.year, at.DATE_MAX.year + 1))
    assert all(y % 100 == yy for yy, y in enumerate(years))
    assert (at.expand_two_digit_year(49), at.expand_two_digit_year(50)) == (2049, 1950)
    with pytest.raises(ValueError, match="yy"):
        at.expand_two_digit_year(100)


def test_make_date_pairs_is_seeded_distinct_and_leaves_global_state_alone() -> None:
    state = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state())
    pairs = at.make_date_pairs(500, seed=7)
    assert pairs == at.make_date_pairs(500, seed=7)
    assert pairs != at.make_date_pairs(500, seed=8)
    assert random.getstate() == state[0]
    assert np.array_equal(np.random.get_state()[1], state[1])
    assert torch.equal(torch.get_rng_state(), state[2])
    sources = [s for s, _ in pairs]
    assert len(set(sources)) == len(sources) == 500
    for src, tgt in pairs:
        date = dt.date.fromisoformat(tgt)
        assert at.DATE_MIN <= date <= at.DATE_MAX
        assert any(_read_date(src, f.template) == date for f in at.DATE_FORMATS), src
    # Formats and years are spread out, not stuck in a corner.
    used = {next(f.name for f in at.DATE_FORMATS if _read_date(s, f.template)) for s in sources}
    assert len(used) >= 15
    years = [int(t[:4]) for _, t in pairs]
    assert min(years) < 1960 and max(years) > 2040


def test_make_date_pairs_options_and_errors() -> None:
    only = at.make_date_pairs(50, seed=1, formats=["yyyymmdd"])
    assert all(s == t.replace("-", "") for s, t in only)
    taken = {s for s, _ in at.make_date_pairs(200, seed=3, formats=["dd/mm/yy"])}
    fresh = at.make_date_pairs(200, seed=3, formats=["dd/mm/yy"], exclude=taken)
    assert not taken & {s for s, _ in fresh}
    assert at.make_date_pairs(0) == []
    with pytest.raises(ValueError, match="unknown date format"):
        at.make_date_pairs(3, formats=["yyyy"])
    with pytest.raises(ValueError, match="too many"):
        at.make_date_pairs(10**6, formats=["yyyymmdd"])
    with pytest.raises(ValueError, match="n must be"):
        at.make_date_pairs(-1)
    with pytest.raises(ValueError, match="case"):
        at.DateFormat("x", "{d}", case="shout")
    with pytest.raises(ValueError, match="invalid"):
        at.DateFormat("x", "{day}")


def test_date_dataset_splits_share_no_source_and_fit_the_vocab() -> None:
    splits = at.date_dataset(600, 100, 100, seed=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (600, 100, 100)
    train, val, test = ({s for s, _ in part} for part in (splits.train, splits.val, splits.test))
    assert not (train & val or train & test or val & test)
    assert at.date_dataset(600, 100, 100, seed=0) == splits
    for src, tgt in splits.train + splits.val + splits.test:
        assert at.UNK_ID not in splits.vocab.encode(src) + splits.vocab.encode(tgt)
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", tgt)
    assert splits.vocab.vocab_size == 4 + len(at.DATE_ALPHABET)


# --------------------------------------------------------------------------------------------------
# 2b. the reversal task
# --------------------------------------------------------------------------------------------------


def test_reversal_pairs_reverse_and_cover_the_length_range() -> None:
    pairs = at.make_reversal_pairs(2000, min_len=3, max_len=12, seed=5)
    assert pairs == at.make_reversal_pairs(2000, min_len=3, max_len=12, seed=5)
    assert pairs != at.make_reversal_pairs(2000, min_len=3, max_len=12, seed=6)
    lengths = [len(s) for s, _ in pairs]
    assert set(lengths) == set(range(3, 13))
    counts = np.bincount(lengths)[3:]
    assert counts.min() > 0.6 * counts.mean()  # about uniform
    for s, t in pairs:
        assert t == "".join(reversed(s)) and s.isdigit()
    assert len({s for s, _ in pairs}) == 2000
    letters = at.make_reversal_pairs(50, 4, 4, seed=0, alphabet="letters")
    assert all(len(s) == 4 and s.isalpha() and s.islower() for s, _ in letters)
    assert all(set(s) <= set("xy") for s, _ in at.make_reversal_pairs(4, 3, 3, alphabet="xy"))


def test_reversal_errors_and_splits() -> None:
    with pytest.raises(ValueError, match="min_len"):
        at.make_reversal_pairs(5, min_len=5, max_len=4)
    with pytest.raises(ValueError, match="more than half"):
        at.make_reversal_pairs(10, min_len=1, max_len=1)  # only 10 strings of one digit
    with pytest.raises(ValueError, match="distinct"):
        at.make_reversal_pairs(5, alphabet="aa")
    splits = at.reversal_dataset(300, 50, 50, min_len=2, max_len=9, seed=1)
    parts = [{s for s, _ in p} for p in (splits.train, splits.val, splits.test)]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert splits.vocab.alphabet == "0123456789"


def test_reversal_pairs_long_minimum_length() -> None:
    """min_len above 12 used to compute a capacity of 0 and refuse; every length is allowed."""
    from attn_tutorial import make_reversal_pairs

    pairs = make_reversal_pairs(50, min_len=14, max_len=16, seed=0)
    assert len(pairs) == 50 and all(14 <= len(s) <= 16 and t == s[::-1] for s, t in pairs)
    with pytest.raises(ValueError, match="more than half"):
        make_reversal_pairs(60, min_len=1, max_len=1)
