#!/usr/bin/env python
"""Capacity model: a corpus of N articles on an HTCondor GPU pool, from measured rates.

docs/scale.md is this script's output for the default arguments (a test checks that). Every
figure is labelled: `measured` (with the docs/benchmarks.md row, or the size measurement in
docs/scale.md, it comes from), `modelled` (arithmetic on measured figures, with the rule
used), `assumed` (no measurement exists: a stated placeholder with the option that replaces
it) or `given` (an argument or a shipped config value).

    .venv/bin/python benchmarks/scale_model.py                       # 18M articles, 10/50/200 GPUs
    .venv/bin/python benchmarks/scale_model.py --articles 5000000 --gpus 20 100 --json
    .venv/bin/python benchmarks/scale_model.py --job-overhead-s 120 --es-node-rate 2000
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from typing import Any

GB = 1e9
HOUR = 3600.0
BENCH = "docs/benchmarks.md"
SIZES = "docs/scale.md, 'Sizes measured for this model'"


@dataclass(frozen=True)
class Figure:
    """One number with where it comes from."""

    value: float
    kind: str  # measured | modelled | assumed | given
    source: str


# Figures of docs/benchmarks.md's rows, named below.
MAP_SECONDS, WRITE_SECONDS, PLAN_SECONDS = 85.5, 13.8, 3.5
MERGE_RATE, MERGE_BYTES = 1_014_024, (342 + 553) * 2**20 / 16_000_000
INDEX_PIECE_RATE, INDEX_PIECE_ROW = 5_379, ("built in pieces, 1,012,646 passages, 1 worker "
                                            "(other runs on the machine)")

# Rates measured in docs/benchmarks.md. Where a row gives a range, the lower end is used.
BENCH_PASSAGES = 1_125_098  # passages in the synthetic 1M-article corpus of both CPU benchmarks
BENCH_INPUT_BYTES = 1_222_000_000  # its JSONL
PARTITION_ROW = f"{BENCH}, Partitioning: parallel partition, idle machine, 1 worker"
MAP_PASSAGES_PER_S = Figure(
    BENCH_PASSAGES / MAP_SECONDS, "measured", f"{PARTITION_ROW}: map step "
    f"{MAP_SECONDS} s for 1M articles, one process")
WRITE_PASSAGES_PER_S = Figure(
    BENCH_PASSAGES / WRITE_SECONDS, "measured", f"{PARTITION_ROW}: write step "
    f"{WRITE_SECONDS} s, one process, no token ids")
PLAN_BYTES_PER_S = Figure(
    BENCH_INPUT_BYTES / PLAN_SECONDS, "measured", f"{PARTITION_ROW}: plan step "
    f"{PLAN_SECONDS} s for 1,222 MB (SHA-256 and line cuts, one process)")
MERGE_PASSAGES_PER_S = Figure(
    MERGE_RATE, "measured", f"{BENCH}, Partitioning: merge on 16M synthetic passage keys "
    "(the lower of two runs)")
MERGE_BYTES_PER_PASSAGE = Figure(
    MERGE_BYTES, "measured", f"{BENCH}, Partitioning: merge on 16M keys, keys plus peak")
BENCH_PASSAGES_PER_ARTICLE = Figure(
    BENCH_PASSAGES / 1_000_000, "measured",
    f"{BENCH}, Embedded index: '1M articles (1,125,098 passages)'")
TOKENIZE_PER_S = Figure(
    22_183, "measured", f"{BENCH}, GPU: partition-time tokenization, 16 processes on the H100 "
    "machine (22,183-24,085/s)")
GPU_WORKER_PER_S = Figure(
    25_633, "measured", f"{BENCH}, GPU: H100 table, run 2, 'worker' (shards with token ids; "
    "run 1: 27,970)")
GPU_WHOLE_PER_S = Figure(
    13_017, "measured", f"{BENCH}, GPU: H100 table, run 2, 'ours' (tokenizing in the job on "
    "16 cores; run 1: 13,703)")
INDEX_BUILD_PER_S = Figure(
    INDEX_PIECE_RATE, "measured", f"{BENCH}, Embedded index: {INDEX_PIECE_ROW}")
PASSAGE_TOKENS = Figure(177, "measured", f"{BENCH}, Embedding throughput: 'mean 177 tokens'")

# Sizes measured on Cranfield (real abstracts) for this model: docs/scale.md says how.
CRANFIELD_PASSAGES = 1_580
CRANFIELD_TOKENS = 264_844
SHARD_IDS_BYTES = Figure(891_601 / CRANFIELD_PASSAGES, "measured", f"{SIZES}: shard with token ids")
SHARD_TEXT_BYTES = Figure(495_089 / CRANFIELD_PASSAGES, "measured", f"{SIZES}: shard without ids")
RESULT_BYTES = Figure(1_202_691 / CRANFIELD_PASSAGES, "measured", f"{SIZES}: result file")
INPUT_BYTES = Figure(1_609_873 / CRANFIELD_PASSAGES, "measured", f"{SIZES}: corpus.jsonl")
MAP_OUTPUT_BYTES = Figure(788_439 / CRANFIELD_PASSAGES, "measured",
                          f"{SIZES}: a map job's output (passages, articles, keys)")

DIMS = 384
HNSW_M = 16  # Elasticsearch's default
ES_SHARD_TARGET_GB = 40  # inside Elastic's 10-50 GB per shard, with room for this estimate's error
ES_MAX_DOCS_PER_SHARD = 200_000_000
ES_NODE_RAM_GB, ES_HEAP_GB, ES_OS_GB = 64, 31, 1  # page cache: what heap and OS leave
ES_REPLICAS = 1
ES_CLIENTS_PER_NODE = 2
SHARD_SIZES = (50_000, 250_000, 1_000_000)
ELASTIC_KNN = "Elastic, 'Tune approximate kNN search: ensure data nodes have enough memory'"
ELASTIC_SHARDS = ("Elastic, 'Size your shards': up to 200M documents or 10-50 GB per shard; "
                  f"{ES_SHARD_TARGET_GB} GB chosen")


def positive_int(text: str) -> int:
    """argparse type: a whole number above zero (commas allowed: 18,000,000)."""
    try:
        value = int(text.replace(",", "").replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def positive_float(text: str) -> float:
    """argparse type: a number above zero."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be above 0")
    return value


def gpu_stage(passages: int, per_shard: int, gpus: int, rate: float,
              overhead_s: float) -> dict[str, float]:
    """One job per shard, `gpus` at a time: a wave lasts as long as a full shard's job."""
    jobs = math.ceil(passages / per_shard)
    job_s = overhead_s + per_shard / rate
    return {"jobs": jobs, "job_s": job_s, "wall_s": math.ceil(jobs / gpus) * job_s,
            "gpu_hours": passages / rate / HOUR,
            "slot_hours": (jobs * overhead_s + passages / rate) / HOUR}


def model(args: argparse.Namespace) -> dict[str, Any]:
    """Every figure of docs/scale.md, with its kind and source."""
    articles, per_article, per_shard = args.articles, args.passages_per_article, \
        args.passages_per_shard
    passages = articles * per_article
    scale = PASSAGE_TOKENS.value / (CRANFIELD_TOKENS / CRANFIELD_PASSAGES)
    per_token = f"per token, scaled to {PASSAGE_TOKENS.value:.0f} tokens per passage"
    ap_rate = args.access_point_mb_s * 1e6

    inputs = {
        "articles": Figure(articles, "given", "--articles"),
        "passages per article": Figure(per_article, "given", "--passages-per-article"),
        "passages": Figure(passages, "modelled", "articles x passages per article"),
        "passages per shard": Figure(per_shard, "given",
                                     "--passages-per-shard (configs/condor-gpu.yaml)"),
        "bytes per partition part": Figure(args.part_bytes, "given",
                                           "--part-bytes (configs/condor-gpu.yaml)"),
        "CPU jobs at once": Figure(args.cpu_slots, "assumed", "--cpu-slots: the pool's CPU "
                                   "slots this run gets; not measured"),
        "overhead per GPU job (s)": Figure(
            args.job_overhead_s, "assumed", "--job-overhead-s: start, container, transfers, "
            "CUDA and model load; not measured"),
        "overhead per CPU job (s)": Figure(
            args.cpu_job_overhead_s, "assumed", "--cpu-job-overhead-s: start and container; "
            "not measured"),
        "access point transfer (MB/s)": Figure(
            args.access_point_mb_s, "assumed", "--access-point-mb-s: what the access point "
            "sends and receives at once; not measured"),
    }

    data = {}
    for name, figure in (("articles in (JSONL)", INPUT_BYTES),
                         ("map output (passages, articles, keys)", MAP_OUTPUT_BYTES),
                         ("shards with token ids", SHARD_IDS_BYTES),
                         ("shards without ids", SHARD_TEXT_BYTES)):
        data[name] = {"bytes_per_passage": figure.value * scale,
                      "gb": passages * figure.value * scale / GB,
                      "kind": "modelled", "source": f"{figure.source}, {per_token}"}
    data["results (embeddings, labels)"] = {
        "bytes_per_passage": RESULT_BYTES.value, "gb": passages * RESULT_BYTES.value / GB,
        "kind": "modelled", "source": f"{RESULT_BYTES.source} (per passage)"}
    data["embeddings as float16"] = {
        "bytes_per_passage": DIMS * 2, "gb": passages * DIMS * 2 / GB, "kind": "modelled",
        "source": f"passages x {DIMS} x 2 bytes; the embedded index's matrix"}
    data["merge memory (one job)"] = {
        "bytes_per_passage": MERGE_BYTES_PER_PASSAGE.value,
        "gb": passages * MERGE_BYTES_PER_PASSAGE.value / GB, "kind": "modelled",
        "source": f"{MERGE_BYTES_PER_PASSAGE.source}, per passage"}

    es = _elasticsearch(passages, data, args.es_node_rate)

    # the partition: the plan on the access point, then map jobs, the merge, write jobs
    input_bytes = data["articles in (JSONL)"]["gb"] * GB
    parts = math.ceil(input_bytes / args.part_bytes)
    part_passages = passages / parts
    plan_s = input_bytes / PLAN_BYTES_PER_S.value
    map_job_s = args.cpu_job_overhead_s + part_passages / MAP_PASSAGES_PER_S.value
    merge_s = args.cpu_job_overhead_s + passages / MERGE_PASSAGES_PER_S.value
    tokenize_per_cpu = TOKENIZE_PER_S.value / 16
    write_cpus = max(1, math.ceil(part_passages / 100_000))
    write_job_s = {stored: args.cpu_job_overhead_s + part_passages / WRITE_PASSAGES_PER_S.value
                   + (part_passages / (tokenize_per_cpu * write_cpus) if stored else 0.0)
                   for stored in (True, False)}
    map_bytes = input_bytes + data["map output (passages, articles, keys)"]["gb"] * GB
    index_jobs = min(args.cpu_slots, math.ceil(passages / per_shard))
    index_job_s = args.cpu_job_overhead_s + passages / index_jobs / INDEX_BUILD_PER_S.value

    stages = [
        {"stage": "plan (SHA-256, line cuts)", "where": "access point, one process", "jobs": 0,
         "rate": PLAN_BYTES_PER_S.value / 1e6, "unit": "MB/s", "hours": plan_s / HOUR,
         "kind": "measured", "source": PLAN_BYTES_PER_S.source},
        {"stage": "partition: map", "where": f"{parts:,} CPU jobs", "jobs": parts,
         "rate": MAP_PASSAGES_PER_S.value, "unit": "passages/s per job",
         "hours": passages / MAP_PASSAGES_PER_S.value / HOUR, "kind": "measured",
         "source": MAP_PASSAGES_PER_S.source},
        {"stage": "partition: merge", "where": "1 CPU job", "jobs": 1,
         "rate": MERGE_PASSAGES_PER_S.value, "unit": "passages/s",
         "hours": passages / MERGE_PASSAGES_PER_S.value / HOUR, "kind": "measured",
         "source": MERGE_PASSAGES_PER_S.source},
        {"stage": "partition: write", "where": f"{parts:,} CPU jobs", "jobs": parts,
         "rate": WRITE_PASSAGES_PER_S.value, "unit": "passages/s per job",
         "hours": passages / WRITE_PASSAGES_PER_S.value / HOUR, "kind": "measured",
         "source": WRITE_PASSAGES_PER_S.source},
        {"stage": "tokenize (shards.tokenize=true)", "where": f"write jobs, {write_cpus} CPUs "
         "each", "jobs": 0, "rate": tokenize_per_cpu, "unit": "passages/s per CPU",
         "hours": passages / tokenize_per_cpu / HOUR, "kind": "modelled",
         "source": f"{TOKENIZE_PER_S.source} / 16"},
        {"stage": "embed, token ids stored", "where": "1 GPU job per shard",
         "jobs": math.ceil(passages / per_shard), "rate": GPU_WORKER_PER_S.value,
         "unit": "passages/s per GPU",
         "hours": passages / GPU_WORKER_PER_S.value / HOUR, "kind": "measured",
         "source": GPU_WORKER_PER_S.source},
        {"stage": "embed, tokenizing in the job", "where": "1 GPU job per shard, 16 CPUs",
         "jobs": math.ceil(passages / per_shard), "rate": GPU_WHOLE_PER_S.value,
         "unit": "passages/s per GPU",
         "hours": passages / GPU_WHOLE_PER_S.value / HOUR, "kind": "measured",
         "source": GPU_WHOLE_PER_S.source},
        {"stage": "index, embedded, in pieces", "where": f"{index_jobs:,} CPU jobs",
         "jobs": index_jobs, "rate": INDEX_BUILD_PER_S.value, "unit": "passages/s per job",
         "hours": passages / INDEX_BUILD_PER_S.value / HOUR, "kind": "measured",
         "source": INDEX_BUILD_PER_S.source},
        {"stage": "index load, Elasticsearch", "where": "parallel load jobs",
         "jobs": int(es["load jobs"].value), "rate": es["data nodes"].value
         * args.es_node_rate, "unit": "passages/s", "hours": es["load time (h)"].value,
         "kind": "assumed", "source": "Elasticsearch sizing below"},
    ]

    runs = []
    for stored in (True, False):
        rate = GPU_WORKER_PER_S.value if stored else GPU_WHOLE_PER_S.value
        shards_gb = data["shards with token ids" if stored else "shards without ids"]["gb"]
        write_waves = math.ceil(parts * (write_cpus if stored else 1) / args.cpu_slots)
        write_bytes = data["map output (passages, articles, keys)"]["gb"] * GB \
            + shards_gb * GB
        steps = {  # (wall of the jobs, wall of their transfers through the access point)
            "plan": (plan_s, 0.0),
            "map": (math.ceil(parts / args.cpu_slots) * map_job_s, map_bytes / ap_rate),
            "merge": (merge_s, 0.0),
            "write": (write_waves * write_job_s[stored], write_bytes / ap_rate)}
        partition_s = sum(max(pair) for pair in steps.values())
        gpu_bytes = (shards_gb + data["results (embeddings, labels)"]["gb"]) * GB
        index_bytes = gpu_bytes + data["embeddings as float16"]["gb"] * GB \
            + data["shards without ids"]["gb"] * GB
        for gpus in args.gpus:
            gpu = gpu_stage(passages, per_shard, gpus, rate, args.job_overhead_s)
            stage_walls = {"partition": partition_s,
                           "GPU jobs": max(gpu["wall_s"], gpu_bytes / ap_rate),
                           "index": max(index_job_s, index_bytes / ap_rate)}
            limits = {"plan (access point)": plan_s,
                      "partition jobs": sum(steps[k][0] for k in ("map", "merge", "write")),
                      "GPU jobs": gpu["wall_s"],
                      "index jobs": index_job_s,
                      "access point transfer": (map_bytes + write_bytes + gpu_bytes
                                                + index_bytes) / ap_rate}
            runs.append({
                "gpus": gpus, "token_ids": "stored" if stored else "in the GPU job",
                "gpu_rate": rate, "jobs": gpu["jobs"], "job_s": gpu["job_s"],
                "partition_h": partition_s / HOUR, "gpu_stage_h": stage_walls["GPU jobs"] / HOUR,
                "index_h": stage_walls["index"] / HOUR,
                "total_h": sum(stage_walls.values()) / HOUR,
                "with_elasticsearch_h": (partition_s + max(stage_walls["GPU jobs"],
                                                           es["load time (h)"].value * HOUR))
                / HOUR,
                "gpu_hours": gpu["gpu_hours"], "gpu_slot_hours": gpu["slot_hours"],
                "access_point_mb_s": gpu_bytes / 1e6 / stage_walls["GPU jobs"],
                "bottleneck": max(limits, key=limits.__getitem__)})

    sizes = []
    for size in sorted({*SHARD_SIZES, per_shard}):
        stage = [gpu_stage(passages, size, g, GPU_WORKER_PER_S.value, args.job_overhead_s)
                 for g in args.gpus]
        sizes.append({"passages_per_shard": size, "jobs": stage[0]["jobs"],
                      "job_minutes": stage[0]["job_s"] / 60,
                      "wall_h": [s["wall_s"] / HOUR for s in stage],
                      "gpu_slot_hours": stage[0]["slot_hours"]})

    return {"inputs": {k: asdict(v) for k, v in inputs.items()}, "stages": stages,
            "data": data, "elasticsearch": {k: asdict(v) for k, v in es.items()},
            "runs": runs, "shard_sizes": sizes,
            "partition": {"parts": parts, "part_passages": part_passages,
                          "map_job_s": map_job_s, "merge_s": merge_s,
                          "write_job_s": write_job_s[True], "write_cpus": write_cpus,
                          "merge_memory_gb": data["merge memory (one job)"]["gb"]}}


def _elasticsearch(passages: int, data: dict[str, Any], node_rate: float) -> dict[str, Figure]:
    """The Elasticsearch cluster a corpus of `passages` needs, and its load time."""
    int8_gb = passages * (DIMS + 4) / GB
    graph_gb = passages * 4 * HNSW_M / GB
    ram_copy_gb = int8_gb + graph_gb
    ram_gb = ram_copy_gb * (1 + ES_REPLICAS)
    text_bytes = 2 * data["shards without ids"]["bytes_per_passage"]
    copy_gb = passages * (DIMS * 4 + DIMS + 4 + 4 * HNSW_M + text_bytes) / GB
    primaries = max(math.ceil(copy_gb / ES_SHARD_TARGET_GB),
                    math.ceil(passages / ES_MAX_DOCS_PER_SHARD))
    nodes = math.ceil(ram_gb / (ES_NODE_RAM_GB - ES_HEAP_GB - ES_OS_GB))
    return {
        "float32 vectors on disk (GB)": Figure(passages * DIMS * 4 / GB, "modelled",
                                               f"passages x {DIMS} x 4 bytes (kept beside the "
                                               "quantized copy)"),
        "int8 vectors in RAM (GB)": Figure(int8_gb, "modelled",
                                           f"num_vectors x (dims + 4): {ELASTIC_KNN}"),
        "HNSW graph in RAM (GB)": Figure(graph_gb, "modelled",
                                         f"num_vectors x 4 x m, m = {HNSW_M}: {ELASTIC_KNN}"),
        "off-heap RAM, one copy (GB)": Figure(ram_copy_gb, "modelled", "int8 vectors + graph"),
        f"off-heap RAM, {ES_REPLICAS} replica (GB)": Figure(
            ram_gb, "modelled", f"x {1 + ES_REPLICAS} copies"),
        "bbq_hnsw instead: RAM, one copy (GB)": Figure(
            passages * (DIMS / 8 + 14) / GB + graph_gb, "modelled",
            f"num_vectors x (dims/8 + 14) + graph: {ELASTIC_KNN}; Elasticsearch 9.1+ "
            "default for 384+ dims when the mapping names no index_options"),
        "index size, one copy (GB)": Figure(
            copy_gb, "modelled", "float32 + int8 vectors + graph + text (source and inverted "
            "index taken as 2x the shard's zstd text bytes)"),
        "primary shards": Figure(primaries, "modelled", ELASTIC_SHARDS),
        "passages per primary shard": Figure(passages / primaries, "modelled",
                                             "passages / primary shards"),
        "data nodes": Figure(nodes, "modelled",
                             f"off-heap RAM with replica / ({ES_NODE_RAM_GB} GB nodes - "
                             f"{ES_HEAP_GB} GB heap - {ES_OS_GB} GB)"),
        "bulk rate per data node (passages/s)": Figure(
            node_rate, "assumed", "--es-node-rate; not measured: measure "
            "`infer-corpus index --backend elasticsearch` on the cluster"),
        "load jobs": Figure(nodes * ES_CLIENTS_PER_NODE, "assumed",
                            f"{ES_CLIENTS_PER_NODE} bulk clients per data node"),
        "load time (h)": Figure(passages / (nodes * node_rate) / HOUR, "modelled",
                                "passages / (data nodes x bulk rate per node)"),
    }


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |"
                              for row in rows])


def num(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def markdown(result: dict[str, Any], gpus: list[int]) -> str:
    """The tables of docs/scale.md."""
    out = ["### Inputs", "", table(["quantity", "value", "kind", "source"], [
        [k, num(v["value"], 0 if float(v["value"]).is_integer() else 3), v["kind"], v["source"]]
        for k, v in result["inputs"].items()])]
    out += ["", "### Stages", "", table(
        ["stage", "where", "jobs", "rate", "hours of work", "rate is", "source"],
        [[s["stage"], s["where"], num(s["jobs"]) if s["jobs"] else "-",
          f"{num(s['rate'])} {s['unit']}",
          num(s["hours"], 2) if s["hours"] else "-", s["kind"], s["source"]]
         for s in result["stages"]])]
    out += ["", "### Data", "", table(["what", "bytes per passage", "GB", "kind", "source"], [
        [k, num(v["bytes_per_passage"]), num(v["gb"], 1), v["kind"], v["source"]]
        for k, v in result["data"].items()])]
    out += ["", "### Elasticsearch", "", table(["quantity", "value", "kind", "source"], [
        [k, num(v["value"], 0 if float(v["value"]).is_integer() or v["value"] > 1000 else 1),
         v["kind"], v["source"]] for k, v in result["elasticsearch"].items()])]
    p = result["partition"]
    out += ["", "### The partition as jobs", "", table(["quantity", "value"], [
        ["parts (map jobs, write jobs)", num(p["parts"])],
        ["passages per part", num(p["part_passages"])],
        ["map job (s)", num(p["map_job_s"])],
        ["merge job (s)", num(p["merge_s"])],
        ["write job with token ids (s)", f"{num(p['write_job_s'])} on {p['write_cpus']} CPUs"],
        ["merge memory (GB)", num(p["merge_memory_gb"], 1)]])]
    out += ["", "### Wall time and GPU-hours", "", table(
        ["GPUs", "token ids", "partition h", "GPU jobs h", "index h", "total h",
         "with Elasticsearch h", "GPU-hours (compute)", "GPU slot-hours", "access point MB/s",
         "bottleneck"],
        [[num(r["gpus"]), r["token_ids"], num(r["partition_h"], 2), num(r["gpu_stage_h"], 2),
          num(r["index_h"], 2), num(r["total_h"], 2), num(r["with_elasticsearch_h"], 2),
          num(r["gpu_hours"], 2), num(r["gpu_slot_hours"], 2), num(r["access_point_mb_s"]),
          r["bottleneck"]] for r in result["runs"]])]
    out += ["", "### Shard size (token ids stored)", "", table(
        ["passages per shard", "jobs", "minutes per job",
         *[f"GPU jobs h, {num(g)} GPUs" for g in gpus], "GPU slot-hours"],
        [[num(s["passages_per_shard"]), num(s["jobs"]), num(s["job_minutes"], 1),
          *[num(h, 2) for h in s["wall_h"]], num(s["gpu_slot_hours"], 2)]
         for s in result["shard_sizes"]])]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--articles", type=positive_int, default=18_000_000)
    parser.add_argument("--passages-per-article", type=positive_int, default=10)
    parser.add_argument("--passages-per-shard", type=positive_int, default=1_000_000)
    parser.add_argument("--part-bytes", type=positive_int, default=256 << 20,
                        help="input bytes per partition part (configs/condor-gpu.yaml)")
    parser.add_argument("--cpu-slots", type=positive_int, default=200,
                        help="CPU jobs of this run at once (assumed: 200)")
    parser.add_argument("--cpu-job-overhead-s", type=positive_float, default=30.0,
                        help="seconds each CPU job spends besides its work (assumed: 30)")
    parser.add_argument("--access-point-mb-s", type=positive_float, default=500.0,
                        help="MB/s the access point transfers to and from jobs (assumed: 500)")
    parser.add_argument("--gpus", type=positive_int, nargs="+", default=[10, 50, 200])
    parser.add_argument("--job-overhead-s", type=positive_float, default=60.0,
                        help="seconds each GPU job spends besides embedding (assumed: 60)")
    parser.add_argument("--es-node-rate", type=positive_float, default=5000.0,
                        help="passages/s one Elasticsearch data node indexes (assumed: 5000)")
    parser.add_argument("--json", action="store_true", help="print the model as JSON")
    args = parser.parse_args(argv)
    result = model(args)
    print(json.dumps(result, indent=1) if args.json else markdown(result, args.gpus))
    return 0


if __name__ == "__main__":
    sys.exit(main())
