"""What both server launchers need: free loopback ports and stopping a whole process group."""

from __future__ import annotations

import dataclasses
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


@dataclasses.dataclass(frozen=True)
class ServerPorts:
    """Where a server binds (``host``, keyword-only) and its ports, in the order the subclass's fields give them."""

    host: str = dataclasses.field(default="127.0.0.1", kw_only=True)

    @classmethod
    def port_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.name != "host"]

    @classmethod
    def free(cls, host: str = "127.0.0.1"):
        return cls(*free_ports(len(cls.port_names())), host=host)

    @classmethod
    def parse(cls, ports: str | None, host: str = "127.0.0.1"):
        """``--ports``: none (the defaults), ``free`` (any free ones), or every port, comma-separated."""
        names = cls.port_names()
        if not ports:
            return cls(host=host)
        if ports == "free":
            return cls.free(host)
        values = ports.split(",")
        if len(values) != len(names) or not all(v.strip().isdigit() for v in values):
            raise ValueError(f"--ports takes {len(names)} ports ({','.join(names)}) or 'free', not {ports!r}")
        return cls(*(int(v) for v in values), host=host)

    @property
    def client_host(self) -> str:
        """The address clients on this machine use (a wildcard bind is reached on loopback)."""
        return "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host


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
