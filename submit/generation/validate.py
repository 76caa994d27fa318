"""The POST check of a generation job: an output moves into generations/MODEL/ only when it
checks out; otherwise DAGMan retries the node."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from inference.generation.generate import (
    FINISH_REASONS,
    output_keys,
    output_path,
)
from inference.generation.manifest import GenerationManifest
from inference.generation.prompts import prompt_shard_path
from inference.schema import check_schema_version
from inference.workdir import Workdir

from ..validate import ResultError, accept_file
from .dag import generation_dir, incoming_path


def check_output(workdir: Workdir, model: str, shard: int) -> int:
    """Raise ResultError unless the incoming output of (model, shard) is sound; its rows."""
    manifest = GenerationManifest.require(workdir.root)
    entry = manifest.model(model)
    rows = manifest.shard_rows(shard)
    path = incoming_path(workdir, model, shard)
    if not path.is_file():
        raise ResultError(f"the job sent back no output ({path.name} is missing)")
    try:
        check_schema_version(pq.read_schema(path), "generation", path.name)
    except (OSError, pa.ArrowException, ValueError) as exc:
        raise ResultError(f"unreadable output: {exc}") from None
    keys = output_keys(path)
    if keys is None or keys[0] != entry.generation_key or keys[1] != entry.label_key:
        raise ResultError(f"generation/label key {keys[:2] if keys else None} does not match "
                          f"this study's ({entry.generation_key}, {entry.label_key})")
    if keys[2] != rows:
        raise ResultError(f"{keys[2]} rows, the prompt shard has {rows}")
    try:
        table = pq.read_table(path, columns=["row_id", "output", "finish_reason"])
        ids = pq.read_table(prompt_shard_path(workdir.root, shard), columns=["row_id"])
    except (OSError, pa.ArrowException) as exc:
        raise ResultError(f"cannot read rows: {exc}") from None
    if not table.column("row_id").equals(ids.column("row_id")):
        raise ResultError("row ids differ from the prompt shard's (or are in another order)")
    reasons = set(table.column("finish_reason").to_pylist())
    if not reasons <= set(FINISH_REASONS):
        raise ResultError(f"unknown finish reasons {sorted(reasons - set(FINISH_REASONS))}")
    no_text = pc.and_(pc.is_null(table.column("output")),
                      pc.not_equal(table.column("finish_reason"), "error"))
    if pc.any(no_text).as_py():
        raise ResultError("a row without output is not marked as an error")
    return rows


def accept(workdir: Workdir, model: str, shard: int, job_exit: int) -> int:
    """The POST script's decision as an exit code (see the module docstring)."""
    return accept_file(generation_dir(workdir), f"{model} shard {shard}", job_exit,
                       incoming_path(workdir, model, shard),
                       output_path(workdir.root, model, shard),
                       lambda: f"{check_output(workdir, model, shard)} rows")
