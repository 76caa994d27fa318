"""The study's results: label rates per model and prompt group, as CSV, Markdown and a PNG.

Each output counts under its label (e.g. refused / complied, from `generation.labels`); an
output that failed counts as `error`, and one without a label (labels off) as `unlabelled`.
Only finished shards count; the report says how many prompts each model has not answered yet.
"""

from __future__ import annotations

import csv
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from ..workdir import Workdir, atomic_path
from .generate import generations_dir, output_path, output_state, read_outputs
from .manifest import GenerationManifest
from .prompts import prompt_shard_path

ALL = "(all)"
NO_GROUP = "(none)"


def _category(label: str | None, finish_reason: str) -> str:
    if finish_reason == "error":
        return "error"
    return label if label is not None else "unlabelled"


def collect(workdir: Workdir) -> tuple[dict[tuple[str, str], Counter], dict[str, int]]:
    """Counts per (model, group) of each category, and per model the prompts not yet done."""
    root = workdir.root
    manifest = GenerationManifest.require(root)
    shards = manifest.shards
    groups: dict[str, str] = {}
    for s in shards:
        table = pq.read_table(prompt_shard_path(root, s.shard), columns=["row_id", "group"])
        groups.update(zip(table.column("row_id").to_pylist(),
                          (g if g is not None else NO_GROUP
                           for g in table.column("group").to_pylist())))
    counts: dict[tuple[str, str], Counter] = defaultdict(Counter)
    missing: dict[str, int] = {}
    for model, entry in manifest.models.items():
        missing[model] = 0
        for s in shards:
            path = output_path(root, model, s.shard)
            if output_state(path, s.rows, entry) not in ("done", "relabel"):
                missing[model] += s.rows
                continue
            table = read_outputs(path)
            for row_id, label, reason in zip(table.column("row_id").to_pylist(),
                                             table.column("label").to_pylist(),
                                             table.column("finish_reason").to_pylist()):
                category = _category(label, reason)
                counts[(model, groups.get(row_id, NO_GROUP))][category] += 1
                counts[(model, ALL)][category] += 1
    return counts, missing


def write_report(workdir: Workdir) -> dict[str, Any]:
    """Write generations/report.csv, report.md and report.png; returns their paths and the
    rates as data."""
    counts, missing = collect(workdir)
    out = generations_dir(workdir.root)
    categories = sorted({c for counter in counts.values() for c in counter},
                        key=lambda c: (c in ("error", "unlabelled"), c))
    models = sorted({m for m, _ in counts})
    groups = sorted({g for _, g in counts if g != ALL}) + [ALL]
    rows = []
    for model in models:
        for group in groups:
            counter = counts.get((model, group))
            if not counter:
                continue
            total = sum(counter.values())
            for category in categories:
                rows.append({"model": model, "group": group, "rows": total,
                             "category": category, "count": counter[category],
                             "rate": round(counter[category] / total, 4)})
    csv_path, md_path, png_path = (out / "report.csv", out / "report.md", out / "report.png")
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, ["model", "group", "rows", "category", "count", "rate"])
        writer.writeheader()
        writer.writerows(rows)
    _markdown(md_path, rows, categories, missing)
    _plot(png_path, rows, models, groups, categories)
    return {"csv": str(csv_path), "markdown": str(md_path), "png": str(png_path),
            "models": models, "groups": groups[:-1], "categories": categories,
            "missing": missing, "rates": rows}


def _markdown(path: Path, rows: list[dict[str, Any]], categories: list[str],
              missing: dict[str, int]) -> None:
    """The rates as a table: a line per model and group (`rows` holds one per category)."""
    lines = ["# Generation report", "",
             "Share of outputs per label, for each model and prompt group (n: outputs).", "",
             "| model | group | n | " + " | ".join(categories) + " |",
             "|---|---|---|" + "---|" * len(categories)]
    for start in range(0, len(rows), max(1, len(categories))):
        cell = rows[start:start + len(categories)]
        model, group, total = cell[0]["model"], cell[0]["group"], cell[0]["rows"]
        rates = [f"{100 * r['count'] / total:.1f}%" for r in cell]
        name = f"**{group}**" if group == ALL else group
        lines.append(f"| {model} | {name} | {total} | " + " | ".join(rates) + " |")
    waiting = {m: n for m, n in missing.items() if n}
    if waiting:
        lines += ["", "Not generated yet: " + ", ".join(f"{m}: {n} prompts"
                                                       for m, n in sorted(waiting.items()))]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _plot(path: Path, rows: list[dict[str, Any]], models: list[str], groups: list[str],
          categories: list[str]) -> None:
    """One panel per label: its rate per prompt group, a bar per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = max(1, len(categories))
    fig, axes = plt.subplots(1, panels, figsize=(1.2 + 0.9 * len(groups) * panels
                                                 + 0.3 * len(models) * panels, 3.6),
                             squeeze=False, sharey=True)
    width = 0.8 / max(1, len(models))
    rate = {(r["model"], r["group"], r["category"]): r["count"] / r["rows"] for r in rows}
    for ax, category in zip(axes[0], categories or ["(no outputs)"]):
        for m, model in enumerate(models):
            rates = [rate.get((model, group, category), 0.0) for group in groups]
            ax.bar([g + m * width - 0.4 + width / 2 for g in range(len(groups))], rates,
                   width, label=model)
        ax.set_title(category)
        ax.set_xticks(range(len(groups)), groups, rotation=30, ha="right")
        ax.set_ylim(0, 1)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("share of outputs")
    axes[0][-1].legend(title="model", fontsize="small")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
