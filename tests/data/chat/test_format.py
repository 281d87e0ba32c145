"""Chat formatting: Qwen3 text identical to the jinja template, assistant masks on hand-built conversations."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from megatron_s1.data.chat.format import (ChatFormatError, ChatTokenizer, JinjaFormatter, Media, apply_system_prefix,
                                          format_qwen3, resolve_family_prompts)
from megatron_s1.tokenizer import bundled_tokenizer_dir, load_tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "qwen3_template.jinja"), encoding="utf-8") as _f:
    QWEN3_TEMPLATE = _f.read()

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Formula of water?"},
     {"role": "assistant", "content": "H2O."}],
    [{"role": "user", "content": "Compute 3*4."},
     {"role": "assistant", "content": "12.", "reasoning_content": "3 times 4 is 12."}],
    [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<think>\ninline thought\n</think>\n\nanswer"}],
    # reasoning in an earlier turn is dropped by the template
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "reasoning_content": "r1"},
     {"role": "user", "content": "c"}, {"role": "assistant", "content": "d", "reasoning_content": "r2"}],
    # a trailing user turn: no assistant turn after the last query
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}],
]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="module")
def template_dir(tmp_path_factory):
    """The bundled tokenizer plus a Qwen3 chat_template in tokenizer_config.json."""
    d = tmp_path_factory.mktemp("tok_tmpl")
    for name in os.listdir(bundled_tokenizer_dir()):
        shutil.copy(os.path.join(bundled_tokenizer_dir(), name), d / name)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg["chat_template"] = QWEN3_TEMPLATE
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    return str(d)


@pytest.mark.parametrize("k", range(len(CONVERSATIONS)))
@pytest.mark.parametrize("gen", [False, True])
def test_qwen3_text_equals_jinja(k, gen):
    messages = CONVERSATIONS[k]
    assert format_qwen3(messages, gen).text == JinjaFormatter(QWEN3_TEMPLATE).render(messages, gen)


def test_single_turn_mask_by_hand(tok):
    messages = CONVERSATIONS[0]
    out = ChatTokenizer(tok, "qwen3")(messages)
    text = "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n4.<|im_end|>\n"
    assert tok.decode(out.ids) == text
    assert out.ids == tok.encode(text)  # segment-wise encoding equals whole-text encoding
    head = tok.encode("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")
    body = tok.encode("<think>\n\n</think>\n\n4.<|im_end|>")
    assert out.mask == [0] * len(head) + [1] * len(body) + [0] * len(tok.encode("\n"))
    trained = [t for t, m in zip(out.ids, out.mask) if m]
    assert tok.decode(trained) == "<think>\n\n</think>\n\n4.<|im_end|>"


def test_multi_turn_mask_by_hand(tok):
    out = ChatTokenizer(tok, "qwen3")(CONVERSATIONS[1])
    spans, cur = [], []
    for t, m in zip(out.ids, out.mask):
        if m:
            cur.append(t)
        elif cur:
            spans.append(tok.decode(cur))
            cur = []
    assert spans == ["Hello!<|im_end|>", "<think>\n\n</think>\n\nH2O.<|im_end|>"]
    assert out.ids == tok.encode(format_qwen3(CONVERSATIONS[1]).text)
    last = ChatTokenizer(tok, "qwen3")(CONVERSATIONS[1], loss_on="last_assistant")
    assert tok.decode([t for t, m in zip(last.ids, last.mask) if m]) == "<think>\n\n</think>\n\nH2O.<|im_end|>"
    assert last.ids == out.ids


def test_reasoning_is_trained(tok):
    out = ChatTokenizer(tok, "qwen3")(CONVERSATIONS[2])
    assert tok.decode([t for t, m in zip(out.ids, out.mask) if m]) == "<think>\n3 times 4 is 12.\n</think>\n\n12.<|im_end|>"


@pytest.mark.parametrize("k", range(len(CONVERSATIONS)))
def test_template_dir_round_trip(tok, template_dir, k):
    """sft.template=auto picks the directory's jinja template; ids, masks and text match the built-in formatter."""
    jinja = ChatTokenizer(tok, "auto", template_dir)
    assert jinja.kind == "jinja"
    ours = ChatTokenizer(tok, "qwen3")
    a, b = jinja(CONVERSATIONS[k]), ours(CONVERSATIONS[k])
    assert a.ids == b.ids and a.mask == b.mask
    assert tok.decode(a.ids) == format_qwen3(CONVERSATIONS[k]).text
    assert ChatTokenizer(tok, "auto", bundled_tokenizer_dir()).kind == "qwen3"  # no template -> built-in


def test_prefix_inconsistent_template_is_rejected(tok, tmp_path):
    # A template that numbers the turns from the end: no generation prompt is a prefix of the whole.
    d = tmp_path / "tok"
    shutil.copytree(bundled_tokenizer_dir(), d)
    (d / "chat_template.jinja").write_text("{% for m in messages %}<|im_start|>{{ m.role }} "
                                           "{{ messages|length - loop.index0 }}\n{{ m.content }}<|im_end|>\n"
                                           "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    with pytest.raises(ChatFormatError, match="sft.template=qwen3"):
        ChatTokenizer(tok, "jinja", str(d))(CONVERSATIONS[4])
    out = ChatTokenizer(tok, "qwen3")(CONVERSATIONS[4])  # built-in: earlier reasoning dropped, both turns trained
    assert tok.decode([t for t, m in zip(out.ids, out.mask) if m]) == "b<|im_end|><think>\nr2\n</think>\n\nd<|im_end|>"


def test_media_inside_turns(tok):
    expand = {"image": [9001, 9002, 9002, 9003], "timeseries": [9010, 9011, 9012]}
    chat = ChatTokenizer(tok, "qwen3", media_expand=lambda m: expand[m.kind])
    messages = [{"role": "user", "content": [{"text": "Look: "}, {"image": "a.png"}, {"text": " and "},
                                              {"timeseries": "s.npy", "sampling_rate": 100}]},
                {"role": "assistant", "content": "A cat and a sine."}]
    out = chat(messages)
    assert [m.kind for m in out.media] == ["image", "timeseries"]
    for tid in (9001, 9002, 9003, 9010, 9011, 9012):
        assert tid in out.ids and all(m == 0 for t, m in zip(out.ids, out.mask) if t == tid)
    assert format_qwen3(messages).text.startswith("<|im_start|>user\nLook: <image> and <timeseries><|im_end|>")
    with pytest.raises(ChatFormatError, match="no encoder"):
        ChatTokenizer(tok, "qwen3")(messages)
    assert isinstance(format_qwen3(messages).segments[1][0], Media)


def test_system_prefix_isolation():
    prompts = resolve_family_prompts({"scientific": "[sci]", "general": "[gen]"}, ["scientific", "general"])
    m = apply_system_prefix(CONVERSATIONS[0], prompts["scientific"])
    assert m[0] == {"role": "system", "content": "[sci]"} and m[1:] == CONVERSATIONS[0]
    m = apply_system_prefix(CONVERSATIONS[1], prompts["general"])
    assert m[0]["content"] == "[gen]\n\nBe brief." and len(m) == len(CONVERSATIONS[1])
    with pytest.raises(ChatFormatError, match="mutually exclusive"):
        resolve_family_prompts({"a": "You are", "b": "You are a chemist"}, ["a", "b"])
    with pytest.raises(ChatFormatError, match="no sft.system_prompts"):
        resolve_family_prompts({"a": "x"}, ["b"])


def test_batched_equals_single(tok):
    chat = ChatTokenizer(tok, "qwen3")
    batched = chat.many(CONVERSATIONS, "all_assistant", num_threads=2)
    for messages, b in zip(CONVERSATIONS, batched):
        a = chat(messages)
        assert (a.ids, a.mask) == (b.ids, b.mask)
