"""Generated training pairs (`pairs.source: generated`): `infer-corpus generate` writes a
search question per passage with the shipped query template (configs/generate-queries.yaml)
and the packaged SmolLM2 on the CPU (one torch thread), and an embedder sweep on the tiny
model trains on them. A scripted OpenAI-compatible endpoint on 127.0.0.1 gives the replies a
real model gives only now and then (refusals, empty, cut-off and repeated replies, failed
rows), to check which rows are left out and counted. Workdirs that cannot give generated
pairs are refused in one line, exit 2, before the sweep writes anything."""

from __future__ import annotations

import contextlib
import io
import json
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import ROOT, last_json, write_jsonl
from test_generate import Endpoint
from tiny_models import tiny_embedder

from infer_corpus.cli import main as infer_corpus
from inference.generation.generate import output_path
from submit.train import TrainError
from submit.train.cli import main as train_models
from submit.train.pairs import SKIPS, make_pairs, query_of

QUERIES = str(ROOT / "configs" / "generate-queries.yaml")
ARTICLES = [  # ids a0-a9: a2, a4, a7 and a9 are held out at val_fraction 0.3
    ("Glaciers", "Glaciers move downhill under their own weight. Meltwater at the base lets "
                 "the ice slide faster in summer."),
    ("Volcanoes", "Basaltic volcanoes erupt runny lava that flows for kilometres. Explosive "
                  "eruptions come from sticky, gas-rich magma."),
    ("Photosynthesis", "Plants turn light, water and carbon dioxide into sugar. Chlorophyll "
                       "absorbs red and blue light and reflects green."),
    ("Tides", "The moon's gravity raises two bulges in the oceans. Most coasts therefore see "
              "two high tides a day."),
    ("Vaccines", "A vaccine trains the immune system with a harmless piece of a pathogen. "
                 "Memory cells then respond quickly to a real infection."),
    ("Bridges", "Suspension bridges hang their deck from cables over tall towers. The cables "
                "carry the load in tension to anchorages on each bank."),
    ("Coffee", "Coffee beans are the roasted seeds of a cherry. Roasting browns the sugars "
               "and drives off water."),
    ("Lightning", "Lightning is a discharge between charged regions of a storm cloud and the "
                  "ground. The heated air expands so fast that it makes thunder."),
    ("Bees", "Worker bees collect nectar and pollen for the hive. A colony keeps its brood "
             "near thirty-five degrees."),
    ("Rust", "Iron rusts when oxygen and water reach its surface. Salt speeds the reaction, "
             "so cars rust faster where roads are salted."),
]


def cli(main, *args: str) -> tuple[int, str, str]:
    """A command (`infer-corpus` or `train-models`) in this process: its code, out and err."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def partition(folder: Path, articles: list[tuple[str, str]], *extra: str,
              titles: bool = True) -> Path:
    """The articles partitioned into `folder/w`, one passage each."""
    rows = [{"id": f"a{i}", "abstract": text, **({"title": title} if titles else {})}
            for i, (title, text) in enumerate(articles)]
    folder.mkdir(parents=True, exist_ok=True)
    code, _, err = cli(infer_corpus, "partition", "--input",
                       str(write_jsonl(folder / "articles.jsonl", rows)),
                       "--workdir", str(folder / "w"), "--set", "predictions.kind=none", *extra)
    assert code == 0, err
    return folder / "w"


def generate(workdir: Path, *args: str, config: str = QUERIES) -> dict:
    code, out, err = cli(infer_corpus, "generate", "--threads", "1", "--workdir", str(workdir),
                         "--config", config, "--json", *args)
    assert code == 0, err
    return last_json(out)


def sweep_spec(folder: Path, name: str, model: Path, **pairs: object) -> Path:
    """The demo embedder sweep, one short trial on the tiny model, over `pairs` settings."""
    data = yaml.safe_load((ROOT / "configs" / "sweep-embedder-demo.yaml").read_text())
    data.update(name=name, params={"lr": [0.001]}, val_fraction=0.3, parallel=1)
    data["base"].update(model=str(model), max_steps=4, save_steps=2,
                        batch_size=4, max_seq_length=64)
    data["pairs"] = {"source": "generated", **pairs}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """The model the sweeps fine-tune."""
    return tiny_embedder(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def smol(tmp_path_factory) -> Path:
    """Ten passages with SmolLM2's questions."""
    workdir = partition(tmp_path_factory.mktemp("generated"), ARTICLES)
    summary = generate(workdir, "--set", "generation.max_new_tokens=24")
    assert summary["prompt_source"] == "passages" and summary["rows_generated"] == 10
    return workdir


def test_smollm2_writes_queries_that_train_an_embedder_sweep(smol, tiny):
    outputs = pq.read_table(output_path(smol, "smollm2", 0)).to_pylist()
    passages = {row["passage_id"]: row
                for row in pq.read_table(smol / "shards" / "shard-00000.parquet").to_pylist()}
    pairs = make_pairs(smol, "generated", val_fraction=0.3)
    meta = pairs.schema.metadata
    skipped = json.loads(meta[b"skipped"])
    assert meta[b"source"] == b"generated" and meta[b"generation"] == b"smollm2"
    assert set(skipped) == set(SKIPS) and pairs.num_rows + sum(skipped.values()) == 10
    assert pairs.num_rows >= 8  # the template gets a question from most passages
    by_article = {row["article_id"]: row for row in pairs.to_pylist()}
    for output in outputs:
        passage = passages[output["row_id"]]
        pair = by_article.get(passage["article_id"])
        if pair is not None:
            assert pair["query"] == query_of(output["output"]) and pair["query"]
            assert pair["positive"] == passage["text"]
            assert pair["validation"] == (passage["article_id"] in ("a2", "a4", "a7", "a9"))

    code, out, err = cli(train_models, "sweep", str(sweep_spec(smol.parent, "gen", tiny)),
                         "--workdir", str(smol), "--json")
    assert code == 0, err
    summary = last_json(out)
    assert summary["completed"] == 1 and summary["failed"] == 0
    sweep = smol / "train" / "gen"
    assert pq.read_table(sweep / "pairs.parquet").equals(pairs, check_metadata=True)
    assert (Path(summary["best"]["model"]) / "modules.json").is_file()


class Scripted(Endpoint):
    """An OpenAI-compatible endpoint whose reply depends on a word in the passage."""

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        passage = body["messages"][-1]["content"].rsplit("Passage:", 1)[-1]
        finish = "stop"
        if "FAIL" in passage:
            return self._send(400, {"error": {"message": "the prompt is too long"}})
        if "REFUSE" in passage:
            text = "I'm sorry, but I can't help with that."
        elif "EMPTY" in passage:
            text = "   "
        elif "CUT" in passage:
            text, finish = "what is the long and winding question that never", "length"
        elif "SAME" in passage:
            text = "What is this passage about?"
        else:  # a label and quotes around the question, and an answer after it
            name = passage.split()[0].rstrip(".")
            text = f'Question: "what is {name} for?"\nAnswer: it is for things.'
        self._send(200, {"model": body["model"], "choices": [{
            "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5}})


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def served(folder: Path, url: str, *keys: str) -> str:
    """The shipped query config with the endpoint as the study's models (under `keys`)."""
    data = yaml.safe_load(Path(QUERIES).read_text())
    data["generation"]["models"] = {key: {"backend": "openai", "model": "m", "base_url": url}
                                    for key in keys}
    data["generation"]["retries"] = 0
    path = folder / f"queries-{'-'.join(keys)}.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


SCRIPTED = [("Alpha", "alphas SAME one."), ("Beta", "betas REFUSE."),  # a0 a1
            ("Gamma", "gammas, EMPTY."), ("Delta", "deltas CUT."),  # a2 a3
            ("Eps", "epsilons FAIL."), ("Zeta", "zetas SAME two."),  # a4 a5
            ("Eta", "etas."), ("Theta", "thetas."), ("Iota", "iotas."),  # a6 a7 a8
            ("Kappa", "kappas."), ("Lambda", "lambdas."), ("Mu", "mus.")]  # a9 a10 a11


def test_rows_without_a_usable_query_are_left_out_and_counted(tmp_path, endpoint):
    workdir = partition(tmp_path, SCRIPTED)
    summary = generate(workdir, config=served(tmp_path, endpoint, "api"))
    assert summary["rows_generated"] == 12 and summary["errors"] == 1
    pairs = make_pairs(workdir, "generated", val_fraction=0.3)
    assert json.loads(pairs.schema.metadata[b"skipped"]) == {
        "error": 1, "refused": 1, "empty": 1, "unfinished": 1, "repeated": 2}
    assert sorted(pairs.column("query").to_pylist()) == [
        f"what is {name} for?" for name in ("etas", "iotas", "kappas", "lambdas", "mus",
                                            "thetas")]
    assert pairs.column("validation").to_pylist().count(True) == 2  # a7 and a9
    assert make_pairs(workdir, "generated", val_fraction=0.3, max_pairs=3).num_rows == 3


def test_workdirs_without_usable_generated_queries_are_refused(tmp_path, endpoint):
    workdir = partition(tmp_path / "none", SCRIPTED)
    with pytest.raises(TrainError, match="no generation run over its passages") as caught:
        make_pairs(workdir, "generated")
    assert "configs/generate-queries.yaml" in str(caught.value)

    code, _, err = cli(infer_corpus, "generate", "--workdir", str(workdir), "--config",
                       served(tmp_path, endpoint, "api"), "--prepare")
    assert code == 0, err
    with pytest.raises(TrainError, match=r"generation 'api' has not finished \(0 of 1 prompt"):
        make_pairs(workdir, "generated")

    generate(workdir, config=served(tmp_path, endpoint, "api", "other"))
    with pytest.raises(TrainError, match=r"has 2 models \(api, other\): name one in pairs"):
        make_pairs(workdir, "generated")
    with pytest.raises(TrainError, match="has no model 'gpt'"):
        make_pairs(workdir, "generated", generation="gpt")
    assert make_pairs(workdir, "generated", 0.3, generation="other").schema.metadata[
        b"generation"] == b"other"
    with pytest.raises(TrainError, match="is for pair source generated, not ict"):
        make_pairs(workdir, "ict", generation="other")
    partition(tmp_path / "none", ARTICLES, "--force")  # other passages, the same workdir
    with pytest.raises(TrainError, match="was made from an earlier partition of the passages"):
        make_pairs(workdir, "generated", generation="other")

    useless = partition(tmp_path / "useless", [("A", "as REFUSE."), ("B", "bs EMPTY."),
                                               ("C", "cs FAIL.")])
    generate(useless, config=served(tmp_path, endpoint, "api"))
    with pytest.raises(TrainError, match=r"no generated pairs: no row of generation 'api' "
                                         r"holds a usable query \(skipped: 1 error, 1 refused, "
                                         r"1 empty, 0 unfinished, 0 repeated\)"):
        make_pairs(useless, "generated")

    write_jsonl(tmp_path / "p.jsonl", [{"id": "p1", "prompt": "hello"}])
    code, _, err = cli(infer_corpus, "generate", "--workdir", str(useless), "--prompts",
                       str(tmp_path / "p.jsonl"), "--force", "--config",
                       served(tmp_path, endpoint, "api"), "--set", "generation.template=null")
    assert code == 0, err
    with pytest.raises(TrainError, match="prompted a prompt set, not the workdir's passages"):
        make_pairs(useless, "generated")


@pytest.mark.parametrize("case, message", [
    ("no generation", "no generation run over its passages to take queries from"),
    ("no titles", "no title pairs: no passage has a title"),
    ("generation for ict", "pairs.generation names the generation model of pairs.source "
                           "generated; this sweep's source is ict"),
])
def test_a_sweep_that_cannot_get_its_pairs_is_refused_before_anything_is_written(
        tmp_path, tiny, case, message):
    workdir = partition(tmp_path, ARTICLES, titles=case != "no titles")
    pairs = {"no generation": {}, "no titles": {"source": "title"},
             "generation for ict": {"source": "ict", "generation": "smollm2"}}[case]
    spec = sweep_spec(tmp_path, "refused", tiny, **pairs)
    for executor in (["--executor", "condor", "--dry-run"], []):
        code, _, err = cli(train_models, "sweep", str(spec), "--workdir", str(workdir),
                           *executor)
        assert code == 2 and message in err and err.count("\n") == 1, err
        assert "Traceback" not in err and not (workdir / "train" / "refused").exists()
