"""Training mode: topic-classifier heads on the passage embeddings a run produced.

Sweeps (grid/random search, seeds for ensembles, ablations) run locally or as an HTCondor DAG;
one model can also be trained across several nodes under torchrun (`multinode`).
"""

from inference.errors import UsageError


class TrainError(UsageError):
    """A spec, workdir or option that training cannot use: retrying cannot help."""
