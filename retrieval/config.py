"""The retrieval package's config section: where passages are indexed and searched."""

from __future__ import annotations

import re
from dataclasses import dataclass

from inference.config_loader import ConfigError

BACKENDS = ("embedded", "elasticsearch")


@dataclass
class IndexConfig:
    """Where `infer-corpus index` loads the passages and `search` reads them: `embedded` (in the
    workdir) or `elasticsearch` (a cluster at `url`, alias `name`, the API key read from the
    environment variable `api_key_env`; never a key in the config). `retries`: bulk requests
    retried with exponential backoff after a 429 answer or a lost connection."""

    backend: str = "embedded"
    url: str | None = None
    name: str = "infer-corpus"
    api_key_env: str = "ES_API_KEY"
    retries: int = 5

    def validate(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"index.backend must be {' or '.join(BACKENDS)}")
        if self.url is not None and not re.match(r"^https?://", self.url):
            raise ConfigError("index.url must be an http:// or https:// URL such as "
                              "http://localhost:9200")
        if not re.match(r"^[a-z0-9][a-z0-9_.-]*$", self.name) or len(self.name) > 200:
            raise ConfigError("index.name must be lower case letters, digits, '_', '.' or '-' "
                              "(an Elasticsearch alias), at most 200 characters")
        if self.retries < 0:
            raise ConfigError("index.retries must be >= 0")
