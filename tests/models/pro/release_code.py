"""The Intern-S1-Pro release code (../shared/reference/intern-s1-pro) loaded as the parity oracle (modeling,
processors, tokenizer), and tiny random checkpoints written from it in the released layout.

The release targets transformers 4.57; on ours (5.x) a few imports moved. The shims below only restore
those names (OutputRecorder, a no-argument `check_model_inputs()`, the video docstring constant, the config's
pad_token_id) and give the decoder the causal mask the old `create_causal_mask` built for eager attention
without padding; the modeling itself runs unchanged.
"""
from __future__ import annotations

import importlib
import json
import os
import sys
import types

import torch

from tests.conftest import reference_path
from tests.conversion.hf_models import write_two_shards

PACKAGE = "interns1_pro_release"

# Tiny shapes in the release config.json layout (text: FoPE per KV head, 8 experts in 2 groups; vision: 2
# layers x 32, 2 heads of 16, an 8 x 8 position table). Token ids sit above the random text ids.
TEXT = dict(attention_bias=False, attention_dropout=0.0, bos_token_id=1, eos_token_id=2, decoder_sparse_step=1,
            head_dim=16, hidden_act="silu", hidden_size=64, initializer_range=0.1, intermediate_size=128,
            max_position_embeddings=512, mlp_only_layers=[], model_type="interns1_pro_text",
            moe_intermediate_size=32, norm_topk_prob=True, num_attention_heads=4, num_experts=8,
            num_experts_per_tok=4, num_hidden_layers=2, num_key_value_heads=2, rms_norm_eps=1e-6,
            rope_scaling={"rope_type": "default", "fope_init_factor": 0.5, "fope_sep_head": True,
                          "num_inv_freq": None},
            rope_theta=10000, router_n_groups=2, use_cache=False, vocab_size=320, dtype="float32")
VISION = dict(depth=2, hidden_act="gelu_pytorch_tanh", hidden_size=32, in_channels=3, initializer_range=0.1,
              intermediate_size=64, model_type="interns1_pro_vision", num_heads=2, num_position_embeddings=64,
              out_hidden_size=64, patch_size=16, spatial_merge_size=2, temporal_patch_size=2)
TOKENS = dict(image_token_id=310, video_token_id=311, vision_start_token_id=312, vision_end_token_id=313)


def release_module(name: str):
    """`modeling_interns1_pro`, `configuration_interns1_pro`, `processing_interns1_pro`, ... of the release."""
    folder = reference_path("intern-s1-pro")
    if PACKAGE not in sys.modules:
        import transformers.masking_utils  # noqa: F401
        import transformers.utils.generic as generic
        import transformers.video_processing_utils as video_utils
        from transformers.utils.output_capturing import OutputRecorder

        generic.OutputRecorder = getattr(generic, "OutputRecorder", OutputRecorder)
        plain = generic.check_model_inputs
        generic.check_model_inputs = lambda func=None, **_: (lambda f: f) if func is None else plain(func)
        video_utils.BASE_VIDEO_PROCESSOR_DOCSTRING = getattr(video_utils, "BASE_VIDEO_PROCESSOR_DOCSTRING", "")
        package = types.ModuleType(PACKAGE)
        package.__path__ = [folder]
        sys.modules[PACKAGE] = package
    module = importlib.import_module(f"{PACKAGE}.{name}")
    if name == "modeling_interns1_pro":
        module.create_causal_mask = _causal_mask
    return module


def _preprocessor_config(name: str) -> dict:
    with open(reference_path("intern-s1-pro", name)) as f:
        return {k: v for k, v in json.load(f).items() if k not in ("auto_map", "image_processor_type")}


def release_image_processor(backend: str = "pil"):
    """The release's image processor (`preprocessor_config.json`: transformers' Qwen2-VL image processor):
    backend pil (always installed) or torchvision (what `Qwen2VLImageProcessorFast` means in transformers 5)."""
    if backend == "torchvision":
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor as cls
    else:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil as cls
    return cls(**_preprocessor_config("preprocessor_config.json"))


def release_video_processor():
    """The release's InternS1ProVideoProcessor (needs torchvision, as transformers' video processors do).

    Its `_preprocess` passes the resampling filter as `interpolation=` (transformers 4.57's keyword); 5.x
    renamed it `resample=` and would silently resize bilinearly: the subclass only restores the keyword."""
    base = release_module("video_processing_interns1_pro").InternS1ProVideoProcessor

    class VideoProcessor(base):
        def resize(self, image, size, resample=None, interpolation=None, **kwargs):
            return super().resize(image, size, resample=interpolation if resample is None else resample, **kwargs)

    return VideoProcessor(**_preprocessor_config("video_preprocessor_config.json"))


def release_tokenizer():
    import importlib.util

    spec = importlib.util.spec_from_file_location("interns1_pro_tokenizer",
                                                  reference_path("intern-s1-pro", "tokenization_interns1.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.InternS1Tokenizer.from_pretrained(reference_path("intern-s1-pro"))


def release_processor(image_processor, video_processor=None):
    """InternS1ProProcessor of the release over these processors and the release tokenizer. Without torchvision
    there is no video processor; transformers 5 then refuses video_processor=None, which the subclass allows."""
    base = release_module("processing_interns1_pro").InternS1ProProcessor

    class Processor(base):
        def check_argument_for_proper_class(self, name, arg):
            return None if arg is None else super().check_argument_for_proper_class(name, arg)

    return Processor(image_processor=image_processor, tokenizer=release_tokenizer(), video_processor=video_processor)


def _causal_mask(config, input_embeds, attention_mask=None, **_):
    b, t = input_embeds.shape[:2]
    mask = torch.full((t, t), torch.finfo(input_embeds.dtype).min, dtype=input_embeds.dtype).triu(1)
    return mask[None, None].expand(b, 1, t, t)


def tiny_config() -> dict:
    return {"architectures": ["InternS1ProForConditionalGeneration"], "model_type": "interns1_pro",
            "text_config": dict(TEXT), "vision_config": dict(VISION), "tie_word_embeddings": False, **TOKENS}


def release_model(config: dict):
    """InternS1ProForConditionalGeneration of the release, fp32, eager attention, random weights."""
    modeling = release_module("modeling_interns1_pro")
    configuration = release_module("configuration_interns1_pro")
    cfg = configuration.InternS1ProConfig(**{k: v for k, v in config.items() if k != "architectures"})
    cfg.text_config.pad_token_id = None
    for c in (cfg, cfg.text_config, cfg.vision_config):
        c._attn_implementation = "eager"
    return modeling.InternS1ProForConditionalGeneration(cfg).float().eval()


def write_release_checkpoint(out_dir: str, seed: int = 0) -> str:
    """A random tiny Pro checkpoint as the release lays it out (per-expert tensors, `model.visual.*`, one FoPE
    coefficient pair), every tensor O(0.1..1) so that a wrong mapping shows in the logits."""
    torch.manual_seed(seed)
    config = tiny_config()
    model = release_model(config)
    state = {}
    for name, tensor in model.state_dict().items():
        if "norm" in name and name.endswith("weight"):
            tensor = 1.0 + 0.1 * torch.randn_like(tensor)
        elif name.startswith("model.visual.") or name.endswith(".bias"):
            tensor = 0.1 * torch.randn_like(tensor)
        state[name] = tensor.detach().contiguous()
    os.makedirs(out_dir, exist_ok=True)
    write_two_shards(state, out_dir)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    return out_dir


def load_release_checkpoint(hf_dir: str):
    from safetensors.torch import load_file

    with open(os.path.join(hf_dir, "config.json")) as f:
        model = release_model(json.load(f))
    with open(os.path.join(hf_dir, "model.safetensors.index.json")) as f:
        files = sorted(set(json.load(f)["weight_map"].values()))
    state = {}
    for file in files:
        state.update(load_file(os.path.join(hf_dir, file)))
    model.load_state_dict(state, strict=True)
    return model
