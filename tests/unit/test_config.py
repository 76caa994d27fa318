from pathlib import Path

import pytest

from infer_corpus.config import load_config
from inference.config_loader import ConfigError, parse_override

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_validate():
    config = load_config()
    assert config.passages.max_words == 250
    assert config.model.name == "all-MiniLM-L6-v2"
    assert "covid-19" in config.predictions.topics


TRAINING_SPECS = {"sweep-demo.yaml", "multinode-demo.yaml"}  # `train-models` specs


def test_shipped_configs_load():
    from submit.train.multinode import load_multinode_spec
    from submit.train.sweep import load_spec

    shipped = {path.name: path for path in (ROOT / "configs").glob("*.yaml")}
    assert TRAINING_SPECS <= set(shipped)
    for name, path in shipped.items():
        if name.startswith("sweep-"):  # every sweep spec
            load_spec(path)
        elif name not in TRAINING_SPECS:
            load_config(path)
    load_multinode_spec(shipped["multinode-demo.yaml"])


def test_unknown_key_is_an_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  batch_sise: 12\n")
    with pytest.raises(ConfigError, match=r"unknown config key model\.batch_sise"):
        load_config(path)


def test_unknown_section_is_an_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("modle:\n  name: x\n")
    with pytest.raises(ConfigError, match="unknown config key modle"):
        load_config(path)


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.batch_size=many", "expected an integer"),
        ("model.batch_size=0", "batch_size"),
        ("passages.min_words=300", "min_words"),
        ("shards.tokenize=maybe", "true or false"),
        ("predictions.kind=classifier", "predictions.model is required"),
        ("model.dtype=int4", "model.dtype"),
        ("nonsense", "section.key=value"),
    ],
)
def test_bad_values_name_the_problem(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_overrides_apply_over_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  batch_size: 16\nfields:\n  text: body\n")
    config = load_config(path, ["model.batch_size=8", "passages.max_words=120"])
    assert config.model.batch_size == 8
    assert config.passages.max_words == 120
    assert config.fields.text == ["body"]  # a single field name becomes a list


def test_parse_override_nests():
    assert parse_override("a.b.c=3") == {"a": {"b": {"c": 3}}}


def test_missing_config_file_is_clear(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "nope.yaml")


def test_an_override_inside_a_map_keeps_its_other_entries(tmp_path):
    defaults = load_config(None)
    added = load_config(None, ["qa.models.lab.backend=openai", "qa.models.lab.model=m",
                               "qa.models.lab.base_url=http://127.0.0.1:9/v1"])
    assert set(added.qa.models) == set(defaults.qa.models) | {"lab"}
    assert added.qa.models["lab"].base_url == "http://127.0.0.1:9/v1"
    changed = load_config(None, ["qa.models.extractive.max_new_tokens=7"])
    assert changed.qa.models["extractive"].max_new_tokens == 7
    assert set(changed.qa.models) == set(defaults.qa.models)
    topics = load_config(None, ["predictions.topics.volcanology=lava and eruptions"])
    assert set(topics.predictions.topics) == set(defaults.predictions.topics) | {"volcanology"}
    # a whole map set on the command line, or a map given by the file, replaces the default
    assert load_config(None, ["predictions.topics={a: b}"]).predictions.topics == {"a": "b"}
    path = tmp_path / "c.yaml"
    path.write_text("predictions:\n  topics:\n    a: alpha\n")
    from_file = load_config(path, ["predictions.topics.b=beta"])
    assert from_file.predictions.topics == {"a": "alpha", "b": "beta"}


@pytest.mark.parametrize(
    "content, message",
    [
        (b"model:\n  name: caf\xe9\n", r"is not UTF-8 text \(byte 18\)"),
        (b"model:\n  1: x\n  batch_sise: 3\n", r"unknown config key model\.1"),
        (b"model: [" * 5000, "nests deeper than|not valid YAML"),
        (b"model:\n  - a\n b: 2\n", r"is not valid YAML at line \d+, column \d+"),
    ],
    ids=["not-utf8", "mixed-key-types", "deep-nesting", "invalid-yaml"],
)
def test_bad_config_files_give_one_line(tmp_path, content, message):
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path)
    assert "\n" not in str(info.value) and len(str(info.value)) < 300


def test_a_deep_mapping_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 40)))
    with pytest.raises(ConfigError, match="nests deeper than 32 levels"):
        load_config(path)


def test_a_byte_order_mark_is_not_part_of_the_first_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes("\ufeffmodel:\n  batch_size: 16\n".encode())
    assert load_config(path).model.batch_size == 16


def test_bad_config_via_the_cli_exits_2_without_a_traceback(tmp_path):
    from conftest import run_cli

    path = tmp_path / "c.yaml"
    path.write_bytes(b"model: [" * 5000)
    proc = run_cli("partition", "--demo", "--workdir", str(tmp_path / "w"), "--config", str(path),
                   check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


# --- hostile configs: one line each, in well under a second ---------------------------------

def test_a_deeply_nested_override_is_one_line_like_a_deep_file():
    with pytest.raises(ConfigError, match="nests deeper than 32 levels") as info:
        load_config(None, ["model.name=" + "[" * 600 + "]" * 600])
    assert "\n" not in str(info.value) and len(str(info.value)) < 300
    with pytest.raises(ConfigError, match="nests deeper than 32 levels"):
        load_config(None, ["model.name=" + "[" * 40 + "]" * 40])  # parsed, then measured


def test_a_billion_laughs_config_is_refused_at_once(tmp_path):
    import time

    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
    path = tmp_path / "laughs.yaml"
    path.write_text("\n".join(lines) + "\n")
    started = time.perf_counter()
    with pytest.raises(ConfigError, match="over 100,000 values once its aliases are expanded"):
        load_config(path)
    assert time.perf_counter() - started < 2
    with pytest.raises(ConfigError, match="nests deeper than 32 levels"):  # a cycle
        load_config(None, ["model.name=&a [*a, *a]"])


def test_aliases_within_bounds_still_work(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  name: &m all-MiniLM-L6-v2\npredictions:\n  kind: zero-shot\n"
                    "  topics: &t {a: alpha}\nqa:\n  questions: {x: [*m]}\n")
    assert load_config(path).model.name == "all-MiniLM-L6-v2"


@pytest.mark.parametrize("content, key", [
    ("model:\n  batch_size: 8\n  batch_size: 16\n", "batch_size"),
    ("model:\n  name: x\nmodel:\n  batch_size: 16\n", "model"),
])
def test_a_repeated_key_is_refused_by_name(tmp_path, content, key):
    path = tmp_path / "c.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=rf"duplicate key '{key}'"):
        load_config(path)
    with pytest.raises(ConfigError, match=rf"duplicate key '{key}'"):
        load_config(None, ["model.name={a: 1, a: 2}".replace("a", key)])


def test_a_merge_key_may_still_be_overridden(tmp_path):
    from inference.config_loader import read_yaml

    path = tmp_path / "c.yaml"
    path.write_text("x: &b {batch_size: 8, max_seq_length: 64}\n"
                    "model:\n  <<: *b\n  batch_size: 16\n")
    assert read_yaml(path)["model"] == {"batch_size": 16, "max_seq_length": 64}


@pytest.mark.parametrize("override", ["generation.temperature=.nan", "generation.top_p=.inf",
                                      "generation.timeout=-.inf"])
def test_non_finite_numbers_are_refused(override):
    with pytest.raises(ConfigError, match="expected a finite number"):
        load_config(None, [override])


@pytest.mark.parametrize("override, message", [
    ("model.batch_size=1000000000000000000000000000000", "model.batch_size must be at most 65,536"),
    ("executor.workers=100000", "executor.workers .* must be at most 1,024"),
    ("executor.threads_per_worker=5000", "must be at most 1,024"),
])
def test_absurd_numbers_are_bounded(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_a_whole_map_on_the_command_line_replaces_the_files(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("generation:\n  models:\n    smollm2:\n      batch_size: 16\n")
    replaced = load_config(path, ["generation.models={tiny: {model: m, batch_size: 4}}"])
    assert set(replaced.generation.models) == {"tiny"}
    added = load_config(path, ["generation.models.tiny.model=m"])
    assert set(added.generation.models) == {"smollm2", "tiny"}
