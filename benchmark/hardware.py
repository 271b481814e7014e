"""Where a run happens: the process's rank, the accelerator's torch device and name, and checks of both.

One place answers "am I rank 0?", "which torch device does ``--accelerator auto`` mean here?" and "what is
this device called?", so that the runner, the leaderboard, the records' provenance and the benchmark
report agree. :func:`check_hardware` turns a bad ``--devices`` / ``--accelerator`` into one line before
anything runs.

Example:
    >>> from dglbench.hardware import check_hardware, torch_device
    >>> check_hardware(1, "cpu")
    >>> torch_device("cpu")
    device(type='cpu')
"""

from __future__ import annotations

import platform
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

import torch
from dglbench.errors import ConfigError

__all__ = [
    "ACCELERATORS",
    "check_hardware",
    "device_name",
    "global_rank",
    "is_global_zero",
    "one_cpu_thread",
    "torch_device",
]

#: Accelerator names Lightning's Trainer accepts (``gpu`` is CUDA here).
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")


def global_rank() -> int:
    """This process's global rank (0 outside DDP).

    Under Lightning's default ``ddp`` launcher every rank re-runs the whole command, so code after a
    trial (merging, cleaning up, printing, reports) must run on rank 0 only.
    """
    import torch.distributed as dist
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(getattr(rank_zero_only, "rank", 0))  # from RANK / LOCAL_RANK, set by the launcher before start-up


def is_global_zero() -> bool:
    """Whether this process is rank 0 (always true outside DDP)."""
    return global_rank() == 0


def torch_device(accelerator: str) -> torch.device:
    """The torch device a Lightning ``accelerator`` runs on: ``gpu``/``cuda`` → CUDA, ``auto`` → CUDA when present."""
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    if accelerator == "mps":
        return torch.device("mps")
    return torch.device("cpu")


@contextmanager
def one_cpu_thread(device: torch.device | str) -> Iterator[None]:
    """One intra-op thread for the block when ``device`` is a CPU, the caller's count restored after.

    The leaderboard's runs use it (the privacy trials of ``submit`` and ``verify``, the FedSGD utility run), so
    that an entry's numbers do not depend on ``OMP_NUM_THREADS``: L-BFGS and selecting defenses (top-k,
    pruning) turn the last-bit differences between thread counts into other results (``topk`` ratio 0.1 on
    ``natural-imprint@2``: 58.4 % accuracy on one thread, 53.6 % on two). Small victims run fastest on one
    thread anyway (see :func:`dglbench.runner.run_trial`).

    Example:
        >>> with one_cpu_thread("cpu"):
        ...     torch.get_num_threads()
        1
    """
    if torch.device(device).type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@lru_cache(maxsize=1)
def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def device_name(device: torch.device | str) -> str:
    """The model name of a device: the GPU's (``torch.cuda.get_device_name``) or the CPU's (``/proc/cpuinfo``)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return _cpu_name() if device.type == "cpu" else device.type


def _tpu_available() -> bool:
    from lightning.fabric.accelerators import XLAAccelerator

    try:
        return bool(XLAAccelerator.is_available())
    except Exception:  # torch_xla missing or broken: no TPU for this process
        return False


def check_hardware(devices: object, accelerator: object, num_nodes: object = 1) -> None:
    """Refuse what Lightning's Trainer would refuse later with a traceback: one :class:`ConfigError` line.

    Args:
        devices: processes per machine, an integer >= 1.
        accelerator: one of :data:`ACCELERATORS`, and available on this machine.
        num_nodes: machines, an integer >= 1.
    """
    for name, value in (("devices", devices), ("num-nodes", num_nodes)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"--{name} must be an integer >= 1, got {value!r}")
    if accelerator not in ACCELERATORS:
        raise ConfigError(f"unknown accelerator {accelerator!r}; use one of {', '.join(ACCELERATORS)}")
    if accelerator in ("gpu", "cuda"):
        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if available == 0:
            raise ConfigError(
                f"--accelerator {accelerator} needs a CUDA GPU, but torch sees none; use --accelerator cpu"
            )
        if devices > available:  # type: ignore[operator]
            raise ConfigError(f"--devices {devices} but this machine has {available} CUDA GPU(s); lower --devices")
    if accelerator == "mps" and not (torch.backends.mps.is_available()):
        raise ConfigError("--accelerator mps needs an Apple GPU, but torch sees none; use --accelerator cpu")
    if accelerator == "tpu" and not _tpu_available():
        raise ConfigError("--accelerator tpu needs a TPU, but none is attached; use --accelerator cpu")
