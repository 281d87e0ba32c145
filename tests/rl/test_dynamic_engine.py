"""Engine choice (CPU: LocalEngine, logged once), rl.local_engine validation and the RowSampling -> SamplingParams
mapping of the dynamic engine. Real megatron-core objects, no mocks."""
import logging

import pytest
import torch

from megatron_s1.rl.dynamic_engine import choose_local_engine, dynamic_engine_available, sampling_params_of
from megatron_s1.rl.rollout import RowSampling

cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="CPU fallback behaviour")


@cpu_only
def test_auto_falls_back_to_local_engine_and_logs_one_line(caplog):
    with caplog.at_level(logging.WARNING, logger="megatron_s1.rl.dynamic_engine"):
        assert choose_local_engine("auto") == "static"
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "LocalEngine" in lines[0] and "no CUDA device" in lines[0]
    assert dynamic_engine_available() == (False, "no CUDA device")


@cpu_only
def test_fp32_params_keep_local_engine():
    assert choose_local_engine("auto", "fp32") == "static"


@cpu_only
def test_forcing_dynamic_without_cuda_is_one_clear_error():
    with pytest.raises(ValueError, match="rl.local_engine=dynamic cannot run here: no CUDA device"):
        choose_local_engine("dynamic")


def test_static_is_always_allowed_and_bad_value_rejected():
    assert choose_local_engine("static") == "static"
    with pytest.raises(ValueError, match="rl.local_engine must be one of auto, dynamic, static"):
        choose_local_engine("fast")


def test_sampling_params_per_row():
    s = RowSampling.expand(4, 2, [0.7, 1.0], [0.9, 1.0], [0, 1], [8, 32])
    a, b = sampling_params_of(s, 1, eos_id=5), sampling_params_of(s, 2, eos_id=5)
    assert (a.temperature, a.top_p, a.top_k, a.num_tokens_to_generate) == (0.7, 0.9, 0, 8)
    # top_p 1.0 is Megatron's 0.0 ("off"); top_k 1 = greedy
    assert (b.temperature, b.top_p, b.top_k, b.num_tokens_to_generate) == (1.0, 0.0, 1, 32)
    assert a.termination_id == 5 and a.return_log_probs and a.skip_prompt_log_probs
    # the engine's own temperature when the logits hook has applied the row's (DynamicEngine)
    c = sampling_params_of(s, 1, eos_id=5, temperature=1.0)
    assert (c.temperature, c.top_p, c.top_k) == (1.0, 0.9, 0)


def test_config_knob_in_schema():
    from megatron_s1.config import load_config

    cfg = load_config(None, ["rl.local_engine=static", "rl.dynamic_kv_gb=2.5"])
    assert cfg.rl.local_engine == "static" and cfg.rl.dynamic_kv_gb == 2.5


@cpu_only
def test_trainer_picks_local_engine_on_cpu_and_refuses_forced_dynamic(tmp_path):
    from megatron_s1.config import load_config
    from megatron_s1.config.schema import ConfigError
    from megatron_s1.rl.rollout import LocalEngine
    from megatron_s1.rl.trainer import RLTrainer

    base = [f"run.dir={tmp_path}", "model.preset=tiny-moe", "rl.task=toy_copy", "logging.tensorboard=false",
            "data.seq_length=16", "checkpoint.save_final=false", "model.spec=local"]
    rl = RLTrainer(load_config(None, base), rollout_dtype="fp32")
    assert type(rl.engine) is LocalEngine
    rl.t.checkpointer.close()
    bad = RLTrainer.__new__(RLTrainer)  # (shares the first one's process group)
    with pytest.raises(ConfigError, match="rl.local_engine=dynamic cannot run here"):
        RLTrainer.__init__(bad, load_config(None, base + ["rl.local_engine=dynamic"]), rollout_dtype="fp32")


def test_rollout_logits_temper_and_mask_then_removed():
    """The dynamic engine's logits hook: divided by the batch's temperature and -inf outside the task vocabulary
    (tuple output as Megatron's ColumnParallelLinear), so the engine's raw log-probs are the trainer's tempered,
    masked full-vocabulary ones; untouched after the context."""
    from megatron_s1.rl.dynamic_engine import rollout_logits, rows_by_temperature

    class Head(torch.nn.Module):
        def forward(self, x):
            return x * 2.0, None

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.output_layer = Head()

    model, x = Model(), torch.arange(12.0).reshape(2, 6)
    with rollout_logits(model, [1, 4], temperature=0.5):
        got, _ = model.output_layer(x)
    assert torch.equal(got[:, [1, 4]], 4 * x[:, [1, 4]])  # 2x / 0.5
    assert torch.isinf(got[:, [0, 2, 3, 5]]).all() and (got[:, [0, 2, 3, 5]] < 0).all()
    allowed = torch.tensor([0, 1, 0, 0, 1, 0], dtype=torch.bool)
    # LocalEngine's full_logp: log_softmax of (logits / T) masked
    assert torch.allclose(torch.log_softmax(got, -1)[:, [1, 4]],
                          torch.log_softmax((2 * x / 0.5).masked_fill(~allowed, float("-inf")), -1)[:, [1, 4]])
    with rollout_logits(model, None, temperature=0.8):
        assert torch.allclose(model.output_layer(x)[0], 2 * x / 0.8)
    assert torch.equal(model.output_layer(x)[0], 2 * x)  # hook gone
    with rollout_logits(model, None, 1.0):
        assert torch.equal(model.output_layer(x)[0], 2 * x)
    assert rows_by_temperature([0.8, 1.0, 0.8, 1]) == {0.8: [0, 2], 1.0: [1, 3]}


def test_tempered_bf16_logits_are_divided_in_fp32():
    """bf16 logits are tempered in fp32 (no second bf16 rounding), as the trainer's log-probs are."""
    from megatron_s1.rl.dynamic_engine import rollout_logits

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.output_layer = torch.nn.Identity()

    x = torch.tensor([[1.0, 3.0, 7.0]]).to(torch.bfloat16)
    m = Model()
    with rollout_logits(m, None, temperature=0.7):
        got = m.output_layer(x)
    assert got.dtype == torch.float32 and torch.equal(got, x.float() / 0.7)


def test_request_slots_fit_megatrons_token_budget():
    """Concurrent requests: this call's count rounded up to a multiple of 4, capped at the 16384-token forward
    budget (Megatron's own default, one KV block per request, fails its max_tokens >= max_requests check on a
    small model with a multi-GB KV buffer); an explicit max_requests wins."""
    from megatron_s1.rl.dynamic_engine import DynamicEngine

    eng = DynamicEngine(torch.nn.Linear(1, 1), eos_id=0, pad_id=0, device=torch.device("cpu"))
    assert eng._request_slots(512) == 512
    assert eng._request_slots(10) == 12
    assert eng._request_slots(1) == 4
    assert eng._request_slots(70000) == 16384
    assert DynamicEngine(torch.nn.Linear(1, 1), 0, 0, device=torch.device("cpu"),
                         max_requests=64)._request_slots(512) == 64
