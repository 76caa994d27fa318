"""A running job's progress in its own job ad, through chirp.

When a submit file says `want_io_proxy = true`, HTCondor gives the job a chirp proxy, and the
job can set attributes of its ad that `condor_q -af NAME` and `infer-corpus status` read while
it runs. Progress is best effort: a job without a proxy, or whose chirp calls fail, runs the
same and only says so once on stderr.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

PUBLISH_INTERVAL = 30.0  # seconds between job-ad updates (each is a round trip to the schedd)


class JobAd:
    """Sets attributes of this job's ad, at most every `interval` seconds unless forced."""

    def __init__(self, label: str, interval: float = PUBLISH_INTERVAL) -> None:
        self.label, self.interval = label, interval
        self.sent = 0.0
        self.chirp = _chirp_client(label)

    def due(self) -> bool:
        return self.chirp is not None and time.monotonic() - self.sent >= self.interval

    def publish(self, values: dict[str, str], *, force: bool = False) -> None:
        if self.chirp is None or not (force or self.due()):
            return
        self.sent = time.monotonic()
        try:
            with self.chirp:
                for name, value in values.items():
                    self.chirp.set_job_attr_delayed(name, value)
        except Exception as exc:
            print(f"{self.label}: chirp failed ({exc}); progress stays out of the job ad",
                  file=sys.stderr)
            self.chirp = None


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
