"""The DAGs we write, run the way HTCondor runs them (tests/support/condor_replay.py): DAGMan in the
directory the README's command gives it, jobs in empty scratch directories that hold only what
file transfer brings, POST scripts that judge the results, checkpoints, retries and aborts."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from condor_replay import JobRun, Pool, checkpoint_at_once
from conftest import CRANFIELD, ROOT

README = ROOT / "README.md"
# CPU jobs in float32 (ONNX int8's dynamic quantization makes a passage's embedding depend on
# which passages share its batch), one thread each: two jobs at once on a 2-core CI machine
SHARED_OPTIONS = {"model.device": "cpu", "model.dtype": "float32", "predictions.kind": "none",
                  "condor.container_image": None, "condor.python": sys.executable,
                  "condor.resources.request_cpus": 1}


def cli(*args: str, cwd: Path | None = None) -> str:
    """`infer-corpus ARGS` in this process (start-up is most of a subprocess's time), in `cwd`
    like a user's shell; returns stdout."""
    from infer_corpus.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(cwd or Path.cwd()), contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err):
        code = main(list(args))
    if code != 0:
        raise AssertionError(f"infer-corpus {' '.join(args)} exited {code}:\n{err.getvalue()}")
    return out.getvalue()


def pool_config(path: Path, **options: object) -> Path:
    """configs/condor-gpu.yaml set up for this machine, as the README has users copy it."""
    data = yaml.safe_load((ROOT / "configs" / "condor-gpu.yaml").read_text())
    for key, value in {**SHARED_OPTIONS, **options}.items():
        *parents, last = key.split(".")
        section = data
        for name in parents:
            section = section.setdefault(name, {})
        section[last] = value
    path.write_text(yaml.safe_dump(data))
    return path


def readme_dag_command() -> str:
    """The condor_submit_dag line of the README's HTCondor section, as users will type it."""
    section = README.read_text().split("## Running on HTCondor", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    lines = [line.split("#", 1)[0].strip() for block in blocks for line in block.splitlines()]
    commands = [line for line in lines if line.startswith("condor_submit_dag")]
    assert len(commands) == 1, "the README's HTCondor section shows one condor_submit_dag line"
    return commands[0]


def search_ids(workdir: Path, query: str) -> list[str]:
    hits = json.loads(cli("search", "--workdir", str(workdir), "--json", query))
    return [hit["passage_id"] for hit in hits["hits"]]


def embeddings(workdir: Path) -> dict[str, np.ndarray]:
    vectors = {}
    for path in sorted((workdir / "results").glob("*.parquet")):
        table = pq.read_table(path, columns=["passage_id", "embedding"])
        for pid, vector in zip(table.column("passage_id").to_pylist(),
                               table.column("embedding").to_pylist()):
            vectors[pid] = np.asarray(vector, dtype=np.float32)
    return vectors


def assert_same_embeddings(condor: Path, local: Path) -> None:
    ours, theirs = embeddings(condor), embeddings(local)
    assert ours.keys() == theirs.keys()
    for pid, vector in ours.items():
        np.testing.assert_allclose(vector, theirs[pid], atol=2e-3, err_msg=pid)


def generated_paths(condor_dir: Path) -> list[str]:
    """Every absolute path named in the DAG, its submit files and its job script."""
    text = "".join(p.read_text() for p in condor_dir.iterdir()
                   if p.suffix in (".dag", ".sub", ".sh"))
    return sorted(set(re.findall(r"(?<![\w.$])(/[\w./-]+)", text)))


@pytest.fixture(scope="module")
def demo_local(tmp_path_factory) -> tuple[Path, Path]:
    """The demo corpus run locally (2 shards: 40 + 35 passages), and the config it ran with."""
    user = tmp_path_factory.mktemp("demo-local")
    config = pool_config(user / "demo.yaml", **{"shards.passages_per_shard": 40})
    cli("run", "--demo", "--workdir", "local", "--config", str(config), cwd=user)
    return user / "local", config


def test_dagman_resolves_node_files_against_its_working_directory(tmp_path):
    """Why the README's command has -usedagdir: without it, DAGMan works in the directory the
    command was typed in, where the node submit files are not."""
    dag_dir = tmp_path / "run1" / "condor"
    dag_dir.mkdir(parents=True)
    (dag_dir / "hello.sub").write_text(
        f"universe = local\nexecutable = {sys.executable}\n"
        "arguments = \"-c 'open(\"\"hello.txt\"\", \"\"w\"\").write(\"\"hi\"\")'\"\nqueue\n")
    (dag_dir / "pipeline.dag").write_text("JOB hello hello.sub\n")
    without = Pool(tmp_path / "pool-1").submit_dag(
        "condor_submit_dag run1/condor/pipeline.dag", cwd=tmp_path)
    assert without.status == "failed" and "hello.sub does not exist" in \
        without.nodes["hello"].error
    with_dir = Pool(tmp_path / "pool-2").submit_dag(readme_dag_command(), cwd=tmp_path)
    assert with_dir.status == "succeeded", with_dir.summary()
    assert (dag_dir / "hello.txt").read_text() == "hi"  # local universe: runs in initialdir


@pytest.fixture(scope="module")
def cranfield_articles(tmp_path_factory) -> Path:
    """A user's folder holding articles/part-1.jsonl.gz: the first 60 Cranfield abstracts."""
    if not (CRANFIELD / "corpus.jsonl").is_file():
        pytest.skip("../shared/corpora/cranfield is not present")
    user = tmp_path_factory.mktemp("user")
    (user / "articles").mkdir()
    lines = CRANFIELD.joinpath("corpus.jsonl").read_text().splitlines()[:60]
    with gzip.open(user / "articles" / "part-1.jsonl.gz", "wt") as handle:
        handle.write("\n".join(lines) + "\n")
    return user


def test_readme_flow_with_a_relative_workdir_builds_the_same_index_as_a_local_run(
        cranfield_articles, tmp_path):
    """The README's flow, typed in the user's folder: one `submit --input` partitions in CPU
    jobs (a map job per part, the merge, a write job per part), then the partition DAG's
    sub-DAG node finishes the partition and writes the GPU DAG on the access point and runs
    it: shard jobs, then the index built in pieces by CPU jobs from the shards and results
    file transfer brings, combined on the access point."""
    user = cranfield_articles
    pool_config(user / "my-pool.yaml", **{"shards.passages_per_shard": 40})
    submit = ["submit", "--input", "articles/*.jsonl.gz", "--workdir", "run1",
              "--config", "my-pool.yaml", "--dry-run"]
    cli(*submit, cwd=user)
    condor = user / "run1" / "condor"
    assert (condor / "partition.dag").is_file()
    assert json.loads((user / "run1" / "manifest.json").read_text())["partition"] == \
        {"state": "running"}  # planned on the access point; its jobs do the rest
    assert not (condor / "pipeline.dag").exists()  # written once the shards exist
    command = readme_dag_command()
    pool = Pool(tmp_path / "pool")
    seen: dict[str, str] = {}

    def status_while_running(job: JobRun, sandbox: Path) -> None:
        if job.node == "shard-00000":  # the sub-DAG runs: status shows it, and its jobs
            seen["status"] = cli("status", "--workdir", "run1", cwd=user)

    pool.after_exit = status_while_running
    with pytest.MonkeyPatch.context() as env:  # condor_q on the PATH, as on an access point
        env.setenv("PATH", f"{pool.root / 'bin'}:{os.environ.get('PATH', '')}")
        run = pool.submit_dag(command.replace("pipeline.dag", "partition.dag"), cwd=user)
    assert run.status == "succeeded" and run.exit_code == 0, run.summary()
    assert "condor DAG pipeline.dag" in seen["status"], seen["status"]
    assert re.search(r"shard-00000 \(\d+\.0\) on \S+: \d+ of 40 passages", seen["status"]), \
        seen["status"]
    sandbox = run.starts("map-00000")[0].sandbox
    assert {p.name for p in sandbox.iterdir()} >= {"part-1.jsonl.gz", "config.yaml",
                                                    "plan.json", "part-00000"}
    merge_sandbox = run.starts("merge")[0].sandbox
    assert not list(merge_sandbox.rglob("*.parquet"))  # the merge gets keys, never text
    manifest = json.loads((user / "run1" / "manifest.json").read_text())
    assert manifest["partition"]["state"] == "done" and len(manifest["shards"]) == 2
    assert manifest["inputs"][0]["path"] == str(user / "articles" / "part-1.jsonl.gz")
    assert (user / "run1" / "rejects" / "rejects.jsonl").is_file()
    assert not list((condor / "incoming").iterdir())
    assert not (user / "run1" / "parts" / "part-00000").exists()  # gathered and cleaned

    pre = next(s for s in run.scripts if s.node == "pipeline" and s.when == "PRE")
    assert pre.exit_code == 0 and "partition.dag runs it next" in pre.output, pre.output
    staging = str(user / "run1" / "parts")  # the partition's own, removed when it finishes
    missing = [p for p in generated_paths(condor)
               if not Path(p).exists() and not p.startswith(f"{staging}/")]
    assert not missing, f"the generated files name paths that do not exist: {missing}"
    pipeline = run.nodes["pipeline"].subdag
    assert pipeline is not None and pipeline.status == "succeeded", pipeline.summary()
    assert [n for n, r in pipeline.nodes.items() if r.status != "done"] == []
    assert len([n for n in pipeline.nodes if n.startswith("shard-")]) == 2
    shard_sandbox = run.starts("shard-00000")[0].sandbox
    assert not (shard_sandbox / "shards").exists()  # only what file transfer brought
    for group in ("index-000", "index-001"):  # one piece per shard (condor.load_jobs)
        sandbox = run.starts(group)[0].sandbox
        assert {p.name for p in sandbox.iterdir()} >= {"manifest.json", "shards", "results",
                                                       "index"}
        assert len(list((sandbox / "shards").iterdir())) == 1
    assert (user / "run1" / "index" / "current.json").is_file()
    assert len(list((user / "run1" / "index" / "pieces").iterdir())) == 2
    log = (condor / "logs" / "validate.log").read_text()
    assert "index piece 1: accepted piece-" in log
    assert "pieces: 0 built, 2 reused" in (condor / "logs" / "index.out").read_text()
    assert "2 done" in (condor / "report.txt").read_text()

    cli("run", "--input", "articles/*.jsonl.gz", "--workdir", "local",
        "--config", "my-pool.yaml", cwd=user)
    cli("index", "--workdir", "local", cwd=user)
    assert_same_embeddings(user / "run1", user / "local")
    query = json.loads(CRANFIELD.joinpath("queries.jsonl").read_text().splitlines()[0])["text"]
    assert search_ids(user / "run1", query) == search_ids(user / "local", query)


def test_a_partition_dag_whose_map_fails_never_writes_the_gpu_dag(demo_path, tmp_path):
    """Every map output the job sends back is damaged: its POST script rejects it, the retry
    fares no better, the map node fails, and neither the merge nor the sub-DAG node's PRE
    script runs, so no GPU DAG is written and the DAG ends failed."""
    user = tmp_path / "user"
    user.mkdir()
    pool_config(user / "my-pool.yaml", **{"condor.retries": 1})
    cli("submit", "--input", str(demo_path), "--workdir", "run1", "--config", "my-pool.yaml",
        "--dry-run", cwd=user)

    def damage(job: JobRun, sandbox: Path) -> None:
        (sandbox / "part-00000" / "keys.npz").write_bytes(b"not keys")

    run = Pool(tmp_path / "pool", after_exit=damage).submit_dag(
        "condor_submit_dag -usedagdir run1/condor/partition.dag", cwd=user)
    assert run.status == "failed" and run.exit_code == 1, run.summary()
    assert run.nodes["map-00000"].status == "failed" and run.nodes["map-00000"].retries == 1
    assert run.nodes["merge"].status == "futile" and run.nodes["pipeline"].status == "futile"
    assert not (user / "run1" / "parts" / "part-00000").exists()  # nothing half-accepted
    assert not [s for s in run.scripts if s.node == "pipeline"]
    assert not (user / "run1" / "condor" / "pipeline.dag").exists()
    assert "rejected" in (user / "run1" / "condor" / "logs" / "validate.log").read_text()


def test_a_pool_partition_in_three_parts_equals_a_local_one_with_one_worker(tmp_path):
    """One JSONL file of articles with duplicates, id clashes and bad rows in every third of
    it, partitioned by partition.dag in three parts (a map job each, cut out by their PRE
    scripts; the merge; a write job each) equals `partition --workers 1`, and one plain pass:
    passages, ids, rejects ledger, counts, shards. The first try of map-00001 and of the merge
    die with half their output written: their POST scripts reject it and the retries finish."""
    from partition_reference import ledger, reference_partition
    from test_partition_parallel import nasty_corpus

    user = tmp_path / "user"
    (user / "nasty").mkdir(parents=True)
    files = nasty_corpus(user / "nasty")
    text = b"".join(Path(f).read_bytes() for f in files if f.endswith(".jsonl"))
    text += gzip.decompress(Path(files[1]).read_bytes())
    (user / "articles.jsonl").write_bytes(text)
    config = pool_config(user / "my-pool.yaml", **{
        "shards.part_bytes": len(text) // 3 + 1, "shards.passages_per_shard": 40,
        "condor.retries": 1})
    cli("submit", "--input", "articles.jsonl", "--workdir", "run1", "--config", "my-pool.yaml",
        "--dry-run", cwd=user)
    dag = user / "run1" / "condor" / "partition.dag"
    # the GPU DAG is not this test's: its node still runs its PRE script, not the sub-DAG
    dag.write_text(re.sub(r"^(SUBDAG EXTERNAL pipeline .*)$", r"\1 NOOP", dag.read_text(),
                          flags=re.M))
    died: set[str] = set()

    def die_half_way(job: JobRun, sandbox: Path) -> None:
        if job.node in ("map-00001", "merge") and job.node not in died:
            died.add(job.node)
            if job.node == "merge":
                (sandbox / "merge" / "part-00002.npz").unlink()
            else:
                (sandbox / "part-00001" / "passages.parquet").write_bytes(b"PAR1")

    run = Pool(tmp_path / "pool", after_exit=die_half_way).submit_dag(
        "condor_submit_dag -usedagdir run1/condor/partition.dag", cwd=user)
    assert run.status == "succeeded", run.summary()
    assert sorted(n for n in run.nodes if n.startswith(("map-", "write-"))) == [
        "map-00000", "map-00001", "map-00002", "write-00000", "write-00001", "write-00002"]
    assert run.nodes["map-00001"].retries == 1 and run.nodes["merge"].retries == 1
    map_sandbox = run.starts("map-00002")[0].sandbox
    assert (map_sandbox / "part-00002.jsonl").stat().st_size < len(text) / 2  # its third only
    cli("partition", "--input", "articles.jsonl", "--workdir", "local", "--config",
        str(config), "--workers", "1", cwd=user)

    def partitioned(workdir: Path) -> dict:
        manifest = json.loads((workdir / "manifest.json").read_text())
        return {"shards": [(s["shard"], s["rows"]) for s in manifest["shards"]],
                "counts": {k: v for k, v in manifest["partition"].items() if k != "seconds"},
                "rejects": ledger(workdir / "rejects" / "rejects.jsonl"),
                "passages": [row for s in manifest["shards"]
                             for row in pq.read_table(workdir / s["file"]).drop_columns(
                                 ["input_ids"]).to_pylist()]}

    pool_run, local_run = partitioned(user / "run1"), partitioned(user / "local")
    assert pool_run == local_run
    with contextlib.chdir(user):
        reference = reference_partition(["articles.jsonl"], yaml_config(config))
    assert local_run["rejects"] == reference["rejects"]
    assert [{k: v for k, v in p.items()} for p in local_run["passages"]] == reference["passages"]
    assert pool_run["counts"]["duplicate_articles"] and pool_run["counts"]["rejected"]
    assert (user / "run1" / "condor" / "pipeline.dag").is_file()


def yaml_config(path: Path):
    from inference.config import config_from_dict

    return config_from_dict(yaml.safe_load(path.read_text()))


def test_checkpointed_and_rejected_shards_end_with_the_local_result(demo_local, tmp_path):
    """An absolute workdir, submitted as `infer-corpus submit` does (condor_submit_dag from the
    DAG's directory): shard 0 checkpoints mid-shard and resumes in a fresh sandbox; shard 1's
    first result arrives damaged, its POST script rejects it and the retry brings a good one;
    so does the first index piece of shard 0."""
    local, config = demo_local
    workdir = (tmp_path / "work" / "run").resolve()
    cli("partition", "--demo", "--workdir", str(workdir), "--config", str(config))
    cli("submit", "--workdir", str(workdir), "--config", str(config), "--dry-run")
    condor = workdir / "condor"
    # checkpoint after every part
    checkpoint_at_once(condor / "run-shard.sh", "--checkpoint-after 0.001 --part-rows 36")

    pool = Pool(tmp_path / "pool", reschedule_after_checkpoint=True)  # a fresh sandbox
    seen: dict[str, str] = {}  # what condor_q and `infer-corpus status` show at a job's end

    def damage(job: JobRun, sandbox: Path) -> None:
        if job.node == "shard-00001" and job.retry == 0:
            result = sandbox / "result-00001.parquet"
            result.write_bytes(result.read_bytes()[: result.stat().st_size // 2])
        if job.node == "index-000" and job.retry == 0:  # a piece that came back half sent
            for record in (sandbox / "index" / "pieces").glob("*/piece.json"):
                record.unlink()
        if job.node == "shard-00000" and job.exit_code == 0:
            seen["condor_q"] = subprocess.run(
                [str(pool.root / "bin" / "condor_q"), "-af", "DAGNodeName",
                 "ChirpShardPassagesDone", "ChirpShardPassagesTotal"],
                capture_output=True, text=True, check=True).stdout
            seen["status"] = cli("status", "--workdir", str(workdir))

    pool.after_exit = damage
    with pytest.MonkeyPatch.context() as env:  # condor_q on the PATH, as on an access point
        env.setenv("PATH", f"{pool.root / 'bin'}:{os.environ.get('PATH', '')}")
        run = pool.submit_dag("condor_submit_dag pipeline.dag", cwd=condor)
    assert run.status == "succeeded", run.summary()
    # chirp: the job published its progress in its ad, which condor_q and status read
    assert "shard-00000 40 40" in seen["condor_q"]
    assert re.search(r"shard-00000 \(\d+\.0\) on slot1_1@\S+: 40 of 40 passages, [\d,]+ "
                     r"passages/s", seen["status"]), seen["status"]
    assert "job: host " in (condor / "logs" / "shard-0.err").read_text()
    assert [j.exit_code for j in run.starts("shard-00000")] == [85, 0]  # 40 rows: 36 + 4
    restarted = run.starts("shard-00000")[1].sandbox
    assert (restarted / "parts").is_dir() and (restarted / "shard-00000.parquet").is_file()
    assert run.nodes["shard-00001"].retries == 1
    assert [j.exit_code for j in run.starts("shard-00001")] == [0, 0]
    log = (condor / "logs" / "validate.log").read_text()
    assert "shard 1: rejected: unreadable result" in log and "shard 1: accepted 35" in log
    assert run.nodes["index-000"].retries == 1
    assert "index piece 0: rejected: the job sent back no piece of shards 0-0" in log
    assert "index piece 0: accepted piece-" in log
    assert (condor / "incoming" / "result-00001.parquet.rejected").is_file()
    assert_same_embeddings(workdir, local)


def test_a_job_whose_input_is_damaged_is_not_retried_and_fails_the_dag(demo_local, tmp_path):
    """Exit 2 (bad input) reaches the POST script, RETRY ... UNLESS-EXIT 2 stops there, and the
    FINAL report does not turn the failed DAG into a successful one."""
    _, config = demo_local
    workdir = tmp_path / "run"
    cli("partition", "--demo", "--workdir", str(workdir), "--config", str(config),
        "--set", "shards.passages_per_shard=100")
    (workdir / "shards" / "shard-00000.parquet").write_bytes(b"not parquet")
    cli("submit", "--workdir", str(workdir), "--config", str(config),
        "--set", "shards.passages_per_shard=100", "--dry-run")
    condor = workdir / "condor"
    run = Pool(tmp_path / "pool").submit_dag("condor_submit_dag pipeline.dag", cwd=condor)
    assert run.holds == [], run.summary()
    assert run.status == "failed" and run.exit_code == 1, run.summary()
    shard = run.nodes["shard-00000"]
    assert shard.status == "failed" and shard.job_return == 2 and shard.retries == 0
    assert run.nodes["index"].status == "futile" and run.nodes["report"].status == "failed"
    assert "shard 0: job exited with 2" in (condor / "logs" / "validate.log").read_text()
    assert (condor / "report.txt").read_text()  # the report is still written


def test_a_job_runs_python_from_a_venv_pack_tarball_and_reads_its_shard_from_osdf(
        demo_local, tmp_path):
    """condor.venv_tarball: the job script unpacks a venv-pack archive in the sandbox and runs
    its python. The packed venv is a small one whose .pth file adds this checkout's environment
    (torch and the rest are gigabytes); it is relocated and run as on an execute node. The shard
    comes through an osdf:// URL, from the folder `submit` staged it in."""
    _, config = demo_local
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next(venv.glob("lib/python*/site-packages"))
    deps = next(Path(sys.prefix).glob("lib/python*/site-packages"))
    (site / "infer_corpus_deps.pth").write_text(f"import site; site.addsitedir({str(deps)!r})\n")
    tarball = tmp_path / "infer-corpus-env.tar.gz"
    subprocess.run([sys.executable, "-m", "venv_pack", "--prefix", str(venv),
                    "--output", str(tarball), "--quiet"], check=True)
    workdir = tmp_path / "run"
    origin, url = tmp_path / "origin", "osdf:///ospool/ap40/data/alice/run"
    options = ["--set", "shards.passages_per_shard=100", "--set", "condor.python=null",
               "--set", f"condor.venv_tarball={tarball}", "--set", f"condor.shards_url={url}",
               "--set", f"condor.stage_dir={origin}"]
    cli("partition", "--demo", "--workdir", str(workdir), "--config", str(config), *options)
    cli("submit", "--workdir", str(workdir), "--config", str(config), *options, "--dry-run")
    condor = workdir / "condor"
    assert "PYTHON=env/bin/python" in (condor / "run-shard.sh").read_text()
    run = Pool(tmp_path / "pool", plugins={url: origin}).submit_dag(
        "condor_submit_dag pipeline.dag", cwd=condor)
    assert run.status == "succeeded", run.summary()
    sandbox = run.starts("shard-00000")[0].sandbox
    assert [p.name for p in sandbox.glob("shard-*.parquet")] == [p.name for p in origin.iterdir()]
    assert (sandbox / tarball.name).is_file() and (sandbox / "env" / "bin" / "python").exists()
    assert (sandbox / "env" / "pyvenv.cfg").is_file()
    assert (workdir / "results" / "shard-00000.parquet").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["stream", "cache"])
def test_shard_jobs_read_their_shards_through_a_federation(demo_local, tmp_path, mode):
    """condor.data_source stream / cache: the shards staged behind a local Pelican federation's
    namespace, the jobs read them themselves (none in transfer_input_files), in sandboxes that
    never hold a streamed shard; shard 0 checkpoints after its first part and restarts in a
    fresh sandbox, reading only its unfinished part's row groups. Same embeddings as the local
    run."""
    from pelican_federation import Federation

    local, config = demo_local
    origin = tmp_path / "origin"
    with Federation(origin, caches=1) as fed:
        options = ["--set", f"condor.shards_url={fed.url('run')}", "--set",
                   f"condor.stage_dir={origin / 'run'}", "--set", f"condor.data_source={mode}"]
        workdir = tmp_path / "run"
        cli("partition", "--demo", "--workdir", str(workdir), "--config", str(config), *options)
        cli("submit", "--workdir", str(workdir), "--config", str(config), *options, "--dry-run")
        condor = workdir / "condor"
        shard_sub = condor / "shard.sub"
        assert "shard_input" not in shard_sub.read_text().split("transfer_input_files")[1] \
            .splitlines()[0]
        # the jobs trust the federation's test CA, as a real pool's trust the OSDF's
        shard_sub.write_text(shard_sub.read_text().replace(
            "queue", f'environment = "SSL_CERT_FILE={fed.ca_path}"\nqueue'))
        checkpoint_at_once(condor / "run-shard.sh", "--checkpoint-after 0.001 --part-rows 36")
        run = Pool(tmp_path / "pool", reschedule_after_checkpoint=True).submit_dag(
            "condor_submit_dag pipeline.dag", cwd=condor)
        assert run.status == "succeeded", run.summary()
        names = sorted(p.name for p in (origin / "run").iterdir())
        for node in ("shard-00000", "shard-00001"):
            for start in run.starts(node):
                held = sorted(p.name for p in start.sandbox.glob("shard-*.parquet"))
                assert held == ([] if mode == "stream" else [n for n in names
                                                             if n.startswith(node)]), held
        assert [j.exit_code for j in run.starts("shard-00000")] == [85, 0]
        gets = {name: fed.log.gets_for(f"run/{name}") for name in names}
        if mode == "cache":  # one whole read per job start: the rescheduled start reads again
            assert {n: len(g) for n, g in gets.items()} == {names[0]: 2, names[1]: 1}
    assert_same_embeddings(workdir, local)


def sweep_spec(path: Path, **changes: object) -> Path:
    spec = yaml.safe_load((ROOT / "configs" / "sweep-demo.yaml").read_text())
    spec["name"] = path.stem
    spec["base"]["epochs"] = 4
    spec["condor"].update(python=sys.executable, wave_size=1, checkpoint_every=2)
    for key, value in changes.items():
        section, name = key.split(".")
        spec[section][name] = value
    path.write_text(yaml.safe_dump(spec))
    return path


def train(*args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "submit.train.cli", *args], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("changes, status, evaluated", [
    ({"early_stop.target": 10.0}, "succeeded", 3),  # val_loss: reached after wave 0
    ({"early_stop.max_diverged": 1, "params.lr": [1e38], "base.optimizer": "sgd"}, "failed", 4),
])
def test_sweep_dag_stops_after_the_first_wave(demo_local, tmp_path, changes, status, evaluated):
    local, _ = demo_local
    spec = sweep_spec(tmp_path / f"sweep-{evaluated}.yaml", **changes)
    summary = train("sweep", str(spec), "--workdir", str(local), "--executor", "condor",
                    "--dry-run", "--json")
    dag = Path(summary["dag"])
    run = Pool(tmp_path / "pool").submit_dag("condor_submit_dag -usedagdir " + str(dag),
                                             cwd=tmp_path)
    assert run.status == status, run.summary()
    assert run.nodes["WAVE0"].value == evaluated
    assert all(run.nodes[n].status != "done" for n in run.nodes if n not in ("WAVE0", "COLLECT"))
    assert run.nodes["COLLECT"].job_return == 0  # the trials are ranked either way
    trials = dag.parent.parent / "trials"
    starts = [j.exit_code for j in run.starts("WAVE0") if j.proc == 0]
    metrics = json.loads((trials / "t000" / "metrics.json").read_text())
    if evaluated == 3:  # 4 epochs, a checkpoint every 2: one restart from checkpoint.pt
        assert starts == [85, 0] and metrics["status"] == "completed"
    else:  # a non-finite loss ends the trial at once
        assert starts == [0] and metrics["status"] == "diverged"
    assert (dag.parent.parent / "results.json").is_file()


def test_a_sweep_dag_whose_trial_job_fails_fails(demo_local, tmp_path):
    """A trial job that fails (here its params.json was damaged after the DAG was written)
    fails its wave's node through the POST script, which names the trial; the later waves do
    not run, the FINAL node still ranks the trials, and the DAG reports failure."""
    local, _ = demo_local
    spec = sweep_spec(tmp_path / "sweep-fails.yaml")
    summary = train("sweep", str(spec), "--workdir", str(local), "--executor", "condor",
                    "--dry-run", "--json")
    dag = Path(summary["dag"])
    trials = dag.parent.parent / "trials"
    (trials / "t000" / "params.json").write_text("{not json")
    run = Pool(tmp_path / "pool").submit_dag("condor_submit_dag -usedagdir " + str(dag),
                                             cwd=tmp_path)
    assert run.status == "failed", run.summary()
    assert [j.exit_code for j in run.starts("WAVE0")] == [2]
    post = next(s for s in run.scripts if s.node == "WAVE0" and s.when == "POST")
    assert post.exit_code == 1 and "trial job(s) t000 failed" in post.output
    assert all(run.nodes[n].status != "done" for n in run.nodes if n not in ("WAVE0", "COLLECT"))
    assert run.nodes["COLLECT"].job_return == 0  # the trials are ranked all the same
    assert (dag.parent.parent / "results.json").is_file()


def test_multinode_dag_rank0_publishes_and_workers_join(demo_local, tmp_path):
    """The PROVISIONER publishes its rendezvous through chirp, the workers' PRE script reads it
    with condor_q (the only stand-in) and writes workers.sub, and the nodes train one head."""
    local, _ = demo_local
    spec = yaml.safe_load((ROOT / "configs" / "multinode-demo.yaml").read_text())
    spec["name"] = "replay-multinode"
    spec["params"]["epochs"] = 2
    spec["condor"]["python"] = sys.executable
    spec_path = tmp_path / "multinode.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    summary = train("multinode", str(spec_path), "--workdir", str(local), "--nodes", "2",
                    "--dry-run", "--json")
    dag = Path(summary["dag"])
    run = Pool(tmp_path / "pool", timeout=300).submit_dag(
        "condor_submit_dag -usedagdir " + str(dag), cwd=tmp_path)
    assert run.status == "succeeded", run.summary()
    pre = next(s for s in run.scripts if s.node == "WORKERS" and s.when == "PRE")
    assert pre.exit_code == 0 and "workers join" in pre.output
    workers = (dag.parent / "workers.sub").read_text()
    assert "rank0-not-ready" not in workers and "TARGET.Machine =!=" in workers
    run_dir = dag.parent.parent
    assert (run_dir / "model.pt").is_file()
    outputs = [p.read_text() for p in (run_dir / "condor").glob("*.out")]
    assert sum("rank 0 of 2 on " in text for text in outputs) == 1


def test_an_executable_busy_for_a_moment_does_not_hold_the_job(tmp_path):
    """ETXTBSY: the script is still open for writing in another process (one forked while it
    was copied into the sandbox); the harness waits it out instead of holding the job. An
    executable that cannot run at all still holds it at once."""
    from condor_replay import Held, start_job

    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\nexit 7\n")
    script.chmod(0o755)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\n"
                               f"f = open({str(script)!r}, 'ab'); print(flush=True); "
                               "time.sleep(0.5)"], stdout=subprocess.PIPE)
    holder.stdout.readline()  # the file is open for writing now
    with pytest.raises(OSError, match="Text file busy"):
        subprocess.run([str(script)])
    assert start_job([str(script)], cwd=tmp_path).wait(timeout=30) == 7
    holder.wait(timeout=30)
    started = time.monotonic()
    with pytest.raises(Held, match="Failed to execute .*No such file"):
        start_job([str(tmp_path / "missing.sh")], cwd=tmp_path)
    assert time.monotonic() - started < 1


def test_a_failed_proc_removes_the_rest_of_its_cluster(tmp_path):
    """As DAGMan does by default: once one proc of a node's cluster exits non-zero, the
    node has failed and the cluster's other procs are removed, whatever they were doing; the
    node's $RETURN is that proc's exit code."""
    (tmp_path / "job.py").write_text(
        "import sys, time\nif sys.argv[1] == '0':\n    sys.exit(3)\ntime.sleep(60)\n")
    (tmp_path / "wave.sub").write_text(
        f"executable = {sys.executable}\narguments = job.py $(Process)\n"
        "transfer_input_files = job.py\nlog = wave.log\nqueue 3\n")
    (tmp_path / "wave.dag").write_text("JOB wave wave.sub\n")
    started = time.monotonic()
    run = Pool(tmp_path / "pool").submit_dag("condor_submit_dag wave.dag", cwd=tmp_path)
    assert time.monotonic() - started < 50
    assert run.status == "failed" and run.nodes["wave"].job_return == 3, run.summary()
    ends = {job.proc: (job.exit_code, job.removed) for job in run.starts("wave")}
    assert ends == {0: (3, False), 1: (None, True), 2: (None, True)}
