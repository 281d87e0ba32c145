from megatron_s1.config.schema import (  # noqa: F401
    CheckpointConfig,
    ConfigError,
    DataConfig,
    ExperimentConfig,
    LoggingConfig,
    ModelConfig,
    OptimizerConfig,
    ParallelConfig,
    RunConfig,
    TrainConfig,
    load_config,
)
