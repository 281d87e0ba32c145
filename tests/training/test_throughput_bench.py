"""bench/throughput.py wiring on CPU: shapes, named variants, global batch of the 2x-micro-batch variants, CLI errors."""
import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from megatron_s1.config import load_config
from megatron_s1.training.flops import training_flops_per_token
from tests.conftest import run_cli

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_spec = importlib.util.spec_from_file_location("throughput_bench", os.path.join(REPO, "bench", "throughput.py"))
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def _model_cfg(shape):
    return load_config(None, [f"model.{k}={'null' if v is None else v}" for k, v in shape.items()
                              if k not in ("seq_length", "micro_batch_size")]).model


def test_issue_slices_have_the_issue_shapes():
    a3b, mini = bench.SHAPES["qwen3-30b-a3b-slice"], bench.SHAPES["intern-s1-mini-slice"]
    assert (a3b["hidden_size"], a3b["num_attention_heads"], a3b["num_query_groups"], a3b["num_moe_experts"],
            a3b["moe_router_topk"], a3b["moe_ffn_hidden_size"], a3b["vocab_size"], a3b["seq_length"]) == \
        (2048, 32, 4, 128, 8, 768, 151936, 4096)
    assert (mini["hidden_size"], mini["num_query_groups"], mini["ffn_hidden_size"], mini["num_moe_experts"]) == \
        (4096, 8, 12288, None)
    assert a3b["num_layers"] >= 8 and mini["num_layers"] >= 8
    # One FLOP formula for every peer: 6 x active parameters (8 x (19M attention + 8 experts x 4.7M) + 311M LM head
    # = 0.77B) = 4.6e9, plus the attention core.
    assert 4.6e9 < training_flops_per_token(_model_cfg(a3b), 4096) < 6.0e9


def test_named_variants_resolve_and_load_as_configs(tmp_path):
    shape = bench.SHAPES["qwen3-30b-a3b-slice"]
    runs = bench.resolve_runs("hf,hf-compile,ours-bf16,recompute-moe,mbs2x,fp8-blockwise-param-pad", shape, {})
    assert list(runs) == ["hf", "hf-compile", "ours-bf16", "recompute-moe", "mbs2x", "fp8-blockwise-param-pad"]
    assert "data.micro_batch_size=2" in runs["recompute-moe"]
    for run in ("recompute-moe", "mbs2x", "fp8-blockwise-param-pad"):
        overrides = bench.ours_overrides(shape, run, 1, [], 3, str(tmp_path), runs)
        cfg = load_config(None, overrides)  # every override is a real config key with a valid value
        if run in ("recompute-moe", "mbs2x"):
            # the global batch grows with the doubled micro batch (one micro-batch of 2 x 4096 tokens per step)
            assert cfg.data.micro_batch_size == 2 and cfg.train.global_batch_tokens == [[0, 2 * 4096]]
    assert cfg.model.fp8 == "blockwise" and cfg.model.fp8_param and cfg.model.moe_router_padding_fp8
    assert cfg.parallel.distributed_optimizer == "on"  # the loader normalises true -> on


def test_variant_errors():
    dense = bench.SHAPES["intern-s1-mini-slice"]
    with pytest.raises(ValueError, match="needs an MoE shape"):
        bench.resolve_runs("recompute-moe", dense, {})
    with pytest.raises(ValueError, match="unknown run 'hf-fast'"):
        bench.resolve_runs("hf,hf-fast", dense, {})
    assert bench.resolve_runs("mine", dense, {"mine": ["data.micro_batch_size=3"]}) == \
        {"mine": ["data.micro_batch_size=3"]}


@pytest.mark.parametrize("args, message", [
    (["--runs", "nope"], "error: unknown run 'nope'"),
    (["--layers", "0"], "error: --layers must be >= 1"),
    (["--variant", "novalue"], "error: --variant 'novalue' must look like"),
])
def test_cli_bad_input_is_one_error_line(args, message):
    proc = subprocess.run([sys.executable, os.path.join(REPO, "bench", "throughput.py"), *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(message)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_recompute_on_cpu_is_one_error_line(tmp_path, train_args):
    """Megatron's recompute replays the CUDA RNG state; on CPU the run stops at setup with one line, exit 2."""
    proc = run_cli(train_args(str(tmp_path / "run"), "train.steps=1", "model.recompute=moe"), check=False)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "model.recompute=moe needs a CUDA GPU" in errors[0], errors
    assert "Traceback" not in proc.stderr


def test_fp8_loss_runs_load_as_configs():
    """bench/fp8_loss.py: every named run is real config keys on its model (a typo would only show on the GPU)."""
    spec = importlib.util.spec_from_file_location("fp8_loss_bench", os.path.join(REPO, "bench", "fp8_loss.py"))
    fp8_loss = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fp8_loss)
    assert {"bf16", "fp8-gmm", "fp8-experts-pad"} <= set(fp8_loss.RUNS)
    for name, overrides in fp8_loss.RUNS.items():
        cfg = load_config(None, [*fp8_loss.MODEL, *overrides])
        assert (cfg.model.fp8 is None) == (name in ("bf16", "fp8-gmm")), name
    assert load_config(None, fp8_loss.RUNS["fp8-gmm"]).model.moe_experts == "grouped_mm_fp8"
