"""Our tokenizer (Python and C++ paths) against the released `tokenization_interns1.py` of both generations.

Intern-S1-Pro: the released directory, loaded as-is. Intern-S1: its vocabulary and domain models are not public,
so the directory is built (`tokenizer build --layout intern-s1`) from the Pro release's Qwen3 base plus domain
models trained on package data, then loaded by both the released Intern-S1 code and ours.
"""
import json
import os

import pytest

pytest.importorskip("transformers")
pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from megatron_s1.tokenizer import DynamicTokenizer  # noqa: E402
from megatron_s1.tokenizer.testing import (intern_s1_directory, load_released_tokenizer, release_base,  # noqa: E402
                                           release_corpus, released_generation)
from megatron_s1.tokenizer.training import build_directory  # noqa: E402
from tests.conftest import reference_path  # noqa: E402

GENERATIONS = ["intern-s1-pro", "intern-s1"]


@pytest.fixture(scope="module")
def pro_dir():
    return reference_path("intern-s1-pro")


@pytest.fixture(scope="module")
def s1_dir(pro_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("release")
    base = release_base(pro_dir, str(root / "qwen3-base"), below=151669)  # Intern-S1's SMILES offset
    return intern_s1_directory(str(root), base)


@pytest.fixture(scope="module")
def released(pro_dir, s1_dir):
    """generation -> (directory, released tokenizer, our Python path, our C++ path)."""
    out = {}
    for generation, directory, py in [("intern-s1-pro", pro_dir, os.path.join(pro_dir, "tokenization_interns1.py")),
                                      ("intern-s1", s1_dir, reference_path("intern-s1", "tokenization_interns1.py"))]:
        ref = load_released_tokenizer(py, directory)
        assert released_generation(ref) == generation
        ours = [DynamicTokenizer(directory, backend=b, on_unbalanced="ignore") for b in ("python", "native")]
        out[generation] = (directory, ref, *ours)
    return out


def _chat(pro_dir, ref):
    with open(os.path.join(pro_dir, "chat_template.jinja"), encoding="utf-8") as f:
        template = f.read()
    return lambda messages: ref.apply_chat_template(messages, chat_template=template, tokenize=False,
                                                    add_generation_prompt=True)


def test_released_pro_directory_loads_as_is(pro_dir):
    tok = DynamicTokenizer(pro_dir)
    config = json.load(open(os.path.join(pro_dir, "tokenizer_config.json"), encoding="utf-8"))
    assert {d.name: d.offset for d in tok.domains} == {n: config[f"offset_{n}"] for n in ("SMILES", "PROT", "XNA")}
    assert tok.domain_ranges()["XNA"] == (config["offset_XNA"], config["offset_XNA"] + 1024)
    assert {t: tok.added_tokens[t] for t in ("<SMILES>", "</rna>", "<IMG_CONTEXT>")} == {
        "<SMILES>": 151686, "</rna>": 151693, "<IMG_CONTEXT>": 151669}
    assert "<SELFIES>" not in tok.added_tokens and "<|SMILES_cc|>" not in tok.base._encoding._mergeable_ranks.keys()
    assert tok.eod_id == 151643 and tok.vocab_size == 154766


@pytest.mark.parametrize("generation", GENERATIONS)
def test_ids_equal_the_released_code_on_real_corpora(released, pro_dir, generation):
    directory, ref, py, native = released[generation]
    docs = release_corpus(generation, limit=12, render_chat=_chat(pro_dir, ref))
    assert len(docs) > 100 and any("<|im_start|>assistant" in d for d in docs)
    want = [ref.encode(d, add_special_tokens=False) for d in docs]
    assert native.encode_batch(docs, num_threads=2) == want
    assert [py.encode_python(d) for d in docs] == want
    kinds = {kind for d in docs for kind, _ in native.segment(d)}
    assert kinds >= {d.name for d in native.domains if d.name != "IUPAC"} | {"base", "token"}


def _strings(generation):
    tags = ["SMILES", "protein", "dna", "rna"] if generation == "intern-s1-pro" else ["SMILES", "SELFIES", "IUPAC",
                                                                                      "FASTA"]
    pieces = (list("CNOSPFIBrclnos[]()=#-+@%:./\\0123456789ACGTUMKVLQEDRWYxyzabe \n\t_\u2581é中🙂٣")
              + ["Cl", "Br", "%12", "[nH]", "ACGT" * 7, "GAUC" * 7, "MKVLAAGIVALLLAAGCSSSKEEKKEETTQ",
                 "CC(=O)OC1=CC=CC=C1C(=O)O", "c1ccccc1", "<|im_start|>", "<|im_end|>", "<MOLFORMULA>",
                 "</MOLFORMULA>", "<think>", "gene"]
              + [f"<{t}>" for t in tags] + [f"</{t}>" for t in tags])
    return st.lists(st.sampled_from(pieces), max_size=40).map("".join)


@pytest.mark.parametrize("generation", GENERATIONS)
def test_ids_equal_the_released_code_on_generated_strings(released, generation):
    directory, ref, py, native = released[generation]

    @settings(max_examples=150, deadline=None, database=None)
    @given(_strings(generation))
    def check(text):
        want = ref.encode(text, add_special_tokens=False)
        assert native.encode(text) == want
        assert py.encode_python(text) == want

    check()


@pytest.mark.parametrize("generation", GENERATIONS)
def test_lone_surrogates_raise_like_the_released_code(released, generation):
    directory, ref, py, native = released[generation]
    text = "CCO \ud800 MKV"
    with pytest.raises(UnicodeEncodeError):
        ref.encode(text, add_special_tokens=False)
    for tok in (py, native):
        with pytest.raises(UnicodeEncodeError, match="position 4: lone surrogate.*errors='replace'"):
            tok.encode_batch(["fine", text])


def test_build_writes_the_pro_release_layout(pro_dir, tmp_path):
    """The release's Qwen3 base + its three domain models, built with --layout intern-s1-pro == the release."""
    base = release_base(pro_dir, str(tmp_path / "base"), below=151686)  # first tag id
    models = {n: os.path.join(pro_dir, f"tokenizer_{n}.model") for n in ("SMILES", "PROT", "XNA")}
    build_directory(base, str(tmp_path / "out"), models, layout="intern-s1-pro")

    def read(directory, name):
        with open(os.path.join(directory, name), encoding="utf-8") as f:
            return json.load(f)
    built, release = read(tmp_path / "out", "tokenizer_config.json"), read(pro_dir, "tokenizer_config.json")
    for key in ("offset_SMILES", "offset_PROT", "offset_XNA", "added_tokens_decoder"):
        assert built[key] == release[key], key
    assert read(tmp_path / "out", "vocab.json") == read(pro_dir, "vocab.json")
    assert not os.path.exists(tmp_path / "out" / "dynamic_tokenizer.json")
