"""The two halves of a shard node: the job (embed a shard in parts, checkpoint, resume) and its
POST script (a result enters results/ only when it checks out)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import run_cli

from inference.schema import result_schema
from inference.workdir import Workdir
from submit.job import Progress, run_job
from submit.pipeline import incoming_path
from submit.validate import accept


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Workdir:
    path = tmp_path_factory.mktemp("job") / "run"
    run_cli("partition", "--demo", "--workdir", str(path),
            "--set", "shards.passages_per_shard=30", "--set", "predictions.kind=none")
    return Workdir(path)


def fake_result(workdir: Workdir, shard: int, *, rows: int | None = None, key: str | None = None,
                nan: bool = False, shuffle: bool = False) -> Path:
    """A result file as a shard job would send it back (random unit embeddings)."""
    ids = pq.read_table(workdir.shard_path(shard), columns=["passage_id"]).column("passage_id")
    ids = ids.combine_chunks()[: rows if rows is not None else len(ids)]
    if shuffle:
        ids = pa.array(list(reversed(ids.to_pylist())))
    vectors = np.random.default_rng(shard).normal(size=(len(ids), 8)).astype(np.float16)
    if nan:
        vectors[0, 0] = np.nan
    schema = result_schema(8, "float16")
    schema = schema.with_metadata({**schema.metadata, b"result_key": (
        key or workdir.manifest().result_key()).encode()})
    table = pa.table([ids, pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), 8),
                      pa.array([None] * len(ids), pa.string()),
                      pa.array(np.zeros(len(ids)), pa.float32())], schema=schema)
    path = incoming_path(workdir, shard)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


@pytest.mark.parametrize("damage, reason", [
    ({"rows": 5}, "rows, the manifest says"),
    ({"key": "0123456789abcdef"}, "result key 0123456789abcdef does not match"),
    ({"nan": True}, "NaN"),
    ({"shuffle": True}, "passage ids differ"),
])
def test_a_bad_result_is_rejected_for_a_retry(workdir, damage, reason):
    path = fake_result(workdir, 1, **damage)
    assert accept(workdir, 1, job_exit=0) == 1
    assert not path.exists() and path.with_name(path.name + ".rejected").is_file()
    assert not workdir.result_path(1).exists()
    log = (workdir.root / "condor" / "logs" / "validate.log").read_text().splitlines()[-1]
    assert "shard 1: rejected" in log and reason in log


def test_a_missing_or_unreadable_result_is_rejected(workdir):
    assert accept(workdir, 2, job_exit=0) == 1
    incoming_path(workdir, 2).write_bytes(b"not parquet")
    assert accept(workdir, 2, job_exit=0) == 1


def test_failed_jobs_pass_their_exit_code_on(workdir):
    assert accept(workdir, 0, job_exit=2) == 2  # RETRY ... UNLESS-EXIT 2: no retry
    assert accept(workdir, 0, job_exit=1) == 1
    assert accept(workdir, 0, job_exit=-1001) == 1  # DAGMan's codes for a job that never ran


def test_a_sound_result_is_moved_into_results(workdir):
    fake_result(workdir, 0)
    assert accept(workdir, 0, job_exit=0) == 0
    assert not incoming_path(workdir, 0).exists()
    manifest = workdir.manifest()
    assert workdir.result_is_current(manifest.shard(0), manifest.result_key())
    # a resubmission now leaves the done shard out of the DAG
    proc = run_cli("submit", "--workdir", str(workdir.root), "--dry-run", "--json",
                   "--set", "shards.passages_per_shard=30", "--set", "predictions.kind=none",
                   "--set", "condor.container_image=docker://example/ic:1")
    assert '"shard_jobs": 2, "shards_done": 1' in proc.stdout
    workdir.result_path(0).unlink()


def test_post_script_command_line(workdir):
    """The exact command the DAG's SCRIPT POST line runs."""
    proc = subprocess.run([sys.executable, "-m", "submit.validate", "--workdir",
                           str(workdir.root), "--shard", "2", "--job-exit", "2"],
                          capture_output=True, text=True, cwd=workdir.root)
    assert proc.returncode == 2
    proc = subprocess.run([sys.executable, "-m", "submit.validate", "--workdir",
                           str(workdir.root / "nowhere"), "--shard", "0", "--job-exit", "0"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_job_script_unpacks_the_venv_and_runs_the_job(workdir, tmp_path):
    """run-shard.sh as HTCondor starts it, with a packed venv whose python records its call."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text(
        '#!/bin/sh\necho "$@" > called.txt\n'
        'echo "$HOME $TMPDIR $XDG_CACHE_HOME $HF_HOME $TORCH_HOME" > env.txt\n')
    (venv / "bin" / "python").chmod(0o755)
    tarball = tmp_path / "env.tar.gz"
    subprocess.run(["tar", "-czf", str(tarball), "-C", str(venv), "."], check=True)
    run_cli("submit", "--workdir", str(workdir.root), "--dry-run",
            "--set", "shards.passages_per_shard=30", "--set", "predictions.kind=none",
            "--set", f"condor.venv_tarball={tarball}")
    sandbox = tmp_path / "sandbox"  # what file transfer puts there
    sandbox.mkdir()
    shutil.copy(tarball, sandbox)
    proc = subprocess.run([str(workdir.root / "condor" / "run-shard.sh"), "2",
                           "shard-00002.parquet", "result-00002.parquet"],
                          cwd=sandbox, capture_output=True, text=True,
                          env={"_CONDOR_SCRATCH_DIR": str(sandbox)})  # what the starter sets
    assert proc.returncode == 0, proc.stderr
    # caches and temporary files stay in the scratch directory; host and GPUs are logged
    assert (sandbox / "env.txt").read_text().split() == [
        str(sandbox), f"{sandbox}/.tmp", f"{sandbox}/.cache", f"{sandbox}/.cache/huggingface",
        f"{sandbox}/.cache/torch"]
    assert (sandbox / ".tmp").is_dir() and (sandbox / ".cache").is_dir()
    assert "job: host " in proc.stderr and "nvidia-smi" in proc.stderr
    assert (sandbox / "called.txt").read_text().split() == [
        "-m", "submit.job", "--shard", "2", "--shard-file", "shard-00002.parquet",
        "--result-file", "result-00002.parquet", "--checkpoint-after", "1800",
        "--checkpoint-exit-code", "85"]


def test_progress_without_a_reachable_chirp_server_never_fails_the_job(tmp_path, monkeypatch,
                                                                      capsys):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = tmp_path / ".chirp.config"
    config.write_text(f"127.0.0.1 {port} cookie\n")
    monkeypatch.setenv("_CONDOR_CHIRP_CONFIG", str(config))
    progress = Progress(3, 100, interval=0)
    assert progress.ad.chirp is None and "no chirp" in capsys.readouterr().err
    progress.part_started()
    progress.update(40)
    progress.part_done(0, 2, 50, skipped=False)
    assert progress.before == 50 and progress.computed == 50
    assert "shard 3: part 1 of 2: 50 passages in" in capsys.readouterr().err
    monkeypatch.delenv("_CONDOR_CHIRP_CONFIG")
    assert Progress(3, 100).ad.chirp is None  # no chirp proxy: nothing to try


def run_to_the_end(workdir: Workdir, shard: int, sandbox: Path, monkeypatch,
                   **options) -> list[int]:
    """The shard job in a sandbox of its inputs, restarted there after each checkpoint exit
    (as HTCondor does in place); its exit codes."""
    sandbox.mkdir()
    for src in (workdir.shard_path(shard), workdir.manifest_path):
        shutil.copy(src, sandbox)
    monkeypatch.chdir(sandbox)
    codes: list[int] = []
    while not codes or codes[-1] == 85:
        codes.append(run_job(shard, Path(workdir.shard_path(shard).name),
                             Path("result.parquet"), manifest_file=Path("manifest.json"),
                             **options))
        if codes[-1] == 85:  # only finished parts' results are kept for the restart
            assert sorted(p.name for p in (sandbox / "parts").iterdir()) == [
                "logs", "manifest.json", "rejects", "results"]
    return codes


@pytest.mark.slow
def test_job_checkpoints_resumes_and_matches_one_pass(workdir, tmp_path, monkeypatch):
    """The job in one pass against the job in parts, exiting with the checkpoint code after
    every part and restarted (as HTCondor does) from the parts/ it saved."""
    shard = 2  # 15 passages
    results = {}
    for name, part_rows, checkpoint_after in (("whole", 1000, 0), ("parts", 8, 1e-6)):
        sandbox = tmp_path / name
        codes = run_to_the_end(workdir, shard, sandbox, monkeypatch, part_rows=part_rows,
                               checkpoint_after=checkpoint_after)
        assert codes == ([0] if name == "whole" else [85, 0])
        results[name] = pq.read_table(sandbox / "result.parquet")

    one, split = results["whole"], results["parts"]
    assert one.schema.metadata == split.schema.metadata  # same result key, model, version
    assert one.column("passage_id").equals(split.column("passage_id"))
    a = np.array(one.column("embedding").to_pylist(), dtype=np.float32)
    b = np.array(split.column("embedding").to_pylist(), dtype=np.float32)
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    # int8 on a CPU scales some activations per batch, so parts and whole agree to about
    # 0.997; a row out of place would be far lower
    assert cosine.min() > 0.99

    incoming_path(workdir, shard).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(tmp_path / "parts" / "result.parquet", incoming_path(workdir, shard))
    assert accept(workdir, shard, job_exit=0) == 0  # what the POST script then decides
    workdir.result_path(shard).unlink()


def test_damaged_shard_is_bad_input(workdir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(workdir.manifest_path, tmp_path)
    (tmp_path / "shard.parquet").write_bytes(b"garbage")
    proc = subprocess.run([sys.executable, "-m", "submit.job", "--shard", "1", "--shard-file",
                           "shard.parquet", "--result-file", "r.parquet"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and "bad input" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_job_checkpoint_after_auto(workdir, tmp_path, monkeypatch, capsys):
    """auto: the interval follows from the setup this start measured and the pool's mean time
    between evictions: evictions every millisecond checkpoint at every part, every 30 years
    (or never) not at all."""
    shard = 2  # 15 passages, 2 parts of 8
    for name, mean, expected in (("often", 1e-3, [85, 0]), ("rarely", 1e9, [0]),
                                 ("never", float("inf"), [0])):
        codes = run_to_the_end(workdir, shard, tmp_path / name, monkeypatch, part_rows=8,
                               checkpoint_after="auto", mean_time_between_evictions=mean)
        assert codes == expected, name
        said = "never" if name == "never" else "at the first part after"
        assert f"checkpoint_minutes auto: {said}" in capsys.readouterr().err


@pytest.mark.slow
def test_a_shard_streamed_or_cached_through_a_federation_gives_the_same_result(workdir,
                                                                              tmp_path):
    """The job as the pool runs it (its own process, a sandbox with the manifest only),
    reading the shard from a local Pelican federation: row group by row group (stream) or
    fetched whole (cache); the result equals a transferred shard's. A missing object is a
    one-line failure worth a retry (exit 1)."""
    from pelican_federation import Federation

    shard = 2
    name = workdir.shard_path(shard).name
    origin = tmp_path / "origin"
    origin.mkdir()
    shutil.copy(workdir.shard_path(shard), origin / name)
    results = {}
    with Federation(origin) as fed:
        for mode in ("transfer", "stream", "cache", "missing"):
            sandbox = tmp_path / mode
            sandbox.mkdir()
            shutil.copy(workdir.manifest_path, sandbox)
            source = name if mode == "transfer" else fed.url(
                "nothing.parquet" if mode == "missing" else name)
            if mode == "transfer":
                shutil.copy(workdir.shard_path(shard), sandbox)
            proc = subprocess.run(
                [sys.executable, "-m", "submit.job", "--shard", str(shard), "--shard-file",
                 source, "--result-file", "result.parquet", "--data-source",
                 "stream" if mode == "missing" else mode],
                cwd=sandbox, capture_output=True, text=True, timeout=300,
                env={**os.environ, "SSL_CERT_FILE": str(fed.ca_path),
                     "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
            if mode == "missing":
                assert proc.returncode == 1, proc.stderr
                assert "nothing.parquet: no such object" in proc.stderr
                assert "Traceback" not in proc.stderr
                continue
            assert proc.returncode == 0, proc.stderr
            results[mode] = (sandbox / "result.parquet").read_bytes()
            scratch = {p.name for p in sandbox.iterdir()}
            assert (name in scratch) == (mode != "stream"), scratch  # stream: no shard copy
        assert None not in fed.log.ranges_for(name)  # ranged reads, both modes
    assert results["stream"] == results["transfer"]  # byte for byte
    assert results["cache"] == results["transfer"]


@pytest.mark.slow
def test_a_streamed_shard_restarted_reads_only_what_is_left(workdir, tmp_path):
    """A streamed shard job that checkpoints after its first part, restarted in place (as
    HTCondor does), reads only the row groups from its first unfinished part on; a body cut
    short in that read is read again from its row group; the result equals a transferred
    shard's, byte for byte."""
    from pelican_federation import Federation

    shard, part_rows = 2, 8  # 15 passages in 8 row groups of 2: part 1 starts at group 4
    name = workdir.shard_path(shard).name
    origin = tmp_path / "origin"
    origin.mkdir()
    pq.write_table(pq.read_table(workdir.shard_path(shard)), origin / name, row_group_size=2)
    size = (origin / name).stat().st_size
    group4 = min(column.dictionary_page_offset if column.has_dictionary_page
                 else column.data_page_offset
                 for group in [pq.ParquetFile(origin / name).metadata.row_group(4)]
                 for column in map(group.column, range(group.num_columns)))

    def job(sandbox: Path, source: str, mode: str, *options: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "submit.job", "--shard", str(shard), "--shard-file", source,
             "--result-file", "result.parquet", "--data-source", mode,
             "--part-rows", str(part_rows), *options],
            cwd=sandbox, capture_output=True, text=True, timeout=300,
            env={**os.environ, "SSL_CERT_FILE": str(fed.ca_path),
                 "PYTHONPATH": str(Path(__file__).resolve().parents[2])})

    with Federation(origin) as fed:
        sandboxes = {}
        for mode in ("transfer", "stream"):
            sandboxes[mode] = sandbox = tmp_path / mode
            sandbox.mkdir()
            shutil.copy(workdir.manifest_path, sandbox)
        shutil.copy(origin / name, sandboxes["transfer"])
        assert job(sandboxes["transfer"], name, "transfer").returncode == 0

        first = job(sandboxes["stream"], fed.url(name), "stream", "--checkpoint-after", "1e-6")
        assert first.returncode == 85, first.stderr
        fed.log.clear()
        fed.faults.cut_body(100, path=name)  # the restart's first read: its footer
        second = job(sandboxes["stream"], fed.url(name), "stream")
        assert second.returncode == 0, second.stderr
        assert "part 1 of 2: 8 passages, done before a restart" in second.stderr
        ranges = fed.log.ranges_for(name)
        assert None not in ranges
        footer = [r for r in ranges if r[1] == size - 1]
        groups = [r for r in ranges if r[1] != size - 1]
        assert len(footer) == 2  # cut short, then read again; once for the whole restart
        assert groups and min(first for first, _ in groups) >= group4, (group4, ranges)
    assert (sandboxes["stream"] / "result.parquet").read_bytes() == \
        (sandboxes["transfer"] / "result.parquet").read_bytes()
    assert name not in {p.name for p in sandboxes["stream"].rglob("*")}  # no shard on scratch
