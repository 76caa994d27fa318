"""`infer-corpus jobs` and `train-models jobs`: where a DAG's job time went, attempt by
attempt, from its job event logs (`submit.htcondor.eventlog`).

The logs are checked against the DAG they should belong to: a log whose jobs are all nodes
of another DAG is refused, so a report never mixes up two runs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from inference.errors import UsageError

from .htcondor import EventLogError, dag_node_names, read_logs, summary

FIGURES = ("transfer", "setup", "checkpoint", "lost", "goodput")


def report(logs: list[Path], dags: list[Path], *, as_json: bool = False,
           timeline: Path | None = None) -> str:
    """The table (or JSON) for the jobs in `logs`, which must be jobs of `dags`' nodes."""
    reading = read_logs(logs)
    nodes = set().union(*(dag_node_names(dag) for dag in dags))
    named = {job.node for job in reading.jobs if job.node}
    if nodes and named and not named & nodes:
        shown = ", ".join(sorted(named)[:3]) + (", ..." if len(named) > 3 else "")
        raise EventLogError(f"{', '.join(map(str, logs))} is the log of another DAG: its "
                            f"jobs are nodes {shown}, none of them in "
                            f"{', '.join(str(d) for d in dags)}")
    running = any(job.ended is None for job in reading.jobs)
    data = summary(reading, now=time.time() if running else None)
    data["logs"] = [str(log) for log in logs]
    if timeline is not None:
        draw_timeline(data, timeline)
        data["timeline"] = str(timeline)
    return json.dumps(data, indent=2) if as_json else table(data)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def table(data: dict[str, Any]) -> str:
    """One line a job (its attempts' GPUs and how each ended), then one a GPU class."""
    lines = [f"{'job':<10} {'node':<16} {'state':<8} {'tries':>5}  {'wall':>7} "
             f"{'waiting':>7} " + " ".join(f"{f:>10}" for f in FIGURES) + "  attempts"]
    for job in data["jobs"]:
        spent = job["in_slots"]
        attempts = "; ".join(
            f"{a['host'] or '?'} {a['gpu'] or ''} {_ending(a)}".replace("  ", " ")
            for a in job["attempts"])
        lines.append(f"{job['job']:<10} {job['node'][:16]:<16} {job['state']:<8} "
                     f"{len(job['attempts']):>5}  {_duration(job['wall']):>7} "
                     f"{_duration(job['waiting']):>7} "
                     + " ".join(f"{_duration(spent[f]):>10}" for f in FIGURES)
                     + f"  {attempts}")
    if data["gpu_classes"]:
        lines += ["", f"{'GPU class':<28} {'attempts':>8}  {'in slots':>9} "
                  + " ".join(f"{f:>10}" for f in FIGURES) + "  goodput share"]
        for name, figures in sorted(data["gpu_classes"].items()):
            share = figures["goodput"] / figures["wall"] if figures["wall"] else 0.0
            lines.append(f"{name[:28]:<28} {figures['attempts']:>8}  "
                         f"{_duration(figures['wall']):>9} "
                         + " ".join(f"{_duration(figures[f]):>10}" for f in FIGURES)
                         + f"  {share:.0%}")
    lines += [f"warning: {warning}" for warning in data["warnings"]]
    if data.get("timeline"):
        lines.append(f"timeline: {data['timeline']}")
    return "\n".join(lines)


def _ending(attempt: dict[str, Any]) -> str:
    outcome = attempt["outcome"]
    if attempt["code"] is not None and outcome in ("evicted", "held"):
        return f"{outcome} (code {attempt['code']})"
    if outcome == "failed" and attempt["return_value"] is not None:
        return f"failed (exit {attempt['return_value']})"
    return outcome


COLOURS = {"goodput": "#4c9a2a", "setup": "#f2b134", "transfer": "#6baed6",
           "checkpoint": "#9e9ac8", "lost": "#d62728"}


def draw_timeline(data: dict[str, Any], path: Path) -> None:
    """A PNG: one row a job, one bar an attempt from its input transfer to its end, split in
    proportion into its transfer, setup, checkpoint, lost and goodput time; the GPU and how
    it ended written beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    jobs = data["jobs"]
    starts = [a["began"] or a["started"] for j in jobs for a in j["attempts"]
              if a["began"] or a["started"]] + [j["submitted"] for j in jobs if j["submitted"]]
    origin = min(starts) if starts else 0.0
    figure, axes = plt.subplots(figsize=(11, 1.8 + 0.6 * max(1, len(jobs))))
    for row, job in enumerate(jobs):
        for attempt in job["attempts"]:
            began = attempt["began"] or attempt["started"]
            if began is None:
                continue
            left = (began - origin) / 60
            gpu = (attempt["gpu"] or attempt["host"] or "?").removeprefix("NVIDIA ")
            axes.text(left, row - 0.32, f"{gpu.split()[0]}: {_ending(attempt)}",
                      va="bottom", fontsize=6)
            for name in ("transfer", "setup", "checkpoint", "lost", "goodput"):
                width = attempt["figures"][name] / 60
                if width > 0:
                    axes.barh(row, width, left=left, color=COLOURS[name], height=0.5)
                    left += width
    axes.set_yticks(range(len(jobs)), [f"{j['node'] or j['job']}" for j in jobs], fontsize=8)
    axes.set_ylim(len(jobs) - 0.5, -0.8)  # top to bottom, room for the labels above bars
    axes.set_xlabel("minutes since the first job was submitted")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in COLOURS.values()]
    figure.legend(handles, list(COLOURS), loc="lower center", fontsize=7, ncol=5,
                  frameon=False)
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    try:
        figure.savefig(path, dpi=110)
    except OSError as exc:
        raise UsageError(f"cannot write the timeline {path}: {exc}") from None
    finally:
        plt.close(figure)
