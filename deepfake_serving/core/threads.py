"""Cores as a budget: every worker's intra-op threads come from this one rule.

threads = max(1, cores ÷ workers), where ``workers`` counts every model worker
that shares the machine's cores — image and video, serving and canary
versions — as the launcher that starts them declares in ``DEEPFAKE_WORKERS``.
An archive (``handler.threads``) or the environment (``DEEPFAKE_THREADS``) may
override it. When workers share the machine, idle threads never spin (ONNX
Runtime's ``allow_spinning`` off, OpenMP's passive wait) and OpenVINO does not
pin threads to cores, so a worker that waits leaves its cores to the others.
"""

from __future__ import annotations

import os

WORKERS_ENV = "DEEPFAKE_WORKERS"
THREADS_ENV = "DEEPFAKE_THREADS"
CORES_ENV = "DEEPFAKE_CORES"


def machine_cores() -> int:
    """The cores this process may run on (its affinity, not the host's count), or ``DEEPFAKE_CORES``."""
    if os.environ.get(CORES_ENV):
        return int(os.environ[CORES_ENV])
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def threads_for(cores: int, workers: int) -> int:
    return max(1, cores // max(1, workers))


def workers_on_machine() -> int:
    return int(os.environ.get(WORKERS_ENV) or 1)


def alone_on_machine() -> bool:
    """No other worker shares the cores: idle threads may spin and pin to cores."""
    return workers_on_machine() == 1


def intra_op_threads(explicit: int | None = None) -> int:
    """An explicit count (argument, then ``DEEPFAKE_THREADS``), else the rule."""
    explicit = explicit or int(os.environ.get(THREADS_ENV) or 0)
    if explicit:
        return int(explicit)
    return threads_for(machine_cores(), workers_on_machine())


def worker_environment(workers: int) -> dict[str, str]:
    """What a launcher puts in its server's environment for ``workers`` model workers in all. OpenMP
    threads wait passively (the torch engine and MTCNN's glue otherwise spin on idle cores)."""
    return {WORKERS_ENV: str(workers), "OMP_WAIT_POLICY": "PASSIVE",
            "OMP_NUM_THREADS": str(threads_for(machine_cores(), workers))}
