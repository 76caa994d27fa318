"""Batch generation: every prompt shard through every model of the study, resumably.

Layout inside a workdir:

    prompts/shard-NNNNN.parquet              the prompts (see inference.prompts)
    generations/manifest.json                the prompt step, the config, and per model its
                                             keys and provenance
    generations/MODEL_KEY/shard-NNNNN.parquet  outputs (schema infer-corpus.generation v1)
    generations/MODEL_KEY/shard-NNNNN.checkpoint.parquet  finished rows of an unfinished shard

An output file records the `generation_key` that made it (the prompts, the model and its
file hash, chat template, system prompt and sampling settings) and the `label_key` of its
labels; a file whose generation key is current is never generated again, and one whose labels
alone are stale is only relabelled. A worker writes the finished rows of its shard to the
checkpoint every `generation.checkpoint_rows` rows (atomically), so a worker killed at any
moment continues where the checkpoint ends, with the same batches: greedy outputs come out
identical to an uninterrupted run's. One row that fails is recorded with its error; the shard
completes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from ..causal_lm import model_files
from ..config import ModelConfig
from ..errors import UsageError, WorkdirError
from ..llm_backends import Backend, Generation, make_backend, messages
from ..parts import fingerprint_inputs
from ..schema import SCHEMA_VERSION, check_schema_version
from ..version import __version__
from ..workdir import Workdir, atomic_path, write_json_atomic
from .config import GenerationConfig, GenerationModelConfig
from .manifest import (
    GENERATIONS_DIR,
    MANIFEST,
    MANIFEST_FORMAT,
    GenerationManifest,
    ModelEntry,
)
from .prompts import (
    partition_prompts,
    passage_prompts,
    prompt_shard_path,
    prompts_entry,
    read_prompt_shard,
)

FINISH_REASONS = ("stop", "length", "error")
Event = Callable[[dict[str, Any]], None]

GENERATION_SCHEMA = pa.schema(
    [
        pa.field("row_id", pa.string(), nullable=False),
        pa.field("prompt_hash", pa.string(), nullable=False),
        pa.field("output", pa.string()),
        pa.field("finish_reason", pa.string(), nullable=False),
        pa.field("prompt_tokens", pa.int32()),
        pa.field("output_tokens", pa.int32()),
        pa.field("error", pa.string()),
        pa.field("label", pa.string()),
        pa.field("label_score", pa.float32()),
    ],
    metadata={"schema": "infer-corpus.generation", "schema_version": str(SCHEMA_VERSION)},
)


def generations_dir(root: Path) -> Path:
    return root / GENERATIONS_DIR


def manifest_path(root: Path) -> Path:
    return root / MANIFEST


def output_path(root: Path, model: str, shard: int) -> Path:
    return generations_dir(root) / model / f"shard-{shard:05d}.parquet"


def checkpoint_path(output: Path) -> Path:
    return output.with_name(output.name.replace(".parquet", ".checkpoint.parquet"))


def _hash(value: Any) -> str:
    blob = value if isinstance(value, str) else orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(blob.encode() if isinstance(blob, str) else blob).hexdigest()


def prompt_hash(chat: list[dict[str, str]]) -> str:
    """What the model was asked: system prompt and prompt (the chat template is provenance)."""
    return _hash(chat)[:16]


# ---------------------------------------------------------------- keys and the manifest


def _model_entry(key: str, spec: GenerationModelConfig, config: GenerationConfig,
                 embedding: ModelConfig, prompts: dict[str, Any],
                 previous: dict[str, Any] | None) -> dict[str, Any]:
    """A model's keys and provenance: what made (or will make) its outputs."""
    files: list[dict[str, Any]] = []
    if spec.backend != "openai":
        paths = model_files(spec.model)
        files = fingerprint_inputs(paths, (previous or {}).get("files"))
    model_hash = _hash([(Path(f["path"]).name, f["sha256"]) for f in files]) if files else None
    chat_template = spec.chat_template
    if chat_template and chat_template != "none" and Path(chat_template).is_file():
        chat_template = Path(chat_template).read_text(encoding="utf-8")
    provenance = {
        "backend": spec.backend, "model": spec.model, "model_sha256": model_hash,
        "endpoint": spec.base_url if spec.backend == "openai" else None,
        "dtype": spec.dtype,
        "chat_template": "model" if chat_template is None else (
            "none" if chat_template == "none" else "custom"),
        "chat_template_hash": _hash(chat_template)[:16] if chat_template else None,
        "prompt_template_hash": prompts.get("template_hash"),
        "sampling": config.sampling(),
        "code_version": __version__,
    }
    generation_key = _hash({"prompts": prompts["key"], **provenance, "code_version": None})[:16]
    return {"generation_key": generation_key,
            "label_key": label_key(config, embedding),
            "provenance": provenance, "files": files}


def label_key(config: GenerationConfig, embedding: ModelConfig) -> str:
    """What decides the labels of outputs: the labelling settings (and the embedding model
    that zero-shot labels compare with)."""
    labels = dataclasses.asdict(config.labels)
    if config.labels.kind == "none":
        return "none"
    if config.labels.kind == "zero-shot":
        labels["embedding_model"] = embedding.name
    if config.labels.kind == "refusal":
        from .refusals import RULES_VERSION

        labels["rules"] = RULES_VERSION
    return _hash(labels)[:16]


@dataclass
class ModelRun:
    """What a worker needs to run one model over shards, read from the generation manifest."""

    key: str
    spec: GenerationModelConfig
    config: GenerationConfig
    embedding: ModelConfig
    generation_key: str
    label_key: str
    provenance: dict[str, Any]

    @classmethod
    def from_manifest(cls, manifest: GenerationManifest, key: str) -> ModelRun:
        entry = manifest.model(key)
        config = manifest.config
        if key not in config.models:
            raise WorkdirError(f"model {key!r} has no settings in the generation manifest")
        return cls(key, config.models[key], config, manifest.embedding,
                   entry.generation_key, entry.label_key, entry.provenance)


def output_keys(path: Path) -> tuple[str, str, int] | None:
    """(generation key, label key, rows) of an output file; None when missing or unreadable."""
    try:
        meta = pq.read_metadata(path)
    except (OSError, pa.ArrowException):
        return None
    tags = meta.schema.to_arrow_schema().metadata or {}
    return (tags.get(b"generation_key", b"").decode(), tags.get(b"label_key", b"").decode(),
            meta.num_rows)


def output_state(path: Path, rows: int, run: ModelRun | ModelEntry) -> str:
    """done (current outputs and labels), relabel (current outputs, stale labels), partial
    (a checkpoint holds some rows) or pending."""
    found = output_keys(path) if path.is_file() else None
    if found and found[0] == run.generation_key and found[2] == rows:
        return "done" if found[1] == run.label_key else "relabel"
    return "partial" if checkpoint_path(path).is_file() else "pending"


# ---------------------------------------------------------------- the worker


@dataclass
class GenerationOutcome:
    model: str
    shard: int
    rows: int
    state: str  # done, skipped, relabelled, checkpointed
    generated: int = 0
    errors: int = 0
    output_tokens: int = 0
    seconds: float = 0.0


def _table(row_ids: list[str], hashes: list[str], gens: list[Generation],
           labels: list[str | None] | None = None, scores: Any = None) -> pa.Table:
    n = len(row_ids)
    return pa.table({
        "row_id": pa.array(row_ids, pa.string()),
        "prompt_hash": pa.array(hashes, pa.string()),
        "output": pa.array([g.text for g in gens], pa.string()),
        "finish_reason": pa.array([g.finish_reason for g in gens], pa.string()),
        "prompt_tokens": pa.array([g.prompt_tokens for g in gens], pa.int32()),
        "output_tokens": pa.array([g.output_tokens for g in gens], pa.int32()),
        "error": pa.array([g.error for g in gens], pa.string()),
        "label": pa.array(labels or [None] * n, pa.string()),
        "label_score": pa.array([None] * n if scores is None else scores, pa.float32()),
    }, schema=GENERATION_SCHEMA)


def _generations(table: pa.Table) -> dict[str, Generation]:
    cols = {name: table.column(name).to_pylist() for name in
            ("row_id", "output", "finish_reason", "prompt_tokens", "output_tokens", "error")}
    return {row_id: Generation(*values) for row_id, *values in zip(
        cols["row_id"], cols["output"], cols["finish_reason"], cols["prompt_tokens"],
        cols["output_tokens"], cols["error"])}


class GenerationWorker:
    """Runs one model over prompt shards; holds the model (and the labeller) between shards."""

    def __init__(self, run: ModelRun, threads: int = 0, on_event: Event | None = None) -> None:
        self.run = run
        self.threads = threads
        self.on_event = on_event or (lambda event: None)
        self._backend: Backend | None = None
        self._labeller: Any = None
        self.loaded: dict[str, Any] = {}

    def backend(self) -> Backend:
        if self._backend is None:
            self._backend = make_backend(self.run.spec, self.run.config, self.threads)
            self.loaded = self._backend.provenance()
            self.on_event({"event": "ready", "model": self.run.key})
        return self._backend

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
            self._backend = None

    def run_shard(self, shard: int, prompts: Path, rows: int, output: Path, *,
                  stop_after: float = 0) -> GenerationOutcome:
        """Generate one shard into `output`; with `stop_after` seconds, return after the first
        checkpoint past that time ("checkpointed": run again to continue)."""
        started = time.monotonic()
        state = output_state(output, rows, self.run)
        outcome = GenerationOutcome(self.run.key, shard, rows, "skipped")
        if state == "done":
            self.on_event({"event": "done", "model": self.run.key, "shard": shard,
                           "rows": rows, "skipped": True})
            return outcome
        if state == "relabel":
            table = pq.read_table(output)
            gens = _generations(table)
            row_ids = table.column("row_id").to_pylist()
            self._write(output, row_ids, table.column("prompt_hash").to_pylist(),
                        [gens[r] for r in row_ids])
            outcome.state = "relabelled"
            return outcome
        table = read_prompt_shard(prompts, rows)
        row_ids = table.column("row_id").to_pylist()
        chats = [messages(p, self.run.config.system_prompt)
                 for p in table.column("prompt").to_pylist()]
        hashes = [prompt_hash(chat) for chat in chats]
        checkpoint = checkpoint_path(output)
        done = self._read_checkpoint(checkpoint, set(row_ids))
        todo = [i for i, r in enumerate(row_ids) if r not in done]
        if todo:
            backend = self.backend()
            prepared = backend.prepare(chats)
            order = sorted(range(rows), key=lambda i: (-prepared[i].length, i))
            position = {i: p for p, i in enumerate(order)}
            todo = sorted(todo, key=position.__getitem__)
            step = self.run.config.checkpoint_rows
            for start in range(0, len(todo), step):
                chunk = todo[start:start + step]
                gens = backend.generate([prepared[i] for i in chunk], position[chunk[0]])
                for i, gen in zip(chunk, gens):
                    done[row_ids[i]] = gen
                    outcome.generated += 1
                    outcome.output_tokens += gen.output_tokens or 0
                kept = [(r, h) for r, h in zip(row_ids, hashes) if r in done]
                with atomic_path(checkpoint) as tmp:
                    pq.write_table(self._with_meta(_table(
                        [r for r, _ in kept], [h for _, h in kept], [done[r] for r, _ in kept])),
                        tmp)
                self.on_event({"event": "checkpoint", "model": self.run.key, "shard": shard,
                               "rows": len(done), "of": rows, "generated": outcome.generated,
                               "output_tokens": outcome.output_tokens})
                if (stop_after and start + step < len(todo)
                        and time.monotonic() - started >= stop_after):
                    outcome.state = "checkpointed"
                    outcome.seconds = time.monotonic() - started
                    return outcome
        gens = [done[r] for r in row_ids]
        self._write(output, row_ids, hashes, gens)
        with contextlib.suppress(FileNotFoundError):
            checkpoint.unlink()
        outcome.state = "done"
        outcome.errors = sum(g.finish_reason == "error" for g in gens)
        outcome.seconds = time.monotonic() - started
        self.on_event({"event": "done", "model": self.run.key, "shard": shard, "rows": rows,
                       "skipped": False})
        return outcome

    def _read_checkpoint(self, path: Path, row_ids: set[str]) -> dict[str, Generation]:
        """Rows a killed worker finished, when they were made with this generation key."""
        if not path.is_file():
            return {}
        found = output_keys(path)
        if not found or found[0] != self.run.generation_key:
            return {}
        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowException):
            return {}
        return {r: g for r, g in _generations(table).items() if r in row_ids}

    def _with_meta(self, table: pa.Table) -> pa.Table:
        run = self.run
        provenance = {**run.provenance, "model_key": run.key, **self.loaded}
        return table.replace_schema_metadata({
            **GENERATION_SCHEMA.metadata,
            b"generation_key": run.generation_key.encode(),
            b"label_key": run.label_key.encode(),
            b"model_key": run.key.encode(),
            b"provenance": orjson.dumps(provenance, option=orjson.OPT_SORT_KEYS),
            b"code_version": __version__.encode(),
        })

    def _write(self, output: Path, row_ids: list[str], hashes: list[str],
               gens: list[Generation]) -> None:
        labels, scores = self._label([g.text for g in gens])
        with atomic_path(output) as tmp:
            pq.write_table(self._with_meta(_table(row_ids, hashes, gens, labels, scores)), tmp,
                           compression="zstd")

    def _label(self, texts: list[str | None]) -> tuple[list[str | None] | None, Any]:
        """Labels of the outputs by the prediction step (refusal rules, zero-shot topics or a
        classifier)."""
        labels_config = self.run.config.labels
        present = [i for i, t in enumerate(texts) if t is not None and t.strip()]
        if labels_config.kind == "none" or not present:
            return None, None
        if self._labeller is None:
            self._labeller = _labeller(self.run)
        predictor, encoder = self._labeller
        batch = [texts[i] for i in present]
        embeddings = encoder.encode_texts(batch) if encoder is not None else None
        found, found_scores = predictor.predict(batch, embeddings)
        labels: list[str | None] = [None] * len(texts)
        scores = np.full(len(texts), np.nan, dtype=np.float32)
        for i, label, score in zip(present, found, found_scores):
            labels[i], scores[i] = label, score
        return labels, [None if np.isnan(s) else float(s) for s in scores]


def _labeller(run: ModelRun) -> tuple[Any, Any]:
    from ..devices import pick_device
    from ..predict import TextClassifier, ZeroShotTopics

    labels = run.config.labels
    if labels.kind == "refusal":
        from .refusals import RefusalRules

        return RefusalRules(), None
    if labels.kind == "classifier":
        return TextClassifier(labels.model or "", pick_device("auto")), None
    from ..embed import Encoder

    encoder = Encoder(run.embedding)
    return ZeroShotTopics(encoder, labels.topics), encoder


# ---------------------------------------------------------------- a whole study, locally


def prepare(workdir: Workdir, config: Any, patterns: list[str] | None = None, *,
            force: bool = False) -> GenerationManifest:
    """The prompt step (a prompt set, the corpus's passages through the template, or the
    prompts already there), then each model's keys and provenance, into the generation
    manifest. `config` is a whole config with `generation` and `model` sections."""
    g: GenerationConfig = config.generation
    root = workdir.root
    found = GenerationManifest.read(root)
    previous = found.data if found else None
    old_prompts = (previous or {}).get("prompts")

    def starting() -> None:  # the old prompt shards are about to go
        if previous:
            write_json_atomic(manifest_path(root), {**previous, "prompts": {"state": "running"}})

    if patterns:
        if g.template:
            raise UsageError("generation.template applies to a corpus's passages; a prompt "
                             "set's prompts are used as they are (drop one of them)")
        summary, inputs = partition_prompts(patterns, workdir, g, old_prompts, force=force,
                                            starting=starting)
        entry = prompts_entry(summary, inputs, None)
    elif g.template:
        summary = passage_prompts(workdir, g, old_prompts, force=force, starting=starting)
        entry = prompts_entry(summary, None, g.template)
    elif old_prompts and old_prompts.get("state") == "done":
        summary, entry = None, old_prompts
    else:
        raise UsageError(f"no prompts: give --prompts FILE... (a prompt set), or set "
                         f"generation.template to prompt over {root}'s passages")
    if summary is not None and summary.skipped:
        entry = old_prompts
    old_models = (previous or {}).get("models") or {}
    models = {key: _model_entry(key, spec, g, config.model, entry, old_models.get(key))
              for key, spec in g.models.items()}
    data = {"format": MANIFEST_FORMAT, "schema_version": SCHEMA_VERSION,
            "code_version": __version__,
            "config": {"generation": dataclasses.asdict(g),
                       "model": dataclasses.asdict(config.model)},
            "prompts": entry, "models": models}
    write_json_atomic(manifest_path(root), data)
    return GenerationManifest(data, manifest_path(root))


def pending(workdir: Workdir, manifest: GenerationManifest, models: list[str] | None = None
            ) -> dict[str, list[int]]:
    """Per model, the prompt shards whose outputs are missing, partial or stale."""
    root, entries = workdir.root, manifest.models
    chosen = models or list(entries)
    unknown = [m for m in chosen if m not in entries]
    if unknown:
        raise UsageError(f"model {unknown[0]!r} is not in generation.models "
                         f"({', '.join(entries)})")
    return {key: [s.shard for s in manifest.shards
                  if output_state(output_path(root, key, s.shard), s.rows, entries[key])
                  != "done"]
            for key in chosen}


def study_status(root: Path) -> dict[str, Any] | None:
    """The study in `root`, if any: its prompts, and per model how many prompt shards are done,
    need relabelling, are partial (a checkpoint holds some rows) or pending."""
    manifest = GenerationManifest.read(root)
    if manifest is None:
        return None
    prompts = manifest.prompts
    if not manifest.prompts_done:
        return {"prompts": {"state": prompts.get("state", "pending")}, "models": {}}
    shards = manifest.shards
    models = {}
    for key, entry in manifest.models.items():
        states = [output_state(output_path(root, key, s.shard), s.rows, entry) for s in shards]
        models[key] = {**{state: states.count(state)
                          for state in ("done", "relabel", "partial", "pending")},
                       "rows_done": sum(s.rows for s, state in zip(shards, states)
                                        if state == "done")}
    return {"prompts": {"state": "done", **prompts.get("counts", {}), "shards": len(shards)},
            "models": models}


def run_study(workdir: Workdir, config: Any, patterns: list[str] | None = None, *,
              force: bool = False, models: list[str] | None = None, threads: int = 0,
              progress: bool | None = None) -> dict[str, Any]:
    """Prepare, then run every missing (model, shard) in this process, model after model."""
    from tqdm import tqdm

    started = time.perf_counter()
    with workdir.lock():
        manifest = prepare(workdir, config, patterns, force=force)
        todo = pending(workdir, manifest, models)
        rows = {s.shard: s.rows for s in manifest.shards}
        outcomes: list[GenerationOutcome] = []
        total = sum(rows[s] for shards in todo.values() for s in shards)
        with tqdm(total=total, desc="generate", unit=" rows", mininterval=0.5,
                  disable=None if progress is None else not progress) as bar:
            for key, shards in todo.items():
                if not shards:
                    continue
                seen: dict[int, int] = {}

                def event(e: dict[str, Any], seen: dict[int, int] = seen) -> None:
                    if e["event"] == "checkpoint":
                        bar.update(e["rows"] - seen.get(e["shard"], 0))
                        seen[e["shard"]] = e["rows"]

                worker = GenerationWorker(ModelRun.from_manifest(manifest, key), threads,
                                          event)
                try:
                    for shard in shards:
                        outcome = worker.run_shard(
                            shard, prompt_shard_path(workdir.root, shard), rows[shard],
                            output_path(workdir.root, key, shard))
                        bar.update(rows[shard] - seen.get(shard, 0))
                        outcomes.append(outcome)
                finally:
                    worker.close()
    p = manifest.prompts
    return {**p["counts"], "models": list(todo), "prompt_source": p["source"],
            "shards_run": sum(o.state in ("done", "relabelled") for o in outcomes),
            "rows_generated": sum(o.generated for o in outcomes),
            "errors": sum(o.errors for o in outcomes),
            "output_tokens": sum(o.output_tokens for o in outcomes),
            "workdir": str(workdir.root), "seconds": round(time.perf_counter() - started, 3)}


def read_outputs(path: Path) -> pa.Table:
    """An output file, checked to be one."""
    try:
        check_schema_version(pq.read_schema(path), "generation", str(path))
        return pq.read_table(path)
    except (OSError, pa.ArrowException, ValueError) as exc:
        raise WorkdirError(f"cannot read {path}: {exc}") from None
