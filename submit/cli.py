"""`infer-corpus submit` and the DAG's section of `infer-corpus status`: this package's
plugin for the `infer-corpus` command line (see `inference.plugins`)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from inference.config import load_config
from inference.executor import RunError
from inference.workdir import Workdir


def add_commands(sub: argparse._SubParsersAction,
                 config_args: Callable[[argparse.ArgumentParser], None]) -> None:
    submit = sub.add_parser(
        "submit", help="write (and submit) the HTCondor DAG: one GPU job per shard",
        description="Write DIR/condor/: a DAG (partition check -> one GPU job per unfinished "
        "shard, each result validated by a POST script -> index, then a final report), its "
        "submit files and job script, all from the config's `condor` section; lint it, then "
        "submit it to the local schedd unless --dry-run. Needs a partitioned workdir.")
    submit.add_argument("--workdir", required=True, help="a partitioned run directory")
    config_args(submit)
    submit.add_argument("--dry-run", action="store_true",
                        help="only write and check the files; submit nothing")
    submit.add_argument("--json", action="store_true", help="end with one JSON summary line")
    submit.set_defaults(handler=cmd_submit)


def cmd_submit(args: argparse.Namespace) -> int:
    from .htcondor import CondorError
    from .pipeline import submit_pipeline

    config = load_config(args.config, args.overrides)
    try:
        summary = submit_pipeline(Workdir(args.workdir), config, dry_run=args.dry_run)
    except CondorError as exc:
        raise RunError(str(exc)) from None
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"wrote {summary['dag']}: partition -> {summary['shard_jobs']} shard jobs -> index, "
          f"final report ({summary['shards_done']} shards already done); lint: ok")
    if summary["staged"]:
        print(f"staged {summary['staged']} shards for the jobs' data URL (see stage.tsv)")
    again = f"infer-corpus submit --workdir {args.workdir}" + "".join(
        f" {flag} {value}" for flag, value in [("--config", args.config)] if value) + "".join(
        f" --set {o}" for o in args.overrides)
    if args.dry_run:
        print(f"dry run: nothing submitted. Review {Path(summary['dag']).parent}/, then "
              f"submit with:\n  {again}")
    else:
        print(f"submitted: DAGMan job {summary['cluster']}. Follow it with:\n"
              f"  infer-corpus status --workdir {args.workdir}   (or condor_q -dag -nobatch)")
    return 0


def print_status(dag: dict[str, Any]) -> None:
    if "nodes" not in dag:
        print(f"condor DAG: {dag['state']} ({dag['dag']})")
        return
    nodes = ", ".join(f"{n} {state}" for state, n in dag["nodes"].items())
    print(f"condor DAG: {dag['state']}; nodes: {nodes}; retries {dag['retries']}, "
          f"held jobs {dag['held']}")
    if dag["failed"]:
        print(f"  failed nodes: {', '.join(dag['failed'])} (logs in {Path(dag['dag']).parent}"
              "/logs/)")


def status(workdir: Workdir) -> dict[str, Any] | None:
    """The DAG's state, when the workdir has one (its section is `condor`)."""
    if not (workdir.root / "condor").is_dir():
        return None
    from .pipeline import dag_status

    return dag_status(workdir)
