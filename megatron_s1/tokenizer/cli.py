"""`megatron-s1 tokenizer ...`: train domain models, build a dynamic tokenizer directory, measure compression.

    megatron-s1 tokenizer train-domain --domain smiles --input first_5K.smi --vocab-size 1024 --out DIR
    megatron-s1 tokenizer build --base BASE_DIR --domain SMILES=DIR/tokenizer_SMILES.model --out TOKDIR
    megatron-s1 tokenizer compression --tokenizer TOKDIR --data chembl.csv proteins.faa

Also runnable as `python -m megatron_s1.tokenizer.cli ...`.
"""
from __future__ import annotations

import argparse
import functools
import sys

from megatron_s1.config.schema import ConfigError
from megatron_s1.tokenizer.training import DOMAINS


def _input_errors(func):
    """SentencePiece and our tokenizer code report bad input as ValueError / RuntimeError: exit 2, one line."""
    @functools.wraps(func)
    def wrapper(args) -> int:
        try:
            return func(args)
        except (ValueError, RuntimeError) as err:
            if isinstance(err, ConfigError):
                raise
            raise ConfigError(str(err)) from err
    return wrapper


def _cmd_train_domain(args) -> int:
    from megatron_s1.tokenizer.training import train_domain

    path = train_domain(args.domain, args.input, args.vocab_size, args.out, column=args.column, name=args.name,
                        max_piece_length=args.max_piece_length)
    print(f"wrote {path}")
    return 0


def _parse_models(items: list[str]) -> dict[str, str]:
    models = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--domain {item!r}: expected NAME=PATH, e.g. SMILES=out/tokenizer_SMILES.model")
        models[name] = path
    return models


def _cmd_build(args) -> int:
    from megatron_s1.tokenizer.bpe import bundled_tokenizer_dir
    from megatron_s1.tokenizer.training import build_directory

    layout = build_directory(args.base or bundled_tokenizer_dir(), args.out, _parse_models(args.domain),
                             layout=args.layout)
    for d in layout.domains:
        tags = " ".join(f"<{t}>" for t in d.tags)
        print(f"{d.name}: offset {d.offset}, tags {tags or '-'}, auto-detect {d.detect or '-'}")
    print(f"wrote {args.out} ({layout.generation} layout)")
    return 0


def _cmd_compression(args) -> int:
    from megatron_s1.tokenizer import load_tokenizer
    from megatron_s1.tokenizer.compression import corpus_compression
    from megatron_s1.tokenizer.dynamic import DynamicTokenizer
    from megatron_s1.tokenizer.training import read_documents

    tok = load_tokenizer(args.tokenizer, **({} if args.backend == "auto" else {"backend": args.backend}))
    if not isinstance(tok, DynamicTokenizer):
        raise ConfigError(f"{args.tokenizer!r} is a plain BPE directory (no domain models); build a dynamic "
                         "one with `megatron-s1 tokenizer build`")
    base = tok.base
    print(f"{'file':<40} {'docs':>7} {'chars':>10} {'base CR':>8} {'dynamic CR':>10} {'gain':>6}")
    for path in args.data:
        docs = list(read_documents(path, args.column))
        if args.limit:
            docs = docs[:args.limit]
        if not docs:
            raise ConfigError(f"no documents in {path}; pass a non-empty file")
        if args.tag:
            docs = [f"<{args.tag}>{d}</{args.tag}>" for d in docs]
        b = corpus_compression(lambda batch: [base._encoding.encode_ordinary(t) for t in batch], docs)
        d = corpus_compression(tok.encode_batch, docs)
        print(f"{path[-40:]:<40} {d['docs']:>7} {d['chars']:>10} {b['cr']:>8.3f} {d['cr']:>10.3f} "
              f"{d['cr'] / b['cr']:>5.2f}x")
    return 0


def register(subparsers) -> argparse.ArgumentParser:
    """Add the `tokenizer` command (train-domain, build, compression) to an argparse subparsers object."""
    p = subparsers.add_parser("tokenizer", help="dynamic scientific tokenizer: train domain models, build a "
                              "tokenizer directory, measure compression", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="tokenizer_command", required=True, metavar="<subcommand>")

    t = sub.add_parser("train-domain", help="train a domain SentencePiece BPE model (tokenizer_<NAME>.model)",
                       description="Train a SentencePiece BPE model for one scientific domain in the format the "
                       "dynamic tokenizer loads (identity normalizer, spaces kept, unknown piece at id 0).")
    t.add_argument("--domain", required=True, choices=sorted(DOMAINS),
                   help="domain: smiles -> tokenizer_SMILES.model, iupac -> IUPAC, fasta -> FASTA (Intern-S1 "
                   "protein), protein -> PROT (Intern-S1-Pro), xna -> XNA (DNA/RNA)")
    t.add_argument("--input", required=True, nargs="+", metavar="FILE",
                   help="training data: .smi (first field), .csv (--column, default smiles/iupac), FASTA "
                   "(.faa/.fna/.fasta: one document per record), .jsonl ('text' or --column), else one per line")
    t.add_argument("--vocab-size", type=int, default=1024, help="number of pieces incl. <unk>, <s>, </s> "
                   "(default 1024)")
    t.add_argument("--out", required=True, metavar="DIR", help="output directory (created if missing)")
    t.add_argument("--column", default=None, help="CSV column / JSONL key holding the documents")
    t.add_argument("--name", default=None, help="model name override: writes tokenizer_<NAME>.model")
    t.add_argument("--max-piece-length", type=int, default=16, help="longest piece in characters (default 16)")
    t.set_defaults(func=_input_errors(_cmd_train_domain))

    b = sub.add_parser("build", help="assemble a dynamic tokenizer directory (base BPE + domain models + tags)",
                       description="Copy a base byte-level BPE directory, add domain SentencePiece models and "
                       "their tag tokens (<SMILES></SMILES> ...), and fix the id offsets.")
    b.add_argument("--base", default=None, metavar="DIR", help="base HF byte-level BPE directory (vocab.json, "
                   "merges.txt, tokenizer_config.json); default: the bundled demo tokenizer")
    b.add_argument("--domain", required=True, action="append", metavar="NAME=MODEL",
                   help="a domain model, repeatable: SMILES=..., IUPAC=..., FASTA=..., PROT=..., XNA=...")
    b.add_argument("--layout", default="compact", choices=["compact", "intern-s1", "intern-s1-pro"],
                   help="compact: offsets right after the base ids (dynamic_tokenizer.json); intern-s1 / "
                   "intern-s1-pro: the fixed offsets of those releases (default compact)")
    b.add_argument("--out", required=True, metavar="DIR", help="output tokenizer directory")
    b.set_defaults(func=_input_errors(_cmd_build))

    c = sub.add_parser("compression", help="CR = total chars / total tokens per file, base-only vs dynamic",
                       description="Print the paper's compression rate CR(tau, D) = sum|d| / sum|tau(d)| for "
                       "each data file with the base BPE alone and with the dynamic tokenizer.")
    c.add_argument("--tokenizer", required=True, metavar="DIR", help="dynamic tokenizer directory")
    c.add_argument("--data", required=True, nargs="+", metavar="FILE", help="data files (formats as train-domain)")
    c.add_argument("--column", default=None, help="CSV column / JSONL key holding the documents")
    c.add_argument("--tag", default=None, help="wrap each document in <TAG>...</TAG> (e.g. SMILES) instead of "
                   "relying on auto-detection")
    c.add_argument("--limit", type=int, default=0, help="use at most this many documents per file (0: all)")
    c.add_argument("--backend", default="auto", choices=["auto", "native", "python"],
                   help="dynamic tokenizer implementation (default auto: C++ when built)")
    c.set_defaults(func=_input_errors(_cmd_compression))
    return p


def main(argv: list[str] | None = None) -> int:
    from megatron_s1.cli import main as cli_main

    return cli_main(["tokenizer", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
