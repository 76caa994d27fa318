"""Promotion of a fine-tuned embedder (`train-models promote`): a tiny model fine-tuned by a
short sweep on the demo corpus is copied into the workdir, checked in int8, and then embeds
the corpus and the queries of `infer-corpus run` and `search`; what cannot be promoted is
refused in one line."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tiny_models import tiny_embedder

from submit.train.cli import main

ROOT = Path(__file__).resolve().parents[2]


def command(program: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`infer-corpus` or `train-models` as a user runs it, from `cwd`."""
    module = {"infer-corpus": "infer_corpus", "train-models": "submit.train.cli"}[program]
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    return proc


def write_spec(user: Path, name: str) -> Path:
    """The demo embedder sweep on the tiny model: two learning rates, a few steps each."""
    data = yaml.safe_load((ROOT / "configs" / "sweep-embedder-demo.yaml").read_text())
    data["name"] = name
    data["base"].update(model=str(user / "tiny-embedder"), max_steps=4, save_steps=2,
                        batch_size=8)
    data["params"] = {"lr": [0.001, 0.0001]}
    path = user / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def user(tmp_path_factory) -> Path:
    """A user's folder: a tiny model, the demo corpus embedded and indexed with it in `run`
    (a relative workdir), and a finished embedder sweep `promo` that fine-tuned it."""
    folder = tmp_path_factory.mktemp("promote-user")
    tiny_embedder(folder)
    command("infer-corpus", "run", "--demo", "--workdir", "run", "--set",
            f"model.name={folder / 'tiny-embedder'}", "--set", "predictions.kind=none",
            cwd=folder)
    command("train-models", "sweep", str(write_spec(folder, "promo")), "--workdir", "run",
            cwd=folder)
    return folder


def test_a_promoted_embedder_embeds_the_corpus_and_the_queries(user, capsys, monkeypatch):
    record = json.loads(command("train-models", "promote", "--workdir", "run", "--sweep",
                                "promo", "--json", cwd=user).stdout)
    results = json.loads((user / "run" / "train" / "promo" / "results.json").read_text())
    best = results["best"]
    assert record["trial"] == best["trial"] and record["best"] is True
    assert (record["metric"], record["value"]) == ("val_loss", best["value"])
    assert record["params"] == best["params"] and record["label"].startswith("lr=")
    folder = user / "run" / "models" / f"promo-{best['trial']}"
    assert record["model"] == str(folder) and (folder / "modules.json").is_file()
    saved = json.loads((folder / "promotion.json").read_text())
    assert saved == record
    check = record["int8"]  # the encoder's own check, recorded either way
    assert isinstance(check["agrees"], bool) and 0.0 < check["cosine"] <= 1.0 + 1e-6
    assert check["agrees"] == (check["cosine"] >= check["min_cosine"])
    assert record["next"] == shlex.join(["infer-corpus", "run", "--workdir", "run", "--demo",
                                         "--set", f"model.name={folder}"])
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no leftovers

    from inference.workdir import Workdir
    from retrieval import Searcher, open_index
    from retrieval.index_model import model_fingerprint

    assert open_index(Workdir(user / "run")).model["name"] == str(user / "tiny-embedder")
    # the printed command, as the user would paste it (predictions off, as before)
    summary = json.loads(command(*shlex.split(record["next"]), "--set", "predictions.kind=none",
                                 "--json", cwd=user).stdout.strip().splitlines()[-1])
    assert summary["shards_run"] == summary["shards"] == 1  # embedded again
    index = open_index(Workdir(user / "run"))
    assert index.model["name"] == str(folder) and index.model["dimension"] == 32
    assert index.model["fingerprint"] == model_fingerprint(str(folder))
    assert Workdir(user / "run").manifest().config.model.name == str(folder)
    # dense ranking alone: queries are embedded by the promoted model, as the index records
    searcher = Searcher(user / "run")
    hits = searcher.search("Triassic carbonate platforms", top_k=5, mode="dense")
    assert searcher.model.name == str(folder) and len(hits) == 5
    assert all(hit.passage["passage_id"] for hit in hits)

    # another trial, under a bar no int8 model clears: promoted all the same, and said so
    from inference import embed

    monkeypatch.setattr(embed, "INT8_MIN_COSINE", 1.01)
    other = next(r["trial"] for r in results["ranking"] if r["trial"] != best["trial"])
    assert main(["promote", "--workdir", str(user / "run"), "--trial", other]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    folder = user / "run" / "models" / f"promo-{other}"
    assert len(lines) == 3 and lines[0].startswith(f"promoted trial {other} of promo (val_loss ")
    assert lines[1].startswith("int8 check failed: in ONNX int8 its embeddings differ from "
                               "PyTorch's (cosine ")
    assert lines[2].endswith(f"--set model.name={folder}")
    check = json.loads((folder / "promotion.json").read_text())["int8"]
    assert check["agrees"] is False and check["min_cosine"] == 1.01 and check["cosine"] < 1.01
    assert (folder / "modules.json").is_file()


def test_what_cannot_be_promoted_is_refused_in_one_line(user, capsys):
    run = str(user / "run")
    command("train-models", "sweep", str(write_spec(user, "unrun")), "--workdir", "run",
            "--dry-run", cwd=user)  # prepared, no trial run
    stray = user / "mine"
    stray.mkdir()
    cases = [
        (["--sweep", "nope"], f"{run} holds no sweep 'nope' (its sweeps: promo, unrun)"),
        (["--sweep", "promo", "--trial", "t7"], "sweep promo has no trial 't7' (its trials: "
                                                "t000 to t001)"),
        (["--sweep", "unrun"], "sweep unrun has no completed trial yet"),
        (["--sweep", "unrun", "--trial", "t001"], "trial t001 of sweep unrun is not completed "
                                                  "(not started)"),
        (["--sweep", "promo", "--out", str(stray)], f"{stray} exists and holds no promoted "
                                                     "model: choose another --out"),
    ]
    for args, message in cases:
        assert main(["promote", "--workdir", run, *args]) == 2, args
        assert capsys.readouterr().err == f"train-models: error: {message}\n"
    assert list(stray.iterdir()) == []
