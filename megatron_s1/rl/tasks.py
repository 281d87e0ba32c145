"""Prompt sources for RL: built-in verifiable toy tasks and jsonl prompt sets.

A prompt record is ``{"prompt": str, "reference": str, "task": str}``; ``task`` selects the reward in
megatron_s1/rl/rewards.py. Toy tasks also restrict decoding to the tokens that can form an answer
(``allowed_tokens``), like an inference engine's guided decoding, so a randomly initialised tiny model already
gets a non-zero reward and RL has a signal to amplify; the training log-probs use the same restriction.
"""
from __future__ import annotations

import json
import random
from typing import Optional


class PromptSource:
    task = "exact"

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


class JsonlPrompts(PromptSource):
    """One JSON object per line with prompt / reference (answer) / task (reward name; default ``default_task``)."""

    def __init__(self, path: str, default_task: str = "math"):
        self.records = []
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    rec = json.loads(line)
                    rec.setdefault("task", default_task)
                    rec.setdefault("reference", rec.get("answer"))
                    self.records.append(rec)
        if not self.records:
            raise ValueError(f"{path} holds no prompts")

    def sample(self, n, rng):
        return [rng.choice(self.records) for _ in range(n)]


def build_prompt_source(task: str) -> PromptSource:
    """``toy_add`` | ``toy_copy`` | ``jsonl:PATH[:TASK]``."""
    if task == "toy_add":
        return ToyAddition()
    if task == "toy_copy":
        return ToyCopy()
    if task.startswith("jsonl:"):
        parts = task.split(":")
        return JsonlPrompts(parts[1], parts[2] if len(parts) > 2 else "math")
    raise ValueError(f"unknown rl.task {task!r}; use toy_add, toy_copy or jsonl:PATH[:REWARD_TASK]")
