"""infer-corpus's ground floor: shard a document corpus, embed and classify every passage.

The public surface is small: load a config, partition inputs into a workdir, run one shard,
or run everything with the local executor. Nothing here imports the packages above it
(retrieval, qa_api, submit, infer_corpus).
"""

from .config import InferenceConfig, load_config
from .config_loader import ConfigError
from .errors import CorpusError, Failure, UsageError
from .executor import run_pipeline
from .manifest import Manifest
from .partition import partition
from .version import __version__
from .workdir import Workdir, WorkdirError
from .worker import run_shards

__all__ = [
    "ConfigError",
    "CorpusError",
    "Failure",
    "InferenceConfig",
    "Manifest",
    "UsageError",
    "Workdir",
    "WorkdirError",
    "load_config",
    "partition",
    "run_pipeline",
    "run_shards",
    "__version__",
]
