"""Domain-centric web parsing: group by URL domain, sample, label, decide by rules, apply."""
import json
from collections import Counter

import pytest

from megatron_s1.cli import main
from megatron_s1.data.curation.errors import CurationError
from megatron_s1.data.curation.taxonomy import Taxonomy
from megatron_s1.data.curation.web import decide, rules_from_dict, url_domain
from tests.data.curation.helpers import REWRITE_PREFIX, corpus, stdlib_docstrings

TAX = Taxonomy({"biology": ["protein biology"], "chemistry": ["organic chemistry"], "other": ["software"]})

RULES = """\
rules:
  - {action: keep, min_fraction: 0.75}
  - {action: rewrite, min_fraction: 0.25, min_pages: 4}
default: discard
"""


@pytest.mark.parametrize("url, levels, expected", [
    ("https://www.Example.org:8080/a?b=1", 0, "example.org"),
    ("example.org/path", 0, "example.org"),
    ("http://a.physics.example.org/x", 2, "example.org"),
    ("http://a.physics.example.org/x", 0, "a.physics.example.org"),
    ("not a url", 0, ""),
])
def test_url_domain(url, levels, expected):
    assert url_domain(url, levels) == expected


def test_decide_rules():
    rules = rules_from_dict({"rules": [{"action": "keep", "min_fraction": 0.75},
                                       {"action": "rewrite", "min_fraction": 0.25, "min_pages": 4},
                                       {"action": "keep", "of": ["chemistry"], "min_fraction": 0.5}],
                             "default": "discard", "min_samples": 2}, TAX)
    # 3 biology + 1 other of 4 labelled: share 0.75 -> keep by rule 1
    assert decide(Counter(biology=3, other=1), 10, rules, TAX) == ("keep", 1, 0.75)
    # 1 of 4 science, 10 pages -> rewrite by rule 2
    assert decide(Counter(biology=1, other=3), 10, rules, TAX) == ("rewrite", 2, 0.25)
    # same share but only 3 pages -> no rule -> default
    assert decide(Counter(biology=1, other=3), 3, rules, TAX) == ("discard", None, 0.25)
    # unknown answers are not labelled: 1 labelled sample < min_samples 2 -> default
    assert decide(Counter(biology=1, unknown=5), 10, rules, TAX) == ("discard", None, 1.0)
    # science 3/5 = 0.6 < 0.75; rule 2 needs 4 pages; chemistry share 2/5 = 0.4 < 0.5 -> default
    assert decide(Counter(chemistry=2, biology=1, other=2), 2, rules, TAX)[0] == "discard"
    # chemistry share 3/6 = 0.5 -> keep by rule 3
    assert decide(Counter(chemistry=3, other=3), 2, rules, TAX) == ("keep", 3, 0.5)


@pytest.mark.parametrize("data, message", [
    ({"rules": [{"action": "burn"}]}, "rule 1 action 'burn' is not one of keep, discard, rewrite"),
    ({"rules": [{"action": "keep", "min_frac": 0.5}]}, "rule 1 has unknown key(s) min_frac"),
    ({"rules": [{"action": "keep", "of": ["physics"]}]}, "names unknown domain(s) physics"),
    ({"rules": [{"action": "keep", "min_fraction": 1.5}]}, "min_fraction 1.5 is not a number in [0, 1]"),
    ({"rule": []}, "expected a mapping with a 'rules' list"),
])
def test_rules_errors(data, message):
    with pytest.raises(CurationError) as err:
        rules_from_dict(data, TAX, "r.yaml")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_web_domains_end_to_end(tmp_path, llm_server, capsys):
    proteins, smiles, prose = corpus("protein"), corpus("smiles"), stdlib_docstrings()
    pages = []
    pages += [{"url": f"https://www.bio.example.org/p/{i}", "text": proteins[i]["text"]} for i in range(6)]
    pages += [{"url": f"chem.example.com/c{i}", "text": smiles[i]["text"]} for i in range(3)]
    # mixed blog: 2 of 5 science pages -> rewrite
    pages += [{"url": f"http://blog.example.net/{i}", "text": (proteins[50 + i]["text"] if i < 2 else prose[i])}
              for i in range(5)]
    pages += [{"url": f"https://docs.example.io/{i}", "text": prose[10 + i]} for i in range(4)]
    (tmp_path / "pages.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pages))
    (tmp_path / "tax.yaml").write_text("biology: [protein biology]\nchemistry: [organic chemistry]\n")
    (tmp_path / "rules.yaml").write_text(RULES)
    rc = main(["data", "web-domains", "--input", str(tmp_path / "pages.jsonl"), "--output", str(tmp_path / "o.jsonl"),
               "--taxonomy", str(tmp_path / "tax.yaml"), "--rules", str(tmp_path / "rules.yaml"),
               "--llm-url", llm_server.url, "--llm-model", "m", "--samples-per-domain", "5",
               "--discarded", str(tmp_path / "d.jsonl"), "--report", str(tmp_path / "r.json")])
    assert rc == 0
    assert "18 pages in 4 domains" in capsys.readouterr().out
    report = json.loads((tmp_path / "r.json").read_text())["domains"]
    assert {d: v["action"] for d, v in report.items()} == {
        "bio.example.org": "keep", "chem.example.com": "keep", "blog.example.net": "rewrite",
        "docs.example.io": "discard"}
    assert report["blog.example.net"]["science_fraction"] == 0.4
    out = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert len(out) == 6 + 3 + 5
    rewritten = [o for o in out if o.get("rewritten")]
    assert len(rewritten) == 5 and all(o["text"].startswith(REWRITE_PREFIX) for o in rewritten)
    assert len((tmp_path / "d.jsonl").read_text().splitlines()) == 4


def test_missing_url_is_clear_error(tmp_path, llm_server, capsys):
    (tmp_path / "p.jsonl").write_text(json.dumps({"link": "x", "text": "t"}) + "\n")
    (tmp_path / "tax.yaml").write_text("biology: [genomics]\n")
    (tmp_path / "rules.yaml").write_text(RULES)
    rc = main(["data", "web-domains", "--input", str(tmp_path / "p.jsonl"), "--output", str(tmp_path / "o.jsonl"),
               "--taxonomy", str(tmp_path / "tax.yaml"), "--rules", str(tmp_path / "rules.yaml"),
               "--llm-url", llm_server.url, "--llm-model", "m"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err
    assert "p.jsonl:1 has no 'url' field (fields: link, text)" in err and "--url-key" in err
