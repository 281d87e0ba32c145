import glob
import os
import sys

import pytest

from megatron_s1.config import ConfigError, load_config
from megatron_s1.config.schema import parse_overrides
from megatron_s1.models.language import validate_model_parallel
from megatron_s1.models.presets import PRESETS
from tests.conftest import RECIPE


def test_recipe_and_overrides_resolve():
    cfg = load_config(RECIPE, ["train.steps=7", "model.num_layers=4", "optimizer.lr=2e-4"])
    assert cfg.train.steps == 7
    assert cfg.model.num_layers == 4  # explicit key beats the preset
    assert cfg.model.num_moe_experts == PRESETS["tiny-moe"]["num_moe_experts"]  # from the preset
    assert cfg.optimizer.lr == 2e-4


def test_intern_s1_preset_has_published_shape():
    cfg = load_config(None, ["model.preset=intern-s1"])
    m = cfg.model
    assert (m.num_layers, m.hidden_size, m.num_attention_heads, m.num_query_groups, m.kv_channels) == (94, 4096, 64, 4, 128)
    assert (m.num_moe_experts, m.moe_router_topk, m.moe_ffn_hidden_size, m.vocab_size) == (128, 8, 1536, 153216)
    assert m.rotary_base == 1_000_000 and m.norm_epsilon == 1e-6 and m.qk_layernorm
    assert m.untie_embeddings_and_output_weights and m.moe_norm_topk_prob
    mini = load_config(None, ["model.preset=intern-s1-mini"]).model
    assert (mini.num_layers, mini.num_attention_heads, mini.num_query_groups, mini.ffn_hidden_size) == (36, 32, 8, 12288)
    assert mini.num_moe_experts is None


def test_unknown_key_suggests_closest():
    with pytest.raises(ConfigError, match=r"unknown config key 'train.stpes'; did you mean 'steps'"):
        load_config(RECIPE, ["train.stpes=3"])
    with pytest.raises(ConfigError, match=r"unknown config key 'modle'; did you mean 'model'"):
        load_config(None, ["modle.num_layers=3"])


def test_type_errors_and_bad_override_form():
    with pytest.raises(ConfigError, match="expects an integer"):
        load_config(None, ["train.steps=abc"])
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_overrides(["train.steps"])
    with pytest.raises(ConfigError, match="unknown model preset|choose one of"):
        load_config(None, ["model.preset=gpt5"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("no/such/recipe.yaml")


@pytest.mark.parametrize("override", ["model.num_layers=-1", "model.hidden_size=0", "model.num_attention_heads=0",
                                      "data.micro_batch_size=0", "train.steps=-1"])
def test_out_of_range_sizes_are_config_errors(override):
    # before the model is built: a negative layer count used to fail deep in the build (math domain error)
    key, value = override.split("=")
    with pytest.raises(ConfigError, match=rf"^{key}={value} must be >= [01]$"):
        load_config(RECIPE, [override])


def _cfg(*overrides):
    return load_config(None, ["model.preset=tiny-moe", *overrides])


def test_parallel_layout_errors():
    cfg = _cfg("parallel.tensor=3")
    with pytest.raises(ConfigError, match="parallel.tensor=3 does not divide model.num_attention_heads=4"):
        validate_model_parallel(cfg.model, cfg.parallel, world_size=3)
    cfg = _cfg("parallel.expert=3")
    with pytest.raises(ConfigError, match="parallel.expert=3 does not divide model.num_moe_experts=4"):
        validate_model_parallel(cfg.model, cfg.parallel, world_size=3)
    cfg = _cfg("parallel.tensor=2", "parallel.pipeline=2")
    with pytest.raises(ConfigError, match="world size 6 is not divisible by TPxPPxCP = 2x2x1"):
        validate_model_parallel(cfg.model, cfg.parallel, world_size=6)
    cfg = load_config(None, ["model.preset=tiny-dense", "parallel.expert=2"])
    with pytest.raises(ConfigError, match="needs an MoE model"):
        validate_model_parallel(cfg.model, cfg.parallel, world_size=2)
    cfg = _cfg("parallel.pipeline=2", "parallel.virtual_pipeline=2")
    with pytest.raises(ConfigError, match="num_layers=2 is not divisible"):
        validate_model_parallel(cfg.model, cfg.parallel, world_size=2)
    cfg = _cfg("parallel.tensor=2", "parallel.expert=2")
    validate_model_parallel(cfg.model, cfg.parallel, world_size=4)  # a valid layout passes


@pytest.mark.parametrize("overrides,processes", [(["parallel.tensor=2"], 2),
                                                 (["parallel.tensor=2", "parallel.expert=2"], 4),
                                                 (["parallel.pipeline=2", "parallel.expert=2"], 4)])
def test_model_parallel_without_torchrun_says_how_to_launch(monkeypatch, overrides, processes):
    """One plain process with a model-parallel layout: the error names the torchrun command (lcm of TPxPPxCP and
    ETPxEPxPP processes)."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    argv = ["train", "--config", "examples/cpt/tiny_cpu.yaml", *overrides]
    monkeypatch.setattr(sys, "argv", ["/venv/bin/megatron-s1", *argv])
    cfg = _cfg(*overrides)
    with pytest.raises(ConfigError) as err:
        validate_model_parallel(cfg.model, cfg.parallel, world_size=1)
    assert str(err.value).startswith(f"{' '.join(overrides)} needs {processes} processes")
    assert str(err.value).endswith(f"torchrun --nproc-per-node {processes} -m megatron_s1.cli {' '.join(argv)}")
    monkeypatch.setenv("WORLD_SIZE", "1")  # under torchrun with one worker: the divisibility error
    with pytest.raises(ConfigError, match="world size 1 is not divisible"):
        validate_model_parallel(cfg.model, cfg.parallel, world_size=1)


def test_yaml_booleans_in_string_fields():
    from megatron_s1.training.checkpointing import _uses_distributed_optimizer

    cfg = load_config(None, ["parallel.distributed_optimizer=true", "logging.progress_bar=off"])
    assert cfg.parallel.distributed_optimizer == "on" and cfg.logging.progress_bar == "off"
    assert _uses_distributed_optimizer(cfg)
    assert not _uses_distributed_optimizer(load_config(None, ["parallel.distributed_optimizer=false"]))


@pytest.mark.parametrize("recipe", sorted(glob.glob(os.path.join(os.path.dirname(RECIPE), "..", "*", "*.yaml"))))
def test_every_recipe_resolves(recipe):
    """Recipes are data: every shipped one must load against the current schema (no stale keys)."""
    assert load_config(recipe).train.steps > 0


@pytest.mark.parametrize("recipe,world_size", [("intern_s1.yaml", 512), ("intern_s1_mini.yaml", 64)])
def test_real_scale_cpt_layouts_are_valid(recipe, world_size):
    from megatron_s1.training.schedules import BatchSizeSchedule

    cfg = load_config(os.path.join(os.path.dirname(RECIPE), recipe))
    validate_model_parallel(cfg.model, cfg.parallel, world_size)
    dp = world_size // (cfg.parallel.tensor * cfg.parallel.pipeline)
    schedule = BatchSizeSchedule(cfg.train.global_batch_tokens, cfg.data.seq_length, cfg.data.micro_batch_size, dp)
    assert schedule.global_batch_tokens(0) < schedule.global_batch_tokens(10**13)  # batch warmup present
