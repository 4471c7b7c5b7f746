"""Batches: padded tensors with boolean masks, grouped by length under a token budget.

:class:`Batch`, :func:`collate`, :func:`token_budget_batches` and :class:`BatchIterator`. Masks are
``True`` = real token, so *may be attended to*. Shuffling uses a local generator seeded per epoch:
nothing here reads or changes global random state.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ._checks import check_int
from .tokens import BOS_ID, EOS_ID, PAD_ID, TextTokenizer, encode_all

__all__ = [
    "DEFAULT_MAX_LEN",
    "Batch",
    "collate",
    "token_budget_batches",
    "BatchIterator",
]

#: Default cap on a sequence's length in tokens, BOS/EOS included (longer ones are truncated). The
#: longest German or English Multi30K sentence has 55 tokens of a joint BPE-8k (train.de), so
#: nothing in it is cut; the cap only guards against stray very long inputs.
DEFAULT_MAX_LEN = 128


@dataclass(frozen=True, eq=False)
class Batch:
    """A padded batch for a sequence-to-sequence model. Masks are boolean, ``True`` = a real token
    (a key the model *may attend* to); padding (``PAD_ID``) is ``False``.

    * ``src``: source ids followed by EOS (so no source is empty and no attention row is fully
      masked);
    * ``tgt_in``: BOS followed by the target ids (the decoder's input, teacher forcing);
    * ``tgt_out``: the target ids followed by EOS (what the decoder must predict at each position),
      so ``tgt_out[:, t]`` is the token after ``tgt_in[:, t]``;
    * ``tgt_mask``: the padding mask of both ``tgt_in`` and ``tgt_out`` (the decoder combines it
      with a causal mask itself);
    * ``index``: each row's position in the data set it came from (to restore the original order).

    Shape:
        ``src``, ``src_mask``: ``(B, S)``; ``tgt_in``, ``tgt_out``, ``tgt_mask``: ``(B, T)``;
        ``index``: ``(B,)``. Ids are ``torch.long``, masks ``torch.bool``.
    """

    src: Tensor
    src_mask: Tensor
    tgt_in: Tensor
    tgt_out: Tensor
    tgt_mask: Tensor
    index: Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))

    def __post_init__(self) -> None:
        if self.src.dim() != 2:
            raise ValueError(f"src must be (B, S), got shape {tuple(self.src.shape)}")
        b = int(self.src.shape[0])
        if self.src_mask.shape != self.src.shape or self.src_mask.dtype != torch.bool:
            raise ValueError(
                f"src_mask must be torch.bool of src's shape {tuple(self.src.shape)} (True = real token), "
                f"got {self.src_mask.dtype} {tuple(self.src_mask.shape)}"
            )
        if self.tgt_in.dim() != 2 or self.tgt_in.shape[0] != b:
            raise ValueError(f"tgt_in must be (B={b}, T), got shape {tuple(self.tgt_in.shape)}")
        for name in ("tgt_out", "tgt_mask"):
            t = getattr(self, name)
            if t.shape != self.tgt_in.shape:
                raise ValueError(f"{name} must have tgt_in's shape {tuple(self.tgt_in.shape)}, got {tuple(t.shape)}")
        if self.tgt_mask.dtype != torch.bool:
            raise ValueError(f"tgt_mask must be torch.bool (True = real token), got {self.tgt_mask.dtype}")
        if self.index.numel() == 0:
            object.__setattr__(self, "index", torch.arange(b, device=self.src.device))
        elif self.index.shape != (b,):
            raise ValueError(f"index must be (B={b},), got shape {tuple(self.index.shape)}")

    def __len__(self) -> int:
        """The number of examples ``B``."""
        return int(self.src.shape[0])

    @property
    def num_tokens(self) -> int:
        """Number of real target tokens, EOS included and padding not; a per-token loss divides by it."""
        return int(self.tgt_mask.sum())

    @property
    def num_src_tokens(self) -> int:
        """Real source tokens (EOS included, padding not)."""
        return int(self.src_mask.sum())

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """A copy of the batch on ``device``."""
        names = ("src", "src_mask", "tgt_in", "tgt_out", "tgt_mask", "index")
        return Batch(*(getattr(self, n).to(device, non_blocking=non_blocking) for n in names))


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def collate(
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    pad_to_multiple_of: int = 8,
    *,
    index: Sequence[int] | None = None,
) -> Batch:
    """Pad ``(source ids, target ids)`` pairs (without BOS/EOS) into a :class:`Batch`.

    ``S = round_up(max_i (len(src_i) + 1), pad_to_multiple_of)`` and likewise ``T`` with the
    targets; the ``+ 1`` is the EOS (source and ``tgt_out``) or BOS (``tgt_in``). Rounding the
    lengths up to a multiple of 8 (``pad_to_multiple_of=1`` turns it off) costs a little padding
    but means far fewer distinct tensor shapes, so CPU kernels and allocator caches are reused
    instead of rebuilt at every step. Empty sequences are fine: the source is then ``[EOS]`` and
    the target ``tgt_out = [EOS]``.

    Shape:
        ``pairs``: ``B`` pairs of id lists -> a :class:`Batch` with ``(B, S)`` and ``(B, T)`` tensors.
    """
    check_int("pad_to_multiple_of", pad_to_multiple_of, 1)
    if len(pairs) == 0:
        raise ValueError("pairs must hold at least one (source ids, target ids) pair, got none")
    srcs, tgts = [], []
    for k, pair in enumerate(pairs):
        if len(pair) != 2:
            raise ValueError(f"pairs[{k}] must be a (source ids, target ids) pair, got {len(pair)} items")
        srcs.append(_as_id_array(pair[0], f"pairs[{k}][0]"))
        tgts.append(_as_id_array(pair[1], f"pairs[{k}][1]"))
    b = len(pairs)
    s = _round_up(max(len(x) for x in srcs) + 1, pad_to_multiple_of)
    t = _round_up(max(len(y) for y in tgts) + 1, pad_to_multiple_of)
    # Filled in NumPy (one slice assignment per row), then shared with torch without a copy.
    src = np.full((b, s), PAD_ID, dtype=np.int64)
    tgt_in = np.full((b, t), PAD_ID, dtype=np.int64)
    tgt_out = np.full((b, t), PAD_ID, dtype=np.int64)
    for i, (x, y) in enumerate(zip(srcs, tgts)):
        src[i, : len(x)] = x
        src[i, len(x)] = EOS_ID
        tgt_in[i, 0] = BOS_ID
        tgt_in[i, 1 : len(y) + 1] = y
        tgt_out[i, : len(y)] = y
        tgt_out[i, len(y)] = EOS_ID
    src_lens = torch.tensor([len(x) + 1 for x in srcs])
    tgt_lens = torch.tensor([len(y) + 1 for y in tgts])
    src_mask = torch.arange(s) < src_lens[:, None]  # (B, S)
    tgt_mask = torch.arange(t) < tgt_lens[:, None]  # (B, T)
    src, tgt_in, tgt_out = (torch.from_numpy(a) for a in (src, tgt_in, tgt_out))
    idx = torch.arange(b) if index is None else torch.as_tensor(list(index), dtype=torch.long)
    if idx.shape != (b,):
        raise ValueError(f"index must hold one position per pair (B={b}), got shape {tuple(idx.shape)}")
    return Batch(src, src_mask, tgt_in, tgt_out, tgt_mask, idx)


def token_budget_batches(
    lengths: Sequence[int],
    max_tokens: int,
    *,
    shuffle: bool = True,
    seed: int = 0,
    epoch: int = 0,
    bucket_size: int = 4096,
    pad_to_multiple_of: int = 1,
) -> list[list[int]]:
    """Group example indices into batches of similar length whose padded size stays in budget.

    Every batch satisfies ``len(batch) * round_up(max(lengths[batch]), pad_to_multiple_of) <=
    max_tokens``, so batches of short sentences hold many and batches of long ones few: the work
    per step is about constant and little is spent on padding.

    With ``shuffle``: a random permutation (``numpy.random.default_rng((seed, epoch))``) is cut into
    buckets of ``bucket_size`` examples, each bucket is sorted by length and cut greedily into
    batches, and the batches are shuffled. Large random buckets keep batches tight while still
    mixing the data differently every epoch. Without ``shuffle``: one sort of everything by length
    (stable), batches in that order (for evaluation). Each index appears exactly once; the result
    depends only on ``(lengths, max_tokens, seed, epoch, ...)``.

    Raises ``ValueError`` if one example alone is over budget (truncate it or raise ``max_tokens``).
    """
    check_int("max_tokens", max_tokens, 1)
    check_int("seed", seed)
    check_int("epoch", epoch)
    check_int("bucket_size", bucket_size, 1)
    check_int("pad_to_multiple_of", pad_to_multiple_of, 1)
    lens = np.asarray(lengths)
    if lens.ndim != 1 or (lens.size and not np.issubdtype(lens.dtype, np.integer)):
        raise ValueError(f"lengths must be a 1-D sequence of ints, got shape {lens.shape} and dtype {lens.dtype}")
    if lens.size and lens.min() < 1:
        raise ValueError(f"lengths must be >= 1, got {int(lens.min())} at index {int(lens.argmin())}")
    padded = -(-lens // pad_to_multiple_of) * pad_to_multiple_of
    if padded.size and padded.max() > max_tokens:
        i = int(padded.argmax())
        raise ValueError(
            f"example {i} alone needs {int(padded[i])} padded tokens > max_tokens={max_tokens}; "
            "truncate long sequences (BatchIterator(max_len=...)) or raise max_tokens"
        )
    if shuffle:
        rng = np.random.default_rng((seed, epoch))
        perm = rng.permutation(lens.size)
        buckets = [perm[i : i + bucket_size] for i in range(0, lens.size, bucket_size)]
    else:
        rng = None
        buckets = [np.arange(lens.size)]
    batches: list[list[int]] = []
    for bucket in buckets:
        order = bucket[np.argsort(lens[bucket], kind="stable")]
        current: list[int] = []
        width = 0
        for i in order.tolist():
            new_width = max(width, int(padded[i]))
            if current and (len(current) + 1) * new_width > max_tokens:
                batches.append(current)
                current, new_width = [], int(padded[i])
            current.append(i)
            width = new_width
        if current:
            batches.append(current)
    if rng is not None:
        batches = [batches[k] for k in rng.permutation(len(batches))]
    return batches


class BatchIterator:
    """Pairs of texts -> :class:`Batch` es under a token budget, re-shuffled each epoch.

    ``pairs`` are ``(source, target)`` strings encoded once here with ``tokenizer`` (and
    ``tgt_tokenizer`` for the targets, if given; default the same, as for a joint BPE), or already
    lists of ids when ``tokenizer`` is ``None``. Sequences longer than ``max_len`` tokens *with*
    their EOS/BOS are truncated to ``max_len`` (``None``: never; :attr:`num_truncated` counts them).
    Batches come from :func:`token_budget_batches` with ``lengths = max(len(src), len(tgt)) + 1``,
    so neither ``(B, S)`` nor ``(B, T)`` exceeds ``max_tokens`` elements. Call :meth:`set_epoch`
    before each epoch to get that epoch's order (as with PyTorch's ``DistributedSampler``).

    >>> it = BatchIterator([("ab", "ba"), ("", "")], CharVocab("ab"), max_tokens=16)
    >>> [tuple(b.src.shape) for b in it]
    [(2, 8)]
    """

    def __init__(
        self,
        pairs: Sequence[tuple[str, str]] | Sequence[tuple[Sequence[int], Sequence[int]]],
        tokenizer: TextTokenizer | None,
        max_tokens: int = 4096,
        shuffle: bool = True,
        seed: int = 0,
        *,
        max_len: int | None = DEFAULT_MAX_LEN,
        pad_to_multiple_of: int = 8,
        bucket_size: int = 4096,
        tgt_tokenizer: TextTokenizer | None = None,
    ) -> None:
        check_int("max_tokens", max_tokens, 1)
        check_int("seed", seed)
        check_int("pad_to_multiple_of", pad_to_multiple_of, 1)
        check_int("bucket_size", bucket_size, 1)
        if max_len is not None:
            check_int("max_len", max_len, 2)
        if len(pairs) == 0:
            raise ValueError("pairs must hold at least one example, got none")
        if tokenizer is None:
            src_ids = _to_arrays([p[0] for p in pairs], "source ids")
            tgt_ids = _to_arrays([p[1] for p in pairs], "target ids")
        else:
            src_ids = _to_arrays(encode_all(tokenizer, [p[0] for p in pairs]), "source ids")
            tgt_ids = _to_arrays(encode_all(tgt_tokenizer or tokenizer, [p[1] for p in pairs]), "target ids")
        #: How many examples had their source or target cut to ``max_len``.
        self.num_truncated = 0
        if max_len is not None:
            keep = max_len - 1  # room for EOS (source, tgt_out) or BOS (tgt_in)
            self.num_truncated = sum(len(x) > keep or len(y) > keep for x, y in zip(src_ids, tgt_ids))
            src_ids = [x[:keep] for x in src_ids]
            tgt_ids = [y[:keep] for y in tgt_ids]
        #: The encoded examples, ``(source ids, target ids)`` as int64 arrays without BOS/EOS.
        self.examples: list[tuple[np.ndarray, np.ndarray]] = list(zip(src_ids, tgt_ids))
        #: ``max(len(source), len(target)) + 1`` per example: what the token budget counts.
        self.lengths: list[int] = [max(len(x), len(y)) + 1 for x, y in self.examples]
        longest = int(np.argmax(self.lengths))
        if _round_up(self.lengths[longest], pad_to_multiple_of) > max_tokens:
            raise ValueError(
                f"example {longest} alone needs {_round_up(self.lengths[longest], pad_to_multiple_of)} padded "
                f"tokens > max_tokens={max_tokens}; lower max_len (now {max_len}) or raise max_tokens"
            )
        self.max_tokens = max_tokens
        self.shuffle = shuffle
        self.seed = seed
        self.max_len = max_len
        self.pad_to_multiple_of = pad_to_multiple_of
        self.bucket_size = bucket_size
        self.epoch = 0
        self._batches: list[list[int]] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Use the batch order of ``epoch`` from now on (a different shuffle per epoch)."""
        check_int("epoch", epoch)
        if epoch != self.epoch:
            self.epoch = epoch
            self._batches = None

    def batches(self) -> list[list[int]]:
        """This epoch's batches as lists of example indices."""
        if self._batches is None:
            self._batches = token_budget_batches(
                self.lengths,
                self.max_tokens,
                shuffle=self.shuffle,
                seed=self.seed,
                epoch=self.epoch,
                bucket_size=self.bucket_size,
                pad_to_multiple_of=self.pad_to_multiple_of,
            )
        return self._batches

    def __len__(self) -> int:
        """The number of batches in this epoch."""
        return len(self.batches())

    def __iter__(self) -> Iterator[Batch]:
        for idx in self.batches():
            yield collate([self.examples[i] for i in idx], self.pad_to_multiple_of, index=idx)

    @property
    def num_examples(self) -> int:
        return len(self.examples)


def _as_id_array(ids: Sequence[int] | Tensor, name: str) -> np.ndarray:
    """``ids`` as a 1-D int64 array (fast for the lists of ints tokenizers return)."""
    arr = ids.detach().cpu().numpy() if isinstance(ids, Tensor) else np.asarray(ids)
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise ValueError(f"{name} must be a 1-D sequence of int token ids, got shape {arr.shape}, dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _to_arrays(seqs: Sequence[Sequence[int]], name: str) -> list[np.ndarray]:
    """Lists of ids -> int64 array views into one flat array (one pass instead of one per list)."""
    seqs = [s.tolist() if isinstance(s, (Tensor, np.ndarray)) else s for s in seqs]
    sizes = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    try:
        flat = np.fromiter(itertools.chain.from_iterable(seqs), dtype=np.int64, count=int(sizes.sum()))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be sequences of int token ids ({err})") from None
    return np.split(flat, np.cumsum(sizes)[:-1]) if len(seqs) else []
