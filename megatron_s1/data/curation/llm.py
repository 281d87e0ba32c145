"""Pluggable LLM / VLM clients.

A client is any object with ``chat(messages: list[dict]) -> str`` (OpenAI chat-message format in, the
assistant's text out). Two ways to get one:

- ``OpenAIChatClient(base_url, model)``: any OpenAI-compatible server (vLLM, SGLang, lmdeploy, OpenAI)
  through ``POST {base_url}/chat/completions``; stdlib only, retries 429/5xx and connection errors.
- ``load_client("package.module:factory")``: your own Python object; ``factory(**kwargs)`` must return a
  client (for tests, a local model, a rate-limited gateway ...).

``chat_many`` runs many requests with a thread pool, keeping order.
"""
from __future__ import annotations

import importlib
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from megatron_s1.data.curation.errors import CurationError


class ChatClient(Protocol):
    def chat(self, messages: list[dict]) -> str: ...


class OpenAIChatClient:
    """OpenAI-compatible chat completions client (``temperature`` 0 by default for reproducible labels)."""

    def __init__(self, base_url: str, model: str, api_key_env: str | None = "OPENAI_API_KEY",
                 timeout: float = 120.0, max_tokens: int = 1024, temperature: float = 0.0, retries: int = 3):
        if not base_url.startswith(("http://", "https://")):
            raise CurationError(f"LLM URL {base_url!r} is not an http(s) URL",
                                "pass e.g. --llm-url http://localhost:8000/v1")
        self.url = base_url.rstrip("/")
        if not self.url.endswith("/chat/completions"):
            self.url += "/chat/completions"
        self.model = model
        self.api_key = os.environ.get(api_key_env) if api_key_env else None
        self.timeout = timeout
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.retries = retries

    def chat(self, messages: list[dict]) -> str:
        body = json.dumps({"model": self.model, "messages": messages, "temperature": self.temperature,
                           "max_tokens": self.max_tokens}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(8.0, 0.5 * 2 ** (attempt - 1)))
            request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                    payload = json.loads(resp.read())
            except urllib.error.HTTPError as err:
                detail = err.read()[:200].decode("utf-8", "replace")
                last = f"HTTP {err.code} from {self.url}: {detail}"
                if err.code == 429 or err.code >= 500:
                    continue
                raise CurationError(f"LLM server answered {last}",
                                    "check --llm-url, --llm-model and the API key variable") from None
            except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
                last = f"cannot reach {self.url} ({getattr(err, 'reason', err)})"
                continue
            except json.JSONDecodeError:
                raise CurationError(f"LLM server at {self.url} did not answer JSON",
                                    "point --llm-url at an OpenAI-compatible /v1 endpoint") from None
            try:
                content = payload["choices"][0]["message"]["content"]
            except (KeyError, IndexError, TypeError):
                raise CurationError(f"LLM server at {self.url} answered without choices[0].message.content",
                                    "point --llm-url at an OpenAI-compatible /v1 endpoint") from None
            return content or ""
        raise CurationError(f"LLM request failed after {self.retries + 1} tries: {last}",
                            "start the server or fix --llm-url")


def load_client(spec: str, **kwargs) -> ChatClient:
    """``"pkg.module:factory"`` -> ``factory(**kwargs)``; the result must have a ``chat`` method."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise CurationError(f"--llm-client {spec!r} is not MODULE:FACTORY",
                            "pass e.g. --llm-client mypkg.clients:make_client")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise CurationError(f"cannot load --llm-client {spec!r} ({err})",
                            "make the module importable (PYTHONPATH) and check the name") from None
    client = factory(**kwargs)
    if not callable(getattr(client, "chat", None)):
        raise CurationError(f"--llm-client {spec!r} returned {type(client).__name__} without a chat(messages) method",
                            "return an object with chat(messages) -> str")
    return client


def client_from_args(args, role: str = "llm") -> ChatClient | None:
    """Build the client named by ``--{role}-url/--{role}-model`` or ``--{role}-client``; None when neither."""
    url = getattr(args, f"{role}_url", None)
    spec = getattr(args, f"{role}_client", None)
    if url and spec:
        raise CurationError(f"both --{role}-url and --{role}-client given", "pass only one of them")
    if spec:
        return load_client(spec)
    if url:
        model = getattr(args, f"{role}_model", None)
        if not model:
            raise CurationError(f"--{role}-url needs --{role}-model", f"pass the served model name, e.g. --{role}-model qwen3-8b")
        return OpenAIChatClient(url, model, api_key_env=getattr(args, "api_key_env", "OPENAI_API_KEY"),
                                timeout=getattr(args, "llm_timeout", 120.0))
    return None


def add_client_args(parser, role: str = "llm", what: str = "LLM", required: bool = True) -> None:
    """Add --{role}-url/--{role}-model/--{role}-client (+ --api-key-env, --concurrency once)."""
    g = parser.add_argument_group(f"{what} client" + ("" if required else " (optional)"))
    g.add_argument(f"--{role}-url", help=f"base URL of an OpenAI-compatible server for the {what}, e.g. "
                   "http://localhost:8000/v1 (POST <url>/chat/completions)")
    g.add_argument(f"--{role}-model", help=f"model name sent to the {what} server (required with --{role}-url)")
    g.add_argument(f"--{role}-client", metavar="MODULE:FACTORY",
                   help=f"instead of a server: a Python factory returning an object with chat(messages) -> str "
                   f"used as the {what}")
    if not any(a.dest == "api_key_env" for a in parser._actions):
        parser.add_argument("--api-key-env", default="OPENAI_API_KEY",
                            help="environment variable holding the API key sent as 'Authorization: Bearer' "
                            "(default: OPENAI_API_KEY; unset = no header)")
        parser.add_argument("--concurrency", type=int, default=8,
                            help="parallel requests to the LLM/VLM server (default: 8)")
        parser.add_argument("--llm-timeout", type=float, default=120.0,
                            help="seconds per request before a retry (default: 120)")


def require_client(client, role: str = "llm"):
    if client is None:
        raise CurationError(f"no {role.upper()} client given",
                            f"pass --{role}-url URL --{role}-model NAME or --{role}-client MODULE:FACTORY")
    return client


def chat_many(client: ChatClient, requests: Sequence[list[dict]], concurrency: int = 8) -> list[str]:
    """Answer every message list in ``requests`` (same order), ``concurrency`` at a time."""
    if concurrency < 1:
        raise CurationError(f"--concurrency {concurrency} is below 1", "pass a positive number")
    if concurrency == 1 or len(requests) <= 1:
        return [client.chat(m) for m in requests]
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return list(pool.map(client.chat, requests))
