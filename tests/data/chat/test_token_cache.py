"""Cached token tables give the same samples as direct tokenization; the key follows data and prompts."""
from __future__ import annotations

import json
import os

import numpy as np

from megatron_s1.config.schema import load_config
from megatron_s1.data.chat.dataset import ChatSamples
from megatron_s1.data.chat.format import ChatTokenizer
from megatron_s1.data.chat.task import TokenTable, _cache_key, build_chat_data, load_or_tokenize
from megatron_s1.data.chat.mixture import parse_specs, read_conversations
from megatron_s1.tokenizer import load_tokenizer


def _cfg(tmp_path, path, *extra):
    return load_config(None, [f"run.dir={tmp_path}", "train.task=sft", f"sft.datasets=[{{path: {path}}}]",
                              "data.split=80,20,0", "data.seq_length=64", *extra])


def _write(path, n):
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"messages": [{"role": "user", "content": f"q{i} " * (1 + i % 7)},
                                             {"role": "assistant", "content": f"a{i} " * (1 + i % 11)}]}) + "\n")


def test_cached_table_equals_direct(tmp_path):
    data = tmp_path / "c.jsonl"
    _write(data, 30)
    tok = load_tokenizer()
    cfg = _cfg(tmp_path, data)
    spec = parse_specs(cfg.sft.datasets)[0]
    convs = read_conversations(str(data))
    chat = ChatTokenizer(tok, "qwen3")
    table = load_or_tokenize(cfg, 0, spec, convs, chat, {}, None, str(tmp_path / "cache"))
    [cached] = os.listdir(tmp_path / "cache")
    again = TokenTable.load(str(tmp_path / "cache" / cached))
    for i, rec in enumerate(convs):
        direct = chat(rec["messages"])
        for t in (table.get(i), again.get(i)):
            assert list(t.ids) == direct.ids and list(t.mask) == direct.mask
    mix, train, valid, _ = build_chat_data(cfg, tok)
    ref = ChatSamples([chat(convs[int(i)]["messages"]) for _, i in mix.train], 64)
    assert len(train) == len(ref) and all(np.array_equal(train[k][0], ref[k][0]) and
                                          np.array_equal(train[k][1], ref[k][1]) for k in range(len(ref)))
    # The key changes with the data and with the system prompts.
    key = _cache_key(cfg, spec, chat, {}, None)
    assert key != _cache_key(cfg, spec, chat, {"x": "y"}, None)
    _write(data, 31)
    assert key != _cache_key(cfg, spec, chat, {}, None)
