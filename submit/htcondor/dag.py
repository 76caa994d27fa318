"""The DAG model (`Dag`, `Node`, `Script`) and its file, written directly rather than with
`htcondor2.dags` (which writes `CATEGORY name N` where DAGMan expects `MAXJOBS name N`, never
writes a FINAL node's submit file, and has no PROVISIONER nodes)."""

from __future__ import annotations

import glob
import re
from dataclasses import dataclass, field
from pathlib import Path

from .description import write_text

NODE_KINDS = ("JOB", "FINAL", "PROVISIONER", "SUBDAG")  # SUBDAG: SUBDAG EXTERNAL


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
    pre_skip: int | None = None  # the PRE script's exit value that skips the job and POST
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
        if node.pre_skip is not None:  # DAGMan then marks the node done
            lines.append(f"PRE_SKIP {node.name} {node.pre_skip}")
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
    write_text(path, dag_text(dag))
    for rescue in path.parent.glob(f"{glob.escape(path.name)}.rescue[0-9][0-9][0-9]"):
        rescue.unlink(missing_ok=True)
    return path
