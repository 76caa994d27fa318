"""`python -m submit.generation job|post`: a generation job, or its POST script."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from inference.errors import UsageError, run_command
from inference.workdir import Workdir

from ..job import BadInput
from ..preemption import add_checkpoint_options
from . import __doc__ as PACKAGE_DOC
from .job import run_job
from .validate import accept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m submit.generation", description=PACKAGE_DOC,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="step", required=True)
    job = sub.add_parser("job", help="generate one prompt shard with one model (a job)")
    job.add_argument("--model", required=True)
    job.add_argument("--shard", type=int, required=True)
    job.add_argument("--prompts-file", type=Path, required=True)
    job.add_argument("--output-file", type=Path, required=True)
    job.add_argument("--manifest", type=Path, default=Path("manifest.json"))
    add_checkpoint_options(job, "row checkpoint", "model load")
    post = sub.add_parser("post", help="check a job's output and move it into place")
    post.add_argument("--workdir", required=True)
    post.add_argument("--model", required=True)
    post.add_argument("--shard", type=int, required=True)
    post.add_argument("--job-exit", type=int, required=True,
                      help="the job's exit code (DAGMan's $RETURN)")
    args = parser.parse_args(argv)
    if args.step == "post":
        return run_command("submit.generation", lambda: accept(
            Workdir(args.workdir), args.model, args.shard, args.job_exit))

    def body() -> int:
        try:
            return run_job(args.model, args.shard, args.prompts_file, args.output_file,
                           manifest_file=args.manifest, checkpoint_after=args.checkpoint_after,
                           mean_time_between_evictions=args.mean_time_between_evictions,
                           checkpoint_exit_code=args.checkpoint_exit_code)
        except UsageError as exc:  # named as the exit code's meaning in the job's stderr
            raise BadInput(str(exc)) from None

    code = run_command("submit.generation", body)
    if code not in (0, args.checkpoint_exit_code) and not args.output_file.exists():
        args.output_file.touch()  # lets HTCondor end the job with its exit code (no hold)
    return code


if __name__ == "__main__":
    sys.exit(main())
