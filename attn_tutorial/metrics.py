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
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from sacrebleu.metrics import BLEU
from sacrebleu.metrics.bleu import BLEUScore
from sacrebleu.significance import PairedTest

__all__ = [
    "BLEUScore",
    "corpus_bleu",
    "bleu_signature",
    "LengthBucket",
    "bleu_by_length",
    "length_buckets",
    "SystemBootstrap",
    "PairedBootstrap",
    "paired_bootstrap",
]


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
    bleu = _bleu(lowercase, tokenize)
    result = []
    for (lo, hi), idx in zip(_bounds(buckets), length_buckets(srcs, buckets, tokenize=tokenize)):
        score = bleu.corpus_score([hyps[i] for i in idx], [[refs[i] for i in idx]]).score if idx else math.nan
        result.append(LengthBucket(int(lo), hi, len(idx), score))
    return result


def _bounds(buckets: Sequence[int]) -> list[tuple[int, float]]:
    edges = list(buckets)
    if any(not isinstance(e, int) or isinstance(e, bool) or e <= 0 for e in edges) or edges != sorted(set(edges)):
        raise ValueError(f"buckets must be strictly increasing positive ints (bucket edges), got {list(buckets)!r}")
    return list(zip([0, *edges], [*map(float, edges), math.inf]))


def length_buckets(sources: Sequence[str], buckets: Sequence[int] = (10, 20, 30, 40, 50), *, tokenize: str = "13a") -> list[list[int]]:
    """The indices of ``sources`` in each length bucket of :func:`bleu_by_length` (same edges, same
    ``tokenize`` word count), e.g. to compute a bootstrap interval per bucket with :func:`paired_bootstrap`.

    Shape:
        ``sources``: ``N`` strings -> ``len(buckets) + 1`` lists of indices, together ``0 .. N-1``.
    """
    srcs = _check_strings("sources", sources)
    bounds = _bounds(buckets)
    tokenizer = _bleu(False, tokenize).tokenizer
    lengths = [len(tokenizer(s.rstrip()).split()) for s in srcs]
    return [[i for i, n in enumerate(lengths) if lo <= n < hi] for lo, hi in bounds]


# --------------------------------------------------------------------------------------------
# Paired bootstrap resampling: how sure is a difference between two systems?
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SystemBootstrap:
    """One system's corpus BLEU and what resampling the test set says about it.

    ``score`` is the BLEU of the whole test set; ``mean`` and ``ci`` are sacreBLEU's bootstrap mean
    and the half-width of its 95% interval (``mean +- ci``). Against the baseline (the first system):
    ``delta`` is ``score - baseline score``, ``delta_low``/``delta_high`` the 2.5th and 97.5th percentiles
    of the *paired* resampled differences (both systems scored on the same resampled sentences), and
    ``p_value`` sacreBLEU's paired-bootstrap p-value. All four are ``nan`` for the baseline itself.
    """

    name: str
    score: float
    mean: float
    ci: float
    delta: float
    delta_low: float
    delta_high: float
    p_value: float

    @property
    def differs(self) -> bool:
        """True when the 95% interval of the paired difference excludes 0 (a difference worth stating)."""
        return bool(self.delta_low > 0 or self.delta_high < 0)


@dataclass(frozen=True)
class PairedBootstrap:
    """The result of :func:`paired_bootstrap`: one :class:`SystemBootstrap` per system (the baseline
    first), the number of resamples and the sacreBLEU signature (with ``bs`` and ``seed``)."""

    systems: tuple[SystemBootstrap, ...]
    n_samples: int
    signature: str

    def __getitem__(self, name: str) -> SystemBootstrap:
        for system in self.systems:
            if system.name == name:
                return system
        raise KeyError(f"no system named {name!r}; systems: {[s.name for s in self.systems]}")


def paired_bootstrap(
    systems: Mapping[str, Sequence[str]],
    references: Sequence[str],
    *,
    n_samples: int = 1000,
    seed: int = 12345,
) -> PairedBootstrap:
    """Paired bootstrap resampling :cite:p:`koehn2004bootstrap` of corpus BLEU, through sacreBLEU.

    The first entry of ``systems`` (name -> detokenised hypotheses) is the baseline. Draw ``n_samples``
    test sets of ``N`` sentences with replacement from the ``N`` test sentences; score every system on
    each *the same* resampled set (corpus BLEU from summed n-gram statistics); the spread of the scores
    gives each system's 95% interval, and the spread of the paired differences the interval of each
    system's gain over the baseline. Pairing matters: most of a system's variation across resamples
    comes from which sentences were drawn (easy or hard ones), and it cancels in the difference.

    The per-system numbers (``score``, ``mean``, ``ci``, ``p_value``) are sacreBLEU's own
    (``sacrebleu.significance.PairedTest`` with ``test_type="bs"``, the ``--paired-bs`` of its command
    line); the interval of the difference uses the same resampled indices (sacreBLEU draws them from
    ``numpy.random.default_rng(seed)``), so it describes exactly the resamples behind the p-value.
    ``seed`` is sacreBLEU's default (``SACREBLEU_SEED``), so the numbers match ``sacrebleu --paired-bs``.

    Shape:
        ``systems``: ``K`` lists of ``N`` strings; ``references``: ``N`` strings -> ``K`` results.

    Reference: :cite:p:`koehn2004bootstrap,post2018sacrebleu`.
    """
    if not isinstance(systems, Mapping) or len(systems) < 2:
        raise ValueError(f"systems must map at least two names to hypotheses (the first is the baseline), got {type(systems).__name__} "
                         f"with {len(systems) if isinstance(systems, Mapping) else 'no'} entries")
    if not isinstance(n_samples, int) or n_samples < 40:
        raise ValueError(f"n_samples must be an int >= 40 (a 95% interval needs at least 40 resamples), got {n_samples!r}")
    if not isinstance(seed, int) or seed < 1:
        raise ValueError(f"seed must be a positive int (sacreBLEU treats 0 as 'no seed'), got {seed!r}")
    refs = _check_strings("references", references)
    named = [(str(name), _check_strings(f"systems[{name!r}]", hyps)) for name, hyps in systems.items()]
    for name, hyps in named:
        if len(hyps) != len(refs):
            raise ValueError(f"systems[{name!r}] has {len(hyps)} hypotheses but references has {len(refs)}; expected one per reference")
    if not refs:
        raise ValueError("references is empty: there is nothing to resample")
    metric = BLEU()
    saved = os.environ.get("SACREBLEU_SEED")
    os.environ["SACREBLEU_SEED"] = str(seed)  # sacreBLEU reads its seed from here, for every part of the test
    try:
        signatures, results = PairedTest(named, {"BLEU": metric}, [refs], test_type="bs", n_samples=n_samples)()
    finally:
        if saved is None:
            del os.environ["SACREBLEU_SEED"]
        else:
            os.environ["SACREBLEU_SEED"] = saved
    signature = str(signatures["BLEU"])
    # The paired differences, on the indices sacreBLEU drew for the test (see its _paired_bs_test).
    idx = np.random.default_rng(seed).choice(len(refs), size=(n_samples, len(refs)), replace=True)
    stats = [np.array(metric._extract_corpus_statistics(hyps, [refs]), dtype="float32") for _, hyps in named]
    resampled = [np.array([metric._compute_score_from_stats(s.sum(0)).score for s in st[idx]]) for st in stats]
    out = []
    for k, ((name, _), result) in enumerate(zip(named, results["BLEU"])):
        if k == 0:
            # sacreBLEU estimates the baseline's interval from its own resamples (SACREBLEU_SEED)
            out.append(SystemBootstrap(name, result.score, float(result.mean), float(result.ci), *(math.nan,) * 4))
            continue
        diffs = resampled[k] - resampled[0]
        low, high = np.percentile(diffs, [2.5, 97.5])
        out.append(SystemBootstrap(name, result.score, float(result.mean), float(result.ci), result.score - results["BLEU"][0].score,
                                   float(low), float(high), float(result.p_value)))
    return PairedBootstrap(tuple(out), n_samples, signature)
