"""The packages' layering and the absence of import cycles, as the import graph shows them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("infer_corpus", "inference", "retrieval", "qa_api", "submit")


def test_layers_contract_holds():
    """pyproject.toml's import-linter contracts: imports only point down the layers."""
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "broken" in proc.stdout and " 0 broken" in proc.stdout


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in sorted(graph.find_modules_directly_imported_by(module)):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return groups


def test_no_import_cycles_between_modules():
    """Function-level imports count too: a cycle hidden in a function is still a cycle."""
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    assert _cycles(graph) == []


def test_cycle_finder_finds_a_cycle():
    graph = grimp.ImportGraph()
    for module in ("a", "a.x", "a.y", "a.z"):
        graph.add_module(module)
    graph.add_import(importer="a.x", imported="a.y")
    graph.add_import(importer="a.y", imported="a.x")
    graph.add_import(importer="a.y", imported="a.z")
    assert _cycles(graph) == [["a.x", "a.y"]]


def test_light_modules_load_no_heavy_packages():
    """`inference.errors` and `inference.config_loader` are imported by every command and by
    the pool's step scripts before any work starts: they must not pull in pyarrow, torch or
    tokenizers (the package's `__init__` imports none of its modules)."""
    heavy = ("pyarrow", "torch", "tokenizers", "transformers")
    probe = ("import sys, inference.errors, inference.config_loader; "
             f"print([m for m in sys.modules if m.split('.')[0] in {heavy!r}])")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True)
    assert proc.stdout.strip() == "[]"
    # and the probe does see a heavy package when one is loaded
    proc = subprocess.run([sys.executable, "-c", probe.replace("import sys,",
                                                               "import sys, pyarrow,")],
                          capture_output=True, text=True, check=True)
    assert "pyarrow" in proc.stdout


def test_the_error_tree_in_errors_py_is_the_real_one():
    """`inference.errors`' docstring draws every CorpusError subclass under its parent, with
    the module that defines it: a new error class goes into the drawing."""
    import importlib
    import re

    from inference import errors

    for package in PACKAGES:
        for module in grimp.build_graph(package).modules:
            # not the optional extra, nor a `python -m` entry point (it runs on import)
            if module != "qa_api.langchain_interop" and not module.endswith("__main__"):
                importlib.import_module(module)

    def subclasses(parent: type) -> set[tuple[str, str, str]]:
        found = set()
        for child in parent.__subclasses__():
            if child.__module__.split(".")[0] in PACKAGES:
                module = child.__module__.removesuffix(".__init__")
                found |= {(child.__name__, parent.__name__, module)} | subclasses(child)
        return found

    drawn, parents = set(), {}
    tree = errors.__doc__.split("```")[1]
    for line in tree.strip().splitlines()[1:]:
        depth = len(re.match(r"[│├└─ ]*", line).group()) // 4
        name, rest = line.lstrip("│├└─ ").split(maxsplit=1)
        parents[depth] = name
        if depth > 1:  # the leaves name their module; UsageError and Failure live in errors
            drawn.add((name, parents[depth - 1], rest.split()[0]))
        else:
            drawn.add((name, "CorpusError", "inference.errors"))
    assert drawn == subclasses(errors.CorpusError)


def test_ruff_finds_nothing():
    """The lint rules chosen in pyproject.toml ([tool.ruff.lint], with why) hold everywhere."""
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(ROOT)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-1000:]
