"""`train.task=sft`: supervised fine-tuning on chat jsonl mixtures, assistant-token loss, packed (VLBS).

sft.datasets lists the chat jsonl files with ratio / epochs / family; data.split cuts every dataset into
train and held-out conversations; data.packing chooses vlbs (default for SFT) or naive packing, one pack
per micro-batch (data.micro_batch_size=1). The loss is the per-token cross-entropy over assistant tokens
(the loop normalises by the global count of assistant tokens), and the eval loss is the same over the
held-out conversations. The sampled mixture is logged to run.dir/sft_mixture.json. See docs/sft.md.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import numpy as np

from megatron_s1.atomic import atomic_open
from megatron_s1.config.schema import ConfigError
from megatron_s1.data.chat.dataset import ChatSamples
from megatron_s1.data.chat.format import (ChatFormatError, ChatTokenizer, Media, Tokenized, apply_system_prefix,
                                          resolve_family_prompts)
from megatron_s1.data.chat.mixture import Mixture, parse_specs, read_conversations
from megatron_s1.data.packed import MaskedPackedData, SamplePacks, train_schedule
from megatron_s1.models.specs import resolve_spec_kind
from megatron_s1.tokenizer import bundled_tokenizer_dir
from megatron_s1.training.tasks import PretrainTask, register_task


def _with_media_paths(messages: list, base: str) -> list:
    """Relative image / series paths of the turns resolved against `base`."""
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            items = []
            for item in content:
                if isinstance(item, dict):
                    for key in ("image", "timeseries", "video"):
                        if isinstance(item.get(key), str) and not os.path.isabs(item[key]):
                            item = dict(item, **{key: os.path.join(base, item[key])})
                    if isinstance(item.get("video"), list):  # a video as its frame files
                        item = dict(item, video=[f if os.path.isabs(f) else os.path.join(base, f)
                                                 for f in item["video"]])
                items.append(item)
            m = dict(m, content=items)
        out.append(m)
    return out


CACHE_VERSION = 1  # bump when formatting or tokenization changes


class MediaLayout:
    """Placeholder ids of images / videos / series inside turns and their encoder inputs (as mm_pretrain)."""

    def __init__(self, cfg, media_ids, encode):
        from megatron_s1.data.multimodal.vision import vision_media

        self.cfg, self.ids = cfg, media_ids
        self.visual = vision_media(cfg.vision, media_ids, encode)

    def expand(self, media) -> list:
        from megatron_s1.data.multimodal.dataset import load_series
        from megatron_s1.models.timeseries.encoder import num_timeseries_tokens

        if media.kind in ("image", "video"):
            if self.visual is None:
                raise ChatFormatError(f"a conversation has an {media.kind} but vision.preset is not set")
            try:
                return self.visual.prompt_ids(media.kind, media.item["image"] if media.kind == "image" else media.item)
            except ValueError as err:
                raise ChatFormatError(str(err)) from None
        t = self.cfg.timeseries
        if t.preset is None:
            raise ChatFormatError("a conversation has a time series but timeseries.preset is not set")
        sr = float(media.item.get("sampling_rate", t.default_sampling_rate))
        length = int(media.item["length"]) if "length" in media.item else load_series(media.item["timeseries"]).shape[0]
        return [self.ids.ts_start] + [self.ids.ts_context] * num_timeseries_tokens(length, sr) + [self.ids.ts_end]

    def load(self, media: list) -> dict:
        from megatron_s1.data.multimodal.dataset import load_media

        items = [("image", m.item["image"]) if m.kind == "image" else (m.kind, m.item) if m.kind == "video" else
                 ("timeseries", m.item["timeseries"],
                  float(m.item.get("sampling_rate", self.cfg.timeseries.default_sampling_rate)))
                 for m in media]
        return load_media(items, self.visual)


class TokenTable:
    """All conversations of one dataset tokenized: flat ids / mask with offsets, media per conversation."""

    def __init__(self, offsets, ids, mask, media):
        self.offsets, self.ids, self.mask, self.media = offsets, ids, mask, media

    @classmethod
    def from_tokenized(cls, items: list) -> "TokenTable":
        lengths = [len(t.ids) for t in items]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        ids = np.fromiter((x for t in items for x in t.ids), dtype=np.int32, count=int(offsets[-1]))
        mask = np.fromiter((x for t in items for x in t.mask), dtype=np.uint8, count=int(offsets[-1]))
        media = [[[m.kind, m.item] for m in t.media] for t in items]
        return cls(offsets, ids, mask, media)

    def save(self, path: str) -> None:
        with atomic_open(path, "wb") as f:
            np.savez(f, offsets=self.offsets, ids=self.ids, mask=self.mask,
                     media=np.frombuffer(json.dumps(self.media).encode(), dtype=np.uint8))

    @classmethod
    def load(cls, path: str) -> "TokenTable":
        z = np.load(path)
        return cls(z["offsets"], z["ids"], z["mask"], json.loads(z["media"].tobytes().decode()))

    def get(self, i: int) -> Tokenized:
        a, b = self.offsets[i], self.offsets[i + 1]
        return Tokenized(self.ids[a:b], self.mask[a:b], [Media(k, item) for k, item in self.media[i]])


class DrawnConversations:
    """Lazy view: item k is conversation pairs[k] = (dataset, index) of the token tables."""

    def __init__(self, tables: list, pairs: np.ndarray):
        self.tables, self.pairs = tables, pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, k: int) -> Tokenized:
        d, i = self.pairs[k]
        return self.tables[int(d)].get(int(i))


def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _cache_key(cfg, spec, chat, prompts, media) -> str:
    tok_dir = cfg.data.tokenizer or bundled_tokenizer_dir()
    tok_files = {n: _file_digest(os.path.join(tok_dir, n)) for n in sorted(os.listdir(tok_dir))
                 if os.path.isfile(os.path.join(tok_dir, n)) and os.path.getsize(os.path.join(tok_dir, n)) < (64 << 20)}
    key = {"version": CACHE_VERSION, "data": _file_digest(spec.path), "family": spec.family, "template": chat.kind,
           "template_text": chat.template_text, "tokenizer": tok_files, "prompts": prompts, "loss_on": cfg.sft.loss_on,
           "root": cfg.mm.image_root or os.path.dirname(os.path.abspath(spec.path)),
           "media": [dataclasses.asdict(cfg.vision), dataclasses.asdict(cfg.timeseries)] if media is not None else None}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]


def tokenize_dataset(cfg, spec, convs: list, chat, prompts: dict) -> list:
    base = cfg.mm.image_root or os.path.dirname(os.path.abspath(spec.path))
    conversations = []
    for i, rec in enumerate(convs):
        family = rec.get("family", spec.family)
        if prompts and family is not None and family not in prompts:
            raise ConfigError(f"{spec.path} conversation {i}: family {family!r} has no sft.system_prompts "
                              f"entry (known: {sorted(prompts)})")
        messages = apply_system_prefix(rec["messages"], prompts.get(family) if family is not None else None)
        conversations.append(_with_media_paths(messages, base))
    try:
        return chat.many(conversations, cfg.sft.loss_on)
    except ChatFormatError:
        for i, messages in enumerate(conversations):  # name the offending conversation
            try:
                chat(messages, cfg.sft.loss_on)
            except ChatFormatError as err:
                raise ConfigError(f"{spec.path} conversation {i}: {err}") from None
        raise


def load_or_tokenize(cfg, d: int, spec, convs: list, chat, prompts: dict, media, cache_dir: str) -> TokenTable:
    """Tokenized dataset from the cache (keyed by data, tokenizer, template, prompts, ...), else built;
    global rank 0 builds and writes it while the others wait, then read it (or build it if the cache dir is
    not shared)."""
    import torch.distributed as dist

    path = os.path.join(cache_dir, f"{spec.name}-{_cache_key(cfg, spec, chat, prompts, media)}.npz")
    distributed = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if distributed else 0
    if rank == 0 and not os.path.exists(path):
        table = TokenTable.from_tokenized(tokenize_dataset(cfg, spec, convs, chat, prompts))
        os.makedirs(cache_dir, exist_ok=True)
        table.save(path)
    if distributed:
        dist.barrier()
    if os.path.exists(path):
        return TokenTable.load(path)
    return TokenTable.from_tokenized(tokenize_dataset(cfg, spec, convs, chat, prompts))


def build_chat_data(cfg, tokenizer, media: "MediaLayout | None" = None):
    """(mixture, train ChatSamples, valid ChatSamples, template kind) of a config; pure function of the recipe."""
    s = cfg.sft
    specs = parse_specs(s.datasets, s.ratios, s.default_family)
    try:
        prompts = resolve_family_prompts(s.system_prompts, [sp.family for sp in specs])
        chat = ChatTokenizer(tokenizer, s.template, cfg.data.tokenizer or bundled_tokenizer_dir(),
                             media_expand=media.expand if media is not None else None)
    except ChatFormatError as err:
        raise ConfigError(str(err)) from None
    convs = [read_conversations(sp.path) for sp in specs]
    mixture = Mixture(specs, [len(c) for c in convs], cfg.data.split, cfg.run.seed, s.mixture_samples)
    cache_dir = os.path.join(cfg.data.cache_dir or os.path.join(cfg.run.dir, "data_cache"), "sft")
    tables = [load_or_tokenize(cfg, d, spec, convs[d], chat, prompts, media, cache_dir) for d, spec in enumerate(specs)]

    seq = cfg.data.seq_length
    families: dict = {}
    for d, i in mixture.train:
        fam = str(convs[int(d)][int(i)].get("family", specs[int(d)].family))
        families[fam] = families.get(fam, 0) + 1
    mixture.families = families  # drawn train conversations per data family (system-prompt isolation)
    train = ChatSamples(DrawnConversations(tables, mixture.train), seq)
    valid = ChatSamples(DrawnConversations(tables, mixture.valid), seq)
    return mixture, train, valid, chat.kind


@register_task("sft")
class SftTask(PretrainTask):
    """SFT of the language model (CPT's model and forward step) or, with vision.preset / timeseries.preset, of
    InternS1Model with images and series inside turns; data and masks are the chat pipeline's."""

    def __init__(self, trainer):
        super().__init__(trainer)
        cfg = self.cfg
        self.multimodal = cfg.vision.preset is not None or cfg.timeseries.preset is not None
        self.media = None
        if self.multimodal:
            from megatron_s1.data.multimodal.tokens import media_tokens_for_model

            self.media_ids = media_tokens_for_model(trainer.tokenizer, cfg.model.vocab_size, cfg.vision.arch)
            self.media = MediaLayout(cfg, self.media_ids, trainer.tokenizer.encode)

    def check_inputs(self) -> None:
        """The mixture's files exist (their lines are checked, with file:line, when they are read)."""
        s = self.cfg.sft
        for spec in parse_specs(s.datasets, s.ratios, s.default_family):
            if not os.path.isfile(spec.path):
                raise ConfigError(f"sft dataset {spec.path!r} does not exist; fix the path in sft.datasets")

    def build_model(self, tconfig, pre_process: bool, post_process: bool, vp_stage=None):
        if not self.multimodal:
            return super().build_model(tconfig, pre_process, post_process, vp_stage)
        from megatron_s1.models.interns1.model import build_interns1_model

        return build_interns1_model(self.cfg, tconfig, pre_process, post_process, vp_stage=vp_stage,
                                    token_ids=self.media_ids)

    def build_datasets(self, train_samples: int, valid_samples: int):
        cfg, d, trainer = self.cfg, self.cfg.data, self.trainer
        if d.micro_batch_size != 1:
            raise ConfigError("train.task=sft packs conversations: set data.micro_batch_size=1 (one pack per micro-batch)")
        if d.packing not in ("none", "naive", "vlbs"):
            raise ConfigError(f"data.packing must be naive or vlbs for sft, got {d.packing!r}")
        vlbs = d.packing != "naive"  # "none" (the CPT default) means VLBS for SFT
        mixture, train_s, valid_s, kind = build_chat_data(cfg, trainer.tokenizer, self.media)
        info = mixture.describe()
        info.update(families=mixture.families, template=kind, seq_length=d.seq_length, packing="vlbs" if vlbs else "naive",
                    dropped_train=train_s.dropped, train_loss_tokens=train_s.loss_tokens(),
                    valid_loss_tokens=valid_s.loss_tokens())
        if trainer.env.is_main:
            os.makedirs(cfg.run.dir, exist_ok=True)
            with open(os.path.join(cfg.run.dir, "sft_mixture.json"), "w", encoding="utf-8") as f:
                json.dump(info, f, indent=1)
            shares = ", ".join(f"{x['name']}={x['drawn']} ({x['share']:.1%}, {x['passes']:g} passes)"
                               for x in info["datasets"])
            pool = sum(x["train_conversations"] for x in info["datasets"])
            print(f"sft mixture: {info['train_samples']} train samples drawn from {pool} train conversations / "
                  f"{info['valid_samples']} held-out conversations; {shares}; sha256 {info['sha256']}", flush=True)
        if len(train_s) == 0:
            raise ConfigError("sft: no train conversation has an assistant token within data.seq_length")
        with_mask = resolve_spec_kind(cfg.model.spec) == "local"
        # InternS1Model takes no THD parameters: with TE (no explicit mask) multimodal SFT runs one conversation
        # per micro-batch (padded, causal); with the local spec packs use the block-diagonal mask.
        alone = self.multimodal and not with_mask
        loader = self.media.load if self.multimodal else None
        train = SamplePacks(train_s, d.seq_length, cfg.run.seed, vlbs, d.packing_epochs, one_per_pack=alone)
        schedule = train_schedule(train, cfg, trainer, vlbs)
        valid = None
        if len(valid_s):
            valid = MaskedPackedData(SamplePacks(valid_s, d.seq_length, cfg.run.seed, False, 1, one_per_pack=alone),
                                     None, d.seq_length, with_mask, loader, cu_seqlens=not alone)
        return MaskedPackedData(train, schedule, d.seq_length, with_mask, loader, cu_seqlens=not alone), valid, None
