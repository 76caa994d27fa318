"""infer-corpus's ground floor: shard a document corpus, embed and classify every passage.

Import what you use from its modules (`inference.partition`, `inference.config`,
`inference.workdir`, ...): this package loads none of them itself, so a light module such as
`inference.errors` or `inference.config_loader` costs no pyarrow, torch or tokenizers. Nothing
here imports the packages above it (retrieval, qa_api, submit, infer_corpus).
"""

from .version import __version__

__all__ = ["__version__"]
