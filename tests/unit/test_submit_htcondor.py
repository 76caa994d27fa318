"""The generic HTCondor layer, checked with the real htcondor2/classad2 bindings (no pool)."""

from __future__ import annotations

import stat
from pathlib import Path

import classad2
import htcondor2
import pytest

from submit import pipeline
from submit.chirp import delayed_update_allowed
from submit.config import CondorResourcesConfig
from submit.generation import dag as generation_dag
from submit.htcondor import (
    CondorError,
    Dag,
    Node,
    Script,
    condor_arguments,
    cuda_version_code,
    dag_text,
    gpu_commands,
    job_match_ad,
    lint_dag,
    quantity,
    read_node_status,
    submit_dag,
    write_dag,
    write_submit,
)

# as condor_gpu_discovery advertises GPUs; MaxSupportedVersion: the CUDA version the driver
# supports (major * 1000 + minor * 10): driver 580 supports 13.0, driver 550 12.4
H100 = """[ Cpus = 16; Memory = 131072; Disk = 500000000; GPUs = 1;
  AvailableGPUs = { GPUs_GPU_4a5b }; Requirements = true;
  GPUs_GPU_4a5b = [ Id = "GPU-4a5b"; DeviceName = "NVIDIA H100 80GB HBM3";
                    Capability = 9.0; GlobalMemoryMb = 81559; DriverVersion = 13.0;
                    MaxSupportedVersion = 13000 ] ]"""
H100_CUDA_12 = H100.replace("DriverVersion = 13.0", "DriverVersion = 12.4").replace(
    "MaxSupportedVersion = 13000", "MaxSupportedVersion = 12040")
T4 = """[ Cpus = 16; Memory = 131072; Disk = 500000000; GPUs = 1;
  AvailableGPUs = { GPUs_GPU_77aa }; Requirements = true;
  GPUs_GPU_77aa = [ Id = "GPU-77aa"; DeviceName = "Tesla T4";
                    Capability = 7.5; GlobalMemoryMb = 15095; DriverVersion = 13.0;
                    MaxSupportedVersion = 13000 ] ]"""


def stub_dagman(tmp: Path) -> str:
    path = tmp / "condor_dagman"
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def test_submit_file_with_item_data_round_trips(tmp_path, monkeypatch):
    items = [{"lr": "0.1", "seed": "1"}, {"lr": "0.01", "seed": "2"}, {"lr": "0.001", "seed": "3"}]
    write_submit(tmp_path / "trials.sub", {"executable": "/bin/echo",
                                           "arguments": "$(lr) $(seed)",
                                           "output": "trial-$(seed).out"}, itemdata=items)
    text = (tmp_path / "trials.sub").read_text()
    assert "queue lr,seed from trials.items" in text  # never an inline list that str() drops
    monkeypatch.chdir(tmp_path)
    parsed = htcondor2.Submit(text)
    assert list(parsed.itemdata()) == items
    for item in items:  # what each job of the cluster gets
        job = htcondor2.Submit(text)
        for key, value in item.items():
            job[key] = value
        assert job.expand("arguments") == f"{item['lr']} {item['seed']}"
        assert job.expand("output") == f"trial-{item['seed']}.out"


def test_a_value_that_refers_to_its_own_command_is_refused(tmp_path):
    """htcondor2 expands `request_disk = $(request_disk)` into the command's default (empty)
    as it takes it: the file would quietly ask for something else than was meant."""
    with pytest.raises(ValueError, match="request_disk would not be written as given"):
        write_submit(tmp_path / "x.sub", {"executable": "/bin/true",
                                          "request_disk": "$(request_disk)"})
    assert not (tmp_path / "x.sub").exists()
    write_submit(tmp_path / "y.sub", {"executable": "/bin/true", "request_disk": "$(disk)"})
    assert "request_disk = $(disk)\n" in (tmp_path / "y.sub").read_text()


def test_item_values_with_commas_are_refused_but_in_the_last_column(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="commas"):
        write_submit(tmp_path / "x.sub", {"executable": "/bin/true"},
                     itemdata=[{"a": "1,2", "b": "3"}])
    items = [{"a": "1", "b": "x.pt,y.json,"}, {"a": "2", "b": ""}]  # the last takes the rest
    write_submit(tmp_path / "y.sub", {"executable": "/bin/true"}, itemdata=items)
    monkeypatch.chdir(tmp_path)
    assert list(htcondor2.Submit((tmp_path / "y.sub").read_text()).itemdata()) == items


def test_arguments_survive_spaces_and_quotes():
    text = condor_arguments(["-m", "tool", "it's a path", 'say "hi"', ""])
    description = htcondor2.Submit({"executable": "/bin/echo", "arguments": text})
    assert description["arguments"] == text
    assert text == "\"-m tool 'it''s a path' 'say \"\"hi\"\"' ''\""


def _dag(tmp: Path) -> Path:
    write_submit(tmp / "work.sub", {"executable": "/bin/true"})
    check = tmp / "check.sh"
    check.write_text("#!/bin/sh\nexit 0\n")
    check.chmod(0o755)
    dag = Dag(
        nodes=[Node("prepare", "work.sub"),
               *[Node(f"w{i}", "work.sub", vars={"n": str(i), "label": 'a "b"'},
                      category="gpu", retry=3, retry_unless_exit=2,
                      post=Script(str(check), ["$RETURN", str(i)])) for i in range(3)],
               Node("collect", "work.sub", abort_dag_on=(3, 1)),
               Node("report", "work.sub", kind="FINAL")],
        edges=[(["prepare"], ["w0", "w1", "w2"]), (["w0", "w1", "w2"], ["collect"])],
        max_jobs={"gpu": 2}, node_status_file="run.status")
    return write_dag(tmp / "run.dag", dag)


def test_written_dag_is_clean_and_dagman_accepts_it(tmp_path, monkeypatch):
    path = _dag(tmp_path)
    text = path.read_text()
    assert lint_dag(path) == []
    assert "MAXJOBS gpu 2" in text and "CATEGORY w1 gpu" in text
    assert "CATEGORY gpu" not in text  # the htcondor2.dags throttle mistake
    assert "RETRY w0 3 UNLESS-EXIT 2" in text
    assert 'VARS w2 n="2" label="a \\"b\\""' in text
    assert "FINAL report work.sub" in text and "ABORT-DAG-ON collect 3 RETURN 1" in text
    assert "NODE_STATUS_FILE run.status 30" in text
    monkeypatch.chdir(tmp_path)
    dagman = stub_dagman(tmp_path)
    description = htcondor2.Submit.from_dag(path.name, {"dagman": dagman, "force": True,
                                                        "batch-name": "t"})
    assert description["executable"] == dagman
    assert "-Dag run.dag" in description["arguments"]


def test_from_dag_rejects_an_unknown_command(tmp_path, monkeypatch):
    (tmp_path / "bad.dag").write_text("JOBB a work.sub\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(htcondor2.HTCondorException, match="JOBB"):
        htcondor2.Submit.from_dag("bad.dag", {"dagman": stub_dagman(tmp_path)})


def test_lint_finds_what_dagman_would_reject(tmp_path):
    write_submit(tmp_path / "ok.sub", {"executable": "/bin/true"})
    (tmp_path / "broken.sub").write_text("executable = /bin/true\nqueue x from missing.items\n")
    (tmp_path / "bad.dag").write_text("\n".join([
        "JOB a ok.sub", "JOB a ok.sub", "JOB b nothere.sub", "JOB c ok.sub", "JOB d broken.sub",
        "FINAL f ok.sub", "JOBB z ok.sub", "PARENT a CHILD ghost", "PARENT a CHILD c",
        "PARENT c CHILD a", "PARENT f CHILD c", "CATEGORY gpu 5", "MAXJOBS cpu 3",
        "RETRY a x", "SCRIPT POST a /no/such/script", "VARS nobody x=\"1\"", ""]))
    problems = "\n".join(lint_dag(tmp_path / "bad.dag"))
    for expected in ["node a is defined twice", "nothere.sub does not exist",
                     "broken.sub does not parse", "unknown DAG command 'JOBB'",
                     "names node 'ghost'", "names node 'nobody'",
                     "'MAXJOBS gpu 5'", "MAXJOBS cpu: no node is in that category",
                     "RETRY takes", "script /no/such/script does not exist",
                     "FINAL node f cannot be a PARENT or CHILD", "cycle"]:
        assert expected in problems, expected


def test_lint_finds_vars_that_the_submit_file_overrides(tmp_path):
    """DAGMan sets a node's VARS before it reads the submit file, so a command the file sets
    itself keeps the file's value: a VARS value meant for it is lost without a word."""
    (tmp_path / "sized.sub").write_text("executable = /bin/true\n"
                                        "request_memory = $(request_memory)\n"
                                        "request_disk = $(disk)\nqueue\n")
    (tmp_path / "sizes.dag").write_text("\n".join([
        "JOB a sized.sub", 'VARS a request_memory="2GB" disk="3GB"',
        "JOB b sized.sub", 'VARS b APPEND request_memory="2GB"',
        'VARS ALL_NODES Request_Disk="1GB"', ""]))
    problems = lint_dag(tmp_path / "sizes.dag")
    assert sorted(problems) == [
        "sizes.dag:2: VARS request_memory of node a is overridden by sized.sub, which sets "
        "request_memory itself (DAGMan sets VARS before reading the submit file): give the "
        "value another name and refer to it there as $(name)",
        *(f"sizes.dag:5: VARS request_disk of node {node} is overridden by sized.sub, which "
          "sets request_disk itself (DAGMan sets VARS before reading the submit file): give "
          "the value another name and refer to it there as $(name)" for node in "ab")]


def test_lint_follows_sub_dags_unless_a_pre_script_writes_them(tmp_path):
    write_submit(tmp_path / "ok.sub", {"executable": "/bin/true"})
    (tmp_path / "inner.dag").write_text("JOB x missing.sub\n")
    (tmp_path / "outer.dag").write_text("\n".join([
        "JOB a ok.sub", "SUBDAG EXTERNAL inner inner.dag", "SUBDAG EXTERNAL later later.dag",
        "SCRIPT PRE later /bin/true", "SUBDAG EXTERNAL gone gone.dag", "SUBDAG inner2 x.dag",
        "PARENT a CHILD inner later", ""]))
    problems = lint_dag(tmp_path / "outer.dag")
    assert problems == [
        "outer.dag:6: SUBDAG EXTERNAL needs a node name and a DAG file",
        "outer.dag:2: inner.dag:1: submit file " + str(tmp_path / "missing.sub")
        + " does not exist",
        f"outer.dag:5: sub-DAG {tmp_path / 'gone.dag'} does not exist, and no PRE script of "
        "gone writes it"]
    assert dag_text(Dag([Node("p", "pipeline.dag", kind="SUBDAG")])).startswith(
        "SUBDAG EXTERNAL p pipeline.dag\n")


def test_writing_a_dag_anew_removes_its_old_rescue_dags(tmp_path):
    """An old run's DONE marks must not apply to the new DAG's nodes of the same names."""
    for name in ("pipeline.dag.rescue001", "pipeline.dag.rescue002", "other.dag.rescue001"):
        (tmp_path / name).write_text("DONE shard-00000\n")
    write_dag(tmp_path / "pipeline.dag", Dag([Node("shard-00000", "shard.sub")]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.dag.rescue001",
                                                          "pipeline.dag"]


def test_names_dagman_cannot_take_are_refused(tmp_path):
    with pytest.raises(ValueError, match="space"):
        write_dag(tmp_path / "x.dag", Dag([Node("a", "a.sub", post=Script("/bin/my script"))]))
    with pytest.raises(ValueError, match="node name"):
        write_dag(tmp_path / "x.dag", Dag([Node("a b", "a.sub")]))
    with pytest.raises(ValueError, match="unique"):
        write_dag(tmp_path / "x.dag", Dag([Node("a", "a.sub"), Node("a", "a.sub")]))


def _gpu_job(tmp: Path, memory: str, capability: str = "7.0",
             runtime: str | None = None) -> htcondor2.Submit:
    return write_submit(tmp / "gpu.sub", {
        "executable": "/bin/true", "request_gpus": "1", "gpus_minimum_memory": memory,
        "gpus_minimum_capability": capability, "request_cpus": "4",
        "request_memory": "16GB", "request_disk": "20GB",
        "requirements": "(TARGET.Cpus >= 2)",
        **({"gpus_minimum_runtime": runtime} if runtime else {})})


def test_gpu_requirements_match_machine_ads(tmp_path):
    h100, t4 = classad2.parseOne(H100), classad2.parseOne(T4)
    job = job_match_ad(_gpu_job(tmp_path, "32GB"))
    assert job["GPUsMinMemory"] == 32768 and "GlobalMemoryMb >= GPUsMinMemory" in str(
        job["RequireGPUs"])
    assert h100.matches(job)
    assert not t4.matches(job)  # 16 GB T4 when 32 GB is asked
    assert t4.matches(job_match_ad(_gpu_job(tmp_path, "12GB")))
    assert not t4.matches(job_match_ad(_gpu_job(tmp_path, "12GB", capability="8.0")))
    small = classad2.parseOne(H100.replace("Memory = 131072", "Memory = 8192"))
    assert not small.matches(job)  # host memory: request_memory 16GB
    few = classad2.parseOne(H100.replace("Cpus = 16", "Cpus = 1"))
    assert not few.matches(job)  # the description's own requirements (and request_cpus)


def test_the_cuda_runtime_requirement_matches_the_driver(tmp_path):
    """gpus_minimum_runtime as condor_submit turns it into the job ad: GPUsMinRuntime, encoded
    as the GPUs' MaxSupportedVersion is, and a RequireGPUs clause comparing the two."""
    job = job_match_ad(_gpu_job(tmp_path, "14GB", capability="7.5", runtime="13.0"))
    assert job["GPUsMinRuntime"] == 13000 and job["GPUsMinCapability"] == 7.5
    assert job["GPUsMinMemory"] == 14336
    assert str(job["RequireGPUs"]) == ("Capability >= GPUsMinCapability && GlobalMemoryMb >= "
                                       "GPUsMinMemory && MaxSupportedVersion >= GPUsMinRuntime")
    assert classad2.parseOne(H100).matches(job) and classad2.parseOne(T4).matches(job)
    assert not classad2.parseOne(H100_CUDA_12).matches(job)
    assert classad2.parseOne(H100_CUDA_12).matches(job_match_ad(
        _gpu_job(tmp_path, "14GB", runtime="12.4")))
    assert [cuda_version_code(v) for v in ("13.0", "13", "12.6", "12040")] == \
        [13000, 13000, 12060, 12040]
    with pytest.raises(ValueError, match="CUDA version"):
        cuda_version_code("13.x")


def test_gpu_commands_come_from_the_resources_section():
    assert gpu_commands(CondorResourcesConfig()) == {
        "request_gpus": "1", "gpus_minimum_capability": "7.5", "gpus_minimum_memory": "14GB",
        "gpus_minimum_runtime": "13.0"}
    assert gpu_commands(CondorResourcesConfig(), gpu_memory="40GB")["gpus_minimum_memory"] \
        == "40GB"
    assert gpu_commands(CondorResourcesConfig(request_gpus=0)) == {"request_gpus": "0"}


def test_quantities_follow_htcondor_units():
    assert quantity("16GB", "M") == 16384
    assert quantity("20GB", "K") == 20 * 1024 * 1024
    assert quantity("512M", "M") == 512
    assert quantity("2000", "M") == 2000
    with pytest.raises(ValueError):
        quantity("lots", "M")


NODE_STATUS = """[
  Type = "DagStatus";
  DagFiles = { "pipeline.dag" };
  Timestamp = 1399674138;
  DagStatus = 3; /* "STATUS_SUBMITTED ()" */
  NodesTotal = 4; NodesDone = 2; NodesFailed = 1;
  JobProcsHeld = 1; JobProcsIdle = 0;
]
[ Type = "NodeStatus"; Node = "a"; NodeStatus = 5; StatusDetails = ""; RetryCount = 0;
  JobProcsQueued = 0; JobProcsHeld = 0; ]
[ Type = "NodeStatus"; Node = "b"; NodeStatus = 5; StatusDetails = ""; RetryCount = 1;
  JobProcsQueued = 0; JobProcsHeld = 0; ]
[ Type = "NodeStatus"; Node = "c"; NodeStatus = 6; StatusDetails = "Job exited with 1";
  RetryCount = 3; JobProcsQueued = 0; JobProcsHeld = 0; ]
[ Type = "NodeStatus"; Node = "d"; NodeStatus = 3; StatusDetails = "held";
  RetryCount = 0; JobProcsQueued = 1; JobProcsHeld = 1; ]
[ Type = "StatusEnd"; EndTime = 1399674138; NextUpdate = 1399674168; ]
"""


def test_node_status_file_is_read(tmp_path):
    assert read_node_status(tmp_path / "none.status") is None
    (tmp_path / "run.status").write_text(NODE_STATUS)
    status = read_node_status(tmp_path / "run.status")
    assert status["dag"]["state"] == "submitted" and status["dag"]["DagFiles"] == ["pipeline.dag"]
    assert [(n["Node"], n["state"]) for n in status["nodes"]] == [
        ("a", "done"), ("b", "done"), ("c", "error"), ("d", "submitted")]
    assert status["nodes"][2]["StatusDetails"] == "Job exited with 1"
    assert status["end"]["NextUpdate"] == 1399674168


def test_no_schedd_is_a_clear_error(tmp_path, monkeypatch):
    path = _dag(tmp_path)
    with pytest.raises(CondorError, match="no HTCondor schedd is reachable.*access point"):
        submit_dag(path)
    (tmp_path / "run.dag.lock").write_text("")
    with pytest.raises(CondorError, match="already running"):
        submit_dag(path)



def test_progress_goes_by_names_the_starter_takes_as_delayed_updates(monkeypatch):
    """The starter drops, without an error the job sees, a delayed update whose name does not
    match CHIRP_DELAYED_UPDATE_PREFIX (default `Chirp*`): `status` would show nothing."""
    monkeypatch.delenv("_CHIRP_DELAYED_UPDATE_PREFIX", raising=False)
    published = [*pipeline.PROGRESS_ATTRIBUTES.values(),
                 *generation_dag.PROGRESS_ATTRIBUTES.values()]
    assert all(delayed_update_allowed(name) for name in published)
    assert not delayed_update_allowed("ShardPassagesDone")
    monkeypatch.setenv("_CHIRP_DELAYED_UPDATE_PREFIX", "Progress*, chirp*")
    assert delayed_update_allowed("ChirpShardPassagesDone")
    assert delayed_update_allowed("ProgressRows") and not delayed_update_allowed("Rows")
