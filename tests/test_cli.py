"""The attn-tutorial console script."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from attn_tutorial import __version__
from attn_tutorial.cli import main


def test_info_prints_versions_device_and_data_dir(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ATTN_TUTORIAL_DATA", str(tmp_path))
    assert main(["info", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert f"attn_tutorial {__version__}" in out
    assert torch.__version__ in out
    assert "device        cpu" in out
    assert str(tmp_path.resolve()) in out


def test_info_reports_a_bad_data_dir(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTN_TUTORIAL_DATA", str(tmp_path / "missing"))
    assert main(["info", "--device", "cpu"]) == 2
    assert "ATTN_TUTORIAL_DATA" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_unavailable_device_is_a_clean_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["info", "--device", "cuda"])
    assert exc.value.code == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_a_command_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2


def test_module_entry_point_runs() -> None:
    # The console script itself is run by test_console_script_translates_from_stdin below.
    done = subprocess.run([sys.executable, "-m", "attn_tutorial", "--version"], capture_output=True, text=True,
                          check=True, timeout=60)
    assert done.stdout.strip() == f"attn-tutorial {__version__}"


# --------------------------------------------------------------------------------------------
# train / translate / evaluate on a tiny model of the date task (CPU, one thread: see conftest)
# --------------------------------------------------------------------------------------------

import io  # noqa: E402
import json  # noqa: E402

import sacrebleu  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from attn_tutorial import multi30k as data_module  # noqa: E402
from attn_tutorial.cli import _read_lines  # noqa: E402
from attn_tutorial import CharVocab, date_dataset, date_vocab  # noqa: E402
from attn_tutorial.pretrained import CARD_FILE, load_pretrained, load_tokenizer, translate_sentences  # noqa: E402
from attn_tutorial import load_checkpoint  # noqa: E402

TINY_DATES = [
    "--recipe", "gru-bahdanau-dates", "--device", "cpu",
    "--set", "data.n_train=64", "--set", "data.n_val=12", "--set", "data.n_test=12",
    "--set", "data.max_tokens=256", "--set", "model.emb_dim=8", "--set", "model.hidden_dim=12",
    "--set", "train.checkpoint_every_steps=2", "--set", "train.log_every=1",
]  # fmt: skip


def _train(out: Path, *extra: str) -> int:
    return main(["train", *TINY_DATES, "--out", str(out), *extra])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 4-step run of a tiny date model (shared by the tests below; never modified)."""
    out = tmp_path_factory.mktemp("run") / "dates"
    assert _train(out, "--max-steps", "4") == 0
    return out


def _run(argv: list[str], stdin: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    capsys.readouterr()
    assert main(argv) == 0
    return capsys.readouterr().out


def _error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run a command that must fail cleanly: exit status 2, one line on stderr, no traceback."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("attn-tutorial: error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_train_writes_a_complete_loadable_model_dir(model_dir: Path) -> None:
    for name in ("model.safetensors", "tokenizer.json", "card.json", "recipe.json", "train.log"):
        assert (model_dir / name).is_file(), name
    card = json.loads((model_dir / "card.json").read_text())
    assert card["recipe"]["name"] == "gru-bahdanau-dates"
    assert card["recipe"]["model"]["hidden_dim"] == 12  # the --set override is recorded
    assert card["command"].startswith("attn-tutorial train --recipe gru-bahdanau-dates") and "--max-steps 4" in card["command"]
    assert card["seed"] == 0 and card["device"] == "cpu" and card["torch_version"] == torch.__version__
    assert card["steps"] == 4 and card["wall_time_s"] > 0
    assert 0.0 <= card["val_bleu"] <= 100.0 and card["bleu_signature"].startswith("nrefs:1|case:mixed")
    assert "git_commit" in card
    model, tokenizer, loaded_card = load_pretrained(model_dir)
    assert loaded_card == card and tokenizer == date_vocab() == load_tokenizer(model_dir / "tokenizer.json")
    assert card["num_parameters"] == sum(p.numel() for p in model.parameters())
    assert not model.training and all(p.dtype == torch.float32 and p.device.type == "cpu" for p in model.parameters())
    # The shipped fp16 weights are the final checkpoint's, rounded to float16 (relative error <= 2**-11).
    final = load_checkpoint(model_dir / "checkpoints" / card["checkpoint"], load_training_state=False).weights
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, final[name], rtol=2**-11, atol=2**-24)
    log = (model_dir / "train.log").read_text()
    assert "step 4 epoch 0 loss" in log and "val BLEU" in log


def test_resume_continues_to_the_same_weights_as_an_uninterrupted_run(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "resumed"
    assert _train(out, "--max-steps", "2") == 0
    assert json.loads((out / "card.json").read_text())["steps"] == 2
    assert _train(out, "--max-steps", "4", "--resume") == 0
    card = json.loads((out / "card.json").read_text())
    assert card["steps"] == 4 and "--resume" in card["command"]
    resumed = load_checkpoint(out / "checkpoints" / "step-00000004", load_training_state=False)
    assert resumed.metadata["history"]["step"] == [1, 2, 3, 4]
    straight = load_checkpoint(model_dir / "checkpoints" / "step-00000004", load_training_state=False)
    for name, value in straight.weights.items():  # steps 1-4 are all in the warmup: same learning rates
        torch.testing.assert_close(resumed.weights[name], value, rtol=1e-6, atol=1e-7)
    assert "resuming from step-00000002" in (out / "train.log").read_text()


def test_train_refuses_to_overwrite_a_run_or_resume_nothing(model_dir: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert "pass --resume" in _error(["train", *TINY_DATES, "--out", str(model_dir), "--max-steps", "1"], capsys)
    assert "no complete checkpoint" in _error(["train", *TINY_DATES, "--out", str(tmp_path / "x"), "--resume"], capsys)


@pytest.mark.parametrize("beam", ["1", "3"])
def test_translate_keeps_line_count_order_and_empty_lines(
    model_dir: Path, beam: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sources = [s for s, _ in date_dataset(8, 0, 0, seed=5).train]
    lines = [sources[0], "", sources[1], sources[2], "   ", sources[3], ""]  # ends with an empty line
    argv = ["translate", "--model", str(model_dir), "--beam", beam, "--batch-size", "2", "--max-len", "12"]
    out = _run(argv, "\n".join(lines) + "\n", capsys, monkeypatch)
    assert out.endswith("\n")
    got = out.split("\n")[:-1]
    assert len(got) == len(lines)
    assert [g == "" for g in got] == [not line.strip() for line in lines]
    # In input order: each line translated on its own gives the same output.
    model, tokenizer, _ = load_pretrained(model_dir)
    alone = [translate_sentences(model, tokenizer, [s], beam_size=int(beam), max_len=12)[0] for s in lines]
    assert got == alone
    # Only empty lines in, the same empty lines out; nothing in, nothing out; no final newline is fine.
    assert _run(argv, "\n\n\n", capsys, monkeypatch) == "\n\n\n"
    assert _run(argv, "", capsys, monkeypatch) == ""
    assert _run(argv, f"{sources[0]}\n{sources[1]}", capsys, monkeypatch).count("\n") == 2


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(alphabet="12 -/ajnMay\r\t", max_size=12), max_size=6), st.booleans())
def test_read_lines_and_translation_preserve_the_line_structure(model_dir: Path, lines: list[str], final_newline: bool) -> None:
    lines = [line.replace("\r", "") for line in lines]
    text = "\n".join(lines) + ("\n" if final_newline and lines else "")
    read = _read_lines(io.StringIO(text))
    expected = lines if (final_newline or not lines or lines[-1] != "") else lines[:-1]
    if not final_newline and lines == [""]:
        expected = []
    assert read == expected
    model, tokenizer, _ = _cached_model(model_dir)
    out = translate_sentences(model, tokenizer, read, max_len=8)
    assert len(out) == len(read)
    assert all("\n" not in o and "\r" not in o for o in out)
    assert all(o == "" for o, line in zip(out, read) if not line.strip())


_MODELS: dict[Path, tuple] = {}


def _cached_model(model_dir: Path) -> tuple:
    if model_dir not in _MODELS:
        _MODELS[model_dir] = load_pretrained(model_dir)
    return _MODELS[model_dir]


@pytest.mark.parametrize("beam", ["1", "3"])
def test_evaluate_prints_sacrebleu_with_signature_and_matches_sacrebleu(
    model_dir: Path, beam: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    val = date_dataset(64, 12, 12, seed=0).val  # the recipe's validation split, as overridden above
    argv = ["evaluate", "--model", str(model_dir), "--split", "val", "--beam", beam, "--max-len", "12"]
    report = json.loads(_run([*argv, "--json"], "", capsys, monkeypatch))
    hyps = _run(["translate", "--model", str(model_dir), "--beam", beam, "--max-len", "12"],
                "".join(f"{s}\n" for s, _ in val), capsys, monkeypatch).split("\n")[:-1]
    expected = sacrebleu.corpus_bleu(hyps, [[t for _, t in val]])
    assert report["sentences"] == len(val) == len(hyps)
    assert report["score"] == pytest.approx(expected.score, abs=1e-9)
    signature = f"nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:{sacrebleu.__version__}"
    assert report["signature"] == signature
    text = _run(argv, "", capsys, monkeypatch).strip()
    assert text.startswith(f"BLEU|{signature} = {expected.score:.2f} ")


def test_beam_length_penalty_defaults_to_the_cards(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """``--alpha`` omitted: the card's ``eval.length_penalty_alpha`` (chosen on validation when shipped)."""
    val = date_dataset(64, 12, 12, seed=0).val
    model, tokenizer, _ = _cached_model(model_dir)
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    card = json.loads((copy / CARD_FILE).read_text())
    card["eval"] = {"length_penalty_alpha": 2.5}
    (copy / CARD_FILE).write_text(json.dumps(card))
    argv = ["evaluate", "--model", str(copy), "--split", "val", "--beam", "3", "--max-len", "12", "--json"]
    for extra, alpha in (([], 2.5), (["--alpha", "0"], 0.0)):
        report = json.loads(_run([*argv, *extra], "", capsys, monkeypatch))
        hyps = translate_sentences(model, tokenizer, [s for s, _ in val], beam_size=3, max_len=12, length_penalty_alpha=alpha)
        assert report["length_penalty_alpha"] == alpha
        assert report["score"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [[t for _, t in val]]).score, abs=1e-9)
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--alpha", "-1"])
    assert exc.value.code == 2 and "--alpha: expected a finite float >= 0, got '-1'" in capsys.readouterr().err


def test_errors_exit_2_with_one_clear_line(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    assert "unknown recipe 'nope'" in _error(["train", "--recipe", "nope"], capsys)
    assert "known recipes: " in _error(["train", "--recipe", "nope"], capsys)
    assert "unknown model 'nope'" in _error(["translate", "--model", "nope"], capsys)
    assert "lacks model.safetensors" in _error(["evaluate", "--model", str(tmp_path), "--split", "val"], capsys)
    assert "unknown split 'test_2016_flickr'" in _error(
        ["evaluate", "--model", str(model_dir), "--split", "test_2016_flickr"], capsys
    )
    assert "has no field 'nope'" in _error(["train", *TINY_DATES, "--out", str(tmp_path / "a"), "--set", "data.nope=1"], capsys)
    assert "hidden_dim" in _error(["train", *TINY_DATES, "--out", str(tmp_path / "b"), "--set", "model.hidden_dim=-3"], capsys)
    if not torch.cuda.is_available():
        assert "CUDA is not available" in _error(["translate", "--model", str(model_dir), "--device", "cuda"], capsys)
        assert "CUDA is not available" in _error(["train", "--recipe", "gru-bahdanau-dates", "--device", "cuda"], capsys)
    # Multi30K missing (and not downloadable): the data module's message, which names the variable to set.
    empty = tmp_path / "data"
    empty.mkdir()
    monkeypatch.setenv("ATTN_TUTORIAL_DATA", str(empty))

    def offline(url: str, timeout: float = 60.0) -> bytes:
        raise OSError("offline")

    monkeypatch.setattr(data_module, "_fetch_url", offline)
    line = _error(["train", "--recipe", "gru-none-multi30k", "--device", "cpu", "--out", str(tmp_path / "m")], capsys)
    assert "not found" in line and "ATTN_TUTORIAL_DATA" in line
    assert not (tmp_path / "m").exists()  # nothing half-made is left behind


MULTI30K = Path("/work/shared/data/multi30k")


def test_train_multi30k_slice_trains_a_joint_bpe_on_train_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = Path(os.environ.get("ATTN_TUTORIAL_DATA", "/work/shared/data"))
    if not (root / "multi30k" / "train.de.gz").is_file():
        pytest.skip("Multi30K is not available (set ATTN_TUTORIAL_DATA)")
    monkeypatch.setenv("ATTN_TUTORIAL_DATA", str(root))
    out = tmp_path / "m30k"
    argv = [
        "train", "--recipe", "gru-luong-multi30k", "--device", "cpu", "--out", str(out), "--max-steps", "2",
        "--set", "data.max_train_pairs=150", "--set", "data.max_val_pairs=8", "--set", "tokenizer.vocab_size=300",
        "--set", "model.emb_dim=8", "--set", "model.hidden_dim=8", "--set", "data.max_tokens=2048",
    ]  # fmt: skip
    assert main(argv) == 0
    model, tokenizer, card = load_pretrained(out)
    assert type(tokenizer).__name__ == "SubwordTokenizer" and tokenizer.vocab_size <= 300
    assert card["vocab_size"] == tokenizer.vocab_size == model.config.src_vocab_size
    assert model.config.attention == "luong" and model.config.luong_score == "general" and model.config.share_embeddings
    train = data_module.load_multi30k("train")[:150]
    known = set(tokenizer.tokenizer.get_vocab())
    assert all(piece in known for s, t in train[:20] for piece in tokenizer.tokens(s) + tokenizer.tokens(t))


def test_console_script_translates_from_stdin(model_dir: Path) -> None:
    script = Path(sys.executable).parent / "attn-tutorial"
    found = str(script) if script.exists() else shutil.which("attn-tutorial")
    if found is None:
        pytest.skip("the attn-tutorial console script is not installed (pip install -e .)")
    # In a C locale without UTF-8 mode the command still reads and writes UTF-8.
    done = subprocess.run(
        [found, "translate", "--model", str(model_dir), "--threads", "1", "--max-len", "12"],
        input="1 März 1999\n\n", capture_output=True, text=True, check=True, timeout=120,
        env={**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONIOENCODING": ""},
    )
    assert done.stdout.count("\n") == 2 and done.stdout.endswith("\n\n")


# --------------------------------------------------------------------------------------------
# translate and evaluate with any input (issue 15)
# --------------------------------------------------------------------------------------------

from attn_tutorial import cli as cli_module  # noqa: E402
from attn_tutorial import errors as attn_tutorial_errors  # noqa: E402
from attn_tutorial.cli import clean_line  # noqa: E402
from attn_tutorial.pretrained import split_for_model  # noqa: E402

_TRANSLATE = ["translate", "--max-len", "12", "--batch-size", "3"]


def _run_bytes(model_dir: Path, raw: bytes, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
               *extra: str) -> tuple[list[str], str]:
    """Translate raw bytes on a real-looking stdin (a text stream over a byte buffer): (output lines, stderr)."""
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8"))
    capsys.readouterr()
    assert main([*_TRANSLATE, "--model", str(model_dir), *extra]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" or captured.out.endswith("\n")
    return captured.out.split("\n")[:-1], captured.err


def test_clean_line_does_what_the_docs_say() -> None:
    assert clean_line("a\tb\rc\x00d\x1be\x7ff\x85g") == "a b c d e f g"  # tabs, lone CR, C0, DEL, C1: spaces
    assert clean_line("a\u00a0b\u2009c\u3000d\u2028e\u2029f") == "a b c d e f"  # Unicode spaces and separators
    assert clean_line("\ufeffa\u200bb\u200cc\u200dd\u2060e\u00adf\u202eg") == "abcdefg"  # format characters go
    assert clean_line("Cafe\u0301") == "Café" and len(clean_line("Cafe\u0301")) == 4  # NFC composes
    assert clean_line("<b>x</b> &amp; 😀") == "<b>x</b> &amp; 😀"  # markup and emoji are text
    assert clean_line("\ud800x") == "\ufffdx"  # a lone surrogate (only from Python callers)
    assert clean_line(" \t\u200b ") == ""


def test_translate_handles_odd_input_on_purpose(model_dir: Path, capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    base = [s for s, _ in date_dataset(6, 0, 0, seed=11).train]
    odd = [
        base[0].encode() + b"\r",  # CRLF line end
        b"",
        b" \t \xc2\xa0 ",  # only whitespace, a no-break space among it
        base[1].replace(" ", "\t").encode() + b"\x00\x07",  # tabs and control characters
        b"\xef\xbb\xbf" + base[2].encode() + "\u200b".encode(),  # BOM, zero-width space
        base[3].encode()[:2] + b"\xff\xfe" + base[3].encode()[2:],  # invalid UTF-8 in the middle
        "<p>".encode() + base[4].encode() + "</p> 😀".encode(),  # HTML-like text and an emoji
        b"\xe2\x80\x8b\xe2\x80\x8b",  # nothing but zero-width spaces
        base[5].encode() + b"\rX",  # a lone CR inside the line
    ]
    raw = b"\n".join(odd) + b"\n"
    got, err = _run_bytes(model_dir, raw, capsys, monkeypatch)
    assert len(got) == len(odd)  # one output line per input line, always
    assert got[1] == got[2] == got[7] == ""  # empty, whitespace-only and zero-width-only lines
    assert "Traceback" not in err
    assert err.strip().splitlines() == ["attn-tutorial: warning: line 6 is not valid UTF-8: the invalid bytes were replaced by U+FFFD"]
    # Each line is translated exactly as its cleaned text would be on its own.
    model, tokenizer, _ = _cached_model(model_dir)
    texts = [clean_line(line.decode("utf-8", errors="replace").removesuffix("\r")) for line in odd]
    assert texts[0] == base[0] and texts[3] == base[1] + "" and texts[4] == base[2]
    alone = [translate_sentences(model, tokenizer, [t], max_len=12, max_src_len=64)[0] for t in texts]
    assert got == alone
    # CRLF input gives the same output as LF input.
    crlf, _ = _run_bytes(model_dir, b"\r\n".join(b.removesuffix(b"\r") for b in odd) + b"\r\n", capsys, monkeypatch)
    assert crlf == got


def test_an_over_long_line_is_split_translated_and_joined_with_a_warning(
    model_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    base = [s for s, _ in date_dataset(12, 0, 0, seed=4).train]
    long_line = ". ".join(base) + "."  # about 200 characters; the dates model takes 63 at once
    no_punctuation = "1" * 150  # no sentence end, no space: cut at the limit
    raw = "\n".join([base[0], long_line, "", no_punctuation]).encode() + b"\n"
    got, err = _run_bytes(model_dir, raw, capsys, monkeypatch)
    assert len(got) == 4 and got[2] == ""
    model, tokenizer, _ = _cached_model(model_dir)
    pieces = split_for_model(long_line, tokenizer, 63)
    assert len(pieces) >= 3 and all(len(p) <= 63 and p.endswith(".") for p in pieces)  # cut at sentence ends
    assert "".join(p.replace(" ", "") for p in pieces) == long_line.replace(" ", "")  # nothing lost
    expected = " ".join(t for t in translate_sentences(model, tokenizer, pieces, max_len=12, max_src_len=64) if t)
    assert got[1] == expected
    assert [len(p) for p in split_for_model(no_punctuation, tokenizer, 63)] == [63, 63, 24]
    warnings = err.strip().splitlines()
    assert len(warnings) == 2 and "line 2 is longer than the model takes at once (63 tokens)" in warnings[0]
    assert f"translated in {len(pieces)} pieces" in warnings[0] and "line 4 " in warnings[1]


def test_split_prefers_sentence_ends_then_spaces() -> None:
    vocab = CharVocab("abcdefgh .!?,\"")
    assert split_for_model("abc", vocab, 3) == ["abc"]
    assert split_for_model("ab cd. ef gh", vocab, 8) == ["ab cd.", "ef gh"]
    assert split_for_model('ab!" cd ef gh', vocab, 8) == ['ab!"', "cd ef gh"]
    assert split_for_model("ab cd ef gh", vocab, 8) == ["ab cd ef", "gh"]  # no sentence end: the last space
    assert split_for_model("abcdefghabc", vocab, 4) == ["abcd", "efgh", "abc"]  # no space either: the limit
    with pytest.raises(ValueError, match="max_tokens"):
        split_for_model("abc", vocab, 0)


def test_translate_writes_each_batch_as_soon_as_it_is_translated(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A killed run keeps what it translated: a batch's lines are written and flushed before the next is read."""
    sources = [s for s, _ in date_dataset(5, 0, 0, seed=2).train]
    out = io.StringIO()
    seen: list[int] = []  # output lines already flushed when each input line was requested

    class Stdin(io.StringIO):
        def readline(self, *args: Any) -> str:  # type: ignore[override]
            seen.append(out.getvalue().count("\n"))
            return super().readline(*args)

    monkeypatch.setattr(sys, "stdin", Stdin("".join(f"{s}\n" for s in sources)))
    monkeypatch.setattr(sys, "stdout", out)
    assert main(["translate", "--model", str(model_dir), "--max-len", "12", "--batch-size", "2"]) == 0
    assert seen == [0, 0, 2, 2, 4, 4]  # lines 1-2 written before line 3 is read, and so on
    assert out.getvalue().count("\n") == 5


def test_a_line_that_fails_unexpectedly_costs_only_itself(model_dir: Path, capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    real = cli_module.translate_sentences

    def flaky(model: Any, tokenizer: Any, sentences: list[str], **kw: Any) -> list[str]:
        if any("boom" in s for s in sentences):
            raise RuntimeError("simulated bug")
        return real(model, tokenizer, sentences, **kw)

    monkeypatch.setattr(cli_module, "translate_sentences", flaky)
    monkeypatch.setattr(sys, "stdin", io.StringIO("1 März 1999\nboom\n2 May 2001\n"))
    capsys.readouterr()
    assert main([*_TRANSLATE, "--model", str(model_dir)]) == 1
    captured = capsys.readouterr()
    lines = captured.out.split("\n")[:-1]
    assert len(lines) == 3 and lines[1] == "" and lines[0] and lines[2]
    assert "Traceback" in captured.err and "RuntimeError: simulated bug" in captured.err
    assert "1 of 3 lines could not be translated" in captured.err and "please report it" in captured.err


def test_long_sources_never_run_past_a_transformers_position_table() -> None:
    """The issue's crash: `positions 256..256 exceed max_len = 256` once a long line was decoded."""
    from attn_tutorial.configs import MODEL_KINDS
    from attn_tutorial.pretrained import model_position_limit

    config_cls, model_cls = MODEL_KINDS["transformer"]
    torch.manual_seed(0)
    model = model_cls(config_cls(src_vocab_size=71, d_model=8, num_heads=2, num_encoder_layers=1,
                                 num_decoder_layers=1, d_ff=16, dropout=0.0, max_len=16)).eval()
    assert model_position_limit(model) == 16
    vocab = date_vocab()
    calls: list[tuple[int, int]] = []
    out = translate_sentences(model, vocab, ["1 march 1999 " * 20, "x"], on_split=lambda i, n: calls.append((i, n)))
    assert len(out) == 2 and calls == [(0, 20)]  # 260 characters in pieces of at most 15, cut at spaces: one date each
    assert all(len(word) <= 16 for word in out[0].split())  # each piece's output within the 16 positions
    assert len(translate_sentences(model, vocab, ["1" * 15], max_len_a=10.0)[0]) <= 16  # 160 steps asked, 16 allowed


def test_evaluate_scores_a_hypothesis_file_and_refuses_a_wrong_line_count(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    val = date_dataset(64, 12, 12, seed=0).val
    argv = ["evaluate", "--model", str(model_dir), "--split", "val", "--max-len", "12", "--json"]
    decoded = json.loads(_run(argv, "", capsys, monkeypatch))
    hyps = _run(["translate", "--model", str(model_dir), "--max-len", "12"], "".join(f"{s}\n" for s, _ in val),
                capsys, monkeypatch)
    (tmp_path / "hyps.txt").write_text(hyps)
    scored = json.loads(_run([*argv, "--hypotheses", str(tmp_path / "hyps.txt")], "", capsys, monkeypatch))
    assert scored["score"] == pytest.approx(decoded["score"], abs=1e-9) and scored["sentences"] == len(val)
    (tmp_path / "short.txt").write_text("".join(hyps.splitlines(keepends=True)[:-1]))
    line = _error([*argv, "--hypotheses", str(tmp_path / "short.txt")], capsys)
    assert f"short.txt has {len(val) - 1} lines but split val has {len(val)} reference sentences" in line
    line = _error([*argv, "--limit", "3", "--hypotheses", str(tmp_path / "hyps.txt")], capsys)
    assert f"has {len(val)} lines but split val (--limit 3) has 3" in line
    assert "no such file" in _error([*argv, "--hypotheses", str(tmp_path / "nope.txt")], capsys)


# --------------------------------------------------------------------------------------------
# User errors are one line; bugs keep their traceback (issue 15)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raised", "code", "expected"),
    [
        (attn_tutorial_errors.UserError("model dir x lacks y: copy it again"), 2, "attn-tutorial: error: model dir x lacks y: copy it again"),
        (FileNotFoundError("no file at /x"), 2, "attn-tutorial: error: no file at /x"),
        (OSError(errno.ENOSPC, "No space left on device", "/runs/x"), 2, "attn-tutorial: error: No space left on device: /runs/x"),
        (KeyboardInterrupt(), 130, "attn-tutorial: interrupted"),
    ],
)
def test_user_errors_are_one_line(raised: BaseException, code: int, expected: str, capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(args: Any) -> int:
        raise raised

    monkeypatch.setattr(cli_module, "_info", fail)
    capsys.readouterr()
    try:
        status = main(["info"])
    except SystemExit as exc:
        status = exc.code
    err = capsys.readouterr().err
    assert status == code and err.strip() == expected and "Traceback" not in err


@pytest.mark.parametrize("raised", [ValueError("an internal check failed"), KeyError("x"), RuntimeError("shape mismatch")])
def test_a_bug_keeps_its_traceback_and_asks_to_be_reported(raised: Exception, capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain ValueError inside the package is a bug, not a user error (it used to print one line)."""

    def fail(args: Any) -> int:
        raise raised

    monkeypatch.setattr(cli_module, "_info", fail)
    capsys.readouterr()
    assert main(["info"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and f"{type(raised).__name__}: " in err
    assert "this is a bug in attn_tutorial" in err.strip().splitlines()[-1] and "please report it" in err
    monkeypatch.setenv("ATTN_TUTORIAL_DEBUG", "1")
    with pytest.raises(type(raised)):
        main(["info"])


def test_user_errors_are_value_errors_for_old_callers() -> None:
    assert issubclass(attn_tutorial_errors.UserError, ValueError)
    assert issubclass(attn_tutorial_errors.DamagedFileError, attn_tutorial_errors.UserError)
    assert issubclass(data_module.ChecksumError, attn_tutorial_errors.DamagedFileError)
    assert issubclass(attn_tutorial_errors.TrainingDivergedError, FloatingPointError)
