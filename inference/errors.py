"""The one error tree every package raises from, and the one wrapper that reports it.

```
CorpusError                 a problem a command reports in one line, never a traceback
├── UsageError   (exit 2)   bad usage, config, input, workdir or model: retrying cannot help
│   ├── WorkdirError          inference.errors         a missing, damaged or foreign workdir
│   ├── ConfigError           inference.config_loader  a config file or override off the schema
│   ├── InputError            inference.readers        unreadable or unusable input paths
│   ├── ModelError            inference.models         a model that cannot be found or loaded
│   ├── PartitionError        inference.partition      a part's map output missing, damaged or stale
│   ├── PartChanged           inference.partition_map  a part's input changed since it was planned
│   ├── QueryError            retrieval.search         a search request that cannot be run
│   ├── ElasticsearchRefused  retrieval.elasticsearch  the cluster refused (auth, mapping)
│   ├── ResultError           submit.validate          a shard job's result that fails its checks
│   ├── StepError             submit.steps             a pool step's output that fails its checks
│   ├── BadInput              submit.job               a job's shard, manifest or model is unusable
│   ├── EventLogError         submit.htcondor.eventlog a job log missing, foreign or another DAG's
│   ├── PolicyError           submit.preemption        impossible eviction model or GPU-class costs
│   └── TrainError            submit.train             a bad sweep or multinode spec, or its data
└── Failure      (exit 1)   the work failed: a worker, a cluster, a scheduler; a retry may help
    ├── DiskFullError             inference.errors         no space left (or quota) to write a file
    ├── RunError                  inference.executor       a worker process failed
    ├── EndpointError             inference.llm_backends   a chat endpoint kept failing
    ├── ElasticsearchUnavailable  retrieval.elasticsearch  the cluster cannot be reached
    ├── CondorError               submit.htcondor.schedd   no schedd, or HTCondor refused the work
    ├── DataSourceError           submit.datasource        a federation object that cannot be read
    └── LLMError                  qa_api.llms              an answer model or endpoint failed
```

Each command's `main` runs through `run_command`, so all of them (`infer-corpus`, `qa-api`,
`train-models`, the job and POST scripts) print `PROG: error: ...` or `PROG: failed: ...` and
exit with the code the error carries.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
from collections.abc import Callable

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class CorpusError(Exception):
    """Root of the tree: an error a command reports as one line and an exit code."""

    exit_code = EXIT_FAILED
    label = "failed"


class UsageError(CorpusError):
    """Bad usage, config, input, workdir or model: the same command cannot succeed again."""

    exit_code = EXIT_USAGE
    label = "error"


class WorkdirError(UsageError):
    """The workdir is missing, damaged, or belongs to a different run (`inference.workdir`)."""


class Failure(CorpusError):
    """The work itself failed (a worker, a cluster, a scheduler): a retry may succeed."""

    exit_code = EXIT_FAILED
    label = "failed"


class DiskFullError(Failure):
    """A file could not be written because the disk (or the user's quota) is full. Files that
    were finished stay, so the same command, run again with room, resumes."""

    REASONS = (errno.ENOSPC, errno.EDQUOT)

    @classmethod
    def caused(cls, exc: BaseException) -> bool:
        """`exc` is "no space left on device" or "disk quota exceeded": an OSError with that
        errno, or a library's error that only carries the system's message (pyarrow)."""
        if getattr(exc, "errno", None) in cls.REASONS:
            return True
        return any(os.strerror(code) in str(exc) for code in cls.REASONS)

    @classmethod
    def writing(cls, what: str) -> DiskFullError:
        """The one-line report: what could not be written, and that a re-run resumes."""
        return cls(f"no space left on device to write {what}: free some space (or write "
                   "to another disk), then run the same command again to resume")


def run_command(prog: str, command: Callable[[], int], *,
                interrupted: str = "interrupted") -> int:
    """Run a command's body, turning the error tree into one line on stderr and its exit code.

    A closed stdout (`... --json | head`) ends the command quietly with the usual exit code."""
    logging.basicConfig(level=logging.WARNING, format=f"{prog}: %(message)s")
    try:
        code = command()
        sys.stdout.flush()  # a closed stdout shows here, inside the handlers below
        return code
    except CorpusError as exc:
        print(f"{prog}: {exc.label}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: {interrupted}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away: point stdout at /dev/null so the interpreter's final flush
        # does not raise again, and stop like `yes | head` does.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILED
