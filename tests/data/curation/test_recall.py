"""Recall & filtering: taxonomy -> LLM silver labels -> fastText classifier -> batch filter."""
import json

import pytest

from megatron_s1.cli import main
from megatron_s1.data.curation.taxonomy import Taxonomy, parse_label, reservoir_sample
from tests.data.curation.helpers import corpus, stdlib_docstrings

pytest.importorskip("fasttext")

TAXONOMY = """\
biology: [protein biology, genomics]
chemistry: [organic chemistry, spectroscopy]
other: [software, news]
"""


def _write_jsonl(path, docs):
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return str(path)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, llm_server):
    d = tmp_path_factory.mktemp("recall")
    (d / "tax.yaml").write_text(TAXONOMY)
    docs = corpus()
    pool = [d_ for d_ in docs if d_["source"] == "protein"][:80] + \
        [d_ for d_ in docs if d_["source"] == "smiles"][:60] + [d_ for d_ in docs if d_["source"] == "general"]
    pool.append({"text": "GARBLE GARBLE", "source": "noise"})
    _write_jsonl(d / "pool.jsonl", pool)
    rc = main(["data", "silver-label", "--taxonomy", str(d / "tax.yaml"), "--input", str(d / "pool.jsonl"),
               "--output", str(d / "silver.jsonl"), "--llm-url", llm_server.url, "--llm-model", "m",
               "--concurrency", "4"])
    assert rc == 0
    # out-of-domain validation: another source (stdlib docstrings + later protein records), labelled too
    ood = [{"text": t, "gold": "other"} for t in stdlib_docstrings()] + \
        [{"text": d_["text"], "gold": "biology"} for d_ in corpus("protein")[500:530]]
    _write_jsonl(d / "ood.jsonl", ood)
    return d


def test_silver_labels(workdir, capsys):
    rows = [json.loads(line) for line in (workdir / "silver.jsonl").read_text().splitlines()]
    expected = {"protein": "biology", "smiles": "chemistry", "general": "other", "noise": "unknown"}
    assert all(r["silver_domain"] == expected[r["source"]] for r in rows)
    assert len(rows) == 80 + 60 + 59 + 1
    assert {r["silver_label"] for r in rows if r["source"] == "smiles"} == {"organic chemistry"}


def test_train_report_and_filter(workdir, capsys):
    clf = workdir / "clf"
    rc = main(["data", "train-classifier", "--silver", str(workdir / "silver.jsonl"), "--out", str(clf),
               "--ood-valid", str(workdir / "ood.jsonl"), "--ood-label-key", "gold"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "in_domain" in out and "out_of_domain:ood.jsonl" in out
    report = json.loads((clf / "report.json").read_text())
    assert report["in_domain_labels"] == ["biology", "chemistry"]
    assert report["class_counts"] == {"biology": 80, "chemistry": 60, "other": 59}   # 'unknown' left out
    ood = report["validation"]["out_of_domain:ood.jsonl"]
    assert ood["n"] == len(stdlib_docstrings()) + 30
    assert ood["binary"]["recall"] >= 0.9 and ood["binary"]["precision"] >= 0.9
    assert set(report["validation"]["in_domain"]["labels"]) <= {"biology", "chemistry", "other"}

    kept = workdir / "kept.jsonl"
    rc = main(["data", "filter", "--model", str(clf), "--input", str(workdir / "ood.jsonl"), "--output", str(kept),
               "--rejected", str(workdir / "rej.jsonl"), "--threshold", "0.5", "--batch-size", "16"])
    assert rc == 0
    assert "docs/s" in capsys.readouterr().out
    kept_rows = [json.loads(line) for line in kept.read_text().splitlines()]
    rej_rows = [json.loads(line) for line in (workdir / "rej.jsonl").read_text().splitlines()]
    assert len(kept_rows) + len(rej_rows) == ood["n"]
    assert sum(r["gold"] == "biology" for r in kept_rows) >= 27
    assert all(0.0 <= r["curation_score"] <= 1.0 for r in kept_rows)

    # two worker processes give the same output, in the same order
    kept2 = workdir / "kept2.jsonl"
    assert main(["data", "filter", "--model", str(clf), "--input", str(workdir / "ood.jsonl"), "--output",
                 str(kept2), "--workers", "2", "--batch-size", "16"]) == 0
    assert kept2.read_text() == kept.read_text()

    # --keep must name classifier labels
    rc = main(["data", "filter", "--model", str(clf), "--input", str(workdir / "ood.jsonl"), "--output",
               str(kept2), "--keep", "physics"])
    err = capsys.readouterr().err
    assert rc == 2 and "--keep physics: not a label of the classifier" in err


def test_parse_label_and_sampling():
    tax = Taxonomy({"physics": ["quantum physics", "optics"], "chemistry": ["spectroscopy"]})
    assert parse_label(tax, "Optics") == ("optics", "physics")
    assert parse_label(tax, "physics/quantum physics") == ("quantum physics", "physics")
    assert parse_label(tax, "The answer is: spectroscopy.") == ("spectroscopy", "chemistry")
    assert parse_label(tax, "OTHER") == ("other", "other")
    assert parse_label(tax, "no idea") == ("unknown", "unknown")
    sample = reservoir_sample(range(1000), 10, seed=3)
    assert len(sample) == 10 and sample == sorted(sample) and sample == reservoir_sample(range(1000), 10, seed=3)
    assert reservoir_sample(range(5), 10, seed=0) == [0, 1, 2, 3, 4]


def test_single_class_silver_set_is_clear_error(tmp_path, capsys):
    silver = _write_jsonl(tmp_path / "s.jsonl", [{"text": "a b", "silver_domain": "biology"}] * 5)
    rc = main(["data", "train-classifier", "--silver", silver, "--out", str(tmp_path / "c")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "at least two classes" in err
