"""Training specs (the YAML files of `train-models sweep` and `multinode`) and the HTCondor
settings both kinds hold.

A spec loads through the project's one strict config loader (`inference.config_loader`): an
unknown key or a value of the wrong type is a TrainError naming the key's dotted path, and each
spec class's `validate()` checks what types cannot. A prepared run's saved copy of its spec is
rebuilt the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from inference.config_loader import ConfigError, build, read_yaml
from submit.config import JobSoftware, check_data_source
from submit.htcondor import transfer_source

from . import TrainError


@dataclass
class GpuClassSettings:
    """One GPU class of the pool, as measured (e.g. `train-models jobs --json` of an earlier
    sweep): for `condor.gpu: fastest | cost`."""

    capability: float  # compute capability, what gpus_minimum_capability compares
    epoch_seconds: float
    checkpoint_seconds: float = 0.0  # writing, uploading and the restart's setup
    restart_seconds: float = 0.0  # a new claim's input transfer and setup
    queue_seconds: float = 0.0  # the wait for a claim of this class
    mean_time_between_evictions: float = 0.0  # seconds; 0: the sweep's
    share: float = 1.0  # of the claims it takes when any class is admitted


@dataclass
class CondorSettings(JobSoftware):
    """What training jobs run (see `JobSoftware`) and ask for."""

    request_cpus: int = 1
    request_memory: str = "2GB"
    request_disk: str = "2GB"
    request_gpus: int = 0
    requirements: str | None = None  # a ClassAd expression the machine must meet
    wave_size: int = 0  # trials per job cluster; the evaluation runs between waves (0 = one)
    # epochs per job run before exiting to checkpoint (0 = never), or auto: Young/Daly's
    # interval from the first epoch's measured costs and mean_time_between_evictions
    checkpoint_every: int | str = 0
    mean_time_between_evictions: float = 0.0  # seconds, the pool's (needed by auto)
    # any: no GPU class required; fastest / cost: the lowest compute capability whose admitted
    # classes give the shortest expected wall time / fewest GPU-hours (submit.preemption)
    gpu: str = "any"
    gpu_classes: dict[str, GpuClassSettings] = field(default_factory=dict)
    # how a trial job gets the dataset: transfer (HTCondor's file transfer, from the sweep
    # directory or from data_url), stream (read through the federation row group by row group
    # every epoch, no copy on scratch) or cache (fetched whole into scratch once); the last
    # two need data_url, the osdf:/// or pelican:// prefix the dataset is published under
    data_source: str = "transfer"
    data_url: str | None = None
    stage_dir: str | None = None  # the local folder behind data_url: the dataset is linked there
    extra: dict[str, bool | int | float | str] = field(default_factory=dict)  # e.g. +Site

    def validate(self) -> None:
        super().validate()
        check_data_source(self.data_source, self.data_url, self.stage_dir, "data_url")
        every = self.checkpoint_every
        if isinstance(every, str) and every != "auto" or isinstance(every, int) and every < 0:
            raise ConfigError(f"condor.checkpoint_every: epochs >= 0 or auto, got {every!r}")
        if self.gpu not in ("any", "fastest", "cost"):
            raise ConfigError(f"condor.gpu: any, fastest or cost, got {self.gpu!r}")
        if self.gpu != "any" and not self.request_gpus:
            raise ConfigError(f"condor.gpu: {self.gpu} chooses among GPU classes: set "
                              "condor.request_gpus")
        if every == "auto" and not self.mean_time_between_evictions > 0:
            raise ConfigError("condor.checkpoint_every: auto needs "
                              "condor.mean_time_between_evictions (seconds, > 0): the "
                              "interval follows from it and the measured checkpoint cost")


class Spec(Protocol):
    """What every spec class has: a name and its HTCondor settings."""

    name: str
    condor: CondorSettings


T = TypeVar("T", bound=Spec)


def build_spec(cls: type[T], data: dict[str, Any], where: str) -> T:
    """A validated spec from plain data; `where` names its source in errors."""
    try:
        return build(cls, data)
    except ConfigError as exc:
        raise TrainError(f"{where}: {exc}") from None


def load_spec_file(cls: type[T], path: Path, what: str,
                   overrides: dict[str, Any] | None = None) -> T:
    """A spec file as `cls`, with `overrides` (command-line options) replacing its top-level
    values. A local venv tarball must exist, and is kept as an absolute path: DAGMan's scripts
    rewrite submit files from another directory."""
    try:
        data = read_yaml(path, what)
    except ConfigError as exc:
        raise TrainError(str(exc)) from None
    if not data.get("name"):
        raise TrainError(f"{what} {path} must be a mapping with a name")
    spec = build_spec(cls, {**data, **(overrides or {})}, f"{what} {path}")
    condor = spec.condor
    if condor.venv_tarball:
        condor.venv_tarball = transfer_source(condor.venv_tarball)
        if "://" not in condor.venv_tarball and not Path(condor.venv_tarball).is_file():
            raise TrainError(f"condor.venv_tarball {condor.venv_tarball} does not exist (make "
                             f"it with venv-pack or conda-pack, or give an osdf:// URL)")
    return spec
