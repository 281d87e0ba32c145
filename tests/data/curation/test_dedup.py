"""MinHash document dedup and global page-level graph dedup on real text."""
import json

import pytest

from megatron_s1.cli import main
from megatron_s1.data.curation.dedup import minhash_dedup, page_graph_dedup
from megatron_s1.data.curation.formulas import jaccard, word_shingles
from tests.data.curation.helpers import corpus, stdlib_docstrings

pytest.importorskip("datasketch")


def _write(path, docs):
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return str(path)


def _edit(text: str, every: int = 40) -> str:
    """Near-duplicate: change one word in every ``every``."""
    words = text.split()
    return " ".join("CHANGED" if i % every == 7 else w for i, w in enumerate(words))


def test_minhash_dedup(tmp_path, capsys):
    texts = []
    for t in stdlib_docstrings():               # stdlib has real near-duplicate docstrings: take distinct ones
        if len(t.split()) >= 60 and all(jaccard(word_shingles(t, 5), word_shingles(u, 5)) < 0.3 for u in texts):
            texts.append(t)
    docs = [{"id": f"d{i}", "text": t} for i, t in enumerate(texts)]
    docs += [{"id": "copy_of_d3", "text": _edit(docs[3]["text"], 80)}, {"id": "exact_d5", "text": docs[5]["text"]}]
    docs += [{"id": "empty", "text": ""}]
    inp = _write(tmp_path / "in.jsonl", docs)
    rc = main(["data", "dedup-minhash", "--input", inp, "--output", str(tmp_path / "out.jsonl"),
               "--threshold", "0.7", "--duplicates", str(tmp_path / "dups.jsonl")])
    assert rc == 0
    assert f"kept {len(docs) - 2} of {len(docs)} documents (2 near-duplicates)" in capsys.readouterr().out
    kept = [json.loads(line)["id"] for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert "copy_of_d3" not in kept and "exact_d5" not in kept and "empty" in kept and kept[:len(texts)] == \
        [f"d{i}" for i in range(len(texts))]
    dups = {d["id"]: d for d in map(json.loads, (tmp_path / "dups.jsonl").read_text().splitlines())}
    assert dups["copy_of_d3"]["duplicate_of"] == 3 and dups["exact_d5"]["similarity"] == 1.0
    assert 0.7 <= dups["copy_of_d3"]["similarity"] < 1.0


def test_minhash_dedup_keeps_distinct_protein_records(tmp_path):
    docs = corpus("protein")[:100]          # 100 different sequences, same header words
    stats = minhash_dedup(_write(tmp_path / "p.jsonl", docs), str(tmp_path / "o.jsonl"), threshold=0.8)
    assert stats["documents"] == 100 and stats["duplicates"] == 0


COPYRIGHT = ("Copyright {year} Example Science Publishing. All rights reserved. No part of this publication may be "
             "reproduced, stored in a retrieval system or transmitted in any form without permission of the "
             "publisher. Printed in the United States. Page {page}.")


def test_page_graph_dedup(tmp_path, capsys):
    prose = stdlib_docstrings()
    docs = []
    for d in range(4):
        pages = [COPYRIGHT.format(year=2000 + d, page=d + 1), prose[3 * d], prose[3 * d + 1]]
        if d < 2:                        # a page shared by only 2 documents: below --min-docs 3, kept
            pages.append(prose[30])
        docs.append({"id": f"book{d}", "text": "\n\n".join(pages), "pages": pages,
                     "page_routes": ["low"] * len(pages)})
    inp = _write(tmp_path / "docs.jsonl", docs)
    rc = main(["data", "dedup-pages", "--input", inp, "--output", str(tmp_path / "o.jsonl"), "--min-docs", "3",
               "--report", str(tmp_path / "r.json")])
    assert rc == 0
    assert "removed 4 of 14 pages in 1 repeated-page clusters" in capsys.readouterr().out
    out = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    for d, rec in enumerate(out):
        assert rec["removed_pages"] == [0]
        assert "Copyright" not in rec["text"] and rec["pages"][0] == prose[3 * d]
        assert len(rec["page_routes"]) == len(rec["pages"])
    assert json.loads((tmp_path / "r.json").read_text())["top_clusters"][0]["documents"] == 4

    stats = page_graph_dedup(inp, str(tmp_path / "o2.jsonl"), min_docs=2, keep_first=True)
    assert stats["repeated_clusters"] == 2 and stats["removed_pages"] == 3 + 1


def test_pages_key_error(tmp_path, capsys):
    inp = _write(tmp_path / "d.jsonl", [{"text": "no pages here"}])
    rc = main(["data", "dedup-pages", "--input", inp, "--output", str(tmp_path / "o.jsonl")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "no list of page strings under 'pages'" in err and "parse-pdf" in err
