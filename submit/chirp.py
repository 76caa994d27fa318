"""A running job's progress in its own job ad, and its records in its event log, through
chirp.

When a submit file says `want_io_proxy = true`, HTCondor gives the job a chirp proxy, and the
job can set attributes of its ad that `condor_q -af NAME` and `infer-corpus status` read while
it runs. It also records when each process started, when it reached its first useful step
and each checkpoint it wrote (`JobAd.record`): chirp's `ulog` puts them into the job's event
log, where `infer-corpus jobs` reads them (`submit.htcondor.eventlog`), and the last
checkpoint's times go into the ad too. Both are best effort: a job without a proxy, or whose
chirp calls fail, runs the same and only says so once on stderr.

Attributes are set as delayed updates, which the starter takes only for names that match the
pool's CHIRP_DELAYED_UPDATE_PREFIX (default `Chirp*`, given to the job as
`_CHIRP_DELAYED_UPDATE_PREFIX`) and otherwise drops without an error the client sees: so
every name starts with `Chirp`, and a job on a pool that takes other names says so.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import sys
import time
from typing import Any

from .htcondor.eventlog import JOB_RECORD

PUBLISH_INTERVAL = 30.0  # seconds between job-ad updates (each is a round trip to the schedd)
DELAYED_PREFIX = "Chirp*"  # HTCondor's default CHIRP_DELAYED_UPDATE_PREFIX


def delayed_update_allowed(name: str) -> bool:
    """Whether the starter takes a delayed update of `name`: it matches one of the pool's
    CHIRP_DELAYED_UPDATE_PREFIX patterns (case aside)."""
    patterns = os.environ.get("_CHIRP_DELAYED_UPDATE_PREFIX") or DELAYED_PREFIX
    return any(fnmatch.fnmatchcase(name.lower(), pattern.lower())
               for pattern in re.split(r"[,\s]+", patterns) if pattern)


class JobAd:
    """Sets attributes of this job's ad, at most every `interval` seconds unless forced, and
    writes records into its event log. A new JobAd records the process's start."""

    def __init__(self, label: str, interval: float = PUBLISH_INTERVAL) -> None:
        self.label, self.interval = label, interval
        self.sent = 0.0
        self.chirp = _chirp_client(label)
        self.started = time.time()
        self.ready_seen = False
        self.refused_said = False
        self.record("start")

    def record(self, event: str, **fields: Any) -> None:
        """One record (`start`, `ready`, `checkpoint` with `started` and `covers`) in the
        job's event log, stamped with this moment; a checkpoint's times also go into the ad
        (ChirpCheckpointStartedAt, ChirpCheckpointWrittenAt, ChirpCheckpointCovers)."""
        if self.chirp is None:
            return
        at = time.time()
        if event == "ready":
            if self.ready_seen:
                return
            self.ready_seen = True
        text = JOB_RECORD + json.dumps({"event": event, "at": round(at, 3), **fields},
                                       separators=(",", ":"))
        try:
            with self.chirp:
                self.chirp.ulog(text)
                if event == "ready":
                    self._set({"ChirpFirstStepSeconds": f"{at - self.started:.3f}"})
                if event == "checkpoint":
                    self._set({"ChirpCheckpointStartedAt": f"{fields.get('started', at):.3f}",
                               "ChirpCheckpointWrittenAt": f"{at:.3f}",
                               "ChirpCheckpointCovers": json.dumps(str(fields.get("covers", "")))})
        except Exception as exc:
            print(f"{self.label}: chirp failed ({exc}); records stay out of the job log",
                  file=sys.stderr)
            self.chirp = None

    def due(self) -> bool:
        return self.chirp is not None and time.monotonic() - self.sent >= self.interval

    def publish(self, values: dict[str, str], *, force: bool = False) -> None:
        if self.chirp is None or not (force or self.due()):
            return
        self.sent = time.monotonic()
        try:
            with self.chirp:
                self._set(values)
        except Exception as exc:
            print(f"{self.label}: chirp failed ({exc}); progress stays out of the job ad",
                  file=sys.stderr)
            self.chirp = None

    def _set(self, values: dict[str, str]) -> None:
        """Delayed updates of the ad (within an open chirp connection), but for names the
        pool's prefix refuses: those are left out, and said once."""
        for name, value in values.items():
            if delayed_update_allowed(name):
                self.chirp.set_job_attr_delayed(name, value)
            elif not self.refused_said:
                self.refused_said = True
                print(f"{self.label}: this pool's CHIRP_DELAYED_UPDATE_PREFIX "
                      f"({os.environ.get('_CHIRP_DELAYED_UPDATE_PREFIX')}) does not take "
                      f"{name}; progress stays out of the job ad", file=sys.stderr)


def _chirp_client(label: str) -> Any:
    """A chirp connection to the job's starter, or None: only when HTCondor set up a chirp
    proxy (`want_io_proxy`), and never an error."""
    if not os.environ.get("_CONDOR_CHIRP_CONFIG"):
        return None
    try:
        from htcondor2.htchirp import HTChirp

        return HTChirp()
    except Exception as exc:
        print(f"{label}: no chirp ({exc}); progress stays out of the job ad", file=sys.stderr)
        return None
