"""Throughput of the curation tools on generated inputs (no LLM/VLM; those are bounded by the server).

    python -m megatron_s1.data.curation.bench [--docs 20000] [--pdfs 20] [--workdir DIR]

Filter/dedup inputs: the bundled tiny corpus (protein, SMILES, stdlib docstrings) repeated to ``--docs``
documents, every copy after the first with a few words changed (so dedup has near-duplicates to find).
PDF inputs: reportlab PDFs of 10 pages each (7 prose, 2 equation, 1 copyright page shared by all PDFs).
Prints a Markdown table (the numbers in docs/performance.md, section Data curation).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import textwrap
import time
from importlib import resources

SOURCE_DOMAIN = {"protein": "biology", "smiles": "chemistry", "general": "other"}


def _corpus() -> list[dict]:
    text = resources.files("megatron_s1.data").joinpath("corpus/tiny_corpus.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _make_docs(path: str, n: int, seed: int = 0) -> int:
    rng = random.Random(seed)
    base = _corpus()
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            doc = dict(base[i % len(base)])
            if i >= len(base):
                words = doc["text"].split(" ")
                for _ in range(3):
                    words[rng.randrange(len(words))] = f"w{rng.randrange(10**6)}"
                doc["text"] = " ".join(words)
            f.write(json.dumps(doc) + "\n")
    return os.path.getsize(path)


def _make_pdfs(d: str, n: int) -> None:
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    words = " ".join(x["text"] for x in _corpus() if x["source"] == "general").split()
    eq = ["α + β = γ ;  ∑ x ≤ ∫ f dx ;  ∂ψ/∂t = α ∇ψ", "E = mc^2 ,  x_{i+1} = x_i + h f(x_i) ,  a^2 + b^2 = c^2"]
    for k in range(n):
        c = canvas.Canvas(os.path.join(d, f"doc{k}.pdf"), pagesize=A4)
        for p in range(10):
            y = 800
            if p == 0:
                c.setFont("Helvetica", 10)
                c.drawString(50, y, f"Copyright {2000 + k} Example Publishing. All rights reserved. No part may be")
                c.drawString(50, y - 13, "reproduced without the written permission of the publisher.")
                c.showPage()
                continue
            start = ((k * 10 + p) * 331) % len(words)     # a different window of real prose on every page
            window = " ".join((words + words)[start:start + 330])
            if p in (4, 8):                               # equation pages, with a little prose between
                for i in range(24):
                    if i % 3 == 0:
                        c.setFont("Helvetica", 12)
                        c.drawString(60, y - 18 * i, window[i * 20:i * 20 + 60])
                    else:
                        c.setFont("Symbol" if i % 2 == 0 else "Helvetica", 12)
                        c.drawString(60, y - 18 * i, eq[i % 2])
            else:
                c.setFont("Helvetica", 10)
                for i, line in enumerate(textwrap.wrap(window, 95)[:55]):
                    c.drawString(50, y - 13 * i, line)
            c.showPage()
        c.save()


def run(docs: int, pdfs: int, workdir: str) -> list[tuple[str, str, str]]:
    from megatron_s1.data.curation.classifier import filter_jsonl, train_classifier
    from megatron_s1.data.curation.dedup import minhash_dedup, page_graph_dedup
    from megatron_s1.data.curation.jsonl import JsonlWriter
    from megatron_s1.data.curation.pdf import parse_pdfs

    rows = []
    pool = os.path.join(workdir, "pool.jsonl")
    size = _make_docs(pool, docs)
    silver = os.path.join(workdir, "silver.jsonl")
    with open(silver, "w", encoding="utf-8") as f:
        for doc in _corpus():
            f.write(json.dumps({**doc, "silver_domain": SOURCE_DOMAIN[doc["source"]]}) + "\n")
    rep = train_classifier(silver, os.path.join(workdir, "clf"))
    rows.append(("train-classifier", f"{len(_corpus())} silver docs", f"{rep['train_seconds']:.2f} s"))
    for workers in (1, 2):
        s = filter_jsonl(os.path.join(workdir, "clf"), pool, os.path.join(workdir, "kept.jsonl"), workers=workers)
        rows.append((f"filter --workers {workers}", f"{docs} docs, {size / 1e6:.0f} MB",
                     f"{s['docs_per_s']:.0f} docs/s, {s['mb_per_s']:.1f} MB/s"))
    n = min(docs, 5000)
    small = os.path.join(workdir, "small.jsonl")
    with open(pool, encoding="utf-8") as src, open(small, "w", encoding="utf-8") as dst:
        for _, line in zip(range(n), src):
            dst.write(line)
    s = minhash_dedup(small, os.path.join(workdir, "dedup.jsonl"))
    rows.append(("dedup-minhash (128 perm, 5-gram, t=0.8)", f"{n} docs",
                 f"{s['docs_per_s']:.0f} docs/s ({s['duplicates']} near-dups)"))
    pdf_dir = os.path.join(workdir, "pdfs")
    os.makedirs(pdf_dir, exist_ok=True)
    _make_pdfs(pdf_dir, pdfs)
    for low in ("pypdf", "pdfminer"):
        out = os.path.join(workdir, f"docs_{low}.jsonl")
        t0 = time.perf_counter()
        with JsonlWriter(out) as w:
            s = parse_pdfs([pdf_dir], w, low_cost=low)
        wall = time.perf_counter() - t0
        rows.append((f"parse-pdf --low-cost {low}", f"{s['pages']} pages",
                     f"{s['pages'] / wall:.0f} pages/s, routed {s['routed_fraction']:.1%}"))
    s = page_graph_dedup(os.path.join(workdir, "docs_pypdf.jsonl"), os.path.join(workdir, "docs_dedup.jsonl"))
    rows.append(("dedup-pages (min-docs 3)", f"{s['pages']} pages",
                 f"{s['pages_per_s']:.0f} pages/s, removed {s['removed_pages']}"))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--docs", type=int, default=20000, help="documents for filter/dedup (default: 20000)")
    p.add_argument("--pdfs", type=int, default=20, help="generated PDFs of 10 pages (default: 20)")
    p.add_argument("--workdir", default=None, help="keep inputs/outputs here (default: a temporary directory)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or tmp
        os.makedirs(workdir, exist_ok=True)
        rows = run(args.docs, args.pdfs, workdir)
    print("| step | input | throughput |\n|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
