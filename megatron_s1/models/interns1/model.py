"""InternS1Model: vision and time-series embeddings merged into the text embeddings of a Megatron GPTModel.

The vision tower is InternViT + pixel-unshuffle projector (vision.arch=internvit, Intern-S1; images as 448 px
tiles) or the Intern-S1-Pro ViT + patch merger (vision.arch=pro; images and videos as flattened patches with
their `grid_thw`, filling the `<|image_pad|>` / `<|video_pad|>` placeholders). With a Pro text backbone
(grouped router, FoPE: `model.*`) and vision.arch=pro this is the Intern-S1-Pro composite.

On the first pipeline stage (pre_process) the model owns the encoders: it embeds the tokens with the
language model's word embeddings, replaces the rows at `<IMG_CONTEXT>` / `<TS_CONTEXT>` positions with the
projected encoder outputs (in order of appearance), scatters to the sequence-parallel region when SP is on,
and feeds the result to GPTModel as `decoder_input`. Later stages are plain GPTModel stages.

Parameter names: `vision_model.*`, `vision_projection.*`, `timeseries_model.*`, `language_model.*`
(the language model's own names are GPTModel's). See docs/multimodal.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from megatron.core import tensor_parallel
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.moe.router import TopKRouter

from megatron_s1.config.schema import ConfigError
from megatron_s1.models.language import build_language_model
from megatron_s1.models.pro.vision.model import ProPatchMerger, ProVisionModel, build_pro_vision_config
from megatron_s1.models.timeseries.encoder import TimeSeriesModel
from megatron_s1.models.vision.internvit import (InternViTModel, VisionProjection, build_vision_transformer_config,
                                                 vision_tokens)


@dataclass
class MediaTokenIds:
    img_start: int
    img_end: int
    img_context: int
    ts_start: int
    ts_end: int
    ts_context: int
    video_context: Optional[int] = None  # Pro: video frames' patch tokens (`<|video_pad|>`)

    def all(self) -> list[int]:
        ids = [self.img_start, self.img_end, self.img_context, self.ts_start, self.ts_end, self.ts_context]
        return ids + ([self.video_context] if self.video_context is not None else [])


def merge_embeddings(text: torch.Tensor, input_ids: torch.Tensor, token_id: int, media: Optional[torch.Tensor],
                     name: str) -> torch.Tensor:
    """Replace text[b, s] rows where input_ids == token_id by the rows of media [n, h] (row-major order).

    text is [b, s, h]. Raises ValueError when the placeholder count differs from the number of media rows.
    """
    positions = input_ids == token_id
    count = int(positions.sum())
    rows = 0 if media is None else media.shape[0]
    if count != rows:
        raise ValueError(f"{name}: the batch has {count} placeholder tokens (id {token_id}) but the encoder "
                         f"produced {rows} embeddings; the prompt expansion and the media disagree "
                         "(truncated sample, wrong tile count or wrong downsample ratio?)")
    if count == 0:
        return text
    out = text.clone()
    out[positions] = media.to(text.dtype)
    return out


class InternS1Model(MegatronModule):
    def __init__(self, cfg, config: TransformerConfig, pre_process: bool, post_process: bool, vp_stage=None,
                 token_ids: Optional[MediaTokenIds] = None):
        super().__init__(config=config)
        self.pre_process, self.post_process = pre_process, post_process
        self.token_ids = token_ids
        self.language_model = build_language_model(cfg, config, pre_process, post_process, vp_stage=vp_stage)
        self.vision_model = self.vision_projection = self.timeseries_model = None
        self.downsample_ratio = cfg.vision.downsample_ratio
        self.vision_arch = cfg.vision.arch
        if self.vision_arch not in ("internvit", "pro"):
            raise ConfigError(f"vision.arch={self.vision_arch!r}; choose internvit (Intern-S1) or pro (Intern-S1-Pro)")
        if pre_process and cfg.vision.preset is not None and self.vision_arch == "pro":
            self.vision_config = build_pro_vision_config(cfg.vision, config)
            self.vision_model = ProVisionModel(self.vision_config, cfg.vision)
            self.vision_projection = ProPatchMerger(self.vision_config, cfg.vision.spatial_merge_size,
                                                    cfg.model.hidden_size)
        elif pre_process and cfg.vision.preset is not None:
            self.vision_config = build_vision_transformer_config(cfg.vision, config)
            self.vision_model = InternViTModel(self.vision_config, cfg.vision)
            factor = int(round(1 / cfg.vision.downsample_ratio)) ** 2
            self.vision_projection = VisionProjection(self.vision_config, cfg.vision.hidden_size * factor,
                                                      cfg.model.hidden_size)
        if pre_process and cfg.timeseries.preset is not None:
            self.timeseries_model = TimeSeriesModel(cfg.timeseries, cfg.model.hidden_size, config.params_dtype)

        # Megatron's grad finalisation (tied embeddings across PP stages) looks these up on the model chunk.
        self.share_embeddings_and_output_weights = self.language_model.share_embeddings_and_output_weights

    def shared_embedding_or_output_weight(self):
        return self.language_model.shared_embedding_or_output_weight()

    def set_input_tensor(self, input_tensor) -> None:
        self.language_model.set_input_tensor(input_tensor)

    def encode_images(self, pixel_values: torch.Tensor, grid_thw: Optional[torch.Tensor] = None) -> torch.Tensor:
        """InternViT: tiles [n, 3, S, S] -> [n * tokens_per_tile, llm_hidden]. Pro: patches [P, C*T*p*p] of
        items with grids grid_thw [n, 3] -> [P / m^2, llm_hidden] (one row per placeholder token)."""
        if self.vision_model is None:
            raise ValueError("the batch has images but the model has no vision tower; set vision.preset")
        if self.vision_arch == "pro":
            if grid_thw is None:
                raise ValueError("vision.arch=pro needs the grid_thw of the images / videos with their pixels")
            return self.vision_projection(self.vision_model(pixel_values, grid_thw))
        feats = vision_tokens(self.vision_model(pixel_values), self.downsample_ratio)
        return self.vision_projection(feats).reshape(-1, self.config.hidden_size)

    def embed(self, input_ids, pixel_values=None, ts_values=None, ts_rates=None, image_grid_thw=None,
              pixel_values_videos=None, video_grid_thw=None) -> torch.Tensor:
        """Merged input embeddings [s, b, h] (before any sequence-parallel scatter)."""
        word = self.language_model.embedding.word_embeddings
        # With sequence parallelism the vocab-parallel embedding would reduce-scatter along the sequence; the
        # merge needs whole sequences, so take the all-reduced [b, s, h] output and scatter after merging.
        scatter = getattr(word, "reduce_scatter_embeddings", False)
        word.reduce_scatter_embeddings = False
        try:
            emb = word(input_ids)  # [b, s, h]
        finally:
            word.reduce_scatter_embeddings = scatter
        ids = self.token_ids
        if ids is not None:
            img = None
            if pixel_values is not None and pixel_values.shape[0] > 0:
                img = self.encode_images(pixel_values, image_grid_thw)
            emb = merge_embeddings(emb, input_ids, ids.img_context, img, "images")
            if ids.video_context is not None:
                video = None
                if pixel_values_videos is not None and pixel_values_videos.shape[0] > 0:
                    video = self.encode_images(pixel_values_videos, video_grid_thw)
                emb = merge_embeddings(emb, input_ids, ids.video_context, video, "videos")
            elif pixel_values_videos is not None:
                raise ValueError("the batch has videos but no video placeholder token id is set")
            ts = None
            if ts_values:
                if self.timeseries_model is None:
                    raise ValueError("the batch has time series but the model has no time-series encoder; "
                                     "set timeseries.preset")
                ts = self.timeseries_model(ts_values, ts_rates)
            emb = merge_embeddings(emb, input_ids, ids.ts_context, ts, "time series")
        return emb.transpose(0, 1).contiguous()

    def forward(self, input_ids, position_ids, attention_mask, labels=None, pixel_values=None, ts_values=None,
                ts_rates=None, packed_seq_params=None, image_grid_thw=None, pixel_values_videos=None,
                video_grid_thw=None, **lm_kwargs):
        """A packed row (several samples) runs with a block-diagonal mask and restarting position ids (local
        spec) or with THD `packed_seq_params` (TE); media rows are merged in order over the whole row either way.
        ``lm_kwargs`` go to the language model (e.g. ``inference_context`` / ``runtime_gather_output`` of
        KV-cached generation: images enter with the prefill, decode steps carry text tokens only)."""
        decoder_input = None
        if self.pre_process:
            decoder_input = self.embed(input_ids, pixel_values, ts_values, ts_rates, image_grid_thw,
                                       pixel_values_videos, video_grid_thw)
            if self.config.sequence_parallel:
                decoder_input = tensor_parallel.scatter_to_sequence_parallel_region(decoder_input)
        return self.language_model(input_ids, position_ids, attention_mask, decoder_input=decoder_input,
                                   labels=labels, packed_seq_params=packed_seq_params, **lm_kwargs)


def build_interns1_model(cfg, config, pre_process, post_process, vp_stage=None, token_ids=None) -> InternS1Model:
    model = InternS1Model(cfg, config, pre_process, post_process, vp_stage=vp_stage, token_ids=token_ids)
    apply_freeze(model, cfg.mm)
    return model


def apply_freeze(model: InternS1Model, mm) -> list[str]:
    """requires_grad=False for the frozen parts; returns the frozen parameter names."""
    frozen = []

    def freeze(module, prefix):
        if module is None:
            return
        for name, p in module.named_parameters(prefix=prefix):
            p.requires_grad_(False)
            frozen.append(name)

    if mm.freeze_vision:
        freeze(model.vision_model, "vision_model")
    if mm.freeze_projector:
        freeze(model.vision_projection, "vision_projection")
    if mm.freeze_timeseries:
        freeze(model.timeseries_model, "timeseries_model")
    if mm.freeze_language_model:
        freeze(model.language_model, "language_model")
    elif mm.freeze_router:
        for name, module in model.language_model.named_modules(prefix="language_model"):
            if isinstance(module, TopKRouter):
                freeze(module, name)
    return frozen


def precision_plan(model: InternS1Model) -> dict[str, str]:
    """GEMM precision of every linear-like module: 'fp8' for the LLM's GEMMs when its config enables FP8,
    'bf16'/'fp32' (the params dtype) for the vision tower, projector and time-series encoder.

    The encoders are built from a config with fp8=None and from non-TE modules, and Megatron enters the FP8
    autocast only inside the language model's TransformerBlock, so this mirrors what runs.
    """
    plan = {}
    llm_fp8 = model.config.fp8 is not None
    base = {torch.bfloat16: "bf16", torch.float32: "fp32", torch.float16: "fp16"}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.dim() < 2 or "embedding" in name.split(".")[-1]:
            continue
        if name.startswith("language_model."):
            # FP8 autocast covers the decoder block's GEMMs; routers run in fp32 and the output layer sits
            # outside the block, so both keep the params dtype.
            in_block = name.startswith("language_model.decoder.") and not isinstance(module, TopKRouter)
            plan[name] = "fp8" if (llm_fp8 and in_block) else base[weight.dtype]
        else:
            enc_cfg = getattr(module, "config", None)
            if enc_cfg is not None and getattr(enc_cfg, "fp8", None) is not None:
                raise AssertionError(f"encoder module {name} has an FP8 config")
            plan[name] = base[weight.dtype]
    return plan
