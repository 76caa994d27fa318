"""Writing, checking and submitting HTCondor submit descriptions and DAGs.

Generic: nothing here knows about shards. One module an idea, their names importable from here:

- `description`: `write_submit(path, commands, itemdata=...)`, a submit description written
  through `htcondor2.Submit` and parsed back (many jobs in one cluster take their item data
  from a file next to it, `queue a,b from NAME.items`: `str(Submit)` drops inline multi-line
  queue lists); `job_commands(software, ...)` and `write_job_script(...)`, the submit commands
  and the executable of a job that runs this project's Python on an execute node, from a
  container, an unpacked venv tarball or the node's PATH (`submit.config.JobSoftware`);
  `access_point_commands(...)` for a step that runs on the access point itself;
  `gpu_commands(resources)`, a job's GPU requests.
- `dag`: `Dag`, `Node`, `Script` and `write_dag(path, dag)`, the DAG file.
- `lint`: `lint_dag(path)`, what DAGMan would reject, found before submission;
  `dag_node_names(path)`, the nodes a DAG file declares.
- `schedd`: `submit_dag(path)` through the `htcondor2` bindings, with a `CondorError` that
  says what to do when no schedd can be reached; `require_not_running(dag)` (a DAG that
  DAGMan runs is neither rewritten nor submitted); `read_node_status(path)`, DAGMan's
  NODE_STATUS_FILE as plain dicts; `query_queue(...)`, job ads through `condor_q -json`;
  `dag_report(...)`, both, for `infer-corpus status` (with `record_submission`, which notes
  the DAGMan job of a submitted DAG).
- `eventlog`: `read_logs(paths)` and `summary(reading)`, each job's attempts (host, GPU,
  how each ended) and where their wall time went (transfer, setup, checkpoints, lost work,
  goodput), read from job event logs with `htcondor2.JobEventLog`.
- `matchmaking`: `job_match_ad(submit)`, the matchmaking part of the job ad condor_submit
  would build, so requirements can be checked against machine ads offline; `quantity`.
"""

from .dag import (
    NODE_KINDS,
    Dag,
    Node,
    Script,
    dag_text,
    write_dag,
)
from .description import (
    access_point_commands,
    checkpoint_commands,
    classad_literal,
    condor_arguments,
    gpu_commands,
    job_commands,
    resource_commands,
    site_attribute_commands,
    transfer_source,
    write_job_script,
    write_submit,
)
from .eventlog import (
    JOB_RECORD,
    EventLogError,
    read_logs,
    summary,
)
from .lint import (
    dag_node_names,
    lint_dag,
)
from .matchmaking import (
    cuda_version_code,
    job_match_ad,
    quantity,
)
from .schedd import (
    JOB_STATES,
    NODE_STATES,
    SUBMITTED_FILE,
    CondorError,
    dag_report,
    query_queue,
    read_node_status,
    record_submission,
    require_not_running,
    submit_dag,
)

__all__ = [
    "CondorError",
    "Dag",
    "EventLogError",
    "JOB_RECORD",
    "JOB_STATES",
    "NODE_KINDS",
    "NODE_STATES",
    "Node",
    "SUBMITTED_FILE",
    "Script",
    "access_point_commands",
    "checkpoint_commands",
    "classad_literal",
    "condor_arguments",
    "cuda_version_code",
    "dag_node_names",
    "dag_report",
    "dag_text",
    "gpu_commands",
    "job_commands",
    "job_match_ad",
    "lint_dag",
    "quantity",
    "query_queue",
    "read_logs",
    "read_node_status",
    "record_submission",
    "require_not_running",
    "resource_commands",
    "site_attribute_commands",
    "submit_dag",
    "summary",
    "transfer_source",
    "write_dag",
    "write_job_script",
    "write_submit",
]
