"""Choosing the index backend: the workdir's config (`index` section) decides, and command-line
flags override it. `build` loads a finished workdir into the chosen backend; `open_index` opens
it for searching."""

from __future__ import annotations

import dataclasses

from inference.config_loader import ConfigError
from inference.workdir import Workdir

from .config import IndexConfig
from .embedded import EmbeddedIndex, IndexSummary, build_index
from .index import PassageIndex


def index_config(workdir: Workdir, backend: str | None = None,
                 url: str | None = None) -> IndexConfig:
    """The workdir's `index` settings with the given overrides applied."""
    settings = workdir.manifest().section(IndexConfig, "index")
    settings = dataclasses.replace(settings, **{k: v for k, v in
                                                {"backend": backend, "url": url}.items() if v})
    settings.validate()
    if settings.backend == "elasticsearch" and not settings.url:
        raise ConfigError("the elasticsearch backend needs a URL: give --es-url "
                          "http://HOST:9200 or set index.url in the config")
    return settings


def _client(settings: IndexConfig):
    from .elasticsearch import connect

    return connect(settings.url, settings.api_key_env)


def build(workdir: Workdir, backend: str | None = None, url: str | None = None,
          workers: int = 1) -> IndexSummary:
    """Load a finished workdir into its index; a no-op when that index is already current.
    The loaders hold the workdir's lock (re-entrant: `run` holds it already), so two builds
    never collide. `workers`: processes that build the embedded index's pieces."""
    settings = index_config(workdir, backend, url)
    if settings.backend == "embedded":
        return build_index(workdir, workers)
    from .elasticsearch import load_elasticsearch

    return load_elasticsearch(workdir, _client(settings), settings.name, url=settings.url,
                              api_key_env=settings.api_key_env, retries=settings.retries)


def open_index(workdir: Workdir, backend: str | None = None,
               url: str | None = None) -> PassageIndex:
    """The workdir's index for searching."""
    settings = index_config(workdir, backend, url)
    if settings.backend == "embedded":
        return EmbeddedIndex(workdir)
    from .elasticsearch import ElasticsearchIndex

    return ElasticsearchIndex(_client(settings), settings.name, url=settings.url,
                              api_key_env=settings.api_key_env)
