"""What state a workdir is in: read from the manifest and checked against the files on disk."""

from __future__ import annotations

from collections import Counter
from typing import Any

from .workdir import Workdir


def workdir_status(workdir: Workdir) -> dict[str, Any]:
    """Each shard is done (a current result file), partial (a worker is writing or was
    killed while writing), or pending."""
    manifest = workdir.manifest()
    finished = manifest.partitioned
    key = manifest.result_key() if finished else ""
    shards = []
    for entry in manifest.shards if finished else []:
        n = entry.shard
        if workdir.result_is_current(entry, key):
            state = "done"
        elif any(workdir.results_dir.glob(f".shard-{n:05d}.parquet.tmp-*")):
            state = "partial"
        else:
            state = "pending"
        shards.append({"shard": n, "rows": entry.rows, "state": state})
    counts = Counter(s["state"] for s in shards)
    return {
        "workdir": str(workdir.root),
        "partition": manifest.partition,
        "shard_total": len(shards),
        "counts": {state: counts.get(state, 0) for state in ("done", "partial", "pending")},
        "passages_total": sum(s["rows"] for s in shards),
        "passages_done": sum(s["rows"] for s in shards if s["state"] == "done"),
        "shards": shards,
    }
