"""Token-based schedules: Intern-S1 batch-size warmup and the LR schedule (WSD by default).

Both are defined on *tokens seen*, so a change of global batch size never bends the LR curve.
"""
from __future__ import annotations

from dataclasses import dataclass

from megatron_s1.config.schema import ConfigError, ExperimentConfig


@dataclass(frozen=True)
class BatchStage:
    start_tokens: int
    global_batch_tokens: int


class BatchSizeSchedule:
    """Global batch in tokens as stages [[tokens_seen, global_batch_tokens], ...] (Intern-S1 batch warmup).

    The stage in force for a step is the last one whose start is <= tokens consumed before the step, so
    the switch happens exactly at the first step boundary at or after the stage start.
    """

    def __init__(self, stages: list, seq_length: int, micro_batch_size: int, data_parallel_size: int):
        if not stages:
            raise ConfigError("train.global_batch_tokens is empty; give stages like [[0, 4194304]]")
        parsed = []
        for stage in stages:
            if not (isinstance(stage, (list, tuple)) and len(stage) == 2):
                raise ConfigError(f"train.global_batch_tokens entry {stage!r} must be [tokens_seen, batch_tokens]")
            parsed.append(BatchStage(int(float(stage[0])), int(float(stage[1]))))
        if parsed[0].start_tokens != 0:
            raise ConfigError("train.global_batch_tokens must start with a stage at 0 tokens, e.g. [[0, 4194304], ...]")
        if any(b.start_tokens <= a.start_tokens for a, b in zip(parsed, parsed[1:])):
            raise ConfigError("train.global_batch_tokens stages must have strictly increasing token starts")
        unit = seq_length * micro_batch_size * data_parallel_size
        for stage in parsed:
            if stage.global_batch_tokens % unit:
                raise ConfigError(
                    f"global batch of {stage.global_batch_tokens} tokens is not a multiple of seq_length x "
                    f"micro_batch_size x data-parallel size = {seq_length}x{micro_batch_size}x{data_parallel_size}"
                    f" = {unit}; round it to a multiple of {unit}")
        self.stages = parsed
        self.seq_length = seq_length
        self.micro_batch_size = micro_batch_size
        self.data_parallel_size = data_parallel_size

    def stage_index(self, consumed_tokens: int) -> int:
        index = 0
        for i, stage in enumerate(self.stages):
            if consumed_tokens >= stage.start_tokens:
                index = i
        return index

    def global_batch_tokens(self, consumed_tokens: int) -> int:
        return self.stages[self.stage_index(consumed_tokens)].global_batch_tokens

    def global_batch_size(self, consumed_tokens: int) -> int:
        """Sequences per step."""
        return self.global_batch_tokens(consumed_tokens) // self.seq_length

    def num_microbatches(self, consumed_tokens: int) -> int:
        return self.global_batch_size(consumed_tokens) // (self.micro_batch_size * self.data_parallel_size)

    def microbatches_per_step(self, steps: int) -> list[int]:
        """Micro-batches per DP rank of each of the first `steps` steps of a run."""
        counts, consumed = [], 0
        for _ in range(steps):
            counts.append(self.num_microbatches(consumed))
            consumed += self.global_batch_tokens(consumed)
        return counts

    def tokens_after_steps(self, steps: int, consumed_tokens: int = 0) -> int:
        for _ in range(steps):
            consumed_tokens += self.global_batch_tokens(consumed_tokens)
        return consumed_tokens


def build_lr_scheduler(cfg: ExperimentConfig, optimizer, total_tokens: int) -> OptimizerParamScheduler:
    """LR/WD scheduler whose 'steps' are tokens (it is stepped with the tokens of each global batch)."""
    # Imported here: the batch schedule alone (tune lr's sweep planning) should not pay for importing Megatron-Core.
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    o = cfg.optimizer
    # train.steps=0 (write initial weights only) still needs a well-formed schedule.
    decay_tokens = o.decay_tokens or max(total_tokens, o.warmup_tokens + 1)
    if o.warmup_tokens >= decay_tokens:
        raise ConfigError(f"optimizer.warmup_tokens={o.warmup_tokens} must be smaller than the schedule length "
                          f"{decay_tokens} tokens (optimizer.decay_tokens or the tokens of train.steps)")
    styles = {"wsd": "WSD", "cosine": "cosine", "linear": "linear", "constant": "constant"}
    style = styles.get(o.decay_style.lower())
    if style is None:
        raise ConfigError(f"optimizer.decay_style must be one of WSD, cosine, linear, constant; got {o.decay_style!r}")
    wsd_decay = None
    if style == "WSD":
        wsd_decay = o.wsd_decay_tokens or max(1, (decay_tokens - o.warmup_tokens) // 10)
    return OptimizerParamScheduler(
        optimizer,
        init_lr=0.0,
        max_lr=o.lr,
        min_lr=o.min_lr,
        lr_warmup_steps=o.warmup_tokens,
        lr_decay_steps=decay_tokens,
        lr_decay_style=style,
        start_wd=o.weight_decay,
        end_wd=o.weight_decay,
        wd_incr_steps=decay_tokens,
        wd_incr_style="constant",
        use_checkpoint_opt_param_scheduler=True,
        override_opt_param_scheduler=False,
        wsd_decay_steps=wsd_decay,
        lr_wsd_decay_style=o.wsd_decay_style if style == "WSD" else None,
    )
