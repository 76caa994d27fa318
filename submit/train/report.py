"""A picture of a sweep: learning curves per trial and the final metric of every trial."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from inference.workdir import atomic_path

from . import TrainError
from .sweep import Sweep
from .trial import read_metrics


def draw_report(sweep: Sweep, out: Path) -> Path:
    spec = sweep.spec()
    curves = [(t["trial"], read_metrics(sweep.trial_dir(t["trial"]))) for t in sweep.trials()]
    curves = [(trial, m) for trial, m in curves if m and m["history"]]
    if not curves:
        raise TrainError(f"{sweep.root}: no trial has finished an epoch yet")
    fig, (loss_ax, metric_ax, bar_ax) = plt.subplots(1, 3, figsize=(16, 5))
    x = "step" if spec.kind == "embedder" else "epoch"  # embedders: rows per save_steps
    for trial, metrics in curves:
        at = [h[x] for h in metrics["history"]]
        loss_ax.plot(at, [h.get("train_loss") for h in metrics["history"]], label=trial)
        metric_ax.plot(at, [h[spec.metric] for h in metrics["history"]], label=trial)
    loss_ax.set(title="training loss", xlabel=x, ylabel="loss")
    metric_ax.set(title=f"validation {spec.metric.removeprefix('val_')}", xlabel=x,
                  ylabel=spec.metric)
    if len(curves) <= 20:
        metric_ax.legend(fontsize="small", ncol=2)
    finals = [(trial, m["final"][spec.metric]) for trial, m in curves]
    bar_ax.barh([t for t, _ in finals], [v for _, v in finals], color="tab:blue")
    bar_ax.invert_yaxis()
    bar_ax.set(title=f"final {spec.metric}", xlabel=spec.metric)
    fig.suptitle(f"sweep {spec.name}: {len(curves)} trials")
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
    return out
