"""The Transformer: layers against PyTorch's own, the key/value cache against recomputation, masks."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from attn_tutorial.decoding import beam_search, greedy_decode
from attn_tutorial import TrainConfig, export_fp16, fit, load_exported, save_checkpoint, token_cross_entropy
from attn_tutorial.transformer import DecoderLayer, EncoderLayer, Transformer, TransformerConfig

V = 23
TOL = {"atol": 1e-5, "rtol": 1e-5}  # float32, a few hundred accumulations


def tiny(**kw) -> TransformerConfig:
    base = dict(src_vocab_size=V, d_model=16, num_heads=2, num_encoder_layers=2, num_decoder_layers=2, d_ff=32, dropout=0.0)
    return TransformerConfig(**{**base, **kw})


def batch(B: int = 3, S: int = 6, T: int = 5, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, V, (B, S), generator=g)
    tgt = torch.randint(4, V, (B, T), generator=g)
    src_len = torch.tensor([S, S - 2, 1])[:B]
    tgt_len = torch.tensor([T, 2, T - 1])[:B]
    src_mask = torch.arange(S) < src_len[:, None]
    tgt_mask = torch.arange(T) < tgt_len[:, None]
    return src.masked_fill(~src_mask, 0), src_mask, tgt.masked_fill(~tgt_mask, 0), tgt_mask


def _copy_mha(ours, theirs: nn.MultiheadAttention) -> None:
    E = theirs.embed_dim
    with torch.no_grad():
        for proj, w, b in zip((ours.q_proj, ours.k_proj, ours.v_proj), theirs.in_proj_weight.split(E), theirs.in_proj_bias.split(E)):
            proj.weight.copy_(w)
            proj.bias.copy_(b)
        ours.out_proj.load_state_dict(theirs.out_proj.state_dict())


def _copy_ff_norms(ours, theirs, n_norms: int) -> None:
    ours.ff.w1.load_state_dict(theirs.linear1.state_dict())
    ours.ff.w2.load_state_dict(theirs.linear2.state_dict())
    for i in range(1, n_norms + 1):
        getattr(ours, f"norm{i}").load_state_dict(getattr(theirs, f"norm{i}").state_dict())


@pytest.mark.parametrize("norm_first", [True, False])
def test_encoder_layer_matches_torch(norm_first: bool) -> None:
    torch.manual_seed(0)
    c = tiny(norm_first=norm_first)
    ref = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True, norm_first=norm_first).eval()
    ours = EncoderLayer(c).eval()
    _copy_mha(ours.self_attn, ref.self_attn)
    _copy_ff_norms(ours, ref, 2)
    x = torch.randn(3, 6, 16)
    _, src_mask, _, _ = batch()
    got, _ = ours(x, src_mask[:, None, None, :])
    want = ref(x, src_key_padding_mask=~src_mask)  # torch: True = ignore
    assert_close(got, want, **TOL)


@pytest.mark.parametrize("norm_first", [True, False])
def test_decoder_layer_matches_torch(norm_first: bool) -> None:
    torch.manual_seed(1)
    c = tiny(norm_first=norm_first)
    ref = nn.TransformerDecoderLayer(16, 2, 32, dropout=0.0, batch_first=True, norm_first=norm_first).eval()
    ours = DecoderLayer(c).eval()
    _copy_mha(ours.self_attn, ref.self_attn)
    _copy_mha(ours.cross_attn, ref.multihead_attn)
    _copy_ff_norms(ours, ref, 3)
    x, memory = torch.randn(3, 5, 16), torch.randn(3, 6, 16)
    _, src_mask, _, _ = batch()
    got, _, _ = ours(x, memory, src_mask[:, None, None, :])
    causal = nn.Transformer.generate_square_subsequent_mask(5)
    want = ref(x, memory, tgt_mask=causal, tgt_is_causal=True, memory_key_padding_mask=~src_mask)
    assert_close(got, want, **TOL)


@pytest.mark.parametrize("positions", ["sinusoidal", "learned", "rope"])
@pytest.mark.parametrize("norm_first", [True, False])
def test_kv_cache_equals_recomputation(positions: str, norm_first: bool) -> None:
    torch.manual_seed(2)
    model = Transformer(tiny(positions=positions, norm_first=norm_first, max_len=32)).eval()
    src, src_mask, _, _ = batch()
    state = model.encode(src, src_mask)
    prefix = torch.full((3, 1), 1)
    prev = prefix[:, 0]
    with torch.no_grad():
        for _ in range(6):
            cached, state, attn = model.decode_step(state, prev)
            full = model.decode_step_uncached(src, src_mask, prefix)
            assert_close(cached, full, **TOL)
            assert_close(attn.sum(-1), torch.ones(3), **TOL)  # every source here has a real token
            prev = cached.argmax(-1)
            prefix = torch.cat([prefix, prev[:, None]], 1)


def test_state_reorder_selects_rows() -> None:
    torch.manual_seed(3)
    model = Transformer(tiny()).eval()
    src, src_mask, _, _ = batch()
    with torch.no_grad():
        state = model.encode(src, src_mask)
        _, state, _ = model.decode_step(state, torch.tensor([1, 1, 1]))
        idx = torch.tensor([2, 0, 0])
        lp_re, _, _ = model.decode_step(state.reorder(idx), torch.tensor([5, 6, 6]))
        lp, _, _ = model.decode_step(state, torch.tensor([6, 6, 5]))
    assert_close(lp_re, lp[idx], **TOL)


def test_padding_and_future_tokens_do_not_leak() -> None:
    torch.manual_seed(4)
    model = Transformer(tiny()).eval()
    src, src_mask, tgt, tgt_mask = batch()
    with torch.no_grad():
        logits = model(src, src_mask, tgt, tgt_mask)
        # more source padding, different ids in padded source slots
        src2 = torch.cat([src.masked_fill(~src_mask, 7), torch.full((3, 3), 9)], 1)
        mask2 = torch.cat([src_mask, torch.zeros(3, 3, dtype=torch.bool)], 1)
        assert_close(model(src2, mask2, tgt, tgt_mask), logits, **TOL)
        # changing target token t changes no logit before t
        tgt3 = tgt.clone()
        tgt3[:, 3] = (tgt3[:, 3] + 1) % V
        assert_close(model(src, src_mask, tgt3, tgt_mask)[:, :3], logits[:, :3], **TOL)
        assert not torch.allclose(model(src, src_mask, tgt3, tgt_mask)[:, 3], logits[:, 3])


def test_attention_maps_shapes_and_masks() -> None:
    torch.manual_seed(5)
    c = tiny()
    model = Transformer(c).eval()
    src, src_mask, tgt, tgt_mask = batch()
    with torch.no_grad():
        logits, maps = model(src, src_mask, tgt, tgt_mask, return_attention=True)
    assert logits.shape == (3, 5, V)
    assert len(maps.encoder_self) == 2 and len(maps.decoder_self) == 2 and len(maps.cross) == 2
    for w in maps.encoder_self:
        assert w.shape == (3, 2, 6, 6)
        assert float(w.masked_select(~src_mask[:, None, None, :].expand_as(w)).abs().max()) == 0.0
    for w in maps.decoder_self:
        assert w.shape == (3, 2, 5, 5)
        assert float(torch.triu(w, diagonal=1).abs().max()) == 0.0  # causal
    for w in maps.cross:
        assert w.shape == (3, 2, 5, 6)
        assert_close(w.sum(-1), torch.ones(3, 2, 5), **TOL)


def test_logits_mask_and_loss() -> None:
    torch.manual_seed(6)
    model = Transformer(tiny()).eval()
    src, src_mask, tgt, tgt_mask = batch()
    with torch.no_grad():
        full = model(src, src_mask, tgt, tgt_mask)
        picked = model(src, src_mask, tgt, tgt_mask, logits_mask=tgt_mask)
    assert_close(picked, full[tgt_mask], **TOL)
    with pytest.raises(ValueError, match="logits_mask"):
        model(src, src_mask, tgt, tgt_mask, logits_mask=tgt_mask[:, :2])


def test_empty_source_and_bf16() -> None:
    torch.manual_seed(7)
    model = Transformer(tiny()).eval()
    empty = torch.zeros(2, 0, dtype=torch.long)
    tgt = torch.tensor([[1, 5], [1, 6]])
    with torch.no_grad():
        logits = model(empty, empty.bool(), tgt, torch.ones_like(tgt, dtype=torch.bool))
        assert torch.isfinite(logits).all()
        src, src_mask, tgt, tgt_mask = batch()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(src, src_mask, tgt, tgt_mask)
        # bf16 keeps 8 bits of mantissa: agreement to about 1e-1 on O(1) logits
        assert_close(low.float(), model(src, src_mask, tgt, tgt_mask), atol=0.1, rtol=0.05)
    result = greedy_decode(model, empty, empty.bool(), max_len=5)
    assert result.tokens == [[], []]


def test_config_and_input_errors() -> None:
    with pytest.raises(ValueError, match="divisible"):
        tiny(d_model=15)
    with pytest.raises(ValueError, match="positions"):
        tiny(positions="alibi")
    with pytest.raises(ValueError, match="norm|activation"):
        tiny(activation="swish")
    model = Transformer(tiny(positions="learned", max_len=8))
    src, src_mask, tgt, tgt_mask = batch()
    with pytest.raises(ValueError, match="src_mask"):
        model(src, src_mask.long(), tgt, tgt_mask)
    with pytest.raises(ValueError, match=r"ids in \[0, 23\)"):
        model(src + 100, src_mask, tgt, tgt_mask)
    long = torch.ones(1, 9, dtype=torch.long)
    with pytest.raises(ValueError, match="max_len"):
        model(long, long.bool(), tgt[:1], tgt_mask[:1])


def test_tied_embeddings_and_parameter_count() -> None:
    c = tiny()
    model = Transformer(c)
    assert model.generator.weight is model.src_embed.weight is model.tgt_embed.weight
    d, f, L = 16, 32, 2
    mha = 4 * (d * d + d)
    ln = 2 * d
    ff = d * f + f + f * d + d
    expected = V * d + V + L * (mha + ff + 2 * ln) + L * (2 * mha + ff + 3 * ln) + 2 * ln
    assert model.num_parameters() == expected


def test_trains_decodes_and_round_trips(tmp_path) -> None:
    """A tiny copy task: loss falls, beam search and greedy agree on the learned copy, fp16 export loads."""
    torch.manual_seed(8)
    model = Transformer(tiny(d_model=32, d_ff=64, num_heads=4))
    g = torch.Generator().manual_seed(0)

    class Batch:
        def __init__(self) -> None:
            self.src = torch.randint(4, V, (32, 5), generator=g)
            self.src_mask = torch.ones(32, 5, dtype=torch.bool)
            self.tgt_in = torch.cat([torch.ones(32, 1, dtype=torch.long), self.src], 1)
            self.tgt_out = torch.cat([self.src, torch.full((32, 1), 2)], 1)
            self.tgt_mask = torch.ones(32, 6, dtype=torch.bool)

    batches = [Batch() for _ in range(8)]
    cfg = TrainConfig(epochs=25, lr=3e-3, warmup_steps=20, schedule="cosine", progress=False)
    first = token_cross_entropy(model, batches[0])[0].item()
    fit(model, batches, None, cfg)
    model.eval()
    last = token_cross_entropy(model, batches[0])[0].item()
    assert last < 0.3 * first
    src, mask = batches[0].src[:4], batches[0].src_mask[:4]
    greedy = greedy_decode(model, src, mask, max_len=8)
    beam = beam_search(model, src, mask, beam_size=3, max_len=8)
    copied = sum(t == s for t, s in zip(greedy.tokens, src.tolist()))
    assert copied >= 3, (greedy.tokens, src.tolist())
    assert beam.tokens == greedy.tokens or all(b >= g - 1e-4 for b, g in zip(beam.scores, greedy.scores))
    ckpt = save_checkpoint(tmp_path / "ckpt", model)
    path = export_fp16(ckpt, tmp_path / "model.safetensors")
    loaded = Transformer(model.config)
    ckpt_meta = load_exported(path, loaded).metadata
    assert ckpt_meta["model_config"] == model.config.to_dict()
    loaded.eval()
    with torch.no_grad():
        assert_close(loaded(src, mask, batches[0].tgt_in[:4], batches[0].tgt_mask[:4]),
                     model(src, mask, batches[0].tgt_in[:4], batches[0].tgt_mask[:4]), atol=0.05, rtol=0.02)
