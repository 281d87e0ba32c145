"""fastText domain classifier: train on the LLM silver set, report in-domain / out-of-domain precision and
recall, filter jsonl in batches (optionally over several processes).

Model directory layout (``--out DIR`` of ``train-classifier``)::

    DIR/model.bin     fastText supervised model (labels are taxonomy domains, or fine labels with --level label)
    DIR/meta.json     level, label set, in-domain (science) labels, training options
    DIR/report.json   precision / recall / F1 per label and for in-domain vs. other, on each validation set
"""
from __future__ import annotations

import json
import os
import random
import re
import time
from collections import Counter

from megatron_s1.data.curation.errors import CurationError
from megatron_s1.data.curation.formulas import in_domain_score, per_label_report
from megatron_s1.data.curation.jsonl import JsonlWriter, check_input, iter_jsonl, text_of, write_json
from megatron_s1.data.curation.taxonomy import OTHER, UNKNOWN

PREFIX = "__label__"
_TOKEN_RE = re.compile(r"\w+|[^\w\s]")


def _fasttext():
    try:
        import fasttext
    except ImportError:
        raise CurationError("the fastText package is not installed",
                            "pip install fasttext-wheel (or fasttext)") from None
    fasttext.FastText.eprint = lambda *a, **k: None  # silence the load_model warning
    return fasttext


def fasttext_text(text: str, max_chars: int = 10000) -> str:
    """Text as fastText sees it, for training and prediction alike: first ``max_chars`` characters, lower
    case, words and punctuation marks separated by single spaces, on one line."""
    return " ".join(_TOKEN_RE.findall(text[:max_chars].lower()))


def _label_of(doc: dict, level: str, key: str | None = None) -> str:
    if key:
        return str(doc.get(key, UNKNOWN))
    return str(doc.get("silver_domain" if level == "domain" else "silver_label", UNKNOWN))


def _predict(model, texts: list[str]) -> list[tuple[list[str], list[float]]]:
    # Batch predict only: fastText's single-string path breaks under NumPy 2.
    labels, probs = model.predict(texts, k=-1)
    return [([l[len(PREFIX):] for l in ls], list(map(float, ps))) for ls, ps in zip(labels, probs)]


def _read_labeled(path: str, text_key: str, level: str, label_key: str | None) -> list[tuple[str, str]]:
    rows = []
    for i, doc in enumerate(iter_jsonl(path), 1):
        label = _label_of(doc, level, label_key)
        if label == UNKNOWN:
            continue
        rows.append((fasttext_text(text_of(doc, text_key, f"{path} record {i}")), label.replace(" ", "_")))
    return rows


def train_classifier(silver: str, out_dir: str, *, text_key: str = "text", level: str = "domain",
                     valid_fraction: float = 0.1, ood_valid: list[str] | None = None, ood_label_key: str | None = None,
                     science: list[str] | None = None, epoch: int = 10, lr: float = 0.5, word_ngrams: int = 2,
                     dim: int = 64, min_count: int = 1, threads: int = 1, seed: int = 0) -> dict:
    """Train ``out_dir/model.bin`` on a silver jsonl and write ``report.json``; returns the report."""
    if level not in ("domain", "label"):
        raise CurationError(f"--level {level!r} is not 'domain' or 'label'", "pass --level domain or --level label")
    if not 0.0 <= valid_fraction < 1.0:
        raise CurationError(f"--valid-fraction {valid_fraction} is outside [0, 1)", "pass e.g. 0.1")
    rows = _read_labeled(silver, text_key, level, None)
    counts = Counter(label for _, label in rows)
    if len(counts) < 2:
        raise CurationError(f"silver set {silver} has {len(rows)} labelled documents in {len(counts)} class(es)",
                            "a classifier needs at least two classes: label more (and more varied) documents")
    rng = random.Random(seed)
    rng.shuffle(rows)
    n_valid = int(round(len(rows) * valid_fraction))
    valid, train = rows[:n_valid], rows[n_valid:]
    os.makedirs(out_dir, exist_ok=True)
    train_txt = os.path.join(out_dir, "train.txt")
    with open(train_txt, "w", encoding="utf-8") as f:
        for text, label in train:
            f.write(f"{PREFIX}{label} {text}\n")
    fasttext = _fasttext()
    t0 = time.perf_counter()
    model = fasttext.train_supervised(input=train_txt, epoch=epoch, lr=lr, wordNgrams=word_ngrams, dim=dim,
                                      minCount=min_count, thread=threads, seed=seed, verbose=0)
    train_s = time.perf_counter() - t0
    model_path = os.path.join(out_dir, "model.bin")
    model.save_model(model_path)
    labels = sorted(l[len(PREFIX):] for l in model.get_labels())
    if science and not set(science) <= set(labels):
        raise CurationError(f"--in-domain {', '.join(sorted(set(science) - set(labels)))}: not a class of the silver "
                            f"set (classes: {', '.join(labels)})", "pick classes from that list")
    positive = set(science) if science else {l for l in labels if l != OTHER}
    report: dict = {"train_documents": len(train), "train_seconds": round(train_s, 3),
                    "class_counts": dict(counts), "in_domain_labels": sorted(positive), "validation": {}}
    if valid:
        report["validation"]["in_domain"] = _evaluate(model, valid, positive, source=silver)
    for path in ood_valid or []:
        rows_ood = _read_labeled(path, text_key, level, ood_label_key)
        if not rows_ood:
            raise CurationError(f"out-of-domain validation set {path} has no labelled documents",
                                "label it with `megatron-s1 data silver-label` or name the gold field with "
                                "--ood-label-key")
        report["validation"][f"out_of_domain:{os.path.basename(path)}"] = _evaluate(model, rows_ood, positive,
                                                                                      source=path)
    write_json(os.path.join(out_dir, "meta.json"), {
        "level": level, "labels": labels, "in_domain_labels": sorted(positive),
        "options": {"epoch": epoch, "lr": lr, "word_ngrams": word_ngrams, "dim": dim, "min_count": min_count,
                    "seed": seed, "valid_fraction": valid_fraction}})
    write_json(os.path.join(out_dir, "report.json"), report)
    return report


def _evaluate(model, rows: list[tuple[str, str]], positive: set[str], source: str) -> dict:
    preds = _predict(model, [t for t, _ in rows])
    gold = [g for _, g in rows]
    pred = [ls[0] for ls, _ in preds]
    return {"source": source, **per_label_report(gold, pred, positive)}


def load_model(model_dir: str):
    """(fastText model, meta dict) from a ``train-classifier`` output directory (or a bare .bin file)."""
    path = os.path.join(model_dir, "model.bin") if os.path.isdir(model_dir) else model_dir
    check_input(path, "classifier model")
    meta_path = os.path.join(os.path.dirname(path), "meta.json")
    meta = {}
    if os.path.exists(meta_path):
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    try:
        model = _fasttext().load_model(path)
    except ValueError as err:
        raise CurationError(f"{path} is not a fastText model ({err})",
                            "pass the directory written by `megatron-s1 data train-classifier`") from None
    return model, meta


# --- batch filtering ------------------------------------------------------------------------------------

_worker_state: dict = {}


def _init_worker(model_dir: str, keep: set[str], threshold: float, text_key: str) -> None:
    model, _ = load_model(model_dir)
    _worker_state.update(model=model, keep=keep, threshold=threshold, text_key=text_key)


def _score_chunk(chunk: tuple[str, list[tuple[int, str]]]) -> list[tuple[str, bool, str, float]]:
    """(output line, keep?, top label, in-domain score) for ``(path, [(line number, raw jsonl line)])``."""
    st = _worker_state
    path, lines = chunk
    key = st["text_key"]
    docs = []
    for lineno, line in lines:
        try:
            doc = json.loads(line)
        except json.JSONDecodeError as err:
            raise CurationError(f"{path}:{lineno} is not valid JSON ({err.msg})",
                                "each line must be one JSON object") from None
        if not isinstance(doc, dict) or not isinstance(doc.get(key), str):
            raise CurationError(f"{path}:{lineno} has no string field {key!r}", "choose the text field with --text-key")
        docs.append(doc)
    texts = [fasttext_text(d[key]) for d in docs]
    out = []
    for doc, (labels, probs) in zip(docs, _predict(st["model"], texts)):
        score = in_domain_score(labels, probs, st["keep"])
        doc["curation_label"] = labels[0]
        doc["curation_score"] = round(score, 4)
        out.append((json.dumps(doc, ensure_ascii=False), score >= st["threshold"], labels[0], score))
    return out


def _chunks(path: str, size: int):
    chunk: list[tuple[int, str]] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                chunk.append((lineno, line))
                if len(chunk) >= size:
                    yield path, chunk
                    chunk = []
    if chunk:
        yield path, chunk


def filter_jsonl(model_dir: str, input_path: str, output: str, *, keep: list[str] | None = None,
                 threshold: float = 0.5, text_key: str = "text", batch_size: int = 2048, workers: int = 1,
                 rejected: str | None = None) -> dict:
    """Keep documents whose in-domain score (see ``formulas.in_domain_score``) is >= ``threshold``.

    Kept (and rejected) documents get ``curation_label`` (top label) and ``curation_score``. Returns counts
    and throughput."""
    check_input(input_path)
    _, meta = load_model(model_dir)
    labels = set(meta.get("labels", []))
    keep_set = set(keep) if keep else set(meta.get("in_domain_labels", []))
    if not keep_set:
        raise CurationError("no labels to keep", "pass --keep LABEL [LABEL ...]")
    if labels and not keep_set <= labels:
        raise CurationError(f"--keep {', '.join(sorted(keep_set - labels))}: not a label of the classifier "
                            f"(labels: {', '.join(sorted(labels))})", "pick labels from that list")
    if not 0.0 <= threshold <= 1.0:
        raise CurationError(f"--threshold {threshold} is outside [0, 1]", "pass e.g. 0.5")
    if workers < 1 or batch_size < 1:
        raise CurationError("--workers and --batch-size must be >= 1", "pass positive numbers")
    stats = Counter()
    n_bytes = os.path.getsize(input_path)
    t0 = time.perf_counter()
    init = (model_dir, keep_set, threshold, text_key)
    rej = JsonlWriter(rejected) if rejected else None
    with JsonlWriter(output) as out:
        if rej:
            rej.__enter__()
        try:
            if workers == 1:
                _init_worker(*init)
                results = map(_score_chunk, _chunks(input_path, batch_size))
                pool = None
            else:
                import multiprocessing as mp
                pool = mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=init)
                results = pool.imap(_score_chunk, _chunks(input_path, batch_size))
            try:
                for chunk in results:
                    for line, kept, label, _score in chunk:
                        stats["documents"] += 1
                        stats["kept" if kept else "rejected"] += 1
                        stats[f"top:{label}"] += 1
                        if kept:
                            out._f.write(line + "\n")
                        elif rej:
                            rej._f.write(line + "\n")
            finally:
                if pool is not None:
                    pool.close()
                    pool.join()
        finally:
            if rej:
                rej.__exit__(None, None, None)
    seconds = time.perf_counter() - t0
    return {"documents": stats["documents"], "kept": stats["kept"], "rejected": stats["rejected"],
            "top_labels": {k[4:]: v for k, v in stats.items() if k.startswith("top:")},
            "seconds": round(seconds, 3), "docs_per_s": round(stats["documents"] / seconds, 1) if seconds else None,
            "mb_per_s": round(n_bytes / 1e6 / seconds, 2) if seconds else None}
