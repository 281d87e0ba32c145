"""Page-level PDF parsing: cheap parser everywhere, expensive parser only on "hard" pages.

For every PDF: split into pages; extract each page's text with a low-cost parser (pypdf or pdfminer.six);
score it with ``formulas.symbol_density``; route the page to the high-cost parser (a VLM through the
pluggable chat client, or any ``parse(pdf_path, page_index, low_cost_text)`` object) when
``formulas.is_hard_page`` says so; clean each page with the post-processing of its path; merge the pages
into one document. The routed fraction is reported per file and in total.

Output record per PDF::

    {"id": "paper", "source": "in/paper.pdf", "text": "<merged document>", "pages": ["...", ...],
     "page_routes": ["low", "high", ...], "page_density": [0.01, 0.21, ...], "num_pages": 12, "hard_pages": 3}

``page_routes``: ``low`` (low-cost text), ``high`` (high-cost parser), ``hard-unparsed`` (hard, but no
high-cost parser configured: low-cost text kept).
"""
from __future__ import annotations

import base64
import glob
import io
import os
import re
import threading
import time
import unicodedata
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from megatron_s1.data.curation.errors import CurationError
from megatron_s1.data.curation.formulas import fraction, is_hard_page, symbol_density

LOW_COST_PARSERS = ("pypdf", "pdfminer")


def list_pdfs(inputs: Sequence[str]) -> list[str]:
    """PDF files named in ``inputs``; a directory contributes every ``*.pdf`` below it (sorted)."""
    paths: list[str] = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(glob.glob(os.path.join(item, "**", "*.pdf"), recursive=True))
            if not found:
                raise CurationError(f"directory {item!r} holds no *.pdf files", "pass PDF files or another directory")
            paths.extend(found)
        elif os.path.exists(item):
            paths.append(item)
        else:
            raise CurationError(f"input {item!r} does not exist", "check the path")
    return paths


def low_cost_pages(path: str, parser: str = "pypdf") -> list[str]:
    """Text of every page of ``path`` with the low-cost ``parser`` (``pypdf`` or ``pdfminer``)."""
    if parser not in LOW_COST_PARSERS:
        raise CurationError(f"--low-cost {parser!r} is not one of {', '.join(LOW_COST_PARSERS)}",
                            "pass --low-cost pypdf or --low-cost pdfminer")
    try:
        if parser == "pypdf":
            import pypdf

            reader = pypdf.PdfReader(path)
            if reader.is_encrypted:
                try:
                    reader.decrypt("")
                except Exception:
                    raise CurationError(f"{path} is encrypted", "decrypt it first or drop it from the input")
            return [page.extract_text() or "" for page in reader.pages]
        from pdfminer.high_level import extract_pages
        from pdfminer.layout import LTTextContainer

        return ["\n".join(el.get_text().rstrip("\n") for el in layout if isinstance(el, LTTextContainer))
                for layout in extract_pages(path)]
    except CurationError:
        raise
    except ImportError as err:
        raise CurationError(f"low-cost parser {parser!r} is not installed ({err.name})",
                            "pip install pypdf pdfminer.six") from None
    except Exception as err:  # pypdf / pdfminer raise many types for broken files
        raise CurationError(f"{path} is not a readable PDF ({type(err).__name__}: {str(err)[:120]})",
                            "check the file, or pass --skip-bad to skip unreadable PDFs") from None


# --- post-processing, one function per path ---------------------------------------------------------------

_HYPHEN_BREAK = re.compile(r"(\w)-\n(\w)")
_PAGE_NUMBER_LINE = re.compile(r"^[ \t]*(page[ \t]*)?\d{1,4}[ \t]*(\n|$)", re.I | re.M)
_SENTENCE_END = re.compile(r"[.!?:;)\]\"']$")


def clean_low_cost(text: str) -> str:
    """Post-process low-cost text: NFKC (ligatures such as 'ﬁ' -> 'fi'), drop lines that are only a page
    number, re-join words hyphenated across lines, join wrapped lines of a paragraph (a line break is kept
    after sentence-ending punctuation), collapse spaces."""
    text = unicodedata.normalize("NFKC", text).replace("\r", "")
    text = _PAGE_NUMBER_LINE.sub("", text)
    text = _HYPHEN_BREAK.sub(r"\1\2", text)
    lines = [" ".join(line.split()) for line in text.split("\n")]
    out: list[str] = []
    for line in lines:
        if not line:
            if out and out[-1] != "":
                out.append("")
            continue
        if out and out[-1] and not _SENTENCE_END.search(out[-1]):
            out[-1] = f"{out[-1]} {line}"
        else:
            out.append(line)
    return "\n".join(out).strip()


_FENCE = re.compile(r"^```[a-zA-Z]*\n(.*?)\n```$", re.S)


def clean_high_cost(text: str) -> str:
    """Post-process high-cost (VLM) output: drop a code fence wrapping the whole answer, write math as
    ``$...$`` / ``$$...$$`` (from ``\\( \\)`` / ``\\[ \\]``), strip trailing spaces, at most one blank line."""
    text = text.strip()
    m = _FENCE.match(text)
    if m:
        text = m.group(1).strip()
    text = text.replace("\\[", "$$").replace("\\]", "$$").replace("\\(", "$").replace("\\)", "$")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def merge_pages(pages: Sequence[str]) -> str:
    """One document from cleaned pages: a paragraph broken by a page boundary (previous page ends without
    sentence-ending punctuation and the next starts in lower case) is joined with a space, other pages
    are separated by a blank line; empty pages are skipped."""
    merged = ""
    for page in pages:
        page = page.strip()
        if not page:
            continue
        if not merged:
            merged = page
        elif not _SENTENCE_END.search(merged) and page[:1].islower():
            merged = f"{merged} {page}"
        else:
            merged = f"{merged}\n\n{page}"
    return merged


# --- high-cost parser ---------------------------------------------------------------------------------------

VLM_PROMPT = ("Transcribe this document page to Markdown. Write every formula in LaTeX ($...$ inline, "
              "$$...$$ display), keep tables as Markdown tables, skip running headers, footers and page numbers. "
              "Answer with the transcription only.")


def page_pdf_bytes(path: str, index: int) -> bytes:
    """A one-page PDF holding page ``index`` of ``path``."""
    import pypdf

    writer = pypdf.PdfWriter()
    writer.add_page(pypdf.PdfReader(path).pages[index])
    buf = io.BytesIO()
    writer.write(buf)
    return buf.getvalue()


# PDFium is not thread-safe (concurrent use aborts the process); VLM requests stay concurrent, the
# rendering before each request is serialised.
_PDFIUM_LOCK = threading.Lock()


def render_page_png(path: str, index: int, dpi: int = 144) -> bytes | None:
    """PNG of one page via pypdfium2, or None when pypdfium2 is not installed."""
    try:
        import pypdfium2 as pdfium
    except ImportError:
        return None
    with _PDFIUM_LOCK:
        doc = pdfium.PdfDocument(path)
        try:
            image = doc[index].render(scale=dpi / 72).to_pil()
        finally:
            doc.close()
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


class VLMPageParser:
    """High-cost parser over a chat client: sends the page as a PNG (``image_url`` data URL) when pypdfium2
    can render it, else as a one-page PDF (``file`` content part), with ``VLM_PROMPT``."""

    def __init__(self, client, dpi: int = 144, prompt: str = VLM_PROMPT):
        self.client = client
        self.dpi = dpi
        self.prompt = prompt

    def messages(self, path: str, index: int) -> list[dict]:
        png = render_page_png(path, index, self.dpi)
        if png is not None:
            part = {"type": "image_url",
                    "image_url": {"url": "data:image/png;base64," + base64.b64encode(png).decode()}}
        else:
            data = base64.b64encode(page_pdf_bytes(path, index)).decode()
            part = {"type": "file", "file": {"filename": f"page{index + 1}.pdf",
                                             "file_data": "data:application/pdf;base64," + data}}
        return [{"role": "user", "content": [part, {"type": "text", "text": self.prompt}]}]

    def parse(self, path: str, index: int, low_cost_text: str) -> str:
        return self.client.chat(self.messages(path, index))


# --- the pipeline -------------------------------------------------------------------------------------------

@dataclass
class PdfStats:
    files: int = 0
    pages: int = 0
    hard_pages: int = 0
    skipped: list[str] = field(default_factory=list)
    low_cost_s: float = 0.0
    high_cost_s: float = 0.0

    def as_dict(self) -> dict:
        return {"files": self.files, "pages": self.pages, "hard_pages": self.hard_pages,
                "routed_fraction": round(fraction(self.hard_pages, self.pages), 4), "skipped": self.skipped,
                "low_cost_seconds": round(self.low_cost_s, 3), "high_cost_seconds": round(self.high_cost_s, 3),
                "low_cost_pages_per_s": round(self.pages / self.low_cost_s, 1) if self.low_cost_s else None}


def parse_pdf(path: str, *, low_cost: str = "pypdf", density_threshold: float = 0.08, min_chars: int = 50,
              high_cost=None, concurrency: int = 4) -> tuple[dict, float, float]:
    """Parse one PDF (see module docstring); returns (record, low-cost seconds, high-cost seconds)."""
    t0 = time.perf_counter()
    raw = low_cost_pages(path, low_cost)
    densities = [symbol_density(p) for p in raw]
    chars = [sum(not c.isspace() for c in p) for p in raw]
    hard = [is_hard_page(d, c, density_threshold, min_chars) for d, c in zip(densities, chars)]
    pages = [clean_low_cost(p) for p in raw]
    routes = ["low"] * len(raw)
    t1 = time.perf_counter()
    hard_idx = [i for i, h in enumerate(hard) if h]
    if hard_idx and high_cost is not None:
        def run(i):
            return high_cost.parse(path, i, raw[i])
        if concurrency > 1 and len(hard_idx) > 1:
            with ThreadPoolExecutor(max_workers=concurrency) as pool:
                answers = list(pool.map(run, hard_idx))
        else:
            answers = [run(i) for i in hard_idx]
        for i, answer in zip(hard_idx, answers):
            pages[i] = clean_high_cost(answer)
            routes[i] = "high"
    else:
        for i in hard_idx:
            routes[i] = "hard-unparsed"
    t2 = time.perf_counter()
    record = {"id": os.path.splitext(os.path.basename(path))[0], "source": path, "text": merge_pages(pages),
              "pages": pages, "page_routes": routes, "page_density": [round(d, 4) for d in densities],
              "num_pages": len(raw), "hard_pages": len(hard_idx)}
    return record, t1 - t0, t2 - t1


def parse_pdfs(inputs: Sequence[str], writer, *, skip_bad: bool = False, **kwargs) -> dict:
    """Parse every PDF of ``inputs`` into ``writer`` (a JsonlWriter); returns the summary with the routed
    fraction."""
    if not 0.0 <= kwargs.get("density_threshold", 0.08) <= 1.0:
        raise CurationError(f"--density-threshold {kwargs['density_threshold']} is outside [0, 1]",
                            "pass e.g. 0.08")
    stats = PdfStats()
    for path in list_pdfs(inputs):
        try:
            record, low_s, high_s = parse_pdf(path, **kwargs)
        except CurationError as err:
            if not skip_bad or "not a readable PDF" not in str(err) and "encrypted" not in str(err):
                raise
            stats.skipped.append(path)
            continue
        writer.write(record)
        stats.files += 1
        stats.pages += record["num_pages"]
        stats.hard_pages += record["hard_pages"]
        stats.low_cost_s += low_s
        stats.high_cost_s += high_s
    return stats.as_dict()
