"""Submit descriptions: the commands of a job (software, resources, GPUs, checkpoints, site
attributes), written through `htcondor2.Submit` and parsed back, and a job's executable."""

from __future__ import annotations

import contextlib
import re
import shlex
import sys
from pathlib import Path
from typing import Any

from inference.config_loader import ConfigError
from inference.workdir import atomic_path

from ..config import CondorResourcesConfig, JobSoftware


def condor_arguments(args: list[str]) -> str:
    """A submit-file `arguments` value in the quoted syntax, safe for spaces and quotes."""
    def one(arg: str) -> str:
        arg = arg.replace('"', '""')
        if not arg or re.search(r"[\s']", arg):
            return "'" + arg.replace("'", "''") + "'"
        return arg
    return '"' + " ".join(one(a) for a in args) + '"'


def write_submit(path: Path, commands: dict[str, str],
                 itemdata: list[dict[str, str]] | None = None) -> Any:
    """Write a submit description (one job, or one job per item) and return it parsed back."""
    import htcondor2

    path = Path(path).absolute()
    description = htcondor2.Submit(dict(commands))
    # htcondor2 expands a value that refers to its own command (`request_disk =
    # $(request_disk)`) into the command's default as it takes it
    changed = [key for key, value in commands.items() if description.get(key) != str(value)]
    if changed:
        raise ValueError(f"{path.name}: {', '.join(changed)} would not be written as given "
                         "(a value that refers to its own command?)")
    text = str(description)
    if itemdata is not None:
        if not itemdata:
            raise ValueError(f"{path.name}: item data must have at least one item")
        keys = list(itemdata[0])
        items = path.with_suffix(".items")
        lines = []
        for item in itemdata:
            values = [str(item[k]) for k in keys]
            # the queue statement gives the last variable the rest of the line, commas included
            if any("\n" in v for v in values) or any("," in v for v in values[:-1]):
                raise ValueError(f"{path.name}: item values may not contain newlines, nor "
                                 "commas except in the last column")
            lines.append(",".join(values))
        write_text(items, "\n".join(lines) + "\n")
        text = text.removesuffix("queue\n") + f"queue {','.join(keys)} from {items.name}\n"
    write_text(path, text)
    text = path.read_text(encoding="utf-8")
    with contextlib.chdir(path.parent):  # a queue-from file is relative to the description
        parsed = htcondor2.Submit(text)
        if itemdata is not None and list(parsed.itemdata()) != \
                [{k: str(item[k]) for k in keys} for item in itemdata]:
            raise ValueError(f"{path}: item data did not read back as written (a value with "
                             "spaces before the last column?)")
    return parsed


def transfer_source(path_or_url: str) -> str:
    """A `transfer_input_files` entry: a URL (osdf://, https://) as given, a path made absolute."""
    return path_or_url if "://" in path_or_url else str(Path(path_or_url).resolve())


def write_job_script(path: Path, software: JobSoftware, comment: str, arguments: str) -> Path:
    """A job's executable: point HOME, TMPDIR and the caches (Hugging Face, torch, Triton,
    CUDA, pip, matplotlib) into the scratch directory, since an execute node's home may be
    missing, read-only or shared and HTCondor removes the scratch directory after the job; log
    the host and the GPUs (`nvidia-smi -L`) to stderr; unpack the venv tarball (transferred
    into the scratch directory) if there is one; then `exec PYTHON ARGUMENTS` (shell words,
    e.g. `"$@"`). PYTHON defaults to the venv's, else `python3` from the PATH (inside the
    container image, if the job has one)."""
    tarball = Path(software.venv_tarball.split("://")[-1]).name if software.venv_tarball else ""
    python = software.python or ("env/bin/python" if tarball else "python3")
    header = "".join(f"# {line}\n" for line in comment.splitlines())
    write_text(path, f"""#!/bin/sh
{header}set -u
SCRATCH=${{_CONDOR_SCRATCH_DIR:-$(pwd)}}
export HOME="$SCRATCH" TMPDIR="$SCRATCH/.tmp" XDG_CACHE_HOME="$SCRATCH/.cache"
export TMP="$TMPDIR" TEMP="$TMPDIR" HF_HOME="$XDG_CACHE_HOME/huggingface" \\
    TORCH_HOME="$XDG_CACHE_HOME/torch" TRITON_CACHE_DIR="$XDG_CACHE_HOME/triton" \\
    CUDA_CACHE_PATH="$XDG_CACHE_HOME/nv" PIP_CACHE_DIR="$XDG_CACHE_HOME/pip" \\
    MPLCONFIGDIR="$XDG_CACHE_HOME/matplotlib"
mkdir -p "$TMPDIR" "$XDG_CACHE_HOME"
echo "job: host $(uname -n), scratch $SCRATCH, started $(date -u +%Y-%m-%dT%H:%M:%SZ)" >&2
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi -L >&2 || echo "job: nvidia-smi -L failed" >&2
else
    echo "job: no nvidia-smi on this node" >&2
fi
PYTHON={shlex.quote(python)}
VENV_TARBALL={shlex.quote(tarball)}
if [ -n "$VENV_TARBALL" ]; then
    mkdir -p env && tar -xzf "$VENV_TARBALL" -C env || exit 1
    if [ -f env/bin/activate ]; then . env/bin/activate; fi
fi
exec "$PYTHON" {arguments}
""", mode=0o755)
    return path


# The GPU each attempt ran on, in the execute event of the job's event log and in the job ad
# (MachineAttrGPUs_DeviceName0, ...): `infer-corpus jobs` reads it. A machine without GPUs
# leaves them undefined.
ATTEMPT_MACHINE_ATTRS = "GPUs_DeviceName, GPUs_Capability"
ATTEMPT_RECORD_COMMANDS = {"ulog_execute_attrs": ATTEMPT_MACHINE_ATTRS,
                           "job_machine_attrs": ATTEMPT_MACHINE_ATTRS}


def job_commands(software: JobSoftware, executable: str, arguments: str,
                 inputs: list[str]) -> dict[str, str]:
    """The submit commands of a job that runs a `write_job_script` executable on an execute
    node: the universe and image its software needs, its arguments (submit-file syntax, see
    `condor_arguments`), file transfer of `inputs` plus the venv tarball, if any, and the
    machine attributes its attempts record."""
    if software.venv_tarball:
        inputs = [*inputs, transfer_source(software.venv_tarball)]
    commands = {"universe": "container" if software.container_image else "vanilla"}
    if software.container_image:
        commands["container_image"] = software.container_image
    return {**commands, "executable": executable, "arguments": arguments,
            "should_transfer_files": "YES", "when_to_transfer_output": "ON_EXIT",
            "transfer_input_files": ",".join(inputs), **ATTEMPT_RECORD_COMMANDS}


def gpu_commands(r: CondorResourcesConfig, gpu_memory: str | None = None) -> dict[str, str]:
    """The GPU requests of a job (none when `request_gpus` is 0): the number of GPUs and the
    `gpus_minimum_*` constraints; `gpu_memory` replaces `gpus_minimum_memory`."""
    if not r.request_gpus:
        return {"request_gpus": "0"}
    commands = {"request_gpus": str(r.request_gpus)}
    for name, value in (("gpus_minimum_capability", r.gpus_minimum_capability),
                        ("gpus_minimum_memory", gpu_memory or r.gpus_minimum_memory),
                        ("gpus_minimum_runtime", r.gpus_minimum_runtime)):
        if value:
            commands[name] = value
    return commands


def resource_commands(r: Any) -> dict[str, str]:
    """A job's CPU, memory and disk requests and its extra `requirements` (any resources
    section: GPU jobs', CPU steps', training's)."""
    commands = {"request_cpus": str(r.request_cpus), "request_memory": r.request_memory,
                "request_disk": r.request_disk}
    if r.requirements:
        commands["requirements"] = r.requirements
    return commands


def classad_literal(value: bool | int | str) -> str:
    """A YAML value as a ClassAd literal: true, 12, "short"."""
    import classad2

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return classad2.quote(value)


def site_attribute_commands(attributes: dict[str, bool | int | str]) -> dict[str, str]:
    """`condor.site_attributes` (e.g. +WantGPULab, +GPUJobLength) as `MY.NAME` commands."""
    commands = {}
    for name, value in attributes.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ConfigError(f"condor.site_attributes: {name!r} is not a ClassAd attribute name")
        commands[f"MY.{name}"] = classad_literal(value)
    return commands


def checkpoint_commands(c: Any, files: str) -> dict[str, str]:
    """A job that checkpoints: it exits with `checkpoint_exit_code` and HTCondor saves `files`
    and restarts it; `is_resumable` lets CHTC run such a job past 72 hours."""
    if not c.checkpoint_minutes:
        return {}
    return {"checkpoint_exit_code": str(c.checkpoint_exit_code),
            "transfer_checkpoint_files": files, "MY.is_resumable": "true"}


def access_point_commands(module_args: list[str]) -> dict[str, str]:
    """A step that runs on the access point itself (`universe = local`), as `python -m ...`
    with the Python that wrote the DAG."""
    return {"universe": "local", "executable": sys.executable,
            "arguments": condor_arguments(["-m", *module_args])}




def write_text(path: Path, text: str, mode: int | None = None) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
        if mode is not None:
            tmp.chmod(mode)
