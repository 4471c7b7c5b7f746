"""The pretrained-model registry (attn_tutorial.pretrained) and the training recipes (attn_tutorial.configs)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attn_tutorial import configs, pretrained
from attn_tutorial.configs import (
    RECIPES,
    DataSpec,
    Recipe,
    TokenizerSpec,
    apply_overrides,
    build_model,
    get_recipe,
    list_recipes,
    parse_override,
)
from attn_tutorial import CharVocab, SubwordTokenizer, collate, date_dataset, date_vocab, train_bpe
from attn_tutorial.decoding import greedy_decode
from attn_tutorial.pretrained import (
    list_pretrained,
    load_pretrained,
    load_tokenizer,
    resolve_model_dir,
    save_tokenizer,
    translate_sentences,
)
from attn_tutorial import export_fp16, save_checkpoint


def _tiny_recipe() -> Recipe:
    return apply_overrides(get_recipe("gru-bahdanau-dates"), ["model.emb_dim=8", "model.hidden_dim=12"])


def _make_model_dir(directory: Path, seed: int = 0) -> torch.nn.Module:
    """A model directory built by hand (no CLI): random tiny weights, char tokenizer, a card."""
    recipe = _tiny_recipe()
    tokenizer = date_vocab()
    torch.manual_seed(seed)
    model = build_model(recipe, tokenizer.vocab_size)
    ckpt = save_checkpoint(directory / "ckpt", model)
    export_fp16(ckpt, directory / pretrained.MODEL_FILE)
    save_tokenizer(tokenizer, directory / pretrained.TOKENIZER_FILE)
    card = {"name": directory.name, "recipe": recipe.to_dict(), "model_kind": recipe.model_kind, "val_bleu": 0.0}
    (directory / pretrained.CARD_FILE).write_text(json.dumps(card))
    return model


@pytest.fixture
def shipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty stand-in for attn_tutorial/pretrained/."""
    root = tmp_path / "pretrained"
    monkeypatch.setattr(pretrained, "pretrained_root", lambda: root)
    return root


def test_registry_works_without_any_shipped_model(shipped: Path) -> None:
    assert list_pretrained() == []  # the folder does not even exist
    shipped.mkdir()
    assert list_pretrained() == []
    with pytest.raises(FileNotFoundError, match="unknown model 'gru-x'.*none is shipped yet"):
        load_pretrained("gru-x")


def test_shipped_models_are_listed_and_load_by_name(shipped: Path) -> None:
    reference = _make_model_dir(shipped / "tiny-dates")
    (shipped / "incomplete").mkdir()  # no files: not a model
    (shipped / "incomplete" / pretrained.CARD_FILE).write_text("{}")
    assert list_pretrained() == ["tiny-dates"]
    model, tokenizer, card = load_pretrained("tiny-dates")
    assert card["name"] == "tiny-dates" and tokenizer == date_vocab()
    assert not model.training
    ref = reference.state_dict()
    for name, value in model.state_dict().items():  # fp16 on disk, float32 after loading
        assert value.dtype == torch.float32 and value.device.type == "cpu"
        torch.testing.assert_close(value, ref[name], rtol=2**-11, atol=2**-24)
    with pytest.raises(FileNotFoundError, match="known|tiny-dates"):
        load_pretrained("incomplete-name")


def test_a_directory_path_loads_and_a_partial_one_is_refused(tmp_path: Path) -> None:
    _make_model_dir(tmp_path / "m")
    assert resolve_model_dir(tmp_path / "m") == tmp_path / "m"
    model, _, _ = load_pretrained(str(tmp_path / "m"), device="cpu")
    assert next(model.parameters()).device.type == "cpu"
    (tmp_path / "m" / pretrained.TOKENIZER_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="lacks tokenizer.json"):
        load_pretrained(tmp_path / "m")


def test_a_tokenizer_that_does_not_fit_the_model_is_refused(tmp_path: Path) -> None:
    _make_model_dir(tmp_path / "m")
    save_tokenizer(CharVocab("abc"), tmp_path / "m" / pretrained.TOKENIZER_FILE)
    with pytest.raises(ValueError, match="expects 71 token ids but the tokenizer has 7"):
        load_pretrained(tmp_path / "m")


def test_tokenizers_round_trip_through_json(tmp_path: Path) -> None:
    vocab = date_vocab()
    assert load_tokenizer(save_tokenizer(vocab, tmp_path / "c.json")) == vocab
    bpe = train_bpe(["ein Hund läuft", "a dog runs", "zwei Hunde laufen", "two dogs run"] * 5, vocab_size=60)
    back = load_tokenizer(save_tokenizer(bpe, tmp_path / "b.json"))
    assert isinstance(back, SubwordTokenizer)
    for text in ("ein Hund", "two dogs run"):
        assert back.encode(text) == bpe.encode(text)
    with pytest.raises(TypeError, match="SubwordTokenizer or a CharVocab"):
        save_tokenizer(object(), tmp_path / "x.json")  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError):
        load_tokenizer(tmp_path / "missing.json")


def test_translate_sentences_matches_greedy_decode_in_input_order(tmp_path: Path) -> None:
    model = _make_model_dir(tmp_path / "m", seed=1)
    model.eval()
    tok = date_vocab()
    sources = [s for s, _ in date_dataset(7, 0, 0, seed=3).train]
    sentences = [sources[0], "", sources[1], " \t ", *sources[2:]]
    out = translate_sentences(model, tok, sentences, batch_size=3, max_len=10)
    assert len(out) == len(sentences) and out[1] == "" and out[3] == ""
    for s, o in zip(sentences, out):
        if s.strip():
            batch = collate([(tok.encode(s), [])], pad_to_multiple_of=1)
            expected = tok.decode(greedy_decode(model, batch.src, batch.src_mask, max_len=10).tokens[0])
            assert o == expected
    assert translate_sentences(model, tok, []) == []
    with pytest.raises(TypeError, match="single str"):
        translate_sentences(model, tok, "a sentence")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="beam_size"):
        translate_sentences(model, tok, ["x"], beam_size=0)


# --------------------------------------------------------------------------------------------
# Recipes
# --------------------------------------------------------------------------------------------


def test_the_books_recipes_exist_and_round_trip_through_json() -> None:
    assert {"gru-none-multi30k", "gru-bahdanau-multi30k", "gru-luong-multi30k", "gru-bahdanau-dates"} <= set(list_recipes())
    for name, recipe in RECIPES.items():
        assert recipe.name == name
        assert Recipe.from_dict(json.loads(json.dumps(recipe.to_dict()))) == recipe
    luong = get_recipe("gru-luong-multi30k").model
    assert luong["attention"] == "luong" and luong["luong_score"] == "general" and luong["luong_mode"] == "global"
    for name in ("gru-none-multi30k", "gru-bahdanau-multi30k", "gru-luong-multi30k"):
        r = get_recipe(name)
        assert r.tokenizer == TokenizerSpec("bpe", 8000) and r.model["share_embeddings"] and r.model["tie_embeddings"]
        assert r.train.label_smoothing == 0.1 and r.train.warmup_steps > 0 and r.train.checkpoint_dir is None
    with pytest.raises(KeyError, match="unknown recipe 'nope'; known recipes: gru-"):
        get_recipe("nope")


def test_recipes_only_differ_in_the_attention_of_their_models() -> None:
    base = get_recipe("gru-bahdanau-multi30k")
    for name in ("gru-none-multi30k", "gru-luong-multi30k"):
        other = get_recipe(name)
        assert (other.data, other.tokenizer, other.train) == (base.data, base.tokenizer, base.train)
        assert {k: v for k, v in other.model.items() if not k.startswith(("attention", "luong", "input"))} == {
            k: v for k, v in base.model.items() if k != "attention"
        }


def test_build_model_uses_the_vocabulary_size_and_the_recipe() -> None:
    recipe = _tiny_recipe()
    model = build_model(recipe, 30)
    assert model.config.src_vocab_size == 30 and model.config.hidden_dim == 12 and model.config.attention == "bahdanau"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("model.hidden_dim=32", ("model", "hidden_dim", 32)),
        ("train.lr=3e-4", ("train", "lr", 3e-4)),
        ("train.max_steps=null", ("train", "max_steps", None)),
        ("train.max_steps=None", ("train", "max_steps", None)),
        ("model.attention=none", ("model", "attention", "none")),
        ("train.amp=True", ("train", "amp", True)),
        ("model.attention=luong", ("model", "attention", "luong")),
        ("train.betas=[0.9, 0.999]", ("train", "betas", (0.9, 0.999))),
        ("data.max_train_pairs = 100", ("data", "max_train_pairs", 100)),
    ],
)
def test_parse_override(text: str, expected: tuple) -> None:
    assert parse_override(text) == expected


def test_apply_overrides_validates_and_leaves_the_original_alone() -> None:
    base = get_recipe("gru-bahdanau-multi30k")
    r = apply_overrides(base, ["model.hidden_dim=64", "train.lr=0.002", "data.max_train_pairs=10",
                               "tokenizer.vocab_size=500", "train.checkpoint_every_steps=7"])
    assert (r.model["hidden_dim"], r.train.lr, r.data.max_train_pairs, r.tokenizer.vocab_size) == (64, 0.002, 10, 500)
    assert r.checkpoint_every_steps == 7
    assert base.model["hidden_dim"] == 384 and base.train.lr == 1e-3  # frozen original unchanged
    assert apply_overrides(base, {"model.hidden_dim": 64}) == apply_overrides(base, ["model.hidden_dim=64"])
    for bad, message in [
        ("data.nope=1", "has no field 'nope'"),
        ("model.nope=1", "valid keys"),
        ("model.hidden_dim=0", "hidden_dim must be a positive int"),
        ("train.lr=-1", "lr must be"),
        ("nosection=1", "--set key must be"),
        ("model.hidden_dim", "expects key=value"),
        ("tokenizer.kind=words", "kind must be one of"),
    ]:
        with pytest.raises(ValueError, match=message):
            apply_overrides(base, [bad])
    with pytest.raises(ValueError, match="character level"):
        apply_overrides(get_recipe("gru-bahdanau-dates"), ["tokenizer.kind=bpe"])


def test_specs_validate_themselves() -> None:
    with pytest.raises(ValueError, match="dataset must be one of"):
        DataSpec(dataset="wmt14")
    with pytest.raises(ValueError, match="max_len must be >= 2"):
        DataSpec(max_len=1)
    with pytest.raises(ValueError, match="vocab_size must be an int >= 5"):
        TokenizerSpec(vocab_size=3)
    with pytest.raises(ValueError, match="model_kind must be one of"):
        dataclasses.replace(get_recipe("gru-bahdanau-dates"), model_kind="rnn")


def test_a_new_model_kind_slots_in(monkeypatch: pytest.MonkeyPatch) -> None:
    """A later model (the Transformer) is one more MODEL_KINDS entry; recipes then just name it."""

    @dataclasses.dataclass(frozen=True)
    class ToyConfig:
        src_vocab_size: int
        width: int = 4

    monkeypatch.setitem(configs.MODEL_KINDS, "toy", (ToyConfig, lambda c: torch.nn.Embedding(c.src_vocab_size, c.width)))
    recipe = dataclasses.replace(get_recipe("gru-bahdanau-multi30k"), model_kind="toy", model={"width": 3})
    assert build_model(recipe, 11).weight.shape == (11, 3)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 4096), st.floats(1e-4, 1.0, allow_nan=False), st.sampled_from(["bahdanau", "luong", "none"]))
def test_overrides_round_trip_any_valid_value(hidden: int, lr: float, attention: str) -> None:
    r = apply_overrides(get_recipe("gru-bahdanau-multi30k"), [f"model.hidden_dim={hidden}", f"train.lr={lr!r}", f"model.attention={attention}"])
    assert (r.model["hidden_dim"], r.train.lr, r.model["attention"]) == (hidden, lr, attention)
    assert Recipe.from_dict(json.loads(json.dumps(r.to_dict()))) == r


def test_shipped_folder_if_present_holds_only_complete_small_models() -> None:
    root = Path(pretrained.__file__).resolve().parent / "pretrained"
    for name in list_pretrained():
        size = (root / name / pretrained.MODEL_FILE).stat().st_size
        assert size <= 16 * 2**20, f"{name}: {size} bytes"
        card = json.loads((root / name / pretrained.CARD_FILE).read_text())
        assert {"recipe", "command", "seed", "val_bleu", "git_commit"} <= set(card)


def test_card_length_penalty_reads_the_card_or_falls_back() -> None:
    assert pretrained.card_length_penalty({}) == pretrained.DEFAULT_LENGTH_PENALTY_ALPHA == 0.6
    assert pretrained.card_length_penalty({"eval": {"bleu_signature": "x"}}) == 0.6
    assert pretrained.card_length_penalty({"eval": {"length_penalty_alpha": 1}}) == 1.0
    for bad in (-0.5, "1.0", True, float("nan")):
        with pytest.raises(ValueError, match="length_penalty_alpha must be a float >= 0"):
            pretrained.card_length_penalty({"eval": {"length_penalty_alpha": bad}})


# --------------------------------------------------------------------------------------------
# Damaged or wrong model directories: one clear line (issue 15). Always on COPIES of a shipped model.
# --------------------------------------------------------------------------------------------

import hashlib  # noqa: E402
import io  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402

from safetensors.torch import load_file, save_file  # noqa: E402

from attn_tutorial.cli import main  # noqa: E402
from attn_tutorial.errors import DamagedFileError, UserError  # noqa: E402

SHIPPED = Path(pretrained.__file__).resolve().parent / "pretrained"
SOURCE_MODEL = "gru-none"  # the smallest shipped model


def _digest(directory: Path) -> dict[str, str]:
    # every file, those in subfolders (the stored test outputs) included
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def shipped_digest() -> dict[str, str]:
    if SOURCE_MODEL not in list_pretrained():
        pytest.skip(f"the shipped model {SOURCE_MODEL} is not installed")
    return _digest(SHIPPED / SOURCE_MODEL)


def _edit_card(directory: Path, **changes: Any) -> None:
    card = json.loads((directory / pretrained.CARD_FILE).read_text())
    for key, value in changes.items():
        if value is _DELETE:
            card.pop(key, None)
        else:
            card[key] = value
    (directory / pretrained.CARD_FILE).write_text(json.dumps(card))


_DELETE = object()


def _rewrite_header(directory: Path, **model_config_changes: Any) -> None:
    """Rewrite model.safetensors with changed model_config keys in its header (as a newer package might)."""
    path = directory / pretrained.MODEL_FILE
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        header = dict(f.metadata())
    config = json.loads(header["model_config"])
    config.update(model_config_changes)
    header["model_config"] = json.dumps(config)
    save_file(load_file(str(path)), str(path), metadata=header)


def _damage(kind: str, d: Path) -> None:  # noqa: C901 - one branch per kind of damage, read flat
    weights, tok, card = d / pretrained.MODEL_FILE, d / pretrained.TOKENIZER_FILE, d / pretrained.CARD_FILE
    if kind == "weights-truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif kind == "weights-truncated-no-size-on-card":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        _edit_card(d, model_bytes=_DELETE)
    elif kind == "weights-empty":
        weights.write_bytes(b"")
        _edit_card(d, model_bytes=_DELETE)
    elif kind == "weights-header-corrupt":
        data = bytearray(weights.read_bytes())
        data[8:40] = b"\xff" * 32
        weights.write_bytes(bytes(data))
    elif kind == "weights-not-an-export":
        save_file({"x": torch.zeros(2)}, str(weights), metadata={"format": "something.else"})
        _edit_card(d, model_bytes=_DELETE)
    elif kind == "weights-of-another-model":
        _rewrite_header(d, hidden_dim=8)
        _edit_card(d, model_bytes=_DELETE)
    elif kind == "tokenizer-not-json":
        tok.write_text(tok.read_text()[:30])
    elif kind == "tokenizer-wrong-structure":
        tok.write_text('{"version": "1.0", "model": {"type": "nope"}}')
    elif kind == "tokenizer-of-another-model":
        save_tokenizer(CharVocab("abc"), tok)
    elif kind == "card-not-json":
        card.write_text("{\n  \"name\": ")
    elif kind == "card-missing-fields":
        _edit_card(d, model_kind=_DELETE, recipe=_DELETE)
    elif kind == "card-recipe-without-data":
        c = json.loads(card.read_text())
        del c["recipe"]["data"]
        card.write_text(json.dumps(c))
    elif kind == "newer-format":
        _edit_card(d, model_format=2, attn_tutorial_version="9.0.0")
    elif kind == "newer-version-unknown-kind":
        _edit_card(d, model_kind="mamba", attn_tutorial_version="9.0.0")
    elif kind == "newer-version-new-config-field":
        _rewrite_header(d, some_new_option=True)
        _edit_card(d, attn_tutorial_version="9.0.0", model_bytes=_DELETE)
    elif kind == "file-missing":
        tok.unlink()
    else:
        raise AssertionError(kind)


#: kind of damage -> (exception type, the file the message names, words it must contain)
DAMAGE = {
    "weights-truncated": (DamagedFileError, "model.safetensors", "cut short"),
    "weights-truncated-no-size-on-card": (DamagedFileError, "model.safetensors", "truncated, corrupt"),
    "weights-empty": (DamagedFileError, "model.safetensors", "truncated, corrupt"),
    "weights-header-corrupt": (DamagedFileError, "model.safetensors", "truncated, corrupt"),
    "weights-not-an-export": (DamagedFileError, "model.safetensors", "not an exported model"),
    "weights-of-another-model": (DamagedFileError, "model.safetensors", "does not fit"),
    "tokenizer-not-json": (DamagedFileError, "tokenizer.json", "not a valid tokenizer file (not JSON"),
    "tokenizer-wrong-structure": (DamagedFileError, "tokenizer.json", "not a valid tokenizer file"),
    "tokenizer-of-another-model": (DamagedFileError, "tokenizer.json", "the tokenizer has 7"),
    "card-not-json": (DamagedFileError, "card.json", "not a valid model card (not JSON"),
    "card-missing-fields": (DamagedFileError, "card.json", "lacks the field(s) model_kind, recipe"),
    "card-recipe-without-data": (DamagedFileError, "card.json", "lacks the field(s) recipe.data"),
    "newer-format": (DamagedFileError, SOURCE_MODEL, "written by a newer attn_tutorial (9.0.0)"),
    "newer-version-unknown-kind": (DamagedFileError, "card.json", "made by attn_tutorial 9.0.0, newer"),
    "newer-version-new-config-field": (DamagedFileError, "model.safetensors", "made by attn_tutorial 9.0.0, newer"),
    "file-missing": (FileNotFoundError, SOURCE_MODEL, "lacks tokenizer.json"),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_a_damaged_model_directory_gets_one_clear_line(
    kind: str, tmp_path: Path, shipped_digest: dict[str, str], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    copy = tmp_path / SOURCE_MODEL
    shutil.copytree(SHIPPED / SOURCE_MODEL, copy)
    _damage(kind, copy)
    error, names, words = DAMAGE[kind]
    with pytest.raises(error) as info:
        load_pretrained(copy)
    message = str(info.value)
    assert "\n" not in message and names in message and words in message, message
    if error is DamagedFileError:
        assert isinstance(info.value, UserError) and isinstance(info.value, ValueError)
        assert "upgrade" in message if kind.startswith("newer") else "copy the model directory again" in message
    # The command line: exit status 2, one line, no traceback.
    monkeypatch.setattr(sys, "stdin", io.StringIO("Ein Hund.\n"))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["translate", "--model", str(copy)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and err.startswith("attn-tutorial: error: ") and names in err
    assert _digest(SHIPPED / SOURCE_MODEL) == shipped_digest  # the shipped files are untouched


def test_a_damaged_shipped_model_says_reinstall(tmp_path: Path, shipped_digest: dict[str, str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "pretrained"
    shutil.copytree(SHIPPED / SOURCE_MODEL, root / SOURCE_MODEL)
    monkeypatch.setattr(pretrained, "pretrained_root", lambda: root)
    _damage("weights-truncated", root / SOURCE_MODEL)
    with pytest.raises(DamagedFileError, match=r"reinstall it \(pip install --force-reinstall attn-tutorial\)"):
        load_pretrained(SOURCE_MODEL)


def test_an_older_card_without_the_new_fields_still_loads(tmp_path: Path, shipped_digest: dict[str, str]) -> None:
    """Cards written before model_format and model_bytes existed (and by hand, as in the tests above)."""
    copy = tmp_path / SOURCE_MODEL
    shutil.copytree(SHIPPED / SOURCE_MODEL, copy)
    _edit_card(copy, model_format=_DELETE, model_bytes=_DELETE, attn_tutorial_version=_DELETE)
    model, _, _ = load_pretrained(copy)
    reference, _, _ = load_pretrained(SOURCE_MODEL)
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), name


def test_shipped_weights_load_exactly_as_stored() -> None:
    """Loading is the stored float16 values upcast, nothing else (so the format is read as before)."""
    for name in list_pretrained():
        model, _, _ = load_pretrained(name)
        stored = load_file(str(SHIPPED / name / pretrained.MODEL_FILE))
        state = model.state_dict()
        for key, value in stored.items():
            assert torch.equal(state[key], value.float()), f"{name}: {key}"
