"""POST script of a shard node: a job's result enters results/ only when it checks out.

    python -m submit.validate --workdir DIR --shard N --job-exit $RETURN

A result that came back (condor/incoming/result-NNNNN.parquet) must be a result file of the
current schema version, made with this run's settings (its result key), with the manifest's
row count, the shard's passage ids in the shard's order, and finite embeddings. Then it is
moved into results/ atomically and the script exits 0. Otherwise the file is kept as
`*.rejected` for a look, the reason goes to condor/logs/validate.log, and the script exits 1,
so DAGMan retries the node. A failed job's exit code is passed on unchanged: 2 (bad input)
stops the retries through `RETRY ... UNLESS-EXIT 2`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from inference.errors import UsageError, run_command
from inference.results import stored_key
from inference.schema import check_schema_version
from inference.workdir import Workdir

from .pipeline import condor_dir, incoming_path


class ResultError(UsageError):
    """A result file that must not be loaded (the POST script turns it into a retry)."""


def check_result(workdir: Workdir, shard: int) -> int:
    """Raise ResultError unless the incoming result of `shard` is sound; returns its rows."""
    manifest = workdir.manifest()
    entry = manifest.shard(shard)
    path = incoming_path(workdir, shard)
    if not path.is_file():
        raise ResultError(f"the job sent back no result ({path.name} is missing)")
    try:
        meta = pq.read_metadata(path)
        schema = meta.schema.to_arrow_schema()
        check_schema_version(schema, "result", path.name)
    except (OSError, pa.ArrowException, ValueError) as exc:
        raise ResultError(f"unreadable result: {exc}") from None
    expected, found = manifest.result_key(), stored_key(schema)
    if found != expected:
        raise ResultError(f"result key {found or '(none)'} does not match this run's {expected}"
                          " (made with other model or prediction settings)")
    if meta.num_rows != entry.rows:
        raise ResultError(f"{meta.num_rows} rows, the manifest says {entry.rows}")
    try:
        table = pq.read_table(path, columns=["passage_id", "embedding"])
        ids = pq.read_table(workdir.shard_path(shard), columns=["passage_id"])
    except (OSError, pa.ArrowException) as exc:
        raise ResultError(f"cannot read rows: {exc}") from None
    if not table.column("passage_id").equals(ids.column("passage_id")):
        raise ResultError("passage ids differ from the shard's (or are in another order)")
    values = pc.list_flatten(table.column("embedding"))
    if len(values) and not np.isfinite(values.to_numpy().astype(np.float32)).all():
        raise ResultError("embeddings hold NaN or infinite values")
    return meta.num_rows


def log_decision(dag_dir: Path, line: str) -> None:
    """A POST script's decision, appended to DAG_DIR/logs/validate.log."""
    logs = dag_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / "validate.log", "a", encoding="utf-8") as handle:
        handle.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")


def accept_file(dag_dir: Path, label: str, job_exit: int, incoming: Path, target: Path,
                check: Callable[[], str]) -> int:
    """A POST script's decision on the file a job sent back, as its exit code: the job's own
    failure passed on; 1 (retry) when `check` raises ResultError, the file kept as
    `*.rejected`; else 0, the file moved to `target`. `check` says what was accepted."""
    if job_exit != 0:
        log_decision(dag_dir, f"{label}: job exited with {job_exit}")
        return job_exit if 0 < job_exit < 256 else 1
    try:
        accepted = check()
    except ResultError as exc:
        log_decision(dag_dir, f"{label}: rejected: {exc}")
        if incoming.is_file():
            os.replace(incoming, incoming.with_name(incoming.name + ".rejected"))
        return 1
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(incoming, target)
    log_decision(dag_dir, f"{label}: accepted {accepted}")
    return 0


def accept(workdir: Workdir, shard: int, job_exit: int) -> int:
    """The POST script's decision as an exit code (see the module docstring)."""
    return accept_file(condor_dir(workdir), f"shard {shard}", job_exit,
                       incoming_path(workdir, shard), workdir.result_path(shard),
                       lambda: f"{check_result(workdir, shard)} passages")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m submit.validate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--shard", type=int, required=True)
    parser.add_argument("--job-exit", type=int, required=True,
                        help="the job's exit code (DAGMan's $RETURN)")
    args = parser.parse_args(argv)
    return run_command("submit.validate",
                       lambda: accept(Workdir(args.workdir), args.shard, args.job_exit))


if __name__ == "__main__":
    sys.exit(main())
