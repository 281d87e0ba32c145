"""`megatron-s1 rl`: the RL driver (rollout -> reward -> filter -> policy update), on the `Trainer` pieces.

Per step:
  1. sample ``rl.prompts_per_step`` prompts, G = ``rl.samples_per_prompt`` responses each (rollout engine; the
     colocated one decodes with Megatron-Core's static KV cache unless ``rl.kv_cache=false``);
  2. reward every response with its prompt's task reward (megatron_s1/rl/rewards.py) and combine the scores of
     all tasks into one scalar (``rl.reward_weights``, per-task ``rl.reward_normalisation``; per-task raw means
     are logged), online filtering (all-equal groups, degenerate responses);
  3. advantages: leave-one-out (Pro Eq. 6) or GRPO; OREAL uses the positive/negative split instead;
  4. log-probs of the rollout under the training engine (pi_old), with routing replay when enabled, and the
     train/rollout KL with and without replay;
  5. ``rl.mini_batches`` policy updates over the kept samples (IcePop / GRPO / OREAL (+ KL-Cov)), each followed
     by the optimizer step with the grad-norm filter (``train.skip_grad_norm_above``).

Image prompts (jsonl records with ``images``) run through InternS1Model when ``vision.preset`` is set
(megatron_s1/rl/multimodal.py); ``rl.freeze_vision`` freezes its vision tower.

Metrics go to ``run.dir/rl_metrics.jsonl``; checkpoints use the training checkpoint format.

Parallelism: data, expert, tensor and pipeline parallelism. Every forward of the step (prefill, decode steps,
log-prob passes, updates) is one micro-batch of Megatron-Core's pipeline schedule (megatron_s1/rl/pipeline.py):
the last stage samples and computes the losses, the sampled tokens and log-probs are broadcast to the other
stages, and each stage records and replays the routing of its own MoE layers. With tensor parallelism the
training log-probs come from the vocab-parallel logits (-vocab_parallel_cross_entropy: the vocabulary is never
gathered), the rollout gathers logits for sampling (small vocabularies), every TP rank of a data-parallel group
draws prompts and tokens from the same seeds and the driver checks every step that they sampled the same tokens.
Sequence parallelism (forced for MoE + TP) is switched off for generation and kept for the training forwards
(lengths padded to a multiple of TP, routing replay sliced to each rank's sequence shard). With expert
parallelism the EP ranks are data-parallel ranks (own prompts and seeds) whose MoE layers all-to-all with each
other, so the colocated engine keeps them decoding in step until all are done (LocalEngine.sync_group).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
import zlib
from typing import Optional

import torch
import torch.distributed as dist

from megatron_s1.atomic import atomic_open
from megatron_s1.config.schema import ConfigError, ExperimentConfig
from megatron_s1.models.language import build_language_model
from megatron_s1.models.precision import use_fp32_output_layer
from megatron_s1.models.specs import resolve_spec_kind
from megatron_s1.rl import filtering, losses
from megatron_s1.rl.rewards import RewardMixer, as_scores, get_reward, known_tasks
from megatron_s1.rl.pipeline import (from_last_stage, object_from_last_stage, pipeline_size, run_microbatch,
                                     sum_over_stages)
from megatron_s1.rl.rollout import (LocalEngine, OpenAIEngine, RowSampling, moe_replay_available, pad_batch,
                                     pad_routing, routing_replay, sampling_by_task, select_routing, stage_routing,
                                     token_logprobs)
from megatron_s1.rl.tasks import build_prompt_source
from megatron_s1.training.metrics import PhaseMemory
from megatron_s1.training.tasks import register_task


@register_task("rl")
class RLTask:
    """Model provider of RL runs: routing replay hooks on, router / vision frozen on request. With
    ``vision.preset`` set the policy is InternS1Model (image prompts), else the text model."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.cfg = cfg = trainer.cfg
        self.media = None
        if cfg.vision.preset is not None:
            from megatron_s1.data.multimodal.tokens import media_tokens_for_model

            self.media = media_tokens_for_model(trainer.tokenizer, cfg.model.vocab_size, cfg.vision.arch)

    def build_model(self, tconfig, pre_process: bool, post_process: bool, vp_stage=None):
        if self.cfg.model.num_moe_experts is not None:
            from megatron.core.transformer.moe.router_replay import RouterReplay

            if vp_stage in (None, 0):  # replay instances are process-global: one model per process
                RouterReplay.clear_global_router_replay_instances()
            tconfig.moe_enable_routing_replay = True
            # Megatron's fused (TE) top-k returns before consulting RouterReplay: nothing would be recorded or
            # replayed (found on the H100 with the TE spec), so the RL policy routes with the unfused top-k.
            tconfig.moe_router_fusion = False
        if self.media is not None:
            from megatron_s1.models.interns1.model import build_interns1_model

            model = build_interns1_model(self.cfg, tconfig, pre_process, post_process, vp_stage=vp_stage,
                                         token_ids=self.media)
            if self.cfg.rl.freeze_vision and model.vision_model is not None:
                model.vision_model.requires_grad_(False)
        else:
            model = build_language_model(self.cfg, tconfig, pre_process, post_process, vp_stage=vp_stage)
        if self.cfg.rl.fp32_lm_head:
            use_fp32_output_layer(getattr(model, "language_model", model))
        if self.cfg.rl.freeze_router:
            for name, p in model.named_parameters():
                if ".router." in name:
                    p.requires_grad_(False)
        return model

    def build_datasets(self, *_):
        return None, None, None


def _rollout_dtype(name: str) -> Optional[torch.dtype]:
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def check_objective(r) -> None:
    """One-line errors for objective settings that are invalid or would silently do nothing."""
    if r.algorithm not in ("icepop", "grpo", "oreal"):
        raise ConfigError(f"rl.algorithm must be icepop, grpo or oreal, got {r.algorithm!r}")
    if r.grpo_std not in ("unbiased", "population"):
        raise ConfigError(f"rl.grpo_std must be unbiased or population, got {r.grpo_std!r}")
    if r.oreal.variant not in ("paper", "xtuner"):
        raise ConfigError(f"rl.oreal.variant must be paper or xtuner, got {r.oreal.variant!r}")
    if r.oreal.kl_coef < 0 or r.kl_cov_coef < 0:
        raise ConfigError("rl.kl_cov_coef and rl.oreal.kl_coef must be >= 0 (0 switches the term off)")
    if r.kl_cov_coef > 0 and not 0 < r.kl_cov_fraction <= 1:
        raise ConfigError(f"rl.kl_cov_fraction must be in (0, 1] with KL-Cov on, got {r.kl_cov_fraction}")
    if r.kl_cov_coef > 0 and r.mini_batches < 2:
        # The penalty |log pi - log pi_old| and its gradient are 0 on a rollout's first mini-batch (pi = pi_old).
        raise ConfigError(f"rl.kl_cov_coef={r.kl_cov_coef} with rl.mini_batches={r.mini_batches} does nothing: KL-Cov "
                          "penalises |log pi - log pi_old|, which is 0 on the first mini-batch of every rollout; set "
                          "rl.mini_batches >= 2 or rl.kl_cov_coef=0")


def routing_mismatch_counts(a: list, b: list, where: Optional[torch.Tensor] = None) -> list:
    """[differing, compared] (layer, token) routing decisions -- top-k expert *sets* -- of two recordings ([L, N, k]
    per layer), over the positions marked in ``where`` [L, N] (default all)."""
    diff, total = 0, 0
    for x, y in zip(a, b):
        differs = (x.sort(-1).values != y.sort(-1).values).any(-1)
        if where is not None:
            differs = differs[where]
        diff += int(differs.sum())
        total += differs.numel()
    return [float(diff), float(total)]


def routing_mismatch(a: list, b: list, where: Optional[torch.Tensor] = None) -> float:
    """Fraction of (layer, token) routing decisions whose top-k expert sets differ (`routing_mismatch_counts`)."""
    diff, total = routing_mismatch_counts(a, b, where)
    return diff / max(total, 1.0)


def routed_positions(prompt_ids: list, response_ids: list, length: int) -> torch.Tensor:
    """[L, N] positions (pad_batch layout) whose routing reaches the loss: real tokens except each row's last
    one (a cached engine never forwards it and its output predicts nothing); padding is excluded."""
    max_p = max(map(len, prompt_ids))
    out = torch.zeros(length, len(prompt_ids), dtype=torch.bool)
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        out[max_p - len(p):max_p + len(r) - 1, i] = True
    return out


class RLTrainer:
    def __init__(self, cfg: ExperimentConfig, rollout_dtype: str = "bf16"):
        from megatron_s1.training.loop import Trainer

        if cfg.parallel.pipeline > 1 and cfg.parallel.virtual_pipeline:
            raise ConfigError("megatron-s1 rl runs one model chunk per pipeline stage; unset "
                              f"parallel.virtual_pipeline (got {cfg.parallel.virtual_pipeline})")
        if cfg.parallel.pipeline > 1 and cfg.vision.preset is not None:
            raise ConfigError("megatron-s1 rl with image prompts (vision.preset) needs parallel.pipeline=1; use "
                              "tensor, expert or data parallelism for the multimodal policy")
        if cfg.parallel.context != 1:
            raise ConfigError(f"megatron-s1 rl needs parallel.context=1 (got {cfg.parallel.context}); use tensor, "
                              "expert or data parallelism instead")
        check_objective(cfg.rl)
        if cfg.model.position_embedding_type == "fope" and resolve_spec_kind(cfg.model.spec) == "te":
            # Measured on an H100: a left-padded row's FoPE log-probs on the TE spec differ from the row alone
            # (0.096), because FoPE there follows the sequence index, not the row's positions (RoPE is shift-invariant).
            raise ConfigError("megatron-s1 rl with model.position_embedding_type=fope needs model.spec=local: "
                              "left-padded prompts need per-row FoPE positions, which the TE spec does not apply")
        cfg.train.task = "rl"
        self.cfg = cfg
        # Prompt source and reward mixture first: bad input fails before the model is built.
        try:
            self.source = build_prompt_source(cfg.rl.task)
            self.mixer = RewardMixer(cfg.rl.reward_weights, cfg.rl.reward_normalisation)
            self.sampling = sampling_by_task(cfg.rl, known_tasks())
        except (ValueError, OSError) as err:
            raise ConfigError(str(err)) from None
        if self.source.has_images and cfg.vision.preset is None:
            raise ConfigError(f"the prompts of rl.task={cfg.rl.task} have images; set vision.preset (InternS1Model) "
                              "and a model.vocab_size that covers the media tokens")
        if self.source.has_images and cfg.rl.engine != "local":
            raise ConfigError("image prompts need rl.engine=local (the OpenAI engine client sends token ids only)")
        self.t = Trainer(cfg)
        self.tok = self.t.tokenizer
        self.device = self.t.env.device
        self.model = self.t.model[0]
        from megatron_s1.rl.multimodal import PromptEncoder

        media = self.t.task.media
        self.encode = PromptEncoder(self.tok, media, cfg.vision if media is not None else None)
        self.allowed_list = self.source.allowed_tokens(self.tok)
        if media is not None:  # a sampled media token would need an image behind it: never sample them
            banned = set(media.all())
            pool = range(cfg.model.vocab_size) if self.allowed_list is None else self.allowed_list
            self.allowed_list = [t for t in pool if t not in banned]
        self.allowed = None
        if self.allowed_list is not None:
            self.allowed = torch.zeros(cfg.model.vocab_size, dtype=torch.bool, device=self.device)
            self.allowed[torch.tensor(self.allowed_list)] = True
        self.eos = self.tok.eod_id
        self.pad = self.tok.eod_id
        from megatron.core import parallel_state

        self.tp = parallel_state.get_tensor_model_parallel_world_size()
        self.tp_rank = parallel_state.get_tensor_model_parallel_rank()
        # The RL losses arrive globally normalised (see _policy_loss): Megatron's schedule must neither divide
        # them by token counts nor finalise the gradients itself; the step calls finalize_model_grads.
        self.t.tconfig.finalize_model_grads_func = None
        self._one = torch.ones((), dtype=torch.int, device=self.device)
        self.sp = bool(self.t.tconfig.sequence_parallel) and self.tp > 1
        r = cfg.rl
        self.ep = parallel_state.get_expert_model_parallel_world_size()
        if r.routing_replay and cfg.model.num_moe_experts is not None and pipeline_size() > 1:
            stages_without_moe = sum_over_stages([0.0 if moe_replay_available() else 1.0], self.device)[0]
            if stages_without_moe:
                raise ConfigError("rl.routing_replay with parallel.pipeline>1 needs MoE layers on every pipeline "
                                  "stage; lower parallel.pipeline or set rl.routing_replay=false")
        if r.engine == "local":
            # Expert parallelism: the EP ranks are data-parallel ranks with their own prompts, yet each MoE layer
            # forward is an all-to-all over them, so they stop decoding together (LocalEngine.sync_group).
            sync = parallel_state.get_expert_model_parallel_group() if self.ep > 1 else None
            self.engine = LocalEngine(self.model, self.eos, self.pad, _rollout_dtype(rollout_dtype),
                                      record_routing=r.routing_replay, device=self.device, kv_cache=r.kv_cache,
                                      sync_group=sync,
                                      decode_mask_applied=resolve_spec_kind(cfg.model.spec) == "local")
            from megatron_s1.rl.dynamic_engine import DynamicEngine, choose_local_engine

            try:
                choice = choose_local_engine(r.local_engine, cfg.model.params_dtype)
            except ValueError as err:
                raise ConfigError(str(err)) from None
            if choice == "dynamic":
                if sync is not None or pipeline_size() > 1:
                    # (EP ranks must pair their forwards; the engine's EP consensus is untested here)
                    raise ConfigError("rl.local_engine=dynamic supports tensor parallelism only (no expert / "
                                      "pipeline parallelism yet); set rl.local_engine=static")
                self.engine = DynamicEngine(self.model, self.eos, self.pad, _rollout_dtype(rollout_dtype),
                                            record_routing=r.routing_replay, device=self.device,
                                            kv_buffer_gb=r.dynamic_kv_gb, fallback=self.engine)
        elif r.engine == "openai":
            if not r.engine_url:
                raise ConfigError("rl.engine=openai needs rl.engine_url (e.g. http://host:8000)")
            self.engine = OpenAIEngine(r.engine_url, eos_id=self.eos, pad_id=self.pad,
                                       return_routing=r.routing_replay and cfg.model.num_moe_experts is not None)
        else:
            raise ConfigError(f"rl.engine must be local or openai, got {r.engine!r}")
        # Seeds per data-parallel rank: the TP ranks of one model replica draw the same prompts and tokens.
        self.rng = random.Random(cfg.run.seed + 17 * self.t.dp_rank)
        self.gen = torch.Generator().manual_seed(cfg.run.seed + 1000 + self.t.dp_rank)
        self.is_moe = cfg.model.num_moe_experts is not None
        self.metrics_path = os.path.join(cfg.run.dir, "rl_metrics.jsonl")
        # The prompt / token samplers are checkpointed per rank: a resumed run draws what the uninterrupted one would.
        self.t.rank_state = (self._sampler_state, self._restore_sampler_state)
        self._signal: Optional[int] = None

    def _sampler_state(self) -> dict:
        return {"prompt_rng": self.rng.getstate(), "token_rng": self.gen.get_state()}

    def _restore_sampler_state(self, state: Optional[dict]) -> None:
        if state is not None:  # None: resharded resume (another data-parallel layout); the seeds stay fresh
            self.rng.setstate(state["prompt_rng"])
            self.gen.set_state(state["token_rng"])

    def _on_signal(self, signum: int) -> None:
        self._signal = signum

    # ------------------------------------------------------------------ pieces
    def _train_forward(self, batch, routing, temperature, media=None, loss_fn=None):
        """One forward of the training engine over a padded batch, through every pipeline stage.

        ``loss_fn`` None: no gradients; returns the log-probs [N, L] (CPU) on every stage. Otherwise the batch's
        loss ``loss_fn(logp) -> (loss, stats)`` is back-propagated (gradients accumulate in the DDP buffers) and
        ``{"loss": float, **stats}`` is returned on every stage. ``temperature``: the rows' sampling temperature (a
        float, or [N, 1, 1]), as in the rollout. With tensor parallelism the log-probs come from the vocab-parallel
        logits.
        """
        tokens, positions, mask = (x.to(self.device) for x in batch[:3])
        extra = {} if media is None else {k: None if v is None else v.to(self.device) for k, v in media.items()}
        args = (tokens.shape[1], tokens.shape[0])

        def forward(model):
            return model(tokens, positions, mask, **extra)

        def logprobs(logits):
            return token_logprobs(logits, tokens, temperature, self.allowed, vocab_parallel=self.tp > 1)

        with routing_replay(self._sequence_shard(routing)):
            if loss_fn is None:
                with torch.no_grad():
                    logits = run_microbatch(self.model, forward, *args)
                    lp = None if logits is None else logprobs(logits)
                return from_last_stage(lp, tokens.shape, torch.float32, self.device).cpu()

            def loss_func(logits):
                loss, stats = loss_fn(logprobs(logits))
                return loss, self._one, {"loss": float(loss.detach()), **stats}

            stats = run_microbatch(self.model, forward, *args, loss_func=loss_func, forward_only=False)
        return object_from_last_stage(stats)

    def _batch_len(self, prompt_ids, response_ids) -> int:
        """Padded length of a training batch: sequence parallelism splits it over the TP ranks."""
        length = max(map(len, prompt_ids)) + max((len(r) for r in response_ids), default=0)
        return -(-length // self.tp) * self.tp if self.sp else length

    def _sequence_shard(self, per_layer):
        """Replay data of this rank's sequence shard (sequence parallelism routes [L / TP, N] tokens per rank)."""
        if per_layer is None or not self.sp:
            return per_layer
        n = per_layer[0].shape[0] // self.tp
        return [t[self.tp_rank * n:(self.tp_rank + 1) * n] for t in per_layer]

    def _recorded_routing(self, rr, length: int, rows: int) -> list:
        """Expert ids recorded in the training forward, as [L, N, k] per layer (gathered over sequence shards)."""
        from megatron.core import parallel_state

        out = []
        for t in rr.get_recorded_data():
            t = t.detach()
            if self.sp:
                parts = [torch.empty_like(t) for _ in range(self.tp)]
                dist.all_gather(parts, t.contiguous(), group=parallel_state.get_tensor_model_parallel_group())
                t = torch.cat(parts)
            out.append(t.cpu().reshape(length, rows, -1))
        return out

    def _prompt_sampling(self, records: list) -> list:
        """The `Sampling` of each prompt record: its task's ``rl.sampling`` entry, else the ``rl.*`` defaults."""
        return [self.sampling.get(rec.get("task", self.source.task), self.sampling[None]) for rec in records]

    def _generate(self, prompt_ids, n, allowed_list, pixels, settings: list):
        """Rollout of this model replica, prompt i sampled with ``settings[i]``. An external engine is asked once per
        replica (first rank of its tensor x pipeline group, broadcast); the colocated engine runs on every rank and
        every TP rank must sample the same tokens (checked)."""
        from megatron.core import parallel_state

        kwargs = dict(RowSampling.per_prompt(settings), allowed_tokens=allowed_list, generator=self.gen)
        if pixels is not None and any(p is not None for p in pixels):
            kwargs["pixels"] = pixels
        if isinstance(self.engine, OpenAIEngine):
            rollout = self._from_model_parallel_src(lambda: self.engine.generate(prompt_ids, n, **kwargs))
            if rollout.routing is not None:  # the server reports every layer: keep this pipeline stage's
                rollout.routing = stage_routing(rollout.routing)
            return rollout
        rollout = self.engine.generate(prompt_ids, n, **kwargs)  # (DynamicEngine frees its KV cache on return)
        if self.tp == 1:
            return rollout
        group = parallel_state.get_tensor_model_parallel_group()
        digest = torch.tensor([zlib.crc32(json.dumps(rollout.response_ids).encode())], dtype=torch.long)
        seen = [torch.zeros_like(digest) for _ in range(self.tp)]
        dist.all_gather(seen, digest, group=group)
        if len({int(x) for x in seen}) != 1:
            raise RuntimeError("tensor-parallel ranks sampled different tokens for the same rollout; the colocated "
                               "engine needs identical gathered logits and generator seeds on every TP rank")
        return rollout

    def _is_model_parallel_src(self) -> bool:
        from megatron.core import parallel_state

        return self.tp_rank == 0 and parallel_state.get_pipeline_model_parallel_rank() == 0

    def _from_model_parallel_src(self, make):
        """``make()`` on the first rank of this model replica (tensor x pipeline ranks), its result on all of them:
        the replica asks an external engine once."""
        from megatron.core import parallel_state

        if self.tp * pipeline_size() == 1:
            return make()
        group = parallel_state.get_model_parallel_group()
        box = [make() if self._is_model_parallel_src() else None]
        dist.broadcast_object_list(box, src=dist.get_process_group_ranks(group)[0], group=group)
        return box[0]

    def _rollout_matrix(self, rollout, rows, length):
        """Rollout log-probs scattered into the [n, L] layout of pad_batch (response positions only)."""
        _, _, _, resp_mask, _ = pad_batch([rollout.prompt_ids[i] for i in rows],
                                          [rollout.response_ids[i] for i in rows],
                                          self.pad, length)
        out = torch.zeros_like(resp_mask)
        for j, i in enumerate(rows):
            idx = resp_mask[j].nonzero().squeeze(-1)
            out[j, idx] = torch.tensor(rollout.rollout_logprobs[i][:len(idx)], dtype=out.dtype)
        return out

    def _policy_loss(self, logp, old, roll, ref, mask, adv, positive, counts: dict, seq_scale: float = 1.0,
                     weight: float = 1.0):
        """Loss of this rank's share of a mini-batch, already divided by the global normalisers, so that the
        gradient sum over data-parallel ranks is the gradient of the global objective.

        ``counts``: global token counts of the mini-batch ("tokens": all response tokens, "pos" / "neg": OREAL's
        positive / negative split, already multiplied by ``weight``); ``seq_scale``: this rank's share of the
        responses (1/G sum_i normalisation); ``ref``: reference-policy log-probs (OREAL's KL) or None.
        """
        r, o = self.cfg.rl, self.cfg.rl.oreal
        stats = {}
        if r.algorithm == "icepop":
            loss, stats = losses.icepop_loss(logp, old, roll, adv, mask, r.icepop_alpha, r.icepop_beta,
                                             return_stats=True)
            loss = loss * seq_scale
        elif r.algorithm == "grpo":
            loss = losses.grpo_loss(logp, old, adv, mask) * seq_scale
        elif o.variant == "xtuner":
            loss = weight * losses.oreal_xtuner_loss(logp, old, adv, mask, counts["pos"], counts["neg"],
                                                     o.positive_factor, o.negative_factor, o.clip_eps, o.dual_clip)
        else:
            loss = weight * losses.oreal_loss(logp, mask, positive, counts["pos"], counts["neg"], o.negative_factor,
                                              pos_coef=o.positive_factor, advantages=adv,
                                              weight_positives=o.advantage_weighted_positives,
                                              weight_negatives=o.advantage_weighted_negatives)
        if ref is not None:
            kl = weight * losses.reference_kl(logp, ref, mask, o.kl_coef, counts["tokens"])
            loss = loss + kl
            stats["ref_kl_loss"] = float(kl.detach())
        if r.kl_cov_coef > 0:
            pen, kstats = losses.kl_cov_penalty(logp, old, adv, mask, r.kl_cov_fraction, r.kl_cov_coef,
                                                counts["tokens"])
            loss = loss + weight * pen
            stats.update(kstats, kl_cov_penalty=float(weight * pen.detach()))
        return loss, stats

    def _gather_dp(self, items: list) -> list:
        """Every data-parallel rank's items, in rank order (small Python objects)."""
        from megatron.core import parallel_state

        if self.t.dp_size == 1:
            return list(items)
        out = [None] * self.t.dp_size
        dist.all_gather_object(out, items, group=parallel_state.get_data_parallel_group())
        return [x for part in out for x in part]

    def _mix_rewards(self, prompts: list, texts: list) -> tuple[list, list, dict]:
        """Rewards of this rank's responses -> (combined reward, raw reward) per response, plus batch metrics.

        Each prompt's ``task`` picks its reward; ``rl.reward_weights`` / ``rl.reward_normalisation`` combine the
        scores of all tasks into one scalar (``RewardMixer``). The mixer sees the samples of every data-parallel
        rank, so running normalisers stay identical across ranks. "Raw" is the sum of a response's unweighted,
        unnormalised scores: pass rate and OREAL's positive / negative split use it.
        """
        G = self.cfg.rl.samples_per_prompt
        samples = []
        for i, text in enumerate(texts):
            rec = prompts[i // G]
            task = rec.get("task", self.source.task)
            samples.append({"task": task, "scores": as_scores(task, get_reward(task)(rec["prompt"], text,
                                                                                    rec.get("reference")))})
        everyone = self._gather_dp(samples)
        combined_all = self.mixer(everyone)
        start = self.t.dp_rank * len(samples)  # equal shares: every rank samples prompts_per_step x G
        raw_all = [sum(s["scores"].values()) for s in everyone]
        n = len(everyone)
        metrics = {"reward_mean": sum(raw_all) / n, "pass_rate": sum(r > 0.5 for r in raw_all) / n,
                   "reward_combined_mean": sum(combined_all) / n}
        for task in sorted({s["task"] for s in everyone}):
            idx = [j for j, s in enumerate(everyone) if s["task"] == task]
            metrics[f"reward_mean/{task}"] = sum(raw_all[j] for j in idx) / len(idx)
            metrics[f"reward_combined/{task}"] = sum(combined_all[j] for j in idx) / len(idx)
            metrics[f"samples/{task}"] = len(idx)
        return combined_all[start:start + len(samples)], raw_all[start:start + len(samples)], metrics

    @staticmethod
    def _clock() -> float:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()

    def _all_sum(self, values: list) -> list:
        """Sum over data-parallel ranks (TP ranks of a replica hold the same values and are not summed)."""
        from megatron.core import parallel_state

        t = torch.tensor(values, dtype=torch.float64)
        if self.t.dp_size > 1:
            t = t.to(self.device)
            dist.all_reduce(t, group=parallel_state.get_data_parallel_group())
        return t.cpu().tolist()

    # ------------------------------------------------------------------ one step
    def step(self) -> dict:
        cfg, r = self.cfg, self.cfg.rl
        t0 = self._clock()
        memory = PhaseMemory()
        prompts = self.source.sample(r.prompts_per_step, self.rng)
        prompt_ids, pixels = zip(*map(self.encode, prompts))
        settings = self._prompt_sampling(prompts)
        rollout = self._generate(list(prompt_ids), r.samples_per_prompt, self.allowed_list, list(pixels), settings)
        row_sampling = RowSampling.from_prompts(settings, r.samples_per_prompt)
        from megatron_s1.rl.multimodal import batch_pixels

        row_pixels = rollout.meta.get("pixels")
        t_roll = self._clock() - t0
        memory.mark("rollout")  # (the colocated engines have released their KV cache by now: rollout_end_gb)
        G = r.samples_per_prompt
        texts, degen = [], []
        for resp in rollout.response_ids:
            body = resp[:-1] if resp[-1:] == [self.eos] else resp
            text = self.tok.decode(body)
            texts.append(text)
            degen.append(r.online_filter and filtering.degenerate(text, body))
        combined, raw, reward_metrics = self._mix_rewards(prompts, texts)
        R = torch.tensor(combined, dtype=torch.float32).view(len(prompts), G)
        if r.online_filter:
            keep_groups, keep = filtering.online_filter(R, torch.tensor(degen).view_as(R))
        else:
            keep_groups, keep = torch.ones(len(prompts), dtype=torch.bool), torch.ones_like(R, dtype=torch.bool)
        adv = losses.group_advantages(R, r.baseline, r.grpo_std).reshape(-1)
        # OREAL's positive set: raw reward > 0.5 (paper) or A > 0 (XTuner's variant)
        positive = losses.oreal_positive(r.oreal.variant, torch.tensor(raw) > 0.5, adv)
        rows = keep.reshape(-1).nonzero().squeeze(-1).tolist()

        kept_groups = self._all_sum([float(keep_groups.sum())])[0]
        record = {"step": self.t.state["step"] + 1, **reward_metrics, "kept_groups": int(kept_groups),
                  # checksum of the sampled token ids (this data-parallel rank) to compare runs / layouts
                  "rollout_crc": zlib.crc32(json.dumps(rollout.response_ids).encode()),
                  "kept_samples": len(rows), "response_len": sum(map(len, rollout.response_ids)) / len(texts),
                  "rollout_s": t_roll}
        # Train/rollout mismatch on the whole batch: with and without replaying the rollout's routing.
        all_rows = list(range(len(texts)))
        length = self._batch_len(rollout.prompt_ids, rollout.response_ids)
        full = pad_batch(rollout.prompt_ids, rollout.response_ids, self.pad, length)
        roll_all = self._rollout_matrix(rollout, all_rows, length)
        all_pixels = batch_pixels(row_pixels, all_rows)
        temp_all = row_sampling.temperature_of_rows()
        if rollout.routing is not None:
            from megatron_s1.rl.rollout import routing_record

            rollout.routing = pad_routing(rollout.routing, length)
            with routing_record() as rr:
                lp_plain = self._train_forward(full, None, temp_all, media=all_pixels)
                own = self._recorded_routing(rr, length, len(texts))
            # (each pipeline stage compares the routing of its own layers)
            differ, total = sum_over_stages(routing_mismatch_counts(
                own, rollout.routing, routed_positions(rollout.prompt_ids, rollout.response_ids, length)), self.device)
            record["routing_mismatch"] = differ / max(total, 1.0)
        else:
            lp_plain = self._train_forward(full, None, temp_all, media=all_pixels)
        record["kl_train_rollout"] = losses.sampled_kl(lp_plain, roll_all, full[3])
        record["logp_train_rollout_maxdiff"] = float(((lp_plain - roll_all).abs() * full[3]).max())
        if rollout.routing is not None:
            lp_replay = self._train_forward(full, rollout.routing, temp_all, media=all_pixels)
            record["kl_train_rollout_replay"] = losses.sampled_kl(lp_replay, roll_all, full[3])
        old_all = lp_replay if (rollout.routing is not None and r.routing_replay) else lp_plain
        # Policy entropy at the sampled tokens: mean -log pi_old(y_t) over all response tokens (its Monte-Carlo
        # estimate, the tokens being drawn from pi_old at the rows' temperatures).
        ent_sum, ent_n = self._all_sum([float((-old_all * full[3]).sum()), float(full[3].sum())])
        record["entropy"] = ent_sum / max(ent_n, 1.0)
        ref_all = None
        if r.algorithm == "oreal" and r.oreal.kl_coef > 0:
            with self._reference_weights():
                ref_all = self._train_forward(full, rollout.routing if r.routing_replay else None, temp_all,
                                              media=all_pixels)
            # k3 estimate of KL(pi_old || pi_ref) on the sampled tokens (0 until the policy moves)
            record["kl_ref"] = losses.sampled_kl(ref_all, old_all, full[3])
        t_logprob = self._clock()
        memory.mark("logprob")

        loss_sum, stepped_any, grad_norms, mb_stats = 0.0, False, [], []
        order = rows[:]
        self.rng.shuffle(order)
        # Every data-parallel rank runs the same number of mini-batches (the gradient all-reduce is collective);
        # a rank whose share of a mini-batch is empty contributes a zero-weighted forward.
        n_kept = self._all_sum([float(len(order))])[0]
        n_mb = int(max(1, min(r.mini_batches, n_kept))) if n_kept > 0 else 0
        for k in range(n_mb):
            mb = order[k::n_mb]
            weight = 1.0
            if not mb:
                mb, weight = [0], 0.0
            # Rows of the full batch's layout: pi_old, the rollout log-probs and the replayed routing are indexed
            # in it (re-padding the subset would shift positions when its longest prompt is shorter).
            batch = tuple(x[mb] for x in full[:4])
            mask = batch[3].to(self.device)
            old = old_all[mb].to(self.device)
            roll = roll_all[mb].to(self.device)
            a = adv[mb].to(self.device)
            pos = positive[mb].to(self.device)
            ref = None if ref_all is None else ref_all[mb].to(self.device)
            # Global normalisers: responses (IcePop / GRPO: 1/G sum_i), all response tokens (KL-Cov and OREAL's KL:
            # token means) and OREAL's N+ / N- tokens.
            n_pos, n_neg = float((mask * pos[:, None]).sum()) * weight, float((mask * ~pos[:, None]).sum()) * weight
            n_seq_global, n_pos, n_neg = self._all_sum([len(mb) * weight, n_pos, n_neg])
            counts = {"pos": n_pos, "neg": n_neg, "tokens": n_pos + n_neg}
            seq_scale = weight * len(mb) / max(n_seq_global, 1.0)
            for chunk in self.t.model:
                chunk.zero_grad_buffer()
            self.t.optimizer.zero_grad()

            def loss_fn(logp, k=k, weight=weight, mask=mask, old=old, roll=roll, ref=ref, a=a, pos=pos,
                        counts=counts, seq_scale=seq_scale):
                first = {}
                if k == 0 and weight > 0:  # no update yet: pi_new must equal pi_old position by position
                    first["first_update_logp_maxdiff"] = float(((logp.detach() - old).abs() * mask).max())
                loss, stats = self._policy_loss(logp, old, roll, ref, mask, a, pos, counts, seq_scale, weight)
                return loss, {**first, **stats}

            stats = self._train_forward(batch, select_routing(rollout.routing, mb) if r.routing_replay else None,
                                        row_sampling.subset(mb).temperature_of_rows(),
                                        media=batch_pixels(row_pixels, mb), loss_fn=loss_fn)
            if "first_update_logp_maxdiff" in stats:
                record["first_update_logp_maxdiff"] = stats["first_update_logp_maxdiff"]
            from megatron.core.distributed import finalize_model_grads

            finalize_model_grads(self.t.model)  # sums gradients over data-parallel ranks
            stepped, gn = self.t._optimizer_step()
            stepped_any |= stepped
            grad_norms.append(gn)
            loss_sum += self._all_sum([stats["loss"]])[0] / n_mb
            mb_stats.append(stats if weight > 0 else {})
            if not stepped:
                self.t.state["skipped_steps"] += 1
        # The LR schedule is defined on tokens (train.global_batch_tokens per step), as in pretraining.
        batch_tokens = self.t.batch_schedule.global_batch_size(self.t.state["consumed_tokens"]) * cfg.data.seq_length
        self.t.scheduler.step(increment=batch_tokens)
        self.t.state["consumed_tokens"] += batch_tokens
        self.t.state["step"] += 1
        self.t.state["consumed_samples"] += len(texts)
        record.update({"loss": loss_sum, "grad_norm": max(grad_norms) if grad_norms else 0.0, "stepped": stepped_any,
                       "lr": self.t.optimizer.param_groups[0]["lr"]})
        # Step time split (rollout / log-probs of pi_old incl. the KL probes / policy updates), GPU-synchronised.
        end = self._clock()
        record.update({"step_s": end - t0, "logprob_s": t_logprob - t0 - t_roll, "update_s": end - t_logprob,
                       "rollout_tokens_per_s": sum(map(len, rollout.response_ids)) / max(t_roll, 1e-9)})
        record.update(self._objective_metrics(mb_stats))
        memory.mark("update")
        record.update(memory.record)  # per-phase peak / end GB on CUDA
        return record

    def _objective_metrics(self, mb_stats: list) -> dict:
        """Per-step IcePop / KL-Cov / reference-KL metrics from the mini-batches' loss stats (all data-parallel
        ranks; a rank's empty share contributes nothing)."""
        out = {}
        r = self.cfg.rl

        def total(key, rows=mb_stats):
            return sum(st.get(key, 0.0) for st in rows)

        if r.algorithm == "icepop":
            tokens, masked, kept, rho_sum = self._all_sum([total("icepop_tokens"), total("icepop_masked"),
                                                           total("icepop_kept"), total("icepop_rho_sum")])
            lo, hi = self._all_min_max(min((st["icepop_rho_min"] for st in mb_stats if st), default=math.inf),
                                       max((st["icepop_rho_max"] for st in mb_stats if st), default=-math.inf))
            out["icepop_masked_frac"] = masked / max(tokens, 1.0)
            if kept > 0:
                out.update(icepop_rho_min=lo, icepop_rho_mean=rho_sum / kept, icepop_rho_max=hi)
        if r.kl_cov_coef > 0:
            later = mb_stats[1:]
            selected, tokens, abs_sum, sel_later = self._all_sum(
                [total("kl_cov_selected"), total("kl_cov_tokens"), total("kl_cov_abs_sum", later),
                 total("kl_cov_selected", later)])
            # The penalty terms are globally normalised: their sum over ranks is the mini-batch's term.
            pen = self._all_sum([st.get("kl_cov_penalty", 0.0) for st in mb_stats] or [0.0])
            out["kl_cov_selected_frac"] = selected / max(tokens, 1.0)
            out["kl_cov_penalty_first"] = pen[0]  # first mini-batch: pi = pi_old, so 0
            out["kl_cov_active_minibatches"] = len(later)
            if later:
                out["kl_cov_penalty"] = sum(pen[1:]) / len(later)
                out["kl_cov_abs_logratio"] = abs_sum / max(sel_later, 1.0)
        if any("ref_kl_loss" in st for st in mb_stats):
            out["ref_kl_loss"] = sum(self._all_sum([total("ref_kl_loss")])) / max(len(mb_stats), 1)
        return out

    def _all_min_max(self, lo: float, hi: float) -> tuple:
        """(min of ``lo``, max of ``hi``) over data-parallel ranks."""
        from megatron.core import parallel_state

        if self.t.dp_size == 1:
            return lo, hi
        t = torch.tensor([-lo, hi], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=parallel_state.get_data_parallel_group())
        return -float(t[0]), float(t[1])

    @contextlib.contextmanager
    def _reference_weights(self):
        """The model's parameters temporarily replaced by the reference policy's (``self.reference``)."""
        params = [p for chunk in self.t.model for p in chunk.parameters()]
        current = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, ref in zip(params, self.reference):
                p.copy_(ref)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, cur in zip(params, current):
                    p.copy_(cur)

    # ------------------------------------------------------------------ offline filtering
    def offline_filter(self, in_path: str, out_path: str, n: int = 8, low: float = 0.25, high: float = 1.0,
                       prompts_per_batch: int = 16) -> dict:
        """Pass rate of every prompt of a jsonl file over ``n`` rollouts of the current policy (load it with
        checkpoint.pretrained); writes the prompts with low < rate < high (plus their ``pass_rate``) to out_path."""
        from megatron_s1.rl.tasks import JsonlPrompts

        self.t._maybe_resume()
        r = self.cfg.rl
        try:
            records = JsonlPrompts(in_path, default_task=self.source.task if r.task.startswith("toy") else "math").records
        except (ValueError, OSError) as err:
            raise ConfigError(str(err)) from None
        rates = []
        for start in range(0, len(records), prompts_per_batch):
            chunk = records[start:start + prompts_per_batch]
            ids, pixels = zip(*map(self.encode, chunk))
            roll = self._generate(list(ids), n, self.allowed_list, list(pixels), self._prompt_sampling(chunk))
            for j, rec in enumerate(chunk):
                fn = get_reward(rec["task"])
                wins = 0
                for resp in roll.response_ids[j * n:(j + 1) * n]:
                    body = resp[:-1] if resp[-1:] == [self.eos] else resp
                    score = fn(rec["prompt"], self.tok.decode(body), rec.get("reference"))
                    wins += sum(as_scores(rec["task"], score).values()) > 0.5
                rates.append(wins / n)
        kept = filtering.offline_filter(records, rates, low, high)
        if self.t.env.is_main:
            with atomic_open(out_path) as f:
                for rec in kept:
                    f.write(json.dumps(rec) + "\n")
        hist = {f"{k / n:.3f}": sum(1 for x in rates if abs(x - k / n) < 1e-9) for k in range(n + 1)}
        return {"prompts": len(records), "kept": len(kept), "rollouts": n, "pass_rate_histogram": hist,
                "output": out_path}

    # ------------------------------------------------------------------ main
    def _load_reference(self) -> list:
        """Parameters of OREAL's reference policy: checkpoint.pretrained (else the seeded initial weights), also
        when the run resumes from a later RL checkpoint of its own."""
        from megatron_s1.training.checkpointing import resolve_checkpoint_dir

        if self.cfg.checkpoint.pretrained:
            self.t.checkpointer.load(resolve_checkpoint_dir(self.cfg.checkpoint.pretrained), model_only=True)
        return [p.detach().clone() for chunk in self.t.model for p in chunk.parameters()]

    def run(self, steps: Optional[int] = None) -> dict:
        from megatron_s1.training.run_lock import run_dir_lock

        with run_dir_lock(self.cfg.run.dir):
            return self._run(steps)

    def _save(self, reason: str = "") -> str:
        path = self.t.save()
        if self.t.env.is_main:
            print(f"saved checkpoint {path}{reason}", flush=True)
        return path

    def _run(self, steps: Optional[int]) -> dict:
        from megatron_s1.training.checkpointing import install_exit_signal_handlers
        from megatron_s1.training.distributed import all_reduce_max_flag
        from megatron_s1.training.metrics import truncate_jsonl_after

        cfg = self.cfg
        if cfg.rl.algorithm == "oreal" and cfg.rl.oreal.kl_coef > 0:
            self.reference = self._load_reference()  # (before resuming: the weights are still the start's)
        self.t._maybe_resume()
        if steps is not None:
            cfg.train.steps = steps
        history = []
        if self.t.already_complete():
            return {"steps": self.t.state["step"], "skipped_steps": self.t.state["skipped_steps"],
                    "exit_reason": "already_complete"}
        if self.t.env.is_main:
            os.makedirs(cfg.run.dir, exist_ok=True)
            truncate_jsonl_after(self.metrics_path, self.t.state["step"])  # steps after the checkpoint are re-run
        if cfg.train.exit_signal_handling:
            install_exit_signal_handlers(self._on_signal)
        f = open(self.metrics_path, "a", encoding="utf-8") if self.t.env.is_main else None
        last_saved, exit_reason = self.t._resumed_step, "completed"
        try:
            while self.t.state["step"] < cfg.train.steps:
                rec = self.step()
                history.append(rec)
                if f is not None:
                    f.write(json.dumps(rec) + "\n")
                    f.flush()
                    if rec["step"] % cfg.train.log_interval == 0:
                        keys = ("step", "reward_mean", "kept_groups", "loss", "grad_norm", "entropy", "kl_train_rollout",
                                "kl_train_rollout_replay", "routing_mismatch", "icepop_masked_frac", "icepop_rho_min",
                                "icepop_rho_mean", "icepop_rho_max", "kl_cov_selected_frac", "kl_cov_penalty",
                                "kl_ref", "step_s", "rollout_s", "logprob_s", "update_s", "rollout_tokens_per_s",
                                "rollout_peak_gb", "logprob_peak_gb", "update_peak_gb")
                        keys += tuple(k for k in rec if k.startswith("reward_mean/"))
                        print("[rl] " + " | ".join(f"{k} {rec[k]:.4g}" if isinstance(rec[k], float) else f"{k} {rec[k]}"
                                                   for k in keys if k in rec), flush=True)
                step = self.t.state["step"]
                saved = None
                if cfg.checkpoint.interval and step % cfg.checkpoint.interval == 0:
                    saved, last_saved = self._save(), step
                if isinstance(self.engine, OpenAIEngine):
                    if saved is None:
                        saved, last_saved = self.t.save(), step  # (collective)
                    if self._is_model_parallel_src():
                        self.engine.update_weights(saved)
                if cfg.train.exit_signal_handling and all_reduce_max_flag(self._signal is not None, self.device):
                    exit_reason = "signal"
                    break
            if last_saved != self.t.state["step"] and (cfg.checkpoint.save_final or exit_reason == "signal"):
                self._save("" if exit_reason == "completed" else f" ({exit_reason})")
        finally:
            if f is not None:
                f.close()
            self.t.checkpointer.close()
        rewards = [h["reward_mean"] for h in history]
        k = max(1, len(rewards) // 5)
        summary = {"steps": self.t.state["step"], "skipped_steps": self.t.state["skipped_steps"],
                   "exit_reason": exit_reason,
                   "reward_first": sum(rewards[:k]) / k if rewards else None,
                   "reward_last": sum(rewards[-k:]) / k if rewards else None}
        for key in ("kl_train_rollout", "kl_train_rollout_replay", "routing_mismatch"):
            vals = [h[key] for h in history if key in h and math.isfinite(h[key])]
            if vals:
                summary[key + "_mean"] = sum(vals) / len(vals)
        return summary
