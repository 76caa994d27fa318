"""Running the pipeline's steps on an HTCondor pool: submit descriptions and DAGs.

- `submit.htcondor`: generic writers and checks, a module an idea: submit descriptions
  (`description`), the DAG model and file (`dag`: categories, retries, scripts, FINAL
  nodes), the DAG linter (`lint`), the schedd (`schedd`: submission, queue, node status, the
  status report) and matchmaking (`matchmaking`).
- `submit.pipeline`: the inference DAG behind `infer-corpus submit`.
- `submit.job`: what a shard job runs on an execute node (parts, checkpoints, resume).
- `submit.validate`: the POST script that lets only sound results into results/.
- `submit.steps`: the PRE/POST scripts of the partition, index and Elasticsearch load jobs.

This package builds on `inference` alone; `infer_corpus` (the commands) calls it, and neither
`inference` nor `retrieval` imports it.
"""
