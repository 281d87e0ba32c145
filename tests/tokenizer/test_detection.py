"""Auto-detection rules (hand examples) and the C++ scanner/rule checker vs the Python reference."""
import pytest

pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from megatron_s1.tokenizer.detection import (SMILES_REGEX, make_detector, smiles_rules_ok, smiles_rdkit_ok,
                                             split_detected)

DETECTORS = [make_detector("smiles", 0), make_detector("protein", 1)]
PRO_DETECTORS = [make_detector("smiles", 0), make_detector("protein", 1, skip_nucleotide_runs=True),
                 make_detector("xna", 2)]


def spans(text, detectors=DETECTORS, validator=smiles_rules_ok, rescan=True):
    out, stack = [], []
    for kind, value in split_detected(text, detectors, validator, rescan):
        if kind == "begin":
            stack.append(value)
        elif kind == "end":
            stack.pop()
        elif stack:
            out.append((stack[-1], value))
    return out


@pytest.mark.parametrize("text,expected", [
    ("aspirin CC(=O)OC1=CC=CC=C1C(=O)O here", [(0, "CC(=O)OC1=CC=CC=C1C(=O)O")]),
    ("short CCO and CCCCO", []),                                   # < 10 units
    ("xCC(=O)OC1=CC=CC=C1C(=O)O", []),                             # ASCII letter adjacent
    ("=CC(=O)OC1=CC=CC=C1C(=O)O=", [(0, "CC(=O)OC1=CC=CC=C1C(=O)O")]),  # may not start/end with = : .
    ("C1CC(=O)CCC1==", [(0, "C1CC(=O)CCC1")]),
    ("1234567890-1234", []),                                       # fewer than 5 letters
    ("CC(=O)OC1=CC=CC=C2C(=O)O", []),                              # rings 1, 2 never closed
    ("C%10CCCCCCCCC%10", [(0, "C%10CCCCCCCCC%10")]),               # %nn ring closure
])
def test_smiles_detection_rules(text, expected):
    assert spans(text) == expected


def test_protein_and_dna_runs_are_cut_out_of_words():
    prot = "MKVLAAGIVALLLAAGCSSSKEEKKEETTQ"  # 30 letters
    assert spans(f"xx{prot}yy") == [(1, prot)]                           # letters may touch a protein run
    assert spans("A" * 26) == []
    dna = "ACGT" * 8
    assert spans(f"x{dna}") == [(1, dna)]                                # Intern-S1: any capital run is protein


def test_intern_s1_pro_leaves_pure_nucleotide_runs_to_dna_rna():
    dna = "ACGT" * 8
    pro = dict(detectors=PRO_DETECTORS, rescan=False)
    assert spans(f"seq {dna}.", **pro) == [(2, dna)]
    assert spans(f"gene{dna}", **pro) == [(2, dna)]                      # letters may touch DNA/RNA too
    assert spans(f"{dna}x", **pro) == [(2, dna)]
    assert spans(f"{dna}Q", **pro) == [(1, dna + "Q")]                   # one non-nucleotide capital: protein
    assert spans("ACGU" * 7, **pro) == [(2, "ACGU" * 7)]                 # RNA
    assert spans("ACGT" * 6 + "AC", **pro) == []                         # 26 bases: too short for both


def test_intern_s1_rescans_smiles_spans_for_protein_runs():
    run = "C" * 30
    assert spans(run) == [(1, run)]                        # reference: nested, protein model wins
    assert spans(run, rescan=False) == [(0, run)]


def test_rule_checker_examples():
    assert smiles_rules_ok("CC(=O)OC1=CC=CC=C1C(=O)O")
    assert smiles_rules_ok("C[N+](C)(C)CC1=CC=CC=C1")
    assert not smiles_rules_ok("C1CCCCC")        # ring 1 never closed
    assert not smiles_rules_ok("CC(C))C")        # closing more than opened
    assert not smiles_rules_ok("C[Xyz]CCCC")     # 3-letter run inside brackets
    assert not smiles_rules_ok("=CCCCC")         # bond first
    assert not smiles_rules_ok("CC==CC")         # two bonds in a row
    assert not smiles_rules_ok("cccccc")         # all aromatic, no ring digits
    assert smiles_rules_ok("c1ccccc1")


def test_rdkit_validator_agrees_on_clear_cases():
    pytest.importorskip("rdkit")
    assert smiles_rdkit_ok("CC(=O)OC1=CC=CC=C1C(=O)O")
    assert not smiles_rdkit_ok("C1CCCCC")


@pytest.fixture(scope="module")
def native_encoder(tmp_path_factory):
    pytest.importorskip("megatron_s1._tokenizer")
    from megatron_s1.tokenizer import DynamicTokenizer
    from megatron_s1.tokenizer.testing import build_test_directories

    dirs = build_test_directories(str(tmp_path_factory.getbasetemp() / "tokdirs"))
    return DynamicTokenizer(dirs["s1"], backend="native", smiles_validator="rules")._native


SMILES_ALPHABET = st.sampled_from(list("CNOSPFIBrclnos[]()=#-+@%:./\\$*0123456789 HKxyzT٣") + ["Cl", "Br", "%12"])


@settings(max_examples=300, deadline=None)
@given(st.lists(SMILES_ALPHABET, max_size=60).map("".join))
def test_native_smiles_scanner_matches_regex(native_encoder, text):
    want = [(len(text[:m.start()].encode()), len(text[:m.end()].encode())) for m in SMILES_REGEX.finditer(text)]
    assert native_encoder.smiles_matches(text) == want


@settings(max_examples=400, deadline=None)
@given(st.lists(SMILES_ALPHABET, min_size=1, max_size=40).map("".join))
def test_native_rule_checker_matches_python(native_encoder, cand):
    assert native_encoder.rules_ok(cand) == smiles_rules_ok(cand)
