"""Training tasks: what a stage builds and feeds to the shared training loop.

The loop (training/loop.py) owns parallelism, optimisation, schedules, checkpoints and logging. A task
owns the stage-specific parts: the model provider, the datasets, how a global batch is cut into
micro-batches, and the forward step with its loss. CPT is `PretrainTask`; multimodal CPT, SFT and RL
register their own tasks under the name used by `train.task`.
"""
from __future__ import annotations

import importlib
import os
from functools import partial
from typing import Callable, Iterator

import torch

from megatron_s1.config.schema import ConfigError
from megatron_s1.data.datasets import build_gpt_datasets, check_token_files, microbatches, parse_blend
from megatron_s1.models.language import build_language_model
from megatron_s1.models.specs import resolve_spec_kind

_TASKS: dict[str, type] = {}
# Modules that register further tasks when imported (keeps heavy imports out of plain CPT runs).
TASK_MODULES: dict[str, str] = {"mm_pretrain": "megatron_s1.models.interns1.task", "sft": "megatron_s1.data.chat.task"}


def register_task(name: str) -> Callable[[type], type]:
    def wrap(cls: type) -> type:
        _TASKS[name] = cls
        return cls
    return wrap


def get_task(name: str) -> type:
    if name not in _TASKS and name in TASK_MODULES:
        importlib.import_module(TASK_MODULES[name])
    if name not in _TASKS:
        known = sorted(set(_TASKS) | set(TASK_MODULES))
        raise ConfigError(f"unknown train.task {name!r}; choose one of: {', '.join(known)}")
    return _TASKS[name]


def masked_token_loss(loss_mask: torch.Tensor, output_tensor: torch.Tensor):
    """Sum of per-token cross-entropy over unmasked tokens, with the token count.

    Megatron's per-token-loss mode divides gradients by the global token count (all micro-batches, all
    DP ranks), so every token weighs the same however the batch is split.
    """
    losses = output_tensor.float().reshape(-1)
    mask = loss_mask.float().reshape(-1)
    loss_sum = torch.sum(losses * mask)
    num_tokens = mask.sum().to(torch.int)
    return loss_sum, num_tokens, {"lm loss": torch.stack([loss_sum.detach(), mask.sum()])}


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


@register_task("pretrain")
class PretrainTask:
    """Continued pretraining on Megatron GPT datasets (next-token loss on every token)."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.cfg = trainer.cfg

    def build_model(self, tconfig, pre_process: bool, post_process: bool, vp_stage=None):
        return build_language_model(self.cfg, tconfig, pre_process, post_process, vp_stage=vp_stage)

    def check_inputs(self) -> None:
        """Data problems reported before the model is built: missing, damaged or empty .bin/.idx files and token
        ids beyond the tokenizer."""
        d = self.cfg.data
        if not d.mock:
            prefixes, _ = parse_blend(d.blend)
            check_token_files(prefixes, self.trainer.tokenizer.vocab_size, self._cache_dir())

    def _cache_dir(self) -> str:
        return self.cfg.data.cache_dir or os.path.join(self.cfg.run.dir, "data_cache")

    def build_datasets(self, train_samples: int, valid_samples: int):
        cfg, tok = self.cfg, self.trainer.tokenizer
        if cfg.data.packing != "none":
            return self._packed_datasets()
        cache = self._cache_dir()
        needs_mask = resolve_spec_kind(cfg.model.spec) == "local"  # TE builds the causal mask itself
        return build_gpt_datasets(cfg.data, cfg.run.seed, tok.vocab_size, tok.eod_id,
                                  [train_samples, valid_samples, 0], cache, needs_mask)

    def _packed_datasets(self):
        from megatron_s1.data.packed import (Documents, PackedData, SamplePacks, check_packing, prefixes_for_packing,
                                             split_documents, train_schedule)
        from megatron.core.datasets.indexed_dataset import IndexedDataset

        cfg, d = self.cfg, self.cfg.data
        vlbs = check_packing(d) == "vlbs"
        prefixes = prefixes_for_packing(d.blend)
        num_docs = sum(len(IndexedDataset(p)) for p in prefixes)
        train_docs, valid_docs, _ = split_documents(num_docs, d.split, cfg.run.seed)
        train = SamplePacks(Documents(prefixes, train_docs, d.seq_length), d.seq_length, cfg.run.seed, vlbs,
                            d.packing_epochs)
        with_mask = resolve_spec_kind(cfg.model.spec) == "local"
        valid = None
        if len(valid_docs):
            valid = PackedData(SamplePacks(Documents(prefixes, valid_docs, d.seq_length), d.seq_length, cfg.run.seed,
                                           False), None, d.seq_length, with_mask)
        return PackedData(train, train_schedule(train, cfg, self.trainer, vlbs), d.seq_length, with_mask), valid, None

    def microbatches(self, dataset, first_sample: int, global_batch: int, dp_rank: int,
                     dp_size: int) -> Iterator[dict]:
        if hasattr(dataset, "microbatches"):  # packed data schedules its own packs
            return dataset.microbatches(first_sample, global_batch, dp_rank, dp_size)
        return microbatches(dataset, first_sample, global_batch, dp_rank, dp_size, self.cfg.data.micro_batch_size)

    def forward_step(self, batch: dict, model):
        batch, output = run_model(model, batch, self.trainer.env.device)
        return output, partial(masked_token_loss, batch["loss_mask"])


def run_model(model, batch: dict, device: torch.device):
    """Move a micro-batch to the device and run the model on it: (batch on the device, per-token loss).

    A batch with media (multimodal CPT rows or packs, SFT turns with images / series) also passes
    pixel_values (+ image_grid_thw, pixel_values_videos, video_grid_thw for vision.arch=pro) / ts_values /
    ts_rates to InternS1Model.
    """
    from megatron_s1.data.multimodal.vision import VISION_KEYS

    batch = to_device(batch, device)
    mask, packed_seq_params = attention_inputs(batch)
    media = {}
    if "ts_values" in batch:
        media = {k: batch[k] for k in VISION_KEYS if k in batch}
        media.update(ts_values=[x.to(device) for x in batch["ts_values"]], ts_rates=batch["ts_rates"])
    output = model(batch["tokens"], batch["position_ids"], mask, labels=batch["labels"],
                   packed_seq_params=packed_seq_params, **media)
    return batch, output


def attention_inputs(batch: dict):
    """(attention mask, THD packed-sequence params) of a batch on the device.

    Packs carry a block-diagonal causal mask on the local spec (CPU) and run as THD sequences (cu_seqlens,
    no mask) on the TE spec; unpacked rows carry a causal mask (local) or nothing (TE builds it).
    """
    mask = batch.get("attention_mask")
    if mask is not None and mask.dim() == 3:
        mask = mask.unsqueeze(1)
    packed_seq_params = None
    if "cu_seqlens" in batch and mask is None:
        packed_seq_params = thd_params(batch["cu_seqlens"])
    return mask, packed_seq_params


def thd_params(cu_seqlens: torch.Tensor):
    """TE packed-sequence (THD) parameters of one packed micro-batch."""
    from megatron.core.packed_seq_params import PackedSeqParams

    max_len = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
    return PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu_seqlens, cu_seqlens_kv=cu_seqlens,
                           max_seqlen_q=max_len, max_seqlen_kv=max_len)
