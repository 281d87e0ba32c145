"""Page-level PDF parsing on PDFs generated with reportlab (prose pages, equation pages, blank pages)."""
import json

import pytest

from megatron_s1.cli import main
from megatron_s1.data.curation.errors import CurationError
from megatron_s1.data.curation.formulas import symbol_density
from megatron_s1.data.curation.jsonl import JsonlWriter
from megatron_s1.data.curation.pdf import clean_high_cost, clean_low_cost, merge_pages, parse_pdfs
from tests.data.curation.helpers import EQUATION_LINES, make_pdf, stdlib_docstrings

pytest.importorskip("reportlab")
pytest.importorskip("pypdf")


def _prose(n):
    docs = [d for d in stdlib_docstrings() if symbol_density(d) < 0.02]
    return docs[n % len(docs)]


@pytest.fixture(scope="module")
def pdfs(tmp_path_factory):
    d = tmp_path_factory.mktemp("pdfs")
    make_pdf(str(d / "prose.pdf"), [_prose(0), _prose(1), _prose(2)])
    make_pdf(str(d / "paper.pdf"), [_prose(3), EQUATION_LINES, _prose(4), None])
    return d


@pytest.mark.parametrize("low_cost", ["pypdf", "pdfminer"])
def test_routes_equation_and_blank_pages_only(pdfs, tmp_path, low_cost):
    out = tmp_path / "docs.jsonl"
    with JsonlWriter(str(out)) as w:
        stats = parse_pdfs([str(pdfs)], w, low_cost=low_cost, density_threshold=0.08, min_chars=50)
    recs = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert stats["pages"] == 7 and stats["hard_pages"] == 2
    assert stats["routed_fraction"] == pytest.approx(2 / 7, abs=1e-4)
    assert recs["prose"]["page_routes"] == ["low"] * 3
    assert recs["paper"]["page_routes"] == ["low", "hard-unparsed", "low", "hard-unparsed"]
    assert recs["paper"]["page_density"][1] >= 0.08 > recs["paper"]["page_density"][0]
    assert "Decimal" in recs["prose"]["text"] or len(recs["prose"]["text"]) > 500


def test_vlm_parses_hard_pages(pdfs, tmp_path, llm_server, capsys):
    out = tmp_path / "docs.jsonl"
    n_before = len(llm_server.requests)
    rc = main(["data", "parse-pdf", str(pdfs / "paper.pdf"), "--output", str(out), "--vlm-url", llm_server.url,
               "--vlm-model", "vlm", "--concurrency", "2", "--report", str(tmp_path / "r.json")])
    assert rc == 0
    assert "routed 2 hard pages (50.0%)" in capsys.readouterr().out
    rec = json.loads(out.read_text())
    assert rec["page_routes"] == ["low", "high", "low", "high"]
    assert rec["pages"][1] == "The energy is $E = mc^2$.\n\n$$\\sum_{i=1}^{n} x_i^2$$"    # post-processed
    assert "$$\\sum" in rec["text"]
    sent = llm_server.requests[n_before:]
    assert len(sent) == 2 and sent[0]["model"] == "vlm"
    part = sent[0]["messages"][0]["content"][0]
    assert part["type"] in ("image_url", "file")
    assert json.loads((tmp_path / "r.json").read_text())["routed_fraction"] == 0.5


def test_post_processing_and_merge():
    assert clean_low_cost("The ﬁrst experi-\nment was run\nagain.\n12\nNext line") == \
        "The first experiment was run again.\nNext line"
    assert clean_high_cost("```md\nA \\(x\\)\n\n\n\nB\n```") == "A $x$\n\nB"
    assert merge_pages(["It was a long", "sentence. ", "", "New page."]) == \
        "It was a long sentence.\n\nNew page."


def test_bad_pdf_is_one_line_error(tmp_path, capsys):
    bad = tmp_path / "bad.pdf"
    bad.write_bytes(b"not a pdf at all")
    rc = main(["data", "parse-pdf", str(bad), "--output", str(tmp_path / "o.jsonl")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0
    assert "bad.pdf is not a readable PDF" in err and "--skip-bad" in err
    with JsonlWriter(str(tmp_path / "o.jsonl")) as w:
        assert parse_pdfs([str(bad)], w, skip_bad=True)["skipped"] == [str(bad)]
    with pytest.raises(CurationError, match="does not exist"):
        parse_pdfs([str(tmp_path / "missing.pdf")], None)
