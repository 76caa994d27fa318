"""Batch generation on HTCondor: the DAG, its job and its POST check.

`infer-corpus submit --generation` writes WORKDIR/condor-generate/:

    gen-MODEL-00000 ... gen-MODEL-NNNNN   one GPU job per prompt shard and model whose outputs
                                          are missing or stale; each model has its own submit
                                          file, asking for a GPU with the memory it needs
                                          (`generation.models.KEY.gpu_memory`; an endpoint's
                                          jobs ask for no GPU); SCRIPT POST checks the output
    FINAL report   (access point: `infer-corpus generate report`; fails the DAG unless every
                   job succeeded)

A job (`python -m submit.generation job ...`) gets its prompt shard and the generation
manifest by file transfer and runs the same worker as `infer-corpus generate`. With
`condor.checkpoint_minutes`, it exits with `condor.checkpoint_exit_code` at the first row
checkpoint past that time; HTCondor saves the checkpoint file (`transfer_checkpoint_files`)
and restarts the job, which continues from it. At each row checkpoint the job logs its rows
and output tokens/s and, with `condor.want_io_proxy`, publishes them in its job ad
(`ChirpGenerationRowsDone`, `ChirpGenerationRowsTotal`, `ChirpGenerationTokensPerSecond`), which
`infer-corpus status` shows beside the DAG's state. The POST script (`python -m submit.generation
post ...`) moves an output into generations/MODEL/ only when it checks out; otherwise it keeps
it as `*.rejected`, logs why in logs/validate.log, and exits 1 so DAGMan retries the node.

Exit codes as for shard jobs (docs/condor.md): 0 done, 1 failed (retry), 2 bad input (no
retry), the checkpoint code, 130 interrupted.

Modules, as `pipeline`/`job`/`validate` are for shards: `dag` (the DAG, submission, status),
`job` (what a job runs), `validate` (the POST check); `__main__` is the job's and the POST
script's command line.
"""

from .dag import (
    DAG_FILE,
    GENERATION_DIR,
    GENERATION_STATUS_FILE,
    generation_dir,
    generation_status,
    incoming_path,
    submit_generation,
    write_generation_dag,
)
from .validate import accept, check_output

__all__ = ["DAG_FILE", "GENERATION_DIR", "GENERATION_STATUS_FILE", "accept", "check_output",
           "generation_dir", "generation_status", "incoming_path", "submit_generation",
           "write_generation_dag"]
