"""Auto-detection of scientific strings in untagged text (Python reference).

The rules follow the Intern-S1 dynamic tokenizer (transformers' ``InternS1Tokenizer``):

* **SMILES** — a run of at least 10 *SMILES units* (a bracket atom ``[...]``, an element symbol, or one of
  ``( ) . = - # @ $ % * : + / \\`` and decimal digits) that neither starts nor ends with ``:``, ``.`` or ``=``;
  units are parsed greedily and never re-split (``Cl`` is one unit, never ``C`` + ``l``). A match is kept when it
  is at least 10 characters long, has at least 5 ASCII letters, has no ASCII letter right before or after it,
  and is a valid molecule: RDKit's ``MolFromSmiles`` when RDKit is installed, otherwise the rule checker
  :func:`smiles_rules_ok` (balanced brackets, closed rings incl. ``%nn``, allowed atoms).
* **protein** — ``[A-Z]{27,}``; letters around the run are allowed (the run is cut out of longer words). In
  Intern-S1-Pro a run made only of ``A/T/C/G/U`` is not protein (it is left for the DNA/RNA detector).
* **DNA/RNA** (Intern-S1-Pro) — ``[ATCGU]{27,}``; letters around the run are allowed too.

Detectors run in the fixed order SMILES, protein, DNA/RNA (both releases). In Intern-S1 each one re-scans every
piece the previous one produced, including the detected candidates themselves (so a 30-letter ``CCC...C`` SMILES
nests a protein span); in Intern-S1-Pro a detected span is final. The C++ fast path (``megatron_s1._tokenizer``)
implements the same rules; tests compare both, and both with the released code.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import regex

# Element symbols recognised as SMILES units outside brackets.
TWO_LETTER_ELEMENTS = (
    "Ac Ag Al Am Ar As At Au Ba Be Bh Bi Bk Br Ca Cd Ce Cf Cl Cm Cn Co Cr Cs Cu Db Ds Dy Er Es Eu Fe Fl Fm Fr Ga "
    "Gd Ge He Hf Hg Ho Hs In Ir Kr La Li Lr Lu Lv Mc Md Mg Mn Mo Mt Na Nb Nd Ne Nh Ni No Np Og Os Pa Pb Pd Pm Po "
    "Pr Pt Pu Ra Rb Re Rf Rg Rh Rn Ru Sb Sc Se Sg Si Sm Sn Sr Ta Tb Tc Te Th Ti Tl Tm Ts Xe Yb Zn Zr").split()
ONE_LETTER_ELEMENTS = "B C F H I K N O P S U V W Y b c n o p s".split()
SMILES_PUNCTUATION = "().=-#@$%*:+/\\"  # plus decimal digits (\d, Unicode Nd)

# Sets the rule checker uses (periodic table, organic subset, aromatic atoms, bond symbols).
PERIODIC_TABLE = frozenset((
    "H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br Kr Rb Sr Y Zr "
    "Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm Yb Lu Hf Ta W Re Os Ir "
    "Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U Np Pu Am Cm Bk Cf Es Fm Md No Lr Rf Db Sg Bh Hs Mt Ds Rg Cn Nh Fl "
    "Mc Lv Ts Og").split())
BOND_SYMBOLS = frozenset("-=#:/\\.$")
ORGANIC_ATOMS = frozenset("B C N O P S F Cl Br I".split())
AROMATIC_ATOMS = frozenset("bcnosp")
# Symbols allowed outside brackets by the rule checker (besides digits and ring-bond '%nn').
RULE_SYMBOLS = ORGANIC_ATOMS | AROMATIC_ATOMS | BOND_SYMBOLS | frozenset("[]();")

SMILES_MIN_LENGTH = 10
SMILES_MIN_LETTERS = 5
PROTEIN_MIN_LENGTH = 27
XNA_MIN_LENGTH = 27


def _smiles_unit_regex() -> str:
    elements = sorted(TWO_LETTER_ELEMENTS + ONE_LETTER_ELEMENTS, key=lambda s: (-len(s), s))
    punct = "".join("\\" + ch for ch in SMILES_PUNCTUATION)
    return r"(?:\[[^\]]+\]|" + "|".join(elements) + r"|[" + punct + r"\d])"


# Greedy run of >= 10 atomic units, not starting/ending with ':', '.' or '='.
SMILES_REGEX = regex.compile(r"(?![:.=])(?>" + _smiles_unit_regex() + r"){10,}(?<![:.=])")
PROTEIN_REGEX = regex.compile(r"[A-Z]{27,}")
XNA_REGEX = regex.compile(r"[ATCGU]{27,}")
NUCLEOTIDES = frozenset("ATCGU")
_DIGIT_RUN = regex.compile(r"\d+")
_DIGITS4 = regex.compile(r"\d{4,}")
_LETTERS3 = regex.compile(r"(?:[A-GI-Z]|[a-z]){3,}")
_BRACKET_CONTENT = regex.compile(r"\[([^\[\]]*)\]")


def is_ascii_letter(ch: str) -> bool:
    return ("A" <= ch <= "Z") or ("a" <= ch <= "z")


def ascii_letter_count(text: str) -> int:
    return sum(1 for ch in text if is_ascii_letter(ch))


def smiles_rules_ok(text: str) -> bool:
    """Rule-based SMILES check used when RDKit is not installed (same verdicts as the reference's fallback).

    Walks the string once: bonds may not open/close the string or follow each other, brackets must balance
    (with at most two digit groups and no 3-letter / 4-digit runs inside), ring-closure digits and ``%nn``
    must pair up, and every atom outside brackets must be an organic-subset or aromatic symbol.
    """
    rings: dict[str, bool] = {}  # ring label -> open?
    sq_open = sq_close = 0
    par_open = par_close = 0
    all_lower = True
    ring_digits = 0
    first_close = text.find("]")
    n = len(text)
    pos = 0
    while pos < n:
        step = 0
        ch = text[pos]
        if "A" <= ch <= "Z":
            all_lower = False
        if (pos == n - 1 or pos == 0) and ch in BOND_SYMBOLS:
            return False
        if pos > 0 and text[pos - 1] in BOND_SYMBOLS and ch in BOND_SYMBOLS:
            return False
        if ch == "[":
            step = 1
            sq_open += 1
            if sq_open > sq_close + 1 or pos == n - 1 or "]" not in text[pos + 1:]:
                return False
            inside = text[pos + 1:first_close]  # (sic) up to the first ']' of the whole string
            if _LETTERS3.search(inside) or _DIGITS4.search(inside):
                return False
            if len(_DIGIT_RUN.findall(inside)) > 2:
                return False
        if ch == "]":
            step = 1
            sq_close += 1
            if sq_close > sq_open:
                return False
        if ch == "(":
            step = 1
            par_open += 1
        if ch == ")":
            step = 1
            par_close += 1
            if par_close > par_open:
                return False
        if sq_open == sq_close:
            if ch.isdigit():
                ring_digits += 1
                step = 1
                if pos == 0 or (pos == 1 and text[0] != "%") or (
                        pos > 1 and text[pos - 1] != "%" and text[pos - 2] != "%"):
                    rings[ch] = not rings.get(ch, False)
            if ch == "%":
                if pos >= n - 2 or not text[pos + 1].isdigit() or not text[pos + 2].isdigit():
                    return False
                step = 3
                ring_digits += 1
                label = text[pos + 1:pos + 3]
                rings[label] = not rings.get(label, False)
            if step == 0:
                if pos < n - 1 and text[pos:pos + 2] in RULE_SYMBOLS:
                    step = 2
                elif ch in RULE_SYMBOLS:
                    step = 1
                else:
                    return False
        pos += step or 1
    if sq_open != sq_close or any(rings.values()):
        return False
    if all_lower and ring_digits < 2:
        return False
    for part in _BRACKET_CONTENT.findall(text):
        if "(" in part or ")" in part or not part:
            return False
        if part[0] in PERIODIC_TABLE or part[0] in AROMATIC_ATOMS or part[:2] in PERIODIC_TABLE:
            return True
    return True


def rdkit_available() -> bool:
    try:
        import rdkit  # noqa: F401
    except ImportError:
        return False
    return True


@functools.lru_cache(maxsize=1 << 18)
def smiles_rdkit_ok(text: str) -> bool:
    """RDKit verdict (cached): does ``Chem.MolFromSmiles`` parse it?"""
    from rdkit import Chem, RDLogger
    RDLogger.DisableLog("rdApp.*")
    return Chem.MolFromSmiles(text) is not None


def smiles_validator(mode: str = "auto"):
    """The SMILES legitimacy check (without the letter count): 'rdkit', 'rules', or 'auto' (RDKit if installed)."""
    if mode == "auto":
        mode = "rdkit" if rdkit_available() else "rules"
    if mode == "rdkit":
        if not rdkit_available():
            raise RuntimeError("smiles_validator='rdkit' needs RDKit; `pip install rdkit` or use 'rules'")
        return smiles_rdkit_ok
    if mode == "rules":
        return smiles_rules_ok
    raise ValueError(f"unknown smiles_validator {mode!r}; use 'auto', 'rdkit' or 'rules'")


@dataclass(frozen=True)
class Detector:
    """One auto-detection rule: which regex, which domain it routes to, and the letter rules."""
    kind: str  # 'smiles' | 'protein' | 'xna'
    domain: int  # index of the domain whose model encodes the detected span
    allow_adjacent_letters: bool
    skip_nucleotide_runs: bool = False  # protein: a run of only A/T/C/G/U is not a candidate (Intern-S1-Pro)

    @property
    def pattern(self):
        return {"smiles": SMILES_REGEX, "protein": PROTEIN_REGEX, "xna": XNA_REGEX}[self.kind]

    @property
    def min_length(self) -> int:
        return {"smiles": SMILES_MIN_LENGTH, "protein": PROTEIN_MIN_LENGTH, "xna": XNA_MIN_LENGTH}[self.kind]


DETECTOR_ORDER = ("smiles", "protein", "xna")


def make_detector(kind: str, domain: int, skip_nucleotide_runs: bool = False) -> Detector:
    """Only SMILES needs letter-free borders; protein and DNA/RNA runs may be cut out of longer words."""
    if kind not in DETECTOR_ORDER:
        raise ValueError(f"unknown detector {kind!r}; use one of {', '.join(DETECTOR_ORDER)}")
    return Detector(kind, domain, allow_adjacent_letters=(kind != "smiles"),
                    skip_nucleotide_runs=skip_nucleotide_runs and kind == "protein")


# A piece of a segmented string: text (kind None) or an auto-detect begin/end marker for a domain.
Piece = tuple  # (kind, value): ('text', str) | ('begin', domain) | ('end', domain)


def split_detected(text: str, detectors, validate_smiles, rescan_detected: bool = True) -> list:
    """Run the detectors in order over `text`; returns pieces with begin/end markers around detected spans.

    With `rescan_detected` (Intern-S1 behaviour) later detectors also scan spans earlier ones claimed, so a
    protein-looking run inside a SMILES span is re-routed to the protein model; without it (Intern-S1-Pro and
    custom layouts) a claimed span is final.
    """
    pieces: list = [("text", text)]
    for det in detectors:
        out: list = []
        claimed = 0  # depth inside spans claimed by earlier detectors
        for kind, value in pieces:
            if kind == "begin":
                claimed += 1
            elif kind == "end":
                claimed -= 1
            if kind != "text" or (claimed and not rescan_detected):
                out.append((kind, value))
                continue
            out.extend(_split_one(value, det, validate_smiles))
        pieces = out
    return pieces


def _split_one(text: str, det: Detector, validate_smiles) -> list:
    out: list = []
    pos = 0
    for m in det.pattern.finditer(text):
        start, end = m.span()
        cand = m.group()
        if len(cand) < det.min_length:
            continue
        if not det.allow_adjacent_letters:
            if start > 0 and is_ascii_letter(text[start - 1]):
                continue
            if end < len(text) and is_ascii_letter(text[end]):
                continue
        if det.kind == "smiles":
            if ascii_letter_count(cand) < SMILES_MIN_LETTERS or not validate_smiles(cand):
                continue
        elif det.skip_nucleotide_runs and NUCLEOTIDES.issuperset(cand):
            continue
        if start > pos:
            out.append(("text", text[pos:start]))
        out.extend((("begin", det.domain), ("text", cand), ("end", det.domain)))
        pos = end
    if pos < len(text):
        out.append(("text", text[pos:]))
    return out
