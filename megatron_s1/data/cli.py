"""`megatron-s1 data <data-command>`: data preparation tools.

This module owns the `data` command and its sub-command parser. A module that adds data sub-commands
(curation, best-of-n, ...) is listed in ``megatron_s1.cli.PLUGIN_COMMANDS`` and does::

    from megatron_s1.data.cli import data_subparsers, safe

    def register(subparsers):
        sub = data_subparsers(subparsers)          # creates `data` once, returns its subparsers
        p = sub.add_parser("my-tool", help=..., description=...)
        p.set_defaults(func=safe(_cmd_my_tool))    # one-line "error: ..." instead of a traceback

Also runnable as `python -m megatron_s1.data.cli <data-command> ...`.
"""
from __future__ import annotations

import argparse
import functools
import sys

_DATA_SUB_ATTR = "_megatron_s1_data_subparsers"

DESCRIPTION = """Data preparation tools. Science data curation (docs/curation.md):

  recall & filtering   silver-label -> train-classifier -> filter
  PDF parsing          parse-pdf (cheap parser everywhere, VLM only on equation-dense / textless pages)
  web parsing          web-domains (keep / discard / rewrite per URL domain)
  dedup                dedup-minhash (documents), dedup-pages (pages repeated across PDFs)

Run `megatron-s1 data <data-command> --help` for the options of each."""


class HelpFormatter(argparse.HelpFormatter):
    """Wraps description paragraphs to the terminal width but keeps indented lines (examples, file
    formats) as written."""

    def _fill_text(self, text, width, indent):
        import textwrap

        out, para = [], []

        def flush():
            if para:
                out.append(textwrap.fill(" ".join(para), width, initial_indent=indent, subsequent_indent=indent))
                para.clear()
        for line in text.splitlines():
            if not line.strip():
                flush()
                out.append("")
            elif line.startswith((" ", "\t")):
                flush()
                out.append(indent + line)
            else:
                para.append(line.strip())
        flush()
        return "\n".join(out)


def data_subparsers(subparsers) -> argparse._SubParsersAction:
    """The subparsers of the `data` command, created on first call (idempotent)."""
    parser = subparsers.choices.get("data")
    if parser is None:
        parser = subparsers.add_parser("data", help="data tools: science curation (classifier recall/filter, "
                                       "page-level PDF parsing, web domains, dedup) and more",
                                       description=DESCRIPTION, formatter_class=HelpFormatter)
        sub = parser.add_subparsers(dest="data_command", required=True, metavar="<data-command>")
        setattr(parser, _DATA_SUB_ATTR, sub)
    return getattr(parser, _DATA_SUB_ATTR)


def safe(func):
    """Wrap a command: a CurationError becomes one `error: ...` line on
    stderr and exit status 2."""
    from megatron_s1.data.curation.errors import CurationError

    @functools.wraps(func)
    def wrapper(args) -> int:
        try:
            return func(args)
        except CurationError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    return wrapper


def main(argv=None) -> int:
    from megatron_s1.cli import main as top_main

    return top_main(["data", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
