"""`metric: ndcg@10`: embedder trials judged by the project's own search on a collection with
relevance judgements, on its dev queries; the best one reported on the test queries against
the base model with a paired randomization test. A tiny collection and a tiny model, locally
and as an optuna DAG on the replay pool; specs it cannot judge are refused in one line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from condor_replay import Pool
from conftest import last_json, write_jsonl
from test_embedder_sweep import assert_refused, train
from test_embedder_sweep import spec as embedder_spec
from tiny_models import tiny_embedder

ROOT = Path(__file__).resolve().parents[2]
TOPICS = ["lithium brine extraction", "wing flutter in supersonic flow",
          "protein folding energy", "glacier melt and sea level"]


def write_collection(folder: Path, qrels: bool = True) -> Path:
    """A BEIR-layout collection: 12 documents on 4 topics, 8 queries (q1, q3, q4, q5, q7 fall
    in the dev half by their ids' hash, q0, q2, q6 in the test half), each judging the 3
    documents of its topic relevant."""
    folder.mkdir()
    write_jsonl(folder / "corpus.jsonl", [
        {"_id": f"d{i}", "title": f"{TOPICS[i % 4]} study {i}",
         "text": f"We report on {TOPICS[i % 4]}, case {i}."} for i in range(12)])
    write_jsonl(folder / "queries.jsonl", [{"_id": f"q{i}", "text": TOPICS[i % 4]}
                                           for i in range(8)])
    if qrels:
        (folder / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
            f"q{i}\td{doc}\t1\n" for i in range(8) for doc in range(i % 4, 12, 4)))
    return folder


@pytest.fixture(scope="module")
def user(tmp_path_factory) -> Path:
    """A user's folder: the demo corpus partitioned into `run` (a relative workdir), a tiny
    model to fine-tune and a judged collection `judged/`."""
    folder = tmp_path_factory.mktemp("retrieval-user")
    subprocess.run([sys.executable, "-m", "infer_corpus", "partition", "--demo", "--workdir",
                    "run"], cwd=folder, check=True, capture_output=True, timeout=300)
    tiny_embedder(folder)
    write_collection(folder / "judged")
    return folder


def spec(user: Path, name: str, **changes: object) -> Path:
    """The demo embedder sweep on the tiny model, shortened, ranked by nDCG@10 on `judged/`
    (given relative to the user's folder); `changes` as "section.key" or "key"."""
    return embedder_spec(user, name, **{"metric": "ndcg@10",
                                        "retrieval": {"collection": "judged"}, "parallel": 2,
                                        "base.max_seq_length": 32, **changes})


@pytest.fixture(scope="module")
def judged(user) -> tuple[Path, dict]:
    """A local grid sweep of two trials ranked by nDCG@10: its directory and summary."""
    summary = last_json(train("sweep", str(spec(user, "judged")), "--workdir", "run", "--json",
                              cwd=user).stdout)
    return user / "run" / "train" / "judged", summary


def test_trials_are_ranked_by_dev_ndcg_and_the_best_is_reported_on_the_test_half(judged, user):
    sweep, summary = judged
    assert summary["completed"] == 2 and summary["metric"] == "ndcg@10"
    results = json.loads((sweep / "results.json").read_text())
    collection = str((user / "judged").resolve())
    for row in results["ranking"]:
        kept = json.loads((sweep / "trials" / row["trial"] / "model-dev-eval.json").read_text())
        assert kept["split"] == "dev" and kept["queries"] == 5
        model = sweep / "trials" / row["trial"] / "model"
        assert kept["model"] == str(model.resolve())
        assert kept["depends"]["collection"] == collection  # the collection resolved
        assert kept["depends"]["model_files"]  # the folder's files: written again, judged again
        assert row["value"] == kept["modes"][kept["default"]]["ndcg@10"]
    values = [row["value"] for row in results["ranking"]]
    assert values == sorted(values, reverse=True)  # higher is better
    assert results["best"]["value"] == values[0]

    test = results["retrieval"]  # the best trial on the queries it was never chosen on
    assert test["split"] == "test" and test["queries"] == 3
    assert test["base_model"] == str(user / "tiny-embedder")
    assert test["model"] == str((sweep / "trials" / results["best"]["trial"] /
                                 "model").resolve())
    assert next(iter(test["modes"])) == test["default"]  # the default mode first
    base_test = json.loads((sweep / "base-test-eval.json").read_text())
    assert base_test["split"] == "test" and base_test["model"] == test["base_model"]
    for mode, row in test["modes"].items():
        assert row["queries"] == 3 and 0.0 < row["p"] <= 1.0
        assert row["base"] == base_test["modes"][mode]["ndcg@10"]
        assert row["change"] == pytest.approx(row["ndcg@10"] - row["base"], abs=1e-4)
    base_dev = json.loads((sweep / "base-dev-eval.json").read_text())
    assert test["dev"] == {"base": base_dev["modes"][base_dev["default"]]["ndcg@10"],
                           "tuned": values[0]}


def test_judgements_are_kept_and_report_prints_the_test_comparison(judged, user):
    """collect (the FINAL node), evaluate (the POST script) and report read the kept
    judgements: no model is judged twice."""
    sweep, summary = judged
    kept = sorted(sweep.rglob("*-eval.json"))
    assert len(kept) == 5  # two trials on dev, the best on test, the base model on both
    stamps = [path.stat().st_mtime_ns for path in kept]
    collected = last_json(train("collect", "--sweep-dir", str(sweep), cwd=user).stdout)
    assert collected["retrieval"] == summary["retrieval"]
    train("evaluate", "--sweep-dir", str(sweep), cwd=user)
    table = train("report", "--workdir", "run", "--sweep", "judged", cwd=user).stdout
    default = summary["retrieval"]["default"]
    row = summary["retrieval"]["modes"][default]
    assert f"p = {row['p']:.4f} (default)" in table and "ndcg@10 (higher is better)" in table
    assert [path.stat().st_mtime_ns for path in sorted(sweep.rglob("*-eval.json"))] == stamps
    assert not list(sweep.rglob(".eval-*"))  # the evals' workdirs are gone


def test_the_early_stop_target_is_judged_by_dev_ndcg(judged, user):
    """evaluate exits 3 (ABORT-DAG-ON's target reached) once a trial's dev nDCG@10 reaches
    early_stop.target; run again with a target, the sweep stops and says why."""
    sweep, summary = judged
    best = summary["best"]["value"]
    proc = train("sweep", str(spec(user, "judged", **{"early_stop.target": best})), "--workdir",
                 "run", "--json", cwd=user)
    assert last_json(proc.stdout)["stopped_early"] == \
        f"ndcg@10 {best:.4g} reached the target {best:g}"
    proc = train("evaluate", "--sweep-dir", str(sweep), cwd=user, check=False)
    assert proc.returncode == 3 and last_json(proc.stdout)["best"] == best


@pytest.mark.parametrize("changes, message", [
    ({"retrieval.collection": "no-such-folder"},
     "retrieval.collection: no-such-folder is not a folder"),
    ({"retrieval.collection": "unjudged"},
     "retrieval.collection: unjudged has no relevance judgements"),
    ({"retrieval": {}}, "metric ndcg@10 needs retrieval.collection"),
    ({"metric": "val_loss"}, "retrieval: these settings are for metric ndcg@10"),
])
def test_specs_the_metric_cannot_judge_are_refused_before_anything_is_written(
        user, changes, message):
    if not (user / "unjudged").exists():
        write_collection(user / "unjudged", qrels=False)
    assert_refused(user, spec(user, "refused", **changes), message)


def test_ndcg_on_a_head_sweep_is_refused(user):
    data = yaml.safe_load((ROOT / "configs" / "sweep-demo.yaml").read_text())
    data.update(name="head-ndcg", metric="ndcg@10", retrieval={"collection": "judged"})
    (user / "head-ndcg.yaml").write_text(yaml.safe_dump(data))
    proc = train("sweep", "head-ndcg.yaml", "--workdir", "run", cwd=user, check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "metric ndcg@10 judges a fine-tuned embedding model by search: it needs kind: " \
           "embedder" in proc.stderr
    assert not (user / "run" / "train" / "head-ndcg").exists()


@pytest.mark.slow
def test_an_optuna_dag_judges_by_ndcg_in_its_post_script_and_reports_in_final(user, tmp_path):
    """An optuna embedder sweep on the replay pool, from a relative workdir: both trials stop
    at their first checkpoint with exit 85 and come back with their checkpoints/ folder; the
    rungs prune the weaker by validation loss; the survivor resumes in a fresh sandbox of the
    next wave from that folder and sends back its model/; the POST script judges it on the
    dev queries and tells the study, and the FINAL node reports it on the test queries
    against the base model."""
    import optuna

    here = tmp_path / "user"
    here.mkdir()
    shutil.copytree(user / "run", here / "run", ignore=shutil.ignore_patterns("train"))
    shutil.copytree(user / "judged", here / "judged")
    # search seed 2 draws lr 0.00034 for t000 and 0.082 for t001, whose loss at the first
    # rung is then the higher: it is pruned (t000, judged first, always goes on)
    path = spec(here, "pool-ndcg", method="optuna", samples=2, search_seed=2,
                params={"lr": {"low": 1e-5, "high": 1e-1, "log": True}},
                optuna={"startup_trials": 2, "min_resource": 1, "reduction_factor": 2},
                **{"base.model": str(user / "tiny-embedder"), "condor.wave_size": 2,
                   "condor.checkpoint_every": 0})
    summary = last_json(train("sweep", path.name, "--workdir", "run", "--executor", "condor",
                              "--dry-run", "--json", cwd=here).stdout)
    dag = Path(summary["dag"])
    run = Pool(here / "pool").submit_dag("condor_submit_dag sweep.dag", cwd=dag.parent)
    assert run.status == "succeeded", run.summary()
    sweep = here / "run" / "train" / "pool-ndcg"
    assert summary["waves"] == [0, 1]
    assert [s.exit_code for s in run.starts("WAVE0")] == [0, 0]  # stopped at rung 1
    assert {s.node: s.exit_code for s in run.scripts if s.when == "POST"} == \
        {"WAVE0": 0, "WAVE1": 0, "COLLECT": 0}
    results = json.loads((sweep / "results.json").read_text())
    assert (results["completed"], results["pruned"]) == (1, 1), results
    pruned = results["pruned_trials"][0]
    assert (pruned["trial"], pruned["pruned_at"]) == ("t001", 1)
    assert not (sweep / "trials" / "t001" / "checkpoints").exists()  # spent
    assert not (sweep / "trials" / "t001" / "model-dev-eval.json").exists()  # never finished
    [resumed] = run.starts("WAVE1")  # the survivor alone, in a sandbox of its own
    assert resumed.exit_code == 0 and resumed.sandbox not in {s.sandbox for s in
                                                              run.starts("WAVE0")}
    assert (dag.parent / "wave-001.items").read_text().splitlines() == \
        ["t000,1,model,checkpoints,metrics.json,"]
    metrics = json.loads((sweep / "trials" / "t000" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["resumed_at_step"] == 2
    assert [row["step"] for row in metrics["history"]] == [2, 4]
    judged_dev = json.loads((sweep / "trials" / "t000" / "model-dev-eval.json").read_text())
    value = judged_dev["modes"][judged_dev["default"]]["ndcg@10"]
    assert results["best"] == {**results["best"], "trial": "t000", "value": value}
    study = optuna.load_study(study_name="pool-ndcg", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(sweep / "study.journal"))))
    assert study.direction.name == "MAXIMIZE" and study.best_value == value
    # the rung compared validation losses, negated for the maximizing study
    losses = {t.number: t.intermediate_values[1] for t in study.trials}
    assert losses[0] > losses[1] and losses[0] < 0
    final = json.loads((dag.parent / "collect.out").read_text().strip().splitlines()[-1])
    assert run.nodes["COLLECT"].job_return == 0
    assert final["retrieval"] == results["retrieval"]
    default = final["retrieval"]["modes"][final["retrieval"]["default"]]
    assert default["queries"] == 3 and 0.0 < default["p"] <= 1.0
    report = train("report", "--workdir", "run", "--sweep", "pool-ndcg", cwd=here).stdout
    assert "1 completed" in report and "1 pruned" in report


def test_a_soup_judged_by_ndcg_is_reported_on_the_test_half(judged, user):
    """The greedy steps choose by the dev half, so the soup is then judged on the test half
    against the model it started from, as collect judges the best trial."""
    sweep, summary = judged
    out = train("soup", "--workdir", "run", "--sweep", "judged", cwd=user).stdout
    record = json.loads((sweep / "soup" / "soup.json").read_text())
    test = record["retrieval"]
    assert test["split"] == "test" and test["queries"] == 3
    assert test["base_model"] == str(user / "tiny-embedder")
    assert test["model"] == str((sweep / "soup" / "model").resolve())
    assert test["dev"]["tuned"] == pytest.approx(record["value"], abs=1e-4)
    base_test = json.loads((sweep / "base-test-eval.json").read_text())
    for mode, row in test["modes"].items():
        assert row["base"] == base_test["modes"][mode]["ndcg@10"] and 0.0 < row["p"] <= 1.0
    default = test["modes"][test["default"]]
    assert (f"tuned {default['ndcg@10']:.4f}  change {default['change']:+.4f}  "
            f"p = {default['p']:.4f} (default)") in out
