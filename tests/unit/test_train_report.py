"""How a sweep's report names its trials: by the hyperparameters that differ across it."""

from __future__ import annotations

from pathlib import Path

import pytest

from submit.train.report import number, trial_labels
from submit.train.sweep import expand_trials, load_spec

ROOT = Path(__file__).resolve().parents[2]


def test_the_demo_sweep_names_each_trial_by_what_sets_it_apart():
    trials = expand_trials(load_spec(ROOT / "configs" / "sweep-demo.yaml"))
    names = trial_labels(trials, "head")
    assert names["t000"] == "dropout=0 head=linear lr=0.01 seed=0"
    assert names["t009"] == "dropout=0.5 head=mlp lr=0.01 seed=1"  # the ablation
    assert len(set(names.values())) == len(trials)  # each trial its own name
    configs = trial_labels(trials, "head", seed=False)
    assert configs["t000"] == configs["t001"] == "dropout=0 head=linear lr=0.01"


def test_one_trial_keeps_its_id_and_embedder_params_get_their_defaults():
    one = [{"trial": "t000", "group": "c0", "params": {"lr": 2e-5}}]
    assert trial_labels(one, "embedder") == {"t000": "t000"}
    two = one + [{"trial": "t001", "group": "c1", "params": {"adapter": "lora"}}]
    assert trial_labels(two, "embedder") == {"t000": "adapter=none", "t001": "adapter=lora"}


@pytest.mark.parametrize("value, text", [
    (0.01, "0.01"), (0.003, "0.003"), (2e-4, "2e-4"), (2e-5, "2e-5"), (0.0034567, "0.003457"),
    (1e6, "1e6"), (0.0, "0"), (32, "32"), ("mlp", "mlp"), ("/m/tiny-embedder", "tiny-embedder"),
])
def test_values_read_as_people_write_them(value, text):
    assert number(value) == text
