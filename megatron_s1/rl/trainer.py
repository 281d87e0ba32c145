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

Metrics go to ``run.dir/rl_metrics.jsonl``; checkpoints use the training checkpoint format.
Scope: pipeline parallel = 1 and tensor parallel = 1 for the colocated engine (log-probs from full logits).
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from typing import Optional

import torch
import torch.distributed as dist

from megatron_s1.config.schema import ConfigError, ExperimentConfig
from megatron_s1.models.language import build_language_model
from megatron_s1.rl import filtering, losses
from megatron_s1.rl.rewards import RewardMixer, as_scores, get_reward
from megatron_s1.rl.rollout import LocalEngine, OpenAIEngine, pad_batch, routing_replay, select_routing, token_logprobs
from megatron_s1.rl.tasks import build_prompt_source
from megatron_s1.training.tasks import register_task


@register_task("rl")
class RLTask:
    """Model provider of RL runs: routing replay hooks on, router / vision frozen on request."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.cfg = trainer.cfg

    def build_model(self, tconfig, pre_process: bool, post_process: bool, vp_stage=None):
        if self.cfg.model.num_moe_experts is not None:
            from megatron.core.transformer.moe.router_replay import RouterReplay

            if vp_stage in (None, 0):  # replay instances are process-global: one model per process
                RouterReplay.clear_global_router_replay_instances()
            tconfig.moe_enable_routing_replay = True
        model = build_language_model(self.cfg, tconfig, pre_process, post_process, vp_stage=vp_stage)
        if self.cfg.rl.fp32_lm_head:
            install_fp32_lm_head(model)
        if self.cfg.rl.freeze_router:
            for name, p in model.named_parameters():
                if ".router." in name:
                    p.requires_grad_(False)
        return model

    def build_datasets(self, *_):
        return None, None, None


def install_fp32_lm_head(model) -> None:
    """Compute the output projection in fp32 (fp32 copies of the activations and the bf16 weight), so logits and
    log-probs of bf16 models carry no bf16 rounding; gradients flow back to the weight through the cast.
    TP=1 only (the RL driver's layout): a plain matmul replaces the column-parallel linear."""
    layer = getattr(model, "output_layer", None)
    if layer is None:  # not the last pipeline stage
        return

    def forward(input_, weight=None, runtime_gather_output=None):
        w = layer.weight if weight is None else weight
        bias = getattr(layer, "bias", None)
        out = torch.nn.functional.linear(input_.float(), w.float(), None if bias is None else bias.float())
        return out, None

    layer.forward = forward


def _rollout_dtype(name: str) -> Optional[torch.dtype]:
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def routing_mismatch(a: list, b: list) -> float:
    """Fraction of (layer, token) routing decisions whose top-k expert *sets* differ between two recordings."""
    diff, total = 0, 0
    for x, y in zip(a, b):
        xs, ys = x.sort(-1).values, y.sort(-1).values
        diff += int((xs != ys).any(-1).sum())
        total += xs.shape[0] * xs.shape[1]
    return diff / max(total, 1)


class RLTrainer:
    def __init__(self, cfg: ExperimentConfig, rollout_dtype: str = "bf16"):
        from megatron_s1.training.loop import Trainer

        if cfg.parallel.pipeline != 1 or cfg.parallel.tensor != 1:
            raise ConfigError("megatron-s1 rl supports parallel.pipeline=1 and parallel.tensor=1 (use data/expert "
                              "parallelism); larger layouts need the external engine + a pipeline-aware loss")
        if cfg.rl.algorithm not in ("icepop", "grpo", "oreal"):
            raise ConfigError(f"rl.algorithm must be icepop, grpo or oreal, got {cfg.rl.algorithm!r}")
        cfg.train.task = "rl"
        self.cfg = cfg
        # Prompt source and reward mixture first: bad input fails before the model is built.
        try:
            self.source = build_prompt_source(cfg.rl.task)
            self.mixer = RewardMixer(cfg.rl.reward_weights, cfg.rl.reward_normalisation)
        except (ValueError, OSError) as err:
            raise ConfigError(str(err)) from None
        self.t = Trainer(cfg)
        self.tok = self.t.tokenizer
        self.device = self.t.env.device
        self.model = self.t.model[0]
        self.allowed_list = self.source.allowed_tokens(self.tok)
        self.allowed = None
        if self.allowed_list is not None:
            self.allowed = torch.zeros(cfg.model.vocab_size, dtype=torch.bool, device=self.device)
            self.allowed[torch.tensor(self.allowed_list)] = True
        self.eos = self.tok.eod_id
        self.pad = self.tok.eod_id
        r = cfg.rl
        if r.engine == "local":
            self.engine = LocalEngine(self.model, self.eos, self.pad, _rollout_dtype(rollout_dtype),
                                      record_routing=r.routing_replay, device=self.device, kv_cache=r.kv_cache)
        elif r.engine == "openai":
            if not r.engine_url:
                raise ConfigError("rl.engine=openai needs rl.engine_url (e.g. http://host:8000)")
            self.engine = OpenAIEngine(r.engine_url, eos_id=self.eos, pad_id=self.pad,
                                       return_routing=r.routing_replay and cfg.model.num_moe_experts is not None)
        else:
            raise ConfigError(f"rl.engine must be local or openai, got {r.engine!r}")
        self.rng = random.Random(cfg.run.seed + 17 * self.t.dp_rank)
        self.gen = torch.Generator().manual_seed(cfg.run.seed + 1000 + self.t.dp_rank)
        self.is_moe = cfg.model.num_moe_experts is not None
        self.metrics_path = os.path.join(cfg.run.dir, "rl_metrics.jsonl")

    # ------------------------------------------------------------------ pieces
    def _train_logprobs(self, batch, routing, grad: bool):
        tokens, positions, mask = (x.to(self.device) for x in batch[:3])
        ctx = torch.enable_grad() if grad else torch.no_grad()
        with ctx, routing_replay(routing):
            logits = self.model(tokens, positions, mask)
            return token_logprobs(logits, tokens, self.cfg.rl.temperature, self.allowed)

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

    def _policy_loss(self, logp, old, roll, mask, adv, positive, counts, seq_scale: float = 1.0,
                     weight: float = 1.0):
        """Loss of this rank's share of a mini-batch, already divided by the global normalisers, so that the
        gradient sum over data-parallel ranks is the gradient of the global objective."""
        r = self.cfg.rl
        stats = {}
        if r.algorithm == "icepop":
            loss, stats = losses.icepop_loss(logp, old, roll, adv, mask, r.icepop_alpha, r.icepop_beta,
                                             return_stats=True)
            loss = loss * seq_scale
        elif r.algorithm == "grpo":
            loss = losses.grpo_loss(logp, old, adv, mask) * seq_scale
        else:
            loss = weight * losses.oreal_loss(logp, mask, positive, counts[0], counts[1])
        if r.kl_cov_coef > 0:
            pen, _ = losses.kl_cov_penalty(logp, old, adv, mask, r.kl_cov_fraction, r.kl_cov_coef)
            loss = loss + losses.per_sequence_mean(pen, mask) * seq_scale
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

    def _all_sum(self, values: list) -> list:
        t = torch.tensor(values, dtype=torch.float64)
        if dist.get_world_size() > 1:
            t = t.to(self.device)
            dist.all_reduce(t)
        return t.cpu().tolist()

    # ------------------------------------------------------------------ one step
    def step(self) -> dict:
        cfg, r = self.cfg, self.cfg.rl
        t0 = time.perf_counter()
        prompts = self.source.sample(r.prompts_per_step, self.rng)
        prompt_ids = [self.tok.encode(p["prompt"]) for p in prompts]
        rollout = self.engine.generate(prompt_ids, r.samples_per_prompt, r.max_new_tokens, r.temperature, r.top_p,
                                       r.top_k, self.allowed_list, self.gen)
        t_roll = time.perf_counter() - t0
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
        adv = losses.group_advantages(R, r.baseline).reshape(-1)
        positive = torch.tensor(raw) > 0.5
        rows = keep.reshape(-1).nonzero().squeeze(-1).tolist()

        kept_groups = self._all_sum([float(keep_groups.sum())])[0]
        record = {"step": self.t.state["step"] + 1, **reward_metrics, "kept_groups": int(kept_groups),
                  "kept_samples": len(rows), "response_len": sum(map(len, rollout.response_ids)) / len(texts),
                  "rollout_s": t_roll}
        # Train/rollout mismatch on the whole batch: with and without replaying the rollout's routing.
        all_rows = list(range(len(texts)))
        full = pad_batch(rollout.prompt_ids, rollout.response_ids, self.pad)
        length = full[0].shape[1]
        roll_all = self._rollout_matrix(rollout, all_rows, length)
        if rollout.routing is not None:
            from megatron_s1.rl.rollout import routing_record

            with routing_record() as rr:
                lp_plain = self._train_logprobs(full, None, grad=False).cpu()
                own = [t.detach().cpu().reshape(length, len(texts), -1) for t in rr.get_recorded_data()]
            record["routing_mismatch"] = routing_mismatch(own, rollout.routing)
        else:
            lp_plain = self._train_logprobs(full, None, grad=False).cpu()
        record["kl_train_rollout"] = losses.sampled_kl(lp_plain, roll_all, full[3])
        if rollout.routing is not None:
            lp_replay = self._train_logprobs(full, rollout.routing, grad=False).cpu()
            record["kl_train_rollout_replay"] = losses.sampled_kl(lp_replay, roll_all, full[3])
        old_all = lp_replay if (rollout.routing is not None and r.routing_replay) else lp_plain

        loss_sum, stepped_any, grad_norms, icepop = 0.0, False, [], []
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
            batch = pad_batch([rollout.prompt_ids[i] for i in mb], [rollout.response_ids[i] for i in mb],
                              self.pad, length)
            mask = batch[3].to(self.device)
            old = old_all[mb].to(self.device)
            roll = roll_all[mb].to(self.device)
            a = adv[mb].to(self.device)
            pos = positive[mb].to(self.device)
            # Global normalisers: responses (IcePop / GRPO / KL-Cov: 1/G sum_i) and OREAL's N+ / N- tokens.
            n_pos, n_neg = float((mask * pos[:, None]).sum()) * weight, float((mask * ~pos[:, None]).sum()) * weight
            n_seq_global, n_pos, n_neg = self._all_sum([len(mb) * weight, n_pos, n_neg])
            seq_scale = weight * len(mb) / max(n_seq_global, 1.0)
            for chunk in self.t.model:
                chunk.zero_grad_buffer()
            self.t.optimizer.zero_grad()
            logp = self._train_logprobs(batch, select_routing(rollout.routing, mb) if r.routing_replay else None,
                                        grad=True)
            loss, stats = self._policy_loss(logp, old, roll, mask, a, pos, (n_pos, n_neg), seq_scale, weight)
            loss.backward()
            from megatron.core.distributed import finalize_model_grads

            finalize_model_grads(self.t.model)  # sums gradients over data-parallel ranks
            stepped, gn = self.t._optimizer_step()
            stepped_any |= stepped
            grad_norms.append(gn)
            loss_sum += self._all_sum([float(loss)])[0] / n_mb
            if stats:
                icepop.append(stats["icepop_masked_frac"])
            if not stepped:
                self.t.state["skipped_steps"] += 1
        # The LR schedule is defined on tokens (train.global_batch_tokens per step), as in pretraining.
        batch_tokens = self.t.batch_schedule.global_batch_size(self.t.state["consumed_tokens"]) * cfg.data.seq_length
        self.t.scheduler.step(increment=batch_tokens)
        self.t.state["consumed_tokens"] += batch_tokens
        self.t.state["step"] += 1
        self.t.state["consumed_samples"] += len(texts)
        record.update({"loss": loss_sum, "grad_norm": max(grad_norms) if grad_norms else 0.0, "stepped": stepped_any,
                       "lr": self.t.optimizer.param_groups[0]["lr"], "step_s": time.perf_counter() - t0})
        if icepop:
            record["icepop_masked_frac"] = sum(icepop) / len(icepop)
        return record

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
            roll = self.engine.generate([self.tok.encode(rec["prompt"]) for rec in chunk], n, r.max_new_tokens,
                                        r.temperature, r.top_p, r.top_k, self.allowed_list, self.gen)
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
            with open(out_path, "w", encoding="utf-8") as f:
                for rec in kept:
                    f.write(json.dumps(rec) + "\n")
        hist = {f"{k / n:.3f}": sum(1 for x in rates if abs(x - k / n) < 1e-9) for k in range(n + 1)}
        return {"prompts": len(records), "kept": len(kept), "rollouts": n, "pass_rate_histogram": hist,
                "output": out_path}

    # ------------------------------------------------------------------ main
    def run(self, steps: Optional[int] = None) -> dict:
        cfg = self.cfg
        self.t._maybe_resume()
        steps = cfg.train.steps if steps is None else steps
        history = []
        if self.t.env.is_main:
            os.makedirs(cfg.run.dir, exist_ok=True)
        f = open(self.metrics_path, "a", encoding="utf-8") if self.t.env.is_main else None
        try:
            while self.t.state["step"] < steps:
                rec = self.step()
                history.append(rec)
                if f is not None:
                    f.write(json.dumps(rec) + "\n")
                    f.flush()
                    if rec["step"] % cfg.train.log_interval == 0:
                        keys = ("step", "reward_mean", "kept_groups", "loss", "grad_norm", "kl_train_rollout",
                                "kl_train_rollout_replay", "routing_mismatch", "step_s")
                        keys += tuple(k for k in rec if k.startswith("reward_mean/"))
                        print("[rl] " + " | ".join(f"{k} {rec[k]:.4g}" if isinstance(rec[k], float) else f"{k} {rec[k]}"
                                                   for k in keys if k in rec), flush=True)
                step = self.t.state["step"]
                saved = None
                if cfg.checkpoint.interval and step % cfg.checkpoint.interval == 0:
                    saved = self.t.save()
                if isinstance(self.engine, OpenAIEngine):
                    self.engine.update_weights(saved or self.t.save())
            saved_last = cfg.checkpoint.interval and self.t.state["step"] % cfg.checkpoint.interval == 0
            if cfg.checkpoint.save_final and not saved_last:
                self.t.save()
        finally:
            if f is not None:
                f.close()
            self.t.checkpointer.close()
        rewards = [h["reward_mean"] for h in history]
        k = max(1, len(rewards) // 5)
        summary = {"steps": self.t.state["step"], "skipped_steps": self.t.state["skipped_steps"],
                   "reward_first": sum(rewards[:k]) / k if rewards else None,
                   "reward_last": sum(rewards[-k:]) / k if rewards else None}
        for key in ("kl_train_rollout", "kl_train_rollout_replay", "routing_mismatch"):
            vals = [h[key] for h in history if key in h and math.isfinite(h[key])]
            if vals:
                summary[key + "_mean"] = sum(vals) / len(vals)
        return summary
