"""The index under hostile conditions: a model that changed after indexing, a full disk while
partitioning or indexing, readers opening while an index is rebuilt, two builders at once, and
rebuilds that must rank exactly alike."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tantivy
from conftest import ROOT, last_json, run_cli, write_jsonl

from inference.errors import WorkdirError
from inference.workdir import Workdir
from retrieval import MODES, EmbeddedIndex, Searcher, build, build_index, embedded
from retrieval.embedded import POINTER, build_piece
from retrieval.search import query_words

QUERIES = ["climate", "rock", "ice cores air bubbles", "lithium", "vaccine",
           "greenhouse gas emissions", "rare earth mining", "study data"]


def copy_results(source: Path, target: Path) -> Workdir:
    """A workdir holding the same partition and results as `source`, with no index."""
    for part in ("shards", "results"):
        shutil.copytree(source / part, target / part)
    shutil.copy(source / "manifest.json", target / "manifest.json")
    return Workdir(target)


def one_line_failure(proc: subprocess.CompletedProcess, code: int, *words: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr, proc.stderr
    for word in words:
        assert word in proc.stderr, proc.stderr


# --- item 8: the same results give the same rankings and scores ------------------------------

def _rankings(workdir: Workdir, vectors=None) -> tuple[dict, object]:
    """Every mode's (passage id, score) lists for QUERIES at three depths."""
    searcher = Searcher(workdir)
    if vectors is None:
        vectors = searcher.embed(QUERIES)
    ids = searcher.index.passages.column("passage_id").to_pylist()
    ranking = {}
    for query, vector in zip(QUERIES, vectors):
        for mode in MODES:
            for depth, screening in ((3, 5), (5, 20), (10, 100)):
                hits = searcher.rank(query_words(query), vector, mode=mode, depth=depth,
                                     screening_top_k=screening)
                ranking[query, mode, depth] = [(ids[h.key], h.score) for h in hits]
    return ranking, vectors


def test_rebuilds_from_the_same_results_rank_exactly_alike(demo_run, tmp_path, monkeypatch):
    """tantivy's indexing threads put passages into segments, and orders the segments, by
    chance; ties at a cut-off then went either way from one build to the next. A build in
    pieces (processes, or one piece per pool job) ranks and scores as one of a single piece:
    BM25's statistics are the whole index's, not each piece's."""
    workdir = copy_results(demo_run[0], tmp_path / "w")
    monkeypatch.setattr(embedded, "PIECE_MIN_PASSAGES", 1)  # the demo's 3 shards, 3 pieces
    vectors, rankings, ties = None, [], []
    for way in ("one", "one", "processes", "jobs", "processes", "spans"):
        shutil.rmtree(workdir.root / "index", ignore_errors=True)
        if way == "jobs":  # as the pool's index jobs do, then the combine step
            for shards in ([0], [1, 2]):
                assert build_piece(workdir, shards).built
        if way == "spans":  # searched in threads, a span of rows (here a piece) each
            monkeypatch.setattr(embedded, "SPLIT_SEARCH_PASSAGES", 1)
            monkeypatch.setattr(embedded, "usable_cpus", lambda: 3)
        summary = build_index(workdir, workers=1 if way == "one" else 3)
        assert summary.built
        assert summary.pieces_reused + summary.pieces_built == (1 if way == "one" else
                                                                2 if way == "jobs" else 3)
        index = EmbeddedIndex(workdir)
        assert len(index.spans) == (3 if way == "spans" else 1)
        ties.append([index.bm25("study", limit) for limit in (1, 2, 5, 10, 50, 1000)])
        ranking, vectors = _rankings(workdir, vectors)
        rankings.append(ranking)
    differ = [key for key in rankings[0] if any(r[key] != rankings[0][key] for r in rankings)]
    assert not differ, f"{len(differ)} of {len(rankings[0])} rankings differ, e.g. {differ[:3]}"
    # tied scores at every cut-off go to the lower row, in spans as in one search
    assert all(rows == ties[0] for rows in ties)



def test_a_build_shows_the_passages_it_indexes(demo_run, tmp_path, monkeypatch, capsys):
    """The bar counts every passage once, whether the pieces are built here, a shard at a
    time, or in processes that share one count."""
    monkeypatch.setattr(embedded, "PIECE_MIN_PASSAGES", 1)  # the demo's 3 shards, 3 pieces
    workdir = copy_results(demo_run[0], tmp_path / "w")
    total = workdir.manifest().passages
    for workers in (1, 3):
        shutil.rmtree(workdir.root / "index", ignore_errors=True)
        assert build_index(workdir, workers=workers, progress=True).pieces_built == (
            1 if workers == 1 else 3)
        bar = capsys.readouterr().err.split("\r")[-1]
        assert bar.startswith("index: 100%") and f" {total}/{total} " in bar, bar
    build_index(workdir, workers=3, progress=True)  # current: nothing to show
    assert capsys.readouterr().err == ""

def test_added_shards_index_only_their_pieces(demo_run, tmp_path, monkeypatch):
    """A workdir whose shards are the earlier ones plus new ones (a second batch of articles)
    builds pieces for the new shards only, reuses the rest, and ranks as a fresh build."""
    monkeypatch.setattr(embedded, "PIECE_MIN_PASSAGES", 1)
    workdir = copy_results(demo_run[0], tmp_path / "w")
    manifest = json.loads(workdir.manifest_path.read_text())
    first = {**manifest, "shards": manifest["shards"][:2]}
    workdir.manifest_path.write_text(json.dumps(first))
    assert build_index(workdir, workers=2).pieces_built == 2
    workdir.manifest_path.write_text(json.dumps(manifest))
    summary = build_index(workdir, workers=2)
    assert (summary.built, summary.pieces_built, summary.pieces_reused) == (True, 1, 2)
    assert len(list((workdir.root / "index" / "pieces").iterdir())) == 3
    again = build_index(workdir, workers=2)
    assert (again.built, again.pieces_reused) == (False, 3)
    fresh = copy_results(demo_run[0], tmp_path / "fresh")
    build_index(fresh)
    assert _rankings(workdir)[0] == _rankings(fresh)[0]


def test_bm25_ties_go_to_the_lower_row(demo_run):
    index = EmbeddedIndex(Workdir(demo_run[0]))
    everything = index.bm25("study", 1000)
    tied = {}
    for row, score in everything:
        tied.setdefault(score, []).append(row)
    assert any(len(rows) > 1 for rows in tied.values())  # the demo corpus has ties
    assert everything == sorted(everything, key=lambda hit: (-hit[1], hit[0]))
    for limit in range(1, len(everything)):
        assert index.bm25("study", limit) == everything[:limit]


def test_ties_past_the_first_ask_go_to_the_lower_row(tmp_path, monkeypatch):
    """A search asks tantivy for more hits than it needs, for passages tied at the cut;
    when more tie than that, it asks again until it has them all, and rows decide. Here 60
    passages tie for "study" behind one that scores higher, in three pieces; tantivy breaks
    ties in the order its index lists the segments, which here is made the reverse of the
    rows' (as segments listed by their random ids can be)."""
    records = [{"id": "top", "title": "First", "abstract": "study study of samples kept"}]
    records += [{"id": f"a{n}", "title": f"Note {n}",
                 "abstract": f"study of sample s{n:03d} kept in the archive"} for n in range(60)]
    articles = write_jsonl(tmp_path / "articles.jsonl", records)
    workdir = Workdir(tmp_path / "w")
    run_cli("run", "--input", str(articles), "--workdir", str(workdir.root),
            "--set", "shards.passages_per_shard=21")
    monkeypatch.setattr(embedded, "PIECE_MIN_PASSAGES", 1)
    shutil.rmtree(workdir.root / "index")  # `run` built it in one piece
    assert build_index(workdir, workers=3).pieces_built == 3
    meta_path = Path(EmbeddedIndex(workdir).path) / "tantivy" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "segments": meta["segments"][::-1]}))
    index = EmbeddedIndex(workdir)
    everything = index.bm25("study", 1000)
    assert len(everything) == 61 and len({score for _, score in everything[1:]}) == 1
    assert everything == sorted(everything, key=lambda hit: (-hit[1], hit[0]))
    for limit in (1, 2, 3, 10, 30, 45, 60):
        assert index.bm25("study", limit) == everything[:limit], limit


# --- item 2: queries are embedded with the model that built the index ------------------------

def _changed_copy(source: Path, target: Path, dimension: int | None = None) -> Path:
    """A model of the same architecture with other weights, or with a projection to
    `dimension`: real models that embed differently."""
    import torch
    from safetensors.torch import load_file, save_file

    if dimension:
        from sentence_transformers import SentenceTransformer, models

        model = SentenceTransformer(str(source), device="cpu")
        torch.manual_seed(0)
        SentenceTransformer(modules=[*model, models.Dense(384, dimension)]).save(str(target))
        return target
    shutil.copytree(source, target)
    weights = load_file(target / "model.safetensors")
    torch.manual_seed(0)
    save_file({name: w + 0.5 * torch.randn_like(w) if w.is_floating_point() else w
               for name, w in weights.items()}, target / "model.safetensors",
              metadata={"format": "pt"})
    return target


@pytest.fixture(scope="module")
def own_model_run(tmp_path_factory):
    """The demo run with the model from a folder of its own, and that folder."""
    from inference.models import resolve_model

    base = tmp_path_factory.mktemp("own-model")
    model = base / "model"
    shutil.copytree(resolve_model("all-MiniLM-L6-v2"), model)
    workdir = base / "work"
    run_cli("run", "--demo", "--workdir", str(workdir), "--set", f"model.name={model}",
            "--set", "shards.passages_per_shard=30", "--set", "predictions.kind=none")
    return workdir, model


def _search(workdir: Path, mode: str, check: bool = True) -> subprocess.CompletedProcess:
    return run_cli("search", "--workdir", str(workdir), "How do ice cores keep old air?",
                   "--mode", mode, "--top-k", "5", "--json", check=check)


def _qa_api(workdir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "infer_corpus.qa_cli", "--workdir",
                           str(workdir), "--port", "0"], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)


def test_search_embeds_queries_with_the_model_that_built_the_index(own_model_run, tmp_path):
    from infer_corpus.config import load_config
    from inference.demo import demo_corpus_path
    from inference.partition import partition

    workdir, model = own_model_run
    query = "How do ice cores keep old air?"

    def dense() -> list:
        return [hit.to_dict() for hit in Searcher(Workdir(workdir)).search(query, mode="dense")]

    before = dense()
    assert before[0]["topic"] == "geoarchives"
    record = EmbeddedIndex(Workdir(workdir)).model_record()
    assert record["name"] == str(model) and record["dimension"] == 384
    assert len(record["fingerprint"]) == 16 and record["config"]["max_seq_length"] == 256

    # the config now names other models (one of another dimension, one of the same with other
    # weights): the index still holds the first one's embeddings, and searches use it
    for other in (_changed_copy(model, tmp_path / "other-weights"),
                  _changed_copy(model, tmp_path / "dense-128", dimension=128)):
        config = load_config(None, [f"model.name={other}", "shards.passages_per_shard=30",
                                    "predictions.kind=none"])
        assert partition([str(demo_corpus_path())], Workdir(workdir), config).skipped
        assert Workdir(workdir).manifest().config.model.name == str(other)
        assert dense() == before, other


def test_search_and_qa_api_refuse_when_that_model_changed_or_is_gone(own_model_run, tmp_path):
    workdir, model = own_model_run
    saved = tmp_path / "saved"
    shutil.copytree(model, saved)
    try:
        _changed_copy(saved, tmp_path / "changed")
        shutil.copy(tmp_path / "changed" / "model.safetensors", model / "model.safetensors")
        for proc in (_search(workdir, "hybrid", check=False), _qa_api(workdir)):
            one_line_failure(proc, 2, f"built with model '{model}', which has changed since",
                             "infer-corpus run")
        shutil.rmtree(model)
        one_line_failure(_search(workdir, "bm25", check=False), 2, "is no longer there")
    finally:
        shutil.rmtree(model, ignore_errors=True)
        shutil.copytree(saved, model)
    assert last_json(_search(workdir, "dense").stdout)["hits"]


def test_an_index_that_records_no_model_is_refused(demo_run, tmp_path):
    workdir = copy_results(demo_run[0], tmp_path / "w")
    build_index(workdir)
    done = EmbeddedIndex(workdir).path / "done"
    record = json.loads(done.read_text())
    del record["model"]  # as indexes were built before models were recorded
    done.write_text(json.dumps(record))
    with pytest.raises(WorkdirError, match="does not record the model .* `infer-corpus index`"):
        Searcher(workdir)


# --- item 3: a full disk is one line, and a re-run with room resumes -------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs mounted on a folder (needs root), and a function that resizes it."""
    mount = tmp_path / "disk"
    mount.mkdir()
    try:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                              capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("no mount command here")
    if proc.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()}")

    def resize(size: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(mount)], check=True)

    yield mount, resize
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_while_partitioning_is_one_line_and_a_rerun_resumes(small_disk, tmp_path):
    import random

    mount, resize = small_disk
    rng = random.Random(0)
    words = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(3, 9)))
             for _ in range(5000)]
    articles = write_jsonl(tmp_path / "articles.jsonl", [
        {"id": f"a{n}", "title": f"Article {n}", "abstract": " ".join(rng.choices(words, k=90))}
        for n in range(3000)])
    expected = last_json(run_cli("partition", "--input", str(articles), "--workdir",
                                 str(tmp_path / "roomy"), "--json").stdout)
    resize(256 << 10)
    workdir = mount / "work"
    proc = run_cli("partition", "--input", str(articles), "--workdir", str(workdir),
                   check=False)
    one_line_failure(proc, 1, "no space left on device to write", str(workdir),
                     "run the same command again to resume")  # a part's map output, here
    resize(64 << 20)
    again = last_json(run_cli("partition", "--input", str(articles), "--workdir",
                              str(workdir), "--json").stdout)
    assert {k: again[k] for k in ("articles", "passages", "shards")} == \
        {k: expected[k] for k in ("articles", "passages", "shards")}
    for shard in sorted((tmp_path / "roomy" / "shards").iterdir()):
        assert (workdir / "shards" / shard.name).read_bytes() == shard.read_bytes()


# room left for the index: none of its vectors (57 kB), the vectors but not the passages
# (108 kB), both but not the tantivy files (86 kB)
@pytest.mark.parametrize("room", [24 << 10, 128 << 10, 220 << 10])
def test_a_full_disk_while_indexing_is_one_line_and_a_rerun_resumes(small_disk, demo_run,
                                                                     room):
    mount, resize = small_disk
    workdir = copy_results(demo_run[0], mount / "work")
    (workdir.root / ".lock").touch()
    resize(shutil.disk_usage(mount).used + room)
    proc = run_cli("index", "--workdir", str(workdir.root), check=False)
    one_line_failure(proc, 1, "no space left on device to write the index",
                     str(workdir.root / "index" / "embedded-"), "run the same command again")
    assert not list((workdir.root / "index").glob("embedded-*"))  # the space is given back
    resize(16 << 20)
    assert "index built: 75 passages" in run_cli("index", "--workdir", str(workdir.root)).stdout
    assert last_json(_search(workdir.root, "bm25").stdout)["hits"]


# --- item 4: readers never see a half-built index; builders take the workdir's lock ----------

READER = """
import json, sys, time
from pathlib import Path
from retrieval import EmbeddedIndex
from inference.workdir import Workdir

workdir, control = Workdir(sys.argv[1]), Path(sys.argv[2])
opened, errors = 0, []
while not (control / "stop").exists():
    if (control / "pause").exists():  # the test is setting up a previous build
        (control / f"paused-{sys.argv[3]}").touch()
        time.sleep(0.005)
        continue
    (control / f"paused-{sys.argv[3]}").unlink(missing_ok=True)
    try:
        index = EmbeddedIndex(workdir)
        assert len(index) == len(index.passages) == 75 and index.model_record()
        assert index.bm25("ice cores", 3)
        opened += 1
    except Exception as exc:
        errors.append(repr(exc))
print(json.dumps({"opened": opened, "errors": errors}))
"""


def test_readers_opening_while_the_index_is_rebuilt_get_a_complete_one(demo_run, tmp_path):
    """Reader processes open the index over and over while builds replace it (and delete the
    build they replace): every open gets one complete build."""
    workdir = copy_results(demo_run[0], tmp_path / "w")
    build_index(workdir)
    root = workdir.root / "index"
    current = json.loads((root / POINTER).read_text())["name"]
    control = tmp_path / "control"
    control.mkdir()

    def wait_for(done) -> None:
        for _ in range(6000):
            if done():
                return
            time.sleep(0.005)
        raise AssertionError("the readers did not answer")

    readers = [subprocess.Popen([sys.executable, "-c", READER, str(workdir.root),
                                 str(control), str(n)], stdout=subprocess.PIPE, text=True,
                                cwd=ROOT) for n in range(2)]
    paused = [control / f"paused-{n}" for n in range(len(readers))]
    try:
        for _ in range(10):
            (control / "pause").touch()
            wait_for(lambda: all(path.exists() for path in paused))
            shutil.copytree(root / current, root / "embedded-previous")
            (root / POINTER).write_text(json.dumps({"name": "embedded-previous"}))
            shutil.rmtree(root / current)
            (control / "pause").unlink()
            wait_for(lambda: not any(path.exists() for path in paused))
            assert build_index(workdir).built  # replaces embedded-previous, deletes it
            assert not (root / "embedded-previous").exists()
    finally:
        (control / "stop").touch()
        reports = [json.loads(reader.communicate(timeout=60)[0]) for reader in readers]
    errors = [error for report in reports for error in report["errors"]]
    assert not errors, f"{len(errors)} failed opens, e.g. {errors[:3]}"
    assert all(report["opened"] for report in reports)


def test_a_build_refuses_while_another_process_holds_the_workdir(demo_run, tmp_path):
    """Readers need no lock and keep working meanwhile."""
    workdir = copy_results(demo_run[0], tmp_path / "w")
    build_index(workdir)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom inference.workdir import Workdir\n"
         "with Workdir(sys.argv[1]).lock():\n    print('held', flush=True)\n"
         "    time.sleep(120)\n", str(workdir.root)],
        stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(WorkdirError, match=f"in use by PID {holder.pid}"):
            build(workdir)
        assert Searcher(workdir).search("ice cores", mode="bm25")
    finally:
        holder.kill()
        holder.wait()
    assert not build(workdir).built


def test_spans_are_whole_pieces_of_about_equal_size(monkeypatch):
    monkeypatch.setattr(embedded, "SPLIT_SEARCH_PASSAGES", 100)
    starts = np.array([0, 40, 90, 100, 150, 200])
    assert embedded._spans(starts, 2) == [(0, 100), (100, 200)]
    assert embedded._spans(starts, 3) == [(0, 90), (90, 150), (150, 200)]
    assert embedded._spans(starts, 1) == [(0, 200)]
    assert embedded._spans(np.array([0, 200]), 4) == [(0, 200)]  # one piece: one span
    assert embedded._spans(np.array([0, 40, 99]), 2) == [(0, 99)]  # too small to split


def test_an_index_built_without_minus_row_is_searched_in_one_thread(demo_run, tmp_path,
                                                                    monkeypatch):
    """An index built before `minus_row` existed (which the span search's exclusions need)
    still opens and searches, in one span, with the rankings of a current build."""
    fresh = copy_results(demo_run[0], tmp_path / "fresh")
    build_index(fresh)
    monkeypatch.setattr(embedded, "PIECE_MIN_PASSAGES", 1)
    monkeypatch.setattr(embedded, "SPLIT_SEARCH_PASSAGES", 1)
    monkeypatch.setattr(embedded, "usable_cpus", lambda: 3)
    current = embedded._schema

    def without_minus_row():
        builder = tantivy.SchemaBuilder()
        builder.add_text_field("title", stored=False, tokenizer_name="en_stem",
                               index_option="freq")
        builder.add_text_field("text", stored=False, tokenizer_name="en_stem",
                               index_option="freq")
        builder.add_text_field("topic", stored=False, tokenizer_name="raw", index_option="basic")
        builder.add_integer_field("row", indexed=True, fast=True)
        return builder.build()

    older = copy_results(demo_run[0], tmp_path / "older")
    monkeypatch.setattr(embedded, "_schema", without_minus_row)
    build_index(older, workers=3)
    monkeypatch.setattr(embedded, "_schema", current)
    assert len(EmbeddedIndex(older).spans) == 1
    assert len(EmbeddedIndex(fresh).spans) == 1  # one piece
    assert _rankings(older)[0] == _rankings(fresh)[0]
