"""Tests of attn_tutorial.batching: collate, token budgets and the batch iterator."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attn_tutorial as at

# --------------------------------------------------------------------------------------------------
# 5. batches
# --------------------------------------------------------------------------------------------------


def test_collate_layout_masks_and_padding() -> None:
    pairs = [([5, 6, 7], [8, 9]), ([], []), ([5] * 9, [6])]
    batch = at.collate(pairs)  # pad_to_multiple_of=8
    assert batch.src.shape == (3, 16) and batch.tgt_in.shape == (3, 8)
    assert batch.src.dtype == batch.tgt_in.dtype == batch.tgt_out.dtype == torch.long
    assert batch.src[0, :5].tolist() == [5, 6, 7, at.EOS_ID, at.PAD_ID]
    assert batch.src[1, :2].tolist() == [at.EOS_ID, at.PAD_ID]  # empty source: just EOS
    assert batch.tgt_in[0, :4].tolist() == [at.BOS_ID, 8, 9, at.PAD_ID]
    assert batch.tgt_out[0, :4].tolist() == [8, 9, at.EOS_ID, at.PAD_ID]
    assert batch.tgt_out[1, :2].tolist() == [at.EOS_ID, at.PAD_ID]  # empty target: just EOS
    assert batch.src_mask.sum(1).tolist() == [4, 1, 10]
    assert batch.tgt_mask.sum(1).tolist() == [3, 1, 2]
    assert torch.equal(batch.src_mask, batch.src != at.PAD_ID)
    assert torch.equal(batch.tgt_mask, batch.tgt_out != at.PAD_ID)
    # teacher forcing: the input at t+1 is the target at t
    assert torch.equal(batch.tgt_in[:, 1:][batch.tgt_mask[:, 1:]], batch.tgt_out[:, :-1][batch.tgt_mask[:, 1:]])
    assert batch.num_tokens == 3 + 1 + 2 and batch.num_src_tokens == 15 and len(batch) == 3
    assert batch.index.tolist() == [0, 1, 2]
    exact = at.collate(pairs, pad_to_multiple_of=1, index=[7, 3, 4])
    assert exact.src.shape == (3, 10) and exact.tgt_in.shape == (3, 3)
    assert exact.index.tolist() == [7, 3, 4]
    moved = exact.to("meta")
    assert moved.src.device.type == "meta" and moved.index.device.type == "meta"


def test_collate_and_batch_validate_their_input() -> None:
    with pytest.raises(ValueError, match="at least one"):
        at.collate([])
    with pytest.raises(ValueError, match="pairs\\[0\\]"):
        at.collate([([1, 2],)])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="int token ids"):
        at.collate([([1.5], [2])])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="index"):
        at.collate([([4], [5])], index=[0, 1])
    b = at.collate([([4], [5])])
    with pytest.raises(ValueError, match="tgt_mask must be torch.bool"):
        at.Batch(b.src, b.src_mask, b.tgt_in, b.tgt_out, b.tgt_mask.long())
    with pytest.raises(ValueError, match="src_mask"):
        at.Batch(b.src, b.src_mask[:, :1], b.tgt_in, b.tgt_out, b.tgt_mask)
    with pytest.raises(AttributeError):
        b.src = b.src  # type: ignore[misc]  # frozen


@given(
    lengths=st.lists(st.integers(1, 40), min_size=0, max_size=300),
    max_tokens=st.integers(40, 600),
    multiple=st.sampled_from([1, 8]),
    seed=st.integers(0, 3),
    epoch=st.integers(0, 3),
    bucket=st.sampled_from([1, 16, 4096]),
    shuffle=st.booleans(),
)
@settings(max_examples=80, deadline=None)
def test_token_budget_batches_cover_everything_within_budget(
    lengths: list[int], max_tokens: int, multiple: int, seed: int, epoch: int, bucket: int, shuffle: bool
) -> None:
    kwargs = dict(shuffle=shuffle, seed=seed, epoch=epoch, bucket_size=bucket, pad_to_multiple_of=multiple)
    batches = at.token_budget_batches(lengths, max_tokens, **kwargs)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))  # every example exactly once
    for b in batches:
        assert b
        width = -(-max(lengths[i] for i in b) // multiple) * multiple
        assert len(b) * width <= max_tokens
    assert batches == at.token_budget_batches(lengths, max_tokens, **kwargs)
    if not shuffle:
        assert [lengths[i] for i in flat] == sorted(lengths)


def test_token_budget_batches_group_by_length_and_reshuffle_per_epoch() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 60, size=3000).tolist()
    epochs = [at.token_budget_batches(lengths, 1024, seed=3, epoch=e, bucket_size=1000) for e in range(3)]
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2]
    assert epochs[0] != at.token_budget_batches(lengths, 1024, seed=4, epoch=0, bucket_size=1000)
    real = sum(lengths)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in epochs[0])
    random_batches = [list(range(i, min(i + 32, 3000))) for i in range(0, 3000, 32)]  # unsorted, same size
    padded_random = sum(len(b) * max(lengths[i] for i in b) for b in random_batches)
    assert real / padded > 0.9 > real / padded_random
    with pytest.raises(ValueError, match="example 0 alone needs 64"):
        at.token_budget_batches([57, 3], 63, pad_to_multiple_of=8)
    with pytest.raises(ValueError, match="lengths must be >= 1"):
        at.token_budget_batches([3, 0], 63)
    with pytest.raises(ValueError, match="max_tokens"):
        at.token_budget_batches([3], 0)


def test_batch_iterator_on_the_date_task() -> None:
    splits = at.date_dataset(400, 0, 0, seed=2)
    it = at.BatchIterator(splits.train, splits.vocab, max_tokens=512, seed=1)
    first = [b.index.tolist() for b in it]
    assert sorted(i for idx in first for i in idx) == list(range(400))
    assert len(it) == len(first) == len(it.batches())
    seen = 0
    for batch in it:
        assert batch.src.numel() <= 512 and batch.tgt_in.numel() <= 512
        assert batch.src.shape[1] % 8 == 0 and batch.tgt_in.shape[1] % 8 == 0
        for row, k in enumerate(batch.index.tolist()):
            src, tgt = splits.train[k]
            assert splits.vocab.decode(batch.src[row]) == src
            assert splits.vocab.decode(batch.tgt_out[row]) == tgt
            assert splits.vocab.decode(batch.tgt_in[row]) == tgt  # BOS skipped
            seen += 1
    assert seen == 400
    assert [b.index.tolist() for b in it] == first  # same epoch, same order
    it.set_epoch(1)
    assert [b.index.tolist() for b in it] != first
    it.set_epoch(0)
    assert [b.index.tolist() for b in it] == first


def test_batch_iterator_truncates_accepts_ids_and_empty_strings() -> None:
    pairs = [("a" * 30, "b" * 5), ("", ""), ("ab", "b" * 40)]
    it = at.BatchIterator(pairs, at.CharVocab("ab"), max_tokens=16, shuffle=False, max_len=16, pad_to_multiple_of=1)
    assert it.num_truncated == 2
    batches = list(it)
    assert batches[0].index.tolist() == [1]  # shortest first without shuffle
    assert batches[0].src.tolist() == [[at.EOS_ID]] and batches[0].tgt_out.tolist() == [[at.EOS_ID]]
    widths = [w for b in batches for w in (b.src.shape[1], b.tgt_in.shape[1])]
    assert max(widths) == 16
    by_index = {i: (b, r) for b in batches for r, i in enumerate(b.index.tolist())}
    b, r = by_index[0]
    assert int(b.src_mask[r].sum()) == 16 and b.src[r, 15] == at.EOS_ID  # 15 kept + EOS
    ids = at.BatchIterator([([4, 5], [6]), ([], [7, 7])], None, max_tokens=64)
    assert sorted(i for b in ids for i in b.index.tolist()) == [0, 1]
    untruncated = at.BatchIterator(pairs, at.CharVocab("ab"), max_tokens=256, max_len=None)
    assert untruncated.num_truncated == 0 and max(untruncated.lengths) == 41
    with pytest.raises(ValueError, match="at least one example"):
        at.BatchIterator([], None)
    with pytest.raises(ValueError, match="max_len"):
        at.BatchIterator(pairs, at.CharVocab("ab"), max_len=1)
    with pytest.raises(ValueError, match="alone needs"):
        at.BatchIterator(pairs, at.CharVocab("ab"), max_tokens=20, max_len=None)


def test_batch_iterator_with_bpe_on_real_data(bpe: at.SubwordTokenizer) -> None:
    pairs = at.load_multi30k("test_2016_flickr")
    it = at.BatchIterator(pairs, bpe, max_tokens=2048, shuffle=False)
    assert it.num_truncated == 0  # no test sentence comes near DEFAULT_MAX_LEN
    assert max(it.lengths) < at.DEFAULT_MAX_LEN // 2
    restored = {}
    for batch in it:
        assert max(batch.src.numel(), batch.tgt_in.numel()) <= 2048
        for row, k in enumerate(batch.index.tolist()):
            restored[k] = (bpe.decode(batch.src[row]), bpe.decode(batch.tgt_out[row]))
    assert [restored[k] for k in range(len(pairs))] == pairs


