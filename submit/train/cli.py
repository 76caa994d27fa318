"""`train-models`: sweeps of topic heads and multi-node training, locally or on HTCondor.

Thin: parsing, printing, exit codes (0 success, 1 a trial or step failed or HTCondor
refused the work, 2 bad usage/spec/workdir, 85 a trial stopped after a checkpoint to be restarted,
5 `ask` found nothing to run in the wave).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from inference.errors import run_command

from ..config import DATA_SOURCES
from ..preemption import number_or_auto
from . import TrainError

EPILOG = """examples:
  train-models sweep configs/sweep-demo.yaml --workdir demo-run --json
  train-models sweep configs/sweep-demo.yaml --workdir demo-run --executor condor --dry-run
  train-models report --workdir demo-run
  train-models promote --workdir demo-run --sweep embedder-demo
  train-models soup --workdir demo-run --sweep embedder-demo
  train-models multinode configs/multinode-demo.yaml --workdir demo-run --nodes 2 --local
  infer-corpus run --demo --workdir demo-run --set predictions.kind=head \\
      --set predictions.model=demo-run/train/sweep-demo/best-model.pt
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train-models", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train topic-classifier heads on the passage embeddings of an "
                    "infer-corpus workdir: sweeps (grid/random, seeds, ablations) with epoch "
                    "checkpoints, and one model across several nodes with torchrun.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("sweep", help="run a hyperparameter sweep (locally or as an HTCondor DAG)")
    p.add_argument("spec", type=Path, help="sweep spec (YAML), e.g. configs/sweep-demo.yaml")
    p.add_argument("--workdir", type=Path, required=True, help="a finished infer-corpus run")
    p.add_argument("--executor", choices=["local", "condor"], default="local",
                   help="condor: a DAG of the unfinished trials (run again to resubmit: "
                        "finished trials are left out, the others resume from their "
                        "checkpoints)")
    p.add_argument("--dry-run", action="store_true",
                   help="condor: write the DAG and submit files without submitting; "
                        "local: prepare and list the trials without running them")
    p.add_argument("--parallel", type=int, default=0, help="local trials at once (default: cores)")
    p.add_argument("--force", action="store_true", help="start over a sweep whose spec changed")
    p.add_argument("--json", action="store_true", help="end with one JSON summary line")

    p = sub.add_parser("report", help="rank the trials in a table and draw learning curves "
                                      "and each configuration's results as a PNG")
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--sweep", help="sweep name (needed when the workdir holds several)")
    p.add_argument("--out", type=Path, help="PNG path (default: the sweep's report.png)")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser("promote", help="make an embedder sweep's best model (or --trial's) "
                                       "the workdir's: copy it to WORKDIR/models/, check "
                                       "it in int8, print the command that re-embeds")
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--sweep", help="sweep name (needed when the workdir holds several)")
    p.add_argument("--trial", help="a completed trial's id (default: the best), or soup: "
                                   "the sweep's soup (train-models soup)")
    p.add_argument("--out", type=Path,
                   help="model folder (default: WORKDIR/models/SWEEP-TRIAL)")
    p.add_argument("--json", action="store_true", help="print one JSON line")

    p = sub.add_parser("soup", help="average the weights of an embedder sweep's best trials "
                                    "that share a start, greedily (a model soup: one model's "
                                    "inference cost)")
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--sweep", help="sweep name (needed when the workdir holds several)")
    p.add_argument("--top", type=int, default=4,
                   help="average at most this many trials, best first (default: 4)")
    p.add_argument("--json", action="store_true", help="print one JSON line")

    p = sub.add_parser("jobs", help="a sweep's jobs on the pool, attempt by attempt: GPUs, "
                                    "evictions, checkpoints, lost work and goodput")
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--sweep", help="sweep name (needed when the workdir holds several)")
    p.add_argument("--log", type=Path, action="append",
                   help="job event log to read (default: the sweep DAG's condor/sweep.log)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--timeline", type=Path, metavar="PNG",
                   help="also draw each job's attempts as a PNG timeline")

    p = sub.add_parser("multinode", help="train one head across several nodes with torchrun")
    p.add_argument("spec", type=Path,
                   help="multi-node spec (YAML), e.g. configs/multinode-demo.yaml")
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--nodes", help="node count N or MIN:MAX (default: the spec's)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="write the DAG, do not submit")
    mode.add_argument("--local", action="store_true",
                      help="run the nodes as torchrun agents on this machine (gloo on CPU)")
    p.add_argument("--json", action="store_true", help="end with one JSON summary line")

    # Steps that jobs, DAG scripts and torchrun run; users rarely call them directly.
    p = sub.add_parser("trial", help="train or resume one trial (what one job runs)")
    p.add_argument("--trial-dir", type=Path, required=True)
    p.add_argument("--dataset", required=True,
                   help="the dataset file (transfer), or its osdf:/// or pelican:// URL")
    p.add_argument("--data-source", choices=DATA_SOURCES, default="transfer",
                   help="transfer: read the file; stream: read the URL row group by row "
                        "group every epoch; cache: fetch it into the trial's cache/ once")
    p.add_argument("--checkpoint-exit-every", type=number_or_auto(int), default=0,
                   metavar="EPOCHS|auto",
                   help="exit with code 85 after this many epochs (to be restarted); auto: "
                        "Young/Daly's interval from the first epoch's costs")
    p.add_argument("--mean-time-between-evictions", type=float, default=0.0,
                   metavar="SECONDS", help="the pool's, for --checkpoint-exit-every auto")
    p.add_argument("--stop-at-rung", action="store_true",
                   help="exit 0, not 85, after --checkpoint-exit-every epochs: an optuna "
                        "wave's job stops at its rung (DAGMan takes any other exit as a "
                        "failure and removes the rest of the wave)")
    p.add_argument("--threads", type=int, default=1)
    p = sub.add_parser("evaluate", help="early-abort decision (exit 0 go on, 1 a trial job "
                                        "of the wave failed, 3 target reached, 4 trials "
                                        "diverged)")
    p.add_argument("--sweep-dir", type=Path, required=True)
    p.add_argument("--trials", type=lambda text: text.split(","), default=None,
                   metavar="T,...", help="the trials a grid or random wave ran: exit 1 if "
                                         "one did not finish (its job failed)")
    p.add_argument("--wave", type=int, default=None,
                   help="the optuna wave a DAG node ran: exit 1 if one of its trials did not "
                        "reach its rung (its job failed)")
    p = sub.add_parser("collect", help="rank the trials and record the best")
    p.add_argument("--sweep-dir", type=Path, required=True)
    p = sub.add_parser("ask", help="method optuna: ask for a wave's trials (exit 5: nothing "
                                   "to run in it)")
    p.add_argument("--sweep-dir", type=Path, required=True)
    p.add_argument("--wave", type=int, required=True)
    p.add_argument("--submit", action="store_true",
                   help="also write the wave's submit file and item data (the DAG's PRE script)")
    p = sub.add_parser("ddp-train", help="the training script torchrun runs on every process")
    p.add_argument("--run-dir", type=Path, required=True)
    p = sub.add_parser("multinode-rank0", help="rank-0 node: host the rendezvous, publish it")
    p.add_argument("--run-dir", type=Path, required=True)
    p = sub.add_parser("multinode-pre", help="workers' PRE script: read rank 0's job ad")
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--dag-id", required=True, help="the DAGMan job's cluster id ($DAGID)")
    return parser


def _emit(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary))
        return
    for key, value in summary.items():
        if not isinstance(value, dict | list):
            print(f"{key}: {value}")
    if summary.get("best"):
        best = summary["best"]
        print(f"best: {best['trial']} {best['metric']}={best['value']:.4f} -> {best['model']}")


def cmd_sweep(args: argparse.Namespace) -> int:
    from .sweep import Sweep, load_spec, run_local

    spec = load_spec(args.spec)
    if args.parallel < 0:
        raise TrainError("--parallel must be >= 0")
    sweep = Sweep.in_workdir(args.workdir, spec.name)
    trials = sweep.prepare(spec, args.workdir, force=args.force)
    if spec.method == "optuna":
        from .search import create_study

        create_study(sweep, spec)
    if args.executor == "condor":
        from .condor import run_sweep_dag

        summary = run_sweep_dag(sweep, args.dry_run)
        if summary["dag"] is not None or args.json:
            _emit(summary, args.json)
            return 0
        _emit({k: v for k, v in summary.items()
               if k not in ("dag", "submitted", "stopped_early")}, False)
        why = summary["stopped_early"] or "every trial has finished"
        print(f"nothing to run: {why}; no DAG written, nothing submitted")
        return 0
    if args.dry_run:
        for trial in trials:
            print(f"{trial['trial']} {trial['group']} {json.dumps(trial['params'])}")
        _emit({"sweep": spec.name, "trials": len(trials), "completed": 0, "best": None,
               "dry_run": True}, args.json)
        return 0
    log = lambda text: print(text, file=sys.stderr)  # noqa: E731
    if spec.method == "optuna":
        from .search import run_waves

        summary = run_waves(sweep, args.parallel or spec.parallel or os.cpu_count() or 1, log)
    else:
        summary = run_local(sweep, args.parallel, log=log)
    _emit(summary, args.json)
    return 1 if summary["failed"] else 0


def _sweep(args: argparse.Namespace) -> Any:
    """The sweep `--sweep` names, or the workdir's only one."""
    from .sweep import Sweep

    root = args.workdir / "train"
    names = sorted(p.parent.name for p in root.glob("*/trials.json")) if root.is_dir() else []
    if args.sweep:
        name = args.sweep
        if name not in names:
            raise TrainError(f"{args.workdir} holds no sweep {name!r}" + (
                f" (its sweeps: {', '.join(names)})" if names else ""))
    elif len(names) == 1:
        name = names[0]
    else:
        raise TrainError(f"{args.workdir} holds no sweep" if not names else
                         f"{args.workdir} holds several sweeps ({', '.join(names)}): pass --sweep")
    return Sweep.in_workdir(args.workdir, name)


def cmd_report(args: argparse.Namespace) -> int:
    from .report import draw_report, format_table, summarize

    sweep = _sweep(args)
    summary = summarize(sweep)
    summary["png"] = str(draw_report(sweep, args.out or sweep.root / "report.png", summary))
    print(json.dumps(summary) if args.json else f"{format_table(summary)}\n{summary['png']}")
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    from .promote import describe, promote

    record = promote(args.workdir, _sweep(args), args.trial, args.out)
    print(json.dumps(record) if args.json else describe(record))
    return 0


def cmd_soup(args: argparse.Namespace) -> int:
    os.environ.setdefault("TQDM_DISABLE", "1")  # the trainer's bars would mix with the steps
    from .soup import describe, make_soup

    record = make_soup(_sweep(args), args.top,
                       log=lambda text: print(text, file=sys.stderr))
    print(json.dumps(record) if args.json else describe(record))
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    from ..jobs_report import report
    from .condor import SWEEP_DAG

    condor = _sweep(args).root / "condor"
    dags = sorted(condor.glob("*.dag")) if condor.is_dir() else []
    if not dags:
        raise TrainError(f"{condor} holds no DAG: run `train-models sweep --executor condor` "
                         "first")
    print(report(args.log or [condor / "sweep.log"], [condor / SWEEP_DAG], as_json=args.json,
                 timeline=args.timeline))
    return 0


def cmd_multinode(args: argparse.Namespace) -> int:
    from .multinode import clear_outputs, load_multinode_spec, prepare_run, run_local

    spec = load_multinode_spec(args.spec, nodes=args.nodes)
    run = prepare_run(spec, args.workdir)
    if args.local:
        summary = run_local(run)
    else:
        from .condor import submit_dag, write_multinode_dag

        dag = write_multinode_dag(run)
        summary = {"run": spec.name, "nodes": spec.nodes, "dag": str(dag), "submitted": None}
        if not args.dry_run:
            summary["submitted"] = submit_dag(dag)
            clear_outputs(run)  # the new jobs bring theirs back; a failed one leaves none
    _emit(summary, args.json)
    return 0


def run(args: argparse.Namespace) -> int:
    """The chosen command's exit code; errors are the callers' to report (see `main`)."""
    if args.command == "sweep":
        return cmd_sweep(args)
    if args.command == "report":
        return cmd_report(args)
    if args.command == "promote":
        return cmd_promote(args)
    if args.command == "soup":
        return cmd_soup(args)
    if args.command == "jobs":
        return cmd_jobs(args)
    if args.command == "multinode":
        return cmd_multinode(args)
    if args.command == "trial":
        from .trial import run_trial, rung_exit

        return rung_exit(run_trial(args.trial_dir, args.dataset, args.checkpoint_exit_every,
                                   args.threads,
                                   mean_time_between_evictions=args.mean_time_between_evictions,
                                   data_source=args.data_source), args.stop_at_rung)
    if args.command in ("evaluate", "collect"):
        from . import sweep as sweeps

        sweep = sweeps.Sweep(args.sweep_dir)
        if args.command == "collect":
            result = sweeps.collect(sweep)
        elif sweep.spec().method == "optuna":
            from .search import evaluate_study

            result = evaluate_study(sweep, args.wave)
        else:
            result = sweeps.evaluate(sweep, sweeps.unfinished_of(sweep, args.trials or []))
        print(json.dumps(result))
        return result["code"] if args.command == "evaluate" else 0
    if args.command == "ask":
        from .search import ASK_NOTHING, ask
        from .sweep import Sweep

        sweep = Sweep(args.sweep_dir)
        items = ask(sweep, args.wave)
        if items and args.submit:
            from .condor import write_wave_submit

            write_wave_submit(sweep, args.wave, items)
        print(json.dumps({"wave": args.wave, "trials": items}))
        return 0 if items else ASK_NOTHING
    if args.command == "multinode-pre":
        from .condor import pre_script

        return pre_script(args.run_dir, args.dag_id)
    from . import multinode

    if args.command == "ddp-train":
        multinode.ddp_train(args.run_dir)  # ends the process itself
    return multinode.serve_rank0(args.run_dir)


def main(argv: list[str] | None = None) -> int:
    """Bad usage, spec or workdir exits 2; HTCondor refusing the work (no schedd, a DAG
    already running: the files stay written) or a failed step exits 1."""
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return run_command("train-models", lambda: run(args),
                       interrupted="interrupted; run the same command again to resume")


if __name__ == "__main__":
    sys.exit(main())
