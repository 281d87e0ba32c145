"""Every number the curation tools compute from text lives here, each with its definition.

Nothing in this module does I/O; the pipelines call these functions so that the scoring rules can be
read, tested and changed in one place.
"""
from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence

import numpy as np

# Characters that mark mathematical notation in extracted text even when they are plain ASCII.
ASCII_MATH_CHARS = frozenset("=+^<>{}\\")
# Deliberately excluded: '-', '(', ')', '/', '.', ',', digits (ordinary prose) and '_', '|', '~'
# (identifiers, paths and tables in technical prose).
# pdfminer writes a glyph it cannot map to Unicode as "(cid:123)"; each one counts as one symbol.
_CID_RE = re.compile(r"\(cid:\d+\)")
# Runs of 3+ identical ASCII marks are rules, prompts or arrows (=====, >>>, +++), not math.
_ASCII_RUN_RE = re.compile(r"([=+^<>{}\\])\1{2,}")


def _is_math_char(ch: str) -> bool:
    code = ord(ch)
    if code < 128:                        # ASCII: only the explicit list (Unicode calls '|' and '~' Sm too)
        return ch in ASCII_MATH_CHARS
    if 0x0370 <= code <= 0x03FF:          # Greek and Coptic: alpha, beta, Sigma ...
        return True
    if 0x1D400 <= code <= 0x1D7FF:        # Mathematical Alphanumeric Symbols: bold/italic x ...
        return True
    if 0x25A0 <= code <= 0x25FF:          # Geometric shapes: pypdf's placeholder for unmapped glyphs
        return True
    if ch == "\ufffd":                    # replacement character: a glyph the parser could not decode
        return True
    category = unicodedata.category(ch)
    return category in ("Sm", "Co")       # math symbols (sum, integral, <=, +-) and private-use glyphs


def symbol_density(text: str) -> float:
    """Share of the visible characters of ``text`` that are mathematical notation.

        symbol_density = math_symbols / visible_chars

    ``visible_chars`` counts every non-whitespace character, where each pdfminer ``(cid:N)`` token counts
    as one character. ``math_symbols`` counts: each ``(cid:N)`` token (an unmapped glyph, typically from
    an equation font), ASCII ``= + ^ < > { } \\`` except inside a run of 3 or more of the same mark
    (``=====`` table rules, ``>>>`` prompts), Greek letters (U+0370-U+03FF), Mathematical
    Alphanumeric Symbols (U+1D400-U+1D7FF), geometric shapes U+25A0-U+25FF (pypdf's placeholder for a glyph
    it cannot map), U+FFFD, and every non-ASCII character of Unicode category Sm (math symbol) or Co (private use).
    Empty or whitespace-only text scores 0.0.

    Examples: ``"a=b+c"`` has 5 visible characters of which 2 are symbols -> 0.4; ``"=== x"`` -> 0 of 4.
    """
    cids = len(_CID_RE.findall(text))
    rest = _CID_RE.sub(" ", text)
    rest = _ASCII_RUN_RE.sub(lambda m: "\0" * len(m.group(0)), rest)   # visible, but not symbols
    visible = 0
    symbols = 0
    for ch in rest:
        if ch.isspace():
            continue
        visible += 1
        if _is_math_char(ch):
            symbols += 1
    visible += cids
    symbols += cids
    return symbols / visible if visible else 0.0


def is_hard_page(density: float, chars: int, density_threshold: float, min_chars: int) -> bool:
    """Routing rule for page-level PDF parsing: send a page to the high-cost parser when

        symbol_density >= density_threshold   (equations the low-cost parser mangles)
        or visible_chars < min_chars          (little or no text layer: scanned page or figure)

    Example: density 0.12 with threshold 0.08 -> hard; density 0.01 and 3 chars with min_chars 20 -> hard.
    """
    return density >= density_threshold or chars < min_chars


def fraction(part: int, total: int) -> float:
    """``part / total``, 0.0 when ``total`` is 0 (used for the routed fraction and per-domain label shares).

    Example: 3 hard pages of 12 -> 0.25.
    """
    return part / total if total else 0.0


def jaccard(a: Iterable, b: Iterable) -> float:
    """Exact Jaccard similarity of two sets: ``|A & B| / |A | B|``; two empty sets score 1.0.

    Example: {1, 2, 3} and {2, 3, 4} -> 2 / 4 = 0.5.
    """
    sa, sb = set(a), set(b)
    union = sa | sb
    if not union:
        return 1.0
    return len(sa & sb) / len(union)


def minhash_jaccard_estimate(sig_a: Sequence[int] | np.ndarray, sig_b: Sequence[int] | np.ndarray) -> float:
    """MinHash estimate of the Jaccard similarity from two signatures of equal length ``k``:

        J_hat = (number of positions i with sig_a[i] == sig_b[i]) / k

    Each position is the minimum of one random hash over a set; two sets share that minimum with
    probability exactly J(A, B), so J_hat is unbiased with standard error sqrt(J (1 - J) / k).

    Example: [1, 5, 7, 9] and [1, 6, 7, 8] agree in 2 of 4 positions -> 0.5.
    """
    a = np.asarray(sig_a)
    b = np.asarray(sig_b)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"signatures must be 1-D and of equal non-zero length, got {a.shape} and {b.shape}")
    return float(np.count_nonzero(a == b)) / a.size


def minhash_std_error(j: float, num_perm: int) -> float:
    """Standard error of the MinHash estimate: ``sqrt(J (1 - J) / num_perm)``.

    Example: J = 0.5, 100 permutations -> sqrt(0.25 / 100) = 0.05.
    """
    return (j * (1.0 - j) / num_perm) ** 0.5


def word_shingles(text: str, n: int) -> set[str]:
    """Set of word ``n``-grams of ``normalize_for_dedup(text)`` joined by single spaces.

    A text with fewer than ``n`` words gives one shingle (the whole normalised text), an empty text none.
    Example: "A b c d", n=3 -> {"a b c", "b c d"}.
    """
    words = normalize_for_dedup(text).split()
    if not words:
        return set()
    if len(words) < n:
        return {" ".join(words)}
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


_NON_WORD_RE = re.compile(r"[^\w\s]+")
_DIGITS_RE = re.compile(r"\d+")


def normalize_for_dedup(text: str) -> str:
    """Text normalisation before shingling: NFKC, lower case, punctuation dropped, every run of digits
    replaced by ``0`` (so page numbers and years do not hide a repeated page), whitespace collapsed.

    Example: "Page 12. (C) 2021 ACME!" -> "page 0 c 0 acme".
    """
    text = unicodedata.normalize("NFKC", text).lower()
    text = _NON_WORD_RE.sub(" ", text)
    text = _DIGITS_RE.sub("0", text)
    return " ".join(text.split())


def precision_recall(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    """Precision ``tp / (tp + fp)``, recall ``tp / (tp + fn)`` and F1 ``2 P R / (P + R)``; 0.0 where the
    denominator is 0.

    Example: tp=8, fp=2, fn=8 -> P = 0.8, R = 0.5, F1 = 0.8 / 1.3 = 0.6154.
    """
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f1


def per_label_report(gold: Sequence[str], pred: Sequence[str], positive: set[str] | None = None) -> dict:
    """Precision/recall/F1 for every label in ``gold`` or ``pred`` and, when ``positive`` is given, for the
    binary task "label in positive" (e.g. any science domain vs. out-of-domain).

    For label L: tp = #(gold == L and pred == L), fp = #(gold != L and pred == L),
    fn = #(gold == L and pred != L); support = #(gold == L).
    """
    if len(gold) != len(pred):
        raise ValueError(f"gold has {len(gold)} labels, pred {len(pred)}")
    report: dict = {"n": len(gold), "accuracy": fraction(sum(g == p for g, p in zip(gold, pred)), len(gold)),
                    "labels": {}}
    for label in sorted(set(gold) | set(pred)):
        tp = sum(g == label and p == label for g, p in zip(gold, pred))
        fp = sum(g != label and p == label for g, p in zip(gold, pred))
        fn = sum(g == label and p != label for g, p in zip(gold, pred))
        p_, r_, f_ = precision_recall(tp, fp, fn)
        report["labels"][label] = {"precision": p_, "recall": r_, "f1": f_, "support": tp + fn}
    if positive is not None:
        tp = sum(g in positive and p in positive for g, p in zip(gold, pred))
        fp = sum(g not in positive and p in positive for g, p in zip(gold, pred))
        fn = sum(g in positive and p not in positive for g, p in zip(gold, pred))
        p_, r_, f_ = precision_recall(tp, fp, fn)
        report["binary"] = {"positive": sorted(positive), "precision": p_, "recall": r_, "f1": f_,
                            "support": tp + fn}
    return report


def in_domain_score(labels: Sequence[str], probs: Sequence[float], keep: set[str]) -> float:
    """Classifier score used by batch filtering: the summed probability of the kept labels,

        score = min(1, sum(p_l for l in labels if l in keep))

    over the classifier's full label distribution (fastText ``k=-1``; its probabilities can sum to slightly
    more than 1 by rounding, hence the clip). Example: labels (physics, other,
    chemistry) with probabilities (0.5, 0.3, 0.2) and keep {physics, chemistry} -> 0.7.
    """
    return min(1.0, float(sum(p for label, p in zip(labels, probs) if label in keep)))
