"""Dynamic tokenizer on real corpora: C++ == Python reference, round trip, and independent peers
(HF `tokenizers` for the base BPE, the `sentencepiece` library for the domain models)."""
import json
import os

import pytest
import sentencepiece as spm
from tokenizers import Tokenizer

from megatron_s1.tokenizer import DynamicTokenizer, bundled_tokenizer_dir, load_tokenizer
from megatron_s1.tokenizer.layout import INTERN_S1_OFFSETS
from megatron_s1.tokenizer.testing import build_test_directories, data_files, mixed_corpus, prose_documents
from megatron_s1.tokenizer.training import read_documents


@pytest.fixture(scope="session")
def tokdirs(tmp_path_factory):
    return build_test_directories(str(tmp_path_factory.getbasetemp() / "tokdirs"))


@pytest.fixture(scope="session")
def corpus():
    return mixed_corpus(150)


@pytest.fixture(scope="session")
def hf_base():
    return Tokenizer.from_file(os.path.join(bundled_tokenizer_dir(), "tokenizer.json"))


@pytest.mark.parametrize("name", ["s1", "custom"])
def test_native_equals_python_reference_and_round_trips_on_real_mixed_corpus(tokdirs, corpus, name):
    native = DynamicTokenizer(tokdirs[name], backend="native", on_unbalanced="ignore")
    ref = DynamicTokenizer(tokdirs[name], backend="python", on_unbalanced="ignore")
    assert native.backend == "native" and ref.backend == "python"
    got = native.encode_batch(corpus, num_threads=2)
    want = [ref.encode_python(t) for t in corpus]
    assert got == want
    assert [native.encode(t) for t in corpus[:20]] == want[:20]
    for text, ids in zip(corpus, want):
        assert ref.decode(ids) == text
        assert all(0 <= i < ref.vocab_size for i in ids)


def test_each_modality_uses_its_own_id_range(tokdirs):
    tok = DynamicTokenizer(tokdirs["s1"], on_unbalanced="ignore")
    ranges = tok.domain_ranges()
    assert ranges["SMILES"][0] == INTERN_S1_OFFSETS["SMILES"] and ranges["FASTA"][0] == INTERN_S1_OFFSETS["FASTA"]

    def where(i):
        return next((n for n, (a, b) in ranges.items() if a <= i < b), "added")

    smiles = "CC(=O)OC1=CC=CC=C1C(=O)O"  # aspirin (Kekulé, like the NCI training data): auto-detected
    protein = "MKVLAAGIVALLLAAGCSSSKEEKKEETTQAAPEKDLNQ"
    c_prose = tok.encode("C")[0]
    assert where(c_prose) == "base"
    assert {where(i) for i in tok.encode(smiles)} == {"SMILES"}
    assert {where(i) for i in tok.encode(protein)} == {"FASTA"}
    # the same letter "C" gets three different ids in prose, SMILES and protein context
    c_smiles = tok.encode("<SMILES>C</SMILES>")[1]
    c_protein = tok.encode("<FASTA>C</FASTA>")[1]
    assert len({c_prose, c_smiles, c_protein}) == 3


def test_reference_docstring_example_structure(tokdirs):
    """transformers' InternS1Tokenizer docstring: tags keep ids 151925/151926, auto-detected spans get none."""
    tok = DynamicTokenizer(tokdirs["s1"])
    text = "Describe <SMILES>C1=CC=C(C=C1)C=O</SMILES> and CC1=CC=CC=C1C=O"
    ids = tok.encode(text)
    assert tok.added_tokens["<SMILES>"] == 151925 and tok.added_tokens["</SMILES>"] == 151926
    assert ids.count(151925) == 1 and ids.count(151926) == 1
    sp = spm.SentencePieceProcessor(model_file=os.path.join(tokdirs["s1"], "tokenizer_SMILES.model"))
    offset = INTERN_S1_OFFSETS["SMILES"]
    inner = [i + offset for i in sp.encode("C1=CC=C(C=C1)C=O")]
    auto = [i + offset for i in sp.encode("CC1=CC=CC=C1C=O")]
    start = ids.index(151925)
    assert ids[start + 1:start + 1 + len(inner)] == inner
    assert ids[-len(auto):] == auto
    assert tok.segment(text)[-1] == ("SMILES", "CC1=CC=CC=C1C=O")


def test_base_segments_match_hf_tokenizers_peer(tokdirs, hf_base):
    """Text with nothing scientific in it must tokenize exactly like the plain base BPE (HF `tokenizers`)."""
    tok = DynamicTokenizer(tokdirs["custom"])
    docs = prose_documents(150) + ["<|im_start|>user\nHello world<|im_end|>", "émoji 🙂 and 中文", "a  b\n\n c"]
    checked = 0
    for doc in docs:
        if any(kind != "base" and kind != "token" for kind, _ in tok.segment(doc)):
            continue
        assert tok.encode(doc) == hf_base.encode(doc).ids
        checked += 1
    assert checked >= 55


def test_domain_segments_match_sentencepiece_peer(tokdirs):
    """Inside a tag every id is the sentencepiece library's id + offset (no unknown pieces in real data)."""
    tok = DynamicTokenizer(tokdirs["custom"])
    checks = [("SMILES", "SMILES", list(read_documents(data_files()["chembl_eval"][0]))[:300]),
              ("PROT", "protein", [s for p in data_files()["protein"] for s in read_documents(p)][:50]),
              ("XNA", "dna", [s[:3000] for p in data_files()["dna"] for s in read_documents(p)][:5])]
    for name, tag, docs in checks:
        dm = next(d for d in tok.domains if d.name == name)
        open_id, close_id = tok.added_tokens[f"<{tag}>"], tok.added_tokens[f"</{tag}>"]
        for doc in docs:
            local = dm.sp.encode(doc)
            if 0 in local:
                continue
            assert tok.encode(f"<{tag}>{doc}</{tag}>") == [open_id] + [i + dm.offset for i in local] + [close_id]


def test_unknown_domain_pieces_fall_back_to_base_bpe(tokdirs, hf_base):
    tok = DynamicTokenizer(tokdirs["custom"])
    dm = tok.domains[0]
    text = "CCO é中 Q"  # é, 中 and space are not SMILES pieces
    pieces, local = dm.encode_pieces(text)
    assert 0 in local
    expected = []
    for piece, i in zip(pieces, local):
        expected += hf_base.encode(piece.replace("\u2581", " ")).ids if i == 0 else [i + dm.offset]
    ids = tok.encode(f"<SMILES>{text}</SMILES>")
    assert ids[1:-1] == expected
    assert tok.decode(ids) == f"<SMILES>{text}</SMILES>"


def test_load_tokenizer_returns_native_dynamic_tokenizer(tokdirs):
    tok = load_tokenizer(tokdirs["custom"])
    assert isinstance(tok, DynamicTokenizer) and tok.backend == "native"
    assert tok.eod_id == tok.added_tokens["<|endoftext|>"]
    assert not isinstance(load_tokenizer(), DynamicTokenizer)


def test_preprocess_uses_dynamic_tokenizer(tokdirs, tmp_path):
    pytest.importorskip("megatron.core")
    from megatron_s1.data.preprocess import preprocess

    docs = mixed_corpus(10)[:40]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    stats = preprocess(str(src), str(tmp_path / "out"), tokdirs["custom"], progress=False)
    tok = DynamicTokenizer(tokdirs["custom"], on_unbalanced="ignore")
    assert stats["documents"] == len(docs)
    assert stats["tokens"] == sum(len(tok.encode(d)) + 1 for d in docs)
    assert stats["mb_per_s"] > 0
