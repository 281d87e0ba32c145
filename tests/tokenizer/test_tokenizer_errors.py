"""Bad input gives one clear error line naming the problem and the fix."""
import json
import os
import shutil

import pytest

from megatron_s1.tokenizer import DynamicTokenizer, TokenizerLayoutError, UnbalancedTagError
from megatron_s1.tokenizer.bpe import bundled_tokenizer_dir
from megatron_s1.tokenizer.testing import build_test_directories
from megatron_s1.tokenizer.training import build_directory


@pytest.fixture(scope="module")
def tokdirs(tmp_path_factory):
    return build_test_directories(str(tmp_path_factory.getbasetemp() / "tokdirs"))


def _one_line(err):
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_missing_model_file(tokdirs, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tokdirs["s1"], broken)
    os.remove(broken / "tokenizer_IUPAC.model")
    with pytest.raises(TokenizerLayoutError) as err:
        DynamicTokenizer(str(broken))
    msg = _one_line(err)
    assert "no tokenizer_IUPAC.model" in msg and "train-domain" in msg


def test_offset_collision_in_manifest(tokdirs, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tokdirs["custom"], broken)
    manifest = json.loads((broken / "dynamic_tokenizer.json").read_text())
    manifest["domains"][1]["offset"] = manifest["domains"][0]["offset"] + 10
    (broken / "dynamic_tokenizer.json").write_text(json.dumps(manifest))
    with pytest.raises(TokenizerLayoutError) as err:
        DynamicTokenizer(str(broken))
    msg = _one_line(err)
    assert msg.startswith("offset collision") and "PROT" in msg and "SMILES" in msg


def test_offset_collision_with_base_vocabulary(tokdirs, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tokdirs["custom"], broken)
    manifest = json.loads((broken / "dynamic_tokenizer.json").read_text())
    manifest["domains"][2]["offset"] = 100
    (broken / "dynamic_tokenizer.json").write_text(json.dumps(manifest))
    with pytest.raises(TokenizerLayoutError, match="offset collision: .*base vocabulary"):
        DynamicTokenizer(str(broken))


def test_fixed_intern_s1_layout_rejects_a_too_large_smiles_model(tokdirs, tmp_path):
    models = tokdirs["models"]
    big = {"SMILES": os.path.join(models, "custom", "tokenizer_SMILES.model"),  # 1024 pieces > 260 slots
           "IUPAC": os.path.join(models, "s1", "tokenizer_IUPAC.model"),
           "FASTA": os.path.join(models, "s1", "tokenizer_FASTA.model")}
    with pytest.raises(TokenizerLayoutError) as err:
        build_directory(bundled_tokenizer_dir(), str(tmp_path / "out"), big, layout="intern-s1")
    assert "offset collision" in _one_line(err)


@pytest.mark.parametrize("backend", ["python", "native"])
@pytest.mark.parametrize("text,fragment", [
    ("a <SMILES>CCO", "'<SMILES>' at char 2 is never closed; add '</SMILES>'"),
    ("CCO</SMILES> b", "'</SMILES>' at char 3 closes nothing"),
    ("<SMILES>C<IUPAC>x</SMILES></IUPAC>", "'</SMILES>' at char 17 closes '<IUPAC>'"),
    ("<MOLFORMULA>C6H6", "'<MOLFORMULA>' at char 0 is never closed"),
])
def test_unbalanced_tags(tokdirs, backend, text, fragment):
    tok = DynamicTokenizer(tokdirs["s1"], backend=backend)
    with pytest.raises(UnbalancedTagError) as err:
        tok.encode_batch(["fine", text])
    msg = _one_line(err)
    assert fragment in msg and "on_unbalanced='ignore'" in msg
    lenient = DynamicTokenizer(tokdirs["s1"], backend=backend, on_unbalanced="ignore")
    assert lenient.decode(lenient.encode(text)) == text


def test_unsupported_model_falls_back_or_errors(tokdirs, tmp_path):
    import io

    import sentencepiece as spm
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(["CCO CCN", "CCCC"] * 50), model_writer=buf,
                                   model_type="bpe", vocab_size=270, byte_fallback=True, minloglevel=2)
    d = tmp_path / "bf"
    shutil.copytree(tokdirs["custom"], d)
    (d / "tokenizer_PROT.model").write_bytes(buf.getvalue())  # 270 pieces fit the 512-id PROT slot
    assert DynamicTokenizer(str(d)).backend == "python"
    with pytest.raises(RuntimeError, match="byte_fallback is on; use backend='python'"):
        DynamicTokenizer(str(d), backend="native")
