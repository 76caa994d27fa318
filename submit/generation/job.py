"""What a generation job runs on an execute node: one model over one prompt shard, from the
transferred manifest, checkpointing and publishing its progress in its job ad."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from inference.generation.generate import (
    GenerationWorker,
    ModelRun,
)
from inference.generation.manifest import GenerationManifest

from ..chirp import JobAd
from ..preemption import announce_auto_checkpoint


class Progress:
    """Rows done and output tokens/s of a job, on stderr at each row checkpoint and in the job
    ad (ChirpGenerationRowsDone, ChirpGenerationRowsTotal, ChirpGenerationTokensPerSecond)."""

    def __init__(self, model: str, shard: int) -> None:
        self.label = f"{model} shard {shard}"
        self.started = time.monotonic()
        self.ad = JobAd(self.label)

    def __call__(self, event: dict[str, Any]) -> None:
        if event["event"] == "ready":  # loading the model is not generating
            self.started = time.monotonic()
            self.ad.record("ready")
        elif event["event"] == "checkpoint":
            seconds = max(time.monotonic() - self.started, 1e-9)
            rate = event["output_tokens"] / seconds
            print(f"{self.label}: {event['rows']:,} of {event['of']:,} rows "
                  f"({event['generated']:,} by this start, {rate:,.1f} output tokens/s)",
                  file=sys.stderr)
            self.ad.publish({"ChirpGenerationRowsDone": str(event["rows"]),
                             "ChirpGenerationRowsTotal": str(event["of"]),
                             "ChirpGenerationTokensPerSecond": f"{rate:.1f}"},
                            force=event["rows"] == event["of"])




def run_job(model: str, shard: int, prompts_file: Path, output_file: Path, *,
            manifest_file: Path, checkpoint_after: float | str = 0,
            checkpoint_exit_code: int = 85, mean_time_between_evictions: float = 0.0) -> int:
    """Generate one shard in the job's scratch directory; returns 0, or the checkpoint code
    when it stopped at a checkpoint (HTCondor restarts it there). `checkpoint_after` auto:
    the model is loaded first, and the interval follows from how long that took
    (`submit.preemption.auto_checkpoint_seconds`)."""
    manifest = GenerationManifest.from_file(manifest_file)
    run = ModelRun.from_manifest(manifest, model)
    threads = int(os.environ.get("OMP_NUM_THREADS") or 0)  # HTCondor sets it to request_cpus
    worker_progress = Progress(model, shard)
    worker = GenerationWorker(run, threads, on_event=worker_progress)
    try:
        if checkpoint_after == "auto":
            worker.backend()  # what a restart repeats
            checkpoint_after = announce_auto_checkpoint(
                worker_progress.ad, worker_progress.label, "row checkpoint",
                time.time() - worker_progress.ad.started, mean_time_between_evictions)
        outcome = worker.run_shard(shard, prompts_file, manifest.shard_rows(shard), output_file,
                                   stop_after=float(checkpoint_after))
    finally:
        worker.close()
    if outcome.state == "checkpointed":
        worker_progress.ad.record("checkpoint", started=round(time.time(), 3),
                                  covers=f"{outcome.generated} rows")
        print(f"{model} shard {shard}: checkpoint after {outcome.generated} rows",
              file=sys.stderr)
        return checkpoint_exit_code
    print(f"{model} shard {shard}: {outcome.rows} rows ({outcome.errors} row errors) -> "
          f"{output_file}", file=sys.stderr)
    return 0
