"""The matchmaking part of the job ad condor_submit would build (resource requests and the GPU
constraint), so a job's requirements can be checked against machine ads offline."""

from __future__ import annotations

import re
from typing import Any

_UNITS = {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}


def quantity(text: str, default_unit: str) -> int:
    """An HTCondor quantity ('16GB', '512M', '2000') in the unit `default_unit` ('K' or 'M')."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)B?\s*", text, re.IGNORECASE)
    if not match:
        raise ValueError(f"{text!r} is not a quantity such as 16GB")
    number, unit = float(match.group(1)), match.group(2).upper()
    if not unit:
        return int(number)
    return int(number * _UNITS[unit] / _UNITS[default_unit])


def cuda_version_code(text: str) -> int:
    """A `gpus_minimum_runtime` value as HTCondor encodes it (major * 1000 + minor * 10, as
    the GPUs' `MaxSupportedVersion`): "13.0" and "13" are 13000, "12.6" is 12060, and a
    number of 1000 or more is taken as already encoded."""
    if not re.fullmatch(r"\d+(\.\d+)?", text.strip()):
        raise ValueError(f"{text!r} is not a CUDA version such as 13.0")
    major, _, minor = text.strip().partition(".")
    if not minor and int(major) >= 1000:
        return int(major)
    return int(major) * 1000 + int(minor or 0) * 10


def job_match_ad(description: Any) -> Any:
    """The matchmaking attributes condor_submit derives from a submit description.

    RequestCpus/Memory/Disk/GPUs; the `gpus_minimum_capability`, `gpus_maximum_capability`,
    `gpus_minimum_memory` and `gpus_minimum_runtime` values as GPUsMinCapability,
    GPUsMaxCapability, GPUsMinMemory (MB) and GPUsMinRuntime (encoded as `cuda_version_code`),
    and RequireGPUs from `require_gpus` and clauses over those attributes, as condor_submit
    writes them (`Capability >= GPUsMinCapability`, `MaxSupportedVersion >= GPUsMinRuntime`);
    and Requirements: the description's own expression and the clauses condor_submit appends
    for the requests. `machine_ad.matches(job_ad)` evaluates the job's Requirements against a
    machine (classad2 evaluates the argument's Requirements).
    """
    import classad2

    def get(key: str) -> str | None:
        value = description.expand(key) if key in description else ""
        return value.strip() or None

    ad = classad2.ClassAd()
    clauses = []
    own = get("requirements")
    if own:
        clauses.append(f"({own})")
    cpus = int(get("request_cpus") or 1)
    ad["RequestCpus"] = cpus
    clauses.append("(TARGET.Cpus >= RequestCpus)")
    if get("request_memory"):
        ad["RequestMemory"] = quantity(get("request_memory"), "M")
        clauses.append("(TARGET.Memory >= RequestMemory)")
    if get("request_disk"):
        ad["RequestDisk"] = quantity(get("request_disk"), "K")
        clauses.append("(TARGET.Disk >= RequestDisk)")
    gpus = int(get("request_gpus") or 0)
    if gpus:
        ad["RequestGPUs"] = gpus
        constraints = [f"({get('require_gpus')})"] if get("require_gpus") else []
        for key, attribute, clause, value in (
                ("gpus_minimum_capability", "GPUsMinCapability", "Capability >= {}", float),
                ("gpus_maximum_capability", "GPUsMaxCapability", "Capability <= {}", float),
                ("gpus_minimum_memory", "GPUsMinMemory", "GlobalMemoryMb >= {}",
                 lambda text: quantity(text, "M")),
                ("gpus_minimum_runtime", "GPUsMinRuntime", "MaxSupportedVersion >= {}",
                 cuda_version_code)):
            if get(key):
                ad[attribute] = value(get(key))
                constraints.append(clause.format(attribute))
        if constraints:
            ad["RequireGPUs"] = classad2.ExprTree(" && ".join(constraints))
            clauses.append("(countMatches(MY.RequireGPUs, TARGET.AvailableGPUs) >= RequestGPUs)")
        else:
            clauses.append("(TARGET.GPUs >= RequestGPUs)")
    ad["Requirements"] = classad2.ExprTree(" && ".join(clauses))
    return ad
