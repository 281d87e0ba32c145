"""Near-duplicate removal with MinHash (datasketch).

- ``minhash_dedup``: document level. Stream documents; each one's MinHash over word n-gram shingles
  (``formulas.word_shingles``) is looked up in an LSH index of the documents kept so far; a candidate whose
  estimated Jaccard (``formulas.minhash_jaccard_estimate``) is >= ``threshold`` makes it a duplicate (the
  first occurrence is kept), otherwise it is kept and indexed.
- ``page_graph_dedup``: page level, global across PDFs. Every page of every document (the ``pages`` list
  written by ``parse-pdf``) is a node; an edge joins two pages whose estimated Jaccard is >= ``threshold``;
  each connected component is one repeated page. A component spanning at least ``min_docs`` different
  documents is boilerplate (copyright notice, journal front matter, licence page): its pages are removed
  everywhere (``keep_first`` keeps the copy in the first document). Components can chain (A~B, B~C) and so
  may group pages that are not directly similar; keep ``threshold`` high.
"""
from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Iterable

import numpy as np

from megatron_s1.data.curation.errors import CurationError
from megatron_s1.data.curation.formulas import minhash_jaccard_estimate, word_shingles
from megatron_s1.data.curation.jsonl import JsonlWriter, iter_jsonl, text_of


def _datasketch():
    try:
        import datasketch
    except ImportError:
        raise CurationError("the datasketch package is not installed", "pip install datasketch") from None
    return datasketch


def _check(threshold: float, num_perm: int, ngram: int) -> None:
    if not 0.0 < threshold <= 1.0:
        raise CurationError(f"--threshold {threshold} is outside (0, 1]", "pass e.g. 0.8")
    if num_perm < 16:
        raise CurationError(f"--num-perm {num_perm} is below 16", "pass e.g. 128")
    if ngram < 1:
        raise CurationError(f"--ngram {ngram} is below 1", "pass e.g. 5")


def signatures(texts: Iterable[str], ngram: int, num_perm: int, seed: int = 1) -> list:
    """datasketch MinHash objects, one per text (shared permutations); an empty text gets an empty one."""
    ds = _datasketch()
    shingle_sets = [[s.encode("utf-8") for s in word_shingles(t, ngram)] for t in texts]
    return ds.MinHash.bulk(shingle_sets, num_perm=num_perm, seed=seed)


def minhash_dedup(input_path: str, output: str, *, text_key: str = "text", threshold: float = 0.8,
                  num_perm: int = 128, ngram: int = 5, seed: int = 1, batch: int = 512,
                  duplicates: str | None = None) -> dict:
    """Drop near-duplicate documents (see module docstring); returns counts and throughput."""
    _check(threshold, num_perm, ngram)
    ds = _datasketch()
    lsh = ds.MinHashLSH(threshold=threshold, num_perm=num_perm)
    kept_sigs: dict[str, np.ndarray] = {}
    stats = Counter()
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:  # the writers commit together, only if nothing failed
        dup_writer = stack.enter_context(JsonlWriter(duplicates)) if duplicates else None
        out = stack.enter_context(JsonlWriter(output))
        buf: list[dict] = []

        def flush():
            sigs = signatures([d[text_key] for d in buf], ngram, num_perm, seed)
            for doc, m in zip(buf, sigs):
                stats["documents"] += 1
                if m.is_empty():
                    stats["kept"] += 1
                    stats["empty"] += 1
                    out.write(doc)
                    continue
                best, best_key = 0.0, None
                for key in lsh.query(m):
                    est = minhash_jaccard_estimate(m.hashvalues, kept_sigs[key])
                    if est > best:
                        best, best_key = est, key
                if best_key is not None and best >= threshold:
                    stats["duplicates"] += 1
                    if dup_writer:
                        dup_writer.write({"index": stats["documents"] - 1, "id": doc.get("id"),
                                          "duplicate_of": int(best_key), "similarity": round(best, 4)})
                    continue
                key = str(stats["documents"] - 1)
                lsh.insert(key, m)
                kept_sigs[key] = m.hashvalues
                stats["kept"] += 1
                out.write(doc)
            buf.clear()

        for i, doc in enumerate(iter_jsonl(input_path), 1):
            text_of(doc, text_key, f"{input_path} record {i}")
            buf.append(doc)
            if len(buf) >= batch:
                flush()
        flush()
    seconds = time.perf_counter() - t0
    return {"documents": stats["documents"], "kept": stats["kept"], "duplicates": stats["duplicates"],
            "seconds": round(seconds, 3),
            "docs_per_s": round(stats["documents"] / seconds, 1) if seconds else None}


def page_graph_dedup(input_path: str, output: str, *, pages_key: str = "pages", text_key: str = "text",
                     threshold: float = 0.8, num_perm: int = 128, ngram: int = 3, min_docs: int = 3,
                     keep_first: bool = False, seed: int = 1, report_top: int = 20) -> dict:
    """Remove pages repeated across at least ``min_docs`` documents (see module docstring)."""
    import networkx as nx

    from megatron_s1.data.curation.pdf import merge_pages

    _check(threshold, num_perm, ngram)
    if min_docs < 2:
        raise CurationError(f"--min-docs {min_docs} is below 2", "a repeated page spans at least 2 documents")
    ds = _datasketch()
    t0 = time.perf_counter()
    docs = []
    for i, doc in enumerate(iter_jsonl(input_path), 1):
        pages = doc.get(pages_key)
        if not isinstance(pages, list) or not all(isinstance(p, str) for p in pages):
            raise CurationError(f"{input_path} record {i} has no list of page strings under {pages_key!r}",
                                "pass the output of `megatron-s1 data parse-pdf` or set --pages-key")
        docs.append(doc)
    nodes = [(d, p) for d, doc in enumerate(docs) for p in range(len(doc[pages_key]))]
    sigs = signatures([docs[d][pages_key][p] for d, p in nodes], ngram, num_perm, seed)
    lsh = ds.MinHashLSH(threshold=threshold, num_perm=num_perm)
    graph = nx.Graph()
    for n, m in enumerate(sigs):
        if m.is_empty():
            continue
        graph.add_node(n)
        for other in lsh.query(m):
            if minhash_jaccard_estimate(m.hashvalues, sigs[other].hashvalues) >= threshold:
                graph.add_edge(n, other)
        lsh.insert(n, m)
    removed: dict[int, set[int]] = {}
    clusters = []
    for comp in nx.connected_components(graph):
        doc_ids = {nodes[n][0] for n in comp}
        if len(doc_ids) < min_docs:
            continue
        members = sorted(comp)
        first = members[0]
        clusters.append({"documents": len(doc_ids), "pages": len(members),
                         "sample": " ".join(docs[nodes[first][0]][pages_key][nodes[first][1]].split())[:100]})
        for n in members[1:] if keep_first else members:
            d, p = nodes[n]
            removed.setdefault(d, set()).add(p)
    removed_pages = 0
    with JsonlWriter(output) as out:
        for d, doc in enumerate(docs):
            drop = removed.get(d, set())
            if drop:
                pages = [pg for p, pg in enumerate(doc[pages_key]) if p not in drop]
                doc = {**doc, pages_key: pages, text_key: merge_pages(pages), "removed_pages": sorted(drop)}
                for key in ("page_routes", "page_density"):   # parse-pdf's per-page lists stay aligned
                    if isinstance(doc.get(key), list) and len(doc[key]) == len(pages) + len(drop):
                        doc[key] = [v for p, v in enumerate(doc[key]) if p not in drop]
                removed_pages += len(drop)
            out.write(doc)
    seconds = time.perf_counter() - t0
    clusters.sort(key=lambda c: (-c["documents"], -c["pages"]))
    return {"documents": len(docs), "pages": len(nodes), "repeated_clusters": len(clusters),
            "removed_pages": removed_pages, "seconds": round(seconds, 3),
            "pages_per_s": round(len(nodes) / seconds, 1) if seconds else None, "top_clusters": clusters[:report_top]}
