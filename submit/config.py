"""The HTCondor config section: what the DAG's jobs ask of the pool, run and move; and the
software every HTCondor job of this project runs, which training specs declare too."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from inference.config_loader import QUANTITY, ConfigError

VERSION = re.compile(r"^\d+(\.\d+)?$")


@dataclass
class CondorResourcesConfig:
    """What each GPU shard job asks of the pool: the HTCondor submit commands of the same names.
    Memory and disk take HTCondor quantities (`16GB`, `512MB`); `requirements` is an extra
    ClassAd expression. The GPU defaults are what the jobs' torch (2.13, built for CUDA 13.0)
    runs on: compute capability 7.5 or newer (no V100) and a driver for CUDA 13.0 or newer."""

    request_gpus: int = 1
    gpus_minimum_capability: str | None = "7.5"
    gpus_minimum_memory: str | None = "14GB"  # a "16 GB" T4 advertises under 16 GiB
    gpus_minimum_runtime: str | None = "13.0"
    request_cpus: int = 4
    request_memory: str = "16GB"
    request_disk: str = "20GB"
    requirements: str | None = None


@dataclass
class StepResourcesConfig:
    """What a CPU step that runs as a job (partition, index, an Elasticsearch load) asks of
    the pool; `requirements` is an extra ClassAd expression."""

    request_cpus: int = 4
    request_memory: str = "16GB"
    request_disk: str = "100GB"
    requirements: str | None = None


@dataclass
class JobSoftware:
    """Where a job on an execute node gets this project from: the `container_image`, or a
    `venv_tarball` (a path or an osdf:// URL, made with venv-pack or conda-pack) that the job
    unpacks, or `python` on the execute node's PATH. `python` defaults to the venv's
    interpreter, else `python3`. The keys sit directly in their section (`condor:`)."""

    container_image: str | None = None
    venv_tarball: str | None = None
    python: str | None = None

    def validate(self) -> None:
        if self.container_image and self.venv_tarball:
            raise ConfigError("condor: give container_image or venv_tarball, not both")


DATA_SOURCES = ("transfer", "stream", "cache")
FEDERATION_SCHEMES = ("osdf", "pelican")  # what pelicanfs reads, for stream and cache


def federation_url(url: str | None) -> bool:
    """`url` names an object or prefix in a Pelican federation (`osdf:///`, `pelican://`)."""
    scheme, found, _ = (url or "").partition("://")
    return bool(found) and scheme in FEDERATION_SCHEMES


def check_data_source(data_source: str, url: str | None, stage_dir: str | None,
                      url_key: str) -> None:
    """The rules of `condor.data_source` wherever jobs read data through it (shards, a
    sweep's dataset): `url_key` names the setting that holds the data's URL prefix."""
    if url is not None and "://" not in url:
        raise ConfigError(f"condor.{url_key} must be a URL such as osdf:///ospool/ap40/"
                          "data/USER/run1 or pelican://HOST/path")
    if data_source not in DATA_SOURCES:
        raise ConfigError(f"condor.data_source: one of {', '.join(DATA_SOURCES)}, got "
                          f"{data_source!r}")
    if data_source != "transfer" and not federation_url(url):
        raise ConfigError(f"condor.data_source: {data_source} reads through a federation: set "
                          f"condor.{url_key} to an osdf:/// or pelican:// URL")
    if stage_dir is not None and url is None:
        raise ConfigError(f"condor.stage_dir needs condor.{url_key} (the URL it serves)")


@dataclass
class CondorConfig(JobSoftware):
    """`infer-corpus submit`: one GPU job per shard in a DAG, and what each job runs and moves."""

    resources: CondorResourcesConfig = field(default_factory=CondorResourcesConfig)
    partition_resources: StepResourcesConfig = field(default_factory=StepResourcesConfig)
    index_resources: StepResourcesConfig = field(
        default_factory=lambda: StepResourcesConfig(request_cpus=2))
    load_resources: StepResourcesConfig = field(default_factory=lambda: StepResourcesConfig(
        request_cpus=2, request_memory="8GB", request_disk="50GB"))
    local_steps: bool = False
    load_jobs: int = 8
    want_io_proxy: bool = True
    site_attributes: dict[str, bool | int | str] = field(default_factory=dict)
    shards_url: str | None = None
    # how a shard job gets its shard: transfer (HTCondor's file transfer), stream (read
    # through the federation row group by row group, no copy of the shard file on scratch) or
    # cache (one whole read through the federation into scratch); the last two need shards_url
    data_source: str = "transfer"
    stage_dir: str | None = None
    extra_inputs: list[str] = field(default_factory=list)
    max_jobs: int = 50
    retries: int = 3
    # checkpoint at the first part (row) boundary after this long, 0 never, or auto: Young/
    # Daly's interval from the job's measured setup and mean_time_between_evictions
    checkpoint_minutes: int | str = 30
    checkpoint_exit_code: int = 85
    mean_time_between_evictions: float = 0.0  # seconds, the pool's (needed by auto)
    batch_name: str | None = None

    def validate(self) -> None:
        super().validate()
        r = self.resources
        for section, resources in (("resources", r), ("partition_resources",
                                    self.partition_resources),
                                   ("index_resources", self.index_resources),
                                   ("load_resources", self.load_resources)):
            for name in ("request_memory", "request_disk", "gpus_minimum_memory"):
                value = getattr(resources, name, None)
                if value is not None and not QUANTITY.match(value):
                    raise ConfigError(f"condor.{section}.{name}: {value!r} is not a quantity "
                                      "such as 16GB, 512MB or 20000 (MB)")
            if resources.request_cpus < 1:
                raise ConfigError(f"condor.{section}.request_cpus must be >= 1")
        for name, example in (("gpus_minimum_capability", "7.5"),
                              ("gpus_minimum_runtime", "13.0")):
            value = getattr(r, name)
            if value is not None and not VERSION.match(value):
                raise ConfigError(f"condor.resources.{name} must look like {example}, "
                                  f"not {value!r}")
        if r.request_gpus < 0:
            raise ConfigError("condor.resources.request_gpus must be >= 0")
        if self.load_jobs < 1:
            raise ConfigError("condor.load_jobs must be >= 1")
        check_data_source(self.data_source, self.shards_url, self.stage_dir, "shards_url")
        if self.max_jobs < 0 or self.retries < 0:
            raise ConfigError("condor: max_jobs and retries must be >= 0")
        minutes = self.checkpoint_minutes
        if isinstance(minutes, str) and minutes != "auto" or \
                isinstance(minutes, int) and minutes < 0:
            raise ConfigError(f"condor.checkpoint_minutes: minutes >= 0 or auto, got "
                              f"{minutes!r}")
        if minutes == "auto" and not self.mean_time_between_evictions > 0:
            raise ConfigError("condor.checkpoint_minutes: auto needs "
                              "condor.mean_time_between_evictions (seconds, > 0): the "
                              "interval follows from it and the job's measured setup")
        if not 3 <= self.checkpoint_exit_code <= 255 or self.checkpoint_exit_code == 130:
            raise ConfigError("condor.checkpoint_exit_code must be 3..255 and not 130 "
                              "(0, 1, 2 and 130 already mean success, failure, bad input "
                              "and interrupted)")


def checkpoint_arguments(c: CondorConfig) -> str:
    """The job script's checkpoint options for `condor.checkpoint_minutes` ('' for never)."""
    if not c.checkpoint_minutes:
        return ""
    after = (f"auto --mean-time-between-evictions {c.mean_time_between_evictions:g}"
             if c.checkpoint_minutes == "auto" else str(int(c.checkpoint_minutes) * 60))
    return f" --checkpoint-after {after} --checkpoint-exit-code {c.checkpoint_exit_code}"
