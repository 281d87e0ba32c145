"""`train.task=sft`: supervised fine-tuning on chat jsonl mixtures, assistant-token loss, packed (VLBS).

sft.datasets lists the chat jsonl files with ratio / epochs / family; data.split cuts every dataset into
train and held-out conversations; data.packing chooses vlbs (default for SFT) or naive packing, one pack
per micro-batch (data.micro_batch_size=1). The loss is the per-token cross-entropy over assistant tokens
(the loop normalises by the global count of assistant tokens), and the eval loss is the same over the
held-out conversations. The sampled mixture is logged to run.dir/sft_mixture.json. See docs/sft.md.
"""
from __future__ import annotations

import json
import os

from megatron_s1.config.schema import ConfigError
from megatron_s1.data.chat.dataset import ChatPackedData, ChatPacks, ChatSamples
from megatron_s1.data.chat.format import ChatFormatError, ChatTokenizer, apply_system_prefix, resolve_family_prompts
from megatron_s1.data.chat.mixture import Mixture, parse_specs, read_conversations
from megatron_s1.data.packed import PackedSchedule
from megatron_s1.models.specs import resolve_spec_kind
from megatron_s1.tokenizer import bundled_tokenizer_dir
from megatron_s1.training.tasks import PretrainTask, register_task


def build_chat_data(cfg, tokenizer):
    """(mixture, train ChatSamples, valid ChatSamples) of a config; pure function of the recipe and seed."""
    s = cfg.sft
    specs = parse_specs(s.datasets, s.ratios, s.default_family)
    try:
        prompts = resolve_family_prompts(s.system_prompts, [sp.family for sp in specs])
        chat = ChatTokenizer(tokenizer, s.template, cfg.data.tokenizer or bundled_tokenizer_dir())
    except ChatFormatError as err:
        raise ConfigError(str(err)) from None
    convs = [read_conversations(sp.path) for sp in specs]
    mixture = Mixture(specs, [len(c) for c in convs], cfg.data.split, cfg.run.seed, s.mixture_samples)
    cache: dict = {}

    def tokenized(d: int, i: int):
        key = (d, i)
        if key not in cache:
            rec = convs[d][i]
            family = rec.get("family", specs[d].family)
            if prompts and family is not None and family not in prompts:
                raise ConfigError(f"{specs[d].path} conversation {i}: family {family!r} has no sft.system_prompts "
                                  f"entry (known: {sorted(prompts)})")
            messages = apply_system_prefix(rec["messages"], prompts.get(family) if family is not None else None)
            try:
                cache[key] = chat(messages, s.loss_on)
            except ChatFormatError as err:
                raise ConfigError(f"{specs[d].path} conversation {i}: {err}") from None
        return cache[key]

    seq = cfg.data.seq_length
    train = ChatSamples([tokenized(int(d), int(i)) for d, i in mixture.train], seq)
    valid = ChatSamples([tokenized(int(d), int(i)) for d, i in mixture.valid], seq)
    return mixture, train, valid, chat.kind


@register_task("sft")
class SftTask(PretrainTask):
    """Language-model SFT; model and forward step are CPT's, data and masks are the chat pipeline's."""

    def build_datasets(self, train_samples: int, valid_samples: int):
        cfg, d, trainer = self.cfg, self.cfg.data, self.trainer
        if d.micro_batch_size != 1:
            raise ConfigError("train.task=sft packs conversations: set data.micro_batch_size=1 (one pack per micro-batch)")
        if d.packing not in ("none", "naive", "vlbs"):
            raise ConfigError(f"data.packing must be naive or vlbs for sft, got {d.packing!r}")
        vlbs = d.packing != "naive"  # "none" (the CPT default) means VLBS for SFT
        mixture, train_s, valid_s, kind = build_chat_data(cfg, trainer.tokenizer)
        info = mixture.describe()
        info.update(template=kind, seq_length=d.seq_length, packing="vlbs" if vlbs else "naive",
                    dropped_train=train_s.dropped, train_loss_tokens=train_s.loss_tokens(),
                    valid_loss_tokens=valid_s.loss_tokens())
        if trainer.env.is_main:
            os.makedirs(cfg.run.dir, exist_ok=True)
            with open(os.path.join(cfg.run.dir, "sft_mixture.json"), "w", encoding="utf-8") as f:
                json.dump(info, f, indent=1)
            shares = ", ".join(f"{x['name']}={x['drawn']} ({x['share']:.1%})" for x in info["datasets"])
            print(f"sft mixture: {info['train_samples']} train / {info['valid_samples']} held-out conversations; "
                  f"{shares}; sha256 {info['sha256']}", flush=True)
        if len(train_s) == 0:
            raise ConfigError("sft: no train conversation has an assistant token within data.seq_length")
        train = ChatPacks(train_s, d.seq_length, cfg.run.seed, vlbs, d.packing_epochs)
        per_step, consumed = [], 0
        for _ in range(cfg.train.steps):
            per_step.append(trainer.batch_schedule.num_microbatches(consumed))
            consumed += trainer.batch_schedule.global_batch_tokens(consumed)
        schedule = PackedSchedule(train, per_step, trainer.dp_size, cfg.run.seed, vlbs, d.vlbs_window_steps,
                                  d.vlbs_cost_a, d.vlbs_cost_b)
        with_mask = resolve_spec_kind(cfg.model.spec) == "local"
        valid = None
        if len(valid_s):
            valid = ChatPackedData(ChatPacks(valid_s, d.seq_length, cfg.run.seed, False, 1), None, d.seq_length,
                                   with_mask)
        return ChatPackedData(train, schedule, d.seq_length, with_mask), valid, None
