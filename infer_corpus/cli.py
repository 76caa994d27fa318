"""`infer-corpus`: the command line over every stage. Thin: parsing, printing, exit codes.

It sits above the packages it composes (the pipeline in `inference`, the index and search in
`retrieval`, the DAG in `submit`), so none of them imports another's commands.

Exit codes: 0 success; 1 a worker or step failed; 2 bad usage, config, input or workdir
(retrying the same command cannot help); see `inference.errors`.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from inference import __version__
from inference.config import MAX_WORKERS
from inference.demo import demo_corpus_path
from inference.devices import usable_cpus
from inference.errors import UsageError, run_command
from inference.readers import InputError
from inference.workdir import Workdir
from retrieval.config import BACKENDS

from .config import load_config

DESCRIPTION = """\
Shard a document corpus into Parquet, embed and classify every passage, resumably.

  infer-corpus run --demo --workdir demo-run          # the bundled demo corpus
  infer-corpus run --input 'articles/*.jsonl.gz' --workdir run1 --config configs/default.yaml
  infer-corpus status --workdir run1

A workdir is one run: re-running the same command does only the work that is missing.
"""


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML config (see configs/default.yaml)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one config option, e.g. --set model.batch_size=64 (repeatable)",
    )


def _index_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=BACKENDS,
                        help="index backend (default: the config's index.backend, embedded)")
    parser.add_argument("--es-url", metavar="URL", help="Elasticsearch URL, e.g. "
                        "http://localhost:9200 (default: index.url; API key from $ES_API_KEY)")


def _index_overrides(args: argparse.Namespace) -> list[str]:
    """--backend / --es-url as config overrides, so the workdir records the choice."""
    return [f"index.{key}={value}" for key, value in
            [("backend", args.backend), ("url", args.es_url)] if value]


def _cpu_workers(workers: int) -> int:
    """Worker processes for CPU work: as asked, or 0 for one per CPU this process may use
    (on an HTCondor slot, the CPUs it requested)."""
    return workers or usable_cpus()


def _input_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--input", dest="inputs", action="extend", nargs="+", default=[], metavar="PATH",
        help="input files, directories or globs: .jsonl, .jsonl.gz, .csv, .csv.gz, .parquet",
    )
    parser.add_argument("--demo", action="store_true",
                        help="add the bundled demo corpus to the inputs")
    parser.add_argument("--force", action="store_true",
                        help="discard a workdir that holds a partition of other inputs")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="infer-corpus", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="partition, then embed every shard (local executor)",
                         description="Partition the inputs, then run every unfinished shard in "
                         "parallel worker processes (one per GPU, or CPU workers).")
    _input_args(run)
    run.add_argument("--workdir", required=True, help="run directory (created if missing)")
    _config_args(run)
    run.add_argument("--workers", type=int, help="worker processes (default: one per GPU, or 1)")
    _index_args(run)
    run.add_argument("--json", action="store_true", help="end with one JSON summary line")

    part = sub.add_parser("partition", help="validate, split and shard the inputs",
                          description="Stream the inputs, quarantine bad rows to rejects/, "
                          "split articles into passages, drop duplicates, write shards. The "
                          "inputs are cut into parts of about shards.part_bytes (large JSONL "
                          "files by line ranges, Parquet by row groups) that are partitioned "
                          "in parallel; the result is the same for any number of workers.")
    _input_args(part)
    part.add_argument("--workdir", required=True, help="run directory (created if missing)")
    _config_args(part)
    part.add_argument("--workers", type=int, metavar="N",
                      help="processes that partition parts in parallel (default: one per CPU)")
    part.add_argument("--json", action="store_true", help="end with one JSON summary line")

    step = sub.add_parser(
        "partition-step", help="one job of a partition on the pool (what partition.dag runs)",
        description="A step of `partition` as one job of partition.dag, in the job's scratch "
        "directory: `map` one part of the plan into part-N/, `merge` the mapped parts' keys "
        "into merge/, or `write` one part's shards into written-N/. `submit --input` writes "
        "the DAG that runs these; they are not meant to be typed.")
    step.add_argument("step", choices=["map", "merge", "write"])
    step.add_argument("--plan", required=True, metavar="FILE", help="the partition's plan.json")
    step.add_argument("--part", type=int, metavar="N", help="map, write: the part")
    step.add_argument("--input", dest="input_file", metavar="FILE",
                      help="map: the part's input file")
    step.add_argument("--keys", metavar="DIR", default="keys",
                      help="merge: the folder of the mapped parts' keys (default keys)")
    step.add_argument("--merge", metavar="DIR", default="merge",
                      help="write: the folder of the merge's part-N.npz and merge.json "
                      "(default merge)")
    _config_args(step)

    shard = sub.add_parser("shard", help="embed and classify one or more shards",
                           description="Compute embeddings and predictions for shards of a "
                           "partitioned workdir: the command one HTCondor job runs. A finished "
                           "shard is skipped; a killed one is redone from the start.")
    shard.add_argument("--workdir", required=True, help="a partitioned run directory")
    shard.add_argument("--shard", dest="shards", type=int, action="append", required=True,
                       metavar="N", help="shard number (repeatable)")
    shard.add_argument("--threads", type=int, default=0, help="CPU threads (default: all)")
    shard.add_argument("--events", action="store_true",
                       help="print progress as JSON lines (used by the local executor)")
    shard.add_argument("--json", action="store_true", help="end with one JSON summary line")

    index = sub.add_parser("index", help="load a finished workdir into its search index",
                           description="Build the embedded index (tantivy BM25 + float16 "
                           "embeddings) of a workdir, or load it into Elasticsearch (a new index, "
                           "then an alias swap). Loading the same results again is a no-op.")
    index.add_argument("--workdir", required=True)
    _index_args(index)
    index.add_argument("--workers", type=int, default=0, help="embedded: processes that build "
                       "the index's pieces (default: one per CPU)")
    index.add_argument("--shards", metavar="A-B", help="index only shards A..B (one job of a "
                       "parallel build): embedded, as one piece that a later `index` combines; "
                       "elasticsearch, into the new index, with --no-swap")
    index.add_argument("--no-swap", action="store_true",
                       help="elasticsearch: load, but leave the alias where it is")
    index.add_argument("--swap-only", action="store_true", help="elasticsearch: load nothing; "
                       "check that the new index holds every passage, then move the alias")
    index.add_argument("--json", action="store_true", help="print one JSON object")

    search = sub.add_parser("search", help="search a workdir's index",
                            description="BM25 screening, then dense re-ranking or fusion.")
    search.add_argument("--workdir", required=True)
    _index_args(search)
    search.add_argument("query", help="free text; query syntax characters are ignored")
    search.add_argument("--top-k", type=int, default=5, help="hits to show (default 5)")
    search.add_argument("--screening-top-k", type=int, default=100,
                        help="BM25 / dense candidates before re-ranking (default 100)")
    search.add_argument("--mode", default=None,
                        help="feedback (default), hybrid, rerank, rrf, bm25, dense")
    search.add_argument("--topic", help="only passages of this topic")
    search.add_argument("--json", action="store_true", help="print one JSON object")

    evaluate = sub.add_parser("eval", help="retrieval quality on a BEIR-layout collection",
                              description="Run the whole pipeline on COLLECTION/corpus.jsonl, "
                              "index it, and print nDCG@10 and recall@100 of every search mode "
                              "over COLLECTION/queries.jsonl and qrels.tsv.")
    evaluate.add_argument("--collection", required=True, metavar="DIR")
    evaluate.add_argument("--workdir", required=True)
    evaluate.add_argument("--split", choices=("all", "dev", "test"), default="all",
                          help="the queries judged: all, or the dev or test half (by a hash "
                               "of the query id; tune on dev, report test)")
    evaluate.add_argument("--against", metavar="EVAL_JSON", type=Path,
                          help="an earlier `eval --json` output (e.g. the base model's): "
                               "each mode's change in nDCG@10 and a paired randomization "
                               "test's p-value over the queries both judged")
    _config_args(evaluate)
    _index_args(evaluate)
    evaluate.add_argument("--json", action="store_true",
                          help="print one JSON line (with per-query nDCG@10)")

    submit = sub.add_parser(
        "submit", help="write (and submit) the HTCondor DAG: one GPU job per shard",
        description="Write DIR/condor/: a DAG (partition check -> one GPU job per unfinished "
        "shard, each result validated by a POST script -> index, then a final report), its "
        "submit files and job scripts, all from the config's `condor` section; lint it, then "
        "submit it to the local schedd unless --dry-run. A workdir that is not partitioned "
        "yet, given --input, gets partition.dag instead: it partitions the inputs in a CPU "
        "job on the pool, then writes pipeline.dag on the access point and runs it as a "
        "sub-DAG, so one submission takes the corpus from inputs to index.")
    submit.add_argument("--workdir", required=True, help="a run directory")
    submit.add_argument("--input", dest="inputs", action="extend", nargs="+", default=[],
                        metavar="PATH", help="partition these inputs in a CPU job on the pool "
                        "first (files, directories or globs, as for `partition`); with "
                        "--generation, the prompt set, prepared on the access point")
    _config_args(submit)
    submit.add_argument("--dry-run", action="store_true",
                        help="only write and check the files; submit nothing")
    submit.add_argument("--from-partition-dag", action="store_true",
                        help="what partition.dag runs once its partition job is done: write "
                        "pipeline.dag (no submission: partition.dag runs it as a sub-DAG)")
    submit.add_argument("--generation", action="store_true",
                        help="write DIR/condor-generate/ instead: one GPU job per prompt shard "
                        "and model of `infer-corpus generate --prepare` (see docs/condor.md)")
    submit.add_argument("--json", action="store_true", help="end with one JSON summary line")

    generate = sub.add_parser(
        "generate", help="run prompts through LLMs: prompt shards x models, resumably",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Batch generation over a prompt set (--prompts) or over the workdir's "
        "passages through generation.template, with every model under generation.models.\n\n"
        "  generate [run]   prepare the prompts, then generate every missing (model, shard)\n"
        "  generate shard   one model over some shards: the work one HTCondor job does\n"
        "  generate report  label rates per model and prompt group: CSV, Markdown, PNG\n\n"
        "Outputs: WORKDIR/generations/MODEL/shard-N.parquet. A killed run continues where its "
        "checkpoints end; `infer-corpus submit --generation` runs it on HTCondor.")
    generate.add_argument("action", nargs="?", default="run", choices=["run", "shard", "report"])
    generate.add_argument("--workdir", required=True, help="run directory (created if missing)")
    generate.add_argument("--prompts", dest="inputs", action="extend", nargs="+", default=[],
                          metavar="PATH", help="prompt set files, directories or globs: "
                          ".jsonl, .jsonl.gz, .csv, .csv.gz, .parquet (an id, the prompt, "
                          "any metadata columns)")
    generate.add_argument("--template", help="prompt each passage of the workdir's corpus "
                          "with this Jinja2 template, e.g. 'List the minerals named in: "
                          "{{ text }}' (sets generation.template)")
    _config_args(generate)
    generate.add_argument("--model", dest="models", action="append", metavar="KEY",
                          help="only this model of generation.models (repeatable)")
    generate.add_argument("--prepare", action="store_true", help="only prepare the prompts "
                          "and record the models (for `infer-corpus submit --generation`)")
    generate.add_argument("--force", action="store_true",
                          help="replace a workdir's prompts that came from other inputs")
    generate.add_argument("--shard", dest="shards", type=int, action="append", metavar="N",
                          help="shard: prompt shard number (repeatable)")
    generate.add_argument("--threads", type=int, default=0, help="CPU threads (default: all)")
    generate.add_argument("--events", action="store_true",
                          help="shard: print progress as JSON lines")
    generate.add_argument("--json", action="store_true", help="end with one JSON summary line")

    status = sub.add_parser("status", help="shard states and counts of a workdir (and its DAG)")
    status.add_argument("--workdir", required=True)
    status.add_argument("--json", action="store_true", help="print one JSON object")

    jobs = sub.add_parser(
        "jobs", help="a workdir's DAG jobs, attempt by attempt: GPUs, evictions, checkpoints, "
                     "lost work and goodput",
        description="Read the job event logs of the workdir's DAG (condor/pipeline.log) and "
                    "report, per job, each attempt's host, GPU and how it ended (evicted, with "
                    "HTCondor's code; held; done), and where its time went: transfer, setup "
                    "(start to first useful step), checkpoint writing, work lost since the "
                    "last checkpoint, and goodput; then totals per GPU class. A running DAG "
                    "is counted up to now; a log cut mid-event is read to its last complete "
                    "event, with a warning.")
    jobs.add_argument("--workdir", required=True)
    jobs.add_argument("--log", type=Path, action="append",
                      help="job event log to read (repeatable; default: condor/pipeline.log)")
    jobs.add_argument("--json", action="store_true", help="print one JSON object")
    jobs.add_argument("--timeline", type=Path, metavar="PNG",
                      help="also draw each job's attempts as a PNG timeline")
    return parser


def _inputs(args: argparse.Namespace) -> list[str]:
    inputs = list(args.inputs)
    if args.demo:
        inputs.append(str(demo_corpus_path()))
    if not inputs:
        raise InputError("no input: give --input PATH... or --demo")
    return inputs


def command_line(*args: str) -> str:
    """An `infer-corpus` command to paste into a shell: arguments quoted (a glob stays a
    glob for the command, not the shell), and the program as this shell can find it (on
    the PATH, else the script beside this Python, e.g. `.venv/bin/infer-corpus`)."""
    script = Path(sys.executable).parent / "infer-corpus"
    program = "infer-corpus"
    on_path = shutil.which(program)
    if script.is_file() and not (on_path and Path(on_path).resolve() == script.resolve()):
        relative = os.path.relpath(script)
        program = relative if not relative.startswith("..") else str(script)
        program = program if "/" in program else f"./{program}"
    return shlex.join([program, *args])


def _print_summary(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary))
        return
    lines = [
        f"articles   {summary['articles']:>10,}   kept",
        f"duplicates {summary.get('duplicate_articles', 0):>10,}   articles seen before, "
        "dropped",
        f"passages   {summary['passages']:>10,}"
        f"   (duplicates dropped: {summary.get('duplicate_passages', 0):,})",
        f"rejected   {summary['rejected']:>10,}"
        + ("   (" + ", ".join(f"{reason}: {n:,}" for reason, n in
                           summary.get("reject_reasons", {}).items()) + ")"
           if summary.get("reject_reasons") else ""),
        f"shards     {summary['shards']:>10,}",
    ]
    if "shards_run" in summary:
        lines.append(f"shards run {summary['shards_run']:>10,}   in {summary['seconds']:.1f} s")
    if "indexed" in summary:
        lines.append(f"indexed    {summary['indexed']:>10,}   passages ("
                     + command_line("search", "--workdir", summary["workdir"], "QUESTION")
                     + ")")
    if summary.get("rejected"):
        lines.append(f"rejected rows and reasons: {summary['workdir']}/rejects/rejects.jsonl")
    print("\n".join(lines))


def cmd_run(args: argparse.Namespace) -> int:
    from inference.executor import check_models, run_pipeline
    from retrieval import build

    overrides = list(args.overrides)
    if args.workers is not None:
        overrides.append(f"executor.workers={args.workers}")
    config = load_config(args.config, overrides + _index_overrides(args))
    check_models(config)  # before the lock creates the workdir
    workdir = Workdir(args.workdir)
    with workdir.lock():  # one writer from the partition to the index
        summary = run_pipeline(_inputs(args), workdir, config, force=args.force)
        summary["indexed"] = build(workdir, workers=_cpu_workers(args.workers or 0)).passages
    _print_summary(summary, args.json)
    return 0


def cmd_partition(args: argparse.Namespace) -> int:
    from inference.partition import partition

    config = load_config(args.config, args.overrides)
    if args.workers is not None and not 1 <= args.workers <= MAX_WORKERS:
        raise UsageError(f"--workers must be from 1 to {MAX_WORKERS}")
    result = partition(_inputs(args), Workdir(args.workdir), config, force=args.force,
                       workers=args.workers)
    summary = {**result.to_dict(), "partitioned": not result.skipped, "workdir": args.workdir}
    _print_summary(summary, args.json)
    return 0


def cmd_partition_step(args: argparse.Namespace) -> int:
    from inference.partition import map_job, merge_job, write_job

    config = load_config(args.config, args.overrides)
    plan = Path(args.plan)
    if args.step == "merge":
        out = merge_job(plan, Path(args.keys), config)
    elif args.part is None or (args.step == "map" and not args.input_file):
        raise UsageError(f"partition-step {args.step} needs --part N"
                         + (" and --input FILE" if args.step == "map" else ""))
    elif args.step == "map":
        out = map_job(plan, args.part, Path(args.input_file), config)
    else:
        out = write_job(plan, args.part, Path(args.merge), config)
    print(f"partition-step {args.step}: wrote {out}/")
    return 0


def cmd_shard(args: argparse.Namespace) -> int:
    from inference.worker import run_shards

    def emit(event: dict[str, Any]) -> None:
        if args.events:  # one write per line: events come from two threads
            sys.stdout.write(json.dumps(event) + "\n")
            sys.stdout.flush()

    outcomes = run_shards(Workdir(args.workdir), args.shards, threads=args.threads,
                          on_event=emit)
    if args.json:
        print(json.dumps({"shards": [o.__dict__ for o in outcomes]}))
    elif not args.events:
        for o in outcomes:
            state = "already done" if o.skipped else f"{o.rows:,} passages in {o.seconds:.1f} s"
            print(f"shard {o.shard}: {state}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from inference.generation.generate import study_status
    from inference.status import workdir_status

    workdir = Workdir(args.workdir)
    study = study_status(workdir.root)
    dag_dirs = {"condor": (workdir.root / "condor").is_dir(),
                "generation_condor": (workdir.root / "condor-generate").is_dir()}
    if study is not None and not workdir.has_manifest():  # a prompt set's study: no corpus
        report: dict[str, Any] = {"workdir": str(workdir.root)}
    elif workdir.has_manifest() or not dag_dirs["condor"]:
        report = workdir_status(workdir)
    else:
        report = {"workdir": str(workdir.root), "partition": {}}
    if study is not None:
        report["generation"] = study
    if dag_dirs["condor"]:  # the DAG's state (and its jobs', while it runs)
        from submit.pipeline import dag_status

        report["condor"] = dag_status(workdir)
    if dag_dirs["generation_condor"]:
        from submit.generation import generation_status

        report["generation_condor"] = generation_status(workdir)
    if args.json:
        print(json.dumps(report))
    else:
        _print_status(args.workdir, report)
    return 0


def _print_status(name: str, report: dict[str, Any]) -> None:
    p = report.get("partition")
    if p is not None and p.get("state") != "done":
        print(f"workdir {name}: partition unfinished (still running, or interrupted: "
              "run the same partition, run or submit command again)")
    elif p is not None:
        print(f"workdir {name}: partition {p['state']}, "
              f"{p.get('articles', 0):,} articles, {p.get('passages', 0):,} passages, "
              f"{p.get('rejected', 0):,} rejected")
        counts = report["counts"]
        print(f"shards: {report['shard_total']} total, "
              + ", ".join(f"{n} {state}" for state, n in counts.items()))
        print(f"passages embedded: {report['passages_done']:,} of {report['passages_total']:,}")
        for shard in report["shards"]:
            if shard["state"] != "done":
                print(f"  shard {shard['shard']:>5}: {shard['state']} ({shard['rows']:,} "
                      "passages)")
    if "condor" in report:
        _print_dag_status(report["condor"])
    study = report.get("generation")
    if study is not None:
        prompts = study["prompts"]
        if prompts["state"] != "done":
            print(f"generation: prompts {prompts['state']} (run the same `infer-corpus "
                  "generate` command again)")
        else:
            shards = prompts["shards"]
            print(f"generation: {prompts.get('prompts', 0):,} prompts in {shards} "
                  f"shard{'' if shards == 1 else 's'}, {prompts.get('rejected', 0):,} rejected")
        for model, states in study["models"].items():
            counts = ", ".join(f"{states[s]} {s}" for s in ("done", "relabel", "partial",
                                                            "pending") if states[s])
            print(f"  model {model}: {counts or 'no shards'}; {states['rows_done']:,} rows "
                  "generated")
    if "generation_condor" in report:
        _print_dag_status(report["generation_condor"])


def _print_dag_status(dag: dict[str, Any]) -> None:
    name = Path(dag["dag"]).name
    if "nodes" not in dag:
        print(f"condor DAG {name}: {dag['state']} ({dag['dag']})")
    else:
        nodes = ", ".join(f"{n} {state}" for state, n in dag["nodes"].items())
        print(f"condor DAG {name}: {dag['state']}; nodes: {nodes}; retries {dag['retries']}, "
              f"held jobs {dag['held']}")
        if dag["failed"]:
            print(f"  failed nodes: {', '.join(dag['failed'])} (logs in "
                  f"{Path(dag['dag']).parent}/logs/)")
    if dag.get("queue_error"):
        print(f"  jobs in the queue: unknown ({dag['queue_error']})")
    jobs = dag.get("jobs") or []
    running = [j for j in jobs if j["state"] == "running"]
    # shard jobs publish passages and passages/s; generation jobs rows and output tokens/s
    unit = "output tokens/s" if any("rows_done" in j for j in jobs) else "passages/s"
    rates = [j.get("passages_per_second", j.get("tokens_per_second")) for j in running]
    rates = [r for r in rates if r is not None]
    if jobs:
        states = ", ".join(f"{n} {state}" for state, n in
                           Counter(j["state"] for j in jobs).items())
        print(f"  jobs in the queue: {states}"
              + (f"; {sum(rates):,.0f} {unit} in all" if rates else ""))
    for job in running:
        progress = ""
        if job.get("passages_done") is not None:
            progress = (f": {job['passages_done']:,} of {job['passages_total'] or 0:,} "
                        f"passages, {job['passages_per_second'] or 0:,.0f} passages/s")
        elif job.get("rows_done") is not None:
            progress = (f": {job['rows_done']:,} of {job['rows_total'] or 0:,} rows, "
                        f"{job['tokens_per_second'] or 0:,.1f} output tokens/s")
        print(f"    {job['node']} ({job['job']}) on {job['host'] or '?'}{progress}")


def cmd_submit(args: argparse.Namespace) -> int:
    from submit.pipeline import submit_pipeline

    config = load_config(args.config, args.overrides)
    if args.generation:
        return _submit_generation(args, config)
    index = config.index
    summary = submit_pipeline(Workdir(args.workdir), config, config.condor,
                              dry_run=args.dry_run or args.from_partition_dag,
                              inputs=args.inputs, from_partition_dag=args.from_partition_dag,
                              es_key_env=((index.api_key_env or "")
                                          if index.backend == "elasticsearch" else None))
    if args.json:
        print(json.dumps(summary))
        return 0
    if summary["partition_job"]:
        print(f"wrote {summary['dag']}: the partition as a job, then (written when it is "
              "done) pipeline.dag as its sub-DAG; lint: ok")
    else:
        loads = (f"{summary['load_jobs']} Elasticsearch load jobs -> alias swap"
                 if summary["load_jobs"] else
                 f"{summary['index_jobs']} index piece jobs -> index" if summary["index_jobs"]
                 else "index")
        print(f"wrote {summary['dag']}: check -> {summary['shard_jobs']} shard jobs -> {loads}, "
              f"final report ({summary['shards_done']} shards already done); lint: ok")
    if summary["staged"]:
        print(f"staged {summary['staged']} shards for the jobs' data URL (see stage.tsv)")
    again = command_line("submit", "--workdir", args.workdir,
                         *(["--config", args.config] if args.config else []),
                         *(item for o in args.overrides for item in ("--set", o)),
                         *(["--input", *args.inputs] if args.inputs else []))
    if args.from_partition_dag:
        print("partition.dag runs it next")
    elif args.dry_run:
        print(f"dry run: nothing submitted. Review {Path(summary['dag']).parent}/, then "
              f"submit with:\n  {again}")
    else:
        print(f"submitted: DAGMan job {summary['cluster']}. Follow it with:\n"
              f"  {command_line('status', '--workdir', args.workdir)}   "
              "(or condor_q -dag -nobatch)")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    workdir = Workdir(args.workdir)
    if args.action == "shard":
        return _generate_shards(args, workdir)
    if args.action == "report":
        from inference.generation.report import write_report

        report = write_report(workdir)
        if args.json:
            print(json.dumps(report))
        else:
            print(Path(report["markdown"]).read_text(encoding="utf-8").rstrip())
            print(f"\nwrote {report['csv']}, {report['markdown']}, {report['png']}")
        return 0
    from inference.generation import generate

    overrides = list(args.overrides)
    if args.template is not None:
        overrides.append(f"generation.template={json.dumps(args.template)}")
    config = load_config(args.config, overrides)
    if args.prepare:
        with workdir.lock():
            manifest = generate.prepare(workdir, config, args.inputs, force=args.force)
            todo = generate.pending(workdir, manifest, args.models)
        summary = {**manifest.prompts["counts"], "prompt_source": manifest.prompts["source"],
                   "models": list(todo), "pending": todo, "workdir": str(workdir.root)}
    else:
        summary = generate.run_study(workdir, config, args.inputs, force=args.force,
                                     models=args.models, threads=args.threads)
    if args.json:
        print(json.dumps(summary))
        return 0
    reasons = ", ".join(f"{r}: {n:,}" for r, n in summary["reject_reasons"].items())
    print(f"prompts    {summary['prompts']:>10,}   ({summary['prompt_source']}; duplicates "
          f"dropped: {summary['duplicate_rows'] + summary['duplicate_prompts']:,})")
    print(f"rejected   {summary['rejected']:>10,}" + (f"   ({reasons})" if reasons else ""))
    if args.prepare:
        for model, shards in summary["pending"].items():
            print(f"model {model}: {len(shards)} of {summary['shards']} shards to generate")
    else:
        print(f"models     {len(summary['models']):>10,}   ({', '.join(summary['models'])})")
        print(f"shards run {summary['shards_run']:>10,}   {summary['rows_generated']:,} rows, "
              f"{summary['output_tokens']:,} output tokens, {summary['errors']:,} row errors, "
              f"in {summary['seconds']:.1f} s")
        print(f"outputs in {workdir.root}/generations/; label rates: infer-corpus generate "
              f"report --workdir {args.workdir}")
    if summary["rejected"]:
        print(f"rejected rows and reasons: {workdir.root}/rejects/prompts.jsonl")
    return 0


def _generate_shards(args: argparse.Namespace, workdir: Workdir) -> int:
    from inference.generation import generate
    from inference.generation.manifest import GenerationManifest
    from inference.generation.prompts import prompt_shard_path

    if not args.shards or not args.models or len(args.models) != 1:
        raise UsageError("generate shard needs one --model KEY and at least one --shard N")
    manifest = GenerationManifest.require(workdir.root)
    run = generate.ModelRun.from_manifest(manifest, args.models[0])
    rows = {shard: manifest.shard_rows(shard) for shard in args.shards}

    def emit(event: dict[str, Any]) -> None:
        if args.events:
            sys.stdout.write(json.dumps(event) + "\n")
            sys.stdout.flush()

    worker = generate.GenerationWorker(run, args.threads, emit)
    try:
        outcomes = [worker.run_shard(shard, prompt_shard_path(workdir.root, shard), rows[shard],
                                     generate.output_path(workdir.root, run.key, shard))
                    for shard in args.shards]
    finally:
        worker.close()
    if args.json:
        print(json.dumps({"shards": [o.__dict__ for o in outcomes]}))
    elif not args.events:
        for o in outcomes:
            print(f"{o.model} shard {o.shard}: {o.state}, {o.generated:,} rows generated, "
                  f"{o.errors:,} row errors")
    return 0


def _submit_generation(args: argparse.Namespace, config: Any) -> int:
    from submit.generation import submit_generation

    summary = submit_generation(Workdir(args.workdir), config, config.condor,
                                dry_run=args.dry_run, inputs=args.inputs)
    if args.json:
        print(json.dumps(summary))
        return 0
    models = ", ".join(f"{m}: {n}" for m, n in summary["models"].items()) or "none"
    print(f"wrote {summary['dag']}: {summary['jobs']} generation jobs ({models}), final "
          "report; lint: ok")
    if args.dry_run:
        print(f"dry run: nothing submitted. Review {Path(summary['dag']).parent}/")
    else:
        print(f"submitted: DAGMan job {summary['cluster']}. Follow it with:\n"
              f"  {command_line('status', '--workdir', args.workdir)}   (outputs arrive in "
              f"{args.workdir}/generations/)")
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    from retrieval import build

    workdir = Workdir(args.workdir)
    if args.workers < 0:
        raise UsageError("--workers must be at least 1 (or 0: one per CPU)")
    if args.shards or args.no_swap or args.swap_only:
        result = _index_part(workdir, args)
    else:
        with workdir.lock(existing=True):  # nothing is created in a folder that is no workdir
            result = build(workdir, args.backend, args.es_url, _cpu_workers(args.workers))
    if args.json:
        print(json.dumps(result.__dict__))
    else:
        state = "built" if result.built else "already current"
        pieces = (f"; pieces: {result.pieces_built} built, {result.pieces_reused} reused"
                  if result.pieces_built + result.pieces_reused else "")
        print(f"index {state}: {result.passages:,} passages ({result.path}{pieces})")
    return 0


def _index_part(workdir: Workdir, args: argparse.Namespace) -> Any:
    """One job of a parallel build: an embedded index's piece of some shards (the DAG's
    index-piece nodes), or some shards of an Elasticsearch load without the alias swap, or
    the swap alone (the DAG's load and swap nodes)."""
    from retrieval.backends import index_config
    from retrieval.elasticsearch import connect, load_elasticsearch
    from submit.steps import shard_range

    settings = index_config(workdir, args.backend, args.es_url)
    if settings.backend == "embedded":
        if args.no_swap or args.swap_only:
            raise UsageError("--no-swap and --swap-only are for the elasticsearch backend; "
                             "the embedded index combines its pieces with `index` alone")
        from retrieval.embedded import build_piece

        return build_piece(workdir, shard_range(args.shards))
    if args.swap_only and (args.shards or args.no_swap):
        raise UsageError("--swap-only loads nothing: leave out --shards and --no-swap")
    if args.shards and not args.no_swap:
        raise UsageError("--shards loads part of the index: add --no-swap (the alias moves "
                         "once every part is loaded, with --swap-only)")
    shards = shard_range(args.shards) if args.shards else None
    return load_elasticsearch(workdir, connect(settings.url, settings.api_key_env),
                              settings.name, url=settings.url,
                              api_key_env=settings.api_key_env, retries=settings.retries,
                              shards=[] if args.swap_only else shards, swap=args.swap_only)


def cmd_search(args: argparse.Namespace) -> int:
    from retrieval import DEFAULT_MODE, Searcher, open_index
    from retrieval.search import QueryError

    workdir = Workdir(args.workdir)
    searcher = Searcher(workdir, index=open_index(workdir, args.backend, args.es_url))
    if args.topic is not None:  # a typo would look like an empty result
        topics = searcher.index.topics()
        if args.topic not in topics:
            raise QueryError(f"unknown topic {args.topic[:100]!r}; the index's topics: "
                             f"{', '.join(topics) or 'none'}")
    hits = searcher.search(args.query, top_k=args.top_k, screening_top_k=args.screening_top_k,
                           mode=args.mode or DEFAULT_MODE, topic=args.topic)
    if args.json:
        print(json.dumps({"query": args.query, "hits": [h.to_dict() for h in hits]}))
        return 0
    if not hits:
        print("no passage matches")
    for rank, hit in enumerate(hits, start=1):
        p = hit.passage
        print(f"{rank:>2}. {hit.score:7.3f}  {_one_line(p['title'] or '(untitled)')} "
              f"({p['year'] or 'n.d.'})  [{_one_line(p['passage_id'])}]")
    return 0


def _one_line(text: str) -> str:
    """`text` with line breaks and other control characters escaped (`\\n`), so that one hit
    stays one line whatever its input's ids and titles hold."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import compare, evaluate_collection

    base = None
    if args.against:  # read before the long run: a bad file fails at once
        try:
            base = json.loads(args.against.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UsageError(f"--against {args.against}: not an `eval --json` output ({exc})"
                             ) from None
        if base.get("split") != args.split:
            raise UsageError(f"--against {args.against} judged the {base.get('split')} "
                             f"queries, this run the {args.split} ones: compare like with like")
    config = load_config(args.config, list(args.overrides) + _index_overrides(args))
    report = evaluate_collection(args.collection, Workdir(args.workdir), config,
                                 split=args.split)
    if base is not None:
        report["against"] = {"file": str(args.against), "model": base.get("model"),
                             "modes": compare(base, report)}
    if args.json:
        print(json.dumps(report))
        return 0
    _print_eval(report)
    return 0


def _print_eval(report: dict[str, Any]) -> None:
    """One row per search mode, its columns aligned whatever the modes' names."""
    print(f"{report['queries']} judged queries ({report['split']}); model {report['model']}; "
          f"default mode: {report['default']}")
    against = (report.get("against") or {}).get("modes", {})
    width = max(map(len, report["modes"]), default=0)
    for mode, scores in report["modes"].items():
        line = (f"  {mode:<{width}}  nDCG@10 {scores['ndcg@10']:.4f}   "
                f"recall@100 {scores['recall@100']:.4f}")
        if mode in against:
            line += (f"   against {against[mode]['base']:.4f}: {against[mode]['change']:+.4f}"
                     f" (p = {against[mode]['p']:.4f})")
        print(line)


def cmd_jobs(args: argparse.Namespace) -> int:
    from submit.jobs_report import report
    from submit.pipeline import condor_dir

    condor = condor_dir(Workdir(args.workdir))
    dags = sorted(condor.glob("*.dag")) if condor.is_dir() else []
    if not dags:
        raise UsageError(f"{condor} holds no DAG: write and submit one with "
                         + command_line("submit", "--workdir", args.workdir))
    print(report(args.log or [condor / "pipeline.log"], dags, as_json=args.json,
                 timeline=args.timeline))
    return 0


COMMANDS = {"run": cmd_run, "partition": cmd_partition, "partition-step": cmd_partition_step,
            "shard": cmd_shard,
            "index": cmd_index, "search": cmd_search, "eval": cmd_eval, "status": cmd_status,
            "submit": cmd_submit, "generate": cmd_generate, "jobs": cmd_jobs}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command("infer-corpus", lambda: COMMANDS[args.command](args),
                       interrupted="interrupted; run the same command again to resume")


if __name__ == "__main__":
    sys.exit(main())
