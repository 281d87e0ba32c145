"""What reaches the terminal: library noise, which ranks speak, and how a command ends on an error.

Quiet by default (`configure(verbose=False)`):
- Megatron-Core's import-time notices (TransformerEngine / Apex absent, "GPTModel IS DEPRECATED", Mimo being
  experimental, "MCore's async save is deprecated" even with async save off), deprecation / future warnings and
  torch's "No CUDA runtime is found" are dropped: on this code path they never call for an action.
- Only rank 0 prints library warnings; our own console lines are rank-0 already (training/metrics.py).
`logging.verbose=true` (recipe or override), `--debug` or S1_VERBOSE=1 show all of it on every rank.

Exit codes (`run_command`): 0 success, 2 bad input or configuration (one `error: ...` line naming the problem and
the fix), 1 a runtime failure (one `error: ...` line; the traceback goes to a file named on that line, or to
stderr with --debug), 130 interrupted (Ctrl-C / SIGINT).
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile
import traceback
import warnings

# Warning messages (regexes, matched at the start) of the library notices described above.
NOISE_MESSAGES = (
    r".*Transformer Engine and Apex are not installed",
    r".*Apex is not installed",
    r".*Transformer Engine is not installed",
    r".*MimoModelConfig is experimental",
    r".*full scope is deprecated",
    r".*is deprecated",
    r".*torch.distributed is disabled, unavailable or uninitialized",  # dist_checkpointing loads on a rank
    r".*The argument order of load has been changed",
    r".*Could not determine rank from torch.distributed",
)
# Loggers whose WARNING-level records are the same notices (Megatron-Core logs through `logging`).
NOISE_LOGGERS = ("megatron", "torch.utils.cpp_extension", "torch.distributed.checkpoint")

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
TRUE_WORDS = ("true", "yes", "on", "1")


def rank() -> int:
    for name in ("RANK", "SLURM_PROCID"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def configure(verbose: bool = False) -> None:
    """Install the warning filters and logger levels (idempotent; verbose undoes nothing already shown)."""
    if verbose:
        warnings.resetwarnings()
        for name in NOISE_LOGGERS:
            logging.getLogger(name).setLevel(logging.NOTSET)
        return
    for pattern in NOISE_MESSAGES:
        warnings.filterwarnings("ignore", message=pattern)
    for category in (DeprecationWarning, FutureWarning, PendingDeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    for name in NOISE_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    if rank() != 0:  # every rank would repeat rank 0's notices
        warnings.simplefilter("ignore")
        logging.getLogger().setLevel(logging.ERROR)


def verbose_requested(argv: list[str], config_path: str | None = None) -> bool:
    """--debug, S1_VERBOSE=1, or logging.verbose=true among the overrides or in the recipe."""
    if os.environ.get("S1_VERBOSE", "").lower() in TRUE_WORDS:
        return True
    for item in argv:
        if item == "--debug":
            return True
        if item.startswith("logging.verbose="):
            return item.split("=", 1)[1].strip().lower() in TRUE_WORDS
    if config_path and os.path.isfile(config_path):
        import yaml

        try:
            with open(config_path, encoding="utf-8") as f:
                raw = yaml.safe_load(f)
            return ((raw or {}).get("logging") or {}).get("verbose") is True
        except Exception:  # noqa: BLE001 - a malformed recipe is reported by load_config, not here
            return False
    return False


def user_errors() -> tuple[type, ...]:
    """Exception types that mean bad input or configuration (exit 2, no traceback)."""
    from megatron_s1.config.schema import ConfigError
    from megatron_s1.data.chat.format import ChatFormatError
    from megatron_s1.data.curation.errors import CurationError
    from megatron_s1.tokenizer.layout import TokenizerLayoutError

    return ConfigError, CurationError, ChatFormatError, TokenizerLayoutError, FileNotFoundError, IsADirectoryError


def run_errors() -> tuple[type, ...]:
    """Runtime failures reported as their one-line message (exit 1, no traceback): a full disk, a run directory in
    use, no complete checkpoint to resume from."""
    from megatron_s1.config.schema import RunError

    return (RunError,)


def one_line(message: str) -> str:
    return " ".join(str(message).split())


def _save_traceback() -> str | None:
    try:
        fd, path = tempfile.mkstemp(prefix="megatron-s1-traceback-", suffix=".txt")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(traceback.format_exc())
        return path
    except OSError:
        return None


def run_command(func, args, debug: bool = False) -> int:
    """Run a sub-command and turn what it raises into one `error: ...` line and an exit code."""
    main_rank = rank() == 0
    try:
        return func(args)
    except KeyboardInterrupt:
        if main_rank:
            print("error: interrupted (SIGINT); checkpoints already saved are kept, rerun the same command to "
                  "resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except user_errors() as err:
        if debug:
            traceback.print_exc()
        if main_rank or debug:
            text = str(err) if not isinstance(err, OSError) or not err.filename else \
                f"{err.filename}: {err.strerror or err}"
            print(f"error: {one_line(text)}", file=sys.stderr)
        return EXIT_USAGE
    except run_errors() as err:  # a runtime failure whose message already names the fix
        if debug:
            traceback.print_exc()
        if main_rank or debug:
            print(f"error: {one_line(err)}", file=sys.stderr)
        return EXIT_RUNTIME
    except Exception as err:  # noqa: BLE001 - a runtime failure: one line, traceback kept aside
        prefix = "" if main_rank else f"[rank {rank()}] "
        if debug:
            traceback.print_exc()
            where = ""
        else:
            saved = _save_traceback()
            where = f" (traceback in {saved}; --debug prints it)" if saved else " (rerun with --debug for the traceback)"
        print(f"{prefix}error: {type(err).__name__}: {one_line(err)}{where}", file=sys.stderr)
        return EXIT_RUNTIME
