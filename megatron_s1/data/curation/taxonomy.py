"""Taxonomy (domain -> labels) and LLM silver labelling.

Taxonomy file (YAML or JSON), a mapping from a domain to its fine-grained labels::

    physics: [mechanics, quantum physics, astrophysics]
    chemistry: [organic chemistry, spectroscopy]
    other: [news, sports, shopping]     # optional: the out-of-domain bucket

The domain ``other`` is the out-of-domain (non-science) bucket: the LLM may always answer ``other`` even
when the file does not define it. Every other domain counts as in-domain (science) for the recall
reports and the web domain rules.
"""
from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from megatron_s1.data.curation.errors import CurationError
from megatron_s1.data.curation.jsonl import check_input

OTHER = "other"
UNKNOWN = "unknown"


@dataclass
class Taxonomy:
    domains: dict[str, list[str]]

    @property
    def science_domains(self) -> set[str]:
        return {d for d in self.domains if d != OTHER}

    def label_to_domain(self) -> dict[str, str]:
        mapping = {OTHER: OTHER}
        for domain, labels in self.domains.items():
            mapping[_norm(domain)] = domain
            for label in labels:
                mapping[_norm(label)] = domain
                mapping[_norm(f"{domain}/{label}")] = domain
        return mapping

    def menu(self) -> str:
        lines = [f"- {d}: {', '.join(labels) if labels else d}" for d, labels in self.domains.items()]
        if OTHER not in self.domains:
            lines.append(f"- {OTHER}: anything not covered above")
        return "\n".join(lines)


def _norm(s: str) -> str:
    return " ".join(re.sub(r"[^\w/ -]+", " ", s.lower()).replace("_", " ").split())


def load_taxonomy(path: str) -> Taxonomy:
    """Read and validate a taxonomy file; every problem is a one-line CurationError."""
    import yaml

    check_input(path, "taxonomy")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as err:
        raise CurationError(f"taxonomy {path} is not valid YAML/JSON ({str(err).splitlines()[0]})",
                            "write a mapping 'domain: [label, ...]'") from None
    if not isinstance(data, dict) or not data:
        raise CurationError(f"taxonomy {path} is not a non-empty mapping",
                            "write one line per domain, e.g. 'physics: [mechanics, optics]'")
    domains: dict[str, list[str]] = {}
    seen: dict[str, str] = {}
    for domain, labels in data.items():
        if labels is None:
            labels = []
        if not isinstance(domain, str) or not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise CurationError(f"taxonomy {path}: domain {domain!r} must map to a list of label strings",
                                f"write e.g. '{domain}: [label one, label two]'")
        for label in labels:
            key = _norm(label)
            if key in seen and seen[key] != domain:
                raise CurationError(f"taxonomy {path}: label {label!r} is listed under both {seen[key]!r} and "
                                    f"{domain!r}", "give each label one domain")
            seen[key] = domain
        domains[domain] = list(labels)
    if not any(d != OTHER for d in domains):
        raise CurationError(f"taxonomy {path} defines only '{OTHER}'", "add at least one in-domain (science) domain")
    return Taxonomy(domains)


SYSTEM_PROMPT = ("You classify documents for a scientific pre-training data pipeline. Answer with exactly one "
                 "label from the list, copied verbatim, and nothing else.")


def label_messages(taxonomy: Taxonomy, text: str, max_chars: int = 2000) -> list[dict]:
    """Chat messages asking for one label of ``taxonomy`` for ``text`` (truncated to ``max_chars``)."""
    snippet = text[:max_chars]
    user = (f"Labels (domain: labels):\n{taxonomy.menu()}\n\nDocument:\n\"\"\"\n{snippet}\n\"\"\"\n\n"
            "Answer with one label (or the domain name if no label fits; 'other' if no domain fits).")
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def parse_label(taxonomy: Taxonomy, answer: str) -> tuple[str, str]:
    """Map a free-text LLM answer to (label, domain). Exact match first, then the longest known label that
    appears in the answer; otherwise ("unknown", "unknown")."""
    mapping = taxonomy.label_to_domain()
    norm = _norm(answer.strip().strip("`'\".").splitlines()[0] if answer.strip() else "")
    if norm in mapping:
        return norm.split("/")[-1], mapping[norm]
    full = _norm(answer)
    hits = [k for k in mapping if re.search(rf"(?<!\w){re.escape(k)}(?!\w)", full)]
    if hits:
        best = max(hits, key=len)
        return best.split("/")[-1], mapping[best]
    return UNKNOWN, UNKNOWN


def reservoir_sample(items: Iterable, k: int, seed: int) -> list:
    """Uniform sample of ``k`` items from a stream of unknown length (Algorithm R), in stream order."""
    rng = random.Random(seed)
    sample: list = []
    for i, item in enumerate(items):
        if i < k:
            sample.append((i, item))
        else:
            j = rng.randint(0, i)
            if j < k:
                sample[j] = (i, item)
    return [item for _, item in sorted(sample, key=lambda t: t[0])]


def silver_label(client, taxonomy: Taxonomy, docs: list[dict], text_key: str = "text", concurrency: int = 8,
                 max_chars: int = 2000) -> tuple[list[dict], Counter]:
    """Label ``docs`` with ``client``; returns the docs with ``silver_label``/``silver_domain`` added and a
    Counter of domains (including ``unknown`` for unparseable answers)."""
    from megatron_s1.data.curation.llm import chat_many

    answers = chat_many(client, [label_messages(taxonomy, d[text_key], max_chars) for d in docs], concurrency)
    counts: Counter = Counter()
    out = []
    for doc, answer in zip(docs, answers):
        label, domain = parse_label(taxonomy, answer)
        counts[domain] += 1
        out.append({**doc, "silver_label": label, "silver_domain": domain})
    return out, counts


def iter_texts(docs: Iterable[dict], text_key: str, path: str) -> Iterator[dict]:
    for i, d in enumerate(docs, 1):
        if not isinstance(d.get(text_key), str):
            raise CurationError(f"{path}: record {i} has no string field {text_key!r}",
                                "choose the text field with --text-key")
        yield d
