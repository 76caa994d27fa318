"""infer-corpus: shard a document corpus, embed and classify every passage, resumably.

The public surface is small: load a config, partition inputs into a workdir, run one shard,
or run everything with the local executor.
"""

__version__ = "0.1.0"

from .config import Config, ConfigError, load_config  # noqa: E402
from .executor import run_pipeline  # noqa: E402
from .partition import partition  # noqa: E402
from .workdir import Workdir, WorkdirError  # noqa: E402
from .worker import run_shards  # noqa: E402

__all__ = [
    "Config",
    "ConfigError",
    "Workdir",
    "WorkdirError",
    "load_config",
    "partition",
    "run_pipeline",
    "run_shards",
    "__version__",
]
