"""Atomic, verified, resumable, reshardable checkpoints on Megatron-Core dist_checkpointing.

Layout of `run.dir/checkpoints/`:
    iter_0000010/           one checkpoint: dist_checkpointing shards (model, optimizer, scheduler)
        trainer_state.json  step, consumed tokens/samples, skipped steps, parallel layout, resolved config, and
                            "files": size and CRC-32 of every other file of the checkpoint
        rng/rank_00003.pt   per-rank RNG states (restored only when the layout is unchanged)
    latest                  name of the newest complete checkpoint (replaced atomically, last)

A checkpoint is written to `iter_N.tmp-<token>` (a name no other attempt shares), its trainer_state.json is
written last, and only then is it renamed to `iter_N` and `latest` moved: a crash at any point leaves the previous
checkpoint as the resume point. An existing `iter_N` (a superseded one) is moved aside only once its replacement is
complete. On resume every candidate is validated (trainer_state.json parses, `.metadata` and every listed file are
present with their sizes, checksums match); a bad one is skipped, with a warning, for the previous complete one.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import uuid
import zlib
from typing import Any, Callable, Iterator, Optional

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing

from megatron_s1.atomic import atomic_open
from megatron_s1.config.schema import ConfigError, ExperimentConfig, RunError
from megatron_s1.models.specs import resolve_experts_impl, resolve_spec_kind
from megatron_s1.training.distributed import rng_state, set_rng_state

LATEST = "latest"
STATE_FILE = "trainer_state.json"
MANIFEST = "files"  # trainer_state.json key: relative path -> [size in bytes, CRC-32]
ITERATION = re.compile(r"iter_(\d+)")
# Model fields that must match between a checkpoint and the config that loads it.
SHAPE_FIELDS = ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups", "kv_channels",
                "ffn_hidden_size", "num_moe_experts", "moe_ffn_hidden_size", "vocab_size", "qk_layernorm",
                "untie_embeddings_and_output_weights")
# Fields that change what the weights compute without changing their shapes: a stated value that differs from
# checkpoint.pretrained's is refused unless checkpoint.allow_model_changes lists it (e.g. a larger rotary_base for
# long-context training).
ARCHITECTURE_FIELDS = ("rotary_base", "position_embedding_type", "max_position_embeddings", "normalization",
                       "norm_epsilon", "activation", "add_qkv_bias", "moe_router_topk", "moe_norm_topk_prob",
                       "moe_shared_expert_intermediate_size", "moe_router_groups", "fope_sep_head",
                       "fope_num_inv_freq")
_CHUNK = 16 << 20


def checkpoint_root(cfg: ExperimentConfig) -> str:
    return os.path.join(cfg.run.dir, "checkpoints")


def iteration_dir_name(step: int) -> str:
    return f"iter_{step:07d}"


def _atomic_write_text(path: str, text: str) -> None:
    with atomic_open(path, fsync=True) as f:
        f.write(text)


def read_trainer_state(ckpt_dir: str) -> dict:
    with open(os.path.join(ckpt_dir, STATE_FILE), encoding="utf-8") as f:
        return json.load(f)


def file_crc32(path: str) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


def checkpoint_files(ckpt_dir: str) -> list[str]:
    """Every file of a checkpoint directory (relative paths) except trainer_state.json, which lists them."""
    names = []
    for dirpath, _dirs, files in os.walk(ckpt_dir):
        for name in files:
            rel = os.path.relpath(os.path.join(dirpath, name), ckpt_dir)
            if rel != STATE_FILE:
                names.append(rel)
    return sorted(names)


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _first_of_ranks(problem: Optional[str]) -> Optional[str]:
    """The first rank's non-None value (collective when distributed)."""
    _rank, world = _rank_world()
    if world == 1:
        return problem
    gathered: list = [None] * world
    dist.all_gather_object(gathered, problem)
    return next((p for p in gathered if p), None)


def checkpoint_problem(ckpt_dir: str, checksums: bool = False) -> Optional[str]:
    """Why `ckpt_dir` is not a complete checkpoint, or None. Sizes are checked always, CRC-32s with `checksums`
    (collective when distributed: each rank reads its share of the files). Checkpoints without a file list
    (conversion outputs, older runs) are checked for trainer_state.json and .metadata only."""
    if not os.path.isdir(ckpt_dir):
        problem = "does not exist"
    elif not os.path.exists(os.path.join(ckpt_dir, STATE_FILE)):
        problem = f"has no {STATE_FILE} (its save did not finish)"
    else:
        problem = None
        try:
            state = read_trainer_state(ckpt_dir)
        except (ValueError, UnicodeDecodeError):
            state, problem = None, f"has a truncated or corrupt {STATE_FILE}"
        if problem is None and not (isinstance(state, dict) and "step" in state and "config" in state):
            problem = f"has a {STATE_FILE} without step / config"
        if problem is None and not os.path.exists(os.path.join(ckpt_dir, ".metadata")):
            problem = "has no .metadata (its shards were never completed)"
        if problem is None:
            problem = _manifest_problem(ckpt_dir, state.get(MANIFEST) or {}, checksums)
    return _first_of_ranks(problem) if checksums else problem


def _manifest_problem(ckpt_dir: str, manifest: dict, checksums: bool) -> Optional[str]:
    rank, world = _rank_world()
    names = sorted(manifest)
    for i, name in enumerate(names):
        path = os.path.join(ckpt_dir, name)
        size, crc = manifest[name]
        if not os.path.isfile(path):
            return f"lacks {name}"
        if os.path.getsize(path) != size:
            return f"has a truncated {name} ({os.path.getsize(path)} of {size} bytes)"
        if checksums and i % world == rank and file_crc32(path) != crc:
            return f"has a corrupted {name} (CRC-32 mismatch)"
    return None


def require_complete(path: str) -> None:
    """ConfigError (one line) unless `path` is a complete checkpoint: for tools that read one (average, export)."""
    problem = checkpoint_problem(path)
    if problem:
        raise ConfigError(f"checkpoint {path} {problem}; pass a complete iter_* directory (one with "
                          f"{STATE_FILE} and .metadata) or a run's checkpoints/ directory")


def list_iterations(root: str) -> list[tuple[int, str]]:
    """(step, name) of the `iter_N` directories under root, newest first (temporary / aside names excluded)."""
    if not os.path.isdir(root):
        return []
    found = [(int(m.group(1)), n) for n in os.listdir(root) if (m := ITERATION.fullmatch(n))]
    return sorted(found, reverse=True)


def _read_pointer(root: str) -> Optional[str]:
    pointer = os.path.join(root, LATEST)
    if not os.path.exists(pointer):
        return None
    with open(pointer, "rb") as f:
        return f.read(256).decode("utf-8", "replace").strip()


def find_latest(root: str) -> Optional[str]:
    """The checkpoint `latest` names if it is complete (no checksum pass), else the newest complete one, or None."""
    name = _read_pointer(root)
    if name and ITERATION.fullmatch(name) and not checkpoint_problem(os.path.join(root, name)):
        return os.path.join(root, name)
    for _step, name in list_iterations(root):
        if not checkpoint_problem(os.path.join(root, name)):
            return os.path.join(root, name)
    return None


def resume_candidates(root: str, warn: Callable[[str], None]) -> Iterator[str]:
    """Verified checkpoints to resume from, best first: the one `latest` names, then older complete ones (newer
    ones than `latest` belong to a save that never finished publishing, or to an abandoned branch of the run).
    Each skipped one is reported through `warn`. Yields nothing for a fresh run (nothing under root); raises
    RunError when there are checkpoints but none is complete, rather than start over and overwrite them."""
    iterations = list_iterations(root)
    pointer = _read_pointer(root)
    if not iterations and pointer is None:
        return
    notes = []
    names = [name for _step, name in iterations]
    if pointer is None:
        notes.append(f"{os.path.join(root, LATEST)} is missing")
        start = 0
    elif pointer in names:
        start = names.index(pointer)
    else:
        notes.append(f"{os.path.join(root, LATEST)} names {pointer!r}, which is not a checkpoint directory here")
        newer = [i for i, (step, _n) in enumerate(iterations) if ITERATION.fullmatch(pointer)
                 and step < int(ITERATION.fullmatch(pointer).group(1))]
        start = newer[0] if newer else 0
    for name in names[start:]:
        path = os.path.join(root, name)
        problem = checkpoint_problem(path, checksums=True)
        if problem is None:
            if notes:
                warn(f"warning: {'; '.join(notes)}; resuming from {path}, the newest complete checkpoint")
            yield path
            notes = [f"{path} could not be loaded"]
            continue
        notes.append(f"{name} {problem}")
    raise RunError(f"no complete checkpoint under {root} ({'; '.join(notes)}); refusing to start over and overwrite "
                   "it: restore a checkpoint, or move the directory away to start fresh")


def resolve_checkpoint_dir(path: str) -> str:
    """A complete checkpoint: `path` itself, or the latest complete one of a checkpoints/ root (ConfigError if
    neither, e.g. an iter_* directory whose save never finished)."""
    if os.path.exists(os.path.join(path, STATE_FILE)) or ITERATION.fullmatch(os.path.basename(os.path.normpath(path))):
        require_complete(path)
        return path
    latest = find_latest(path) if os.path.isdir(path) else None
    if latest is None:
        raise ConfigError(f"{path!r} is not a checkpoint (no {STATE_FILE}) nor a checkpoints directory with a "
                          "complete iter_* directory; pass a run's checkpoints/ directory or one iter_* directory")
    return latest


def adopt_checkpoint_model(cfg: ExperimentConfig, ckpt_dir: str, stated: frozenset) -> dict:
    """Reconcile the model config with the one `ckpt_dir` (checkpoint.pretrained) was trained with, before anything
    is built. Fields the recipe does not state (`stated`: dotted keys given by recipe, preset or overrides) are
    taken from the checkpoint. Stated fields must match it: a shape field always (ConfigError), a non-shape one
    (ARCHITECTURE_FIELDS) unless checkpoint.allow_model_changes lists it, a deliberate change such as a larger
    rotary_base for long-context training. Returns the allowed differences {field: (checkpoint, config)}."""
    state = read_trainer_state(ckpt_dir)
    saved = state["config"]["model"]
    for key in SHAPE_FIELDS + ARCHITECTURE_FIELDS:
        if key in saved and f"model.{key}" not in stated:
            setattr(cfg.model, key, saved[key])
    check_model_shape(cfg, state, ckpt_dir)
    allowed = _allowed_model_changes(cfg)
    diffs = {k: (saved[k], getattr(cfg.model, k)) for k in ARCHITECTURE_FIELDS
             if k in saved and saved[k] != getattr(cfg.model, k)}
    refused = [k for k in diffs if k not in allowed]
    if refused:
        raise ConfigError(f"checkpoint.pretrained={ckpt_dir} was trained with other model settings than the config "
                          f"states ({describe_model_changes({k: diffs[k] for k in refused})}); drop "
                          f"{', '.join('model.' + k for k in refused)} from the recipe / overrides (or set the "
                          "checkpoint's values) to train the model it holds, or add checkpoint.allow_model_changes="
                          f"[{','.join(refused)}] to change {'it' if len(refused) == 1 else 'them'} deliberately")
    return diffs


def describe_model_changes(diffs: dict) -> str:
    return "; ".join(f"model.{k}: checkpoint {before!r}, config {now!r}" for k, (before, now) in diffs.items())


def _allowed_model_changes(cfg: ExperimentConfig) -> set:
    names = {str(n).removeprefix("model.") for n in cfg.checkpoint.allow_model_changes}
    unknown = sorted(names - set(ARCHITECTURE_FIELDS))
    if unknown:
        raise ConfigError(f"checkpoint.allow_model_changes lists {', '.join(unknown)}, not a model field that may "
                          f"differ from a pretrained checkpoint; choose from {', '.join(ARCHITECTURE_FIELDS)} (shape "
                          "fields must match the weights)")
    return names


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
        # Names this process's temporary directories: a requeued run never writes where an earlier attempt did.
        token = [uuid.uuid4().hex[:12] if dist.get_rank() == 0 else None]
        dist.broadcast_object_list(token, src=0)
        self._token = token[0]
        if cfg.checkpoint.async_save:
            if not torch.cuda.is_available():
                raise ConfigError("checkpoint.async_save needs a GPU; set checkpoint.async_save=false on CPU")
            from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue

            self._async_queue = AsyncCallsQueue()

    # ---------------------------------------------------------------- save
    def save(self, trainer_state: dict, blocking: bool = False, rank_state: Optional[dict] = None) -> str:
        """Write the checkpoint of `trainer_state["step"]`; `rank_state`: extra per-rank state (e.g. the RL
        prompt sampler's RNG), returned by `load_rank_state`."""
        rank, world = dist.get_rank(), dist.get_world_size()
        step = trainer_state["step"]
        final = os.path.join(self.root, iteration_dir_name(step))
        tmp = f"{final}.tmp-{self._token}"
        self.finalize_pending(blocking=True)  # one async save in flight at a time
        if rank == 0:
            os.makedirs(self.root, exist_ok=True)
            self._remove_leftovers()
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
            if rank_state is not None:
                torch.save(rank_state, os.path.join(tmp, "rng", f"extra_rank_{rank:05d}.pt"))
            dist.barrier()
            names = checkpoint_files(tmp)  # each rank checksums its share; rank 0 records them all
            mine = {n: [os.path.getsize(os.path.join(tmp, n)), file_crc32(os.path.join(tmp, n))]
                    for n in names[rank::world]}
            shares: list = [None] * world
            dist.all_gather_object(shares, mine)
            if rank == 0:
                manifest = {k: v for share in shares for k, v in share.items()}
                _atomic_write_text(os.path.join(tmp, STATE_FILE), json.dumps(dict(state, **{MANIFEST: manifest}),
                                                                             indent=1))
                self._publish(tmp, final)
                self._prune(step)
            dist.barrier()

        use_async = self._async_queue is not None and not blocking
        _adopt_writer_results_queue()
        with self._cleanup_on_failure(tmp, final):
            request = dist_checkpointing.save(sharded, tmp, async_sharded_save=use_async,
                                              content_metadata=_sharding_metadata(),
                                              **({"async_strategy": "mcore"} if use_async else {}))
            if not use_async:
                finalize()
        if use_async:
            def guarded_finalize() -> None:
                with self._cleanup_on_failure(tmp, final):
                    finalize()

            request.add_finalize_fn(guarded_finalize)
            self._async_queue.schedule_async_request(request)
        return final

    def _publish(self, tmp: str, final: str) -> None:
        """Rename the complete `tmp` to `final`, then point `latest` at it. A superseded `final` (same step, from
        an abandoned branch of the run) is moved aside first and deleted only after `latest` moved."""
        aside = None
        if os.path.exists(final):
            aside = f"{final}.old-{self._token}"
            os.replace(final, aside)
        os.replace(tmp, final)
        _atomic_write_text(os.path.join(self.root, LATEST), os.path.basename(final))
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)

    def _remove_leftovers(self) -> None:
        """Partial saves of interrupted attempts (the run-dir lock guarantees no live run owns them)."""
        for name in os.listdir(self.root):
            if name.startswith("iter_") and not ITERATION.fullmatch(name) and (".tmp" in name or ".old-" in name):
                shutil.rmtree(os.path.join(self.root, name), ignore_errors=True)

    @contextlib.contextmanager
    def _cleanup_on_failure(self, tmp: str, final: str):
        """A failed save removes its partial directory and reports a full disk as such (RunError, one line)."""
        try:
            yield
        except BaseException as err:
            if dist.get_rank() == 0:
                shutil.rmtree(tmp, ignore_errors=True)
            if _is_disk_full(err):
                raise RunError(f"No space left on device while saving {final}; the partial save was removed and the "
                               f"earlier checkpoints in {self.root} are intact: free space (or lower "
                               "checkpoint.keep_last) and rerun to resume") from None
            raise

    def finalize_pending(self, blocking: bool = False) -> None:
        if self._async_queue is not None:
            self._async_queue.maybe_finalize_async_calls(blocking=blocking)

    def close(self) -> None:
        if self._async_queue is not None:
            self._async_queue.maybe_finalize_async_calls(blocking=True)
            self._async_queue.close()

    def _prune(self, step: int) -> None:
        """Keep the newest `checkpoint.keep_last` iterations up to `step` (newer ones, of an abandoned branch of
        the run, are replaced as the run reaches them)."""
        keep = self.cfg.checkpoint.keep_last
        if keep <= 0:
            return
        older = [name for s, name in list_iterations(self.root) if s <= step]
        for name in older[keep:]:
            shutil.rmtree(os.path.join(self.root, name), ignore_errors=True)

    def load_rank_state(self, ckpt_dir: str) -> Optional[dict]:
        """This rank's extra state saved with `save(rank_state=...)`, None when absent or the layout changed."""
        path = os.path.join(ckpt_dir, "rng", f"extra_rank_{dist.get_rank():05d}.pt")
        if read_trainer_state(ckpt_dir)["layout"] != _layout(self.cfg) or not os.path.exists(path):
            return None
        return torch.load(path, weights_only=False)

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


_writer_manager = None  # keeps the results-queue server of the shard writers alive (its finalizer stops it)


def _adopt_writer_results_queue() -> None:
    """Start the process that serves dist_checkpointing's write-results queue ourselves, so that it dies with the
    trainer: Megatron-Core's own (a spawned multiprocessing Manager) outlives a kill -9, still holding stdout."""
    global _writer_manager
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    if filesystem_async._results_queue is not None:
        return
    import multiprocessing
    from multiprocessing.managers import SyncManager

    from megatron_s1.training.children import die_with_parent

    _writer_manager = SyncManager(ctx=multiprocessing.get_context("spawn"))
    _writer_manager.start(initializer=die_with_parent, initargs=(os.getpid(),))
    filesystem_async._results_queue = _writer_manager.Queue()


def _is_disk_full(err: BaseException) -> bool:
    """ENOSPC anywhere in the exception chain (dist_checkpointing re-raises writer errors wrapped, as text)."""
    seen = 0
    while err is not None and seen < 10:
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(err) or "[Errno 28]" in str(err):
            return True
        err, seen = err.__cause__ or err.__context__, seen + 1
    return False


def install_exit_signal_handlers(on_signal: Callable[[int], Any]) -> None:
    """SIGTERM / SIGUSR1 (Slurm preemption) only set a flag; the loop saves at the next step boundary."""
    import signal

    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, lambda signum, _frame: on_signal(signum))
