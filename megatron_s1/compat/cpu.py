"""Run Megatron-Core on CPU (gloo) by bridging its CUDA assumptions.

Megatron-Core 0.19 assumes a GPU in a handful of places (stream handling in the alltoall dispatcher,
`torch.cuda.current_device()` as a device argument, the CUDA RNG tracker, ...). On a machine without a
GPU we patch exactly those places so the real Megatron modules, schedules, DDP and optimizer run
unchanged. `enable()` is a no-op when CUDA is available.
"""
from __future__ import annotations

import contextlib

import torch

_ENABLED = False


class _HostStream:
    """Stands in for torch.cuda.Stream/Event: CPU work is synchronous, so every wait is immediate."""

    def wait_stream(self, _other):
        pass

    def wait_event(self, _event):
        pass

    def record_event(self, _event=None):
        return self

    def synchronize(self):
        pass

    def query(self):
        return True

    def record(self, _stream=None):
        pass


_HOST_STREAM = _HostStream()


class _HostStreamClass(_HostStream):
    """torch.cuda.Stream / Event replaced by a class, not a function: libraries evaluate annotations such as
    `torch.cuda.Stream | None` at import time. Constructing it returns the one host stream."""

    def __new__(cls, *args, **kwargs):
        return _HOST_STREAM


def enable() -> None:
    global _ENABLED
    if _ENABLED or torch.cuda.is_available():
        return
    _ENABLED = True
    torch.cuda.Stream = _HostStreamClass  # type: ignore[assignment]
    torch.cuda.Event = _HostStreamClass  # type: ignore[assignment]
    torch.cuda.current_stream = lambda *a, **k: _HOST_STREAM  # type: ignore[assignment]
    torch.cuda.default_stream = lambda *a, **k: _HOST_STREAM  # type: ignore[assignment]
    torch.cuda.stream = lambda *a, **k: contextlib.nullcontext()  # type: ignore[assignment]
    torch.cuda.current_device = lambda: "cpu"  # type: ignore[assignment]
    torch.cuda.synchronize = lambda *a, **k: None  # type: ignore[assignment]
    torch.cuda.manual_seed = lambda *a, **k: None  # type: ignore[assignment]
    _bridge_factories()
    _bridge_rng_tracker()
    _bridge_all_to_all()


def _bridge_all_to_all() -> None:
    """The alltoall dispatcher passes split sizes as numpy arrays; gloo's binding wants Python lists."""
    import torch.distributed as dist

    original = dist.all_to_all_single

    def all_to_all_single(output, input, output_split_sizes=None, input_split_sizes=None, *args, **kwargs):
        if output_split_sizes is not None:
            output_split_sizes = [int(x) for x in output_split_sizes]
        if input_split_sizes is not None:
            input_split_sizes = [int(x) for x in input_split_sizes]
        return original(output, input, output_split_sizes, input_split_sizes, *args, **kwargs)

    dist.all_to_all_single = all_to_all_single


def _host_device(device):
    if device is None:
        return None
    kind = device.type if isinstance(device, torch.device) else str(device)
    return "cpu" if kind.startswith("cuda") else device


def _bridge_factories() -> None:
    """`device='cuda'` in factory calls and `tensor.cuda()` land on the host instead."""
    for name in ("tensor", "zeros", "ones", "empty", "full", "arange", "randn", "rand", "randint",
                 "zeros_like", "ones_like", "empty_like", "full_like", "as_tensor"):
        original = getattr(torch, name)

        def factory(*args, __original=original, **kwargs):
            if "device" in kwargs:
                kwargs["device"] = _host_device(kwargs["device"])
            return __original(*args, **kwargs)

        setattr(torch, name, factory)
    torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[assignment]


def _bridge_rng_tracker() -> None:
    """The CUDA RNG tracker forks per-TP/EP generator states. On CPU every op draws from the one default
    generator (seeded and checkpointed by the trainer), and dropout is off, so forking is a no-op."""
    from megatron.core.tensor_parallel import random as megatron_random

    def add(self, name, seed):
        self._is_initialized = True
        self.states_[name] = seed

    @contextlib.contextmanager
    def fork(self, name=None):
        yield

    megatron_random.CudaRNGStatesTracker.add = add
    megatron_random.CudaRNGStatesTracker.fork = fork
