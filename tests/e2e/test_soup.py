"""Model soups (`train-models soup`): a short embedder sweep of a tiny model, three trials from
one start and one from another, averaged greedily into one model that loads, scores no worse
than the best single trial on the dev set, and can be promoted; what cannot be souped is
refused in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from tiny_models import tiny_embedder

from submit.train.cli import main

ROOT = Path(__file__).resolve().parents[2]


def train(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`train-models` as a user runs it, from `cwd`."""
    proc = subprocess.run([sys.executable, "-m", "submit.train.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    return proc


def infer(*args: str, cwd: Path) -> None:
    subprocess.run([sys.executable, "-m", "infer_corpus", *args], cwd=cwd, check=True,
                   capture_output=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.fixture(scope="module")
def user(tmp_path_factory) -> Path:
    """A user's folder: two tiny models (`tiny-embedder`, `other-start`), the demo corpus
    partitioned and embedded with the first in `run`, and a finished embedder sweep `mix`:
    three learning rates from `tiny-embedder`, one trial from `other-start`."""
    folder = tmp_path_factory.mktemp("soup-user")
    tiny = tiny_embedder(folder)
    # seed 2's untrained model scores no better than the others: the soup starts from `tiny`
    tiny_embedder(folder / "other", seed=2).rename(folder / "other-start")
    infer("partition", "--demo", "--workdir", "run", "--set", f"model.name={tiny}", "--set",
          "model.dtype=float32", "--set", "predictions.kind=none", cwd=folder)
    data = yaml.safe_load((ROOT / "configs" / "sweep-embedder-demo.yaml").read_text())
    data.update(name="mix", metric="val_recall@1", params={"lr": [0.001, 0.0003, 0.0001]},
                ablations=[{"name": "other-start",
                            "set": {"model": str(folder / "other-start"), "lr": 0.001}}])
    data["base"].update(model=str(tiny), max_steps=4, save_steps=2, batch_size=8)
    (folder / "mix.yaml").write_text(yaml.safe_dump(data))
    train("sweep", "mix.yaml", "--workdir", "run", cwd=folder)
    return folder


def test_a_greedy_soup_averages_the_kept_trials_and_can_be_promoted(user, capsys):
    sweep = user / "run" / "train" / "mix"
    out = train("soup", "--workdir", "run", "--sweep", "mix", "--top", "3",
                cwd=user).stdout.splitlines()
    record = json.loads((sweep / "soup" / "soup.json").read_text())
    ranking = json.loads((sweep / "results.json").read_text())["ranking"]
    assert ranking[0]["trial"] == "t000" and record["start"] == str(user / "tiny-embedder")
    # the trial from another start is left out, and named
    assert record["left_out"] == [{"trial": "t003", "label": "lr=0.001 model=other-start",
                                   "start": str(user / "other-start")}]
    steps = record["steps"]
    assert [s["trial"] for s in steps] == ["t000", "t001", "t002"]
    # the best trial alone scores what its own final evaluation recorded
    best = record["best_single"]
    assert best["trial"] == "t000" and best["value"] == pytest.approx(ranking[0]["value"])
    # the greedy rule: a trial joins only when the soup's dev metric does not drop
    running = steps[0]["value"]
    for step in steps[1:]:
        assert step["kept"] == (step["value"] >= running)
        running = step["value"] if step["kept"] else running
    assert record["value"] == running >= best["value"]
    members = [s["trial"] for s in steps if s["kept"]]
    assert record["members"] == members and len(members) >= 2

    # one model, the kept trials' weights averaged
    model = sweep / "soup" / "model"
    assert record["model"] == str(model)
    from sentence_transformers import SentenceTransformer

    assert SentenceTransformer(str(model), device="cpu").encode(["a title"]).shape == (1, 32)
    weights = load_file(model / "model.safetensors")
    trials = [load_file(sweep / "trials" / t / "model" / "model.safetensors") for t in members]
    name = "encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(trials[0][name], trials[1][name])
    assert torch.allclose(weights[name], torch.stack([t[name] for t in trials]).mean(dim=0),
                          atol=1e-7)
    assert out[0] == (f"soup of sweep mix: {len(members)} of 3 trials kept; val_recall@1 on "
                      "the dev set (higher is better)")
    assert out[-3].startswith("soup (t000 + t001") and "at one model's inference cost" in out[-3]
    assert out[-2] == ("left out, another start: t003 "
                       f"({user / 'other-start'})")

    assert main(["promote", "--workdir", str(user / "run"), "--sweep", "mix", "--trial", "soup",
                 "--json"]) == 0
    promoted = json.loads(capsys.readouterr().out)
    folder = user / "run" / "models" / "mix-soup"
    assert promoted["trial"] == "soup" and promoted["model"] == str(folder)
    assert promoted["soup"]["members"] == members and promoted["value"] == record["value"]
    assert promoted["soup"]["best_single"] == best and promoted["source"] == str(model)
    assert json.loads((folder / "promotion.json").read_text()) == promoted
    assert (folder / "modules.json").is_file()

    # one trial: the soup is that trial, and the command says so
    assert main(["soup", "--workdir", str(user / "run"), "--sweep", "mix", "--top", "1"]) == 0
    assert "only one trial to average: the soup is trial t000 itself" in capsys.readouterr().out
    assert json.loads((sweep / "soup" / "soup.json").read_text())["members"] == ["t000"]
    assert torch.equal(load_file(model / "model.safetensors")[name], trials[0][name])


def test_every_metric_an_embedder_sweep_ranks_by_can_judge_a_soup():
    from submit.train.soup import SCORERS
    from submit.train.sweep import KIND_METRICS

    assert set(SCORERS) == set(KIND_METRICS["embedder"])


def test_what_cannot_be_souped_is_refused_in_one_line(user, capsys):
    run = str(user / "run")
    infer("shard", "--workdir", "run", "--shard", "0", cwd=user)  # embeddings, for heads
    assert main(["sweep", str(ROOT / "configs" / "sweep-demo.yaml"), "--workdir", run,
                 "--dry-run"]) == 0
    data = yaml.safe_load((user / "mix.yaml").read_text())
    (user / "unrun.yaml").write_text(yaml.safe_dump({**data, "name": "unrun"}))
    assert main(["sweep", str(user / "unrun.yaml"), "--workdir", run, "--dry-run"]) == 0
    capsys.readouterr()
    cases = [
        (["soup", "--sweep", "sweep-demo"], "sweep sweep-demo trains topic heads: a soup "
                                            "averages the weights of fine-tuned embedders "
                                            "(kind: embedder)"),
        (["soup", "--sweep", "unrun"], "sweep unrun has no completed trial yet"),
        (["soup", "--sweep", "mix", "--top", "0"], "--top must be >= 1, got 0"),
        (["promote", "--sweep", "unrun", "--trial", "soup"],
         "sweep unrun has no soup yet: run `train-models soup --workdir WORKDIR --sweep "
         "unrun` first"),
        (["promote", "--sweep", "sweep-demo", "--trial", "soup"],
         "sweep sweep-demo trains topic heads: it has no soup (a soup averages fine-tuned "
         "embedders)"),
    ]
    for args, message in cases:
        assert main([*args, "--workdir", run]) == 2, args
        assert capsys.readouterr().err == f"train-models: error: {message}\n"
