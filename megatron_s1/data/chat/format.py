"""Chat formatting (Qwen3 / Intern-S1 template) into token ids with an assistant-only loss mask.

A conversation is a list of messages ``{"role": system|user|assistant, "content": ...}``; an assistant
message may carry ``reasoning_content`` (or an inline ``<think>...</think>`` block). ``content`` is a
string or a list of items ``{"text": ...}``, ``{"image": path}``, ``{"video": [frames], "fps": f}`` (vision.arch=pro),
``{"timeseries": path, "sampling_rate": r}``
(the item format of the multimodal CPT jsonl), so images and series can sit inside any turn.

Formatting yields *segments* ``(text_or_media, train)``: the rendered text cut into pieces with a flag
saying whether the piece is assistant output. Tokens of a piece are trained on iff the flag is set; the
pieces concatenate to exactly the template's text.

Two formatters:

* ``qwen3``: our Python rendering of the Qwen3 chat template (the one Intern-S1 ships): system turn,
  ``<|im_start|>role\\ncontent<|im_end|>\\n`` per turn, thinking blocks ``<think>\\n...\\n</think>\\n\\n`` on the
  assistant turns after the last user query (earlier turns drop their reasoning, as the template does).
  The trained span of an assistant turn is everything after ``<|im_start|>assistant\\n`` up to and
  including ``<|im_end|>``; the header and the newline after ``<|im_end|>`` are not trained.
  ``tests/data/chat`` checks that the text equals the jinja rendering of the Qwen3 template.
* ``jinja``: any ``chat_template`` of a tokenizer directory, rendered with jinja2; assistant spans come
  from the prefix trick: ``messages[:i]`` rendered with the generation prompt must be a prefix of the
  full rendering, and assistant turn i's output runs from there to the next ``<|im_end|>`` (inclusive).
  (Rendering ``messages[:i+1]`` is not prefix-consistent for Qwen3, which adds an empty think block to a
  final assistant turn and drops reasoning before the last query; the generation prompt is.) Templates
  that fail the check are rejected with a message pointing at ``sft.template=qwen3``.

Tokenization encodes every piece on its own and concatenates. Pieces are cut at special tokens and
right after ``<|im_start|>assistant\\n``, where the Qwen byte-level pre-tokenizer splits anyway, so the ids
equal the tokenization of the whole text whenever the assistant output does not start with whitespace.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
ROLES = ("system", "user", "assistant")


class ChatFormatError(ValueError):
    """A conversation the formatter cannot render (one line naming the sample problem)."""


@dataclass
class Media:
    """An image or time series inside a turn; expanded to placeholder tokens at tokenization."""
    kind: str  # image | video | timeseries
    item: dict


@dataclass
class Formatted:
    segments: list  # [(str | Media, train: bool)]

    @property
    def text(self) -> str:
        return "".join(s if isinstance(s, str) else MEDIA_PLACEHOLDER[s.kind] for s, _ in self.segments)


MEDIA_PLACEHOLDER = {"image": "<image>", "video": "<video>", "timeseries": "<timeseries>"}


# --------------------------------------------------------------------------------------------- helpers
def content_parts(content: Any) -> list:
    """Message content -> list of str / Media (adjacent strings merged)."""
    if content is None:
        return [""]
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        raise ChatFormatError(f"message content must be a string or a list of items, got {type(content).__name__}")
    parts: list = []
    for item in content:
        if isinstance(item, str):
            item = {"text": item}
        if not isinstance(item, dict):
            raise ChatFormatError(f"content item {item!r} must be a mapping")
        kind = item.get("type")
        if "text" in item and kind in (None, "text"):
            text = item["text"]
            if parts and isinstance(parts[-1], str):
                parts[-1] += text
            else:
                parts.append(text)
        elif "image" in item or kind == "image":
            parts.append(Media("image", item))
        elif "video" in item or kind == "video":
            parts.append(Media("video", item))
        elif "timeseries" in item or kind == "timeseries":
            parts.append(Media("timeseries", item))
        else:
            raise ChatFormatError(f"content item {item!r} needs a text, image, video or timeseries key")
    return parts or [""]


def _text_only(content: Any) -> str:
    parts = content_parts(content)
    return "".join(p if isinstance(p, str) else MEDIA_PLACEHOLDER[p.kind] for p in parts)


def _check(messages: list) -> None:
    if not isinstance(messages, list) or not messages:
        raise ChatFormatError("a conversation needs a non-empty 'messages' list")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ChatFormatError(f"message {i} needs role system, user or assistant, got {m!r:.80}")
        if m["role"] == "system" and i != 0:
            raise ChatFormatError(f"message {i}: a system message may only come first")


def split_thinking(content: str, reasoning: Optional[str]) -> tuple[str, str]:
    """(reasoning, answer) of an assistant turn, as the Qwen3 template derives them."""
    if isinstance(reasoning, str):
        return reasoning, content
    if "</think>" in content:
        reasoning = content.split("</think>")[0].rstrip("\n").split("<think>")[-1].lstrip("\n")
        return reasoning, content.split("</think>")[-1].lstrip("\n")
    return "", content


def last_query_index(messages: list) -> int:
    for i in range(len(messages) - 1, -1, -1):
        m = messages[i]
        if m["role"] == "user":
            c = m.get("content")
            if not (isinstance(c, str) and c.startswith("<tool_response>") and c.endswith("</tool_response>")):
                return i
    return len(messages) - 1


# ------------------------------------------------------------------------------------ Qwen3 formatter
def format_qwen3(messages: list, add_generation_prompt: bool = False) -> Formatted:
    """Render like the Qwen3 jinja template (no tools), cut into trained / untrained segments."""
    _check(messages)
    segs: list = []

    def add(piece, train: bool) -> None:
        if isinstance(piece, str) and not piece:
            return
        if segs and isinstance(piece, str) and isinstance(segs[-1][0], str) and segs[-1][1] == train:
            segs[-1] = (segs[-1][0] + piece, train)
        else:
            segs.append((piece, train))

    lq = last_query_index(messages)
    for i, m in enumerate(messages):
        role = m["role"]
        if role in ("system", "user"):
            add(f"{IM_START}{role}\n", False)
            for p in content_parts(m.get("content")):
                add(p, False)
            add(f"{IM_END}\n", False)
            continue
        parts = content_parts(m.get("content"))
        train = bool(m.get("train", True))
        add(f"{IM_START}assistant\n", False)
        # Thinking only concerns the leading text of the turn.
        first = parts[0] if isinstance(parts[0], str) else ""
        rest = parts[1:] if isinstance(parts[0], str) else parts
        reasoning, answer = split_thinking(first, m.get("reasoning_content"))
        if i > lq and (i == len(messages) - 1 or reasoning):
            body = "<think>\n" + reasoning.strip("\n") + "\n</think>\n\n" + answer.lstrip("\n")
        else:
            body = answer
        add(body, train)
        for p in rest:
            add(p, train)
        add(IM_END, train)
        add("\n", False)
    if add_generation_prompt:
        add(f"{IM_START}assistant\n", False)
    return Formatted(segs)


# ------------------------------------------------------------------------------------ jinja templates
def load_chat_template(tokenizer_dir: Optional[str]) -> Optional[str]:
    """The jinja chat_template of a tokenizer directory (tokenizer_config.json or chat_template.jinja)."""
    if not tokenizer_dir:
        return None
    path = os.path.join(tokenizer_dir, "chat_template.jinja")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            return f.read()
    path = os.path.join(tokenizer_dir, "tokenizer_config.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            tmpl = json.load(f).get("chat_template")
        if isinstance(tmpl, list):  # [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in tmpl}
            tmpl = named.get("default") or next(iter(named.values()), None)
        return tmpl
    return None


def _compile(template: str):
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(msg):
        raise jinja2.exceptions.TemplateError(msg)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template)


class JinjaFormatter:
    """A tokenizer directory's chat template; assistant spans by the prefix trick."""

    def __init__(self, template: str, end_token: str = IM_END, **extra):
        self.template = _compile(template)
        self.end_token = end_token  # an assistant turn's output runs from its generation prompt to this
        self.extra = extra

    def render(self, messages: list, add_generation_prompt: bool = False) -> str:
        plain = [dict(m, content=_text_only(m.get("content"))) for m in messages]
        return self.template.render(messages=plain, add_generation_prompt=add_generation_prompt, **self.extra)

    def __call__(self, messages: list, add_generation_prompt: bool = False) -> Formatted:
        _check(messages)
        if any(not isinstance(p, str) for m in messages for p in content_parts(m.get("content"))):
            raise ChatFormatError("images / time series inside turns need sft.template=qwen3")
        full = self.render(messages, add_generation_prompt)
        segs, pos = [], 0
        for i, m in enumerate(messages):
            if m["role"] != "assistant" or not m.get("train", True):
                continue
            head = self.render(messages[:i], add_generation_prompt=True)
            end = full.find(self.end_token, len(head))
            if not full.startswith(head) or len(head) < pos or end < 0:
                raise ChatFormatError("the tokenizer's chat_template is not prefix-consistent for this conversation "
                                      f"(the generation prompt of turn {i} is not a prefix of the full rendering); "
                                      "use sft.template=qwen3")
            end += len(self.end_token)
            segs += [(full[pos:len(head)], False), (full[len(head):end], True)]
            pos = end
        segs.append((full[pos:], False))
        return Formatted([(t, tr) for t, tr in segs if t])


# ----------------------------------------------------------------------------- system-prompt isolation
def apply_system_prefix(messages: list, prefix: Optional[str]) -> list:
    """Inject a data family's system prefix: prepended to an existing system turn, else a new one."""
    if not prefix:
        return messages
    if messages and messages[0]["role"] == "system":
        old = _text_only(messages[0].get("content"))
        return [dict(messages[0], content=prefix + ("\n\n" + old if old else "")), *messages[1:]]
    return [{"role": "system", "content": prefix}, *messages]


def resolve_family_prompts(system_prompts: dict, families: list) -> dict:
    """Check that every family used has exactly one prefix and prefixes are mutually exclusive."""
    prompts = {str(k): str(v) for k, v in (system_prompts or {}).items()}
    for fam in families:
        if fam is not None and prompts and fam not in prompts:
            raise ChatFormatError(f"data family {fam!r} has no sft.system_prompts entry; known: {sorted(prompts)}")
    vals = [v for v in prompts.values() if v]
    for a in vals:
        for b in vals:
            if a is not b and a != b and b.startswith(a):
                raise ChatFormatError("sft.system_prompts must be mutually exclusive: one prefix starts another "
                                      f"({a[:40]!r} / {b[:40]!r})")
    if len(set(vals)) != len(vals):
        raise ChatFormatError("sft.system_prompts must be mutually exclusive: two families share a prefix")
    return prompts


# ---------------------------------------------------------------------------------------- tokenization
@dataclass
class Tokenized:
    ids: list
    mask: list  # 1 = train on predicting this token
    media: list = field(default_factory=list)  # [Media] in order of appearance


class ChatTokenizer:
    """Formatter + tokenizer: a conversation -> (ids, assistant mask, media)."""

    def __init__(self, tokenizer, template: str = "auto", tokenizer_dir: Optional[str] = None, media=None,
                 media_expand=None):
        self.tok = tokenizer
        tmpl = load_chat_template(tokenizer_dir) if template in ("auto", "jinja") else None
        if template == "jinja" and tmpl is None:
            raise ChatFormatError(f"sft.template=jinja but {tokenizer_dir!r} has no chat_template")
        if template not in ("auto", "jinja", "qwen3"):
            raise ChatFormatError(f"sft.template must be auto, jinja or qwen3, got {template!r}")
        self.formatter = JinjaFormatter(tmpl) if tmpl else format_qwen3
        self.kind = "jinja" if tmpl else "qwen3"
        self.media_expand = media_expand  # Media -> list[int] (placeholder ids); None = no media allowed

        self.template_text = tmpl  # for cache keys

    def segments(self, messages: list, loss_on: str = "all_assistant") -> list:
        if loss_on == "last_assistant":
            last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
            messages = [dict(m, train=(i == last)) if m["role"] == "assistant" else m for i, m in enumerate(messages)]
        elif loss_on != "all_assistant":
            raise ChatFormatError(f"sft.loss_on must be all_assistant or last_assistant, got {loss_on!r}")
        segs = self.formatter(messages).segments
        if self.media_expand is None:
            for piece, _ in segs:
                if isinstance(piece, Media):
                    raise ChatFormatError(f"a conversation has an {piece.kind} but the model has no encoder for it")
        return segs

    def _assemble(self, segs: list, encoded: Iterator) -> Tokenized:
        ids, mask, media = [], [], []
        for piece, train in segs:
            if isinstance(piece, Media):
                seg = self.media_expand(piece)
                media.append(piece)
                ids += seg
                mask += [0] * len(seg)  # placeholders are never predicted
            else:
                seg = next(encoded)
                ids += seg
                mask += [int(train)] * len(seg)
        return Tokenized(ids, mask, media)

    def __call__(self, messages: list, loss_on: str = "all_assistant") -> Tokenized:
        segs = self.segments(messages, loss_on)
        return self._assemble(segs, (self.tok.encode(p) for p, _ in segs if isinstance(p, str)))

    def many(self, conversations: list, loss_on: str = "all_assistant", num_threads: int = 8) -> list:
        """Tokenize many conversations with one batched (multi-threaded) encode; same result as __call__."""
        all_segs = [self.segments(m, loss_on) for m in conversations]
        texts = [p for segs in all_segs for p, _ in segs if isinstance(p, str)]
        encode_batch = getattr(self.tok, "encode_batch", None)
        encoded = iter(encode_batch(texts, num_threads=num_threads) if encode_batch else [self.tok.encode(t) for t in texts])
        return [self._assemble(segs, encoded) for segs in all_segs]
