"""`train.task=mm_pretrain`: multimodal CPT of InternS1Model on jsonl data with square-averaged loss.

data.blend lists jsonl files (plain paths; weights are not supported yet), data.split cuts the samples
into train/valid, mm.* holds freeze switches and the loss weighting. See docs/multimodal.md.
"""
from __future__ import annotations

from functools import partial
from typing import Iterator

import torch

from megatron_s1.config.schema import ConfigError
from megatron_s1.data.multimodal.dataset import MultimodalJsonlDataset, collate
from megatron_s1.data.multimodal.tokens import resolve_media_tokens
from megatron_s1.models.interns1.model import build_interns1_model
from megatron_s1.models.specs import resolve_spec_kind
from megatron_s1.training.losses import global_normaliser, sample_weights, weighted_token_loss
from megatron_s1.training.tasks import register_task, to_device


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
        self.media = resolve_media_tokens(trainer.tokenizer)
        need = max(self.media.all()) + 1
        if cfg.model.vocab_size < need:
            raise ConfigError(f"model.vocab_size={cfg.model.vocab_size} does not cover the media tokens "
                              f"(ids up to {need - 1}, reserved after the tokenizer's vocabulary); set "
                              f"model.vocab_size >= {need}")
        if cfg.vision.preset is None and cfg.timeseries.preset is None:
            raise ConfigError("train.task=mm_pretrain needs vision.preset and/or timeseries.preset")
        sample_weights([], cfg.mm.loss_weighting)  # validates the mode early

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
        return train, valid, None

    def microbatches(self, dataset, first_sample: int, global_batch: int, dp_rank: int,
                     dp_size: int) -> Iterator[dict]:
        """Every rank computes the loss-token counts of the whole global batch, so the square-averaging
        normaliser (D, N) is global across DP ranks and micro-batches."""
        mode = self.cfg.mm.loss_weighting
        lengths = [dataset.loss_tokens(first_sample + k) for k in range(global_batch)]
        weight_sum, tokens = global_normaliser(lengths, mode)
        per_rank = global_batch // dp_size
        mbs = self.cfg.data.micro_batch_size
        local_mask = resolve_spec_kind(self.cfg.model.spec) == "local"
        start = dp_rank * per_rank
        for offset in range(0, per_rank, mbs):
            ks = range(start + offset, start + offset + mbs)
            batch = collate([dataset[first_sample + k] for k in ks], local_mask)
            batch["sample_weight"] = torch.tensor(sample_weights([lengths[k] for k in ks], mode))
            batch["global_weight_sum"] = weight_sum
            batch["global_tokens"] = tokens
            yield batch

    def forward_step(self, batch: dict, model):
        device = self.trainer.env.device
        batch = to_device(batch, device)
        ts = [x.to(device) for x in batch["ts_values"]]
        output = model(batch["tokens"], batch["position_ids"], batch.get("attention_mask"), labels=batch["labels"],
                       pixel_values=batch["pixel_values"], ts_values=ts, ts_rates=batch["ts_rates"])
        return output, partial(weighted_token_loss, batch["loss_mask"], batch["sample_weight"],
                               batch["global_weight_sum"], batch["global_tokens"])
