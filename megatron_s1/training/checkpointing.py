"""Atomic, resumable, reshardable checkpoints on Megatron-Core dist_checkpointing.

Layout of `run.dir/checkpoints/`:
    iter_0000010/           one checkpoint: dist_checkpointing shards (model, optimizer, scheduler)
        trainer_state.json  step, consumed tokens/samples, skipped steps, parallel layout, resolved config
        rng/rank_00003.pt   per-rank RNG states (restored only when the layout is unchanged)
    latest                  name of the newest complete checkpoint (replaced atomically, last)

A checkpoint is written to `iter_N.tmp`, renamed to `iter_N` once every rank has finished, and only
then does `latest` move: a crash at any point leaves the previous checkpoint as the resume point.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing

from megatron_s1.atomic import atomic_open
from megatron_s1.config.schema import ConfigError, ExperimentConfig
from megatron_s1.models.specs import resolve_experts_impl, resolve_spec_kind
from megatron_s1.training.distributed import rng_state, set_rng_state

LATEST = "latest"
STATE_FILE = "trainer_state.json"
# Model fields that must match between a checkpoint and the config that loads it.
SHAPE_FIELDS = ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups", "kv_channels",
                "ffn_hidden_size", "num_moe_experts", "moe_ffn_hidden_size", "vocab_size", "qk_layernorm",
                "untie_embeddings_and_output_weights")


def checkpoint_root(cfg: ExperimentConfig) -> str:
    return os.path.join(cfg.run.dir, "checkpoints")


def iteration_dir_name(step: int) -> str:
    return f"iter_{step:07d}"


def _atomic_write_text(path: str, text: str) -> None:
    with atomic_open(path, fsync=True) as f:
        f.write(text)


def find_latest(root: str) -> Optional[str]:
    """Directory of the newest complete checkpoint under `root`, or None."""
    pointer = os.path.join(root, LATEST)
    if not os.path.exists(pointer):
        return None
    with open(pointer, encoding="utf-8") as f:
        name = f.read().strip()
    path = os.path.join(root, name)
    if not os.path.exists(os.path.join(path, STATE_FILE)):
        raise RuntimeError(f"{pointer} names {name!r}, which is missing or incomplete; point it at a complete "
                           "iter_* directory or delete it to start fresh")
    return path


def resolve_checkpoint_dir(path: str) -> str:
    """Accept a checkpoint directory itself or a checkpoints/ root with a `latest` pointer."""
    if os.path.exists(os.path.join(path, STATE_FILE)):
        return path
    latest = find_latest(path) if os.path.isdir(path) else None
    if latest is None:
        raise ConfigError(f"{path!r} is not a checkpoint (no {STATE_FILE}) nor a checkpoints directory with a "
                          f"'{LATEST}' file; pass a run's checkpoints/ directory or one iter_* directory")
    return latest


def read_trainer_state(ckpt_dir: str) -> dict:
    with open(os.path.join(ckpt_dir, STATE_FILE), encoding="utf-8") as f:
        return json.load(f)


def check_model_shape(cfg: ExperimentConfig, state: dict, ckpt_dir: str) -> None:
    saved = state["config"]["model"]
    current = cfg.to_dict()["model"]
    diffs = [f"model.{k}: checkpoint {saved.get(k)!r} vs config {current.get(k)!r}" for k in SHAPE_FIELDS
             if saved.get(k) != current.get(k)]
    if diffs:
        raise ConfigError(f"checkpoint {ckpt_dir} does not match the model config ({'; '.join(diffs)}); "
                          "use the checkpoint's model settings or a different run.dir")


def _layout(cfg: ExperimentConfig) -> dict:
    p = cfg.parallel
    return {"tensor": p.tensor, "pipeline": p.pipeline, "virtual_pipeline": p.virtual_pipeline,
            "expert": p.expert, "expert_tensor": p.expert_tensor or p.tensor, "context": p.context,
            "world_size": dist.get_world_size(), "distributed_optimizer": bool(_uses_distributed_optimizer(cfg)),
            "spec": resolve_spec_kind(cfg.model.spec), "experts": resolve_experts_impl(cfg)}


def _uses_distributed_optimizer(cfg: ExperimentConfig) -> bool:
    value = cfg.parallel.distributed_optimizer
    if value == "auto":
        # Sharding optimizer state only pays off with data parallelism (measured ~7% slower at DP=1).
        from megatron.core import parallel_state

        return torch.cuda.is_available() and parallel_state.get_data_parallel_world_size() > 1
    return str(value).lower() in ("true", "1", "yes", "on")


def _sharding_metadata() -> dict:
    # dp_reshardable: fully parallel save/load of the distributed optimizer; the plain optimizer's state
    # follows the model's sharded tensors and reshards with them across TP/PP/EP.
    return {"distrib_optim_sharding_type": "dp_reshardable", "chained_optim_avoid_prefix": True}


def _model_sharded_state_dict(model_chunks) -> dict:
    if len(model_chunks) == 1:
        return {"model": model_chunks[0].module.sharded_state_dict()}
    return {f"model{i}": chunk.module.sharded_state_dict() for i, chunk in enumerate(model_chunks)}


class Checkpointer:
    """Saves and restores the complete training state of one run."""

    def __init__(self, cfg: ExperimentConfig, model_chunks, optimizer, scheduler):
        self.cfg = cfg
        self.root = checkpoint_root(cfg)
        self.model_chunks = model_chunks
        self.optimizer = optimizer
        self.scheduler = scheduler
        self._async_queue = None
        if cfg.checkpoint.async_save:
            if not torch.cuda.is_available():
                raise ConfigError("checkpoint.async_save needs a GPU; set checkpoint.async_save=false on CPU")
            from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue

            self._async_queue = AsyncCallsQueue()

    # ---------------------------------------------------------------- save
    def save(self, trainer_state: dict, blocking: bool = False) -> str:
        rank = dist.get_rank()
        step = trainer_state["step"]
        final = os.path.join(self.root, iteration_dir_name(step))
        tmp = final + ".tmp"
        self.finalize_pending(blocking=True)  # one async save in flight at a time
        if rank == 0:
            os.makedirs(self.root, exist_ok=True)
            if os.path.exists(tmp):
                shutil.rmtree(tmp)  # leftovers of an interrupted save
            os.makedirs(tmp)
        dist.barrier()
        sharded = _model_sharded_state_dict(self.model_chunks)
        sharded["optimizer"] = self.optimizer.sharded_state_dict(sharded, is_loading=False,
                                                                 metadata=_sharding_metadata())
        sharded["scheduler"] = self.scheduler.state_dict()
        rng = rng_state()  # captured now; written with the rest when the shards are complete
        state = dict(trainer_state, layout=_layout(self.cfg), config=self.cfg.to_dict())

        def finalize() -> None:
            os.makedirs(os.path.join(tmp, "rng"), exist_ok=True)
            torch.save(rng, os.path.join(tmp, "rng", f"rank_{rank:05d}.pt"))
            dist.barrier()
            if rank == 0:
                _atomic_write_text(os.path.join(tmp, STATE_FILE), json.dumps(state, indent=1))
                if os.path.exists(final):
                    shutil.rmtree(final)
                os.replace(tmp, final)
                _atomic_write_text(os.path.join(self.root, LATEST), os.path.basename(final))
                self._prune()
            dist.barrier()

        use_async = self._async_queue is not None and not blocking
        request = dist_checkpointing.save(sharded, tmp, async_sharded_save=use_async,
                                          content_metadata=_sharding_metadata(),
                                          **({"async_strategy": "mcore"} if use_async else {}))
        if use_async:
            request.add_finalize_fn(finalize)
            self._async_queue.schedule_async_request(request)
        else:
            finalize()
        return final

    def finalize_pending(self, blocking: bool = False) -> None:
        if self._async_queue is not None:
            self._async_queue.maybe_finalize_async_calls(blocking=blocking)

    def close(self) -> None:
        if self._async_queue is not None:
            self._async_queue.maybe_finalize_async_calls(blocking=True)
            self._async_queue.close()

    def _prune(self) -> None:
        keep = self.cfg.checkpoint.keep_last
        if keep <= 0:
            return
        names = sorted(n for n in os.listdir(self.root) if n.startswith("iter_") and not n.endswith(".tmp"))
        for name in names[:-keep]:
            shutil.rmtree(os.path.join(self.root, name), ignore_errors=True)

    # ---------------------------------------------------------------- load
    def load(self, ckpt_dir: str, model_only: bool = False) -> Optional[dict]:
        """Restore state from `ckpt_dir`; returns the saved trainer state (None for model_only)."""
        state = read_trainer_state(ckpt_dir)
        check_model_shape(self.cfg, state, ckpt_dir)
        if state["step"] == 0:
            model_only = True  # a step-0 checkpoint holds initial weights; Adam has no state yet
        sharded = _model_sharded_state_dict(self.model_chunks)
        # TE modules carry `_extra_state` (FP8 metadata) that a local-spec or grouped_mm-experts checkpoint (CPU
        # training, conversion) does not have; across implementations it is left at its fresh value.
        # (Checkpoints written by conversion or before the "experts" entry count as local-spec / unknown experts.)
        here, saved = _layout(self.cfg), state["layout"]
        cross_spec = saved.get("spec", "local") != here["spec"] or saved.get("experts") != here["experts"]
        if cross_spec:
            sharded = {key: {k: v for k, v in sd.items() if "_extra_state" not in k}
                       for key, sd in sharded.items()}
        if not model_only:
            same_optimizer_kind = state["layout"]["distributed_optimizer"] == _uses_distributed_optimizer(self.cfg)
            if not same_optimizer_kind:
                raise ConfigError(f"checkpoint {ckpt_dir} was saved with parallel.distributed_optimizer="
                                  f"{state['layout']['distributed_optimizer']}; resume with the same setting or load "
                                  "weights only with checkpoint.pretrained")
            sharded["optimizer"] = self.optimizer.sharded_state_dict(sharded, is_loading=True,
                                                                     metadata=_sharding_metadata())
        loaded = dist_checkpointing.load(sharded, ckpt_dir)
        for i, chunk in enumerate(self.model_chunks):
            key = "model" if len(self.model_chunks) == 1 else f"model{i}"
            result = chunk.module.load_state_dict(loaded[key], strict=not cross_spec)
            missing = [k for k in getattr(result, "missing_keys", []) if "_extra_state" not in k]
            if missing or getattr(result, "unexpected_keys", []):
                raise RuntimeError(f"checkpoint {ckpt_dir} does not fit the model: missing {missing[:5]}, "
                                   f"unexpected {result.unexpected_keys[:5]}")
        if model_only:
            return state if state["step"] == 0 else None
        self.optimizer.load_state_dict(loaded["optimizer"])
        self.scheduler.load_state_dict(loaded["scheduler"])
        if saved == here:
            rng_path = os.path.join(ckpt_dir, "rng", f"rank_{dist.get_rank():05d}.pt")
            set_rng_state(torch.load(rng_path, weights_only=False))
        return state


def install_exit_signal_handlers(on_signal: Callable[[int], Any]) -> None:
    """SIGTERM / SIGUSR1 (Slurm preemption) only set a flag; the loop saves at the next step boundary."""
    import signal

    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, lambda signum, _frame: on_signal(signum))
