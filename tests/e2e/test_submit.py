"""`infer-corpus submit`: the inference DAG on a partitioned demo workdir, checked with the real
htcondor2/classad2 bindings (no pool can run here), and the CLI's errors and status."""

from __future__ import annotations

import contextlib
import io
import json
import re
import stat
import subprocess
import sys
from pathlib import Path

import classad2
import htcondor2
import pytest
from conftest import ROOT, last_json, run_cli

from infer_corpus.cli import main
from inference.workdir import Workdir
from submit.htcondor import job_match_ad, lint_dag
from submit.pipeline import shard_object_name

CONFIG = str(ROOT / "configs" / "condor-gpu.yaml")
SMALL = ["--set", "shards.passages_per_shard=30"]
# machine ads as condor_gpu_discovery describes GPUs: MaxSupportedVersion is the CUDA version
# the node's driver supports (major * 1000 + minor * 10); driver 580 supports CUDA 13.0
H100 = """[ Cpus = 16; Memory = 131072; Disk = 500000000; GPUs = 1; AvailableGPUs = { G1 };
  G1 = [ Id = "GPU-1"; DeviceName = "NVIDIA H100 80GB HBM3"; Capability = 9.0;
         GlobalMemoryMb = 81559; DriverVersion = 13.0; MaxSupportedVersion = 13000 ];
  Requirements = true ]"""
T4 = """[ Cpus = 16; Memory = 131072; Disk = 500000000; GPUs = 1; AvailableGPUs = { G2 };
  G2 = [ Id = "GPU-2"; DeviceName = "Tesla T4"; Capability = 7.5;
         GlobalMemoryMb = 15095; DriverVersion = 13.0; MaxSupportedVersion = 13000 ];
  Requirements = true ]"""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """The demo corpus partitioned into 3 shards with the sample GPU-pool config."""
    path = tmp_path_factory.mktemp("condor") / "run"
    run_cli("partition", "--demo", "--workdir", str(path), "--config", CONFIG, *SMALL)
    return path


def submit(workdir: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    """`infer-corpus submit` in this process (start-up is most of a subprocess's time)."""
    args = ["submit", "--workdir", str(workdir), "--config", CONFIG, *SMALL, *extra]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    if check and code != 0:
        raise AssertionError(f"infer-corpus {' '.join(args)} failed ({code}):\n{err.getvalue()}")
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def dag_nodes(dag: Path) -> dict[str, dict[str, str]]:
    """Each JOB's VARS, as DAGMan would set them for its submit file."""
    nodes: dict[str, dict[str, str]] = {}
    for line in dag.read_text().splitlines():
        if line.startswith("JOB "):
            nodes[line.split()[1]] = {}
        elif line.startswith("VARS "):
            name = line.split()[1]
            nodes[name] = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', line))
    return nodes


def node_job(condor: Path, submit_file: str, values: dict[str, str]) -> htcondor2.Submit:
    """The node's job as DAGMan submits it: its VARS set first (DAGMan's default, PREPEND),
    then the submit file read, whose own commands win."""
    prefix = "".join(f"{key} = {value}\n" for key, value in values.items())
    return htcondor2.Submit(prefix + (condor / submit_file).read_text())


def test_dry_run_writes_a_clean_dag(workdir):
    manifest = (workdir / "manifest.json").read_bytes()
    summary = last_json(submit(workdir, "--dry-run", "--json").stdout)
    condor = workdir / "condor"
    assert summary["dry_run"] and summary["cluster"] is None
    assert summary["shard_jobs"] == 3 and summary["shards_done"] == 0
    dag = condor / "pipeline.dag"
    assert summary["dag"] == str(dag.resolve())
    assert lint_dag(dag) == []
    text = dag.read_text()
    for line in ["NODE_STATUS_FILE pipeline.status 30", "JOB check check.sub",
                 "JOB index index.sub", "FINAL report report.sub", "MAXJOBS gpu 50",
                 "CATEGORY shard-00002 gpu", "RETRY shard-00001 3 UNLESS-EXIT 2",
                 "JOB index-002 index-piece.sub", "RETRY index-002 3 UNLESS-EXIT 2",
                 "PARENT check CHILD shard-00000 shard-00001 shard-00002",
                 "PARENT shard-00001 CHILD index-001",
                 "PARENT index-000 index-001 index-002 CHILD index"]:
        assert line in text, line
    post = re.search(r"SCRIPT POST shard-00001 (\S+) (.*)", text)
    assert Path(post.group(1)).is_file()
    assert post.group(2) == (f"-m submit.validate --workdir {workdir.resolve()} --shard 1 "
                             "--job-exit $RETURN")
    assert f"SCRIPT POST index-001 {sys.executable} -m submit.steps index-piece --workdir " \
        f"{workdir.resolve()} --group 1 --shards 1-1 --job-exit $RETURN" in text
    for name in ["check.sub", "shard.sub", "index-piece.sub", "index.sub", "report.sub"]:
        htcondor2.Submit((condor / name).read_text())  # parses
    script = condor / "run-shard.sh"
    assert script.stat().st_mode & stat.S_IXUSR
    assert "--checkpoint-after 1800 --checkpoint-exit-code 85" in script.read_text()
    assert (workdir / "manifest.json").read_bytes() == manifest  # only condor/ is written
    assert not list((workdir / "results").glob("*.parquet"))


def test_a_relative_workdir_path_works(workdir, monkeypatch):
    monkeypatch.chdir(workdir.parent)
    summary = last_json(submit(Path(workdir.name), "--dry-run", "--json").stdout)
    assert summary["shard_jobs"] == 3
    assert lint_dag(Path(workdir.name) / "condor" / "pipeline.dag") == []


def test_each_shard_job_gets_its_own_files(workdir):
    submit(workdir, "--dry-run")
    condor = workdir / "condor"
    nodes = dag_nodes(condor / "pipeline.dag")
    assert sorted(nodes) == ["check", "index", "index-000", "index-001", "index-002",
                             "shard-00000", "shard-00001", "shard-00002"]
    for n in range(3):
        job = node_job(condor, "shard.sub", nodes[f"shard-{n:05d}"])
        inputs = [i.strip() for i in job.expand("transfer_input_files").split(",")]
        assert inputs == [str((workdir / "shards" / f"shard-{n:05d}.parquet").resolve()),
                          str((workdir / "manifest.json").resolve())]
        assert all(Path(i).is_file() for i in inputs)
        assert job.expand("arguments") == f"{n} shard-{n:05d}.parquet result-{n:05d}.parquet"
        assert job.expand("transfer_output_remaps") == (
            f'"result-{n:05d}.parquet = {condor.resolve()}/incoming/result-{n:05d}.parquet"')
        assert job.expand("output") == f"logs/shard-{n}.out"
    job = node_job(condor, "shard.sub", {})
    assert job["universe"] == "container"
    assert job["container_image"] == "docker://ghcr.io/example/infer-corpus:0.1.0"
    assert job["checkpoint_exit_code"] == "85" and job["transfer_checkpoint_files"] == "parts"
    assert job["MY.WantGPULab"] == "true" and job["MY.GPUJobLength"] == '"short"'
    assert classad2.ExprTree(job["MY.GPUJobLength"]).eval() == "short"
    check = node_job(condor, "check.sub", {})
    assert check["universe"] == "local"
    assert "infer_corpus partition --workdir" in check["arguments"]
    assert str(condor.resolve() / "config.yaml") in check["arguments"]


def test_shard_jobs_are_what_a_chtc_gpu_user_expects(workdir):
    """CUDA 13.0 torch: a driver for CUDA 13.0 and capability 7.5+; checkpointing jobs marked
    resumable; a chirp proxy for live progress; every job's ad names its workdir."""
    submit(workdir, "--dry-run")
    job = node_job(workdir / "condor", "shard.sub", {})
    assert job["gpus_minimum_runtime"] == "13.0" and job["gpus_minimum_capability"] == "7.5"
    assert job["MY.is_resumable"] == "true" and job["want_io_proxy"] == "true"
    assert classad2.ExprTree(job["MY.InferCorpusRun"]).eval() == str(workdir.resolve())
    ad = job_match_ad(job)
    assert ad["GPUsMinRuntime"] == 13000 and ad["GPUsMinCapability"] == 7.5
    assert "MaxSupportedVersion >= GPUsMinRuntime" in str(ad["RequireGPUs"])
    script = (workdir / "condor" / "run-shard.sh").read_text()
    for line in ['export HOME="$SCRATCH"', 'HF_HOME="$XDG_CACHE_HOME/huggingface"',
                 'TORCH_HOME="$XDG_CACHE_HOME/torch"', "nvidia-smi -L"]:
        assert line in script, line
    submit(workdir, "--dry-run", "--set", "condor.checkpoint_minutes=0",
           "--set", "condor.want_io_proxy=false")
    job = node_job(workdir / "condor", "shard.sub", {})
    assert "MY.is_resumable" not in job and "want_io_proxy" not in job
    # auto: the jobs choose from their measured setup and the pool's eviction rate
    refused = submit(workdir, "--dry-run", "--set", "condor.checkpoint_minutes=auto",
                     check=False)
    assert refused.returncode == 2 and "mean_time_between_evictions" in refused.stderr
    submit(workdir, "--dry-run", "--set", "condor.checkpoint_minutes=auto",
           "--set", "condor.mean_time_between_evictions=3600")
    assert "--checkpoint-after auto --mean-time-between-evictions 3600 " \
        "--checkpoint-exit-code 85" in (workdir / "condor" / "run-shard.sh").read_text()
    assert node_job(workdir / "condor", "shard.sub", {})["MY.is_resumable"] == "true"


def test_the_index_pieces_are_cpu_jobs_sized_from_their_passages(workdir):
    """One CPU job per group of shards builds its piece from that group's files, asking for
    what its passages need within the config's caps; the access point combines the pieces."""
    submit(workdir, "--dry-run", "--set", "condor.load_jobs=2",
           "--set", "condor.index_resources.request_memory=2GB")
    condor = workdir / "condor"
    root = workdir.resolve()
    nodes = dag_nodes(condor / "pipeline.dag")
    rows = [entry["rows"] for entry in json.loads((workdir / "manifest.json").read_text())[
        "shards"]]
    for group, shards, passages in (("000", "0-1", rows[0] + rows[1]), ("001", "2-2", rows[2])):
        job = node_job(condor, "index-piece.sub", nodes[f"index-{group}"])
        assert job["universe"] == "container" and "request_gpus" not in job
        assert job.expand("arguments") == f'"-m infer_corpus index --workdir . --shards {shards}"'
        assert job.expand("transfer_input_files") == f"{condor.resolve()}/load/group-{group}/"
        assert job.expand("initialdir") == f"incoming/index-{group}"
        assert job["transfer_output_files"] == "index"
        assert job.expand("output") == f"../../logs/index-{group}.out"
        assert job.expand("request_memory") == "2048MB"  # the cap, under the 3 GB it needs
        disk_mb = -(-((1 << 30) + passages * (6 << 10)) // (1 << 20))
        assert job.expand("request_disk") == f"{disk_mb}MB"
        assert job["executable"] == str(condor.resolve() / "run-step.sh")
    text = (condor / "pipeline.dag").read_text()
    assert f"SCRIPT PRE index-001 {sys.executable} -m submit.steps stage-index --workdir " \
        f"{root} --group 1 --shards 2-2" in text
    combine = node_job(condor, "index.sub", {})
    assert combine["universe"] == "local"
    assert f"index --workdir {root} --workers 1" in combine["arguments"]
    submit(workdir, "--dry-run", "--set", "condor.index_resources.request_disk=10MB")
    job = node_job(condor, "index-piece.sub", dag_nodes(condor / "pipeline.dag")["index-000"])
    assert job.expand("request_disk") == "10MB" and job.expand("request_memory") == "3072MB"
    submit(workdir, "--dry-run", "--set", "condor.local_steps=true")
    job = node_job(condor, "index.sub", {})
    assert job["universe"] == "local" and "index --workdir " + str(root) in job["arguments"]
    assert "index-000" not in (condor / "pipeline.dag").read_text()


def test_elasticsearch_loads_in_parallel_jobs_and_swaps_the_alias_once(workdir, tmp_path,
                                                                       monkeypatch):
    es = ["--set", "index.backend=elasticsearch", "--set", "index.url=http://es:9200",
          "--set", "condor.load_jobs=2"]
    summary = last_json(submit(workdir, "--dry-run", "--json", *es).stdout)
    assert summary["load_jobs"] == 2
    condor = workdir / "condor"
    dag = condor / "pipeline.dag"
    text = dag.read_text()
    assert lint_dag(dag) == []
    for line in ["JOB load-000 load.sub", "JOB load-001 load.sub", "JOB swap swap.sub",
                 "PARENT shard-00000 shard-00001 CHILD load-000",
                 "PARENT shard-00002 CHILD load-001", "PARENT load-000 load-001 CHILD swap",
                 "RETRY load-001 3 UNLESS-EXIT 2"]:
        assert line in text, line
    assert "JOB index" not in text
    assert f"SCRIPT PRE load-000 {sys.executable} -m submit.steps stage-load --workdir " \
        f"{workdir.resolve()} --group 0 --shards 0-1" in text
    nodes = dag_nodes(dag)
    for group, shards in (("000", "0-1"), ("001", "2-2")):
        job = node_job(condor, "load.sub", nodes[f"load-{group}"])
        assert job.expand("arguments") == ('"-m infer_corpus index --workdir . --shards '
                                           f'{shards} --no-swap"')
        assert job.expand("transfer_input_files") == f"{condor.resolve()}/load/group-{group}/"
        assert job["transfer_output_files"] == "" and job["getenv"] == "ES_API_KEY"
        assert job["request_disk"] == "50GB"  # condor.load_resources: one group's files
    swap = node_job(condor, "swap.sub", {})
    assert swap["universe"] == "local" and swap["arguments"].endswith('--swap-only"')
    stub = tmp_path / "condor_dagman"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    monkeypatch.chdir(condor)
    assert "-Dag pipeline.dag" in htcondor2.Submit.from_dag("pipeline.dag", {
        "dagman": str(stub), "force": True})["arguments"]


def test_an_unpartitioned_workdir_with_inputs_gets_partition_jobs_sized_to_their_bytes(
        tmp_path):
    """The sample config on the 9 KB demo corpus: one map job, the merge and one write job,
    each asking for what its bytes need (about 1 GB and one CPU), not the config's caps."""
    from inference.demo import demo_corpus_path

    demo = demo_corpus_path().resolve()
    workdir = tmp_path / "pool-run"
    args = ["submit", "--workdir", str(workdir), "--config", CONFIG, *SMALL, "--dry-run",
            "--json", "--input", str(demo)]
    summary = last_json(run_cli(*args).stdout)
    condor = workdir / "condor"
    assert summary["partition_job"] and summary["partition_jobs"] == 3
    assert summary["dag"] == str((condor / "partition.dag").resolve())
    assert lint_dag(condor / "partition.dag") == []
    nodes = dag_nodes(condor / "partition.dag")
    assert sorted(nodes) == ["map-00000", "merge", "write-00000"]
    stage = (workdir / "parts").resolve()
    for name, submit_file in (("map-00000", "map.sub"), ("merge", "merge.sub"),
                              ("write-00000", "write.sub")):
        job = node_job(condor, submit_file, nodes[name])
        assert job["universe"] == "container" and job["initialdir"] == "incoming"
        assert job.expand("request_cpus") == "1", name
        memory = int(job.expand("request_memory")[:-2])
        disk = int(job.expand("request_disk")[:-2])
        assert 512 <= memory <= 1100 and 1024 <= disk <= 1100, (name, memory, disk)
    map_job = node_job(condor, "map.sub", nodes["map-00000"])
    assert map_job["transfer_input_files"].split(",") == [
        "$(part_input)", str(stage / "plan.json"), str((condor / "config.yaml").resolve())]
    assert nodes["map-00000"]["part_input"] == str(demo)  # a whole file: no range to cut out
    assert "input" not in map_job  # VARS named `input` would be the job's standard input
    assert map_job["arguments"] == ('"-m infer_corpus partition-step map --plan plan.json '
                                    '--part $(part) --input $(input_name) --config '
                                    'config.yaml"')
    assert map_job["transfer_output_files"] == "part-$(part)"
    merge_inputs = node_job(condor, "merge.sub", {})["transfer_input_files"].split(",")
    assert merge_inputs[0] == str(stage / "keys")  # the keys alone, never the passages
    assert "SCRIPT POST map-00000" in (condor / "partition.dag").read_text()
    assert workdir.joinpath("manifest.json").is_file()  # planned: the partition is running
    big = run_cli(*args[:-2], "--set", "condor.partition_resources.request_memory=700MB",
                  "--input", str(demo))
    assert big.returncode == 0
    capped = node_job(condor, "merge.sub", dag_nodes(condor / "partition.dag")["merge"])
    assert capped.expand("request_memory") == "700MB"


def test_gpu_jobs_match_an_h100_but_not_a_small_t4(workdir):
    submit(workdir, "--dry-run", "--set", "condor.resources.gpus_minimum_memory=32GB")
    job = job_match_ad(node_job(workdir / "condor", "shard.sub", {}))
    assert classad2.parseOne(H100).matches(job)
    assert not classad2.parseOne(T4).matches(job)
    submit(workdir, "--dry-run")  # the sample's 14 GB: a "16 GB" T4 (15,095 MB) qualifies
    job = job_match_ad(node_job(workdir / "condor", "shard.sub", {}))
    assert classad2.parseOne(T4).matches(job)
    # torch's CUDA 13.0 build: not on a driver for CUDA 12.4, nor on a V100 (capability 7.0)
    old_driver = H100.replace("DriverVersion = 13.0; MaxSupportedVersion = 13000",
                              "DriverVersion = 12.4; MaxSupportedVersion = 12040")
    assert not classad2.parseOne(old_driver).matches(job)
    assert not classad2.parseOne(H100.replace("Capability = 9.0", "Capability = 7.0")
                                 ).matches(job)


def test_dagman_accepts_the_dag(workdir, tmp_path, monkeypatch):
    submit(workdir, "--dry-run")
    dagman = tmp_path / "condor_dagman"
    dagman.write_text("#!/bin/sh\nexit 0\n")
    dagman.chmod(0o755)
    monkeypatch.chdir(workdir / "condor")
    description = htcondor2.Submit.from_dag("pipeline.dag", {"dagman": str(dagman),
                                                             "force": True})
    assert "-Dag pipeline.dag" in description["arguments"]


def test_shards_through_osdf_get_unique_names_and_are_staged(workdir, tmp_path):
    stage = tmp_path / "origin"
    url = "osdf:///ospool/ap40/data/alice/run1"
    args = ["--dry-run", "--json", "--set", f"condor.shards_url={url}",
            "--set", f"condor.stage_dir={stage}"]
    assert last_json(submit(workdir, *args).stdout)["staged"] == 3
    assert last_json(submit(workdir, *args).stdout)["staged"] == 0  # already there
    manifest = Workdir(workdir).manifest()
    condor = workdir / "condor"
    job = node_job(condor, "shard.sub", dag_nodes(condor / "pipeline.dag")["shard-00001"])
    name = shard_object_name(manifest, 1)
    assert manifest.partition_key and manifest.partition_key in name
    assert job.expand("transfer_input_files").startswith(f"{url}/{name},")
    assert job.expand("arguments").split()[1] == name
    assert (stage / name).read_bytes() == (workdir / "shards" / "shard-00001.parquet").read_bytes()
    assert f"\t{url}/{name}" in (condor / "stage.tsv").read_text()
    # streamed: the job reads the shard's URL itself, nothing of it transferred
    submit(workdir, *args, "--set", "condor.data_source=stream")
    job = node_job(condor, "shard.sub", dag_nodes(condor / "pipeline.dag")["shard-00001"])
    assert url not in job.expand("transfer_input_files")
    assert job.expand("arguments").split()[1] == f"{url}/{name}"
    assert "--data-source stream" in (condor / "run-shard.sh").read_text()


def test_a_streamed_data_source_needs_a_federation_url(workdir):
    refused = submit(workdir, "--dry-run", "--set", "condor.data_source=stream", check=False)
    assert refused.returncode == 2 and "condor.shards_url" in refused.stderr
    refused = submit(workdir, "--dry-run", "--set", "condor.data_source=ftp", check=False)
    assert refused.returncode == 2 and "transfer, stream, cache" in refused.stderr


def test_venv_tarball_and_no_checkpoints(workdir, tmp_path):
    tarball = tmp_path / "env.tar.gz"
    tarball.write_bytes(b"")
    submit(workdir, "--dry-run", "--set", "condor.container_image=null",
           "--set", f"condor.venv_tarball={tarball}", "--set", "condor.checkpoint_minutes=0")
    condor = workdir / "condor"
    job = node_job(condor, "shard.sub", dag_nodes(condor / "pipeline.dag")["shard-00000"])
    assert job["universe"] == "vanilla" and "container_image" not in job
    assert job.expand("transfer_input_files").endswith(f",{tarball}")
    assert "checkpoint_exit_code" not in job
    script = (condor / "run-shard.sh").read_text()
    assert "VENV_TARBALL=env.tar.gz" in script and "PYTHON=env/bin/python" in script
    assert "--checkpoint-after" not in script


def test_submit_without_a_schedd_says_what_to_do(workdir):
    proc = run_cli("submit", "--workdir", str(workdir), "--config", CONFIG, *SMALL, check=False)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no HTCondor schedd is reachable" in lines[0]
    assert "access point" in lines[0] and "pipeline.dag" in lines[0]
    assert (workdir / "condor" / "pipeline.dag").is_file()  # written, ready to submit later


@pytest.mark.parametrize("args, message", [
    (["--set", "shards.passages_per_shard=40"], "differ from those"),
    (["--set", "condor.container_image=null"], "what software the jobs run"),
    (["--set", "condor.resources.gpus_minimum_memory=lots"], "not a quantity"),
    (["--set", "condor.max_job=3"], "unknown config key condor.max_job"),
    (["--set", "condor.site_attributes.Bad-Name=1"], "not a ClassAd attribute name"),
    (["--set", "condor.resources.gpus_minimum_runtime=cuda13"], "must look like 13.0"),
    (["--set", "condor.partition_resources.request_disk=big"],
     "condor.partition_resources.request_disk: 'big' is not a quantity"),
    (["--input", "/no/such/articles.jsonl"], "no such file"),
])
def test_bad_settings_are_one_line_errors(workdir, args, message):
    proc = submit(workdir, "--dry-run", *args, check=False)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_an_unpartitioned_workdir_is_refused(tmp_path):
    proc = run_cli("submit", "--workdir", str(tmp_path / "empty"), "--config", CONFIG,
                   "--dry-run", check=False)
    assert proc.returncode == 2 and "partition" in proc.stderr
    assert "Traceback" not in proc.stderr


NODE_STATUS = """[ Type = "DagStatus"; DagFiles = { "pipeline.dag" }; Timestamp = 1700000000;
  DagStatus = 3; /* "STATUS_SUBMITTED ()" */ NodesTotal = 6; NodesDone = 2; NodesFailed = 1;
  JobProcsHeld = 0; JobProcsIdle = 1; ]
[ Type = "NodeStatus"; Node = "partition"; NodeStatus = 5; StatusDetails = ""; RetryCount = 0;
  JobProcsQueued = 0; JobProcsHeld = 0; ]
[ Type = "NodeStatus"; Node = "shard-00000"; NodeStatus = 5; StatusDetails = "";
  RetryCount = 1; JobProcsQueued = 0; JobProcsHeld = 0; ]
[ Type = "NodeStatus"; Node = "shard-00001"; NodeStatus = 6;
  StatusDetails = "Job exited with status 2"; RetryCount = 0; JobProcsQueued = 0;
  JobProcsHeld = 0; ]
[ Type = "NodeStatus"; Node = "shard-00002"; NodeStatus = 3; StatusDetails = "idle";
  RetryCount = 0; JobProcsQueued = 1; JobProcsHeld = 0; ]
[ Type = "NodeStatus"; Node = "index"; NodeStatus = 0; StatusDetails = ""; RetryCount = 0;
  JobProcsQueued = 0; JobProcsHeld = 0; ]
[ Type = "StatusEnd"; EndTime = 1700000000; NextUpdate = 1700000030; ]
"""


def test_status_reads_the_node_status_file(workdir):
    submit(workdir, "--dry-run")
    status_file = workdir / "condor" / "pipeline.status"
    report = last_json(run_cli("status", "--workdir", str(workdir), "--json").stdout)
    assert report["condor"]["state"] == "not submitted"
    status_file.write_text(NODE_STATUS)
    try:
        report = last_json(run_cli("status", "--workdir", str(workdir), "--json").stdout)
        text = run_cli("status", "--workdir", str(workdir)).stdout
    finally:
        status_file.unlink()
    dag = report["condor"]
    assert dag["state"] == "submitted" and dag["updated"] == 1700000000
    assert dag["nodes"] == {"done": 2, "submitted": 1, "not_ready": 1, "error": 1}
    assert dag["failed"] == ["shard-00001"] and dag["retries"] == 1
    assert report["shard_total"] == 3  # the manifest's view is still there
    assert "condor DAG pipeline.dag: submitted" in text and "failed nodes: shard-00001" in text


def test_status_of_a_running_dag_without_condor_q_still_reports(workdir, tmp_path):
    """While the DAG runs (its lock exists) status asks condor_q for the jobs' progress; on a
    machine without condor_q it says so and reports the rest."""
    submit(workdir, "--dry-run")
    lock = workdir / "condor" / "pipeline.dag.lock"
    lock.write_text("")
    try:
        env = {"PATH": str(tmp_path)}  # no condor_q on it
        report = last_json(run_cli("status", "--workdir", str(workdir), "--json",
                                   env=env).stdout)
        text = run_cli("status", "--workdir", str(workdir), env=env).stdout
    finally:
        lock.unlink()
    assert report["condor"]["queue_error"] == "condor_q is not on the PATH"
    assert "jobs in the queue: unknown (condor_q is not on the PATH)" in text
    assert report["shard_total"] == 3


def test_default_yaml_lists_the_condor_defaults():
    from infer_corpus.config import load_config
    from submit.config import CondorConfig

    assert load_config(ROOT / "configs" / "default.yaml").condor == CondorConfig()


def test_the_dry_run_hint_can_be_pasted_into_a_shell(tmp_path, monkeypatch):
    """A glob stays quoted for the command, a value with a space stays one argument, and the
    program is one the shell finds (the venv's script when the venv is not on the PATH)."""
    import shlex
    import shutil

    from inference.demo import demo_corpus_path

    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # the venv not activated
    pattern = str(demo_corpus_path().parent / "*.jsonl")
    workdir = tmp_path / "run"
    out = submit(workdir, "--dry-run", "--set", "condor.batch_name=my batch",
                 "--input", pattern).stdout
    hint = out.strip().splitlines()[-1].strip()
    program, *args = shlex.split(hint)
    assert Path(program).name == "infer-corpus" and shutil.which(program), hint
    assert args == ["submit", "--workdir", str(workdir), "--config", CONFIG, *SMALL,
                    "--set", "condor.batch_name=my batch", "--input", pattern]
