"""Fuzzing ``attn-tutorial translate`` with hypothesis: any text, any bytes, one output line per input line.

Runs the command in-process (``attn_tutorial.cli.main`` with a byte stdin and a captured stdout) with
the shipped ``gru-none`` model, greedy, outputs capped at 8 tokens (``--max-len``; the contract does
not depend on it) and the model loaded once. Bounded: 15 + 15 examples, no deadline per example (time it on an idle machine:
on a 2-core machine with a load average of 13 the text test took 537 s at 25 examples).

The contract: exit status 0; exactly as many output lines as input lines (lines split on ``\\n``, a
final ``\\n`` ends the last line); no line break inside an output; an empty output for a line that is
empty after cleaning; nothing on stderr but ``attn-tutorial: warning: line N ...`` lines; no traceback.
"""

from __future__ import annotations

import io
import re
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attn_tutorial import cli as cli_module
from attn_tutorial.cli import clean_line, main
from attn_tutorial.pretrained import list_pretrained, load_pretrained

MODEL = "gru-none"
ARGV = ["translate", "--model", MODEL, "--max-len", "8", "--batch-size", "64"]
FUZZ = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

_LOADED: dict[str, tuple] = {}


@pytest.fixture
def cached_model(monkeypatch: pytest.MonkeyPatch) -> None:
    if MODEL not in list_pretrained():
        pytest.skip(f"the shipped model {MODEL} is not installed")
    if MODEL not in _LOADED:
        _LOADED[MODEL] = load_pretrained(MODEL)
    monkeypatch.setattr(cli_module, "load_pretrained", lambda name, device=None: _LOADED[MODEL])


def _translate(raw: bytes, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], str]:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8"))
    capsys.readouterr()
    status = main(ARGV)
    out, err = capsys.readouterr()
    assert status == 0, err
    assert "Traceback" not in err and "error" not in err
    assert all(re.match(r"attn-tutorial: warning: line \d+ ", line) for line in err.splitlines()), err
    assert out == "" or out.endswith("\n")
    return out.split("\n")[:-1], err


def _input_lines(raw: bytes) -> list[bytes]:
    lines = raw.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return lines


# Any text without surrogates (they cannot be encoded as UTF-8): control characters, format and
# combining characters, emoji, every script, line separators; short lines, and long ones made by
# repeating a piece, up to 20,000 characters.
_ANY_CHAR = st.characters(blacklist_categories=("Cs",))
_SHORT = st.text(_ANY_CHAR, max_size=40)
_LONG = st.builds(lambda piece, n: (piece * n)[:20_000], st.text(_ANY_CHAR, min_size=1, max_size=30), st.integers(100, 2_000))
_LINE = st.one_of(_SHORT, _SHORT, _SHORT, _SHORT, _SHORT, _LONG).map(lambda s: s.replace("\n", " "))


@FUZZ
@given(lines=st.lists(_LINE, max_size=6), final_newline=st.booleans(), crlf=st.booleans())
def test_any_text_gives_one_line_per_line(
    cached_model: None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    lines: list[str], final_newline: bool, crlf: bool,
) -> None:
    end = "\r\n" if crlf else "\n"
    raw = (end.join(lines) + (end if final_newline and lines else "")).encode("utf-8")
    got, _ = _translate(raw, capsys, monkeypatch)
    expected = _input_lines(raw)
    assert len(got) == len(expected)
    for out, line in zip(got, expected):
        assert not any(sep in out for sep in "\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")
        if not clean_line(line.decode("utf-8").removesuffix("\r")):
            assert out == ""


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(raw=st.lists(st.binary(max_size=200), max_size=6).map(lambda parts: b"\n".join(parts)), final=st.booleans())
def test_any_bytes_give_one_line_per_line(
    cached_model: None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, raw: bytes, final: bool
) -> None:
    raw = raw + (b"\n" if final else b"")
    got, err = _translate(raw, capsys, monkeypatch)
    expected = _input_lines(raw)
    assert len(got) == len(expected)
    for number, line in enumerate(expected, 1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            assert f"line {number} is not valid UTF-8" in err
