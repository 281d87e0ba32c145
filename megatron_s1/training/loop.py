"""The training loop: Megatron-Core model, DDP, optimizer and pipeline schedules, driven by our own loop.

(`megatron.training` asserts CUDA, so it cannot be the CPU path; everything below runs on CPU with gloo
and on GPUs with NCCL unchanged.)
"""
from __future__ import annotations

import math
import os
import sys
import time
from typing import Optional

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.optimizer import OptimizerConfig as MegatronOptimizerConfig
from megatron.core.optimizer import get_megatron_optimizer
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.transformer.enums import ModelType
from megatron.core.transformer.moe.router import TopKRouter

from megatron_s1.config.schema import ConfigError, ExperimentConfig, check_resume_config
from megatron_s1.models.experts import new_weight_generation
from megatron_s1.models.language import build_transformer_config, validate_model_parallel
from megatron_s1.models.precision import enable_fused_wgrad_accumulation
from megatron_s1.models.specs import resolve_spec_kind
from megatron_s1.tokenizer import load_tokenizer
from megatron_s1.training import flops
from megatron_s1.training.checkpointing import (Checkpointer, _uses_distributed_optimizer, adopt_checkpoint_model,
                                                checkpoint_problem, checkpoint_root, describe_model_changes,
                                                install_exit_signal_handlers, iteration_dir_name, list_iterations,
                                                read_trainer_state, resolve_checkpoint_dir, resume_candidates)
from megatron_s1.training.distributed import (all_reduce_max_flag, init_distributed, initialize_model_parallel,
                                              seed_everything)
from megatron_s1.training.metrics import MetricsLogger, expert_imbalance, memory_peak_gb
from megatron_s1.training.noise_scale import (MicroBatchGradNorms, NoiseScaleEMA, check_noise_scale_supported,
                                              step_noise_scale)
from megatron_s1.training.profiling import StepProfiler, summary_line
from megatron_s1.training.run_lock import run_dir_lock
from megatron_s1.training.schedules import BatchSizeSchedule, build_lr_scheduler
from megatron_s1.training.summary import startup_summary
from megatron_s1.training.tasks import get_task


class Trainer:
    def __init__(self, cfg: ExperimentConfig):
        self.cfg = cfg
        self._model_changes: dict = {}  # stated model fields that differ from checkpoint.pretrained's, allowed
        if cfg.checkpoint.pretrained and getattr(cfg, "stated", None) is not None:
            # The model fields the recipe leaves unstated come from the checkpoint (e.g. a converted HF model).
            self._model_changes = adopt_checkpoint_model(cfg, resolve_checkpoint_dir(cfg.checkpoint.pretrained),
                                                         cfg.stated)
        self.env = init_distributed()
        validate_model_parallel(cfg.model, cfg.parallel, self.env.world_size)
        initialize_model_parallel(cfg)
        seed_everything(cfg.run.seed)
        self.dp_size = parallel_state.get_data_parallel_world_size()
        self.dp_rank = parallel_state.get_data_parallel_rank()
        self.tokenizer = load_tokenizer(cfg.data.tokenizer)
        if self.tokenizer.vocab_size > cfg.model.vocab_size:
            raise ConfigError(f"tokenizer has {self.tokenizer.vocab_size} tokens but model.vocab_size is "
                              f"{cfg.model.vocab_size}; set model.vocab_size >= {self.tokenizer.vocab_size}")
        if cfg.data.seq_length > cfg.model.max_position_embeddings:
            raise ConfigError(f"data.seq_length={cfg.data.seq_length} exceeds model.max_position_embeddings="
                              f"{cfg.model.max_position_embeddings}")
        self.batch_schedule = BatchSizeSchedule(cfg.train.global_batch_tokens, cfg.data.seq_length,
                                                cfg.data.micro_batch_size, self.dp_size)
        self.total_tokens = self.batch_schedule.tokens_after_steps(cfg.train.steps)

        self.task = get_task(cfg.train.task)(self)
        if hasattr(self.task, "check_inputs"):  # input errors before the (slow) model build
            self.task.check_inputs()
        self.tconfig = build_transformer_config(cfg)
        self.tconfig.calculate_per_token_loss = True
        self.model = self._build_model()
        self.optimizer = get_megatron_optimizer(self._optimizer_config(), self.model)
        self.scheduler = build_lr_scheduler(cfg, self.optimizer, self.total_tokens)
        self.tconfig.grad_scale_func = self.optimizer.scale_loss
        self.tconfig.finalize_model_grads_func = finalize_model_grads
        self._micro_norms: Optional[MicroBatchGradNorms] = None
        if cfg.train.noise_scale:
            check_noise_scale_supported(cfg, [self.batch_schedule.num_microbatches(s.start_tokens)
                                              for s in self.batch_schedule.stages], self.dp_size)
            self._micro_norms = MicroBatchGradNorms(self.model)
            self._noise_ema = NoiseScaleEMA(cfg.train.noise_scale_ema)
            self.tconfig.finalize_model_grads_func = self._finalize_grads
        if cfg.parallel.overlap_grad_reduce:
            self.tconfig.no_sync_func = [m.no_sync for m in self.model]
            if len(self.model) == 1:
                self.tconfig.no_sync_func = self.tconfig.no_sync_func[0]
            self.tconfig.grad_sync_func = [m.start_grad_sync for m in self.model]
            if len(self.model) == 1:
                self.tconfig.grad_sync_func = self.tconfig.grad_sync_func[0]
        self.checkpointer = Checkpointer(cfg, self.model, self.optimizer, self.scheduler)
        self.state = {"step": 0, "consumed_tokens": 0, "consumed_samples": 0, "skipped_steps": 0}
        self._router_counts: dict[int, torch.Tensor] = {}
        self._install_router_hooks()
        self._signal: Optional[int] = None
        # (get, set) of extra per-rank state checkpointed with the run (the RL driver's samplers), or None.
        self.rank_state = None
        self._below_critical = False
        self._flops_per_token = flops.training_flops_per_token(cfg.model, cfg.data.seq_length)
        self._peak = None
        if torch.cuda.is_available():
            precision = "fp8" if cfg.model.fp8 else "bf16"
            self._peak = flops.peak_tflops(torch.cuda.get_device_name(), precision)

    # ------------------------------------------------------------------ setup
    def _build_model(self) -> list:
        cfg, vpp = self.cfg, self.cfg.parallel.virtual_pipeline
        if cfg.model.recompute is not None and not torch.cuda.is_available():
            # Megatron's recompute saves and replays the CUDA RNG state: on CPU it fails deep in the forward.
            raise ConfigError(f"model.recompute={cfg.model.recompute} needs a CUDA GPU (Megatron's activation "
                              "recompute replays the CUDA RNG state); drop model.recompute on CPU")
        stages = list(range(vpp)) if (vpp and cfg.parallel.pipeline > 1) else [None]
        chunks = []
        for vp_stage in stages:
            ignore_virtual = vp_stage is None
            pre = parallel_state.is_pipeline_first_stage(ignore_virtual=ignore_virtual, vp_stage=vp_stage)
            post = parallel_state.is_pipeline_last_stage(ignore_virtual=ignore_virtual, vp_stage=vp_stage)
            model = self.task.build_model(self.tconfig, pre, post, vp_stage=vp_stage)
            model.model_type = ModelType.encoder_or_decoder
            chunks.append(model.to(self.env.device))
        ddp_config = DistributedDataParallelConfig(
            grad_reduce_in_fp32=True,
            overlap_grad_reduce=cfg.parallel.overlap_grad_reduce,
            overlap_param_gather=cfg.parallel.overlap_param_gather,
            use_distributed_optimizer=_uses_distributed_optimizer(cfg),
            check_for_nan_in_grad=False,
        )
        wrapped = [DistributedDataParallel(config=self.tconfig, ddp_config=ddp_config, module=chunk,
                                           disable_bucketing=i > 0) for i, chunk in enumerate(chunks)]
        te_linears = cfg.model.fusions and resolve_spec_kind(cfg.model.spec) == "te"
        if te_linears or cfg.model.moe_wgrad_fusion:
            if cfg.model.moe_wgrad_fusion and cfg.parallel.overlap_grad_reduce:
                # the fused experts hand autograd no weight gradient; DDP's overlapped reduction asserts one
                raise ConfigError("model.moe_wgrad_fusion=true needs parallel.overlap_grad_reduce=false; "
                                  "drop one of the two")
            experts = 0
            for chunk in wrapped:  # DDP gave every weight its fp32 main_grad
                if te_linears:
                    enable_fused_wgrad_accumulation(chunk, te_linears=True, grouped_experts=False)
                if cfg.model.moe_wgrad_fusion:
                    experts += enable_fused_wgrad_accumulation(chunk, te_linears=False, grouped_experts=True)
            if cfg.model.moe_wgrad_fusion and not experts:
                self._warn("warning: model.moe_wgrad_fusion=true switched no experts (it needs "
                           "model.moe_experts=grouped_mm on a GPU); their weight gradients accumulate unfused")
        return wrapped

    def _optimizer_config(self) -> MegatronOptimizerConfig:
        o = self.cfg.optimizer
        distributed = _uses_distributed_optimizer(self.cfg)
        if o.moment_dtype not in ("fp32", "bf16"):
            raise ConfigError(f"optimizer.moment_dtype must be fp32 or bf16, got {o.moment_dtype!r}")
        if o.moment_dtype == "bf16" and not o.precision_aware:
            raise ConfigError("optimizer.moment_dtype=bf16 needs optimizer.precision_aware=true")
        if o.precision_aware and not (distributed and torch.cuda.is_available()):
            raise ConfigError("optimizer.precision_aware needs the distributed optimizer on a GPU with TE; set "
                              "parallel.distributed_optimizer=true or optimizer.precision_aware=false")
        moments = torch.bfloat16 if o.moment_dtype == "bf16" else torch.float32
        return MegatronOptimizerConfig(
            optimizer="adam", lr=o.lr, min_lr=o.min_lr, weight_decay=o.weight_decay, adam_beta1=o.adam_beta1,
            adam_beta2=o.adam_beta2, adam_eps=o.adam_eps, clip_grad=self.cfg.train.clip_grad,
            bf16=self.tconfig.bf16, params_dtype=self.tconfig.params_dtype,
            use_distributed_optimizer=distributed, use_precision_aware_optimizer=o.precision_aware,
            exp_avg_dtype=moments, exp_avg_sq_dtype=moments,
        )

    def _install_router_hooks(self) -> None:
        """Count tokens routed to each expert per layer, for the load-imbalance metric."""
        for chunk in self.model:
            for module in chunk.modules():
                if isinstance(module, TopKRouter):
                    layer = module.layer_number - 1  # global layer index

                    def hook(_mod, _inp, out, layer=layer):
                        routing_map = out[1]
                        counts = routing_map.sum(dim=0).detach().float()
                        prev = self._router_counts.get(layer)
                        self._router_counts[layer] = counts if prev is None else prev + counts

                    module.register_forward_hook(hook)

    def _datasets(self):
        cfg = self.cfg
        gbs_max = max(s.global_batch_tokens for s in self.batch_schedule.stages) // cfg.data.seq_length
        train_samples = self.total_tokens // cfg.data.seq_length
        evals = cfg.train.steps // cfg.train.eval_interval + 1 if cfg.train.eval_interval else 1
        return self.task.build_datasets(train_samples, cfg.train.eval_iters * gbs_max * evals)

    def _forward_step(self, data_iterator, model):
        if self._micro_norms is not None:
            self._micro_norms.boundary()  # the previous micro-batch's backward is done
        return self.task.forward_step(next(data_iterator), model)

    def _finalize_grads(self, *args, **kwargs):
        self._micro_norms.boundary()  # the last micro-batch, before the DP reduction mixes ranks
        return finalize_model_grads(*args, **kwargs)

    def _run_schedule(self, dataset, first_sample: int, global_batch: int, forward_only: bool):
        cfg = self.cfg
        new_weight_generation()  # FP8 expert weights (grouped_mm_fp8) are quantised once per schedule
        num_micro = global_batch // (cfg.data.micro_batch_size * self.dp_size)
        make = lambda: self.task.microbatches(dataset, first_sample, global_batch, self.dp_rank,  # noqa: E731
                                              self.dp_size)
        iterators = [make() for _ in self.model] if len(self.model) > 1 else make()
        losses = get_forward_backward_func()(
            forward_step_func=self._forward_step,
            data_iterator=iterators,
            model=self.model if len(self.model) > 1 else self.model[0],
            num_microbatches=num_micro,
            seq_length=cfg.data.seq_length,
            micro_batch_size=cfg.data.micro_batch_size,
            forward_only=forward_only,
        )
        # Loss lives on the last pipeline stage; a world all-reduce brings it to every rank (TP/CP copies
        # scale numerator and denominator alike).
        total = torch.zeros(2, device=self.env.device)
        for item in losses:
            total += item["lm loss"].to(total.device)
        self._micro_tokens = [float(item["lm loss"][1]) for item in losses] if self._micro_norms else None
        dist.all_reduce(total)
        return (total[0] / total[1].clamp_min(1)).item()

    def _optimizer_step(self):
        """Step unless the grad norm is NaN/Inf or above the skip threshold; returns (stepped, grad_norm)."""
        opt = self.optimizer
        if opt.prepare_grads():  # loss-scaler overflow
            return False, float("nan")
        grad_norm = float(opt.get_grad_norm())
        threshold = self.cfg.train.skip_grad_norm_above
        if not math.isfinite(grad_norm) or (threshold is not None and grad_norm > threshold):
            return False, grad_norm
        clip = self.cfg.train.clip_grad
        coeff = clip / (grad_norm + 1e-6)
        if clip > 0 and coeff < 1.0:
            grads = []
            for sub in getattr(opt, "chained_optimizers", [opt]):
                decoupled = sub.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8
                for p in sub.get_parameters():
                    g = getattr(p, "decoupled_grad", None) if decoupled else p.grad
                    if g is not None:
                        grads.append(g)
            torch._foreach_mul_(grads, coeff)
        return bool(opt.step_with_ready_grads()), grad_norm

    def _moe_metrics(self, num_microbatches: int) -> dict:
        out = {}
        if self.cfg.model.num_moe_experts is None:
            return out
        from megatron.core.transformer.moe.moe_logging import get_moe_metrics_tracker

        totals: dict = {}
        get_moe_metrics_tracker().report(loss_scale=1.0 / num_microbatches, iteration=self.state["step"], total_loss_dict=totals,
                                         force_initialize=True, track_names=["load_balancing_loss"],
                                         num_layers=self.cfg.model.num_layers)
        if "load_balancing_loss" in totals:
            out["moe_aux_loss"] = float(totals["load_balancing_loss"])
        counts = torch.zeros(self.cfg.model.num_layers, self.cfg.model.num_moe_experts, device=self.env.device)
        for layer, c in self._router_counts.items():
            counts[layer] += c.to(counts.device)
        self._router_counts.clear()
        dist.all_reduce(counts)
        imbalance = expert_imbalance(counts)
        out["expert_imbalance"] = [round(x, 4) for x in imbalance]
        out["expert_imbalance_max"] = max(imbalance)
        return out

    def train_step(self) -> dict:
        consumed = self.state["consumed_tokens"]
        global_batch = self.batch_schedule.global_batch_size(consumed)
        for chunk in self.model:
            chunk.zero_grad_buffer()
        self.optimizer.zero_grad()
        if self._micro_norms is not None:
            self._micro_norms.start()
        loss = self._run_schedule(self.train_ds, self.state["consumed_samples"], global_batch, forward_only=False)
        loss_scale = float(self.optimizer.get_loss_scale())  # before an overflow could change it
        stepped, grad_norm = self._optimizer_step()
        noise = self._noise_scale(loss_scale, grad_norm) if self._micro_norms is not None else {}
        if not math.isfinite(loss):
            stepped = False  # the update already happened only if grads were finite; count the step as skipped
        batch_tokens = global_batch * self.cfg.data.seq_length
        self.scheduler.step(increment=batch_tokens)
        self.state["step"] += 1
        self.state["consumed_tokens"] += batch_tokens
        self.state["consumed_samples"] += global_batch
        if not stepped:
            self.state["skipped_steps"] += 1
        return {"loss": loss, "grad_norm": grad_norm, "global_batch_tokens": batch_tokens,
                "lr": self.optimizer.param_groups[0]["lr"], "stepped": stepped,
                "num_microbatches": global_batch // (self.cfg.data.micro_batch_size * self.dp_size), **noise}

    def _noise_scale(self, loss_scale: float, grad_norm: float) -> dict:
        """This step's gradient-noise-scale estimates and their EMA (metrics keys noise_*, critical_batch_*)."""
        micro = self._micro_norms.stop()
        if not math.isfinite(grad_norm):
            return {}
        step = step_noise_scale(micro, self._micro_tokens, loss_scale, grad_norm, self.env.device)
        self._noise_ema.update(step["grad_sq"], step["trace"])
        grad_sq, trace = self._noise_ema.averages()
        critical = self._noise_ema.b_simple()
        return {"noise_grad_sq_step": step["grad_sq"], "noise_trace_step": step["trace"],
                "noise_grad_sq": grad_sq, "noise_trace": trace,
                "critical_batch_tokens": critical if math.isfinite(critical) else None,
                "critical_batch_sequences": critical / self.cfg.data.seq_length if math.isfinite(critical) else None}

    def evaluate(self) -> float:
        cfg = self.cfg
        global_batch = self.batch_schedule.global_batch_size(self.state["consumed_tokens"])
        for chunk in self.model:
            chunk.eval()
        losses = []
        with torch.no_grad():
            for i in range(cfg.train.eval_iters):
                losses.append(self._run_schedule(self.valid_ds, i * global_batch, global_batch, forward_only=True))
        for chunk in self.model:
            chunk.train()
        return sum(losses) / len(losses)

    # ------------------------------------------------------------------ main
    def _warn(self, message: str) -> None:
        if self.env.is_main:
            print(message, file=sys.stderr, flush=True)

    def _resume_checkpoint(self) -> Optional[str]:
        """Load the checkpoint to resume from (train.resume_step's, else the newest complete one); its path."""
        root, wanted = checkpoint_root(self.cfg), self.cfg.train.resume_step
        if wanted is not None:
            path = os.path.join(root, iteration_dir_name(wanted))
            problem = checkpoint_problem(path, checksums=True)
            if problem:
                complete = [s for s, n in list_iterations(root) if not checkpoint_problem(os.path.join(root, n))]
                raise ConfigError(f"train.resume_step={wanted}: {path} {problem}; complete checkpoints of this run: "
                                  f"steps {complete or 'none'}")
            newer = [n for s, n in list_iterations(root) if s > wanted]
            if newer:
                self._warn(f"warning: resuming from step {wanted}; the newer {', '.join(sorted(newer))} will be "
                           "replaced as the run reaches their steps")
            self.state.update({k: v for k, v in self.checkpointer.load(path).items() if k in self.state})
            return path
        for path in resume_candidates(root, self._warn):
            try:
                saved = self.checkpointer.load(path)
            except ConfigError:
                raise
            except Exception as err:  # noqa: BLE001 -- an unreadable shard: fall back to the previous checkpoint
                self._warn(f"warning: {path} could not be loaded ({str(err).splitlines()[0][:200]})")
                continue
            self.state.update({k: v for k, v in saved.items() if k in self.state})
            return path
        return None

    def _maybe_resume(self, log: MetricsLogger | None = None) -> None:
        cfg = self.cfg
        self._resumed_from = self._resume_checkpoint() if cfg.checkpoint.resume else None
        if self._resumed_from is None and cfg.checkpoint.pretrained:
            path = resolve_checkpoint_dir(cfg.checkpoint.pretrained)
            problem = checkpoint_problem(path, checksums=True)  # collective: each rank checks its share of files
            if problem:
                raise ConfigError(f"checkpoint.pretrained={cfg.checkpoint.pretrained}: {path} {problem}; restore it "
                                  "or point checkpoint.pretrained at another complete checkpoint")
            self.checkpointer.load(path, model_only=True)
            if self._model_changes:
                self._warn(f"warning: {path} was trained with other model settings "
                           f"({describe_model_changes(self._model_changes)}); the config's are used, as "
                           "checkpoint.allow_model_changes allows")
            if self.env.is_main:
                print(f"loaded pretrained weights from {path}", flush=True)
        self._resumed_step = self.state["step"] if self._resumed_from else None
        if self._resumed_from and self.rank_state is not None:
            self.rank_state[1](self.checkpointer.load_rank_state(self._resumed_from))

    def _target_step(self) -> int:
        exit_at = self.cfg.train.exit_at_step
        return self.cfg.train.steps if exit_at is None else min(exit_at, self.cfg.train.steps)

    def already_complete(self) -> bool:
        """Resumed at (or past) the step this run would stop at: say so; the caller does nothing else."""
        done = self._resumed_from is not None and self.state["step"] >= self._target_step()
        if done and self.env.is_main:
            print(f"run already complete: {self._resumed_from} is step {self.state['step']} (train.steps="
                  f"{self.cfg.train.steps}); nothing to do (raise train.steps to train further)", flush=True)
        return done

    def _on_signal(self, signum: int) -> None:
        self._signal = signum

    def save(self, blocking: bool = False) -> str:
        extra = self.rank_state[0]() if self.rank_state is not None else None
        return self.checkpointer.save(dict(self.state), blocking=blocking, rank_state=extra)

    def run(self) -> dict:
        with run_dir_lock(self.cfg.run.dir):
            return self._run()

    def _run(self) -> dict:
        cfg = self.cfg
        self._maybe_resume()
        if self.already_complete():
            return {"exit_reason": "already_complete", "valid_loss": None, **self.state}
        if self._resumed_from:
            check_resume_config(cfg, read_trainer_state(self._resumed_from).get("config") or {}, self._resumed_from)
        self.train_ds, self.valid_ds, _ = self._datasets()
        if self.train_ds is None:
            raise ConfigError("the train split is empty; give data.split a non-zero first entry (e.g. 98,1,1)")
        log = MetricsLogger(cfg.run.dir, self.env.is_main, cfg.logging.tensorboard, cfg.logging.progress_bar,
                            cfg.train.steps, self.state["step"])
        log.event(startup_summary(self))  # (collective: every rank counts its parameters)
        if self._resumed_from:
            log.event(f"resumed from {self._resumed_from} at step {self.state['step']} "
                      f"({self.state['consumed_tokens']} tokens)")
        elif cfg.checkpoint.pretrained:
            log.event(f"loaded pretrained weights (model only) from {cfg.checkpoint.pretrained}")
        if cfg.train.exit_signal_handling:
            install_exit_signal_handlers(self._on_signal)
        last_eval, last_eval_step, last_saved_step = None, None, self._resumed_step
        exit_reason = "completed"
        interval_start = time.perf_counter()
        interval_tokens = 0
        stage = self.batch_schedule.stage_index(self.state["consumed_tokens"])
        profiler = StepProfiler(cfg.train.profile_steps, cfg.run.dir, self.env.rank)
        try:
            while self.state["step"] < cfg.train.steps:
                new_stage = self.batch_schedule.stage_index(self.state["consumed_tokens"])
                if new_stage != stage:
                    log.event(f"batch size switch at step {self.state['step'] + 1} "
                              f"({self.state['consumed_tokens']} tokens seen): "
                              f"{self.batch_schedule.stages[stage].global_batch_tokens} -> "
                              f"{self.batch_schedule.stages[new_stage].global_batch_tokens} tokens per step")
                    stage = new_stage
                profiler.before_step(self.state["step"] + 1)
                result = self.train_step()
                profile = profiler.after_step(self.state["step"])
                if profile is not None:
                    log.event(summary_line(profile, profiler.window))
                interval_tokens += result["global_batch_tokens"]
                step = self.state["step"]
                moe = self._moe_metrics(result["num_microbatches"])
                if step % cfg.train.log_interval == 0 or step == cfg.train.steps:
                    elapsed = time.perf_counter() - interval_start
                    tokens_per_s = interval_tokens / max(elapsed, 1e-9)
                    tflops = self._flops_per_token * tokens_per_s / self.env.world_size / 1e12
                    record = {
                        "step": step, "consumed_tokens": self.state["consumed_tokens"], "loss": result["loss"],
                        "lr": result["lr"], "grad_norm": result["grad_norm"], "tokens_per_s": tokens_per_s,
                        "tflops_per_gpu": tflops, "mfu": tflops / self._peak if self._peak else None,
                        "peak_mem_gb": memory_peak_gb(), "skipped_steps": self.state["skipped_steps"],
                        "global_batch_tokens": result["global_batch_tokens"], **moe,
                        **{k: v for k, v in result.items() if k.startswith(("noise_", "critical_batch_"))},
                    }
                    log.log(record)
                    below_critical = (result.get("critical_batch_tokens") or 0.0) > result["global_batch_tokens"]
                    if below_critical != self._below_critical:
                        self._below_critical = below_critical
                        log.event(_critical_batch_message(step, result))
                    interval_tokens = 0
                if cfg.train.eval_interval and step % cfg.train.eval_interval == 0 and self.valid_ds is not None:
                    last_eval, last_eval_step = self.evaluate(), step
                    log.log({"step": step, "loss": last_eval}, kind="valid")
                log.advance()
                if cfg.checkpoint.interval and step % cfg.checkpoint.interval == 0 and step < cfg.train.steps:
                    path = self.save()
                    last_saved_step = step
                    log.event(f"saved checkpoint {path}")
                self.checkpointer.finalize_pending()
                if interval_tokens == 0:  # eval and checkpoint time stay out of tokens/s
                    interval_start = time.perf_counter()
                if cfg.train.exit_signal_handling and all_reduce_max_flag(self._signal is not None,
                                                                           self.env.device):
                    exit_reason = "signal"
                    break
                if cfg.train.exit_at_step is not None and step >= cfg.train.exit_at_step:
                    exit_reason = "exit_at_step"
                    break
            needs_save = exit_reason != "completed" or (self.state["step"] == cfg.train.steps
                                                        and cfg.checkpoint.save_final)
            if needs_save and last_saved_step == self.state["step"]:
                self.checkpointer.finalize_pending(blocking=True)  # this step is already saved
                log.event(f"checkpoint of step {self.state['step']} already saved ({exit_reason})")
            elif needs_save:
                path = self.save(blocking=True)
                log.event(f"saved checkpoint {path}" + ("" if exit_reason == "completed" else f" ({exit_reason})"))
            if (exit_reason == "completed" and self.valid_ds is not None and cfg.train.eval_iters > 0
                    and last_eval_step != self.state["step"]):
                last_eval = self.evaluate()
                log.log({"step": self.state["step"], "loss": last_eval}, kind="valid")
        finally:
            self.checkpointer.close()
            log.close()
        return {"exit_reason": exit_reason, "valid_loss": last_eval, **self.state}


def _critical_batch_message(step: int, result: dict) -> str:
    batch, critical = result["global_batch_tokens"], result["critical_batch_tokens"] or 0.0
    if critical > batch:
        return (f"step {step}: global batch {batch} tokens is below the critical batch ~{critical:.0f} tokens "
                f"(gradient noise scale B_simple): a larger batch would take fewer steps for the same loss")
    return f"step {step}: global batch {batch} tokens is again at or above the critical batch ~{critical:.0f} tokens"


def train(cfg: ExperimentConfig) -> dict:
    return Trainer(cfg).run()
