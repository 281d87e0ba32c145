"""Property tests on random strings: C++ path == Python reference, decode(encode(x)) == x, and the C++
SentencePiece BPE == the sentencepiece library."""
import io
import unicodedata

import pytest
import sentencepiece as spm

pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from megatron_s1.tokenizer import DynamicTokenizer
from megatron_s1.tokenizer.testing import build_test_directories, data_files
from megatron_s1.tokenizer.training import read_documents

pytest.importorskip("megatron_s1._tokenizer")

TAGS = ["<SMILES>", "</SMILES>", "<SELFIES>", "</SELFIES>", "<IUPAC>", "</IUPAC>", "<FASTA>", "</FASTA>",
        "<protein>", "</protein>", "<dna>", "</dna>", "<MOLFORMULA>", "</MOLFORMULA>", "<|im_start|>",
        "<|endoftext|>", "<SMILES_AUTO_DETECT>"]
PIECES = (list("CNOScnos()[]=#@+-123%.:/\\ \n\tHxyzé中🙂ACGTUMKVLQ٣") +
          ["Cl", "Br", "C1=CC=CC=C1", "CC(=O)O", "[nH]", "ACGTACGTACGT", "MKVLAAGIVALL", "e\u0301"] + TAGS)
TEXT = st.one_of(
    st.lists(st.sampled_from(PIECES), max_size=40).map("".join),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\u2581"), max_size=60),
)


@pytest.fixture(scope="module")
def toks(tmp_path_factory):
    dirs = build_test_directories(str(tmp_path_factory.getbasetemp() / "tokdirs"))
    out = {}
    for name in ("s1", "custom"):
        for validator in ("rdkit", "rules"):
            out[(name, validator)] = (
                DynamicTokenizer(dirs[name], backend="native", smiles_validator=validator, on_unbalanced="ignore"),
                DynamicTokenizer(dirs[name], backend="python", smiles_validator=validator, on_unbalanced="ignore"))
    return out


@settings(max_examples=150, deadline=None)
@given(texts=st.lists(TEXT, min_size=1, max_size=4), name=st.sampled_from(["s1", "custom"]),
       validator=st.sampled_from(["rdkit", "rules"]))
def test_native_equals_reference_and_round_trips(toks, texts, name, validator):
    native, ref = toks[(name, validator)]
    want = [ref.encode_python(t) for t in texts]
    assert native.encode_batch(texts, num_threads=2) == want
    for text, ids in zip(texts, want):
        assert ref.decode(ids) == unicodedata.normalize("NFC", text)


def _model(**flags):
    buf = io.BytesIO()
    docs = [s for p in data_files()["smiles_nci"] for s in read_documents(p)][:2000]
    docs += ["hello world  foo", "a b c"]
    spm.SentencePieceTrainer.train(sentence_iterator=iter(docs), model_writer=buf, model_type="bpe",
                                   vocab_size=200, character_coverage=1.0, normalization_rule_name="identity",
                                   minloglevel=2, **flags)
    return buf.getvalue()


def _domain_encoder(proto: bytes):
    """A C++ encoder holding one SentencePiece model (domain 0, offset 0) and nothing else."""
    from megatron_s1 import _tokenizer
    from megatron_s1.tokenizer.domain import read_model_proto

    info = read_model_proto(proto)
    assert info.native_unsupported_reason() is None
    return _tokenizer.Encoder([], [dict(offset=0, pieces=info.pieces, scores=info.scores, types=info.types,
                                        add_dummy_prefix=info.add_dummy_prefix,
                                        remove_extra_whitespaces=info.remove_extra_whitespaces,
                                        escape_whitespaces=info.escape_whitespaces, added_override={},
                                        base_remap={})], [], [], True, False, False, False)


def _library_pieces(sp, text: str) -> list[tuple[str, int]]:
    return list(zip(sp.encode(text, out_type=str), sp.encode(text)))


def _tied_scores(proto: bytes) -> bytes:
    """The model with two score values only, so that most candidate merges tie (sentencepiece then merges the
    leftmost pair)."""
    pytest.importorskip("google.protobuf")
    from sentencepiece import sentencepiece_model_pb2

    model = sentencepiece_model_pb2.ModelProto.FromString(proto)
    for i, piece in enumerate(model.pieces):
        piece.score = -float(i % 2)
    return model.SerializeToString()


@pytest.fixture(scope="module", params=["ours", "sentencepiece-defaults", "user-defined", "tied-scores"])
def sp_pair(request):
    flags = {"ours": dict(add_dummy_prefix=False, remove_extra_whitespaces=False),
             "sentencepiece-defaults": {},
             "user-defined": dict(user_defined_symbols=["[nH]", "Cl", "C1=C"], add_dummy_prefix=False),
             "tied-scores": dict(add_dummy_prefix=False, remove_extra_whitespaces=False)}
    proto = _model(**flags[request.param])
    if request.param == "tied-scores":
        proto = _tied_scores(proto)
    return _domain_encoder(proto), spm.SentencePieceProcessor(model_proto=proto)


@settings(max_examples=300, deadline=None)
@given(TEXT)
def test_native_sentencepiece_bpe_matches_library(sp_pair, text):
    enc, sp = sp_pair
    got = enc.encode_domain(0, text)
    assert [p for p, _ in got] == sp.encode(text, out_type=str)
    assert [i for _, i in got] == sp.encode(text)


def test_native_sentencepiece_bpe_matches_library_on_real_smiles(sp_pair):
    enc, sp = sp_pair
    docs = [s for p in data_files()["smiles_nci"] for s in read_documents(p)][2000:2600]
    assert len(docs) == 600
    docs += [" ".join(docs[i:i + 3]) for i in range(0, 60, 3)]  # spaces: dummy prefix, whitespace flags
    assert [enc.encode_domain(0, d) for d in docs] == [_library_pieces(sp, d) for d in docs]


ASCII_TEXT = st.one_of(
    st.text(st.characters(max_codepoint=127), max_size=80),
    st.lists(st.sampled_from(["'s", "'RE", "'ll", "'x", " ", "  ", "\n", "\r\n", " \n ", "\t", "\x0b", "\x1c",
                              "Hello", " world", "x1", "2024", "...", " (", ")\n\n", "!!", "a'b", "don't"]),
             max_size=30).map("".join),
)


@pytest.fixture(scope="module", params=["bundled", "qwen3"])
def base_pair(request):
    """(C++ encoder with the base vocabulary, tiktoken Encoding) for the bundled vocabulary and Qwen3's."""
    from megatron_s1 import _tokenizer
    from megatron_s1.tokenizer.bpe import ByteLevelBPETokenizer, bundled_tokenizer_dir

    directory = bundled_tokenizer_dir()
    if request.param == "qwen3":
        from tests.conftest import reference_path
        directory = reference_path("intern-s1-pro")
    encoding = ByteLevelBPETokenizer(directory)._encoding
    enc = _tokenizer.Encoder([], [], [], [], True, False, False, False)
    enc.set_base_vocabulary(list(encoding._mergeable_ranks), list(encoding._mergeable_ranks.values()))
    return enc, encoding


@settings(max_examples=300, deadline=None)
@given(ASCII_TEXT)
def test_native_ascii_base_bpe_matches_tiktoken(base_pair, text):
    enc, encoding = base_pair
    assert enc.encode_base_ascii(text) == encoding.encode_ordinary(text)


def test_native_ascii_base_bpe_matches_tiktoken_on_prose(base_pair):
    from megatron_s1.tokenizer.testing import prose_documents

    enc, encoding = base_pair
    docs = [d for d in prose_documents(10_000) if d.isascii()]
    assert len(docs) > 50
    assert [enc.encode_base_ascii(d) for d in docs] == [encoding.encode_ordinary(d) for d in docs]
    assert enc.encode_base_ascii("caf\u00e9") is None  # not ASCII: left to tiktoken


@pytest.mark.parametrize("name", ["SMILES", "PROT", "XNA"])
def test_native_sentencepiece_bpe_matches_library_on_released_models(name):
    """The Intern-S1-Pro release's own domain models, on real text of every kind (any model meets any text)."""
    from megatron_s1.tokenizer.testing import release_corpus
    from tests.conftest import reference_path

    proto = open(reference_path("intern-s1-pro", f"tokenizer_{name}.model"), "rb").read()
    enc, sp = _domain_encoder(proto), spm.SentencePieceProcessor(model_proto=proto)
    docs = release_corpus("intern-s1-pro", limit=40)
    assert len(docs) > 300
    assert [enc.encode_domain(0, d) for d in docs] == [_library_pieces(sp, d) for d in docs]
