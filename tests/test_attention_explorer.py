"""attn_tutorial.attention_explorer: all attention maps of a Transformer's own translation, and the explorer."""

from __future__ import annotations

import ipywidgets as widgets
import matplotlib.pyplot as plt
import pytest
import torch

from attn_tutorial import collate, train_bpe
from attn_tutorial.attention_explorer import ATTENTION_KINDS, transformer_attention_explorer, translate_with_attention
from attn_tutorial.decoding import greedy_decode
from attn_tutorial.seq2seq import Seq2Seq, Seq2SeqConfig
from attn_tutorial.transformer import Transformer, TransformerConfig
from attn_tutorial.widgets import Explorer

TOL = dict(rtol=1e-5, atol=1e-6)  # float32 model; the same numbers through different code paths
SENTENCES = ["ein Hund läuft", "zwei Hunde laufen im Park", "a dog runs"]


@pytest.fixture(scope="module")
def tokenizer():
    corpus = ["ein Hund läuft", "a dog runs", "zwei Hunde laufen im Park", "two dogs run in the park"] * 5
    return train_bpe(corpus, vocab_size=60)


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    # encoder and decoder of different depths, so the layer menu has to follow the kind
    config = TransformerConfig(src_vocab_size=tokenizer.vocab_size, d_model=16, num_heads=2, d_ff=32,
                               num_encoder_layers=2, num_decoder_layers=1, dropout=0.1)
    return Transformer(config).eval()


def test_records_shapes_labels_and_rows(model, tokenizer):
    records = translate_with_attention(model, tokenizer, SENTENCES, max_len=6)
    assert [r.source for r in records] == SENTENCES
    for r, s in zip(records, SENTENCES):
        S = len(tokenizer.encode(s)) + 1
        T = len(r.in_pieces)
        assert r.src_pieces == tokenizer.tokens(s) + ["</s>"]
        assert r.in_pieces[0] == "<s>" and r.in_pieces[1:] == r.out_pieces[:-1] and len(r.out_pieces) == T
        assert r.out_pieces[-1] == ("</s>" if r.finished else "…")
        assert 1 <= T <= 7  # at most max_len = 6 output pieces, plus the EOS position
        assert r.encoder_self.shape == (2, 2, S, S)
        assert r.decoder_self.shape == (1, 2, T, T) and r.cross.shape == (1, 2, T, S)
        for maps in (r.encoder_self, r.decoder_self, r.cross):
            torch.testing.assert_close(maps.sum(-1), torch.ones(maps.shape[:-1]), **TOL)
        above = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
        assert torch.all(r.decoder_self[..., above] == 0)  # causal


def test_cross_rows_are_the_rows_greedy_decoding_attends_with(model, tokenizer):
    # greedy_decode runs the cached incremental decoder; the records come from one teacher-forced pass
    records = translate_with_attention(model, tokenizer, SENTENCES, max_len=6)
    batch = collate([(tokenizer.encode(s), []) for s in SENTENCES], pad_to_multiple_of=1)
    result = greedy_decode(model, batch.src, batch.src_mask, max_len=6)
    for r, tokens, attn in zip(records, result.tokens, result.attention):
        assert len(r.out_pieces) == len(tokens) + 1 and r.translation == tokenizer.decode(tokens).strip()
        torch.testing.assert_close(r.cross[-1].mean(0)[: len(tokens)], attn.float(), **TOL)


def test_batching_does_not_change_a_sentence(model, tokenizer):
    together = translate_with_attention(model, tokenizer, SENTENCES, max_len=6)
    for s, r in zip(SENTENCES, together):
        (alone,) = translate_with_attention(model, tokenizer, [s], max_len=6)
        assert alone.out_pieces == r.out_pieces
        for kind in ATTENTION_KINDS:
            torch.testing.assert_close(alone.maps(kind), r.maps(kind), **TOL)


def test_weights_selection_and_errors(model, tokenizer):
    (r,) = translate_with_attention(model, tokenizer, ["ein Hund läuft"], max_len=4)
    torch.testing.assert_close(r.weights("encoder-self", -1, "mean"), r.encoder_self[1].mean(0))
    torch.testing.assert_close(r.weights("cross", 0, 1), r.cross[0, 1])
    assert r.labels("cross") == (r.src_pieces, r.out_pieces)
    with pytest.raises(ValueError, match="kind"):
        r.weights("self", 0)
    with pytest.raises(ValueError, match="layer"):
        r.weights("cross", 1)
    with pytest.raises(ValueError, match="head"):
        r.weights("cross", 0, 2)
    assert translate_with_attention(model, tokenizer, []) == []
    with pytest.raises(TypeError, match="list of strings"):
        translate_with_attention(model, tokenizer, "ein Hund")


def test_model_must_be_a_transformer(tokenizer):
    gru = Seq2Seq(Seq2SeqConfig(src_vocab_size=tokenizer.vocab_size, emb_dim=8, hidden_dim=8))
    with pytest.raises(TypeError, match="Transformer"):
        translate_with_attention(gru, tokenizer, ["ein Hund"])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Transformer"):
        transformer_attention_explorer(gru, tokenizer, ["ein Hund"])  # type: ignore[arg-type]


def test_model_mode_is_restored(model, tokenizer):
    model.train()
    try:
        translate_with_attention(model, tokenizer, ["ein Hund"], max_len=3)
        assert model.training
    finally:
        model.eval()


def test_explorer_follows_its_controls(model, tokenizer):
    ex = transformer_attention_explorer(model, tokenizer, SENTENCES[:2], max_len=6)
    assert isinstance(ex, Explorer) and isinstance(ex, widgets.Widget)
    assert set(ex.controls) == {"sentence", "kind", "layer", "head"}
    assert len(plt.get_fignums()) == 0  # figures are closed after display
    (first,) = translate_with_attention(model, tokenizer, [SENTENCES[0]], max_len=6)
    s = ex.state
    assert (s["kind"], s["layer"], s["head"]) == ("cross", 0, "mean")
    torch.testing.assert_close(s["weights"], first.cross[0].mean(0), **TOL)
    assert first.translation in ex.readout.value or first.translation == ""

    ex.controls["kind"].value = "encoder-self"  # the layer menu grows to the encoder's two layers
    assert [v for _, v in ex.controls["layer"].options] == [0, 1]
    ex.controls["layer"].value = 1
    ex.controls["head"].value = 1
    torch.testing.assert_close(ex.state["weights"], first.encoder_self[1, 1], **TOL)
    assert ex.state["xlabels"] == first.src_pieces == ex.state["ylabels"]
    h = -(first.encoder_self[1, 1].double() * first.encoder_self[1, 1].double().log()).sum(-1).mean()
    assert abs(ex.state["entropy"] - float(h)) < 1e-5
    assert abs(ex.state["uniform_entropy"] - float(torch.log(torch.tensor(len(first.src_pieces), dtype=torch.float64)))) < 1e-12

    ex.controls["kind"].value = "decoder-self"  # back to one layer: the layer is clamped to it
    assert ex.state["layer"] == 0 and ex.controls["layer"].value == 0
    T = len(first.in_pieces)
    expected = float(torch.log(torch.arange(1, T + 1, dtype=torch.float64)).mean())  # causal rows see t + 1 keys
    assert abs(ex.state["uniform_entropy"] - expected) < 1e-12

    ex.controls["sentence"].value = "zwei Hunde"  # a typed sentence, not in the menu
    (typed,) = translate_with_attention(model, tokenizer, ["zwei Hunde"], max_len=6)
    assert ex.state["record"].src_pieces == typed.src_pieces
    torch.testing.assert_close(ex.state["weights"], typed.decoder_self[0, 1], **TOL)


def test_explorer_empty_sentence_and_bad_arguments(model, tokenizer):
    ex = transformer_attention_explorer(model, tokenizer, SENTENCES, sentence="", kind="encoder-self", head=0)
    assert ex.state["record"].src_pieces == ["</s>"] and ex.state["weights"].shape == (1, 1)
    with pytest.raises(ValueError, match="sentences"):
        transformer_attention_explorer(model, tokenizer, [])
    with pytest.raises(ValueError, match="kind"):
        transformer_attention_explorer(model, tokenizer, SENTENCES, kind="self")
    with pytest.raises(ValueError, match="layer"):
        transformer_attention_explorer(model, tokenizer, SENTENCES, kind="cross", layer=1)
    with pytest.raises(ValueError, match="head"):
        transformer_attention_explorer(model, tokenizer, SENTENCES, head=2)
