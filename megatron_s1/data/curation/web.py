"""Domain-centric web parsing: decide per URL domain, not per page.

1. Group pages (jsonl with a URL and a text field) by URL domain (``url_domain``).
2. Sample up to ``samples_per_domain`` pages of each domain (seeded, uniform).
3. Label the samples with the pluggable LLM client and the taxonomy (same prompt as ``silver-label``).
4. Decide ``keep`` / ``discard`` / ``rewrite`` for each domain with the rules file (first match wins).
5. Apply the decision to every page of the domain; ``rewrite`` pages go through the LLM with
   ``REWRITE_PROMPT`` (or are only tagged with ``--no-rewrite-llm``).

Rules file (YAML)::

    rules:                       # tried in order, the first rule whose conditions all hold decides
      - action: keep
        min_fraction: 0.6        # share of labelled samples in the domains of `of` (default: all science domains)
      - action: rewrite
        min_fraction: 0.2
        min_pages: 5             # only domains with at least 5 pages in the input
      - action: keep
        of: [chemistry]          # share counted over these taxonomy domains only
        min_fraction: 0.5
    default: discard             # when no rule matches
    min_samples: 1               # domains with fewer labelled samples take `default`

Rule conditions: ``min_fraction``, ``max_fraction`` (inclusive bounds on the share, ``formulas.fraction``),
``min_pages``, ``max_pages`` (pages of the domain in the input), ``of`` (list of taxonomy domains).
"""
from __future__ import annotations

import contextlib
import hashlib
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from megatron_s1.data.curation.errors import CurationError
from megatron_s1.data.curation.formulas import fraction
from megatron_s1.data.curation.jsonl import JsonlWriter, check_input, iter_jsonl
from megatron_s1.data.curation.taxonomy import UNKNOWN, Taxonomy, silver_label

ACTIONS = ("keep", "discard", "rewrite")
_HOST_RE = re.compile(r"^[\w-]+(\.[\w-]+)*$")
RULE_KEYS = {"action", "min_fraction", "max_fraction", "min_pages", "max_pages", "of"}

REWRITE_PROMPT = ("Rewrite the following web page as clean, self-contained scientific text. Keep every fact, "
                  "number, formula (in LaTeX) and definition; drop navigation, advertisements, comments and "
                  "boilerplate; do not add facts. Answer with the rewritten text only.")


def url_domain(url: str, levels: int = 0) -> str:
    """Lower-case host of ``url`` without a leading ``www.`` or port; with ``levels`` > 0 only the last
    ``levels`` dot-separated labels (``levels=2``: ``a.physics.example.org`` -> ``example.org``).
    A URL without scheme (``example.org/x``) is accepted. Returns '' when there is no host."""
    if "//" not in url:
        url = "//" + url
    try:
        host = (urlsplit(url).hostname or "").lower().rstrip(".")
    except ValueError:
        return ""
    if not _HOST_RE.match(host):
        return ""
    if host.startswith("www."):
        host = host[4:]
    if levels > 0 and host.count(".") >= levels:
        host = ".".join(host.split(".")[-levels:])
    return host


@dataclass
class Rule:
    action: str
    of: set[str] | None = None
    min_fraction: float | None = None
    max_fraction: float | None = None
    min_pages: int | None = None
    max_pages: int | None = None

    def matches(self, share: float, pages: int) -> bool:
        return ((self.min_fraction is None or share >= self.min_fraction)
                and (self.max_fraction is None or share <= self.max_fraction)
                and (self.min_pages is None or pages >= self.min_pages)
                and (self.max_pages is None or pages <= self.max_pages))


@dataclass
class Rules:
    rules: list[Rule]
    default: str = "discard"
    min_samples: int = 1


def load_rules(path: str, taxonomy: Taxonomy) -> Rules:
    """Read and validate a rules file (see module docstring)."""
    import yaml

    check_input(path, "rules file")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as err:
        raise CurationError(f"rules file {path} is not valid YAML ({str(err).splitlines()[0]})",
                            "see `megatron-s1 data web-domains --help` for the format") from None
    return rules_from_dict(data, taxonomy, path)


def rules_from_dict(data, taxonomy: Taxonomy, where: str = "rules") -> Rules:
    if not isinstance(data, dict) or not isinstance(data.get("rules"), list):
        raise CurationError(f"{where}: expected a mapping with a 'rules' list",
                            "write 'rules: [{action: keep, min_fraction: 0.6}]' (see --help)")
    unknown_top = set(data) - {"rules", "default", "min_samples"}
    if unknown_top:
        raise CurationError(f"{where}: unknown key(s) {', '.join(sorted(unknown_top))}",
                            "allowed: rules, default, min_samples")
    default = data.get("default", "discard")
    if default not in ACTIONS:
        raise CurationError(f"{where}: default {default!r} is not one of {', '.join(ACTIONS)}", "fix 'default'")
    rules = []
    for n, item in enumerate(data["rules"], 1):
        if not isinstance(item, dict):
            raise CurationError(f"{where}: rule {n} is not a mapping", "write e.g. {action: keep, min_fraction: 0.6}")
        bad = set(item) - RULE_KEYS
        if bad:
            raise CurationError(f"{where}: rule {n} has unknown key(s) {', '.join(sorted(bad))}",
                                f"allowed: {', '.join(sorted(RULE_KEYS))}")
        if item.get("action") not in ACTIONS:
            raise CurationError(f"{where}: rule {n} action {item.get('action')!r} is not one of {', '.join(ACTIONS)}",
                                "set action to keep, discard or rewrite")
        of = item.get("of")
        if of is not None:
            if isinstance(of, str):
                of = [of]
            missing = [d for d in of if d not in taxonomy.domains and d != "other"]
            if missing:
                raise CurationError(f"{where}: rule {n} 'of' names unknown domain(s) {', '.join(missing)}",
                                    f"use taxonomy domains: {', '.join(taxonomy.domains)}")
            of = set(of)
        for key in ("min_fraction", "max_fraction"):
            v = item.get(key)
            if v is not None and not (isinstance(v, (int, float)) and 0 <= v <= 1):
                raise CurationError(f"{where}: rule {n} {key} {v!r} is not a number in [0, 1]", "e.g. 0.6")
        rules.append(Rule(action=item["action"], of=of, min_fraction=item.get("min_fraction"),
                          max_fraction=item.get("max_fraction"), min_pages=item.get("min_pages"),
                          max_pages=item.get("max_pages")))
    return Rules(rules=rules, default=default, min_samples=int(data.get("min_samples", 1)))


def decide(label_counts: Counter, pages: int, rules: Rules, taxonomy: Taxonomy) -> tuple[str, int | None, float]:
    """(action, 1-based index of the matching rule or None, science share) for one domain."""
    labelled = sum(v for k, v in label_counts.items() if k != UNKNOWN)
    science = fraction(sum(label_counts[d] for d in taxonomy.science_domains), labelled)
    if labelled < rules.min_samples:
        return rules.default, None, science
    for n, rule in enumerate(rules.rules, 1):
        of = rule.of if rule.of is not None else taxonomy.science_domains
        share = fraction(sum(label_counts[d] for d in of), labelled)
        if rule.matches(share, pages):
            return rule.action, n, science
    return rules.default, None, science


@dataclass
class _DomainSample:
    pages: int = 0
    sample: list = field(default_factory=list)   # (page index, text)
    rng: random.Random | None = None


def run_web_domains(input_path: str, output: str, client, taxonomy: Taxonomy, rules: Rules, *,
                    url_key: str = "url", text_key: str = "text", samples_per_domain: int = 8,
                    domain_levels: int = 0, seed: int = 0, concurrency: int = 8, rewrite_llm: bool = True,
                    discarded: str | None = None, report_path: str | None = None) -> dict:
    """Run the five steps of the module docstring; returns the summary (and writes ``report_path``)."""
    from megatron_s1.data.curation.jsonl import write_json
    from megatron_s1.data.curation.llm import chat_many

    if samples_per_domain < 1:
        raise CurationError(f"--samples-per-domain {samples_per_domain} is below 1", "pass e.g. 8")
    check_input(input_path)
    # pass 1: group + per-domain reservoir sample
    groups: dict[str, _DomainSample] = defaultdict(_DomainSample)
    page_domains: list[str] = []
    for i, doc in enumerate(iter_jsonl(input_path, require={url_key: "--url-key", text_key: "--text-key"})):
        domain = url_domain(str(doc[url_key]), domain_levels)
        if not domain:
            raise CurationError(f"{input_path} record {i + 1}: URL {str(doc[url_key])[:80]!r} has no host",
                                "fix the URL or drop the record (expected e.g. https://example.org/page)")
        page_domains.append(domain)
        g = groups[domain]
        if g.rng is None:
            g.rng = random.Random(int.from_bytes(hashlib.sha1(f"{seed}:{domain}".encode()).digest()[:8], "big"))
        if g.pages < samples_per_domain:
            g.sample.append((i, doc[text_key]))
        else:
            j = g.rng.randint(0, g.pages)
            if j < samples_per_domain:
                g.sample[j] = (i, doc[text_key])
        g.pages += 1
    if not page_domains:
        raise CurationError(f"{input_path} holds no pages", "pass a jsonl with one {url, text} object per line")
    # step 3: label the samples
    order = sorted(groups)
    flat = [(d, {"text": t}) for d in order for _, t in groups[d].sample]
    labelled, _ = silver_label(client, taxonomy, [doc for _, doc in flat], "text", concurrency)
    counts: dict[str, Counter] = defaultdict(Counter)
    for (domain, _), doc in zip(flat, labelled):
        counts[domain][doc["silver_domain"]] += 1
    # step 4: decide
    decisions = {}
    for d in order:
        action, rule, science = decide(counts[d], groups[d].pages, rules, taxonomy)
        decisions[d] = {"action": action, "rule": rule, "pages": groups[d].pages,
                        "sampled": len(groups[d].sample), "science_fraction": round(science, 4),
                        "labels": dict(counts[d])}
    # step 5: apply
    stats = Counter()
    pending: list[dict] = []

    def flush(out):
        if not pending:
            return
        msgs = [[{"role": "system", "content": REWRITE_PROMPT}, {"role": "user", "content": p[text_key]}]
                for p in pending]
        for page, text in zip(pending, chat_many(client, msgs, concurrency)):
            out.write({**page, text_key: text.strip(), "original_chars": len(page[text_key]), "rewritten": True})
        pending.clear()

    with contextlib.ExitStack() as stack:  # the writers commit together, only if nothing failed
        disc = stack.enter_context(JsonlWriter(discarded)) if discarded else None
        out = stack.enter_context(JsonlWriter(output))
        for i, doc in enumerate(iter_jsonl(input_path)):
            domain = page_domains[i]
            action = decisions[domain]["action"]
            stats[action] += 1
            doc = {**doc, "url_domain": domain, "curation_action": action}
            if action == "keep":
                out.write(doc)
            elif action == "rewrite" and rewrite_llm:
                pending.append(doc)
                if len(pending) >= 64:
                    flush(out)
            elif action == "rewrite":
                out.write(doc)
            elif disc:
                disc.write(doc)
        flush(out)
    summary = {"pages": len(page_domains), "domains": len(order), "sampled_pages": len(flat),
               "pages_by_action": {a: stats[a] for a in ACTIONS},
               "domains_by_action": dict(Counter(v["action"] for v in decisions.values()))}
    if report_path:
        write_json(report_path, {"summary": summary, "domains": decisions})
    return summary
