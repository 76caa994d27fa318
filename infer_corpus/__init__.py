"""The commands that compose the stages: `infer-corpus` (partition, shards, index, search,
eval, submit, status) and `qa-api`, and the config file that spans every package's section.

This is the top layer: it imports `inference`, `retrieval`, `qa_api` and `submit`; none of
them imports it (see docs/architecture.md).
"""
