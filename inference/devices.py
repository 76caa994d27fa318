"""Which device a worker uses: CUDA when present (as HTCondor assigns it), else the CPU.

HTCondor hands a job its GPUs in `CUDA_VISIBLE_DEVICES` as GPU UUIDs (`GPU-1a2b...`), which
CUDA accepts as they are; older pools only set `_CONDOR_AssignedGPUs`. Either way the job sees
exactly the GPUs it was assigned, as device 0, 1, ...
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from typing import TYPE_CHECKING

from .models import ModelError

if TYPE_CHECKING:
    import torch


def apply_condor_gpu_assignment(env: MutableMapping[str, str] = os.environ) -> str | None:
    """Copy HTCondor's GPU assignment into CUDA_VISIBLE_DEVICES when only the former is set."""
    assigned = env.get("_CONDOR_AssignedGPUs", "").strip()
    if assigned and not env.get("CUDA_VISIBLE_DEVICES"):
        env["CUDA_VISIBLE_DEVICES"] = ",".join(
            part.strip().removeprefix("CUDA") for part in assigned.split(",") if part.strip()
        )
    return env.get("CUDA_VISIBLE_DEVICES")


def usable_cpus(env: MutableMapping[str, str] = os.environ) -> int:
    """CPU cores this process may use: its affinity mask, capped by OMP_NUM_THREADS, which
    HTCondor sets to the slot's request_cpus (os.cpu_count() would give the whole machine)."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        count = os.cpu_count() or 1
    limit = env.get("OMP_NUM_THREADS", "").strip()
    if limit.isdigit() and int(limit) > 0:
        count = min(count, int(limit))
    return max(1, count)


def cuda_device_count() -> int:
    apply_condor_gpu_assignment()
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def pick_device(setting: str = "auto") -> torch.device:
    """`auto` takes the first visible GPU or falls back to the CPU; `cuda` insists on a GPU."""
    apply_condor_gpu_assignment()
    import torch

    if setting == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(
            f"device {setting!r} was asked for, but no CUDA GPU is visible "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})"
        )
    return torch.device(setting)
