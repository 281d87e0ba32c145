"""`megatron-s1 data` sub-commands for science data curation (docs/curation.md).

    megatron-s1 data silver-label --taxonomy tax.yaml --input pool.jsonl --sample 20000 --output silver.jsonl \\
        --llm-url http://localhost:8000/v1 --llm-model qwen3-8b
    megatron-s1 data train-classifier --silver silver.jsonl --out clf/ --ood-valid other_crawl_silver.jsonl
    megatron-s1 data filter --model clf/ --input pool.jsonl --output science.jsonl --threshold 0.5
    megatron-s1 data parse-pdf pdfs/ --output docs.jsonl --vlm-url http://localhost:8001/v1 --vlm-model internvl
    megatron-s1 data web-domains --input pages.jsonl --taxonomy tax.yaml --rules rules.yaml --output web.jsonl \\
        --llm-url http://localhost:8000/v1 --llm-model qwen3-8b
    megatron-s1 data dedup-minhash --input science.jsonl --output dedup.jsonl
    megatron-s1 data dedup-pages --input docs.jsonl --output docs_dedup.jsonl --min-docs 3
"""
from __future__ import annotations

import json
import sys

from megatron_s1.data.cli import HelpFormatter, data_subparsers, safe
from megatron_s1.data.curation.llm import add_client_args, client_from_args, require_client

RAW = HelpFormatter


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False))


def _cmd_silver_label(args) -> int:
    from megatron_s1.data.curation.errors import CurationError
    from megatron_s1.data.curation.jsonl import JsonlWriter, iter_jsonl
    from megatron_s1.data.curation.taxonomy import iter_texts, load_taxonomy, reservoir_sample, silver_label

    taxonomy = load_taxonomy(args.taxonomy)
    client = require_client(client_from_args(args, "llm"))
    docs = iter_texts(iter_jsonl(args.input), args.text_key, args.input)
    docs = reservoir_sample(docs, args.sample, args.seed) if args.sample else list(docs)
    if not docs:
        raise CurationError(f"{args.input} holds no documents", "pass a non-empty jsonl")
    labelled, counts = silver_label(client, taxonomy, docs, args.text_key, args.concurrency, args.max_chars)
    with JsonlWriter(args.output) as out:
        for doc in labelled:
            out.write(doc)
    shown = ", ".join(f"{k} {v}" for k, v in counts.most_common())
    print(f"labelled {len(labelled)} documents ({shown}) -> {args.output}")
    if counts.get("unknown"):
        print(f"note: {counts['unknown']} answers matched no label (silver_domain 'unknown'; left out of training)",
              file=sys.stderr)
    return 0


def _cmd_train_classifier(args) -> int:
    from megatron_s1.data.curation.classifier import train_classifier

    report = train_classifier(args.silver, args.out, text_key=args.text_key, level=args.level,
                              valid_fraction=args.valid_fraction, ood_valid=args.ood_valid,
                              ood_label_key=args.ood_label_key, science=args.in_domain, epoch=args.epoch,
                              lr=args.lr, word_ngrams=args.word_ngrams, dim=args.dim, min_count=args.min_count,
                              threads=args.threads, seed=args.seed)
    print(f"trained on {report['train_documents']} documents in {report['train_seconds']} s -> {args.out}/model.bin")
    print(f"{'validation set':<40} {'n':>6} {'acc':>6} {'P(in)':>6} {'R(in)':>6} {'F1(in)':>6}")
    for name, r in report["validation"].items():
        b = r.get("binary", {})
        print(f"{name[:40]:<40} {r['n']:>6} {r['accuracy']:>6.3f} {b.get('precision', 0):>6.3f} "
              f"{b.get('recall', 0):>6.3f} {b.get('f1', 0):>6.3f}")
    print(f"per-label precision/recall: {args.out}/report.json")
    return 0


def _cmd_filter(args) -> int:
    from megatron_s1.data.curation.classifier import filter_jsonl

    stats = filter_jsonl(args.model, args.input, args.output, keep=args.keep, threshold=args.threshold,
                         text_key=args.text_key, batch_size=args.batch_size, workers=args.workers,
                         rejected=args.rejected)
    print(f"kept {stats['kept']} of {stats['documents']} documents -> {args.output} "
          f"({stats['docs_per_s']} docs/s, {stats['mb_per_s']} MB/s)")
    return 0


def _cmd_parse_pdf(args) -> int:
    from megatron_s1.data.curation.jsonl import JsonlWriter, write_json
    from megatron_s1.data.curation.pdf import VLMPageParser, parse_pdfs

    high = None
    if args.hard_parser:
        high = _load_parser(args.hard_parser)
    client = client_from_args(args, "vlm")
    if client is not None:
        if high is not None:
            from megatron_s1.data.curation.errors import CurationError
            raise CurationError("both --hard-parser and a VLM client given", "pass only one high-cost parser")
        high = VLMPageParser(client, dpi=args.dpi)
    with JsonlWriter(args.output) as out:
        stats = parse_pdfs(args.inputs, out, skip_bad=args.skip_bad, low_cost=args.low_cost,
                           density_threshold=args.density_threshold, min_chars=args.min_chars, high_cost=high,
                           concurrency=args.concurrency)
    if args.report:
        write_json(args.report, stats)
    print(f"parsed {stats['files']} PDFs, {stats['pages']} pages -> {args.output}; routed "
          f"{stats['hard_pages']} hard pages ({stats['routed_fraction']:.1%}) to the high-cost parser; "
          f"low-cost {stats['low_cost_pages_per_s']} pages/s")
    if stats["skipped"]:
        print(f"skipped {len(stats['skipped'])} unreadable PDFs: {', '.join(stats['skipped'][:5])}", file=sys.stderr)
    if high is None and stats["hard_pages"]:
        print("note: no --vlm-url/--vlm-client/--hard-parser: hard pages keep their low-cost text "
              "(page_routes 'hard-unparsed')", file=sys.stderr)
    return 0


def _load_parser(spec: str):
    import importlib

    from megatron_s1.data.curation.errors import CurationError

    module_name, sep, attr = spec.partition(":")
    try:
        parser = getattr(importlib.import_module(module_name), attr)() if sep else None
    except (ImportError, AttributeError) as err:
        raise CurationError(f"cannot load --hard-parser {spec!r} ({err})",
                            "make the module importable (PYTHONPATH) and check the name") from None
    if parser is None or not callable(getattr(parser, "parse", None)):
        raise CurationError(f"--hard-parser {spec!r} is not MODULE:FACTORY returning an object with "
                            "parse(pdf_path, page_index, low_cost_text)", "fix the spec or the factory")
    return parser


def _cmd_web_domains(args) -> int:
    from megatron_s1.data.curation.taxonomy import load_taxonomy
    from megatron_s1.data.curation.web import load_rules, run_web_domains

    taxonomy = load_taxonomy(args.taxonomy)
    rules = load_rules(args.rules, taxonomy)
    client = require_client(client_from_args(args, "llm"))
    summary = run_web_domains(args.input, args.output, client, taxonomy, rules, url_key=args.url_key,
                              text_key=args.text_key, samples_per_domain=args.samples_per_domain,
                              domain_levels=args.domain_levels, seed=args.seed, concurrency=args.concurrency,
                              rewrite_llm=not args.no_rewrite_llm, discarded=args.discarded, report_path=args.report)
    a = summary["pages_by_action"]
    print(f"{summary['pages']} pages in {summary['domains']} domains ({summary['sampled_pages']} sampled): "
          f"keep {a['keep']}, rewrite {a['rewrite']}, discard {a['discard']} -> {args.output}")
    return 0


def _cmd_dedup_minhash(args) -> int:
    from megatron_s1.data.curation.dedup import minhash_dedup

    stats = minhash_dedup(args.input, args.output, text_key=args.text_key, threshold=args.threshold,
                          num_perm=args.num_perm, ngram=args.ngram, seed=args.seed, duplicates=args.duplicates)
    print(f"kept {stats['kept']} of {stats['documents']} documents ({stats['duplicates']} near-duplicates) -> "
          f"{args.output} ({stats['docs_per_s']} docs/s)")
    return 0


def _cmd_dedup_pages(args) -> int:
    from megatron_s1.data.curation.dedup import page_graph_dedup
    from megatron_s1.data.curation.jsonl import write_json

    stats = page_graph_dedup(args.input, args.output, pages_key=args.pages_key, text_key=args.text_key,
                             threshold=args.threshold, num_perm=args.num_perm, ngram=args.ngram,
                             min_docs=args.min_docs, keep_first=args.keep_first, seed=args.seed)
    if args.report:
        write_json(args.report, stats)
    print(f"removed {stats['removed_pages']} of {stats['pages']} pages in {stats['repeated_clusters']} repeated-page "
          f"clusters across {stats['documents']} documents -> {args.output} ({stats['pages_per_s']} pages/s)")
    for c in stats["top_clusters"][:5]:
        print(f"  {c['documents']} docs, {c['pages']} pages: {c['sample']!r}")
    return 0


def _add_io(p, text_key: bool = True) -> None:
    p.add_argument("--input", required=True, help="input .jsonl file, one JSON object per line")
    p.add_argument("--output", required=True, help="output .jsonl file (parent directories are created)")
    if text_key:
        p.add_argument("--text-key", default="text", help="field holding the document text (default: text)")


def register(subparsers) -> None:
    """Add the curation sub-commands to `megatron-s1 data` (created by megatron_s1.data.cli)."""
    sub = data_subparsers(subparsers)

    p = sub.add_parser("silver-label", formatter_class=RAW,
                       help="label a sample of documents with an LLM and a taxonomy (silver set for the classifier)",
                       description="Sample documents, ask the LLM for one taxonomy label each, write them with "
                       "'silver_label' and 'silver_domain' fields.\n\nTaxonomy file (YAML/JSON), domain -> labels:\n"
                       "  physics: [mechanics, quantum physics]\n  chemistry: [organic chemistry]\n"
                       "  other: [news, sports]     # optional out-of-domain bucket; 'other' is always allowed")
    _add_io(p)
    p.add_argument("--taxonomy", required=True, help="taxonomy file (YAML or JSON mapping domain -> list of labels)")
    p.add_argument("--sample", type=int, default=0,
                   help="label a uniform random sample of this many documents (default 0: all documents)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    p.add_argument("--max-chars", type=int, default=2000,
                   help="characters of each document shown to the LLM (default: 2000)")
    add_client_args(p, "llm", "LLM")
    p.set_defaults(func=safe(_cmd_silver_label))

    p = sub.add_parser("train-classifier", formatter_class=RAW,
                       help="train a fastText domain classifier on a silver set; report in/out-of-domain P/R",
                       description="Train a fastText classifier on the output of silver-label and write "
                       "OUT/model.bin, OUT/meta.json and OUT/report.json. Precision/recall are reported per label "
                       "and for 'in-domain (science) vs. other' on a held-out part of the silver set (in-domain "
                       "validation) and on each --ood-valid file (out-of-domain validation: another source, "
                       "e.g. a different crawl, labelled by silver-label or by hand).")
    p.add_argument("--silver", required=True, help="silver .jsonl from `megatron-s1 data silver-label`")
    p.add_argument("--out", required=True, help="output directory for model.bin, meta.json, report.json, train.txt")
    p.add_argument("--text-key", default="text", help="field holding the document text (default: text)")
    p.add_argument("--level", choices=("domain", "label"), default="domain",
                   help="classes: taxonomy domains (silver_domain, default) or fine labels (silver_label)")
    p.add_argument("--valid-fraction", type=float, default=0.1,
                   help="share of the silver set held out for in-domain validation (default: 0.1)")
    p.add_argument("--ood-valid", nargs="+", metavar="JSONL", default=[],
                   help="out-of-domain validation file(s) from another source, with silver_domain/silver_label "
                   "or the field named by --ood-label-key")
    p.add_argument("--ood-label-key", default=None,
                   help="gold label field of --ood-valid files (default: silver_domain or silver_label by --level)")
    p.add_argument("--in-domain", nargs="+", metavar="LABEL", default=None,
                   help="labels counted as in-domain for the binary precision/recall and the filter's default "
                   "--keep (default: every label except 'other')")
    p.add_argument("--epoch", type=int, default=10, help="fastText epochs (default: 10)")
    p.add_argument("--lr", type=float, default=0.5, help="fastText learning rate (default: 0.5)")
    p.add_argument("--word-ngrams", type=int, default=2, help="fastText word n-gram length (default: 2)")
    p.add_argument("--dim", type=int, default=64, help="fastText embedding size (default: 64)")
    p.add_argument("--min-count", type=int, default=1, help="fastText minimum word count (default: 1)")
    p.add_argument("--threads", type=int, default=1,
                   help="fastText training threads (default: 1, which makes training reproducible)")
    p.add_argument("--seed", type=int, default=0, help="split and training seed (default: 0)")
    p.set_defaults(func=safe(_cmd_train_classifier))

    p = sub.add_parser("filter", formatter_class=RAW,
                       help="keep the documents a trained classifier scores as in-domain (batched, multi-process)",
                       description="Score every document with the classifier; keep it when the summed probability "
                       "of the --keep labels is >= --threshold (formulas.in_domain_score). Output documents get "
                       "'curation_label' (top label) and 'curation_score'.")
    _add_io(p)
    p.add_argument("--model", required=True, help="directory written by train-classifier (or a model.bin)")
    p.add_argument("--keep", nargs="+", metavar="LABEL", default=None,
                   help="labels to keep (default: the classifier's in-domain labels, see meta.json)")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="minimum in-domain score in [0, 1]; lower = more recall (default: 0.5)")
    p.add_argument("--batch-size", type=int, default=2048, help="documents per prediction batch (default: 2048)")
    p.add_argument("--workers", type=int, default=1,
                   help="processes, each with its own copy of the model; output order is kept (default: 1)")
    p.add_argument("--rejected", default=None, help="also write rejected documents to this .jsonl")
    p.set_defaults(func=safe(_cmd_filter))

    p = sub.add_parser("parse-pdf", formatter_class=RAW,
                       help="page-level PDF parsing: low-cost parser everywhere, high-cost (VLM) only on hard pages",
                       description="Split PDFs into pages, extract each with a low-cost parser, score symbol density "
                       "(formulas.symbol_density) and route a page to the high-cost parser when density >= "
                       "--density-threshold or it has fewer than --min-chars visible characters "
                       "(formulas.is_hard_page). Each path is post-processed, pages are merged into one document "
                       "per PDF: {id, source, text, pages, page_routes, page_density, num_pages, hard_pages}. "
                       "Prints the routed fraction.")
    p.add_argument("inputs", nargs="+", help="PDF files and/or directories (searched recursively for *.pdf)")
    p.add_argument("--output", required=True, help="output .jsonl, one document per PDF")
    p.add_argument("--low-cost", choices=("pypdf", "pdfminer"), default="pypdf",
                   help="low-cost parser (default: pypdf; pdfminer is slower and writes unmapped glyphs as (cid:N))")
    p.add_argument("--density-threshold", type=float, default=0.08,
                   help="symbol density in [0, 1] at or above which a page is hard (default: 0.08)")
    p.add_argument("--min-chars", type=int, default=50,
                   help="pages with fewer visible characters are hard: no text layer (default: 50)")
    p.add_argument("--hard-parser", metavar="MODULE:FACTORY", default=None,
                   help="high-cost parser: factory returning an object with parse(pdf_path, page_index, "
                   "low_cost_text) -> str (alternative to a VLM client)")
    p.add_argument("--dpi", type=int, default=144, help="render resolution of pages sent to the VLM (default: 144)")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable or encrypted PDFs instead of stopping")
    p.add_argument("--report", default=None, help="write the summary (routed fraction, timings) to this JSON file")
    add_client_args(p, "vlm", "VLM", required=False)
    p.set_defaults(func=safe(_cmd_parse_pdf))

    p = sub.add_parser("web-domains", formatter_class=RAW,
                       help="domain-centric web parsing: keep / discard / rewrite every page by its URL domain",
                       description="Group pages by URL domain, label a sample of each domain with the LLM, decide "
                       "keep / discard / rewrite per domain with the rules file, apply it to every page "
                       "(rewrite = LLM rewrite into clean scientific text).\n\nRules file (YAML), first match wins:\n"
                       "  rules:\n    - {action: keep, min_fraction: 0.6}      # share of science labels in samples\n"
                       "    - {action: rewrite, min_fraction: 0.2, min_pages: 5}\n"
                       "    - {action: keep, of: [chemistry], min_fraction: 0.5}\n"
                       "  default: discard\n  min_samples: 1\n"
                       "Conditions: min_fraction, max_fraction, min_pages, max_pages, of (taxonomy domains).")
    _add_io(p)
    p.add_argument("--url-key", default="url", help="field holding the page URL (default: url)")
    p.add_argument("--taxonomy", required=True, help="taxonomy file (see `data silver-label --help`)")
    p.add_argument("--rules", required=True, help="rules file (YAML, format above)")
    p.add_argument("--samples-per-domain", type=int, default=8,
                   help="pages labelled per domain (uniform sample; default: 8)")
    p.add_argument("--domain-levels", type=int, default=0,
                   help="group by the last N labels of the host (2: a.b.example.org -> example.org); "
                   "default 0: full host without www.")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    p.add_argument("--no-rewrite-llm", action="store_true",
                   help="write rewrite-domain pages unchanged (tagged curation_action=rewrite) instead of "
                   "rewriting them with the LLM")
    p.add_argument("--discarded", default=None, help="also write discarded pages to this .jsonl")
    p.add_argument("--report", default=None, help="per-domain decisions (labels, share, rule) as JSON")
    add_client_args(p, "llm", "LLM")
    p.set_defaults(func=safe(_cmd_web_domains))

    p = sub.add_parser("dedup-minhash", formatter_class=RAW,
                       help="remove near-duplicate documents (MinHash + LSH, first occurrence kept)",
                       description="Remove documents whose estimated Jaccard similarity of word n-gram shingles "
                       "(formulas.minhash_jaccard_estimate) to an earlier kept document is >= --threshold.")
    _add_io(p)
    p.add_argument("--threshold", type=float, default=0.8, help="Jaccard similarity in (0, 1] (default: 0.8)")
    p.add_argument("--num-perm", type=int, default=128, help="MinHash permutations (default: 128)")
    p.add_argument("--ngram", type=int, default=5, help="words per shingle (default: 5)")
    p.add_argument("--seed", type=int, default=1, help="MinHash seed (default: 1)")
    p.add_argument("--duplicates", default=None,
                   help="write {index, id, duplicate_of, similarity} of each removed document to this .jsonl")
    p.set_defaults(func=safe(_cmd_dedup_minhash))

    p = sub.add_parser("dedup-pages", formatter_class=RAW,
                       help="global page-level graph dedup: drop pages repeated across many PDFs (boilerplate)",
                       description="Near-duplicate pages (MinHash Jaccard >= --threshold) are joined into a graph; "
                       "each connected component spanning >= --min-docs documents (copyright, licence, front "
                       "matter pages) is removed from every document and the document text re-merged.")
    _add_io(p, text_key=False)
    p.add_argument("--pages-key", default="pages", help="field holding the list of page texts (default: pages)")
    p.add_argument("--text-key", default="text", help="field rewritten with the merged remaining pages (default: text)")
    p.add_argument("--threshold", type=float, default=0.8, help="page Jaccard similarity in (0, 1] (default: 0.8)")
    p.add_argument("--num-perm", type=int, default=128, help="MinHash permutations (default: 128)")
    p.add_argument("--ngram", type=int, default=3, help="words per shingle (default: 3)")
    p.add_argument("--min-docs", type=int, default=3,
                   help="a repeated page must occur in at least this many documents (default: 3)")
    p.add_argument("--keep-first", action="store_true",
                   help="keep the copy in the first document instead of removing every copy")
    p.add_argument("--seed", type=int, default=1, help="MinHash seed (default: 1)")
    p.add_argument("--report", default=None, help="write the summary and top repeated pages to this JSON file")
    p.set_defaults(func=safe(_cmd_dedup_pages))
