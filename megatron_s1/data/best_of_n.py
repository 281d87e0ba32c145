"""`megatron-s1 data best-of-n`: offline-RL data selection from N sampled responses per prompt.

For every prompt, score its N responses with a reward and keep the best one if its reward reaches the
threshold; the kept (prompt, best response) pairs are written as chat jsonl ready for `train.task=sft`.

Input jsonl, either grouped (one line per prompt)::

    {"id": "q1", "prompt": "What is 2+3?", "responses": ["5", "6"], "reference": "5", "task": "math"}

or flat (one line per response, grouped by "id", else by the prompt)::

    {"id": "q1", "prompt": "What is 2+3?", "response": "5", "reference": "5"}

``prompt`` may be a string (one user turn) or a list of chat ``messages`` (system/user/...); the reward
sees the text of the last user turn. A record may carry ``family`` (kept for system-prompt isolation).

The reward is ``--reward``: a ``module:function`` callable ``fn(prompt, response, reference=None, **meta) ->
float`` (e.g. ``megatron_s1.rl.rewards:math_reward``), or the name of a task in the RL reward registry
(``megatron_s1.rl.rewards.get_reward``), or ``per-task``: the registry entry named by each record's
``task``. Ties are broken by ``--tie-break`` (shortest response, or the first).
"""
from __future__ import annotations

import importlib
import json
import os
import sys
from typing import Callable, Iterable, Optional

from megatron_s1.data.cli import HelpFormatter, data_subparsers, safe
from megatron_s1.data.curation.errors import CurationError
from megatron_s1.data.curation.jsonl import JsonlWriter

RewardFn = Callable[..., float]


def load_reward(spec: str) -> Callable[[dict, str], float]:
    """A scorer (record, response) -> float from a `module:function` spec, a registry task, or per-task."""
    if ":" in spec:
        module, _, name = spec.partition(":")
        try:
            fn = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as err:
            raise CurationError(f"cannot load reward {spec!r} ({err})",
                                "pass module:function, e.g. megatron_s1.rl.rewards:math_reward") from None
        return lambda rec, resp: _call(fn, rec, resp)
    try:
        from megatron_s1.rl.rewards import get_reward
    except ImportError as err:  # pragma: no cover - registry not available
        raise CurationError(f"no RL reward registry ({err})", "pass a module:function verifier") from None
    if spec == "per-task":
        cache: dict = {}

        def score(rec, resp):
            task = rec.get("task")
            if task is None:
                raise CurationError(f"record {rec.get('id')!r} has no 'task'", "add one or pass --reward module:function")
            if task not in cache:
                cache[task] = _registry(get_reward, task)
            return _call(cache[task], rec, resp)
        return score
    fn = _registry(get_reward, spec)
    return lambda rec, resp: _call(fn, rec, resp)


def _registry(get_reward, task: str):
    try:
        return get_reward(task)
    except KeyError as err:
        raise CurationError(str(err).strip("'\""), "pass a registered task or module:function") from None


def prompt_text(prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        users = [m for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        content = (users[-1] if users else prompt[-1]).get("content", "")
        if isinstance(content, list):
            return "".join(i.get("text", "") for i in content if isinstance(i, dict))
        return str(content)
    raise CurationError(f"prompt {prompt!r:.60} must be a string or a list of messages")


def _call(fn, rec: dict, response: str) -> float:
    meta = {k: v for k, v in rec.items() if k not in ("prompt", "responses", "response", "reference", "id")}
    value = fn(prompt_text(rec["prompt"]), response, rec.get("reference"), **meta)
    return float(value)


def group_records(records: Iterable[dict]) -> list[dict]:
    """Grouped records as they are; flat ones merged by id (else prompt text), in first-seen order."""
    groups: dict = {}
    out = []
    for n, rec in enumerate(records):
        if "prompt" not in rec:
            raise CurationError(f"record {n + 1} has no 'prompt'", "every line needs prompt and responses/response")
        if "responses" in rec:
            if not isinstance(rec["responses"], list):
                raise CurationError(f"record {n + 1}: 'responses' must be a list of strings")
            out.append(dict(rec))
            continue
        if "response" not in rec:
            raise CurationError(f"record {n + 1} has neither 'responses' nor 'response'")
        key = rec.get("id", json.dumps(rec["prompt"], sort_keys=True))
        if key not in groups:
            groups[key] = {k: v for k, v in rec.items() if k != "response"}
            groups[key]["responses"] = []
            out.append(groups[key])
        groups[key]["responses"].append(rec["response"])
    return out


def to_messages(prompt) -> list:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def select_best(groups: list[dict], score: Callable[[dict, str], float], threshold: float,
                tie_break: str = "shortest", max_pass_rate: Optional[float] = None) -> tuple[list, dict]:
    """(kept chat records, stats). Kept: best response per prompt with reward >= threshold."""
    kept, stats = [], {"prompts": 0, "responses": 0, "kept": 0, "below_threshold": 0, "too_easy": 0,
                       "no_responses": 0}
    for rec in groups:
        stats["prompts"] += 1
        responses = [r for r in rec["responses"] if isinstance(r, str)]
        stats["responses"] += len(responses)
        if not responses:
            stats["no_responses"] += 1
            continue
        rewards = [score(rec, r) for r in responses]
        best = max(rewards)
        passed = sum(r >= threshold for r in rewards) / len(rewards)
        if best < threshold:
            stats["below_threshold"] += 1
            continue
        if max_pass_rate is not None and passed > max_pass_rate:
            stats["too_easy"] += 1
            continue
        ties = [i for i, r in enumerate(rewards) if r == best]
        pick = min(ties, key=lambda i: (len(responses[i]), i)) if tie_break == "shortest" else ties[0]
        out = {"messages": to_messages(rec["prompt"]) + [{"role": "assistant", "content": responses[pick]}],
               "reward": best, "pass_rate": round(passed, 4), "n": len(responses)}
        for key in ("id", "family", "task", "reference"):
            if key in rec:
                out[key] = rec[key]
        kept.append(out)
        stats["kept"] += 1
    return kept, stats


def _read_jsonl(path: str) -> list[dict]:
    from megatron_s1.data.jsonl_input import json_lines

    return [rec for _, rec in json_lines(path, CurationError)]


def _cmd_best_of_n(args) -> int:
    if args.tie_break not in ("shortest", "first"):
        raise CurationError(f"--tie-break {args.tie_break!r}", "use shortest or first")
    score = load_reward(args.reward)
    groups = group_records(_read_jsonl(args.input))
    kept, stats = select_best(groups, score, args.threshold, args.tie_break, args.max_pass_rate)
    with JsonlWriter(args.output) as out:  # (atomic: a failed run keeps an earlier output)
        for rec in kept:
            out.write(rec)
    print(json.dumps({"output": args.output, **stats}))
    return 0


def register(subparsers) -> None:
    sub = data_subparsers(subparsers)
    p = sub.add_parser("best-of-n", help="keep the best of N sampled responses per prompt (offline-RL selection)",
                       description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--input", required=True, help="jsonl of prompts with N responses (grouped or flat)")
    p.add_argument("--output", required=True, help="chat jsonl of kept (prompt, best response) pairs")
    p.add_argument("--reward", required=True,
                   help="module:function verifier, a task of megatron_s1.rl.rewards, or per-task")
    p.add_argument("--threshold", type=float, default=1.0, help="minimum reward of the kept response (default 1.0)")
    p.add_argument("--max-pass-rate", type=float, default=None,
                   help="drop prompts whose share of responses at the threshold exceeds this (too easy)")
    p.add_argument("--tie-break", default="shortest", help="shortest (default) or first")
    p.set_defaults(func=safe(_cmd_best_of_n))
    from megatron_s1.data.chat.ablation import register as register_ablation

    register_ablation(sub)


if __name__ == "__main__":  # pragma: no cover
    from megatron_s1.cli import main

    sys.exit(main(["data", "best-of-n", *sys.argv[1:]]))
