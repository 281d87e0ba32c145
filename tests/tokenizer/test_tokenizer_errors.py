"""Bad input gives one clear error line naming the problem and the fix."""
import json
import os
import shutil
import subprocess
import sys

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


# ----------------------------------------------------------------------------- released Intern-S1-Pro directories
def _pro_copy(tmp_path, edit_config=None, drop=()):
    """The released Intern-S1-Pro directory (files linked) with its tokenizer_config.json edited."""
    from tests.conftest import reference_path

    release = reference_path("intern-s1-pro")
    out = tmp_path / "pro"
    out.mkdir()
    for name in os.listdir(release):
        if name not in drop and name != "tokenizer_config.json":
            os.symlink(os.path.join(release, name), out / name)
    config = json.loads(open(os.path.join(release, "tokenizer_config.json"), encoding="utf-8").read())
    if edit_config:
        edit_config(config)
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    return str(out)


BROKEN_PRO = {
    "missing XNA model": (dict(drop=("tokenizer_XNA.model",)),
                          ["(intern-s1-pro layout) has no tokenizer_XNA.model for domain XNA", "train-domain"]),
    "missing PROT and XNA models": (dict(drop=("tokenizer_PROT.model", "tokenizer_XNA.model")),
                                    ["(intern-s1-pro layout) has no tokenizer_PROT.model"]),
    "offset on other domains' placeholders": (
        dict(edit_config=lambda c: c.update(offset_XNA=c["offset_XNA"] + 1)),
        ["offset collision: base vocabulary entry '<|XNA_", "(vocab.json id 153743) lies inside domain XNA",
         "move the domain offset (tokenizer_config.json offset_XNA"]),
    "offset on base vocabulary entries": (
        dict(edit_config=lambda c: c.update(offset_SMILES=140000)),
        ["offset collision: base vocabulary entry", "(vocab.json id 140000) lies inside domain SMILES",
         "offset_SMILES"]),
    "offset on added tokens": (
        dict(edit_config=lambda c: c.update(offset_SMILES=151680)),
        ["offset collision: added token '<|interpreter|>' has id 151680, inside domain SMILES",
         "tokenizer_config.json offset_SMILES"]),
    "offsets overlapping": (
        dict(edit_config=lambda c: c.update(offset_PROT=c["offset_SMILES"] + 1000)),
        ["offset collision: domain PROT ids [152694, 153718) overlap domain SMILES ids [151694, 152718)"]),
    "config without offsets": (dict(edit_config=lambda c: c.pop("offset_PROT")),
                               ["tokenizer_config.json has no offset_PROT", "offset_SMILES / offset_PROT / "
                                "offset_XNA; add them"]),
}


@pytest.mark.parametrize("case", list(BROKEN_PRO))
def test_broken_pro_directory_is_one_error_line(tmp_path, case):
    spec, fragments = BROKEN_PRO[case]
    with pytest.raises(TokenizerLayoutError) as err:
        DynamicTokenizer(_pro_copy(tmp_path, **spec))
    msg = _one_line(err)
    assert all(f in msg for f in fragments), msg


def test_missing_model_named_in_manifest(tokdirs, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tokdirs["custom"], broken)
    manifest = json.loads((broken / "dynamic_tokenizer.json").read_text())
    manifest["domains"][0]["model"] = "smiles_v2.model"
    (broken / "dynamic_tokenizer.json").write_text(json.dumps(manifest))
    with pytest.raises(TokenizerLayoutError, match="has no smiles_v2.model for domain SMILES"):
        DynamicTokenizer(str(broken))


@pytest.mark.parametrize("case", ["missing XNA model", "offset on added tokens", "config without offsets"])
def test_broken_pro_directory_through_the_cli_exits_2(tmp_path, case):
    from tests.conftest import REPO, cli_env

    spec, fragments = BROKEN_PRO[case]
    data = tmp_path / "docs.txt"
    data.write_text("CCO\n")
    proc = subprocess.run([sys.executable, "-m", "megatron_s1.cli", "tokenizer", "compression", "--tokenizer",
                           _pro_copy(tmp_path, **spec), "--data", str(data)], cwd=REPO, env=cli_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragments[0] in lines[0], proc.stderr
