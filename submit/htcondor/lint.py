"""What DAGMan would reject, found before submission: a node without a submit file that
parses, PARENT/CHILD names that do not exist, cycles, a throttle on no category; and a node
VARS value that its submit file would quietly override."""

from __future__ import annotations

import contextlib
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

_NODE_KEYWORDS = {"JOB", "FINAL", "PROVISIONER", "SERVICE"}
_KNOWN_KEYWORDS = _NODE_KEYWORDS | {"SUBDAG",
    "PARENT", "RETRY", "SCRIPT", "VARS", "CATEGORY", "MAXJOBS", "NODE_STATUS_FILE", "CONFIG",
    "ABORT-DAG-ON", "PRIORITY", "DOT", "JOBSTATE_LOG", "SET_JOB_ATTR", "PRE_SKIP", "DONE",
    "ENV", "SAVE_POINT_FILE", "REJECT",
}
_VAR = re.compile(r'([^\s="]+)\s*=\s*"(?:[^"\\]|\\.)*"')


def dag_node_names(path: Path) -> set[str]:
    """The node names a DAG file declares (JOB, FINAL, PROVISIONER, SERVICE, SUBDAG
    EXTERNAL)."""
    names = set()
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        words = line.split()
        keyword = words[0].upper() if words else ""
        if keyword in _NODE_KEYWORDS and len(words) >= 2:
            names.add(words[1])
        elif keyword == "SUBDAG" and len(words) >= 3 and words[1].upper() == "EXTERNAL":
            names.add(words[2])
    return names


def lint_dag(path: Path) -> list[str]:
    """Problems DAGMan would stop on, or that make a DAG quietly wrong; [] when none.

    Checks: known commands; unique node names; every node's submit file exists (unless its
    PRE script writes it) and parses with `htcondor2.Submit` (its item data file included);
    every name in PARENT/CHILD, RETRY, SCRIPT, VARS, CATEGORY, ABORT-DAG-ON exists; scripts
    exist; MAXJOBS names a category in use and `CATEGORY` is not used as a throttle; FINAL
    nodes have no edges; no cycles; no VARS macro (unless APPEND) that the node's submit file
    sets too: DAGMan sets such macros before it reads the submit file, so the file's own
    value wins (`request_memory = $(request_memory)` there is a self-reference, which
    `htcondor2.Submit` expands to the command's default when the file is written).
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
    submits: list[tuple[str, str, Path]] = []  # (where, node, submit file)
    prepended: dict[str, dict[str, int]] = defaultdict(dict)  # node: {macro: line}
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
                submits.append((where, name, base / directory / submit))
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
            elif keyword == "VARS" and (len(words) < 3 or words[2].upper() != "APPEND"):
                for macro in _VAR.findall(raw.split(None, 2)[2] if len(words) > 2 else ""):
                    prepended[words[1]][macro.lower()] = number
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
    for where, name, submit in submits:  # DAGMan submits a node after its PRE script, which
        if name in pre_scripts and not submit.exists():  # may write the submit file
            continue
        found, sets = _check_submit_file(submit, where, htcondor2)
        problems += found
        for macro, number in {**prepended["ALL_NODES"], **prepended[name]}.items():
            if macro in sets:
                problems.append(f"{path.name}:{number}: VARS {macro} of node {name} is "
                                f"overridden by {submit.name}, which sets {macro} itself "
                                "(DAGMan sets VARS before reading the submit file): give the "
                                "value another name and refer to it there as $(name)")
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


def _check_submit_file(submit: Path, where: str, htcondor2: Any) -> tuple[list[str], set[str]]:
    """The submit file's problems, and the commands and macros it sets (lower case)."""
    if not submit.is_file():
        return [f"{where}: submit file {submit} does not exist"], set()
    try:
        text = submit.read_text(encoding="utf-8")
        with contextlib.chdir(submit.parent):  # a queue-from file is relative to it
            description = htcondor2.Submit(text)
            description.itemdata()
    except (ValueError, RuntimeError, OSError) as exc:
        return [f"{where}: submit file {submit.name} does not parse: {exc}"], set()
    return [], {key.lower() for key in description.keys()}


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
