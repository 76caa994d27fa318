"""The one strict config loader every package uses: YAML in, typed dataclasses out.

A typo in a config key must fail loudly rather than silently fall back to a default, so
loading rejects unknown keys and values of the wrong type with the dotted path of the
problem. Each package declares its own section as dataclasses (`inference.config`,
`retrieval.config`, `qa_api.config`, `submit.config`); a command composes the sections it
needs into one class and loads it here. After building, every dataclass in the tree that has
a `validate()` method checks what a type alone cannot express (children first).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import UsageError

T = TypeVar("T")
# A memory or disk size as HTCondor and the GPU settings take it: 12 (MB), 1.5GB, 512 M, 2T
QUANTITY = re.compile(r"^\d+(\.\d+)?\s*([KMGT]B?)?$", re.IGNORECASE)
# The floating-point types a model may load in; "auto": float32 on a CPU, bfloat16 (else
# float16) on a GPU
MODEL_DTYPES = ("auto", "float32", "float16", "bfloat16")
MAX_DEPTH = 32  # far deeper than any config: a deeper document is a mistake
# Far more values than any config holds: a YAML document whose aliases expand past this is a
# "billion laughs", which would cost minutes of CPU to walk.
MAX_VALUES = 100_000


class ConfigError(UsageError):
    """A config file or override that does not fit the schema."""


def _coerce(value: Any, hint: Any, path: str) -> Any:
    """Check `value` against a type hint, building nested dataclasses; error names the path."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__}")
        return _build(hint, value, path)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for option in inner[:-1]:  # e.g. bool | int | str: the first type that fits
            try:
                return _coerce(value, option, path)
            except ConfigError:
                pass
        return _coerce(value, inner[-1], path)
    if origin is list:
        (item,) = typing.get_args(hint)
        if isinstance(value, str):  # a single field name is a list of one
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__}")
        return [_coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        key_t, val_t = typing.get_args(hint)
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__}")
        return {_coerce(k, key_t, path): _coerce(v, val_t, f"{path}.{k}") for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        if not math.isfinite(value):  # JSON, and so every manifest, has no such numbers
            raise ConfigError(f"{path}: expected a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return str(value)
    if hint is Any:
        return value
    raise ConfigError(f"{path}: unsupported type {hint}")  # pragma: no cover


def _build(cls: type, data: Mapping[str, Any], path: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(str(key) for key in data if key not in known)
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(
            f"unknown config key {where}{unknown[0]} (known keys here: {', '.join(sorted(known))})"
        )
    kwargs = {
        name: _coerce(value, hints[name], f"{path}.{name}" if path else name)
        for name, value in data.items()
    }
    return cls(**kwargs)


def _validate(obj: Any) -> None:
    """Call `validate()` on every dataclass of the tree, innermost first."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        values = value.values() if isinstance(value, dict) else [value]
        for item in values:
            if dataclasses.is_dataclass(item) and not isinstance(item, type):
                _validate(item)
    if hasattr(obj, "validate"):
        obj.validate()


def build(cls: type[T], data: Mapping[str, Any] | None, path: str = "") -> T:
    """A validated `cls` from plain data (a section of a file, of a manifest, of a spec);
    `path` is the dotted prefix error messages name (e.g. `index`)."""
    obj = _build(cls, data or {}, path)
    _validate(obj)
    return obj


def own_sections(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of `data` that are sections of `cls`: a manifest's config holds every
    package's sections, and each package rebuilds only its own."""
    known = {f.name for f in dataclasses.fields(cls)}
    return {key: value for key, value in data.items() if key in known}


class _StrictLoader(yaml.SafeLoader):
    """`yaml.safe_load`, except that a mapping repeating a key is an error rather than
    silently keeping the last value (merge keys, `<<: *base`, may still be overridden)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, typing.Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {str(key)[:100]!r}", key_node.start_mark)
            if isinstance(key, typing.Hashable):
                seen.add(key)
        return super().construct_mapping(node, deep)


def _measure(value: Any, sizes: dict[int, int], open_: set[int], level: int = 1) -> int:
    """How many values `value` holds with its aliases expanded (YAML shares an aliased value,
    so this counts each shared one once per use, in time linear in the document); a
    ValueError when it nests deeper than MAX_DEPTH, a cycle (`&a [*a]`) included."""
    if not isinstance(value, (dict, list)):
        return 1
    if id(value) in sizes:
        return sizes[id(value)]
    if level > MAX_DEPTH or id(value) in open_:
        raise ValueError("depth")
    open_.add(id(value))
    items = value.values() if isinstance(value, dict) else value
    size = 1 + sum(_measure(item, sizes, open_, level + 1) for item in items)
    open_.discard(id(value))
    sizes[id(value)] = size
    return size


def load_yaml(text: str, source: str) -> Any:
    """Plain data from YAML text, or a one-line ConfigError naming `source` (e.g. "config
    FILE" or "override KEY=VALUE"): invalid YAML, a repeated key, nesting deeper than
    MAX_DEPTH, or aliases expanding to over MAX_VALUES values. Config files and `--set`
    values both come through here."""
    try:
        loaded = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{source} is not valid YAML{where}: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{source} nests deeper than {MAX_DEPTH} levels") from None
    try:
        values = _measure(loaded, {}, set())
    except ValueError:
        raise ConfigError(f"{source} nests deeper than {MAX_DEPTH} levels") from None
    if values > MAX_VALUES:
        raise ConfigError(f"{source} holds over {MAX_VALUES:,} values once its aliases are "
                          "expanded: write the values out, or use fewer aliases")
    return loaded


def read_yaml(path: str | Path, what: str = "config") -> dict[str, Any]:
    """A YAML mapping from a file, or a one-line ConfigError saying what is wrong and where."""
    try:
        text = Path(path).read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path} is not UTF-8 text (byte {exc.start})") from None
    loaded = load_yaml(text, f"{what} {path}")
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{what} {path} must be a mapping at the top level")
    return loaded or {}


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _seed_maps(cls: type, data: dict[str, Any], path: list[str]) -> dict[str, Any]:
    """Where an override reaches inside a map (`qa.models.NAME.url=...`), start that map from
    its default unless the file gave one, so the override adds or changes one entry instead of
    dropping the others. An override of the map itself (`predictions.topics={...}`) replaces it."""
    hint = typing.get_type_hints(cls).get(path[0]) if path else None
    if hint is None:
        return data
    out = dict(data)
    if dataclasses.is_dataclass(hint):
        inner = out.get(path[0])
        if inner is None or isinstance(inner, dict):
            out[path[0]] = _seed_maps(hint, inner or {}, path[1:])
    elif typing.get_origin(hint) is dict and len(path) == 1:
        out.pop(path[0], None)  # the map itself: the override replaces the file's
    elif typing.get_origin(hint) is dict and path[0] not in out:
        default = getattr(cls(), path[0])
        out[path[0]] = {key: dataclasses.asdict(value) if dataclasses.is_dataclass(value)
                        else copy.deepcopy(value) for key, value in default.items()}
    return out


def parse_override(text: str) -> dict[str, Any]:
    """Turn `model.batch_size=64` into `{"model": {"batch_size": 64}}` (value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    dotted, raw = text.split("=", 1)
    shown = text if len(text) <= 80 else f"{text[:77]}..."
    value = load_yaml(raw, f"the value of override {shown!r}") if raw.strip() else ""
    keys = [k for k in dotted.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"override {text!r} names no key")
    result: dict[str, Any] = value
    for key in reversed(keys):
        result = {key: result}
    return result


def apply_overrides(cls: type, data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`data` with each `key.path=value` override merged in, in order."""
    for item in overrides:
        override = parse_override(item)
        path = [k for k in item.split("=", 1)[0].strip().split(".") if k]
        data = _merge(_seed_maps(cls, data, path), override)
    return data


def load(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None,
         *, what: str = "config") -> T:
    """Defaults, then the YAML file (if any), then `key.path=value` overrides, validated."""
    data = read_yaml(path, what) if path is not None else {}
    return build(cls, apply_overrides(cls, data, overrides or []))
