"""What a sweep found, for people: a table and a picture of its trials.

Trials are named by the hyperparameters that differ across the sweep (`head=mlp lr=0.01
seed=1`), since ids such as `t003` say nothing to a reader; the id stays as a second column.
The ranking is collect's (`results.json`, refreshed here), so the table, the picture and
`best-model.pt` or `best.model` always agree; each configuration is shown as the mean and
spread of its seeds, which tells a real difference from a lucky seed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from inference.workdir import atomic_path

from . import TrainError
from .retrieval_metric import describe
from .sweep import CHECK_PARAMS, METRICS, Sweep, collect, progress_metric
from .trial import read_metrics


def number(value: Any) -> str:
    """A hyperparameter as a person writes it: `0.01`, `2e-4`, `mlp`, a model folder's name."""
    if isinstance(value, float):
        text = f"{value:.4g}"
        if (value and abs(value) < 1e-3) or "e" in text:
            mantissa, _, exponent = f"{value:.3e}".partition("e")
            text = f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
        return text
    if isinstance(value, str) and "/" in value:
        return Path(value).name
    return str(value)


def trial_labels(trials: list[dict[str, Any]], kind: str,
                 seed: bool = True) -> dict[str, str]:
    """Trial id -> the hyperparameters (defaults filled in) that differ across `trials`, seed
    last; without `seed`, the name of the trial's configuration."""
    params = {t["trial"]: CHECK_PARAMS[kind](t["params"]) for t in trials}
    differ = {key for p in params.values() for key in p
              if len({repr(q.get(key)) for q in params.values()}) > 1}
    if not seed:
        differ.discard("seed")
    keys = sorted(differ, key=lambda key: (key == "seed", key))
    return {trial: " ".join(f"{k}={number(p[k])}" for k in keys) or trial
            for trial, p in params.items()}


def summarize(sweep: Sweep) -> dict[str, Any]:
    """The ranked trials and configurations, each with its label (ranks with `collect`)."""
    spec = sweep.spec()
    trials = sweep.trials()
    results = collect(sweep)
    ranking = json.loads((sweep.root / "results.json").read_text(encoding="utf-8"))["ranking"]
    names = trial_labels(trials, spec.kind)
    groups = {t["group"]: t["trial"] for t in trials}  # a trial of each configuration
    config_names = trial_labels(trials, spec.kind, seed=False)
    best = results["best"]["trial"] if results["best"] else None
    rows = [{"rank": rank, "trial": r["trial"], "label": names[r["trial"]], "group": r["group"],
             "value": r["value"], "best": r["trial"] == best}
            for rank, r in enumerate(ranking, start=1)]
    reverse = METRICS[spec.metric] == "max"
    configurations = sorted(
        ({"group": g, "label": config_names[groups[g]], **stats}
         for g, stats in results["groups"].items()),
        key=lambda c: c["mean"], reverse=reverse)
    return {"sweep": spec.name, "kind": spec.kind, "metric": spec.metric,
            "goal": METRICS[spec.metric], "trials": results["trials"],
            "completed": results["completed"], "diverged": results["diverged"],
            "pruned": results.get("pruned", 0), "pending": results["pending"],
            "best": rows[0] if rows else None,
            "ranking": rows, "configurations": configurations,
            **({"retrieval": results["retrieval"]} if "retrieval" in results else {})}


def format_table(summary: dict[str, Any]) -> str:
    """The summary as text: trials best first (the best starred), then configurations."""
    metric, goal = summary["metric"], "higher" if summary["goal"] == "max" else "lower"
    pruned = f"{summary['pruned']} pruned, " if summary["pruned"] else ""
    lines = [f"sweep {summary['sweep']}: {summary['trials']} trials, {summary['completed']} "
             f"completed, {summary['diverged']} diverged, {pruned}{summary['pending']} "
             f"pending; {metric} ({goal} is better)"]
    if not summary["ranking"]:
        return "\n".join([*lines, "no trial has completed yet"])
    width = max(len("configuration"), *(len(r["label"]) for r in summary["ranking"]),
                *(len(c["label"]) for c in summary["configurations"]))
    lines.append(f"  {'trial':<{width}}  {metric:>10}  id")
    for row in summary["ranking"]:
        mark = "*" if row["best"] else " "
        lines.append(f"{mark} {row['label']:<{width}}  {row['value']:>10.4f}  {row['trial']}")
    lines.append(f"  {'configuration':<{width}}  {metric:>10}  mean ± spread over seeds")
    for config in summary["configurations"]:
        seeds = f"{config['seeds']} seed{'s' if config['seeds'] > 1 else ''}"
        lines.append(f"  {config['label']:<{width}}  {config['mean']:>10.4f} ± "
                     f"{config['std']:.4f}  ({seeds})")
    lines.append("* best trial")
    if "retrieval" in summary:  # metric ndcg@10: the best trial on the queries never tuned on
        lines += describe(summary["retrieval"])
    return "\n".join(lines)


def draw_report(sweep: Sweep, out: Path, summary: dict[str, Any]) -> Path:
    """Learning curves per trial and each configuration's final metric over its seeds; a
    configuration has one colour throughout (its bar is the curves' legend), the best trial's
    curves are thick and its seed a star, trials not ranked (diverged, unfinished) grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec = sweep.spec()
    trials = sweep.trials()
    curves = [(t, read_metrics(sweep.trial_dir(t["trial"]))) for t in trials]
    curves = [(t, m) for t, m in curves if m and m["history"]]
    if not curves:
        raise TrainError(f"{sweep.root}: no trial has finished an epoch yet")
    configs = summary["configurations"]
    palette = plt.get_cmap("tab10").colors
    colour = {c["group"]: palette[i % len(palette)] for i, c in enumerate(configs)}
    best = summary["best"]["trial"] if summary["best"] else None
    fig, (loss_ax, metric_ax, bar_ax) = plt.subplots(1, 3, figsize=(18, 5.5))
    x = "step" if spec.kind == "embedder" else "epoch"  # embedders: rows per save_steps
    curve = progress_metric(spec)  # ndcg@10 judges finished models: curves show val_loss
    for trial, metrics in curves:
        at = [h[x] for h in metrics["history"]]
        style = {"color": colour.get(trial["group"], "lightgrey"),
                 "linewidth": 3 if trial["trial"] == best else 1,
                 "zorder": 3 if trial["trial"] == best else 2}
        loss_ax.plot(at, [h.get("train_loss") for h in metrics["history"]], **style)
        metric_ax.plot(at, [h[curve] for h in metrics["history"]], **style)
    loss_ax.set(title="training loss", xlabel=x, ylabel="loss")
    metric_ax.set(title=f"validation {curve.removeprefix('val_')} (thick: the best trial)",
                  xlabel=x, ylabel=curve)
    for y, config in enumerate(configs):
        bar_ax.barh(y, config["mean"], xerr=config["std"], capsize=4, alpha=0.7,
                    color=colour[config["group"]])
        for row in summary["ranking"]:
            if row["group"] == config["group"]:
                bar_ax.plot(row["value"], y, "*" if row["best"] else "o", color="black",
                            markersize=14 if row["best"] else 5, zorder=3)
    bar_ax.set_yticks(range(len(configs)), [c["label"] for c in configs], fontsize="small")
    bar_ax.invert_yaxis()
    bar_ax.set(title=f"final {spec.metric} per configuration: mean ± spread",
               xlabel=f"{spec.metric} (dots: seeds; star: the best trial)")
    title = f"sweep {spec.name}: {len(curves)} trials"
    if summary["best"]:
        top = summary["best"]
        title += f"; best {top['label']} ({top['trial']}) {spec.metric}={top['value']:.4f}"
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
    return out
