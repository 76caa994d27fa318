"""Topic heads: a linear layer or a small MLP over passage embeddings.

A trained head is saved as plain tensors (`infer-corpus.head`: linear layers with ReLU between
them) so the shard worker can load it without this package or pickled code.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from inference.workdir import atomic_path

if TYPE_CHECKING:  # torch loads where a head is built or saved, not where a sweep is read
    from torch import nn

HEAD_FORMAT = "infer-corpus.head"
HEAD_KINDS = ("linear", "mlp")


def build_head(kind: str, in_dim: int, n_classes: int, hidden: int = 64,
               dropout: float = 0.0) -> nn.Sequential:
    """`linear`: one layer; `mlp`: Linear -> ReLU -> Dropout -> Linear."""
    from torch import nn

    if kind == "linear":
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, n_classes))
    if kind == "mlp":
        return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout),
                             nn.Linear(hidden, n_classes))
    raise ValueError(f"head must be one of {', '.join(HEAD_KINDS)}, not {kind!r}")


def export_head(model: nn.Module, classes: list[str], embedding_model: str,
                metrics: dict[str, Any], path: Path) -> None:
    """Write the head's linear layers (in order) as an `infer-corpus.head` file, atomically."""
    import torch
    from torch import nn

    layers = [{"weight": m.weight.detach().cpu().float().clone(),
               "bias": m.bias.detach().cpu().float().clone()}
              for m in model.modules() if isinstance(m, nn.Linear)]
    payload = {"format": HEAD_FORMAT, "version": 1, "classes": list(classes),
               "embedding_dim": int(layers[0]["weight"].shape[1]),
               "embedding_model": embedding_model, "layers": layers,
               "metrics": {k: float(v) for k, v in metrics.items()}}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
