"""BLEU through sacreBLEU: parity, sanity values, a hand-written BLEU, and the classic mistakes."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import sacrebleu
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

from attn_tutorial import LengthBucket, bleu_by_length, bleu_signature, corpus_bleu

HYPS = [
    "The cat sat on the mat .",
    "A man is riding a red bicycle down the street.",
    "Two dogs play in the snow",
    "She reads a book in the park.",
]
REFS = [
    "The cat is sitting on the mat.",
    "A man rides a red bike down the street.",
    "Two dogs are playing in the snow.",
    "A woman reads a book in the park.",
]


# ---------------------------------------------------------------------------------- teaching code


def ngrams(tokens: list[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def hand_written_bleu(hyps: list[str], refs: list[str], max_n: int = 4) -> float:
    """Corpus BLEU, one reference per sentence, no smoothing (Papineni et al., 2002).

    p_n = sum over sentences of clipped n-gram matches / sum of hypothesis n-grams;
    BP = exp(1 - r / c) if c < r else 1;  BLEU = 100 * BP * exp(mean_n log p_n).
    """
    tokenize = Tokenizer13a()  # the same word splitting sacreBLEU applies
    matches, totals = [0] * max_n, [0] * max_n
    c = r = 0
    for hyp, ref in zip(hyps, refs):
        h, g = tokenize(hyp).split(), tokenize(ref).split()
        c, r = c + len(h), r + len(g)
        for n in range(1, max_n + 1):
            h_counts, r_counts = ngrams(h, n), ngrams(g, n)
            matches[n - 1] += sum(min(count, r_counts[gram]) for gram, count in h_counts.items())  # clipped
            totals[n - 1] += sum(h_counts.values())
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals)) / max_n
    brevity_penalty = 1.0 if c >= r else math.exp(1 - r / c)
    return 100 * brevity_penalty * math.exp(log_precision)


# ---------------------------------------------------------------------------------- tests


def test_parity_with_sacrebleu() -> None:
    ours = corpus_bleu(HYPS, REFS)
    theirs = sacrebleu.corpus_bleu(HYPS, [REFS])
    assert ours.score == theirs.score and ours.precisions == theirs.precisions and ours.bp == theirs.bp
    assert str(ours) == str(theirs)


def test_several_references_as_streams() -> None:
    second = ["The cat sat on the mat.", "A man is riding a red bicycle down the road.", "Two dogs play in snow.", "She is reading a book in a park."]
    ours = corpus_bleu(HYPS, [REFS, second])
    assert ours.score == sacrebleu.corpus_bleu(HYPS, [REFS, second]).score
    assert ours.score > corpus_bleu(HYPS, REFS).score  # a second reference can only add matches here


def test_sanity_values() -> None:
    assert corpus_bleu(REFS, REFS).score == pytest.approx(100.0, abs=1e-9)
    disjoint = ["zebra quokka axolotl narwhal okapi", "lorem ipsum dolor sit amet"]
    assert corpus_bleu(disjoint, REFS[:2]).score == 0.0


@pytest.mark.parametrize("k", [2, 3, 4])
def test_hand_written_bleu_agrees_with_sacrebleu(k: int) -> None:
    # Every n-gram order has a match at corpus level here, so sacreBLEU's smoothing never applies.
    expected = hand_written_bleu(HYPS[:k], REFS[:k])
    assert corpus_bleu(HYPS[:k], REFS[:k]).score == pytest.approx(expected, abs=1e-6)


def test_brevity_penalty_matches_the_formula() -> None:
    short = ["The cat sat .", "A man rides a bike down the street."]
    score = corpus_bleu(short, REFS[:2])
    c, r = score.sys_len, score.ref_len
    assert c < r and score.bp == pytest.approx(math.exp(1 - r / c), abs=1e-12)
    assert score.score == pytest.approx(hand_written_bleu(short, REFS[:2]), abs=1e-6)


def test_classic_mistakes_are_visible() -> None:
    hyps, refs = ["the cat sat on the mat in paris ."], ["The cat sat on the mat in Paris ."]
    cased, lower = corpus_bleu(hyps, refs), corpus_bleu(hyps, refs, lowercase=True)
    assert lower.score == pytest.approx(100.0, abs=1e-9) and cased.score < 80.0
    # Scoring subword pieces instead of detokenised words changes (here: lowers) the score.
    bpe = ["The c@@ at sat on the m@@ at ."]
    assert corpus_bleu(bpe, ["The cat sat on the mat ."]).score < corpus_bleu(["The cat sat on the mat ."], ["The cat sat on the mat ."]).score
    # Averaging sentence-level BLEU is not corpus BLEU.
    mean_sentence = sum(corpus_bleu([h], [r]).score for h, r in zip(HYPS, REFS)) / len(HYPS)
    assert abs(mean_sentence - corpus_bleu(HYPS, REFS).score) > 1.0


def test_signature_names_the_settings() -> None:
    assert bleu_signature() == f"nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:{sacrebleu.__version__}"
    assert "case:lc" in bleu_signature(lowercase=True) and "nrefs:2" in bleu_signature(2)
    assert "tok:intl" in bleu_signature(tokenize="intl")
    report = corpus_bleu(HYPS, REFS).format(signature=bleu_signature())
    assert report.startswith(f"BLEU|{bleu_signature()} = {corpus_bleu(HYPS, REFS).score:.2f}")


def test_bleu_by_length_buckets_are_corpus_bleu_of_their_sentences() -> None:
    sources = ["a b c", "a b c d e f g h i j k l", "one two three four five", "x " * 14]
    buckets = bleu_by_length(sources, HYPS, REFS, buckets=(6, 12))
    assert [(b.lo, b.hi, b.n) for b in buckets] == [(0, 6.0, 2), (6, 12.0, 0), (12, math.inf, 2)]
    assert [b.label for b in buckets] == ["0-5", "6-11", "12+"]
    assert buckets[0].bleu == pytest.approx(corpus_bleu([HYPS[0], HYPS[2]], [REFS[0], REFS[2]]).score, abs=1e-12)
    assert math.isnan(buckets[1].bleu)
    assert buckets[2].bleu == pytest.approx(corpus_bleu([HYPS[1], HYPS[3]], [REFS[1], REFS[3]]).score, abs=1e-12)
    assert isinstance(buckets[0], LengthBucket)


def test_bad_inputs_are_explained() -> None:
    with pytest.raises(ValueError, match="references has 3 sentences but hypotheses has 4"):
        corpus_bleu(HYPS, REFS[:3])
    with pytest.raises(TypeError, match=r"hypotheses\[0\] is a list, expected a str"):
        corpus_bleu([h.split() for h in HYPS], REFS)  # type: ignore[list-item]
    with pytest.raises(TypeError, match="hypotheses must be a list of strings"):
        corpus_bleu("The cat", REFS)
    with pytest.raises(ValueError, match=r"references\[1\] has 2 sentences"):
        corpus_bleu(HYPS, [REFS, REFS[:2]])
    with pytest.raises(ValueError, match="tokenize must be one of"):
        corpus_bleu(HYPS, REFS, tokenize="moses")
    with pytest.raises(ValueError, match="must have equal lengths"):
        bleu_by_length(["a"], HYPS, REFS)
    with pytest.raises(ValueError, match="strictly increasing"):
        bleu_by_length(HYPS, HYPS, REFS, buckets=(10, 5))


# ---------------------------------------------------------------------------------- paired bootstrap


def _systems(n: int = 120, seed: int = 0) -> tuple[dict[str, list[str]], list[str]]:
    """References and three systems that replace 40%, 30% and 40% of the words with "x"."""
    import random

    rng = random.Random(seed)
    words = "a dog runs on the grass while two men play ball near water".split()
    refs = [" ".join(rng.choice(words) for _ in range(rng.randint(5, 14))) for _ in range(n)]

    def noisy(p: float) -> list[str]:
        return [" ".join(w if rng.random() > p else "x" for w in r.split()) for r in refs]

    return {"base": noisy(0.4), "better": noisy(0.3), "other": noisy(0.4)}, refs


def test_paired_bootstrap_per_system_numbers_are_sacrebleus() -> None:
    from sacrebleu.metrics import BLEU
    from sacrebleu.significance import PairedTest

    from attn_tutorial import paired_bootstrap

    systems, refs = _systems()
    ours = paired_bootstrap(systems, refs, n_samples=200)
    _, theirs = PairedTest(list(systems.items()), {"BLEU": BLEU()}, [refs], test_type="bs", n_samples=200)()
    for mine, result in zip(ours.systems, theirs["BLEU"]):
        assert mine.score == pytest.approx(result.score, abs=1e-9)
        assert mine.mean == pytest.approx(result.mean, abs=1e-9)
        assert mine.ci == pytest.approx(result.ci, abs=1e-9)
        if result.p_value is not None:
            assert mine.p_value == pytest.approx(result.p_value, abs=1e-12)
    assert "bs:200" in ours.signature and "seed:12345" in ours.signature
    assert ours["base"].score == pytest.approx(corpus_bleu(systems["base"], refs).score, abs=1e-9)


def test_paired_bootstrap_difference_interval_matches_an_independent_resampling() -> None:
    """The interval of the difference, recomputed with sacrebleu.corpus_bleu on every resampled test
    set (the same indices: numpy's default_rng(seed), as sacreBLEU draws them): equal to 1e-6 BLEU."""
    import numpy as np

    from attn_tutorial import paired_bootstrap

    systems, refs = _systems(n=60)
    n = 40
    result = paired_bootstrap({"base": systems["base"], "better": systems["better"]}, refs, n_samples=n, seed=7)
    idx = np.random.default_rng(7).choice(len(refs), size=(n, len(refs)), replace=True)
    diffs = []
    for row in idx:
        pick = lambda xs: [xs[i] for i in row]  # noqa: E731
        diffs.append(sacrebleu.corpus_bleu(pick(systems["better"]), [pick(refs)]).score
                     - sacrebleu.corpus_bleu(pick(systems["base"]), [pick(refs)]).score)
    low, high = np.percentile(diffs, [2.5, 97.5])
    better = result["better"]
    assert better.delta_low == pytest.approx(low, abs=1e-4) and better.delta_high == pytest.approx(high, abs=1e-4)
    assert better.delta == pytest.approx(better.score - result["base"].score)
    assert better.differs and better.delta_low > 0  # 30% of words replaced against 40%: clearly better


def test_paired_bootstrap_identical_systems_do_not_differ() -> None:
    from attn_tutorial import paired_bootstrap

    systems, refs = _systems()
    result = paired_bootstrap({"a": systems["base"], "b": list(systems["base"])}, refs, n_samples=100)
    assert result["b"].delta == 0 and result["b"].delta_low == 0 and result["b"].delta_high == 0
    assert not result["b"].differs and math.isnan(result["a"].delta)


def test_paired_bootstrap_bad_inputs_are_explained() -> None:
    from attn_tutorial import paired_bootstrap

    systems, refs = _systems(n=10)
    with pytest.raises(ValueError, match="at least two"):
        paired_bootstrap({"a": systems["base"]}, refs)
    with pytest.raises(ValueError, match=r"systems\['b'\] has 9 hypotheses but references has 10"):
        paired_bootstrap({"a": systems["base"], "b": systems["base"][:9]}, refs)
    with pytest.raises(ValueError, match="n_samples"):
        paired_bootstrap(systems, refs, n_samples=10)
    with pytest.raises(KeyError, match="no system named"):
        paired_bootstrap(systems, refs, n_samples=40)["nope"]


def test_length_buckets_partition_the_sentences_as_bleu_by_length_counts_them() -> None:
    from attn_tutorial import length_buckets

    sources = ["a b", "a b c d e", "", "one two three four five six seven", "x , y ."]
    groups = length_buckets(sources, (2, 5))
    assert groups == [[2], [0, 4], [1, 3]]  # 0 words; 2 and 4 words ("x , y ." has 4 13a tokens); 5 and 7
    assert sorted(i for g in groups for i in g) == list(range(len(sources)))
    assert [b.n for b in bleu_by_length(sources, sources, sources, (2, 5))] == [len(g) for g in groups]
    with pytest.raises(ValueError, match="strictly increasing"):
        length_buckets(sources, (5, 2))
