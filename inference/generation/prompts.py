"""Prompt shards: the generation's partition step, from a prompt set or a corpus's passages.

A prompt set (JSONL, CSV, Parquet: an id, the prompt, any metadata columns) is read by the
same readers as articles; a bad row goes to `rejects/prompts.jsonl` with its file, line and
reason, and a repeated row or prompt is dropped and counted. Over a partitioned corpus, a
Jinja2 template turns each passage into a prompt (checked before any work: an unknown field is
a one-line error). Either way the prompts land in `prompts/shard-NNNNN.parquet` (schema
`infer-corpus.prompts` v1), deterministically, so their row ids and content never shift
between runs, and every model of a study reads the same shards.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from ..config_loader import ConfigError
from ..parts import fingerprint_inputs
from ..readers import RawRow, expand_inputs, read_rows
from ..records import Rejected
from ..schema import SCHEMA_VERSION, SHARD_SCHEMA, check_schema_version
from ..workdir import Workdir, WorkdirError, atomic_path
from .config import GenerationConfig

PROMPTS_DIR = "prompts"
REJECTS_FILE = "prompts.jsonl"
PROMPT_SCHEMA = pa.schema(
    [
        pa.field("row_id", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("group", pa.string()),
        pa.field("metadata", pa.string()),  # the row's other columns, as a JSON object
        pa.field("source", pa.string(), nullable=False),
    ],
    metadata={"schema": "infer-corpus.prompts", "schema_version": str(SCHEMA_VERSION)},
)
PASSAGE_FIELDS = [name for name in SHARD_SCHEMA.names if name != "input_ids"]


@dataclass
class PromptSummary:
    """What the prompt step made: counts as `infer-corpus generate` prints them."""

    source: str
    key: str
    prompts: int = 0
    rejected: int = 0
    duplicate_rows: int = 0
    duplicate_prompts: int = 0
    shards: list[dict[str, Any]] = field(default_factory=list)
    reject_reasons: dict[str, int] = field(default_factory=dict)
    skipped: bool = False

    def counts(self) -> dict[str, Any]:
        return {"prompts": self.prompts, "rejected": self.rejected,
                "duplicate_rows": self.duplicate_rows,
                "duplicate_prompts": self.duplicate_prompts, "shards": len(self.shards),
                "reject_reasons": dict(self.reject_reasons)}


def prompt_shard_path(root: Path, shard: int) -> Path:
    return root / PROMPTS_DIR / f"shard-{shard:05d}.parquet"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _first(record: dict[str, Any], names: list[str]) -> tuple[str | None, Any]:
    for name in names:
        value = record.get(name)
        if value is not None and value != "":
            return name, value
    return None, None


def to_prompt(record: dict[str, Any], config: GenerationConfig) -> tuple[str, str, str | None,
                                                                          str | None]:
    """(row id, prompt, group, metadata JSON) of one prompt-set row, or `Rejected`."""
    f = config.prompts
    prompt_name, prompt = _first(record, f.prompt)
    if prompt is None or (isinstance(prompt, str) and not prompt.strip()):
        raise Rejected("no_prompt", f"no prompt in fields {f.prompt}")
    if not isinstance(prompt, str):
        raise Rejected("bad_field_type",
                       f"field {prompt_name!r} must be text, got {type(prompt).__name__}")
    if len(prompt) > config.max_prompt_chars:
        raise Rejected("field_too_long", f"field {prompt_name!r} has {len(prompt):,} characters "
                       f"(limit {config.max_prompt_chars:,}: generation.max_prompt_chars)")
    id_name, row_id = _first(record, f.id)
    if row_id is None:
        row_id = "sha256:" + _digest(prompt)[:24]
    elif isinstance(row_id, (str, int)) and not isinstance(row_id, bool):
        row_id = str(row_id).strip()
        if not row_id or len(row_id) > 1000:
            raise Rejected("bad_field_type", f"id field {id_name!r} is empty or over 1,000 "
                           "characters")
    else:
        raise Rejected("bad_field_type", f"id field {id_name!r} must be a string or an integer")
    group_name, group = _first(record, f.group)
    if group is not None and not isinstance(group, (str, int)):
        raise Rejected("bad_field_type", f"group field {group_name!r} must be text")
    used = {prompt_name, id_name, group_name}
    extra = {k: v for k, v in record.items() if k not in used}
    metadata = orjson.dumps(extra, default=str, option=orjson.OPT_SORT_KEYS).decode() \
        if extra else None
    return row_id, prompt, None if group is None else str(group), metadata


def _write_shard(root: Path, shard: int, columns: dict[str, list]) -> dict[str, Any]:
    path = prompt_shard_path(root, shard)
    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pydict(columns, schema=PROMPT_SCHEMA), tmp,
                       compression="zstd")
    return {"shard": shard, "file": str(path.relative_to(root)), "rows": len(columns["row_id"])}


def prompt_set_key(inputs: list[dict[str, Any]], config: GenerationConfig) -> str:
    """What decides a prompt set's shards: the inputs' bytes and the settings that read them."""
    blob = orjson.dumps({"inputs": [(i["format"], i["sha256"]) for i in inputs],
                         "fields": vars(config.prompts), "chars": config.max_prompt_chars,
                         "rows": config.rows_per_shard}, option=orjson.OPT_SORT_KEYS)
    return _digest(blob.decode())[:16]


def partition_prompts(patterns: list[str], workdir: Workdir, config: GenerationConfig,
                      previous: dict[str, Any] | None, *, force: bool = False,
                      starting: Callable[[], None] = lambda: None,
                      ) -> tuple[PromptSummary, list[dict]]:
    """Read a prompt set into prompt shards, or do nothing when `previous` (the generation
    manifest's `prompts` entry) already holds these inputs; `starting` is called before the
    old shards go. Returns the summary and the inputs' fingerprints."""
    paths = expand_inputs(patterns)
    inputs = fingerprint_inputs(paths, (previous or {}).get("inputs"))
    key = prompt_set_key(inputs, config)
    if _unchanged(previous, key, force, workdir):
        return _summary_from(previous, skipped=True), inputs
    summary = PromptSummary(source="prompt set", key=key)
    starting()
    _clear(workdir)
    reasons: Counter[str] = Counter()
    seen_ids: dict[str, str] = {}
    seen_prompts: set[str] = set()
    columns: dict[str, list] = {name: [] for name in PROMPT_SCHEMA.names}
    with atomic_path(workdir.rejects_dir / REJECTS_FILE) as tmp, open(tmp, "wb") as rejects:

        def reject(row: RawRow, reason: str, detail: str) -> None:
            summary.rejected += 1
            reasons[reason] += 1
            raw = row.raw if row.raw is not None else \
                orjson.dumps(row.record, default=str).decode()[:500]
            rejects.write(orjson.dumps({"source": row.source, "line": row.line,
                                        "reason": reason, "detail": detail, "raw": raw}) + b"\n")

        for path in paths:
            for row in read_rows(path):
                if row.record is None:
                    reject(row, row.reason or "unreadable", row.detail or "")
                    continue
                try:
                    row_id, prompt, group, metadata = to_prompt(row.record, config)
                except Rejected as exc:
                    reject(row, exc.reason, exc.detail)
                    continue
                digest = _digest(f"{group}\x1f{prompt}")
                earlier = seen_ids.get(row_id)
                if earlier is not None:
                    if earlier == digest:
                        summary.duplicate_rows += 1
                    else:
                        reject(row, "duplicate_id",
                               f"id {row_id!r} is already used by another prompt")
                    continue
                seen_ids[row_id] = digest
                if digest in seen_prompts:  # the same prompt in the same group, another id
                    summary.duplicate_prompts += 1
                    continue
                seen_prompts.add(digest)
                for name, value in zip(PROMPT_SCHEMA.names,
                                       (row_id, prompt, group, metadata, row.source)):
                    columns[name].append(value)
                summary.prompts += 1
                if len(columns["row_id"]) >= config.rows_per_shard:
                    summary.shards.append(_write_shard(workdir.root, len(summary.shards),
                                                       columns))
                    columns = {name: [] for name in PROMPT_SCHEMA.names}
        if columns["row_id"]:
            summary.shards.append(_write_shard(workdir.root, len(summary.shards), columns))
        rejects.flush()
    summary.reject_reasons = dict(sorted(reasons.items()))
    return summary, inputs


def _unchanged(previous: dict[str, Any] | None, key: str, force: bool,
               workdir: Workdir) -> bool:
    """True when the prompt shards are already these; a WorkdirError when they are other,
    finished prompts (their outputs would be lost) and `force` is not given."""
    if not previous or previous.get("state") != "done":
        return False
    if previous.get("key") == key:
        return True
    if not force:
        raise WorkdirError(f"{workdir.root} already holds other prompts (from "
                           f"{previous.get('source')}, or other settings); use a new --workdir,"
                           " or --force to replace them")
    return False


def _clear(workdir: Workdir) -> None:
    folder = workdir.root / PROMPTS_DIR
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    workdir.rejects_dir.mkdir(parents=True, exist_ok=True)


def _summary_from(previous: dict[str, Any], skipped: bool) -> PromptSummary:
    counts = previous.get("counts") or {}
    return PromptSummary(
        source=previous.get("source", ""), key=previous["key"],
        prompts=counts.get("prompts", 0), rejected=counts.get("rejected", 0),
        duplicate_rows=counts.get("duplicate_rows", 0),
        duplicate_prompts=counts.get("duplicate_prompts", 0),
        shards=list(previous.get("shards") or []),
        reject_reasons=counts.get("reject_reasons") or {}, skipped=skipped)


def compile_template(template: str, fields: list[str], what: str = "generation.template") -> Any:
    """A Jinja2 template over `fields`, checked now: a syntax error or a field that does not
    exist is a one-line ConfigError rather than a failure on the millionth row."""
    import jinja2
    from jinja2 import meta

    env = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False,
                             keep_trailing_newline=True)
    try:
        parsed = env.parse(template)
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError(f"{what}: line {exc.lineno}: {exc.message}") from None
    unknown = sorted(meta.find_undeclared_variables(parsed) - set(fields))
    if unknown:
        raise ConfigError(f"{what}: unknown field {unknown[0]!r} (fields: {', '.join(fields)})")
    return env.from_string(template)


def template_hash(template: str | None) -> str | None:
    return _digest(template)[:16] if template else None


def passages_key(partition_key: str, config: GenerationConfig) -> str:
    """What decides the prompts over a corpus's passages: its partition and the template's
    settings. Whoever reads the outputs against the passages checks they still match."""
    return _digest(f"{partition_key}\x1f{config.template}\x1f{config.group_field}"
                   f"\x1f{config.max_prompt_chars}")[:16]


def passage_prompts(workdir: Workdir, config: GenerationConfig,
                    previous: dict[str, Any] | None, *, force: bool = False,
                    starting: Callable[[], None] = lambda: None) -> PromptSummary:
    """One prompt per passage of the partitioned corpus: `generation.template` rendered with
    the passage's fields; the prompt's group is its `generation.group_field`."""
    if not config.template:
        raise ConfigError("generation.template is not set: give a template over the passages' "
                          f"fields ({', '.join(PASSAGE_FIELDS)}), or --prompts FILE")
    template = compile_template(config.template, PASSAGE_FIELDS)
    if config.group_field not in PASSAGE_FIELDS:
        raise ConfigError(f"generation.group_field: unknown field {config.group_field!r} "
                          f"(fields: {', '.join(PASSAGE_FIELDS)})")
    manifest = workdir.manifest().require_partitioned()
    key = passages_key(manifest.partition_key, config)
    if _unchanged(previous, key, force, workdir):
        return _summary_from(previous, skipped=True)
    summary = PromptSummary(source="passages", key=key)
    starting()
    _clear(workdir)
    reasons: Counter[str] = Counter()
    with atomic_path(workdir.rejects_dir / REJECTS_FILE) as tmp, open(tmp, "wb") as rejects:
        for entry in manifest.shards:
            path = workdir.shard_path(entry.shard)
            try:
                check_schema_version(pq.read_schema(path), "shard", str(path))
                rows = pq.read_table(path, columns=PASSAGE_FIELDS).to_pylist()
            except (OSError, pa.ArrowException, ValueError) as exc:
                raise WorkdirError(f"cannot read shard {path}: {exc}") from None
            columns: dict[str, list] = {name: [] for name in PROMPT_SCHEMA.names}
            for line, passage in enumerate(rows, start=1):
                try:
                    prompt = template.render(**passage)
                except Exception as exc:  # a template may fail on one row's values
                    reason, detail = "template_error", f"{type(exc).__name__}: {exc}"
                else:
                    if len(prompt) <= config.max_prompt_chars and prompt.strip():
                        group = passage[config.group_field]
                        for name, value in zip(PROMPT_SCHEMA.names, (
                                passage["passage_id"], prompt,
                                None if group is None else str(group), None, passage["source"])):
                            columns[name].append(value)
                        summary.prompts += 1
                        continue
                    reason = "field_too_long" if prompt.strip() else "no_prompt"
                    detail = f"the rendered prompt has {len(prompt):,} characters"
                summary.rejected += 1
                reasons[reason] += 1
                rejects.write(orjson.dumps({"source": str(path), "line": line, "reason": reason,
                                            "detail": detail,
                                            "raw": passage["passage_id"]}) + b"\n")
            summary.shards.append(_write_shard(workdir.root, entry.shard, columns))
        rejects.flush()
    summary.reject_reasons = dict(sorted(reasons.items()))
    return summary


def read_prompt_shard(path: Path, rows: int) -> pa.Table:
    """A prompt shard, checked against its schema and the row count the manifest gives."""
    try:
        check_schema_version(pq.read_schema(path), "prompts", str(path))
        table = pq.read_table(path)
    except (OSError, pa.ArrowException, ValueError) as exc:
        raise WorkdirError(f"cannot read prompt shard {path}: {exc}") from None
    if table.num_rows != rows:
        raise WorkdirError(f"{path} has {table.num_rows} rows, the manifest says {rows}")
    return table


def prompts_entry(summary: PromptSummary, inputs: list[dict[str, Any]] | None,
                  template: str | None) -> dict[str, Any]:
    """The generation manifest's record of the prompt step."""
    return {"state": "done", "source": summary.source, "key": summary.key,
            "inputs": inputs or [], "template": template, "template_hash": template_hash(template),
            "counts": summary.counts(), "shards": summary.shards,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
