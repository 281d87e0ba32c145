import pytest
import torch

from megatron_s1.config import ConfigError, load_config
from megatron_s1.training.schedules import BatchSizeSchedule, build_lr_scheduler


def test_batch_warmup_switches_at_stage_boundary():
    s = BatchSizeSchedule([[0, 1024], [5120, 2048], [12288, 4096]], seq_length=128, micro_batch_size=2,
                          data_parallel_size=2)
    # 1024-token steps until 5120 tokens are seen, then 2048, then 4096 from 12288 on.
    consumed, batches = 0, []
    for _ in range(10):
        batches.append(s.global_batch_tokens(consumed))
        consumed += batches[-1]
    assert batches == [1024] * 5 + [2048] * 4 + [4096]
    assert s.global_batch_size(0) == 8 and s.num_microbatches(0) == 2
    assert s.num_microbatches(5120) == 4
    assert s.tokens_after_steps(10) == consumed == 5 * 1024 + 4 * 2048 + 4096
    # 128-token sequences, micro batch 2, DP 2: 1024 tokens = 2 micro-batches per rank, 2048 = 4, 4096 = 8.
    assert s.microbatches_per_step(10) == [2] * 5 + [4] * 4 + [8]


def test_batch_warmup_overshoot_switches_at_next_step():
    s = BatchSizeSchedule([[0, 1024], [1500, 2048]], 128, 1, 1)
    assert s.global_batch_tokens(1024) == 1024  # 1024 < 1500: still stage 0
    assert s.global_batch_tokens(2048) == 2048  # first step boundary past 1500


def test_batch_schedule_errors():
    with pytest.raises(ConfigError, match="must start with a stage at 0"):
        BatchSizeSchedule([[10, 1024]], 128, 1, 1)
    with pytest.raises(ConfigError, match="not a multiple of seq_length x micro_batch_size x data-parallel size"):
        BatchSizeSchedule([[0, 1000]], 128, 1, 1)
    with pytest.raises(ConfigError, match="strictly increasing"):
        BatchSizeSchedule([[0, 1024], [0, 2048]], 128, 1, 1)


class _OneGroupOptimizer:
    """OptimizerParamScheduler only touches param_groups."""

    def __init__(self):
        self.param_groups = [{"lr": 0.0, "weight_decay": 0.0, "params": []}]


def test_wsd_lr_on_tokens_hand_computed():
    cfg = load_config(None, ["optimizer.lr=1.0", "optimizer.min_lr=0.1", "optimizer.warmup_tokens=100",
                             "optimizer.decay_style=WSD", "optimizer.decay_tokens=1000",
                             "optimizer.wsd_decay_tokens=200", "optimizer.wsd_decay_style=linear"])
    opt = _OneGroupOptimizer()
    sched = build_lr_scheduler(cfg, opt, total_tokens=1000)
    lrs = {}
    for tokens in (50, 100, 500, 800, 900, 1000):
        sched.num_steps = 0
        sched.step(increment=tokens)
        lrs[tokens] = opt.param_groups[0]["lr"]
    assert lrs[50] == pytest.approx(0.5)  # linear warmup: 1.0 * 50/100
    assert lrs[100] == pytest.approx(1.0)
    assert lrs[500] == pytest.approx(1.0)  # stable phase
    assert lrs[800] == pytest.approx(1.0)  # decay starts at 1000 - 200
    assert lrs[900] == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the linear decay
    assert lrs[1000] == pytest.approx(0.1)
    torch.testing.assert_close(torch.tensor(lrs[900]), torch.tensor(0.55))
