"""config.json -> model fields: RoPE is read as transformers reads it, and RoPE scaling is refused, not dropped.

transformers itself is the oracle: whatever rope_type / rope_theta `Qwen3Config.from_dict` ends up with is what
the HF model computes, so a converted model must either reproduce it (plain RoPE, same base) or not be written.
"""
import copy
import json

import pytest

from megatron_s1.conversion.hf_config import hf_to_model_fields, hf_to_sections
from megatron_s1.conversion.mappings import ConversionError
from tests.conftest import reference_path
from tests.conversion.hf_models import COMMON

BASE = dict(COMMON, architectures=["Qwen3ForCausalLM"], model_type="qwen3", intermediate_size=128)
YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128}

CASES = {
    # The case: default rope_parameters and a YaRN rope_scaling block (transformers applies the YaRN).
    "default-parameters-yarn-scaling": dict(rope_parameters={"rope_type": "default", "rope_theta": 1e6},
                                            rope_scaling=YARN),
    "legacy-type-linear": dict(rope_scaling={"type": "linear", "factor": 2.0}),
    "parameters-dynamic": dict(rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e6}),
    "parameters-yarn": dict(rope_parameters=dict(YARN, rope_theta=1e6)),
    "nested-yarn": dict(rope_parameters={"full_attention": dict(YARN, rope_theta=1e6)}),
    # Plain RoPE spelled every way; rope_scaling, when non-empty, replaces rope_parameters (theta included).
    "top-level-theta": dict(rope_theta=5e5),
    "parameters-theta": dict(rope_parameters={"rope_type": "default", "rope_theta": 1e6}),
    "null-scaling": dict(rope_scaling=None, rope_theta=1e6),
    "default-scaling-replaces-parameters": dict(rope_parameters={"rope_type": "default", "rope_theta": 1e6},
                                                rope_scaling={"rope_type": "default"}),
    "nested-default": dict(rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 2e6}}),
}


def transformers_rope(hf: dict) -> dict:
    """The RoPE parameters the transformers model is built with."""
    import transformers

    params = transformers.Qwen3Config.from_dict(copy.deepcopy(hf)).rope_parameters
    return params.get("full_attention", params)


@pytest.mark.parametrize("case", list(CASES))
def test_rope_read_as_transformers_reads_it(case):
    hf = dict(BASE, **CASES[case])
    expected = transformers_rope(hf)
    if expected["rope_type"] == "default":
        assert hf_to_model_fields(hf)[1]["rotary_base"] == expected["rope_theta"]
    else:
        with pytest.raises(ConversionError) as err:
            hf_to_model_fields(hf)
        message = str(err.value)
        field = "rope_scaling" if hf.get("rope_scaling") else "rope_parameters"
        assert f"config.json {field}" in message and f"rope_type={expected['rope_type']!r}" in message, message
        assert "remove" in message and "\n" not in message


def test_pro_rope_scaling_keeps_fope_and_refuses_yarn():
    """Intern-S1-Pro keeps its FoPE keys in rope_scaling (default rope_type): mapped; a YaRN type there refused."""
    with open(reference_path("intern-s1-pro", "config.json"), encoding="utf-8") as f:
        hf = json.load(f)
    _arch, sections = hf_to_sections(hf)
    assert sections["model"]["position_embedding_type"] == "fope"
    assert sections["model"]["rotary_base"] == hf["text_config"]["rope_theta"]
    hf["text_config"]["rope_scaling"].update(YARN)
    with pytest.raises(ConversionError, match="rope_scaling has rope_type='yarn'"):
        hf_to_sections(hf)
