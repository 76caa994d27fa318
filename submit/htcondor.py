"""Writing, checking and submitting HTCondor submit descriptions and DAGs.

Generic: nothing here knows about shards. The pieces:

- `write_submit(path, commands, itemdata=...)`: a submit description written through
  `htcondor2.Submit` and parsed back. Many jobs in one cluster take their item data from a file
  next to it (`queue a,b from NAME.items`): `str(Submit)` drops inline multi-line queue lists.
- `job_commands(software, ...)` and `write_job_script(...)`: the submit commands and the
  executable of a job that runs this project's Python on an execute node, from a container, an
  unpacked venv tarball or the node's PATH (`submit.config.JobSoftware`);
  `access_point_commands(...)` for a step that runs on the access point itself.
- `require_not_running(dag)`: a DAG that DAGMan is running is neither rewritten nor submitted.
- `Dag`, `Node`, `Script` and `write_dag(path, dag)`: the DAG file, written directly rather than
  with `htcondor2.dags` (which writes `CATEGORY name N` where DAGMan expects `MAXJOBS name N`,
  never writes a FINAL node's submit file, and has no PROVISIONER nodes).
- `lint_dag(path)`: what DAGMan would reject, found before submission: a node without a submit
  file that parses, PARENT/CHILD names that do not exist, cycles, a throttle on no category.
- `submit_dag(path)`: submission through the `htcondor2` bindings, with a `CondorError` that says
  what to do when no schedd can be reached.
- `read_node_status(path)`: DAGMan's NODE_STATUS_FILE as plain dicts; `query_queue(...)`: job
  ads from the schedd through `condor_q -json`; `dag_report(...)`: both, for `infer-corpus
  status` (with `record_submission`, which notes the DAGMan job of a submitted DAG).
- `gpu_commands(resources)`: the GPU requests of a job; `job_match_ad(submit)`: the matchmaking
  part of the job ad condor_submit would build (resource requests and the GPU constraint), so
  requirements can be checked against machine ads offline.
"""

from __future__ import annotations

import contextlib
import glob
import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inference.config_loader import ConfigError
from inference.errors import Failure
from inference.workdir import atomic_path

from .config import CondorResourcesConfig, JobSoftware

NODE_KINDS = ("JOB", "FINAL", "PROVISIONER", "SUBDAG")  # SUBDAG: SUBDAG EXTERNAL
NODE_STATES = {0: "not_ready", 1: "ready", 2: "pre", 3: "submitted", 4: "post", 5: "done",
               6: "error", 7: "futile"}


class CondorError(Failure):
    """HTCondor could not take the work: no schedd, a DAG already running, or submission
    refused."""


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
        _write_text(items, "\n".join(lines) + "\n")
        text = text.removesuffix("queue\n") + f"queue {','.join(keys)} from {items.name}\n"
    _write_text(path, text)
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
    _write_text(path, f"""#!/bin/sh
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


def job_commands(software: JobSoftware, executable: str, arguments: str,
                 inputs: list[str]) -> dict[str, str]:
    """The submit commands of a job that runs a `write_job_script` executable on an execute
    node: the universe and image its software needs, its arguments (submit-file syntax, see
    `condor_arguments`), and file transfer of `inputs` plus the venv tarball, if any."""
    if software.venv_tarball:
        inputs = [*inputs, transfer_source(software.venv_tarball)]
    commands = {"universe": "container" if software.container_image else "vanilla"}
    if software.container_image:
        commands["container_image"] = software.container_image
    return {**commands, "executable": executable, "arguments": arguments,
            "should_transfer_files": "YES", "when_to_transfer_output": "ON_EXIT",
            "transfer_input_files": ",".join(inputs)}


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


@dataclass
class Script:
    """A PRE or POST script: DAGMan splits arguments on spaces, so none may contain one.
    POST scripts may use DAGMan's macros such as `$RETURN` (the job's exit code) and `$RETRY`."""

    executable: str
    arguments: list[str] = field(default_factory=list)

    def line(self, when: str, node: str) -> str:
        for part in (self.executable, *self.arguments):
            if not part or re.search(r"\s", part):
                raise ValueError(f"SCRIPT {when} {node}: {part!r} is empty or contains a space")
        return " ".join(["SCRIPT", when, node, self.executable, *self.arguments])


@dataclass
class Node:
    """One DAG node: a submit file plus what DAGMan does around it."""

    name: str
    submit_file: str
    kind: str = "JOB"
    vars: dict[str, str] = field(default_factory=dict)
    category: str | None = None
    retry: int = 0
    retry_unless_exit: int | None = None
    pre: Script | None = None
    post: Script | None = None
    abort_dag_on: tuple[int, int | None] | None = None  # (node exit value, DAG return value)


@dataclass
class Dag:
    """Nodes, edges (parents -> children) and DAG-wide settings."""

    nodes: list[Node]
    edges: list[tuple[list[str], list[str]]] = field(default_factory=list)
    max_jobs: dict[str, int] = field(default_factory=dict)
    node_status_file: str | None = None
    status_interval: int = 30


def _quote_var(value: str) -> str:
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def dag_text(dag: Dag) -> str:
    """The DAG file's text. Raises ValueError on names DAGMan cannot take."""
    names = [n.name for n in dag.nodes]
    for node in dag.nodes:
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", node.name) or node.name.upper() == "ALL_NODES":
            raise ValueError(f"node name {node.name!r}: use letters, digits, '_', '-', '.'")
        if node.kind not in NODE_KINDS:
            raise ValueError(f"node {node.name}: kind must be one of {', '.join(NODE_KINDS)}")
        if re.search(r"\s", node.submit_file):
            raise ValueError(f"node {node.name}: submit file {node.submit_file!r} has a space")
    if len(set(names)) != len(names):
        raise ValueError("node names must be unique")
    lines = []
    if dag.node_status_file:
        lines.append(f"NODE_STATUS_FILE {dag.node_status_file} {dag.status_interval}")
    for node in dag.nodes:
        kind = "SUBDAG EXTERNAL" if node.kind == "SUBDAG" else node.kind
        lines.append(f"\n{kind} {node.name} {node.submit_file}")
        if node.vars:
            lines.append(f"VARS {node.name} " + " ".join(
                f"{k}={_quote_var(v)}" for k, v in node.vars.items()))
        if node.category:
            lines.append(f"CATEGORY {node.name} {node.category}")
        if node.retry:
            unless = (f" UNLESS-EXIT {node.retry_unless_exit}"
                      if node.retry_unless_exit is not None else "")
            lines.append(f"RETRY {node.name} {node.retry}{unless}")
        if node.pre:
            lines.append(node.pre.line("PRE", node.name))
        if node.post:
            lines.append(node.post.line("POST", node.name))
        if node.abort_dag_on:
            value, ret = node.abort_dag_on
            lines.append(f"ABORT-DAG-ON {node.name} {value}"
                         + (f" RETURN {ret}" if ret is not None else ""))
    if dag.edges:
        lines.append("")
    for parents, children in dag.edges:
        lines.append(f"PARENT {' '.join(parents)} CHILD {' '.join(children)}")
    if dag.max_jobs:
        lines.append("")
    for category, limit in dag.max_jobs.items():
        lines.append(f"MAXJOBS {category} {limit}")
    return "\n".join(lines).lstrip("\n") + "\n"


def write_dag(path: Path, dag: Dag) -> Path:
    """Write the DAG file (submit files are written separately with `write_submit`).

    Writing a DAG anew removes its old rescue DAGs (`NAME.rescueNNN`): every DAG here is
    written from what is still to do, and DAGMan would otherwise apply an old run's DONE
    marks to the new DAG's nodes of the same names (a shard whose settings changed would be
    skipped)."""
    path = Path(path)
    _write_text(path, dag_text(dag))
    for rescue in path.parent.glob(f"{glob.escape(path.name)}.rescue[0-9][0-9][0-9]"):
        rescue.unlink(missing_ok=True)
    return path


def _write_text(path: Path, text: str, mode: int | None = None) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
        if mode is not None:
            tmp.chmod(mode)


_NODE_KEYWORDS = {"JOB", "FINAL", "PROVISIONER", "SERVICE"}
_KNOWN_KEYWORDS = _NODE_KEYWORDS | {"SUBDAG",
    "PARENT", "RETRY", "SCRIPT", "VARS", "CATEGORY", "MAXJOBS", "NODE_STATUS_FILE", "CONFIG",
    "ABORT-DAG-ON", "PRIORITY", "DOT", "JOBSTATE_LOG", "SET_JOB_ATTR", "PRE_SKIP", "DONE",
    "ENV", "SAVE_POINT_FILE", "REJECT",
}


def lint_dag(path: Path) -> list[str]:
    """Problems DAGMan would stop on, or that make a DAG quietly wrong; [] when none.

    Checks: known commands; unique node names; every node's submit file exists and parses
    with `htcondor2.Submit` (its item data file included); every name in PARENT/CHILD, RETRY,
    SCRIPT, VARS, CATEGORY, ABORT-DAG-ON exists; scripts exist; MAXJOBS names a category in
    use and `CATEGORY` is not used as a throttle; FINAL nodes have no edges; no cycles.
    """
    import htcondor2

    path = Path(path)
    base = path.parent
    problems: list[str] = []
    nodes: dict[str, str] = {}
    finals: list[str] = []
    refs: list[tuple[int, str, str]] = []  # (line, command, node name)
    edges: list[tuple[str, str]] = []
    categories: set[str] = set()
    throttled: list[tuple[int, str]] = []
    scripts: list[tuple[int, str]] = []
    subdags: list[tuple[int, str, Path]] = []
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        return [f"{path}: cannot read ({exc.strerror})"]
    for number, raw in enumerate(text.splitlines(), start=1):
        words = raw.split()
        if not words or words[0].startswith("#"):
            continue
        where = f"{path.name}:{number}"
        keyword = words[0].upper()
        if keyword not in _KNOWN_KEYWORDS:
            problems.append(f"{where}: unknown DAG command {words[0]!r}")
        elif keyword == "SUBDAG":
            if len(words) < 4 or words[1].upper() != "EXTERNAL":
                problems.append(f"{where}: SUBDAG EXTERNAL needs a node name and a DAG file")
                continue
            if words[2] in nodes:
                problems.append(f"{where}: node {words[2]} is defined twice")
            nodes[words[2]] = words[3]
            directory = words[words.index("DIR") + 1] if "DIR" in words[4:-1] else "."
            subdags.append((number, words[2], base / directory / words[3]))
        elif keyword in _NODE_KEYWORDS:
            if len(words) < 3:
                problems.append(f"{where}: {keyword} needs a node name and a submit file")
                continue
            name, submit = words[1], words[2]
            if name in nodes:
                problems.append(f"{where}: node {name} is defined twice")
            nodes[name] = submit
            if keyword == "FINAL":
                finals.append(name)
            directory = words[words.index("DIR") + 1] if "DIR" in words[3:-1] else "."
            if "NOOP" not in (w.upper() for w in words[3:]):
                problems += _check_submit_file(base / directory / submit, where, htcondor2)
        elif keyword == "PARENT":
            upper = [w.upper() for w in words]
            if "CHILD" not in upper:
                problems.append(f"{where}: PARENT without CHILD")
                continue
            split = upper.index("CHILD")
            parents, children = words[1:split], words[split + 1:]
            if not parents or not children:
                problems.append(f"{where}: PARENT ... CHILD ... needs names on both sides")
            for name in parents + children:
                refs.append((number, "PARENT/CHILD", name))
            edges += [(p, c) for p in parents for c in children]
        elif keyword in ("RETRY", "VARS", "ABORT-DAG-ON", "PRIORITY", "PRE_SKIP"):
            if len(words) < 2:
                problems.append(f"{where}: {keyword} needs a node name")
                continue
            refs.append((number, keyword, words[1]))
            if keyword == "RETRY":
                problems += _check_retry(words, where)
        elif keyword == "CATEGORY":
            if len(words) != 3:
                problems.append(f"{where}: CATEGORY takes a node name and a category")
                continue
            if words[2].isdigit() and words[1] not in nodes:
                problems.append(f"{where}: 'CATEGORY {words[1]} {words[2]}' looks like a throttle:"
                                f" DAGMan's command is 'MAXJOBS {words[1]} {words[2]}'")
                continue
            refs.append((number, "CATEGORY", words[1]))
            categories.add(words[2])
        elif keyword == "MAXJOBS":
            if len(words) != 3 or not words[2].isdigit():
                problems.append(f"{where}: MAXJOBS takes a category and a number")
                continue
            throttled.append((number, words[1]))
        elif keyword == "SCRIPT":
            problems += _parse_script(words, where, refs, scripts, number)
    for number, command, name in refs:
        if name != "ALL_NODES" and name not in nodes:
            problems.append(f"{path.name}:{number}: {command} names node {name!r}, "
                            "which no JOB defines")
    pre_scripts = {name for number, command, name in refs if command == "SCRIPT PRE"}
    for number, name, dag_file in subdags:  # DAGMan reads a sub-DAG only when it starts it,
        if name in pre_scripts:  # so a PRE script may write it (and whoever writes it lints it)
            continue
        if not dag_file.is_file():
            problems.append(f"{path.name}:{number}: sub-DAG {dag_file} does not exist, and no "
                            f"PRE script of {name} writes it")
        elif dag_file.resolve() != path.resolve():
            problems += [f"{path.name}:{number}: {p}" for p in lint_dag(dag_file)]
    for number, category in throttled:
        if category not in categories:
            problems.append(f"{path.name}:{number}: MAXJOBS {category}: no node is in "
                            "that category")
    for number, executable in scripts:
        script = Path(executable) if Path(executable).is_absolute() else base / executable
        if not script.is_file():
            problems.append(f"{path.name}:{number}: script {executable} does not exist")
    if len(finals) > 1:
        problems.append(f"{path.name}: more than one FINAL node ({', '.join(finals)})")
    for parent, child in edges:
        if parent in finals or child in finals:
            problems.append(f"{path.name}: FINAL node {parent if parent in finals else child} "
                            "cannot be a PARENT or CHILD")
    cycle = _find_cycle(list(nodes), edges)
    if cycle:
        problems.append(f"{path.name}: cycle {' -> '.join(cycle)}")
    return problems


def _check_submit_file(submit: Path, where: str, htcondor2: Any) -> list[str]:
    if not submit.is_file():
        return [f"{where}: submit file {submit} does not exist"]
    try:
        text = submit.read_text(encoding="utf-8")
        with contextlib.chdir(submit.parent):  # a queue-from file is relative to it
            description = htcondor2.Submit(text)
            description.itemdata()
    except (ValueError, RuntimeError, OSError) as exc:
        return [f"{where}: submit file {submit.name} does not parse: {exc}"]
    return []


def _check_retry(words: list[str], where: str) -> list[str]:
    rest = words[2:]
    ok = bool(rest) and rest[0].isdigit()
    if len(rest) > 1:
        ok = ok and len(rest) == 3 and rest[1].upper() == "UNLESS-EXIT" and \
            re.fullmatch(r"-?\d+", rest[2]) is not None
    return [] if ok else [f"{where}: RETRY takes a node, a count and optionally UNLESS-EXIT N"]


def _parse_script(words: list[str], where: str, refs: list, scripts: list,
                  number: int) -> list[str]:
    rest = words[1:]
    if rest and rest[0].upper() == "DEFER":
        rest = rest[3:]
    if rest and rest[0].upper() == "DEBUG":
        rest = rest[3:]
    if len(rest) < 3 or rest[0].upper() not in ("PRE", "POST", "HOLD"):
        return [f"{where}: SCRIPT needs PRE, POST or HOLD, a node and an executable"]
    refs.append((number, f"SCRIPT {rest[0].upper()}", rest[1]))
    scripts.append((number, rest[2]))
    return []


def _find_cycle(names: list[str], edges: list[tuple[str, str]]) -> list[str] | None:
    """A cycle among the edges as a list of names (first repeated at the end), or None."""
    children = defaultdict(list)
    for parent, child in edges:
        children[parent].append(child)
    state: dict[str, int] = {}  # 1 visiting, 2 done
    for start in {*names, *children}:
        if state.get(start):
            continue
        stack = [(start, iter(children[start]))]
        path = [start]
        state[start] = 1
        while stack:
            node, it = stack[-1]
            child = next(it, None)
            if child is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(child) == 1:
                return path[path.index(child):] + [child]
            elif not state.get(child):
                state[child] = 1
                stack.append((child, iter(children[child])))
                path.append(child)
    return None


def require_not_running(dag: Path) -> None:
    """A CondorError while DAGMan runs `dag` (its .lock file exists): a DAG in flight must be
    neither rewritten nor submitted a second time."""
    if Path(dag).with_name(Path(dag).name + ".lock").exists():
        raise CondorError(f"{dag} is running (its .lock file exists: DAGMan is already running "
                          "it): wait for it, or remove it with condor_rm, before writing or "
                          "submitting it again")


def submit_dag(path: Path, *, batch_name: str | None = None,
               getenv: list[str] | None = None) -> int:
    """Submit a DAG to the local schedd; returns the DAGMan job's cluster id.

    Runs from the DAG's directory, so relative paths in it mean what they say. A DAG
    submitted again as it is picks up DAGMan's rescue DAG (finished nodes are not rerun); one
    written anew has none (`write_dag`) and leaves out finished work itself.
    `getenv` names environment variables DAGMan passes on to node jobs that ask for them
    (`condor_submit_dag -include_env`), such as an API key's.
    """
    import htcondor2

    path = Path(path).resolve()
    require_not_running(path)
    try:
        schedd = htcondor2.Schedd()
    except htcondor2.HTCondorException as exc:
        raise CondorError(
            f"no HTCondor schedd is reachable ({str(exc).strip().rstrip('.')}): run this on an "
            "access point where condor_q works, or set CONDOR_CONFIG; the DAG is ready at "
            f"{path} (condor_submit_dag submits it too)") from None
    options: dict[str, Any] = {"UpdateSubmit": True}
    if batch_name:
        options["batch-name"] = batch_name
    if getenv:
        options["GetFromEnv"] = ",".join(getenv)
    with contextlib.chdir(path.parent):
        try:
            description = htcondor2.Submit.from_dag(path.name, options)
            result = schedd.submit(description)
        except htcondor2.HTCondorException as exc:
            raise CondorError(f"submitting {path} failed: {str(exc).strip()}") from None
    return int(result.cluster())


def query_queue(constraint: str, attributes: list[str], timeout: float = 60) -> list[dict]:
    """The ads of the queued jobs that match `constraint` (only `attributes`), from
    `condor_q -json`: it asks the schedd of this access point. A CondorError when condor_q
    is missing, fails or says something that is not JSON."""
    try:
        proc = subprocess.run(["condor_q", "-json", "-constraint", constraint, "-attributes",
                               ",".join(attributes)], capture_output=True, text=True,
                              timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CondorError(f"cannot run condor_q: {exc}") from None
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines() or ["no message"]
        raise CondorError(f"condor_q failed: {lines[-1][:300]}")
    try:
        ads = json.loads(proc.stdout or "[]")
    except ValueError:
        raise CondorError("condor_q -json printed something that is not JSON") from None
    return ads if isinstance(ads, list) else []


def read_node_status(path: Path) -> dict[str, Any] | None:
    """DAGMan's node status file as {"dag": {...}, "nodes": [{...}], "end": {...}}, or None
    when the file does not exist yet. States are names: not_ready, ready, pre, submitted,
    post, done, error, futile."""
    import classad2

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    report: dict[str, Any] = {"dag": {}, "nodes": [], "end": {}}
    for ad in classad2.parseAds(text):
        values = {key: _plain(ad.eval(key)) for key in ad}
        kind = values.get("Type")
        if kind == "DagStatus":
            values["state"] = NODE_STATES.get(values.get("DagStatus"), "unknown")
            report["dag"] = values
        elif kind == "NodeStatus":
            values["state"] = NODE_STATES.get(values.get("NodeStatus"), "unknown")
            report["nodes"].append(values)
        elif kind == "StatusEnd":
            report["end"] = values
    return report


JOB_STATES = {1: "idle", 2: "running", 3: "removed", 4: "completed", 5: "held",
              6: "transferring output", 7: "suspended"}
SUBMITTED_FILE = "submitted.json"


def record_submission(dag: Path, cluster: int) -> None:
    """Note beside the DAG which DAGMan job runs it, for `infer-corpus status`."""
    (dag.parent / SUBMITTED_FILE).write_text(json.dumps(
        {"cluster": cluster, "dag": dag.name, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        + "\n", encoding="utf-8")


def dag_report(dag: Path, status_file: Path, attribute: str, value: str,
               progress: dict[str, str], parents: tuple[str, ...] = ()) -> dict[str, Any]:
    """Where a DAG stands, from DAGMan's node status file, and while it runs (its `.lock`
    exists), its jobs in the queue: those whose ad has `attribute == value`, each with the
    `progress` attributes its job publishes through chirp (report key -> ad attribute).
    `parents`: DAGs beside it that run it as a sub-DAG (their submission is its)."""
    submitted_file = dag.parent / SUBMITTED_FILE
    submitted = (json.loads(submitted_file.read_text(encoding="utf-8"))
                 if submitted_file.is_file() else None)
    if submitted and submitted.get("dag", dag.name) not in (dag.name, *parents):
        submitted = None  # that submission was another DAG's
    report: dict[str, Any] = {"dag": str(dag), "submitted": submitted}
    if dag.with_name(dag.name + ".lock").exists():
        report.update(_queued_jobs(attribute, value, progress))
    status = read_node_status(status_file)
    if status is None:
        report["state"] = "waiting for DAGMan" if submitted else "not submitted"
        return report
    nodes = status["nodes"]
    counts = Counter(n["state"] for n in nodes)
    report.update({
        "state": status["dag"].get("state", "unknown"),
        "updated": status["end"].get("EndTime") or status["dag"].get("Timestamp"),
        "nodes": {state: counts[state] for state in
                  ("done", "submitted", "pre", "post", "ready", "not_ready", "error", "futile")
                  if counts[state]},
        "held": status["dag"].get("JobProcsHeld", 0),
        "retries": sum(n.get("RetryCount", 0) for n in nodes),
        "failed": [n["Node"] for n in nodes if n["state"] == "error"],
    })
    return report


def _queued_jobs(attribute: str, value: str, progress: dict[str, str]) -> dict[str, Any]:
    """{"jobs": [...]} from the schedd, or {"queue_error": why} when condor_q cannot tell."""
    if not shutil.which("condor_q"):
        return {"queue_error": "condor_q is not on the PATH"}
    try:
        ads = query_queue(f"{attribute} == {classad_literal(value)}",
                          ["ClusterId", "ProcId", "DAGNodeName", "JobStatus", "RemoteHost",
                           *progress.values()], timeout=30)
    except CondorError as exc:
        return {"queue_error": str(exc)}
    jobs = []
    for ad in sorted(ads, key=lambda a: (a.get("DAGNodeName") or "", a.get("ProcId", 0))):
        jobs.append({
            "node": ad.get("DAGNodeName"), "job": f"{ad.get('ClusterId')}.{ad.get('ProcId')}",
            "state": JOB_STATES.get(ad.get("JobStatus"), "unknown"), "host": ad.get("RemoteHost"),
            **{key: ad.get(name) for key, name in progress.items()}})
    return {"jobs": jobs}


def _plain(value: Any) -> Any:
    """A ClassAd value as a JSON-friendly Python value."""
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return str(value)


_UNITS = {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}


def quantity(text: str, default_unit: str) -> int:
    """An HTCondor quantity ('16GB', '512M', '2000') in the unit `default_unit` ('K' or 'M')."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)B?\s*", text, re.IGNORECASE)
    if not match:
        raise ValueError(f"{text!r} is not a quantity such as 16GB")
    number, unit = float(match.group(1)), match.group(2).upper()
    if not unit:
        return int(number)
    return int(number * _UNITS[unit] / _UNITS[default_unit])


def cuda_version_code(text: str) -> int:
    """A `gpus_minimum_runtime` value as HTCondor encodes it (major * 1000 + minor * 10, as
    the GPUs' `MaxSupportedVersion`): "13.0" and "13" are 13000, "12.6" is 12060, and a
    number of 1000 or more is taken as already encoded."""
    if not re.fullmatch(r"\d+(\.\d+)?", text.strip()):
        raise ValueError(f"{text!r} is not a CUDA version such as 13.0")
    major, _, minor = text.strip().partition(".")
    if not minor and int(major) >= 1000:
        return int(major)
    return int(major) * 1000 + int(minor or 0) * 10


def job_match_ad(description: Any) -> Any:
    """The matchmaking attributes condor_submit derives from a submit description.

    RequestCpus/Memory/Disk/GPUs; the `gpus_minimum_capability`, `gpus_maximum_capability`,
    `gpus_minimum_memory` and `gpus_minimum_runtime` values as GPUsMinCapability,
    GPUsMaxCapability, GPUsMinMemory (MB) and GPUsMinRuntime (encoded as `cuda_version_code`),
    and RequireGPUs from `require_gpus` and clauses over those attributes, as condor_submit
    writes them (`Capability >= GPUsMinCapability`, `MaxSupportedVersion >= GPUsMinRuntime`);
    and Requirements: the description's own expression and the clauses condor_submit appends
    for the requests. `machine_ad.matches(job_ad)` evaluates the job's Requirements against a
    machine (classad2 evaluates the argument's Requirements).
    """
    import classad2

    def get(key: str) -> str | None:
        value = description.expand(key) if key in description else ""
        return value.strip() or None

    ad = classad2.ClassAd()
    clauses = []
    own = get("requirements")
    if own:
        clauses.append(f"({own})")
    cpus = int(get("request_cpus") or 1)
    ad["RequestCpus"] = cpus
    clauses.append("(TARGET.Cpus >= RequestCpus)")
    if get("request_memory"):
        ad["RequestMemory"] = quantity(get("request_memory"), "M")
        clauses.append("(TARGET.Memory >= RequestMemory)")
    if get("request_disk"):
        ad["RequestDisk"] = quantity(get("request_disk"), "K")
        clauses.append("(TARGET.Disk >= RequestDisk)")
    gpus = int(get("request_gpus") or 0)
    if gpus:
        ad["RequestGPUs"] = gpus
        constraints = [f"({get('require_gpus')})"] if get("require_gpus") else []
        for key, attribute, clause, value in (
                ("gpus_minimum_capability", "GPUsMinCapability", "Capability >= {}", float),
                ("gpus_maximum_capability", "GPUsMaxCapability", "Capability <= {}", float),
                ("gpus_minimum_memory", "GPUsMinMemory", "GlobalMemoryMb >= {}",
                 lambda text: quantity(text, "M")),
                ("gpus_minimum_runtime", "GPUsMinRuntime", "MaxSupportedVersion >= {}",
                 cuda_version_code)):
            if get(key):
                ad[attribute] = value(get(key))
                constraints.append(clause.format(attribute))
        if constraints:
            ad["RequireGPUs"] = classad2.ExprTree(" && ".join(constraints))
            clauses.append("(countMatches(MY.RequireGPUs, TARGET.AvailableGPUs) >= RequestGPUs)")
        else:
            clauses.append("(TARGET.GPUs >= RequestGPUs)")
    ad["Requirements"] = classad2.ExprTree(" && ".join(clauses))
    return ad
