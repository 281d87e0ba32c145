"""Real small inputs for the curation tests: a deterministic OpenAI-compatible server, PDFs made with
reportlab, texts from the bundled corpus and the Python standard library."""
from __future__ import annotations

import inspect
import json
import re
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources

VLM_ANSWER = "```markdown\nThe energy is \\(E = mc^2\\).\n\n\\[\\sum_{i=1}^{n} x_i^2\\]\n```"
REWRITE_PREFIX = "REWRITTEN:"


def corpus(source: str | None = None) -> list[dict]:
    text = resources.files("megatron_s1.data").joinpath("corpus/tiny_corpus.jsonl").read_text(encoding="utf-8")
    docs = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [d for d in docs if source is None or d["source"] == source]


def stdlib_docstrings(min_chars: int = 200) -> list[str]:
    """Function/class docstrings from a few stdlib modules (real English prose about software), without
    doctest examples (their '>>>' prompts read as math symbols)."""
    import argparse
    import collections
    import json as json_mod
    import statistics
    import string
    import textwrap as tw
    out = []
    for mod in (statistics, collections, argparse, json_mod, string, tw):
        for _, obj in sorted(vars(mod).items()):
            doc = inspect.getdoc(obj) if (inspect.isfunction(obj) or inspect.isclass(obj)) else None
            if doc and len(doc) >= min_chars and ">>>" not in doc and doc not in out:
                out.append(doc)
    return out


def _document_of(messages: list[dict]) -> str:
    content = messages[-1]["content"]
    if isinstance(content, list):
        return ""
    m = re.search(r'Document:\n"""\n(.*)\n"""', content, re.S)
    return m.group(1) if m else content


def fake_answer(messages: list[dict]) -> str:
    """Deterministic stand-in for an LLM/VLM: labels by keyword, rewrites with a prefix, transcribes pages."""
    content = messages[-1]["content"]
    if isinstance(content, list):                      # VLM page transcription
        assert any(part.get("type") in ("image_url", "file") for part in content)
        return VLM_ANSWER
    if messages[0]["role"] == "system" and messages[0]["content"].startswith("Rewrite"):
        return f"{REWRITE_PREFIX} {content[:60]}"
    doc = _document_of(messages)
    if "GARBLE" in doc:
        return "I am not sure what this is."
    if doc.startswith("Protein ") or "enzyme" in doc:
        return "Protein biology"
    if doc.startswith("Compound ") or "molecule" in doc:
        return "chemistry/organic chemistry"
    return "other"


class FakeLLMServer:
    """OpenAI-compatible /v1/chat/completions on 127.0.0.1:<free port>, answering with ``fake_answer``."""

    def __init__(self, answer=fake_answer):
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                if not self.path.endswith("/chat/completions") or body.get("model") == "missing":
                    payload = b'{"error": {"message": "model not found"}}'
                    self.send_response(404)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                payload = json.dumps({"choices": [{"message": {"role": "assistant",
                                                               "content": answer(body["messages"])}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


# --- PDFs -------------------------------------------------------------------------------------------------

EQUATION_LINES = [
    ("Symbol", "α + β = γ ;   ∑ x  ≤  ∫ f dx"),
    ("Helvetica", "E = mc^2 ,  x_{i+1} = x_i + h f(x_i) ,  a^2 + b^2 = c^2"),
    ("Symbol", "∂ ψ / ∂ t = α ∇ 2 ψ + β ψ"),
    ("Helvetica", "L = 1/2 m v^2 - V(q) ,  p = dL/dq ,  H = p q - L"),
]


def make_pdf(path: str, pages: list[list[tuple[str, str]] | str | None]) -> str:
    """Write a PDF: each page is prose (str, wrapped), equation lines [(font, text), ...] or None (blank)."""
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    c = canvas.Canvas(path, pagesize=A4)
    for page in pages:
        y = 800
        if isinstance(page, str):
            c.setFont("Helvetica", 10)
            for para in page.split("\n\n"):
                for line in textwrap.wrap(" ".join(para.split()), 95):
                    c.drawString(50, y, line)
                    y -= 13
                    if y < 60:
                        break
                y -= 8
                if y < 60:
                    break
        elif page:
            for _ in range(6):
                for font, text in page:
                    c.setFont(font, 12)
                    c.drawString(60, y, text)
                    y -= 18
        c.showPage()
    c.save()
    return path
