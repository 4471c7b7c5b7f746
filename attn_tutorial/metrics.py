"""BLEU, done the reproducible way: sacreBLEU on detokenised, cased text, with its signature.

BLEU :cite:p:`papineni2002bleu` is a corpus-level score: over the whole test set, count the clipped
n-gram matches of the hypotheses against the references for n = 1..4, and combine

.. math:: \\mathrm{BLEU} = \\mathrm{BP} \\cdot \\exp\\Big(\\tfrac14 \\sum_{n=1}^{4} \\log p_n\\Big), \\qquad
          \\mathrm{BP} = \\min\\big(1, e^{1 - r/c}\\big)

where :math:`p_n` is the corpus n-gram precision, :math:`c` the hypotheses' total length and
:math:`r` the references'. The number depends on how text is split into words, on case, and on
smoothing, so published scores are comparable only when computed the same way: sacreBLEU
:cite:p:`post2018sacrebleu` fixes all of it and prints a *signature* such as
``nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0`` that says how.

The classic mistakes, and how this module avoids them: scoring tokenised or BPE-split text (pass
detokenised strings: sacreBLEU tokenises with ``13a`` itself), lowercasing silently (``lowercase``
defaults to False and shows in the signature as ``case:lc``), averaging sentence-level BLEU instead of
computing corpus BLEU, and reporting a number without its signature.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from sacrebleu.metrics import BLEU
from sacrebleu.metrics.bleu import BLEUScore

__all__ = ["BLEUScore", "corpus_bleu", "bleu_signature", "LengthBucket", "bleu_by_length"]


def _check_strings(name: str, items: object) -> list[str]:
    if isinstance(items, str) or not isinstance(items, Sequence):
        raise TypeError(f"{name} must be a list of strings (one detokenised sentence each), got {type(items).__name__}")
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise TypeError(
                f"{name}[{i}] is a {type(item).__name__}, expected a str: BLEU is computed on detokenised text, "
                "so join token lists into strings (and undo subword splitting) first"
            )
    return list(items)


def _reference_streams(references: object, n: int) -> list[list[str]]:
    """One reference per hypothesis (list of str) or several (list of streams, each a list of n str)."""
    if isinstance(references, Sequence) and not isinstance(references, str) and references and not isinstance(references[0], str):
        streams = [_check_strings(f"references[{k}]", stream) for k, stream in enumerate(references)]
    else:
        streams = [_check_strings("references", references)]
    for k, stream in enumerate(streams):
        if len(stream) != n:
            which = "references" if len(streams) == 1 else f"references[{k}]"
            raise ValueError(f"{which} has {len(stream)} sentences but hypotheses has {n}; expected one reference per hypothesis")
    return streams


def _bleu(lowercase: bool, tokenize: str) -> BLEU:
    if tokenize not in BLEU.TOKENIZERS:
        raise ValueError(f"tokenize must be one of {sorted(BLEU.TOKENIZERS)}, got {tokenize!r}")
    return BLEU(lowercase=lowercase, tokenize=tokenize)


def corpus_bleu(
    hypotheses: Sequence[str],
    references: Sequence[str] | Sequence[Sequence[str]],
    *,
    lowercase: bool = False,
    tokenize: str = "13a",
) -> BLEUScore:
    """Corpus BLEU of detokenised ``hypotheses`` against ``references``, through sacreBLEU.

    ``references`` is either one string per hypothesis, or (several references) a list of reference
    *streams*, each holding one string per hypothesis, as :func:`sacrebleu.corpus_bleu` expects.
    Defaults are sacreBLEU's: cased, ``13a`` tokenisation, exponential smoothing. The result prints as
    ``BLEU = 35.20 66.1/42.0/28.6/19.9 (BP = ...)``; ``.score`` is the number (0-100), ``.precisions``
    the n-gram precisions, ``.bp`` the brevity penalty. Report it with its signature:
    ``print(score.format(signature=bleu_signature()))`` prints ``BLEU|nrefs:1|case:mixed|... = 35.20 ...``.

    Shape:
        ``hypotheses``: ``N`` strings; ``references``: ``N`` strings, or ``R`` lists of ``N`` strings.

    Reference: :cite:p:`papineni2002bleu,post2018sacrebleu`.
    """
    hyps = _check_strings("hypotheses", hypotheses)
    streams = _reference_streams(references, len(hyps))
    return _bleu(lowercase, tokenize).corpus_score(hyps, streams)


def bleu_signature(num_refs: int = 1, *, lowercase: bool = False, tokenize: str = "13a") -> str:
    """sacreBLEU's signature for the settings of :func:`corpus_bleu`, e.g.
    ``nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0``. Print it next to every score."""
    if not isinstance(num_refs, int) or num_refs < 1:
        raise ValueError(f"num_refs must be a positive int, got {num_refs!r}")
    bleu = _bleu(lowercase, tokenize)
    bleu.corpus_score(["a"], [["a"]] * num_refs)  # the signature needs to know the number of references
    return str(bleu.get_signature())


@dataclass(frozen=True)
class LengthBucket:
    """Sentences whose source has ``lo <= length < hi`` tokens (``hi`` may be ``inf``), their count and BLEU."""

    lo: int
    hi: float
    n: int
    bleu: float

    @property
    def label(self) -> str:
        return f"{self.lo}+" if math.isinf(self.hi) else f"{self.lo}-{int(self.hi) - 1}"


def bleu_by_length(
    sources: Sequence[str],
    hypotheses: Sequence[str],
    references: Sequence[str],
    buckets: Sequence[int] = (10, 20, 30, 40, 50),
    *,
    lowercase: bool = False,
    tokenize: str = "13a",
) -> list[LengthBucket]:
    """Corpus BLEU of the sentences grouped by source length, the plot of :cite:p:`bahdanau2015` (fig. 2).

    Source length is the number of ``tokenize`` tokens of the source (punctuation counts). ``buckets``
    are increasing edges: ``(10, 20)`` gives ``[0, 10)``, ``[10, 20)`` and ``[20, inf)``. Each bucket's
    BLEU is the corpus BLEU of its sentences (not an average of sentence scores); an empty bucket has
    ``n = 0`` and ``bleu = nan``.

    Shape:
        ``sources``, ``hypotheses``, ``references``: ``N`` strings each -> ``len(buckets) + 1`` buckets.
    """
    srcs = _check_strings("sources", sources)
    hyps = _check_strings("hypotheses", hypotheses)
    refs = _check_strings("references", references)
    if not len(srcs) == len(hyps) == len(refs):
        raise ValueError(f"sources, hypotheses and references must have equal lengths, got {len(srcs)}, {len(hyps)} and {len(refs)}")
    edges = list(buckets)
    if any(not isinstance(e, int) or e <= 0 for e in edges) or edges != sorted(set(edges)):
        raise ValueError(f"buckets must be strictly increasing positive ints (bucket edges), got {list(buckets)!r}")
    bleu = _bleu(lowercase, tokenize)
    tokenizer = bleu.tokenizer
    lengths = [len(tokenizer(s.rstrip()).split()) for s in srcs]
    bounds = list(zip([0, *edges], [*map(float, edges), math.inf]))
    result = []
    for lo, hi in bounds:
        idx = [i for i, n in enumerate(lengths) if lo <= n < hi]
        score = bleu.corpus_score([hyps[i] for i in idx], [[refs[i] for i in idx]]).score if idx else math.nan
        result.append(LengthBucket(int(lo), hi, len(idx), score))
    return result
