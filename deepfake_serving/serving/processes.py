"""What both server launchers need: free loopback ports and stopping a whole process group."""

from __future__ import annotations

import os
import signal
import socket
import subprocess

import psutil


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (so a test server never collides with a running one)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def stop_group(process: subprocess.Popen, timeout: float) -> None:
    """SIGTERM the process group the server was started in, SIGKILL what is left after ``timeout``,
    and wait for every member (a server's children outlive a signal to the server alone)."""
    try:
        group = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        group = []
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        _, alive = psutil.wait_procs(group, timeout=timeout)
        if not alive:
            break
    process.wait()
