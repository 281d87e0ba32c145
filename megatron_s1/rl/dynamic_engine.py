"""Colocated rollouts on Megatron-Core's DynamicInferenceEngine (continuous batching, paged KV cache).

Same ``generate(...)`` signature and `Rollout` contract as `LocalEngine`; built on the live training module (the
engine wraps the very same GPTModel: no weight copy). Chosen by ``rl.local_engine`` (auto: this engine on CUDA with
``megatron.core.inference`` importable, else LocalEngine; the choice is logged in one line by `choose_local_engine`).

Facts of megatron-core 0.19 this relies on (read from its source, not guessed):
  * ``SamplingParams`` is per request: temperature, top_k (0 = off), top_p (0.0 = off, *not* 1.0),
    num_tokens_to_generate, termination_id, return_log_probs / skip_prompt_log_probs;
  * ``InferenceConfig.logprobs_mode``: "raw_logprobs" = log_softmax of the output layer's logits,
    "processed_logprobs" = of the request's temperature / top-k / top-p distribution, renormalised over the kept
    set (so not the trainer's full-vocabulary log-probs: this engine applies the temperature itself, `rollout_logits`,
    and uses "raw_logprobs");
  * with ``moe_enable_routing_replay`` on the model config the finished request carries ``routing_indices``
    [prompt + generated - 1, layers, k] (the last sampled token is never forwarded);
  * ``engine.suspend()`` / ``resume()`` free / rebuild the KV cache when ``kv_cache_management_mode`` is not
    PERSIST (RECOMPUTE here: nothing is in flight between rollouts, so nothing needs offloading);
  * ``max_requests`` None defaults to one request per KV block, and the context asserts ``max_tokens`` (default
    16384) >= ``max_requests``: a multi-GB buffer on a small model breaks that, so `DynamicEngine` sets it.
"""
from __future__ import annotations

import contextlib
import logging
import math
from typing import Optional

import torch

from megatron_s1.rl.rollout import (Rollout, RowSampling, draw_row_seeds, routing_from_engine,
                                    sequence_parallel_off)

log = logging.getLogger(__name__)

LOCAL_ENGINES = ("auto", "dynamic", "static")


def dynamic_engine_available() -> tuple:
    """(usable, reason): the dynamic engine needs CUDA and megatron.core.inference's dynamic engine."""
    if not torch.cuda.is_available():
        return False, "no CUDA device"
    try:
        from megatron.core.inference.engines.dynamic_engine import DynamicInferenceEngine  # noqa: F401
    except Exception as err:  # (ImportError, or a missing optional dependency raised at import)
        return False, f"megatron.core.inference not importable ({type(err).__name__}: {err})"
    # Megatron-Core 0.19's attention asserts flash-attn >= 2.7.3 (or FA3 / FA4) for dynamic batching
    try:
        from megatron.core.transformer import attention as mattn
        from megatron.core.utils import is_fa_min_version

        has_fa = getattr(mattn, "HAVE_FA4", False) or getattr(mattn, "HAVE_FA3", False) or \
            is_fa_min_version("2.7.3")
    except Exception:
        has_fa = False
    if not has_fa:
        return False, "flash-attn >= 2.7.3 (or FA3 / FA4) not installed (Megatron's dynamic batching needs it)"
    return True, "CUDA + megatron.core.inference + flash-attn"


def choose_local_engine(setting: str, params_dtype: str = "bf16") -> str:
    """``rl.local_engine`` -> "dynamic" or "static" (LocalEngine), logged as one line. ``dynamic`` where it cannot
    run raises ValueError (one clear line). The paged KV cache takes the parameter dtype and flash-attn needs
    16-bit: fp32 parameters keep LocalEngine."""
    if setting not in LOCAL_ENGINES:
        raise ValueError(f"rl.local_engine must be one of {', '.join(LOCAL_ENGINES)}, got {setting!r}")
    ok, why = dynamic_engine_available()
    if ok and params_dtype not in ("bf16", "fp16", "auto"):  # (auto: bf16 on GPU)
        ok, why = False, f"model.params_dtype={params_dtype} (the KV cache takes it; flash-attn needs bf16 / fp16)"
    if setting == "dynamic" and not ok:
        raise ValueError(f"rl.local_engine=dynamic cannot run here: {why}; use auto or static")
    choice = setting if setting != "auto" else ("dynamic" if ok else "static")
    log.warning("rollout engine: %s (rl.local_engine=%s; %s)",
                "megatron.core DynamicInferenceEngine" if choice == "dynamic" else "LocalEngine (static KV cache)",
                setting, why)
    return choice


def sampling_params_of(sampling: RowSampling, row: int, eos_id: int, temperature: Optional[float] = None):
    """Row ``row`` of a `RowSampling` as Megatron-Core SamplingParams (top_p 1.0 -> 0.0: Megatron's "off").
    ``temperature``: the engine's own (DynamicEngine passes 1.0: `rollout_logits` has applied the row's)."""
    from megatron.core.inference.sampling_params import SamplingParams

    top_p = float(sampling.top_p[row])
    temperature = float(sampling.temperature[row]) if temperature is None else temperature
    return SamplingParams(temperature=temperature, top_k=int(sampling.top_k[row]),
                          top_p=0.0 if top_p >= 1.0 else top_p, return_log_probs=True, skip_prompt_log_probs=True,
                          num_tokens_to_generate=int(sampling.max_new_tokens[row]), termination_id=int(eos_id))


class _IdTokenizer:
    """The engine only needs ``eod`` and ``detokenize`` (for its text fields); rollouts work on token ids."""

    def __init__(self, eos_id: int):
        self.eod = eos_id
        self.bos = None

    def detokenize(self, ids, **_):
        return ""

    def tokenize(self, text):
        raise NotImplementedError("rollout prompts are token ids")


@contextlib.contextmanager
def rollout_logits(module, allowed_tokens: Optional[list] = None, temperature: float = 1.0):
    """While active, the output layer's logits are divided by ``temperature`` and are -inf outside
    ``allowed_tokens`` (a task's vocabulary), before Megatron's sampling.

    The engine then samples at temperature 1 (top-k / top-p filtering on these logits, as LocalEngine filters its
    tempered logits) and returns ``raw_logprobs`` = log-softmax of these logits: the trainer's tempered, masked,
    full-vocabulary log-probs, with or without filtering (Megatron's own ``processed_logprobs`` renormalise over the
    top-k / top-p set instead). Works on each tensor-parallel rank's vocabulary shard; padded entries are masked."""
    if allowed_tokens is None and temperature == 1.0:
        yield
        return
    from megatron.core import parallel_state

    cache = {}

    def hook(_layer, _inputs, output):
        logits = output[0] if isinstance(output, tuple) else output
        if temperature != 1.0:
            logits = logits.float() / temperature  # (in fp32: no extra bf16 rounding of the tempered logits)
        if allowed_tokens is not None:
            local = logits.shape[-1]
            mask = cache.get(local)
            if mask is None:
                start = parallel_state.get_tensor_model_parallel_rank() * local if \
                    parallel_state.model_parallel_is_initialized() else 0
                ids = torch.tensor([t - start for t in allowed_tokens if start <= t < start + local],
                                   dtype=torch.long)
                mask = torch.ones(local, dtype=torch.bool)
                mask[ids] = False
                mask = cache[local] = mask.to(logits.device)
            logits = logits.masked_fill(mask, float("-inf"))
        return (logits, *output[1:]) if isinstance(output, tuple) else logits

    handle = module.output_layer.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def rows_by_temperature(temperatures: list) -> dict:
    """{temperature: [row indices]} in order of first appearance."""
    groups = {}
    for i, t in enumerate(temperatures):
        groups.setdefault(float(t), []).append(i)
    return groups


class DynamicEngine:
    """Rollouts with megatron.core.inference's DynamicInferenceEngine on the training model.

    ``kv_buffer_gb``: the paged KV-cache budget (decode CUDA graphs are not used: Megatron needs the model built
    with ``cuda_graph_impl="local"``, which the training model is not).
    While generating, `rollout_logits` applies each batch's temperature and ``allowed_tokens`` (a task's vocabulary)
    to the output layer's logits; rows of different temperatures run as consecutive continuous batches. Rows with
    image inputs go to ``fallback`` (the dynamic engine has no image path), logged once.
    """

    def __init__(self, model, eos_id: int, pad_id: int, rollout_dtype: Optional[torch.dtype] = None,
                 record_routing: bool = False, device=None, kv_buffer_gb: float = 4.0, block_size: int = 256,
                 max_requests: Optional[int] = None, fallback=None):
        self.model = model
        self.eos_id, self.pad_id = eos_id, pad_id
        self.rollout_dtype = rollout_dtype
        self.record_routing = record_routing
        self.device = device or torch.device("cuda")
        self.kv_buffer_gb = kv_buffer_gb
        self.block_size = block_size
        self.max_requests = max_requests
        self.fallback = fallback
        self._engine = None
        self._max_len = self._slots = 0
        self._warned = False
        self._next_id = 0

    # -- lifecycle
    def _module(self):
        m = self.model
        while hasattr(m, "module"):  # DDP / Float16Module wrappers -> the GPTModel
            m = m.module
        return m

    def _request_slots(self, n_requests: int) -> int:
        """Concurrent requests the engine is built for: this call's count (rounded to Megatron's multiple of 4 and
        the TP size), at most its 16384-token forward budget. Megatron's default (one KV block per request) exceeds
        that budget and fails its own check on small models with a large KV buffer."""
        if self.max_requests is not None:
            return self.max_requests
        from megatron.core import parallel_state
        from megatron.core.inference.contexts.dynamic_context import DynamicInferenceContext

        tp = parallel_state.get_tensor_model_parallel_world_size() if \
            parallel_state.model_parallel_is_initialized() else 1
        step = math.lcm(4, tp)
        cap = DynamicInferenceContext.DEFAULT_MAX_TOKENS // step * step
        return min(cap, -(-n_requests // step) * step)

    def _build(self, max_len: int, slots: int):
        from megatron.core.inference.config import InferenceConfig, KVCacheManagementMode
        from megatron.core.inference.contexts.dynamic_context import DynamicInferenceContext
        from megatron.core.inference.engines.dynamic_engine import DynamicInferenceEngine
        from megatron.core.inference.model_inference_wrappers.gpt.gpt_inference_wrapper import GPTInferenceWrapper
        from megatron.core.inference.text_generation_controllers.text_generation_controller import (
            TextGenerationController)

        self.release()
        self._engine = None
        module = self._module()
        # block-aligned length: a request never needs a partial extra block
        max_len = -(-max_len // self.block_size) * self.block_size
        cfg = InferenceConfig(max_sequence_length=max_len, buffer_size_gb=self.kv_buffer_gb,
                              block_size_tokens=self.block_size, max_requests=slots,
                              kv_cache_management_mode=KVCacheManagementMode.RECOMPUTE,
                              materialize_only_last_token_logits=True, logprobs_mode="raw_logprobs",
                              enable_chunked_prefill=False)
        context = DynamicInferenceContext(module.config, cfg)
        wrapper = GPTInferenceWrapper(module, context)
        controller = TextGenerationController(inference_wrapped_model=wrapper, tokenizer=_IdTokenizer(self.eos_id))
        self._engine = DynamicInferenceEngine(controller=controller, context=context)
        self._max_len, self._slots = max_len, slots

    def release(self) -> None:
        """Free the KV cache (and CUDA graphs) for the update phase; the next generate restores it."""
        if self._engine is not None:
            self._engine.suspend()
            torch.cuda.empty_cache()

    def restore(self) -> None:
        if self._engine is not None:
            self._engine.resume()

    def update_weights(self, *_args, **_kwargs) -> None:
        """Colocated: the engine wraps the training module itself."""

    # -- generation
    def _numerics(self):
        if self.rollout_dtype is None or self.rollout_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.rollout_dtype)

    def generate(self, prompts: list, n: int, max_new_tokens, temperature=1.0, top_p=1.0, top_k=0,
                 allowed_tokens: Optional[list] = None, generator=None, pixels: Optional[list] = None) -> Rollout:
        if pixels is not None and any(p is not None for p in pixels):
            if self.fallback is None:
                raise ValueError("the dynamic engine has no image path; set rl.local_engine=static")
            if not self._warned:
                log.warning("rollout engine: LocalEngine for this task (image prompts are not supported by the "
                            "dynamic engine)")
                self._warned = True
            return self.fallback.generate(prompts, n, max_new_tokens, temperature, top_p, top_k, allowed_tokens,
                                          generator, pixels)
        from megatron_s1.rl.rollout import routing_record

        prompt_ids = [list(p) for p in prompts for _ in range(n)]
        sampling = RowSampling.expand(len(prompt_ids), n, temperature, top_p, top_k, max_new_tokens)
        # One seed from the checkpointed RL generator drives the engine's sampler: resumable, not per-row exact.
        seed = draw_row_seeds(1, generator)[0]
        need = max(len(p) + m for p, m in zip(prompt_ids, sampling.max_new_tokens))
        slots = self._request_slots(len(prompt_ids))
        if self._engine is None or need > self._max_len or slots > self._slots:
            self._build(need, slots)
        else:
            self.restore()
        eng = self._engine
        eng.controller.sampling_rng.manual_seed(seed & 0x7FFFFFFFFFFFFFFF)  # (the controller's own CUDA generator)
        was_training = self.model.training
        self.model.eval()
        record = self.record_routing and self._module().config.moe_enable_routing_replay
        try:
            with torch.no_grad(), self._numerics(), sequence_parallel_off(self.model), \
                    (routing_record() if record else contextlib.nullcontext()):
                base = self._next_id  # (ids unique over the engine's life: it keeps records of old requests)
                self._next_id += len(prompt_ids)
                finished = {}
                # One continuous batch per distinct temperature (one task = one batch): the output-layer hook
                # applies it, so every row's log-probs are the trainer's tempered full-vocabulary ones.
                for temperature, rows in rows_by_temperature(sampling.temperature).items():
                    with rollout_logits(self._module(), allowed_tokens, temperature):
                        for i in rows:
                            eng.add_request(base + i, prompt_ids[i],
                                            sampling_params_of(sampling, i, self.eos_id, temperature=1.0))
                        while eng.has_unfinished_requests():
                            for rec in eng.step_modern()["finished_request_records"]:
                                req = rec.merge()
                                finished[int(req.request_id) - base] = req
        finally:
            if was_training:
                self.model.train()
            # Always suspend: it frees the KV cache for the log-prob / update phases *and* clears Megatron's global
            # InferenceMode, which would otherwise make GPTModel compute last-position logits only in training.
            self.release()
        if len(finished) != len(prompt_ids):
            raise RuntimeError(f"dynamic engine finished {len(finished)} of {len(prompt_ids)} requests "
                               "(failed requests: prompt + max_new_tokens beyond the KV buffer?)")
        responses, logps, done, per_sample = [], [], [], []
        for i in range(len(prompt_ids)):
            req = finished[i]
            toks = [int(t) for t in req.generated_tokens]
            responses.append(toks)
            logps.append([float(x) for x in (req.generated_log_probs or [])][:len(toks)])
            done.append(toks[-1:] == [self.eos_id])
            ri = getattr(req, "routing_indices", None)
            per_sample.append(None if ri is None else ri.tolist())
        routing = routing_from_engine(per_sample, prompt_ids, responses) if record else None
        if record and routing is None:
            log.warning("dynamic engine returned no routing: routing replay is off for this rollout")
        return Rollout(prompt_ids, responses, logps, done, routing, meta={"kv_cache": "dynamic"})
