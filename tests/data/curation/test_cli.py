"""`megatron-s1 data ...`: --help documents every option; bad input gives one clear error line."""
import json
import os
import socket

import pytest

from megatron_s1.cli import build_parser, main
from megatron_s1.data.curation.errors import CurationError
from megatron_s1.data.curation.llm import OpenAIChatClient
from tests.data.curation.helpers import FakeLLMServer

COMMANDS = ["silver-label", "train-classifier", "filter", "parse-pdf", "web-domains", "dedup-minhash", "dedup-pages"]


def _data_subparsers():
    top = build_parser()
    top_sub = next(a for a in top._actions if a.dest == "command")
    data = top_sub.choices["data"]
    return next(a for a in data._actions if a.dest == "data_command").choices


def test_every_command_and_option_has_help(capsys):
    subs = _data_subparsers()
    assert set(COMMANDS) <= set(subs)
    for name in COMMANDS:
        parser = subs[name]
        assert parser.description, name
        for action in parser._actions:
            if action.dest == "help":
                continue
            assert action.help and len(action.help) > 10, f"{name} {action.option_strings or action.dest}"
        with pytest.raises(SystemExit) as exc:
            main(["data", name, "--help"])
        assert exc.value.code == 0
        text = capsys.readouterr().out
        for action in parser._actions:
            for opt in action.option_strings:
                assert opt in text, f"{name}: {opt} missing from --help"


def test_data_cli_is_created_once():
    import argparse

    from megatron_s1.data.cli import data_subparsers
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    assert data_subparsers(sub) is data_subparsers(sub)


def _err(capsys, argv):
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_errors_are_one_line(tmp_path, capsys):
    tax = tmp_path / "tax.yaml"
    tax.write_text("physics: [optics]\n")
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"text": "light"}) + "\n")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "ok"}) + "\n{not json\n")
    out = str(tmp_path / "out.jsonl")
    with open(out, "w") as f:  # an earlier result: no failing command may touch it
        f.write("keep\n")

    err = _err(capsys, ["data", "dedup-minhash", "--input", str(tmp_path / "nope.jsonl"), "--output", out])
    assert "nope.jsonl' does not exist" in err
    err = _err(capsys, ["data", "dedup-minhash", "--input", str(bad), "--output", str(tmp_path / "o.jsonl")])
    assert "bad.jsonl:2 is not valid JSON" in err and "one JSON object" in err
    err = _err(capsys, ["data", "dedup-minhash", "--input", str(good), "--output", str(tmp_path / "o.jsonl"),
                        "--threshold", "1.5"])
    assert "--threshold 1.5 is outside (0, 1]" in err
    err = _err(capsys, ["data", "silver-label", "--taxonomy", str(tax), "--input", str(good), "--output", out])
    assert "no LLM client given" in err and "--llm-url" in err
    err = _err(capsys, ["data", "silver-label", "--taxonomy", str(tax), "--input", str(good), "--output", out,
                        "--llm-url", "http://127.0.0.1:9/v1"])
    assert "--llm-url needs --llm-model" in err
    err = _err(capsys, ["data", "silver-label", "--taxonomy", str(tax), "--input", str(good), "--output", out,
                        "--llm-client", "no_such_module:make"])
    assert "cannot load --llm-client 'no_such_module:make'" in err
    err = _err(capsys, ["data", "silver-label", "--taxonomy", str(tax), "--input", str(good), "--output", out,
                        "--llm-url", "localhost:8000", "--llm-model", "m"])
    assert "is not an http(s) URL" in err
    err = _err(capsys, ["data", "silver-label", "--taxonomy", str(tax), "--input", str(good), "--output", out,
                        "--text-key", "body", "--llm-client", "tests.data.curation.test_cli:EchoClient"])
    assert "has no string field 'body'" in err and "--text-key" in err
    err = _err(capsys, ["data", "filter", "--model", str(tmp_path), "--input", str(good), "--output", out])
    assert "model.bin' does not exist" in err
    assert open(out).read() == "keep\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("out.jsonl")] == ["out.jsonl"]  # no temp left


@pytest.mark.parametrize("content, message", [
    ("- physics\n- chemistry\n", "is not a non-empty mapping"),
    ("physics: optics\n", "domain 'physics' must map to a list of label strings"),
    ("physics: [optics]\nchemistry: [optics]\n", "label 'optics' is listed under both 'physics' and 'chemistry'"),
    ("other: [news]\n", "defines only 'other'"),
    ("physics: [optics\n", "is not valid YAML/JSON"),
])
def test_taxonomy_errors(tmp_path, content, message):
    from megatron_s1.data.curation.taxonomy import load_taxonomy
    path = tmp_path / "t.yaml"
    path.write_text(content)
    with pytest.raises(CurationError) as err:
        load_taxonomy(str(path))
    assert message in str(err.value) and "\n" not in str(err.value)


class EchoClient:
    def chat(self, messages):
        return "optics"


def test_plugin_client(tmp_path, capsys):
    (tmp_path / "tax.yaml").write_text("physics: [optics]\n")
    (tmp_path / "in.jsonl").write_text(json.dumps({"text": "lenses"}) + "\n")
    rc = main(["data", "silver-label", "--taxonomy", str(tmp_path / "tax.yaml"), "--input", str(tmp_path / "in.jsonl"),
               "--output", str(tmp_path / "o.jsonl"), "--llm-client", "tests.data.curation.test_cli:EchoClient"])
    assert rc == 0 and "labelled 1 documents (physics 1)" in capsys.readouterr().out


def test_http_client_errors():
    with socket.socket() as s:            # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = OpenAIChatClient(f"http://127.0.0.1:{port}/v1", "m", retries=0, timeout=5)
    with pytest.raises(CurationError, match="cannot reach .* start the server or fix --llm-url"):
        client.chat([{"role": "user", "content": "hi"}])
    with FakeLLMServer() as server:       # the fake answers 404 for model "missing"
        client = OpenAIChatClient(server.url, "missing", retries=0)
        with pytest.raises(CurationError, match="HTTP 404 .*model not found.*check --llm-url, --llm-model"):
            client.chat([{"role": "user", "content": "hi"}])
        ok = OpenAIChatClient(server.url, "m")
        assert ok.chat([{"role": "user", "content": "plain text"}]) == "other"
        assert server.requests[-1]["temperature"] == 0.0
