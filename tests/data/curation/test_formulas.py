"""Hand-computed values for every formula in megatron_s1.data.curation.formulas."""
import math

import numpy as np
import pytest

from megatron_s1.data.curation import formulas as F


@pytest.mark.parametrize("text, expected", [
    ("a=b+c", 2 / 5),                 # '=', '+' of 5 visible characters
    ("x_i and y|z", 0.0),             # '_' and '|' are not math markers
    ("α β", 1.0),                     # Greek letters
    ("∑ x ≤ 1", 2 / 4),               # Sm: sum, <=; visible: ∑ x ≤ 1
    ("(cid:12) x", 1 / 2),            # one unmapped glyph + 'x'
    ("■ ok", 1 / 3),                  # pypdf placeholder for an unmapped glyph
    ("𝑥 = 2", 2 / 3),                 # math italic x and '='
    ("", 0.0),
    ("a == b", 2 / 4),                # a run of 2 counts
    (">>> x = 1", 1 / 6),             # a run of 3+ ('>>>') is visible but not math; '=' counts
    ("===== ====", 0.0),              # table rules
    ("   \n", 0.0),
    ("Plain prose, with (parentheses) - and 2024.", 0.0),
])
def test_symbol_density(text, expected):
    assert F.symbol_density(text) == pytest.approx(expected)


def test_is_hard_page():
    assert F.is_hard_page(0.12, 900, density_threshold=0.08, min_chars=20)
    assert F.is_hard_page(0.08, 900, density_threshold=0.08, min_chars=20)        # bound is inclusive
    assert F.is_hard_page(0.01, 3, density_threshold=0.08, min_chars=20)          # no text layer
    assert not F.is_hard_page(0.01, 900, density_threshold=0.08, min_chars=20)


def test_fraction():
    assert F.fraction(3, 12) == 0.25
    assert F.fraction(0, 0) == 0.0


def test_jaccard():
    assert F.jaccard({1, 2, 3}, {2, 3, 4}) == 0.5
    assert F.jaccard([], []) == 1.0
    assert F.jaccard({"a"}, {"b"}) == 0.0


def test_minhash_estimate_and_error():
    assert F.minhash_jaccard_estimate([1, 5, 7, 9], [1, 6, 7, 8]) == 0.5
    assert F.minhash_jaccard_estimate(np.array([3, 3]), np.array([3, 3])) == 1.0
    with pytest.raises(ValueError):
        F.minhash_jaccard_estimate([1, 2], [1, 2, 3])
    assert F.minhash_std_error(0.5, 100) == pytest.approx(0.05)
    assert F.minhash_std_error(1.0, 128) == 0.0


def test_minhash_estimate_tracks_exact_jaccard_on_real_text():
    from megatron_s1.data.curation.dedup import signatures
    from tests.data.curation.helpers import stdlib_docstrings

    words = " ".join(stdlib_docstrings()[:4]).split()
    a = " ".join(words[:300])
    b = " ".join(words[100:400])           # 200 of 300 words shared
    sa, sb = F.word_shingles(a, 3), F.word_shingles(b, 3)
    exact = F.jaccard(sa, sb)
    ma, mb = signatures([a, b], ngram=3, num_perm=256)
    est = F.minhash_jaccard_estimate(ma.hashvalues, mb.hashvalues)
    assert abs(est - exact) <= 4 * F.minhash_std_error(exact, 256) + 1e-9


def test_normalize_and_shingles():
    assert F.normalize_for_dedup("Page 12. (C) 2021 ACME!") == "page 0 c 0 acme"
    assert F.word_shingles("A b c d", 3) == {"a b c", "b c d"}
    assert F.word_shingles("one two", 3) == {"one two"}
    assert F.word_shingles("  ", 3) == set()


def test_precision_recall():
    p, r, f1 = F.precision_recall(8, 2, 8)
    assert (p, r) == (0.8, 0.5)
    assert f1 == pytest.approx(0.8 / 1.3)
    assert F.precision_recall(0, 0, 0) == (0.0, 0.0, 0.0)


def test_per_label_report():
    gold = ["phys", "phys", "chem", "other", "other"]
    pred = ["phys", "chem", "chem", "phys", "other"]
    rep = F.per_label_report(gold, pred, positive={"phys", "chem"})
    assert rep["accuracy"] == 3 / 5
    assert rep["labels"]["phys"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}   # tp1 fp1 fn1
    assert rep["labels"]["chem"]["precision"] == 0.5 and rep["labels"]["chem"]["recall"] == 1.0
    # binary science vs other: tp=3 (rows 0,1,2), fp=1 (row 3), fn=0
    assert rep["binary"]["precision"] == 0.75 and rep["binary"]["recall"] == 1.0
    assert math.isclose(rep["binary"]["f1"], 2 * 0.75 / 1.75)


def test_in_domain_score():
    assert F.in_domain_score(["physics", "other", "chemistry"], [0.5, 0.3, 0.2], {"physics", "chemistry"}) == \
        pytest.approx(0.7)
    assert F.in_domain_score(["other"], [1.0], {"physics"}) == 0.0
    assert F.in_domain_score(["physics"], [1.00001], {"physics"}) == 1.0
