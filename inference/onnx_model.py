"""The embedding model in ONNX Runtime: a float32 export, and an int8 variant for CPUs.

On a CPU without AVX-512, PyTorch's float32 matrix products already run near the CPU's peak, so
embedding faster takes cheaper operations: ONNX Runtime's int8 matrix products (0.6x the time
of float32 on a 2-core AVX2 EPYC). Quantizing naively loses too much: with one activation scale
per batch, a few tokens with very large activations set the scale for all (MiniLM: cosine to
float32 down to 0.987). So `quantize_int8` gives each weight matrix one scale per output column
and each activation one scale per token (the row is scaled to a maximum of 1 before the
product and scaled back after it), except where one input feeds several products (a layer's
query, key and value projections): there one scale per batch loses little and saves three
rescalings. MiniLM keeps cosine >= 0.995 with float32 this way, at 1.4-1.5x PyTorch's speed.

Either graph runs only after `verified_session` has checked its embeddings against the PyTorch
model's; otherwise the model stays on PyTorch.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

OPSET = 17
MIN_SCALE = 1e-6  # a row of zeros keeps a finite scale
PRECISIONS = ("float32", "int8")


def verified_session(model: torch.nn.Module, example: tuple[torch.Tensor, torch.Tensor], *,
                     precision: str, threads: int, embed: Callable[[Any], np.ndarray],
                     min_cosine: float) -> tuple[Any, str | None]:
    """(session, None): an ONNX Runtime session of the model in `precision` on `threads`
    threads, whose embedding of each reference text is within `min_cosine` of PyTorch's; or
    (None, why not), when the export fails or the embeddings differ, so that the caller keeps
    PyTorch (any model runs there).

    `example`: a padded batch (ids, mask) to export with. `embed(session)`: the reference
    texts' embeddings through that session, or through PyTorch when given None, batched as
    the caller will run the model (int8's activation scales depend on the batch).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"ONNX precision must be one of {PRECISIONS}, not {precision!r}")
    try:
        graph = export(model, *example)
        if precision == "int8":
            graph = quantize_int8(graph)
        verified = session(graph, threads)
        got = embed(verified)
    except Exception as exc:
        return None, f"the ONNX {precision} export failed ({exc})"
    agreement = lowest_cosine(got, embed(None))
    if agreement < min_cosine:
        return None, (f"in ONNX {precision} its embeddings differ from PyTorch's "
                      f"(cosine {agreement:.4f} < {min_cosine:g})")
    return verified, None


def lowest_cosine(got: np.ndarray, expected: np.ndarray) -> float:
    """The lowest cosine between matching rows: how far the worst text strays."""
    return float(((got * expected).sum(axis=1) / (
        np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1) + 1e-12)).min())


def export(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> bytes:
    """A sentence-transformers model (ids, mask -> sentence embedding) as an ONNX graph.

    `ids` and `mask` are an example batch; it should be padded, so that the graph keeps the
    mask. Exported with eager attention: the SDPA export masks every [batch, heads, tokens,
    tokens] score tensor with Where and checks it for NaN, 14-20% of the run time.
    """
    buffer = io.BytesIO()
    with _eager_attention(model), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's notes on Python control flow
        torch.onnx.export(
            _SentenceEmbedding(model).eval(),  # export restores the mode
            (ids, mask), buffer,
            input_names=["input_ids", "attention_mask"], output_names=["embedding"],
            dynamic_axes={"input_ids": {0: "batch", 1: "tokens"},
                          "attention_mask": {0: "batch", 1: "tokens"},
                          "embedding": {0: "batch"}},
            opset_version=OPSET, dynamo=False)
    return buffer.getvalue()


def quantize_int8(graph: bytes) -> bytes:
    """The exported graph with its weight matrix products in int8 (see the module's note)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load_from_string(graph)
    nodes = model.graph.node
    weights = {w.name: w for w in model.graph.initializer if len(w.dims) == 2
               and w.data_type == onnx.TensorProto.FLOAT}
    consumers: dict[str, list] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    products = [n for n in nodes if n.op_type == "MatMul" and n.input[1] in weights]
    feeds = Counter(node.input[0] for node in products)  # how many products read an input
    vectors = {w.name for w in model.graph.initializer if len(w.dims) == 1}

    added = [numpy_helper.from_array(np.array(MIN_SCALE, np.float32), "int8_min_scale")]
    replaced: dict[str, list] = {}  # by a node's first output, unique in an ONNX graph
    dropped: set[str] = set()
    for node in products:
        x, out = node.input[0], node.output[0]
        w = numpy_helper.to_array(weights[node.input[1]])
        scale = np.maximum(np.abs(w).max(axis=0), 1e-12) / 127
        q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
        name = f"int8_{len(replaced)}"
        added += [numpy_helper.from_array(q, f"{name}_w"),
                  numpy_helper.from_array(scale.astype(np.float32), f"{name}_scale"),
                  numpy_helper.from_array(np.zeros(w.shape[1], np.int8), f"{name}_zero")]
        quantized = [f"{name}_w", f"{name}_scale", f"{name}_zero"]
        if feeds[x] > 1:  # one scale per batch; the bias added inside the product
            bias = _bias_of(out, consumers, vectors)
            if bias is not None:
                dropped.add(bias[0].output[0])
                quantized.append(bias[1])
                out = bias[0].output[0]
            replaced[node.output[0]] = [helper.make_node(
                "DynamicQuantizeMatMul", [x, *quantized], [out], domain="com.microsoft")]
        else:  # one scale per token
            replaced[node.output[0]] = [
                # each row's largest magnitude: max and -min read the row, Abs would write it
                helper.make_node("ReduceMax", [x], [f"{name}_high"], axes=[-1], keepdims=1),
                helper.make_node("ReduceMin", [x], [f"{name}_low"], axes=[-1], keepdims=1),
                helper.make_node("Neg", [f"{name}_low"], [f"{name}_negated"]),
                helper.make_node("Max", [f"{name}_high", f"{name}_negated", "int8_min_scale"],
                                 [f"{name}_rows"]),
                helper.make_node("Div", [x, f"{name}_rows"], [f"{name}_x"]),
                helper.make_node("DynamicQuantizeMatMul", [f"{name}_x", *quantized],
                                 [f"{name}_y"], domain="com.microsoft"),
                helper.make_node("Mul", [f"{name}_y", f"{name}_rows"], [out]),
            ]
    rebuilt = []
    for node in nodes:
        first = node.output[0] if node.output else ""
        if first not in dropped:
            rebuilt.extend(replaced.get(first, [node]))
    del nodes[:]
    nodes.extend(rebuilt)
    still_read = {name for node in nodes for name in node.input}
    kept = [w for w in model.graph.initializer if w.name not in weights or w.name in still_read]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept + added)
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return model.SerializeToString()


def _bias_of(output: str, consumers: dict[str, list], vectors: set[str]) -> tuple | None:
    """(the Add node, the bias name) when a product's only reader adds a constant vector."""
    readers = consumers.get(output, [])
    if len(readers) != 1 or readers[0].op_type != "Add":
        return None
    other = [name for name in readers[0].input if name != output]
    return (readers[0], other[0]) if len(other) == 1 and other[0] in vectors else None


def session(graph: bytes, threads: int):  # type: ignore[no-untyped-def]
    """An ONNX Runtime CPU session of the graph on `threads` threads."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # errors only
    return onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])


def run(session, ids: torch.Tensor, mask: torch.Tensor) -> np.ndarray:  # type: ignore[no-untyped-def]
    """One padded batch through a session: its sentence embeddings."""
    return session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]


@contextlib.contextmanager
def _eager_attention(model: torch.nn.Module) -> Iterator[None]:
    """The model's transformer switched to eager attention for the export, where it can be."""
    auto_model = getattr(model[0], "auto_model", None)
    before = getattr(getattr(auto_model, "config", None), "_attn_implementation", None)
    switch = getattr(auto_model, "set_attn_implementation", None)
    if before in (None, "eager") or switch is None:
        yield
        return
    try:
        switch("eager")
    except (ValueError, ImportError):  # a model without eager attention exports as it is
        yield
        return
    try:
        yield
    finally:
        switch(before)


class _SentenceEmbedding(torch.nn.Module):
    """The sentence-transformers pipeline (transformer, pooling, normalising) as a module
    taking ids and mask: what the exporter traces."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        features = {"input_ids": input_ids, "attention_mask": attention_mask}
        return self.model(features)["sentence_embedding"]
