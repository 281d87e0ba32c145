"""Rewards for RL and best-of-N sampling: rule verifiers, model judges and a per-task registry.

Every reward is a callable ``fn(prompt: str, response: str, reference=None, **meta) -> float``.
``get_reward(task)`` returns the one registered for a task, so a best-of-N tool can take
``megatron_s1.rl.rewards:math_reward`` (or any ``module:function`` of that signature) directly.

Verifiers
- math: last ``\\boxed{...}`` (else "answer is ..." / the last number), compared by string normalisation, then
  numerically, then symbolically with sympy (``simplify(a - b) == 0``) after a small LaTeX -> sympy rewrite.
- multiple choice: the chosen option letter.
- SMILES: RDKit canonical SMILES equality (so ``OCC`` == ``CCO``).
- numeric: relative/absolute tolerance.
- CompassVerifier client: a generative judge over an OpenAI-compatible ``/v1/chat/completions`` endpoint;
  the judge answers A (correct), B (incorrect) or C (invalid) -> 1, 0, 0.
- POLAR client: a reward model taking (prompt, reference, candidate) -> scalar, protocol
  ``POST {url}/v1/reward {"items": [{"prompt", "reference", "output"}, ...]}`` -> ``{"rewards": [float, ...]}``.

``combine_rewards`` turns per-verifier scores into one scalar per sample with per-task normalisation;
``RewardMixer`` holds the RL loop's task weights and running normalisers (``rl.reward_weights``,
``rl.reward_normalisation``).
"""
from __future__ import annotations

import json
import math
import re
import urllib.request
from typing import Callable, Iterable, Optional

RewardFn = Callable[..., float]

# ---------------------------------------------------------------------------------------------- extraction


def extract_boxed(text: str) -> Optional[str]:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), with nested braces; None if absent."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        # "\boxed 5" form
        m = re.match(r"\\(?:boxed|fbox)\s+([^\s$]+)", text[start:])
        return m.group(1) if m else None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1:j]
    return None


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")


def extract_answer(text: str) -> Optional[str]:
    """The final answer of a free-form response: boxed > "answer is X" > last number."""
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed
    m = re.findall(r"answer(?: is|:)\s*\$?([^\n$]+?)\$?\s*(?:\.|$)", text, flags=re.IGNORECASE | re.MULTILINE)
    if m:
        return m[-1].strip()
    nums = _NUMBER.findall(text)
    return nums[-1] if nums else None


# ---------------------------------------------------------------------------------------------- math


def _strip(s: str) -> str:
    s = s.strip().strip("$").strip()
    s = re.sub(r"\\text\{([^{}]*)\}", r"\1", s)
    s = re.sub(r"\\(?:left|right|displaystyle|!|,|;|quad)", "", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("^\\circ", "").replace("^{\\circ}", "")
    s = s.replace("\\%", "").replace("%", "")
    s = s.rstrip(".").strip()
    if s.startswith(("x=", "y=", "z=")) or re.match(r"^[a-zA-Z]\s*=", s):
        s = s.split("=", 1)[1]
    return s.replace(" ", "")


def _latex_to_sympy(s: str) -> str:
    """A small LaTeX -> sympy-syntax rewrite that covers typical final answers."""
    prev = None
    while prev != s:  # innermost first, repeated for nesting
        prev = s
        s = re.sub(r"\\frac\{([^{}]*)\}\{([^{}]*)\}", r"((\1)/(\2))", s)
        s = re.sub(r"\\sqrt\[([^{}\]]*)\]\{([^{}]*)\}", r"((\2)**(1/(\1)))", s)
        s = re.sub(r"\\sqrt\{([^{}]*)\}", r"sqrt(\1)", s)
        s = re.sub(r"\^\{([^{}]*)\}", r"**(\1)", s)
    s = re.sub(r"\\frac(\d)(\d)", r"(\1/\2)", s)
    s = re.sub(r"\\sqrt(\d+)", r"sqrt(\1)", s)
    s = s.replace("^", "**").replace("\\cdot", "*").replace("\\times", "*").replace("\\pi", "pi")
    s = s.replace("\\infty", "oo").replace("{", "(").replace("}", ")").replace("\\", "")
    s = re.sub(r"(?<=\d),(?=\d{3}\b)", "", s)  # 1,000 -> 1000
    return s


def _to_sympy(s: str):
    import sympy
    from sympy.parsing.sympy_parser import (implicit_multiplication_application, parse_expr,
                                            standard_transformations)

    transformations = standard_transformations + (implicit_multiplication_application,)
    return parse_expr(_latex_to_sympy(s), transformations=transformations, evaluate=True,
                      local_dict={"e": sympy.E, "pi": sympy.pi, "i": sympy.I})


def math_equal(pred: Optional[str], ref: Optional[str], rel_tol: float = 1e-6) -> bool:
    """Answer equivalence: normalised strings, then numbers, then sympy (also tuples "a,b" element-wise)."""
    if pred is None or ref is None:
        return False
    a, b = _strip(str(pred)), _strip(str(ref))
    if a == b:
        return True
    if a.count(",") == b.count(",") > 0 and not re.fullmatch(r"-?\d{1,3}(,\d{3})+", b):
        pa, pb = a.strip("()[]").split(","), b.strip("()[]").split(",")
        return all(math_equal(x, y, rel_tol) for x, y in zip(pa, pb))
    try:
        ea, eb = _to_sympy(a), _to_sympy(b)
    except Exception:  # noqa: BLE001 - anything sympy cannot read is simply "not equal"
        return False
    try:
        fa, fb = complex(ea.evalf()), complex(eb.evalf())
        if abs(fa - fb) <= rel_tol * max(1.0, abs(fb)):
            return True
    except Exception:  # noqa: BLE001 - symbolic expressions
        pass
    try:
        import sympy

        return bool(sympy.simplify(ea - eb) == 0)
    except Exception:  # noqa: BLE001
        return False


def math_reward(prompt: str, response: str, reference=None, **_) -> float:
    return 1.0 if math_equal(extract_answer(response), None if reference is None else str(reference)) else 0.0


# ---------------------------------------------------------------------------------------------- others


def extract_choice(text: str, options: str = "ABCDEFGHIJ") -> Optional[str]:
    boxed = extract_boxed(text)
    if boxed is not None:
        m = re.search(rf"[{options}]", boxed.upper())
        return m.group(0) if m else None
    m = re.findall(rf"(?:answer|option|choice)\s*(?:is|:)?\s*\(?([{options}])\b", text, flags=re.IGNORECASE)
    if m:
        return m[-1].upper()
    m = re.findall(rf"\(([{options}])\)|\b([{options}])\b", text.strip())
    if m:
        last = m[-1]
        return last[0] or last[1]
    return None


def choice_reward(prompt: str, response: str, reference=None, **_) -> float:
    pred = extract_choice(response)
    return 1.0 if pred is not None and reference is not None and pred == str(reference).strip().upper() else 0.0


def canonical_smiles(smiles: str) -> Optional[str]:
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    mol = Chem.MolFromSmiles(smiles.strip()) if smiles else None
    return None if mol is None else Chem.MolToSmiles(mol, canonical=True)


def smiles_equal(pred: Optional[str], ref: Optional[str]) -> bool:
    if not pred or not ref:
        return False
    a, b = canonical_smiles(pred), canonical_smiles(ref)
    return a is not None and a == b


def smiles_reward(prompt: str, response: str, reference=None, **_) -> float:
    boxed = extract_boxed(response)
    candidate = boxed if boxed is not None else (response.strip().split() or [""])[-1]
    return 1.0 if smiles_equal(candidate, reference) else 0.0


def numeric_close(pred, ref, rel_tol: float = 1e-2, abs_tol: float = 1e-6) -> bool:
    try:
        a = float(str(pred).replace(",", "").strip().rstrip("."))
        b = float(str(ref).replace(",", "").strip())
    except (TypeError, ValueError):
        return False
    return math.isclose(a, b, rel_tol=rel_tol, abs_tol=abs_tol)


def numeric_reward(prompt: str, response: str, reference=None, rel_tol: float = 1e-2, **_) -> float:
    return 1.0 if numeric_close(extract_answer(response), reference, rel_tol=rel_tol) else 0.0


def exact_reward(prompt: str, response: str, reference=None, **_) -> float:
    """Exact match of the stripped response (toy tasks: single-digit addition, copying)."""
    return 1.0 if reference is not None and response.strip() == str(reference).strip() else 0.0


# ---------------------------------------------------------------------------------------------- model judges


def _post_json(url: str, payload: dict, timeout: float, headers: Optional[dict] = None) -> dict:
    data = json.dumps(payload).encode("utf-8")
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read().decode("utf-8"))


COMPASS_VERIFIER_TEMPLATE = (
    "Please as a grading expert, judge whether the final answers given by the candidates below are consistent "
    "with the standard answers, that is, whether the candidates answered correctly.\n"
    "Grade the candidate as one of: A: CORRECT, B: INCORRECT, C: INVALID (incomplete, repetitive or refusing).\n"
    "Just return the letter \"A\", \"B\", or \"C\", with no text around it.\n\n"
    "<Original Question Begin>\n{question}\n<Original Question End>\n"
    "<Standard Answer Begin>\n{reference}\n<Standard Answer End>\n"
    "<Candidate's Answer Begin>\n{response}\n<Candidate's Answer End>\n\nJudging the correctness of the candidate's "
    "answer:")


class CompassVerifierClient:
    """Generative verifier (CompassVerifier) behind an OpenAI-compatible chat endpoint.

    ``score`` returns 1.0 for A (correct), 0.0 for B (incorrect) and C (invalid); ``judge`` the raw letter.
    """

    def __init__(self, url: str, model: str = "CompassVerifier", timeout: float = 60.0,
                 api_key: Optional[str] = None, template: str = COMPASS_VERIFIER_TEMPLATE):
        self.url = url.rstrip("/")
        self.model = model
        self.timeout = timeout
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.template = template

    def judge(self, prompt: str, response: str, reference) -> str:
        content = self.template.format(question=prompt, reference=reference, response=response)
        out = _post_json(f"{self.url}/v1/chat/completions",
                         {"model": self.model, "temperature": 0.0, "max_tokens": 8,
                          "messages": [{"role": "user", "content": content}]}, self.timeout, self.headers)
        text = out["choices"][0]["message"]["content"]
        m = re.search(r"\b([ABC])\b", text.strip())
        return m.group(1) if m else "C"

    def __call__(self, prompt: str, response: str, reference=None, **_) -> float:
        return 1.0 if self.judge(prompt, response, reference) == "A" else 0.0


class PolarClient:
    """POLAR-style reward model: (prompt, reference, candidate) -> scalar, batched over one HTTP call."""

    def __init__(self, url: str, timeout: float = 60.0):
        self.url = url.rstrip("/")
        self.timeout = timeout

    def score_batch(self, items: Iterable[tuple]) -> list[float]:
        payload = {"items": [{"prompt": p, "reference": r, "output": o} for p, o, r in items]}
        out = _post_json(f"{self.url}/v1/reward", payload, self.timeout)
        return [float(x) for x in out["rewards"]]

    def __call__(self, prompt: str, response: str, reference=None, **_) -> float:
        return self.score_batch([(prompt, response, reference)])[0]


# ---------------------------------------------------------------------------------------------- registry

_REWARDS: dict[str, RewardFn] = {
    "math": math_reward,
    "mcq": choice_reward,
    "smiles": smiles_reward,
    "numeric": numeric_reward,
    "exact": exact_reward,
    "toy_add": exact_reward,
    "toy_copy": exact_reward,
}


# Rewards that compare a response with the record's reference: a prompt of these tasks without one is refused.
_NEEDS_REFERENCE = {"math", "mcq", "smiles", "numeric", "exact", "toy_add", "toy_copy"}


def register_reward(task: str, fn: RewardFn, needs_reference: bool = False) -> None:
    _REWARDS[task] = fn
    if needs_reference:
        _NEEDS_REFERENCE.add(task)
    else:
        _NEEDS_REFERENCE.discard(task)


def needs_reference(task: str) -> bool:
    return task in _NEEDS_REFERENCE


def known_tasks() -> list[str]:
    return sorted(_REWARDS)


def get_reward(task: str) -> RewardFn:
    """The reward callable of a task (``fn(prompt, response, reference=None, **meta) -> float``)."""
    if task not in _REWARDS:
        raise KeyError(f"no reward registered for task {task!r}; known: {', '.join(sorted(_REWARDS))}")
    return _REWARDS[task]


class RunningNorm:
    """Per-task running mean / std (Welford), used to put model-judge scores of different tasks on one scale."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def update(self, values: Iterable[float]) -> None:
        for v in values:
            self.n += 1
            d = v - self.mean
            self.mean += d / self.n
            self.m2 += d * (v - self.mean)

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.n) if self.n > 1 else 1.0

    def __call__(self, v: float) -> float:
        return (v - self.mean) / (self.std + 1e-6) if self.n > 1 else v


def combine_rewards(samples: list[dict], weights: Optional[dict] = None, norms: Optional[dict] = None,
                    task_weights: Optional[dict] = None) -> list[float]:
    """One scalar per sample from its per-verifier scores.

    Each sample is ``{"task": str, "scores": {verifier: value}}``. Scores of a task are z-normalised with that
    task's ``RunningNorm`` (updated with this batch first) when ``norms`` is given -- rule verifiers in {0, 1}
    normally stay raw -- and weighted by ``weights[verifier]`` (default 1), then summed; the sum is multiplied by
    ``task_weights[task]`` (default 1).
    """
    weights = weights or {}
    task_weights = task_weights or {}
    if norms is not None:
        by_task: dict = {}
        for s in samples:
            for name, v in s["scores"].items():
                by_task.setdefault((s["task"], name), []).append(v)
        for key, values in by_task.items():
            if key in norms:
                norms[key].update(values)
    out = []
    for s in samples:
        total = 0.0
        for name, v in s["scores"].items():
            key = (s["task"], name)
            if norms is not None and key in norms:
                v = norms[key](v)
            total += weights.get(name, 1.0) * v
        out.append(task_weights.get(s["task"], 1.0) * total)
    return out


def as_scores(task: str, value) -> dict:
    """A reward's return value as named scores: a float is the task's single score; a dict (e.g. a rule verifier
    plus a model judge) is kept as it is."""
    if isinstance(value, dict):
        bad = {k: v for k, v in value.items() if not isinstance(v, (int, float)) or isinstance(v, bool)}
        if bad or not value:
            raise TypeError(f"reward of task {task!r} returned {value!r}; a reward returns a number or a non-empty "
                            "dict of named numbers")
        return {str(k): float(v) for k, v in value.items()}
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"reward of task {task!r} returned {value!r}; a reward returns a number or a dict of them")
    return {task: float(value)}


NORMALISATIONS = ("none", "running")


class RewardMixer:
    """Mixture of rewards for RL batches that mix tasks: every sample's scores -> one scalar.

    ``task_weights``: task -> weight (default 1). ``normalisation``: ``"none"`` | ``"running"`` for every task, or
    a mapping task -> mode (tasks not named: none). ``running`` z-normalises each (task, score) with a
    ``RunningNorm`` that persists across steps, so model-judge scores of different scales land on one scale while
    the {0, 1} rule verifiers can stay raw.
    """

    def __init__(self, task_weights: Optional[dict] = None, normalisation="none", known_tasks=None):
        known = set(_REWARDS if known_tasks is None else known_tasks)
        self.task_weights = {}
        for task, w in (task_weights or {}).items():
            if task not in known:
                raise ValueError(f"rl.reward_weights names task {task!r}, which has no registered reward; known: "
                                 f"{', '.join(sorted(known))}")
            if isinstance(w, bool) or not isinstance(w, (int, float)):
                raise ValueError(f"rl.reward_weights.{task} must be a number, got {w!r}")
            self.task_weights[task] = float(w)
        if isinstance(normalisation, str):
            self.default_mode, modes = normalisation, {}
        elif isinstance(normalisation, dict):
            self.default_mode, modes = "none", dict(normalisation)
        else:
            raise ValueError(f"rl.reward_normalisation must be none, running or a mapping task -> none|running, "
                             f"got {normalisation!r}")
        for task, mode in [("*", self.default_mode), *modes.items()]:
            if mode not in NORMALISATIONS:
                raise ValueError(f"rl.reward_normalisation for {task!r} must be none or running, got {mode!r}")
            if task != "*" and task not in known:
                raise ValueError(f"rl.reward_normalisation names task {task!r}, which has no registered reward; "
                                 f"known: {', '.join(sorted(known))}")
        self.modes = modes
        self.norms: dict = {}

    def mode(self, task: str) -> str:
        return self.modes.get(task, self.default_mode)

    def __call__(self, samples: list[dict]) -> list[float]:
        for s in samples:
            if self.mode(s["task"]) == "running":
                for name in s["scores"]:
                    self.norms.setdefault((s["task"], name), RunningNorm())
        return combine_rewards(samples, norms=self.norms, task_weights=self.task_weights)
