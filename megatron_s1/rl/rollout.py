"""Rollout engines: colocated Megatron-Core sampling on the training weights, or an OpenAI-compatible server.

Both return a `Rollout`: per sample the prompt ids, the response ids (ending at EOS when produced) and the
rollout engine's log-prob of every response token. The local engine can also record the MoE routing (top-k
expert ids per layer and token, Megatron-Core's RouterReplay) so the training forward replays it.

The local engine runs the model in ``rollout_dtype`` (bf16 autocast by default on a real run) while training
runs in the parameter dtype: this reproduces the train/inference numerical mismatch that IcePop masks and
routing replay removes, even with shared weights.
"""
from __future__ import annotations

import contextlib
import json
import urllib.request
from dataclasses import dataclass, field
from typing import Optional

import torch

from megatron_s1.rl.pipeline import from_last_stage, run_microbatch

@dataclass
class Rollout:
    prompt_ids: list  # [N] lists of ints
    response_ids: list  # [N] lists of ints (EOS included when generated)
    rollout_logprobs: list  # [N] lists of floats, one per response token
    finished: list  # [N] bool: ended with EOS
    routing: Optional[list] = None  # per MoE layer: [L, N, topk] expert ids of the padded batch (see pad_batch)
    meta: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- batching


def pad_batch(prompt_ids: list, response_ids: list, pad_id: int, total_len: Optional[int] = None):
    """Left-pad prompts and right-pad responses into one [N, L] layout.

    Returns tokens [N, L], position_ids [N, L], attention_mask [N, 1, L, L] (True = masked: causal + padding
    keys), response_mask [N, L] marking positions whose *next* token is a response token (the positions whose
    logits predict the response), and the index of the first response position per row.
    """
    n = len(prompt_ids)
    max_p = max(len(p) for p in prompt_ids)
    max_r = max((len(r) for r in response_ids), default=0)
    length = total_len or (max_p + max_r)
    tokens = torch.full((n, length), pad_id, dtype=torch.long)
    valid = torch.zeros(n, length, dtype=torch.bool)
    resp_mask = torch.zeros(n, length, dtype=torch.float32)
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        start = max_p - len(p)
        seq = list(p) + list(r)
        tokens[i, start:start + len(seq)] = torch.tensor(seq, dtype=torch.long)
        valid[i, start:start + len(seq)] = True
        # logits at position t predict token t+1; response tokens sit at max_p .. max_p+len(r)-1
        if r:
            resp_mask[i, max_p - 1:max_p - 1 + len(r)] = 1.0
    positions = (valid.long().cumsum(-1) - 1).clamp_min(0)
    causal = torch.triu(torch.ones(length, length, dtype=torch.bool), 1)
    mask = causal[None] | ~valid[:, None, :]
    # fully padded query rows would attend nothing (NaN); let them see themselves
    eye = torch.eye(length, dtype=torch.bool)[None]
    mask = mask & ~(eye & ~valid[:, :, None])
    return tokens, positions, mask[:, None], resp_mask, max_p


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0,
                   allowed: Optional[torch.Tensor] = None, vocab_parallel: bool = False) -> torch.Tensor:
    """log pi(token_{t+1} | <= t) for every position t of [N, L] (last position 0), in fp32, at ``temperature`` (a
    float, or one per row as [N, 1, 1]).

    ``vocab_parallel``: ``logits`` hold this tensor-parallel rank's vocabulary shard ([N, L, V / TP], the
    training forward's layout); log pi(target) = -vocab_parallel_cross_entropy (max, sum-exp and the target
    logit are all-reduced over the TP group), so the full vocabulary is never gathered. ``allowed`` is over the
    full vocabulary either way.
    """
    if torch.is_tensor(temperature):  # per row: [N, 1, 1]
        temperature = temperature.to(logits.device)
    if vocab_parallel:
        return _vocab_parallel_token_logprobs(logits, tokens, temperature, allowed)
    logits = logits.float() / temperature
    if allowed is not None:
        logits = logits.masked_fill(~allowed.to(logits.device), float("-inf"))
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    nxt = tokens[:, 1:].clamp(0, logits.shape[-1] - 1).to(logp.device)
    out = logp.gather(-1, nxt[..., None]).squeeze(-1)
    out = torch.nan_to_num(out, neginf=-1e4)
    return torch.cat([out, torch.zeros_like(out[:, :1])], dim=1)


def _vocab_parallel_token_logprobs(logits, tokens, temperature, allowed):
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    v_local = logits.shape[-1]
    start = parallel_state.get_tensor_model_parallel_rank() * v_local
    logits = logits.float() / temperature
    if allowed is not None:
        logits = logits.masked_fill(~allowed[start:start + v_local].to(logits.device), float("-inf"))
    # (the cross entropy works in place on its input: hand it a fresh contiguous tensor)
    nxt = tokens[:, 1:].to(logits.device)
    out = -vocab_parallel_cross_entropy(logits[:, :-1].contiguous(), nxt)
    out = torch.nan_to_num(out, neginf=-1e4)  # disallowed targets (padding) -> finite, as on one rank
    return torch.cat([out, torch.zeros_like(out[:, :1])], dim=1)


@contextlib.contextmanager
def sequence_parallel_off(model):
    """Run the block with sequence parallelism switched off (attributes restored exactly afterwards).

    Generation forwards one token per step, which cannot be split over the sequence; with it off every TP rank
    holds the whole (short) sequence. MoE layers stay correct: their tensor-parallel all-gather then duplicates
    the tokens and the reduce-scatter hands every rank the full result (the same reasoning as Megatron-Core's
    static inference, which switches sequence parallelism off for the non-MoE layers).
    """
    module = getattr(model, "module", model)
    config = getattr(module, "config", None)
    if config is None or not config.sequence_parallel:
        yield
        return
    saved = []
    for sub in module.modules():
        for attr in ("sequence_parallel", "scatter_to_sequence_parallel", "reduce_scatter_embeddings"):
            if isinstance(getattr(sub, attr, None), bool):
                saved.append((sub, attr, getattr(sub, attr)))
                setattr(sub, attr, False)
    saved_configs = {}  # (usually one shared TransformerConfig; copies are switched too)
    for sub in module.modules():
        c = getattr(sub, "config", None)
        if isinstance(getattr(c, "sequence_parallel", None), bool):
            saved_configs[id(c)] = (c, c.sequence_parallel)
    for c, _ in saved_configs.values():
        c.sequence_parallel = False
    try:
        yield
    finally:
        for sub, attr, value in saved:
            setattr(sub, attr, value)
        for c, value in saved_configs.values():
            c.sequence_parallel = value


def filter_logits(logits: torch.Tensor, top_k=0, top_p=1.0) -> torch.Tensor:
    """Top-k then nucleus (top-p) truncation of [N, V] logits (removed entries -> -inf). ``top_k`` / ``top_p``: one
    value for all rows or a per-row [N] tensor; 0 / 1.0 switch a row's truncation off."""
    n, vocab = logits.shape
    top_k = torch.as_tensor(top_k, device=logits.device).expand(n)
    top_p = torch.as_tensor(top_p, dtype=torch.float32, device=logits.device).expand(n)
    k_on = (top_k > 0) & (top_k < vocab)
    if k_on.any():
        k = torch.where(k_on, top_k, vocab).long()
        kth = torch.sort(logits, descending=True, dim=-1).values.gather(-1, (k - 1)[:, None])
        logits = logits.masked_fill(logits < kth, float("-inf"))
    p_on = top_p < 1.0
    if p_on.any():
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        cum = probs.cumsum(-1)
        # keep the smallest prefix whose mass reaches top_p
        drop = ((cum - probs) >= top_p[:, None].to(probs.dtype)) & p_on[:, None]
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "max_new_tokens")  # (the engines' keyword names too)

# splitmix64 (Steele et al., "Fast splittable pseudorandom number generators", 2014) as signed int64 constants
_GOLDEN, _MIX1, _MIX2 = -7046029254386353131, -4658895280553007687, -7723592293110705685


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 (torch shifts signed values arithmetically)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def row_uniforms(seeds: torch.Tensor, step: int) -> torch.Tensor:
    """One uniform in [0, 1) per row, a pure function of (row seed, decode step): splitmix64 of
    ``seed + (step + 1) * golden``, top 53 bits. int64 arithmetic wraps, so CPU and GPU agree bit for bit."""
    z = seeds.to(torch.int64) + torch.tensor(step + 1, dtype=torch.int64, device=seeds.device) * _GOLDEN
    z = (z ^ _shift_right(z, 30)) * _MIX1
    z = (z ^ _shift_right(z, 27)) * _MIX2
    z = z ^ _shift_right(z, 31)
    return _shift_right(z, 11).double() * 2.0 ** -53


def sample_rows(probs: torch.Tensor, seeds: torch.Tensor, step: int) -> torch.Tensor:
    """Inverse-CDF sample of each row of ``probs`` [N, V] with its own counter-based uniform.

    Why not ``torch.multinomial`` with one generator: its draws for a row depend on the rows drawn before it, so
    a batch decoded in groups (TE's equal-length KV-cache groups), in another order or split over ranks sampled
    other tokens than the same rows decoded together. Here row i's token depends only on its probabilities,
    its seed and the step. Zero-probability tokens are never chosen (the CDF does not rise there)."""
    cdf = probs.double().cumsum(-1)
    u = row_uniforms(seeds, step).to(cdf.device)[:, None] * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).clamp_(max=probs.shape[-1] - 1).squeeze(-1)


def draw_row_seeds(rows: int, generator=None) -> list:
    """One int64 seed per generation row, drawn from ``generator`` (the RL loop's checkpointed RNG)."""
    return torch.randint(-2 ** 63, 2 ** 63 - 1, (rows,), dtype=torch.int64, generator=generator).tolist()


@dataclass(frozen=True)
class Sampling:
    """Sampling settings of one prompt (``rl.temperature`` ... or the prompt task's ``rl.sampling`` entry)."""
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off; 1 = greedy
    max_new_tokens: int = 16

    def __post_init__(self):
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not (isinstance(self.top_k, int) and self.top_k >= 0):
            raise ValueError(f"top_k must be an integer >= 0, got {self.top_k!r}")
        if not (isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1):
            raise ValueError(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")


def sampling_by_task(rl_cfg, known_tasks) -> dict:
    """``rl.sampling`` resolved: task -> `Sampling` (the task's entry over the ``rl.*`` defaults), with the defaults
    under None. Raises ValueError naming a bad task, key or value."""
    fields = SAMPLING_FIELDS
    default = {f: getattr(rl_cfg, f) for f in fields}
    out = {None: Sampling(**default)}
    for task, entry in (rl_cfg.sampling or {}).items():
        if task not in known_tasks:
            raise ValueError(f"rl.sampling names task {task!r}, which has no reward; known: "
                             f"{', '.join(sorted(known_tasks))}")
        if not isinstance(entry, dict) or set(entry) - set(fields):
            bad = sorted(set(entry) - set(fields)) if isinstance(entry, dict) else entry
            raise ValueError(f"rl.sampling.{task}: unknown setting(s) {bad}; allowed: {', '.join(fields)}")
        try:
            out[task] = Sampling(**{**default, **entry})
        except ValueError as err:
            raise ValueError(f"rl.sampling.{task}: {err}") from None
    return out


@dataclass
class RowSampling:
    """Per-row sampling settings of a generation batch (row i: sample i % n of prompt i // n)."""
    temperature: list
    top_p: list
    top_k: list
    max_new_tokens: list
    seed: Optional[list] = None  # per row, for `sample_rows` (set by the engine from its generator)
    _tensors: Optional[tuple] = field(default=None, repr=False, compare=False)

    @staticmethod
    def per_prompt(settings: list) -> dict:
        """`Sampling` of each prompt -> one list per setting (keyword arguments of the engines' ``generate``)."""
        return {f: [getattr(s, f) for s in settings] for f in SAMPLING_FIELDS}

    @classmethod
    def from_prompts(cls, settings: list, n: int) -> "RowSampling":
        """Rows of ``n`` samples per prompt, prompt i sampled with ``settings[i]`` (a `Sampling`)."""
        return cls.expand(len(settings) * n, n, **cls.per_prompt(settings))

    @classmethod
    def expand(cls, rows: int, n: int, temperature, top_p, top_k, max_new_tokens) -> "RowSampling":
        """Each setting given once for all prompts, or as a per-prompt list."""
        def per_row(value):
            return [value[i // n] for i in range(rows)] if isinstance(value, (list, tuple)) else [value] * rows
        return cls(*map(per_row, (temperature, top_p, top_k, max_new_tokens)))

    def subset(self, rows: list) -> "RowSampling":
        return RowSampling(*([getattr(self, f)[i] for i in rows] for f in SAMPLING_FIELDS),
                           seed=None if self.seed is None else [self.seed[i] for i in rows])

    def on_device(self, device) -> tuple:
        """(temperature, top_k, top_p, seed) as [N] tensors on ``device``, built once per generation (decode hot
        path)."""
        if self._tensors is None or self._tensors[0].device != torch.device(device):
            self._tensors = (torch.tensor(self.temperature, dtype=torch.float32, device=device),
                             torch.tensor(self.top_k, device=device), torch.tensor(self.top_p, device=device),
                             torch.tensor(self.seed, dtype=torch.int64, device=device))
        return self._tensors

    def temperature_of_rows(self):
        """The temperature as a divisor of [N, L, V] logits: a float when all rows share it."""
        if len(set(self.temperature)) == 1:
            return self.temperature[0]
        return torch.tensor(self.temperature, dtype=torch.float32)[:, None, None]


# ---------------------------------------------------------------------------------------------- routing replay


def moe_replay_available() -> bool:
    from megatron.core.transformer.moe.router_replay import RouterReplay

    return len(RouterReplay.global_router_replay_instances) > 0


@contextlib.contextmanager
def routing_record():
    """Record the top-k expert ids of every MoE layer during the forward passes inside the block."""
    from megatron.core.transformer.moe.router_replay import RouterReplay, RouterReplayAction

    RouterReplay.clear_global_indices()
    RouterReplay.set_global_router_replay_action(RouterReplayAction.RECORD)
    try:
        yield RouterReplay
    finally:
        RouterReplay.clear_global_router_replay_action()


@contextlib.contextmanager
def routing_replay(per_layer: Optional[list]):
    """Replay recorded expert ids ([L, N, k] per layer, same padded layout) in the forward inside the block."""
    from megatron.core.transformer.moe.router_replay import RouterReplay, RouterReplayAction

    if per_layer is None:
        yield
        return
    # Megatron routes hidden states of shape [s, b, h] flattened to [s*b, h].
    RouterReplay.clear_global_indices()
    RouterReplay.set_replay_data([t.reshape(-1, t.shape[-1]) for t in per_layer])
    RouterReplay.set_global_router_replay_action(RouterReplayAction.REPLAY_FORWARD)
    try:
        yield
    finally:
        RouterReplay.clear_global_router_replay_action()


def pad_routing(per_layer: Optional[list], length: int) -> Optional[list]:
    """Extend [L, N, k]-per-layer expert ids to ``length`` positions (extra right padding: experts 0..k-1, which
    only feed padded positions)."""
    if per_layer is None or per_layer[0].shape[0] >= length:
        return per_layer
    out = []
    for t in per_layer:
        extra = torch.arange(t.shape[-1], dtype=t.dtype).expand(length - t.shape[0], t.shape[1], t.shape[-1])
        out.append(torch.cat([t, extra]))
    return out


def stage_routing(per_layer: list) -> list:
    """Of routing reported for every layer of the model ([L, N, k] per layer, an external engine's), the layers of
    this pipeline stage, in the order of its RouterReplay instances (every layer of the policy is an MoE layer)."""
    from megatron.core.transformer.moe.router_replay import RouterReplay

    numbers = [inst.layer_number for inst in RouterReplay.global_router_replay_instances]
    if len(numbers) == len(per_layer):
        return per_layer
    if any(n is None or n > len(per_layer) for n in numbers):
        raise ValueError(f"the engine reported routing for {len(per_layer)} layers; this pipeline stage's MoE "
                         f"layers are {numbers}: the engine must serve the same model as the policy")
    return [per_layer[n - 1] for n in numbers]


def select_routing(per_layer: Optional[list], rows) -> Optional[list]:
    if per_layer is None:
        return None
    return [t[:, rows] for t in per_layer]


def routing_from_engine(per_sample: list, prompt_ids: list, response_ids: list) -> Optional[list]:
    """Expert ids reported by an inference engine -> the [L, N, k]-per-layer layout of `pad_batch`.

    ``per_sample[i]`` lists, for the tokens of prompt + response i in order, ``[num_layers][topk]`` expert ids (an
    engine with a KV cache never forwards the last sampled token: missing trailing tokens, like padding, get
    experts 0..k-1, which only feed positions outside the loss). None if any sample lacks routing.
    """
    if not per_sample or any(r is None for r in per_sample):
        return None
    first = next(r for r in per_sample if len(r))
    layers, k = len(first[0]), len(first[0][0])
    max_p = max(len(p) for p in prompt_ids)
    length = max_p + max((len(r) for r in response_ids), default=0)
    out = torch.arange(k).expand(layers, length, len(per_sample), k).clone()
    for i, (rt, p) in enumerate(zip(per_sample, prompt_ids)):
        start = max_p - len(p)
        ids = torch.tensor(rt, dtype=torch.long)  # [tokens, layers, k]
        n = min(len(rt), length - start)
        out[:, start:start + n, i] = ids[:n].permute(1, 0, 2)
    return list(out)


# ---------------------------------------------------------------------------------------------- engines


class LocalEngine:
    """Colocated generation with the training model itself.

    ``kv_cache=True`` (default): Megatron-Core's ``StaticInferenceContext`` -- one prefill forward over the
    left-padded prompts, then one forward per new token whose keys / values are appended to per-layer caches;
    the padding mask of every step is passed explicitly (the local attention applies it; Megatron switches the
    mask *type* to no_mask after the prefill). ``kv_cache=False`` re-forwards the whole sequence per token (the
    reference path). Greedy decoding is ``top_k=1``.

    ``decode_mask_applied=False`` (TransformerEngine attention): TE's decode step ignores the explicit padding mask
    (measured on an H100: a cached row attends to its left padding; greedy log-probs off by 0.13), so the cache only
    sees rows without left padding: a batch with several prompt lengths is decoded one equal-length group at a time
    (the G samples of a prompt always share a group) and reassembled. With expert parallelism the ranks' forwards
    must pair up, so there such a batch takes the full re-forward instead.
    """

    def __init__(self, model, eos_id: int, pad_id: int, rollout_dtype: Optional[torch.dtype] = None,
                 record_routing: bool = False, device=None, kv_cache: bool = True, sync_group=None,
                 decode_mask_applied: bool = True):
        self.model = model
        # Ranks whose forwards are collective across *different* rollouts (expert parallelism: every MoE layer
        # is an all-to-all over the EP group) must run the same number of decode forwards: a rank stops only
        # when every rank of ``sync_group`` is done (finished rows are fed padding meanwhile, as within a rank).
        self.sync_group = sync_group
        self.eos_id = eos_id
        self.pad_id = pad_id
        self.rollout_dtype = rollout_dtype
        self.record_routing = record_routing
        self.device = device or torch.device("cpu")
        self.kv_cache = kv_cache
        self.decode_mask_applied = decode_mask_applied
        self._allowed_cache = None  # (token list, its [V] mask on the device)

    def _numerics(self):
        if self.rollout_dtype is None or self.rollout_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.rollout_dtype)

    def forward_logits(self, tokens, positions, mask, inference_context=None, media=None):
        """Logits of the batch on the last pipeline stage (None on the other stages: they pass hidden states on).
        ``media``: the batch's image inputs (`rl.multimodal.batch_pixels`), InternS1Model keyword arguments."""
        # Sampling gathers the vocabulary shards of tensor parallelism (small vocabularies; Megatron's inference
        # mode requires it too), so every TP rank holds the same logits and samples the same tokens.
        kwargs = {"runtime_gather_output": True}
        if inference_context is not None:
            kwargs["inference_context"] = inference_context
        if media is not None:  # (InternS1Model; text-only models take no such argument)
            kwargs.update({k: None if v is None else v.to(self.device) for k, v in media.items()})
        args = (tokens.to(self.device), positions.to(self.device), mask.to(self.device))
        with torch.no_grad(), self._numerics():
            logits = run_microbatch(self.model, lambda model: model(*args, **kwargs), tokens.shape[1],
                                    tokens.shape[0])
        return None if logits is None else logits.float()

    def _everywhere(self, value: bool) -> bool:
        """``value`` on this rank and on every rank of ``sync_group`` (collective there: all ranks call it together)."""
        if self.sync_group is None:
            return value
        import torch.distributed as dist

        flag = torch.tensor([int(value)], dtype=torch.int32, device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=self.sync_group)
        return bool(flag.item())

    def _all_finished(self, done: list) -> bool:
        """True when every row is done on this rank and on every rank of ``sync_group``."""
        return self._everywhere(all(done))

    def cache_mode(self, prompt_ids: list) -> str:
        """How this batch decodes (see the class docstring): "batch" (KV cache, whole batch), "by_length" (KV cache per
        group of equal prompt length) or "off" (full re-forward); the same answer on all sync ranks."""
        if not self.kv_cache:
            return "off"
        if self._everywhere(self.decode_mask_applied or len({len(p) for p in prompt_ids}) == 1):
            return "batch"
        return "off" if self.sync_group is not None else "by_length"

    def _pick(self, logits, sampling: RowSampling, allowed_tokens, step: int):
        """Sample the next token (decode step ``step``) of every row from the last stage's last-position logits [N, V]
        (None on other pipeline stages) with the rows' own settings and seeds; returns (token ids [N], their
        log-probs [N]) on every stage."""
        picked = None
        rows = len(sampling.temperature)
        if logits is not None:
            temperature, top_k, top_p, seeds = sampling.on_device(logits.device)
            logits = logits / temperature.to(logits.dtype)[:, None]
            allowed = self._allowed_mask(allowed_tokens, logits.shape[-1], logits.device)
            if allowed is not None:
                logits = logits.masked_fill(~allowed, float("-inf"))
            full_logp = torch.log_softmax(logits, dim=-1)
            probs = torch.softmax(filter_logits(logits, top_k, top_p), dim=-1)
            nxt = sample_rows(probs, seeds, step)
            # (float64 carries both exactly: token ids, and the fp32 log-probs)
            nxt_logp = full_logp.gather(-1, nxt[:, None]).squeeze(-1)
            picked = torch.stack([nxt.double(), nxt_logp.double()])
        picked = from_last_stage(picked, (2, rows), torch.float64, self.device).cpu()
        return picked[0].long(), picked[1]

    def generate(self, prompts: list, n: int, max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
                 top_k: int = 0, allowed_tokens: Optional[list] = None, generator=None,
                 pixels: Optional[list] = None) -> Rollout:
        """``max_new_tokens``, ``temperature``, ``top_p``, ``top_k``: one value, or a list with one per prompt (each
        task's own settings in one batch). ``pixels``: per prompt the image inputs of its placeholder tokens (a dict of
        InternS1Model keyword arguments, `rl.multimodal.PromptEncoder`, or None); kept per sample in
        ``Rollout.meta["pixels"]`` for the training forwards."""
        prompt_ids = [list(p) for p in prompts for _ in range(n)]
        sampling = RowSampling.expand(len(prompt_ids), n, temperature, top_p, top_k, max_new_tokens)
        sampling.seed = draw_row_seeds(len(prompt_ids), generator)
        row_pixels = None if pixels is None or all(p is None for p in pixels) else \
            [pixels[i // n] for i in range(len(prompt_ids))]
        was_training = self.model.training
        self.model.eval()
        try:
            mode = self.cache_mode(prompt_ids)
            run = {"batch": self._generate_cached, "by_length": self._generate_by_length,
                   "off": self._generate_full}[mode]
            with sequence_parallel_off(self.model):
                responses, logps, _, routing = run(prompt_ids, sampling, allowed_tokens, row_pixels)
        finally:
            if was_training:
                self.model.train()
        finished = [r[-1:] == [self.eos_id] for r in responses]  # (done also counts rows at their length limit)
        return Rollout(prompt_ids, responses, logps, finished, routing, meta={"pixels": row_pixels, "kv_cache": mode})

    def _allowed_mask(self, allowed_tokens, vocab: int, device):
        """Boolean [V] mask of ``allowed_tokens`` (None: all), built once per token list."""
        if allowed_tokens is None:
            return None
        cached = self._allowed_cache
        if cached is None or cached[0] is not allowed_tokens or cached[1].shape[0] != vocab:
            allowed = torch.zeros(vocab, dtype=torch.bool)
            allowed[torch.tensor(allowed_tokens)] = True
            self._allowed_cache = cached = (allowed_tokens, allowed.to(device))
        return cached[1]

    def _append(self, nxt, nxt_logp, responses, logps, done, max_new_tokens: list) -> None:
        for i in range(len(responses)):
            if done[i]:
                continue
            tok = int(nxt[i])
            responses[i].append(tok)
            logps[i].append(float(nxt_logp[i]))
            done[i] = tok == self.eos_id or len(responses[i]) >= max_new_tokens[i]

    def _generate_full(self, prompt_ids, sampling: RowSampling, allowed_tokens, row_pixels=None):
        """Reference path: the whole padded batch is re-forwarded for every new token (images every time)."""
        from megatron_s1.rl.multimodal import batch_pixels

        media = batch_pixels(row_pixels, range(len(prompt_ids)))
        responses = [[] for _ in prompt_ids]
        logps = [[] for _ in prompt_ids]
        done = [False] * len(prompt_ids)
        for step in range(max(sampling.max_new_tokens)):
            tokens, positions, mask, _, _ = pad_batch(prompt_ids, responses, self.pad_id)
            logits = self.forward_logits(tokens, positions, mask, media=media)
            nxt, nxt_logp = self._pick(None if logits is None else logits[:, -1], sampling, allowed_tokens, step)
            self._append(nxt, nxt_logp, responses, logps, done, sampling.max_new_tokens)
            if self._all_finished(done):
                break
        routing = None
        if self.record_routing and moe_replay_available():
            tokens, positions, mask, resp_mask, _ = pad_batch(prompt_ids, responses, self.pad_id)
            with routing_record() as rr:
                logits = self.forward_logits(tokens, positions, mask, media=media)
                routing = [t.detach().cpu().reshape(tokens.shape[1], tokens.shape[0], -1)
                           for t in rr.get_recorded_data()]
            # the rollout log-probs of the recorded forward (identical to sampling-time ones up to batch shape)
            lp = None
            if logits is not None:
                lp = token_logprobs(logits, tokens, sampling.temperature_of_rows(),
                                    self._allowed_mask(allowed_tokens, logits.shape[-1], logits.device))
            lp = from_last_stage(lp, tokens.shape, torch.float32, self.device).cpu()
            for i in range(len(prompt_ids)):
                idx = resp_mask[i].nonzero().squeeze(-1)
                logps[i] = lp[i, idx].tolist()
        return responses, logps, done, routing

    def _generate_by_length(self, prompt_ids, sampling: RowSampling, allowed_tokens, row_pixels=None):
        """KV-cached decoding of each group of equal prompt length (no left padding in any cache), reassembled in the
        batch's order; routing goes back into the whole batch's layout through `routing_from_engine`."""
        groups: dict = {}
        for i, p in enumerate(prompt_ids):
            groups.setdefault(len(p), []).append(i)
        n = len(prompt_ids)
        responses, logps, done, per_sample = [None] * n, [None] * n, [None] * n, [None] * n
        for rows in groups.values():
            pixels = None if row_pixels is None else [row_pixels[i] for i in rows]
            r, lp, d, routing = self._generate_cached([prompt_ids[i] for i in rows], sampling.subset(rows),
                                                      allowed_tokens, pixels)
            for j, i in enumerate(rows):
                responses[i], logps[i], done[i] = r[j], lp[j], d[j]
                if routing is not None:  # this row's tokens (no left padding in the group): [tokens, layers, k]
                    tokens = len(prompt_ids[i]) + len(r[j])
                    per_sample[i] = torch.stack([layer[:tokens, j] for layer in routing], dim=1).tolist()
        # (None when nothing was recorded: routing_from_engine needs every sample's routing)
        return responses, logps, done, routing_from_engine(per_sample, prompt_ids, responses)

    def _generate_cached(self, prompt_ids, sampling: RowSampling, allowed_tokens, row_pixels=None):
        """KV-cached path (Megatron-Core static inference context); routing recorded per forward when asked.
        Images enter with the prefill only (their keys / values are then in the cache)."""
        from megatron.core.inference.contexts import StaticInferenceContext
        from megatron.core.inference.utils import InferenceMode

        from megatron_s1.rl.multimodal import batch_pixels

        media = batch_pixels(row_pixels, range(len(prompt_ids)))

        n = len(prompt_ids)
        responses = [[] for _ in prompt_ids]
        logps = [[] for _ in prompt_ids]
        done = [False] * n
        tokens, positions, mask, _, max_p = pad_batch(prompt_ids, responses, self.pad_id)
        max_new_tokens = max(sampling.max_new_tokens)
        total = max_p + max_new_tokens
        ctx = StaticInferenceContext(max_batch_size=n, max_sequence_length=total)
        # valid[i, j]: cache index j of row i holds a real token (False: left padding, tokens after EOS).
        valid = torch.zeros(n, total, dtype=torch.bool)
        for i, p in enumerate(prompt_ids):
            valid[i, max_p - len(p):max_p] = True
        record = self.record_routing and moe_replay_available()
        per_step = []  # per forward: per MoE layer [s_step, N, k]
        was_active = InferenceMode.is_active()
        InferenceMode.set_active()  # GPTModel then computes logits of the last position only
        try:
            for step in range(max_new_tokens):
                with routing_record() if record else contextlib.nullcontext() as rr:
                    logits = self.forward_logits(tokens, positions, mask, inference_context=ctx,
                                                 media=media if step == 0 else None)
                    if record:
                        per_step.append([t.detach().cpu().reshape(tokens.shape[1], n, -1)
                                         for t in rr.get_recorded_data()])
                ctx.sequence_len_offset += tokens.shape[1]
                if step == 0:
                    ctx.enable_decode_mode()
                nxt, nxt_logp = self._pick(None if logits is None else logits[:, -1], sampling, allowed_tokens,
                                           step)
                was_done = list(done)
                self._append(nxt, nxt_logp, responses, logps, done, sampling.max_new_tokens)
                # (the last-step test first: every rank of sync_group takes the collective at the same steps)
                if step == max_new_tokens - 1 or self._all_finished(done):
                    break
                # Next input: the sampled token (padding for finished rows) at cache index `idx`.
                idx = ctx.sequence_len_offset
                valid[:, idx] = ~torch.tensor(was_done)
                tokens = torch.tensor([[self.pad_id if d else int(t)] for t, d in zip(nxt, was_done)])
                positions = positions[:, -1:] + 1
                # Keys the new query may see: the row's real tokens; a padding query sees only itself (as in
                # pad_batch, so no row attends to nothing).
                keys = valid[:, :idx + 1].clone()
                keys[:, idx] = True
                mask = ~keys[:, None, None, :]
        finally:
            if not was_active:
                InferenceMode.unset_active()
        routing = None
        if record:
            # [L, N, k] in pad_batch's layout: the last sampled token is never forwarded, its slot gets experts
            # 0..k-1 (like an external engine's; it feeds no loss position).
            # Forwards run only to keep pace with other EP ranks (all rows here done) lie beyond that layout: cut.
            length = max_p + max(len(r) for r in responses)
            layers = [torch.cat([step[layer] for step in per_step])[:length] for layer in range(len(per_step[0]))]
            routing = pad_routing(layers, length)
        return responses, logps, done, routing

    def update_weights(self, *_args, **_kwargs) -> None:
        """Colocated: the engine reads the training weights directly."""


class OpenAIEngine:
    """Client of an OpenAI-compatible completions server (vLLM / SGLang / LMDeploy style).

    Prompts are sent as token-id lists; the server must return per-token log-probs and token ids
    (vLLM: ``return_tokens_as_token_ids``: tokens look like ``token_id:123``). ``update_weights(path)`` asks the
    server to reload weights from a checkpoint directory (``POST {url}/update_weights {"path": ...}``).
    """

    def __init__(self, url: str, model: str = "policy", eos_id: Optional[int] = None, timeout: float = 600.0,
                 return_routing: bool = False, pad_id: int = 0):
        self.url = url.rstrip("/")
        self.model = model
        self.eos_id = eos_id
        self.timeout = timeout
        self.return_routing = return_routing
        self.pad_id = pad_id

    def _post(self, path: str, payload: dict) -> dict:
        req = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:
            return json.loads(resp.read().decode())

    @staticmethod
    def _token_id(tok) -> int:
        if isinstance(tok, int):
            return tok
        return int(str(tok).split(":", 1)[1]) if str(tok).startswith("token_id:") else int(tok)

    def generate(self, prompts: list, n: int, max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
                 top_k: int = 0, allowed_tokens: Optional[list] = None, generator=None, pixels=None) -> Rollout:
        if pixels is not None and any(p is not None for p in pixels):
            raise ValueError("the OpenAI engine client sends token ids only; image prompts need rl.engine=local")
        # One request per distinct sampling setting (per-prompt settings: each task's own), choices reassembled in
        # prompt order.
        per_prompt = RowSampling.expand(len(prompts), 1, temperature, top_p, top_k, max_new_tokens)
        groups: dict = {}
        for i, key in enumerate(zip(per_prompt.temperature, per_prompt.top_p, per_prompt.top_k,
                                    per_prompt.max_new_tokens)):
            groups.setdefault(key, []).append(i)
        choices = [None] * (len(prompts) * n)
        for (temp, p, k, max_tokens), idx in groups.items():
            payload = {"model": self.model, "prompt": [list(prompts[i]) for i in idx], "n": n,
                       "max_tokens": max_tokens, "temperature": temp, "top_p": p, "logprobs": 0,
                       "return_tokens_as_token_ids": True}
            if k:
                payload["top_k"] = k
            if allowed_tokens is not None:
                payload["allowed_token_ids"] = list(allowed_tokens)
            if self.return_routing:
                payload["return_routed_experts"] = True
            got = sorted(self._post("/v1/completions", payload)["choices"], key=lambda c: c["index"])
            if len(got) != len(idx) * n:
                raise RuntimeError(f"engine returned {len(got)} choices for {len(idx)} prompts x n={n}")
            for j, c in enumerate(got):
                choices[idx[j // n] * n + j % n] = c
        prompt_ids, responses, logps, finished = [], [], [], []
        for i, c in enumerate(choices):
            prompt_ids.append(list(prompts[i // n]))
            ids = [self._token_id(t) for t in c["logprobs"]["tokens"]]
            responses.append(ids)
            logps.append([float(x) for x in c["logprobs"]["token_logprobs"]])
            finished.append(c.get("finish_reason") == "stop" or (self.eos_id is not None and ids[-1:] == [self.eos_id]))
        routing = None
        if self.return_routing:
            routing = routing_from_engine([c.get("routed_experts") for c in choices], prompt_ids, responses)
        return Rollout(prompt_ids, responses, logps, finished, routing)

    def update_weights(self, path: str) -> dict:
        return self._post("/update_weights", {"path": path})
