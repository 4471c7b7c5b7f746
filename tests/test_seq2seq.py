"""Recurrent encoder-decoders: shapes, padding, attention weights, incremental decoding, training."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from attn_tutorial import Seq2Seq, Seq2SeqConfig, Seq2SeqState, beam_search, greedy_decode, gru_cell, padding_mask

PAD, BOS, EOS = 0, 1, 2
SRC_V, TGT_V = 11, 13

# Every decoder variant the config allows (Luong: 3 scores x 2 modes x input feeding on/off).
VARIANTS = {
    "none": dict(attention="none"),
    "bahdanau": dict(attention="bahdanau"),
    "bahdanau-2layers": dict(attention="bahdanau", num_layers=2),
    **{
        f"luong-{score}-{mode}{'' if feed else '-nofeed'}": dict(attention="luong", luong_score=score, luong_mode=mode, input_feeding=feed)
        for score in ("dot", "general", "concat")
        for mode in ("global", "local-p")
        for feed in (True, False)
    },
    "luong-2layers-tied": dict(attention="luong", num_layers=2, tie_embeddings=True),
}


def make_model(variant: str, dtype: torch.dtype = torch.float64, seed: int = 0, **overrides: object) -> Seq2Seq:
    torch.manual_seed(seed)
    options = {**VARIANTS[variant], **overrides}
    cfg = Seq2SeqConfig(src_vocab_size=SRC_V, tgt_vocab_size=TGT_V, emb_dim=6, hidden_dim=5, local_window=2, **options)  # type: ignore[arg-type]
    return Seq2Seq(cfg).to(dtype).eval()


def make_batch(src_lengths: list[int], tgt_lengths: list[int], extra_src_pad: int = 0, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random left-aligned ids; padding = PAD at the end of each row."""
    g = torch.Generator().manual_seed(seed)
    S, T = max(src_lengths) + extra_src_pad, max(tgt_lengths)
    src_mask, tgt_mask = padding_mask(src_lengths, S), padding_mask(tgt_lengths, T)
    src = torch.randint(4, SRC_V, (len(src_lengths), S), generator=g) * src_mask
    tgt = torch.randint(3, TGT_V, (len(tgt_lengths), T), generator=g) * tgt_mask
    tgt[:, 0] = BOS
    return src, src_mask, tgt, tgt_mask


# ---------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("variant", VARIANTS)
def test_shapes_of_forward_encode_and_decode_step(variant: str) -> None:
    model = make_model(variant)
    src, src_mask, tgt, tgt_mask = make_batch([5, 2, 4], [4, 3, 1])
    logits, attn = model(src, src_mask, tgt, tgt_mask, return_attention=True)
    assert logits.shape == (3, 4, TGT_V) and attn.shape == (3, 4, 5)
    assert model(src, src_mask, tgt, tgt_mask).shape == (3, 4, TGT_V)
    state = model.encode(src, src_mask)
    L = model.config.num_layers
    assert state.hidden.shape == (L, 3, 5) and state.src_mask.shape == (3, 5)
    log_probs, state2, step_attn = model.decode_step(state, tgt[:, 0])
    assert log_probs.shape == (3, TGT_V) and step_attn.shape == (3, 5) and state2.step == 1
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(3, dtype=torch.float64), rtol=0, atol=1e-12)
    picked = state2.reorder(torch.tensor([2, 2, 0, 1]))
    assert picked.hidden.shape == (L, 4, 5) and picked.memory.shape[0] == 4
    torch.testing.assert_close(picked.hidden[:, 0], state2.hidden[:, 2], rtol=0, atol=0)


def test_zero_length_target_gives_empty_logits() -> None:
    model = make_model("bahdanau")
    src, src_mask, _, _ = make_batch([3, 2], [1, 1])
    empty = torch.zeros(2, 0, dtype=torch.long)
    logits, attn = model(src, src_mask, empty, empty.bool(), return_attention=True)
    assert logits.shape == (2, 0, TGT_V) and attn.shape == (2, 0, 3)


# ---------------------------------------------------------------------------------- padding


@pytest.mark.parametrize("variant", VARIANTS)
def test_source_padding_does_not_change_anything_real(variant: str) -> None:
    """Extra padding columns leave logits and attention on real tokens unchanged (float64, atol 1e-6)."""
    model = make_model(variant)
    src, src_mask, tgt, tgt_mask = make_batch([4, 2, 3], [3, 3, 2])
    padded_src = F.pad(src, (0, 3), value=PAD)
    padded_mask = F.pad(src_mask, (0, 3), value=False)
    logits, attn = model(src, src_mask, tgt, tgt_mask, return_attention=True)
    logits_p, attn_p = model(padded_src, padded_mask, tgt, tgt_mask, return_attention=True)
    torch.testing.assert_close(logits_p, logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(attn_p[..., :4], attn, rtol=0, atol=1e-6)
    assert bool((attn_p[..., 4:] == 0).all())


@settings(max_examples=15, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 5), min_size=1, max_size=3),
    variant=st.sampled_from(["bahdanau", "luong-general-global", "luong-dot-local-p"]),
)
def test_each_sentence_is_translated_as_if_alone(lengths: list[int], variant: str) -> None:
    """Batching with longer neighbours (hence padding) equals running every sentence on its own."""
    torch.set_num_threads(1)
    model = make_model(variant)
    src, src_mask, tgt, tgt_mask = make_batch(lengths, [3] * len(lengths), seed=sum(lengths))
    logits, attn = model(src, src_mask, tgt, tgt_mask, return_attention=True)
    for i, n in enumerate(lengths):
        alone, attn_alone = model(src[i : i + 1, :n], src_mask[i : i + 1, :n], tgt[i : i + 1], tgt_mask[i : i + 1], return_attention=True)
        torch.testing.assert_close(logits[i : i + 1], alone, rtol=0, atol=1e-6)
        torch.testing.assert_close(attn[i : i + 1, :, :n], attn_alone, rtol=0, atol=1e-6)


def test_target_padding_does_not_change_real_positions() -> None:
    """The decoder reads left to right: padding after a target's end cannot reach earlier logits."""
    model = make_model("luong-general-global")
    src, src_mask, tgt, tgt_mask = make_batch([4, 3], [3, 3])
    longer = F.pad(tgt, (0, 2), value=PAD)
    longer_mask = F.pad(tgt_mask, (0, 2), value=False)
    torch.testing.assert_close(model(src, src_mask, longer, longer_mask)[:, :3], model(src, src_mask, tgt, tgt_mask), rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------- attention weights


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "none"])
def test_attention_rows_are_distributions_over_real_source_tokens(variant: str) -> None:
    model = make_model(variant)
    src, src_mask, tgt, tgt_mask = make_batch([5, 2, 3], [4, 4, 4])
    _, attn = model(src, src_mask, tgt, tgt_mask, return_attention=True)
    on_padding = attn.masked_select(~src_mask[:, None, :].expand_as(attn))
    assert bool((on_padding == 0).all()), "padding must get exactly zero weight"
    assert bool((attn >= 0).all())
    row_sums = attn.sum(-1)
    if "local-p" in variant:  # a Gaussian-damped softmax: rows sum to at most 1
        assert bool((row_sums <= 1 + 1e-12).all()) and bool((row_sums > 0).all())
    else:
        torch.testing.assert_close(row_sums, torch.ones_like(row_sums), rtol=0, atol=1e-12)


def test_model_without_attention_returns_zero_weights() -> None:
    model = make_model("none")
    src, src_mask, tgt, tgt_mask = make_batch([4, 2], [3, 3])
    _, attn = model(src, src_mask, tgt, tgt_mask, return_attention=True)
    assert attn.shape == (2, 3, 4) and bool((attn == 0).all())


def test_bahdanau_queries_with_the_previous_state_luong_with_the_current_one() -> None:
    """At step 1 Bahdanau's weights depend only on the encoder (s_0); Luong's also on the first input."""
    src, src_mask, _, _ = make_batch([4], [1])
    for variant, depends_on_input in (("bahdanau", False), ("luong-general-global", True)):
        model = make_model(variant)
        state = model.encode(src, src_mask)
        _, _, attn_a = model.decode_step(state, torch.tensor([5]))
        _, _, attn_b = model.decode_step(state, torch.tensor([7]))
        assert (not torch.equal(attn_a, attn_b)) == depends_on_input, variant


# ---------------------------------------------------------------------------------- incremental decoding


@pytest.mark.parametrize("variant", VARIANTS)
def test_teacher_forcing_equals_step_by_step_decoding(variant: str) -> None:
    """forward(...) and a loop of decode_step(...) agree in float64 to 1e-10 (logits as log-probs, attention)."""
    model = make_model(variant)
    src, src_mask, tgt, tgt_mask = make_batch([5, 1, 3], [4, 4, 4])
    logits, attn = model(src, src_mask, tgt, tgt_mask, return_attention=True)
    state = model.encode(src, src_mask)
    for t in range(tgt.shape[1]):
        log_probs, state, step_attn = model.decode_step(state, tgt[:, t])
        torch.testing.assert_close(log_probs, F.log_softmax(logits[:, t], -1), rtol=0, atol=1e-10)
        torch.testing.assert_close(step_attn, attn[:, t], rtol=0, atol=1e-10)


def test_decode_step_leaves_the_old_state_usable() -> None:
    model = make_model("luong-general-global")
    src, src_mask, _, _ = make_batch([3, 2], [1, 1])
    state = model.encode(src, src_mask)
    first, _, _ = model.decode_step(state, torch.tensor([BOS, BOS]))
    model.decode_step(state, torch.tensor([5, 6]))
    again, _, _ = model.decode_step(state, torch.tensor([BOS, BOS]))
    torch.testing.assert_close(again, first, rtol=0, atol=0)


def test_empty_source_sentences_give_finite_outputs() -> None:
    for variant in ("none", "bahdanau", "luong-concat-local-p"):
        model = make_model(variant)
        src, src_mask, tgt, tgt_mask = make_batch([3, 0], [2, 2])
        logits, attn = model(src, src_mask, tgt, tgt_mask, return_attention=True)
        assert bool(torch.isfinite(logits).all()) and bool((attn[1] == 0).all())
        # A batch with no source column at all is padded to one masked column.
        empty = torch.zeros(2, 0, dtype=torch.long)
        logits0, attn0 = model(empty, empty.bool(), tgt, tgt_mask, return_attention=True)
        assert bool(torch.isfinite(logits0).all()) and attn0.shape == (2, 2, 1) and bool((attn0 == 0).all())


# ---------------------------------------------------------------------------------- training


@pytest.mark.parametrize("variant", VARIANTS)
def test_gradient_reaches_every_parameter(variant: str) -> None:
    model = make_model(variant).train()
    src, src_mask, tgt, tgt_mask = make_batch([5, 2, 3], [4, 3, 4])
    logits = model(src, src_mask, tgt, tgt_mask)
    logits.masked_select(tgt_mask[..., None]).square().sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and bool(p.grad.abs().sum() > 0), f"no gradient reaches {name}"
    # The padding embedding row stays zero and gets no gradient.
    assert bool((model.src_embed.weight.grad[PAD] == 0).all()) and bool((model.src_embed.weight[PAD] == 0).all())


def copy_task(n: int, vocab: int, seed: int) -> tuple[torch.Tensor, ...]:
    """n random sentences of 2-5 ids; the target is the source itself."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, 6, (n,), generator=g)
    S = int(lengths.max())
    src_mask = padding_mask(lengths, S)
    src = torch.randint(4, vocab, (n, S), generator=g) * src_mask
    tgt_in = torch.cat([torch.full((n, 1), BOS), src], 1)  # BOS + tokens
    tgt_out = torch.cat([src, torch.zeros(n, 1, dtype=torch.long)], 1)
    tgt_out[torch.arange(n), lengths] = EOS  # tokens + EOS
    return src, src_mask, tgt_in, tgt_out, padding_mask(lengths + 1, S + 1)


@pytest.mark.parametrize("attention", ["bahdanau", "luong"])
def test_tiny_model_learns_to_copy(attention: str) -> None:
    """60 Adam steps on 8 fixed sentences: the loss collapses and greedy decoding copies every one."""
    torch.manual_seed(0)
    src, src_mask, tgt_in, tgt_out, tgt_mask = copy_task(8, vocab=8, seed=0)
    model = Seq2Seq(Seq2SeqConfig(src_vocab_size=8, emb_dim=16, hidden_dim=24, attention=attention))
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    first = None
    for _ in range(60):
        logits = model(src, src_mask, tgt_in, tgt_mask)
        loss = F.cross_entropy(logits.transpose(1, 2), tgt_out, ignore_index=PAD)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 1.5 and loss.item() < 0.05, (first, loss.item())
    expected = [row[:n].tolist() for row, n in zip(src, src_mask.sum(-1))]
    for result in (greedy_decode(model.eval(), src, src_mask), beam_search(model, src, src_mask, beam_size=3)):
        assert result.tokens == expected and all(result.finished)
        assert result.attention is not None and [a.shape for a in result.attention] == [(len(e), len(e)) for e in expected]


def test_dropout_is_active_in_training_mode_only() -> None:
    model = make_model("bahdanau", dropout=0.5)
    src, src_mask, tgt, tgt_mask = make_batch([4, 3], [3, 3])
    torch.testing.assert_close(model(src, src_mask, tgt, tgt_mask), model(src, src_mask, tgt, tgt_mask), rtol=0, atol=0)
    model.train()
    assert not torch.equal(model(src, src_mask, tgt, tgt_mask), model(src, src_mask, tgt, tgt_mask))


# ---------------------------------------------------------------------------------- configuration


def test_tied_and_shared_embeddings_are_one_tensor() -> None:
    tied = Seq2Seq(Seq2SeqConfig(src_vocab_size=9, tgt_vocab_size=7, tie_embeddings=True))
    assert tied.generator.weight is tied.tgt_embed.weight
    untied = Seq2Seq(Seq2SeqConfig(src_vocab_size=9, tgt_vocab_size=7))
    assert untied.num_parameters() - tied.num_parameters() == 7 * 64 - 64 * 32  # W_s out, pre-output projection in
    shared = Seq2Seq(Seq2SeqConfig(src_vocab_size=9, share_embeddings=True))
    assert shared.src_embed is shared.tgt_embed and shared.config.tgt_vocab == 9


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(src_vocab_size=0), "src_vocab_size must be a positive int"),
        (dict(tgt_vocab_size=-3), "tgt_vocab_size must be a positive int or None"),
        (dict(hidden_dim=2.5), "hidden_dim must be a positive int"),
        (dict(num_layers=0), "num_layers must be a positive int"),
        (dict(dropout=1.0), r"dropout must be in \[0, 1\)"),
        (dict(attention="transformer"), "attention must be one of"),
        (dict(luong_score="cosine"), "luong_score must be one of"),
        (dict(luong_mode="local-m"), "luong_mode must be one of"),
        (dict(local_window=0), "local_window must be a positive int"),
        (dict(tgt_vocab_size=7, share_embeddings=True), "share_embeddings=True needs one shared vocabulary"),
        (dict(pad_id=20), "pad_id must be a token id"),
    ],
)
def test_config_errors_are_clear(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Seq2SeqConfig(**{"src_vocab_size": 10, **overrides})  # type: ignore[arg-type]


def test_config_is_frozen_and_varies_with_replace() -> None:
    cfg = Seq2SeqConfig(src_vocab_size=10)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.hidden_dim = 3  # type: ignore[misc]
    assert dataclasses.replace(cfg, attention="luong").attention == "luong"
    with pytest.raises(ValueError, match="attention must be one of"):
        dataclasses.replace(cfg, attention="Luong")


def test_bad_inputs_are_named_in_errors() -> None:
    model = make_model("bahdanau")
    src, src_mask, tgt, tgt_mask = make_batch([3, 2], [2, 2])
    with pytest.raises(ValueError, match="src_mask must be a boolean tensor of shape"):
        model(src, src_mask.long(), tgt, tgt_mask)
    with pytest.raises(ValueError, match="left-aligned"):
        model(src, src_mask.flip(-1), tgt, tgt_mask)
    with pytest.raises(ValueError, match=r"src holds ids in \[0, 11\]; expected ids in \[0, 11\)"):
        model(src.clone().index_fill_(1, torch.tensor([0]), SRC_V), src_mask, tgt, tgt_mask)
    with pytest.raises(ValueError, match="tgt_in must be a"):
        model(src, src_mask, tgt.float(), tgt_mask)
    with pytest.raises(ValueError, match="tgt_in has shape"):
        model(src, src_mask, tgt[:1], tgt_mask[:1])
    with pytest.raises(ValueError, match="prev_tokens must be a"):
        model.decode_step(model.encode(src, src_mask), torch.tensor([1, 1, 1]))
    with pytest.raises(TypeError, match="config must be a Seq2SeqConfig"):
        Seq2Seq({"src_vocab_size": 3})  # type: ignore[arg-type]


def test_state_repr_is_short() -> None:
    model = make_model("luong-general-global")
    src, src_mask, _, _ = make_batch([3], [1])
    assert isinstance(model.encode(src, src_mask), Seq2SeqState)
    assert repr(model.encode(src, src_mask)).startswith("Seq2SeqState(hidden=(1, 1, 5)")


# ---------------------------------------------------------------------------------- speed-ups and initialisation


def test_cached_bahdanau_keys_equal_the_uncached_attention() -> None:
    """encode() projects the keys U h_s once; attending with them equals the generic Attention module,
    which projects the memory again at every call (float64, atol 1e-12), also after reorder()."""
    model = make_model("bahdanau-2layers")
    src, src_mask, tgt, _ = make_batch([5, 1, 3], [4, 4, 4])
    state = model.encode(src, src_mask)
    assert state.keys is not None and state.keys.shape == (3, 5, 5)
    decoder = model.decoder
    for t in range(3):
        query = state.hidden[-1]  # s_{t-1}
        uncached, uncached_w = decoder.attention(query.unsqueeze(1), state.memory, state.memory, state.src_mask[:, None, :])
        cached, cached_w = decoder.attend(query, state)
        torch.testing.assert_close(cached, uncached.squeeze(1), rtol=0, atol=1e-12)
        torch.testing.assert_close(cached_w, uncached_w.squeeze(1), rtol=0, atol=1e-12)
        _, state, _ = model.decode_step(state, tgt[:, t])
        state = state.reorder(torch.tensor([2, 0, 1]))
        torch.testing.assert_close(state.keys, decoder.attention.score.w_k(state.memory), rtol=0, atol=1e-12)


def test_fresh_tied_model_starts_near_the_uniform_loss() -> None:
    """Tied embeddings drawn with std emb_dim**-0.5 give O(1) logits: the first loss is close to ln V
    (with PyTorch's N(0, 1) table it would be several nats higher)."""
    V = 400
    torch.manual_seed(0)
    cfg = Seq2SeqConfig(src_vocab_size=V, emb_dim=32, hidden_dim=48, share_embeddings=True, tie_embeddings=True)
    model = Seq2Seq(cfg).eval()
    assert bool((model.tgt_embed.weight[PAD] == 0).all())
    torch.testing.assert_close(model.tgt_embed.weight[1:].std().item(), 32**-0.5, rtol=0.05, atol=0)
    g = torch.Generator().manual_seed(1)
    src_mask, tgt_mask = padding_mask(torch.full((16,), 9), 9), padding_mask(torch.full((16,), 8), 8)
    src, tgt_in, tgt_out = (torch.randint(4, V, m.shape, generator=g) for m in (src_mask, tgt_mask, tgt_mask))
    with torch.no_grad():
        loss = F.cross_entropy(model(src, src_mask, tgt_in, tgt_mask).transpose(1, 2), tgt_out)
    assert abs(loss.item() - torch.log(torch.tensor(float(V))).item()) < 0.1, loss.item()


def test_logits_mask_computes_only_real_positions() -> None:
    """``logits_mask`` returns exactly the rows of the full logits where the mask is True."""
    torch.manual_seed(0)
    cfg = Seq2SeqConfig(src_vocab_size=19, emb_dim=8, hidden_dim=12, attention="bahdanau", dropout=0.0)
    model = Seq2Seq(cfg).eval()
    src = torch.randint(4, 19, (3, 5))
    src_mask = torch.arange(5) < torch.tensor([5, 3, 1])[:, None]
    tgt = torch.randint(4, 19, (3, 4))
    tgt_mask = torch.arange(4) < torch.tensor([4, 1, 2])[:, None]
    with torch.no_grad():
        full = model(src, src_mask, tgt, tgt_mask)
        picked = model(src, src_mask, tgt, tgt_mask, logits_mask=tgt_mask)
    assert picked.shape == (int(tgt_mask.sum()), 19)
    torch.testing.assert_close(picked, full[tgt_mask], atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="logits_mask"):
        model(src, src_mask, tgt, tgt_mask, logits_mask=tgt_mask.long())


def test_gru_cell_is_one_step_of_torch_gru() -> None:
    """attn_tutorial.gru_cell with nn.GRU's weights reproduces nn.GRU step by step (float64, 1e-12)."""
    torch.manual_seed(0)
    gru = torch.nn.GRU(5, 7, batch_first=True).double()
    x = torch.randn(3, 6, 5, dtype=torch.float64)
    h = torch.randn(3, 7, dtype=torch.float64)
    out, h_n = gru(x, h[None])
    for t in range(x.shape[1]):
        h = gru_cell(x[:, t], h, gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0)
        torch.testing.assert_close(h, out[:, t], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h, h_n[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("variant", ["luong-general-local-p", "luong-dot-local-p-nofeed"])
def test_local_p_steps_do_not_recheck_lengths(variant: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Local-p decoding checks the source once (encode), not at every step: ``check_key_lengths`` reads
    the lengths back from the device, a host synchronisation per step on a GPU. The unchecked path
    gives what the checked module call gives."""
    from attn_tutorial import attention
    from attn_tutorial.decoding import greedy_decode

    model = make_model(variant)
    src, src_mask, tgt, tgt_mask = make_batch([5, 2, 0, 4], [4, 3, 1, 2], extra_src_pad=1)
    state = model.encode(src, src_mask)
    h = torch.randn(4, 3, 5, dtype=torch.float64)
    checked = model.decoder.attention(h, state.memory, state.memory, src_mask[:, None, :], key_lengths=state.src_lengths.clamp(min=1))
    unchecked = model.decoder.attention.attend(h, state.memory, state.memory, src_mask[:, None, :], state.src_lengths.clamp(min=1))
    for a, b in zip(checked, unchecked):
        torch.testing.assert_close(a, b, rtol=0, atol=0)

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("check_key_lengths called while decoding")

    monkeypatch.setattr(attention, "check_key_lengths", forbidden)
    logits = model(src, src_mask, tgt, tgt_mask)
    result = greedy_decode(model, src, src_mask, max_len=4)
    assert logits.shape == (4, 4, TGT_V) and len(result.tokens) == 4
    with pytest.raises(AssertionError, match="check_key_lengths"):  # the module's own forward still checks
        model.decoder.attention(h, state.memory, state.memory, key_lengths=state.src_lengths.clamp(min=1))
