"""The fast paths keep their numbers: stored token ids, reduced precision, OOM recovery."""

from __future__ import annotations

import itertools
import json
import logging

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import run_cli

from inference.config import ModelConfig
from inference.tokenize import TokenIds
from inference.workdir import Workdir

TEXTS = [
    "Ice cores from Greenland preserve bubbles of ancient air.",
    "Triassic carbonate platforms of the Dolomites grew on subsiding volcanic basins. " * 12,
    "Lithium.",
    "Wastewater surveillance tracked SARS-CoV-2 variants ahead of clinical testing. " * 4,
]


@pytest.fixture(scope="module")
def encoder():
    from inference.embed import Encoder

    return Encoder(ModelConfig(batch_size=3, batch_tokens=400, dtype="float32"), device="cpu")


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_token_ids_pad_and_round_trip_through_arrow():
    tokens = TokenIds.from_lists([[5, 6, 7], [], [8]])
    assert tokens.lengths().tolist() == [3, 0, 1]
    ids, mask = tokens.padded(np.array([0, 2, 1]), pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0], [0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]
    again = TokenIds.from_arrow(tokens.to_arrow().slice(1))
    assert again.lengths().tolist() == [0, 1]
    assert again.padded(np.array([1]), 0)[0].tolist() == [[8]]


def test_small_batches_give_the_same_embeddings_in_input_order(encoder):
    from inference.embed import Encoder

    one_batch = Encoder(ModelConfig(batch_size=64, batch_tokens=100_000, dtype="float32"),
                        device="cpu")
    expected = one_batch.encode_texts(TEXTS)
    got = encoder.encode_texts(TEXTS)  # 3 passages / 400 tokens per batch: several batches
    assert cosine(got, expected).min() > 0.9999


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_reduced_precision_matches_fp32(encoder, dtype):
    from inference.embed import Encoder

    reference = encoder.encode_texts(TEXTS)
    low = Encoder(ModelConfig(dtype=dtype, batch_size=3), device="cpu")
    assert low.dtype == getattr(torch, dtype)
    assert cosine(low.encode_texts(TEXTS), reference).min() >= 0.999


def test_out_of_memory_halves_the_batch_and_continues(encoder, monkeypatch):
    """CI has no GPU: the model raises CUDA's own OOM error for batches over two sequences."""
    reference = encoder.encode_texts(TEXTS)
    real_embed = encoder._embed
    calls = []

    def limited(ids, mask, padded):
        calls.append(len(ids))
        if len(ids) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_embed(ids, mask, padded)

    monkeypatch.setattr(encoder, "_embed", limited)
    encoder.batch_size, encoder.batch_tokens = 4, 10_000
    got = encoder.encode_texts(TEXTS)
    assert calls[0] == 4 and max(calls[1:]) <= 2
    assert encoder.batch_size <= 2
    assert cosine(got, reference).min() > 0.9999


def test_prepared_mask_path_matches_the_models_own_forward(encoder):
    """Our 4D mask (which spares a GPU a sync per batch) gives what transformers' own does."""
    assert encoder.prepared_mask
    reference = encoder.encode_texts(TEXTS)
    encoder.prepared_mask = False
    try:
        assert cosine(encoder.encode_texts(TEXTS), reference).min() > 0.99999
    finally:
        encoder.prepared_mask = True


def test_a_model_that_rejects_the_prepared_mask_keeps_its_own_masking(monkeypatch):
    from inference.embed import Encoder

    real_embed = Encoder._embed

    def strict(self, ids, mask, padded):  # as a model whose code cannot take a 4D bool mask
        if self.prepared_mask:
            raise TypeError("unsupported mask")
        return real_embed(self, ids, mask, padded)

    monkeypatch.setattr(Encoder, "_embed", strict)
    encoder = Encoder(ModelConfig(max_seq_length=32, dtype="float32"), device="cpu")
    assert not encoder.prepared_mask
    assert encoder.encode_texts(TEXTS).shape == (len(TEXTS), encoder.dimension)


def test_tokenizing_processes_give_the_same_ids_and_embeddings():
    from inference.embed import Encoder

    texts = [f"{i} " + TEXTS[i % len(TEXTS)] for i in range(1300)]  # several pool pieces
    model = ModelConfig(max_seq_length=32, dtype="float32")
    threaded = Encoder(model, device="cpu", tokenize_processes=0)
    pooled = Encoder(model, device="cpu", tokenize_processes=2)
    try:
        chunks = list(pooled.tokenizer_pool().chunks(texts, 600))
        assert [offset for offset, _ in chunks] == [0, 1024]  # whole pieces of 512 per chunk
        joined = TokenIds.concatenate([tokens for _, tokens in chunks])
        expected = threaded.tokenize(texts)
        assert np.array_equal(joined.offsets, expected.offsets)
        assert np.array_equal(joined.values, expected.values)
        got = pooled.encode_texts(texts)
        assert cosine(got, threaded.encode_texts(texts)).min() > 0.9999
    finally:
        pooled.close()


def test_partition_time_token_ids_are_used_and_give_the_same_result(demo_path, tmp_path):
    common = ["--set", "shards.passages_per_shard=40", "--set", "model.max_seq_length=64",
              "--set", "predictions.kind=none"]
    plain, tokenized = tmp_path / "plain", tmp_path / "tokenized"
    run_cli("run", "--input", str(demo_path), "--workdir", str(plain), *common)
    run_cli("run", "--input", str(demo_path), "--workdir", str(tokenized), *common,
            "--set", "shards.tokenize=true")
    manifest = Workdir(tokenized).manifest().data
    assert manifest["tokenizer"]["max_seq_length"] == 64
    shard = pq.read_table(Workdir(tokenized).shard_path(0))
    assert shard.column("input_ids").null_count == 0
    assert max(len(x) for x in shard.column("input_ids").to_pylist()) <= 64
    for n in range(len(manifest["shards"])):
        a = pq.read_table(Workdir(plain).result_path(n))
        b = pq.read_table(Workdir(tokenized).result_path(n))
        assert a.column("passage_id").equals(b.column("passage_id"))
        va = np.stack(a.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32)
        vb = np.stack(b.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32)
        assert cosine(va, vb).min() > 0.999


def test_ids_from_another_tokenizer_setting_are_not_used(demo_path, tmp_path):
    """Shards tokenized for 64 tokens, model run at 32: the worker re-tokenizes."""
    workdir = Workdir(tmp_path / "w")
    run_cli("partition", "--input", str(demo_path), "--workdir", str(workdir.root),
            "--set", "shards.tokenize=true", "--set", "model.max_seq_length=64")
    from inference.config import config_from_dict
    from inference.worker import ShardWorker

    manifest = workdir.manifest().data
    config = config_from_dict({**manifest["config"],
                               "model": {**manifest["config"]["model"], "max_seq_length": 32}})
    worker = ShardWorker(workdir, config=config)
    assert not worker._can_use_stored_ids()
    table = pq.read_table(workdir.shard_path(0))
    assert worker._token_ids(table) is None


def test_shard_tokenizer_processes_give_the_rust_tokenizers_ids_in_order():
    from inference.config import load_config
    from inference.tokenize import ShardTokenizer

    titles = [f"Title {i}" if i % 3 else None for i in range(2500)]  # 5 pieces for 2
    texts = [" ".join(["word"] * (i % 300)) + f" passage {i}" for i in range(2500)]
    threaded = ShardTokenizer.load(load_config(), processes=0)
    pooled = ShardTokenizer.load(load_config(), processes=2)
    try:
        expected, got = threaded.encode(titles, texts), pooled.encode(titles, texts)
        assert np.array_equal(got.offsets, expected.offsets)
        assert np.array_equal(got.values, expected.values)
        assert len(pooled.encode([], [])) == 0
    finally:
        pooled.close()


def _texts_of(path, title: str, text: str, count: int) -> list[str]:
    from inference.text import embedding_text

    with open(path, encoding="utf-8") as handle:
        records = [json.loads(line) for line in itertools.islice(handle, count)]
    return [embedding_text(r.get(title), r[text]) for r in records]


def test_int8_on_a_cpu_keeps_cosine_with_float32(demo_path):
    """The CPU default: int8 through ONNX Runtime, within cosine 0.99 of sentence-transformers'
    float32 on every text (the demo corpus and, where ../shared has it, Cranfield abstracts)."""
    from conftest import CRANFIELD
    from sentence_transformers import SentenceTransformer

    from inference.embed import Encoder
    from inference.models import resolve_model

    texts = TEXTS + _texts_of(demo_path, "title", "abstract", 100)
    if (CRANFIELD / "corpus.jsonl").is_file():
        texts += _texts_of(CRANFIELD / "corpus.jsonl", "title", "text", 150)
    encoder = Encoder(ModelConfig(), device="cpu")
    assert encoder.precision == "int8"
    got = encoder.encode_texts(texts)
    reference = SentenceTransformer(resolve_model("all-MiniLM-L6-v2"), device="cpu")
    expected = reference.encode(texts, convert_to_numpy=True)
    agreement = cosine(got, expected)
    assert agreement.min() >= 0.99
    assert agreement.mean() >= 0.995


def test_int8_that_drifts_from_float32_falls_back_to_float32(monkeypatch, caplog, encoder):
    from inference import embed

    monkeypatch.setattr(embed, "INT8_MIN_COSINE", 1.01)  # no int8 model agrees this well
    with caplog.at_level(logging.WARNING, logger="inference.embed"):
        fallback = embed.Encoder(ModelConfig(dtype="int8"), device="cpu")
    assert fallback.precision == "float32"
    assert "the model runs in float32" in caplog.text
    assert cosine(fallback.encode_texts(TEXTS), encoder.encode_texts(TEXTS)).min() > 0.9999


def test_int8_graph_scales_shared_inputs_per_batch_and_the_rest_per_token():
    """MiniLM's 6 layers: query/key/value read one input (one scale per batch, bias inside
    the product); the attention output and both feed-forward products scale per token."""
    import onnx

    from inference import onnx_model
    from inference.embed import DeviceTokens, Encoder

    encoder = Encoder(ModelConfig(dtype="float32"), device="cpu")
    _, ids, mask, _ = DeviceTokens(encoder.tokenize(["two words", "one"]), 0, encoder.pad_id,
                                   encoder.device).batch(0, 2, 1)
    graph = onnx.load_from_string(onnx_model.quantize_int8(
        onnx_model.export(encoder.model, ids, mask)))
    products = [n for n in graph.graph.node if n.op_type == "DynamicQuantizeMatMul"]
    assert len(products) == 36
    assert sum(len(n.input) == 5 for n in products) == 18  # per batch, with the bias
    assert sum(n.op_type == "ReduceMin" for n in graph.graph.node) == 18  # per token
    assert not any(n.op_type == "MatMul" and n.input[1] in {w.name for w in graph.graph.initializer}
                   for n in graph.graph.node)
