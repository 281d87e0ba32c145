"""`train.task=mm_pretrain`: multimodal CPT of InternS1Model on jsonl data with square-averaged loss.

data.blend lists jsonl files (plain paths; weights are not supported yet), data.split cuts the samples
into train/valid, mm.* holds freeze switches and the loss weighting. data.packing=naive|vlbs packs whole
samples into rows of data.seq_length (the shared `data.packed` path of text CPT and SFT); otherwise one
sample per row. See docs/multimodal.md.
"""
from __future__ import annotations

from functools import partial
from typing import Iterator

import torch

from megatron_s1.config.schema import ConfigError
from megatron_s1.data.multimodal.dataset import MultimodalJsonlDataset, MultimodalSamples, collate
from megatron_s1.data.multimodal.tokens import media_tokens_for_model
from megatron_s1.data.packed import MaskedPackedData, PackedData, SamplePacks, check_packing, train_schedule
from megatron_s1.models.interns1.model import build_interns1_model
from megatron_s1.models.specs import resolve_spec_kind
from megatron_s1.training.losses import global_normaliser, sample_weights, token_weights, weighted_token_loss
from megatron_s1.training.tasks import register_task, run_model


def _split_sizes(split: str, n: int) -> tuple[int, int]:
    parts = [float(x) for x in split.split(",")]
    parts += [0.0] * (3 - len(parts))
    total = sum(parts) or 1.0
    n_train = int(round(n * parts[0] / total))
    n_valid = int(round(n * parts[1] / total))
    return n_train, min(n_valid, n - n_train)


@register_task("mm_pretrain")
class MultimodalPretrainTask:
    def __init__(self, trainer):
        self.trainer = trainer
        self.cfg = cfg = trainer.cfg
        self.media = media_tokens_for_model(trainer.tokenizer, cfg.model.vocab_size, cfg.vision.arch)
        if cfg.vision.preset is None and cfg.timeseries.preset is None:
            raise ConfigError("train.task=mm_pretrain needs vision.preset and/or timeseries.preset")
        sample_weights([], cfg.mm.loss_weighting)  # validates the mode early
        self.packing = check_packing(cfg.data)

    def build_model(self, tconfig, pre_process: bool, post_process: bool, vp_stage=None):
        return build_interns1_model(self.cfg, tconfig, pre_process, post_process, vp_stage=vp_stage,
                                    token_ids=self.media)

    def build_datasets(self, train_samples: int, valid_samples: int):
        cfg = self.cfg
        paths = []
        for entry in cfg.data.blend:
            if isinstance(entry, (list, tuple)):
                raise ConfigError("mm_pretrain: data.blend takes plain jsonl paths (weighted blends are not "
                                  "supported for multimodal data yet)")
            paths.append(str(entry))
        if not paths:
            raise ConfigError("mm_pretrain: set data.blend=[path/to/samples.jsonl]")
        full = MultimodalJsonlDataset(
            paths, self.trainer.tokenizer, self.media, cfg.data.seq_length,
            vision=cfg.vision if cfg.vision.preset else None,
            timeseries=cfg.timeseries if cfg.timeseries.preset else None, root=cfg.mm.image_root)
        n_train, n_valid = _split_sizes(cfg.data.split, len(full))
        train = full.subset(list(range(n_train))) if n_train else None
        valid = full.subset(list(range(n_train, n_train + n_valid))) if n_valid else None
        if self.packing != "none":
            return self._packed(train, train=True), self._packed(valid, train=False), None
        return train, valid, None

    def _packed(self, subset, train: bool):
        """Whole samples packed into rows (VLBS or naive) with the training schedule, or in order (eval)."""
        if subset is None:
            return None
        cfg, d = self.cfg, self.cfg.data
        vlbs = train and self.packing == "vlbs"
        samples = MultimodalSamples(subset)
        packs = SamplePacks(samples, d.seq_length, cfg.run.seed, vlbs, d.packing_epochs if train else 1)
        schedule = train_schedule(packs, cfg, self.trainer, vlbs) if train else None
        with_mask = resolve_spec_kind(cfg.model.spec) == "local"
        return MaskedPackedData(packs, schedule, d.seq_length, with_mask, samples.load_media)

    def microbatches(self, dataset, first_sample: int, global_batch: int, dp_rank: int,
                     dp_size: int) -> Iterator[dict]:
        mode = self.cfg.mm.loss_weighting
        if isinstance(dataset, PackedData):
            return packed_microbatches(dataset, first_sample, global_batch, dp_rank, dp_size, mode)
        local_mask = resolve_spec_kind(self.cfg.model.spec) == "local"
        return row_microbatches(dataset, first_sample, global_batch, dp_rank, dp_size, mode,
                                self.cfg.data.micro_batch_size, local_mask)

    def forward_step(self, batch: dict, model):
        batch, output = run_model(model, batch, self.trainer.env.device)
        return output, partial(weighted_token_loss, batch["loss_mask"], batch["sample_weight"],
                               batch["global_weight_sum"], batch["global_tokens"])


def row_microbatches(dataset: MultimodalJsonlDataset, first_sample: int, global_batch: int, dp_rank: int,
                     dp_size: int, mode: str, micro_batch_size: int, local_mask: bool) -> Iterator[dict]:
    """One sample per row. Every rank computes the loss-token counts of the whole global batch, so the
    square-averaging normaliser (D, N) is global across DP ranks and micro-batches."""
    lengths = [dataset.loss_tokens(first_sample + k) for k in range(global_batch)]
    weight_sum, tokens = global_normaliser(lengths, mode)
    per_rank = global_batch // dp_size
    start = dp_rank * per_rank
    for offset in range(0, per_rank, micro_batch_size):
        ks = range(start + offset, start + offset + micro_batch_size)
        batch = collate([dataset[first_sample + k] for k in ks], local_mask)
        batch["sample_weight"] = torch.tensor(sample_weights([lengths[k] for k in ks], mode))
        batch["global_weight_sum"] = weight_sum
        batch["global_tokens"] = tokens
        yield batch


def packed_microbatches(data: PackedData, first_pack: int, global_batch: int, dp_rank: int, dp_size: int,
                        mode: str) -> Iterator[dict]:
    """One pack per micro-batch. Every rank reads the loss-token counts of every sample in the packs of all
    ranks for this step, so (D, N) is global as for rows; each token carries its own sample's weight."""
    packs, samples = data.documents, data.documents.samples
    ranks = [data.pack_ids(first_pack, global_batch, r, dp_size) for r in range(dp_size)]
    lengths = [[[samples.loss_tokens(int(i)) for i in packs.members(p)] for p in rank] for rank in ranks]
    weight_sum, tokens = global_normaliser([n for rank in lengths for pack in rank for n in pack], mode)
    for p, pack_lengths in zip(ranks[dp_rank], lengths[dp_rank]):
        batch = data.collate(p)
        batch["sample_weight"] = token_weights(batch["cu_seqlens"], sample_weights(pack_lengths, mode))
        batch["global_weight_sum"] = weight_sum
        batch["global_tokens"] = tokens
        yield batch
