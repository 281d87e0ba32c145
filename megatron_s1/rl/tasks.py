"""Prompt sources for RL: built-in verifiable toy tasks and jsonl prompt sets.

A prompt record is ``{"prompt": str, "reference": str, "task": str}``; ``task`` selects the reward in
megatron_s1/rl/rewards.py, so one source may mix tasks (the RL loop combines their rewards, see
``rewards.RewardMixer``). Toy tasks also restrict decoding to the tokens that can form an answer
(``allowed_tokens``), like an inference engine's guided decoding, so a randomly initialised tiny model already
gets a non-zero reward and RL has a signal to amplify; the training log-probs use the same restriction. A jsonl
source restricts decoding only when every task in it does (to the union of their token sets). jsonl prompts may
carry images (``"images": [...]``, ``<image>`` markers; see megatron_s1/rl/multimodal.py).
"""
from __future__ import annotations

import os
import random
from typing import Optional

from megatron_s1.config.schema import ConfigError


class PromptSource:
    task = "exact"
    has_images = False

    def sample(self, n: int, rng: random.Random) -> list[dict]:
        raise NotImplementedError

    def allowed_tokens(self, tokenizer) -> Optional[list[int]]:
        return None


def _digit_tokens(tokenizer) -> list[int]:
    ids = []
    for d in range(10):
        enc = tokenizer.encode(str(d))
        if len(enc) != 1:
            raise ValueError(f"digit {d} is not a single token of this tokenizer; the toy tasks need that")
        ids.append(enc[0])
    return ids


class ToyAddition(PromptSource):
    """"a+b=" -> the single digit a+b (a + b < 10): 55 prompts, 4 prompt tokens, one answer token."""
    task = "toy_add"

    def __init__(self):
        self.pairs = [(a, b) for a in range(10) for b in range(10) if a + b < 10]

    def sample(self, n, rng):
        return [{"prompt": f"{a}+{b}=", "reference": str(a + b), "task": self.task}
                for a, b in (rng.choice(self.pairs) for _ in range(n))]

    def allowed_tokens(self, tokenizer):
        return _digit_tokens(tokenizer)


class ToyCopy(PromptSource):
    """"copy d=" -> d: the easiest verifiable task (smoke tests)."""
    task = "toy_copy"

    def sample(self, n, rng):
        return [{"prompt": f"copy {d}=", "reference": str(d), "task": self.task}
                for d in (rng.randrange(10) for _ in range(n))]

    def allowed_tokens(self, tokenizer):
        return _digit_tokens(tokenizer)


# Tasks whose answers are drawn from a fixed token set (guided decoding): task -> tokenizer -> token ids.
TASK_ALLOWED_TOKENS = {"toy_add": _digit_tokens, "toy_copy": _digit_tokens}


class JsonlPrompts(PromptSource):
    """One JSON object per line with prompt / reference (answer) / task (reward name; default ``default_task``)."""

    def __init__(self, path: str, default_task: str = "math"):
        from megatron_s1.data.jsonl_input import json_lines
        from megatron_s1.rl.rewards import known_tasks, needs_reference

        self.records = []
        known = known_tasks()
        for n, rec in json_lines(path, what="RL prompt file"):
            if not isinstance(rec, dict) or not isinstance(rec.get("prompt"), str):
                raise ConfigError(f"{path}:{n}: a prompt record needs a string field \"prompt\"")
            rec.setdefault("task", default_task)
            if rec["task"] not in known:
                raise ConfigError(f"{path}:{n}: task {rec['task']!r} has no registered reward; use one of "
                                  f"{', '.join(sorted(known))} (or register_reward it)")
            rec.setdefault("reference", rec.get("answer"))
            if needs_reference(rec["task"]) and rec["reference"] in (None, ""):
                raise ConfigError(f"{path}:{n}: task {rec['task']!r} scores answers against a reference but the "
                                  "record has no \"reference\" (or \"answer\"); add it, or its reward would be 0 "
                                  "for every response")
            self._check_images(rec, path, n)
            self.records.append(rec)
        if not self.records:
            raise ConfigError(f"{path} holds no prompts; give one JSON object per line with a \"prompt\"")
        self.tasks = sorted({rec["task"] for rec in self.records})

    @staticmethod
    def _check_images(rec: dict, path: str, n: int) -> None:
        """Image paths resolve against the prompt file's folder; the <image> markers (if any) match them."""
        images = rec.get("images")
        if images is None:
            return
        if not isinstance(images, list) or not all(isinstance(p, str) for p in images):
            raise ConfigError(f"{path}:{n}: \"images\" must be a list of image paths")
        base = os.path.dirname(os.path.abspath(path))
        rec["images"] = [p if os.path.isabs(p) else os.path.join(base, p) for p in images]
        for p in rec["images"]:
            if not os.path.exists(p):
                raise ConfigError(f"{path}:{n}: image {p!r} does not exist (paths are relative to the prompt file)")
        markers = rec["prompt"].count("<image>")
        if markers and markers != len(images):
            raise ConfigError(f"{path}:{n}: the prompt has {markers} <image> markers but {len(images)} images")

    @property
    def has_images(self) -> bool:
        return any(rec.get("images") for rec in self.records)

    def sample(self, n, rng):
        return [rng.choice(self.records) for _ in range(n)]

    def allowed_tokens(self, tokenizer):
        if not all(t in TASK_ALLOWED_TOKENS for t in self.tasks):
            return None
        return sorted({i for t in self.tasks for i in TASK_ALLOWED_TOKENS[t](tokenizer)})


def build_prompt_source(task: str) -> PromptSource:
    """``toy_add`` | ``toy_copy`` | ``jsonl:PATH[:TASK]``."""
    if task == "toy_add":
        return ToyAddition()
    if task == "toy_copy":
        return ToyCopy()
    if task.startswith("jsonl:"):
        parts = task.split(":")
        return JsonlPrompts(parts[1], parts[2] if len(parts) > 2 else "math")
    raise ConfigError(f"unknown rl.task {task!r}; use toy_add, toy_copy or jsonl:PATH[:REWARD_TASK]")
