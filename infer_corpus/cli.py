"""`infer-corpus`: the command line over every stage. Thin: parsing, printing, exit codes.

It sits above the packages it composes (the pipeline in `inference`, the index and search in
`retrieval`, the DAG in `submit`), so none of them imports another's commands.

Exit codes: 0 success; 1 a worker or step failed; 2 bad usage, config, input or workdir
(retrying the same command cannot help); see `inference.errors`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from inference import __version__
from inference.demo import demo_corpus_path
from inference.errors import run_command
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
                          "split articles into passages, drop duplicates, write shards.")
    _input_args(part)
    part.add_argument("--workdir", required=True, help="run directory (created if missing)")
    _config_args(part)
    part.add_argument("--json", action="store_true", help="end with one JSON summary line")

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
    _config_args(evaluate)
    _index_args(evaluate)
    evaluate.add_argument("--json", action="store_true", help="print one JSON line")

    submit = sub.add_parser(
        "submit", help="write (and submit) the HTCondor DAG: one GPU job per shard",
        description="Write DIR/condor/: a DAG (partition check -> one GPU job per unfinished "
        "shard, each result validated by a POST script -> index, then a final report), its "
        "submit files and job script, all from the config's `condor` section; lint it, then "
        "submit it to the local schedd unless --dry-run. Needs a partitioned workdir.")
    submit.add_argument("--workdir", required=True, help="a partitioned run directory")
    _config_args(submit)
    submit.add_argument("--dry-run", action="store_true",
                        help="only write and check the files; submit nothing")
    submit.add_argument("--json", action="store_true", help="end with one JSON summary line")

    status = sub.add_parser("status", help="shard states and counts of a workdir (and its DAG)")
    status.add_argument("--workdir", required=True)
    status.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def _inputs(args: argparse.Namespace) -> list[str]:
    inputs = list(args.inputs)
    if args.demo:
        inputs.append(str(demo_corpus_path()))
    if not inputs:
        raise InputError("no input: give --input PATH... or --demo")
    return inputs


def _print_summary(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary))
        return
    lines = [
        f"articles   {summary['articles']:>10,}",
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
        lines.append(f"indexed    {summary['indexed']:>10,}   passages (infer-corpus search "
                     f"--workdir {summary['workdir']} \"QUESTION\")")
    if summary.get("rejected"):
        lines.append(f"rejected rows and reasons: {summary['workdir']}/rejects/rejects.jsonl")
    print("\n".join(lines))


def cmd_run(args: argparse.Namespace) -> int:
    from inference.executor import run_pipeline
    from retrieval import build

    overrides = list(args.overrides)
    if args.workers is not None:
        overrides.append(f"executor.workers={args.workers}")
    config = load_config(args.config, overrides + _index_overrides(args))
    workdir = Workdir(args.workdir)
    with workdir.lock():  # one writer from the partition to the index
        summary = run_pipeline(_inputs(args), workdir, config, force=args.force)
        summary["indexed"] = build(workdir).passages
    _print_summary(summary, args.json)
    return 0


def cmd_partition(args: argparse.Namespace) -> int:
    from inference.partition import partition

    config = load_config(args.config, args.overrides)
    result = partition(_inputs(args), Workdir(args.workdir), config, force=args.force)
    summary = {**result.to_dict(), "partitioned": not result.skipped, "workdir": args.workdir}
    _print_summary(summary, args.json)
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
    from inference.status import workdir_status

    workdir = Workdir(args.workdir)
    report = workdir_status(workdir)
    if (workdir.root / "condor").is_dir():  # the DAG's state, when the workdir has one
        from submit.pipeline import dag_status

        report["condor"] = dag_status(workdir)
    if args.json:
        print(json.dumps(report))
        return 0
    p = report["partition"]
    if p.get("state") != "done":
        print(f"workdir {args.workdir}: partition unfinished (still running, or interrupted: "
              "run the same partition or run command again)")
        return 0
    print(f"workdir {args.workdir}: partition {p['state']}, "
          f"{p.get('articles', 0):,} articles, {p.get('passages', 0):,} passages, "
          f"{p.get('rejected', 0):,} rejected")
    counts = report["counts"]
    print(f"shards: {report['shard_total']} total, "
          + ", ".join(f"{n} {state}" for state, n in counts.items()))
    print(f"passages embedded: {report['passages_done']:,} of {report['passages_total']:,}")
    for shard in report["shards"]:
        if shard["state"] != "done":
            print(f"  shard {shard['shard']:>5}: {shard['state']} ({shard['rows']:,} passages)")
    if "condor" in report:
        _print_dag_status(report["condor"])
    return 0


def _print_dag_status(dag: dict[str, Any]) -> None:
    if "nodes" not in dag:
        print(f"condor DAG: {dag['state']} ({dag['dag']})")
        return
    nodes = ", ".join(f"{n} {state}" for state, n in dag["nodes"].items())
    print(f"condor DAG: {dag['state']}; nodes: {nodes}; retries {dag['retries']}, "
          f"held jobs {dag['held']}")
    if dag["failed"]:
        print(f"  failed nodes: {', '.join(dag['failed'])} (logs in {Path(dag['dag']).parent}"
              "/logs/)")


def cmd_submit(args: argparse.Namespace) -> int:
    from submit.pipeline import submit_pipeline

    config = load_config(args.config, args.overrides)
    summary = submit_pipeline(Workdir(args.workdir), config, config.condor,
                              dry_run=args.dry_run)
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


def cmd_index(args: argparse.Namespace) -> int:
    from retrieval import build

    workdir = Workdir(args.workdir)
    with workdir.lock():
        result = build(workdir, args.backend, args.es_url)
    if args.json:
        print(json.dumps(result.__dict__))
    else:
        state = "built" if result.built else "already current"
        print(f"index {state}: {result.passages:,} passages ({result.path})")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from retrieval import DEFAULT_MODE, Searcher, open_index

    workdir = Workdir(args.workdir)
    searcher = Searcher(workdir, index=open_index(workdir, args.backend, args.es_url))
    hits = searcher.search(args.query, top_k=args.top_k, screening_top_k=args.screening_top_k,
                           mode=args.mode or DEFAULT_MODE, topic=args.topic)
    if args.json:
        print(json.dumps({"query": args.query, "hits": [h.to_dict() for h in hits]}))
        return 0
    if not hits:
        print("no passage matches")
    for rank, hit in enumerate(hits, start=1):
        p = hit.passage
        print(f"{rank:>2}. {hit.score:7.3f}  {p['title'] or '(untitled)'} ({p['year'] or 'n.d.'})"
              f"  [{p['passage_id']}]")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_collection

    config = load_config(args.config, list(args.overrides) + _index_overrides(args))
    report = evaluate_collection(args.collection, Workdir(args.workdir), config)
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{report['queries']} judged queries; default mode: {report['default']}")
    for mode, scores in report["modes"].items():
        print(f"  {mode:<7} nDCG@10 {scores['ndcg@10']:.4f}   recall@100 {scores['recall@100']:.4f}")
    return 0


COMMANDS = {"run": cmd_run, "partition": cmd_partition, "shard": cmd_shard,
            "index": cmd_index, "search": cmd_search, "eval": cmd_eval, "status": cmd_status,
            "submit": cmd_submit}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command("infer-corpus", lambda: COMMANDS[args.command](args),
                       interrupted="interrupted; run the same command again to resume")


if __name__ == "__main__":
    sys.exit(main())
