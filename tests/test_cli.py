"""The attn-tutorial console script."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

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

from attn_tutorial import data as data_module  # noqa: E402
from attn_tutorial.cli import _read_lines  # noqa: E402
from attn_tutorial.data import date_dataset, date_vocab  # noqa: E402
from attn_tutorial.pretrained import CARD_FILE, load_pretrained, load_tokenizer, translate_sentences  # noqa: E402
from attn_tutorial.train import load_checkpoint  # noqa: E402

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
