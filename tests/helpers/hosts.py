"""Test hosts: network namespaces joined to this machine by veth pairs, made and removed by the test
(root and iproute2), and a relay on this machine that carries their connections to services listening on
its loopback. A host reaches this machine's addresses on the veths (10.213.0.0/16), nothing else: no
default route, no other interface."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import threading
from dataclasses import dataclass

SUBNET = "10.213"  # 10.213.<i>.0/30 per host: .1 this machine's end, .2 the host's


def can_make_hosts() -> str | None:
    """None when this machine can make test hosts, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if not shutil.which("ip"):
        return "iproute2 (ip) is not installed"
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout
    if f"{SUBNET}." in routes:
        return f"{SUBNET}.0.0/16 is in use on this machine"
    return None


def _ip(*args: str, namespace: str | None = None, check: bool = True) -> None:
    prefix = ["ip", "netns", "exec", namespace] if namespace else []
    subprocess.run([*prefix, "ip", *args], check=check, capture_output=True)


@dataclass(frozen=True)
class Host:
    name: str
    namespace: str
    address: str  # the host's own, on its veth
    gateway: str  # this machine's end of the veth: where the host reaches the relay

    @property
    def run_here(self) -> list[str]:
        """The prefix that runs a command on this host."""
        return ["ip", "netns", "exec", self.namespace]


class TestHosts:
    __test__ = False  # not a test class

    def __init__(self, count: int = 2):
        tag = f"dfk{os.getpid() % 100000}"
        self.hosts = [Host(f"host{i}", f"{tag}h{i}", f"{SUBNET}.{i}.2", f"{SUBNET}.{i}.1") for i in range(count)]
        self.links = [f"{tag}v{i}" for i in range(count)]
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.servers: list[asyncio.AbstractServer] = []

    def __enter__(self) -> "TestHosts":
        try:
            for host, link in zip(self.hosts, self.links):
                _ip("netns", "add", host.namespace)
                _ip("link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", host.namespace)
                _ip("addr", "add", f"{host.gateway}/30", "dev", link)
                _ip("link", "set", link, "up")
                _ip("addr", "add", f"{host.address}/30", "dev", "eth0", namespace=host.namespace)
                _ip("link", "set", "eth0", "up", namespace=host.namespace)
                _ip("link", "set", "lo", "up", namespace=host.namespace)
                _ip("route", "add", f"{SUBNET}.0.0/16", "via", host.gateway, namespace=host.namespace)
        except BaseException:
            self.__exit__()
            raise
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._close(), self.loop).result(timeout=10)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=5)
            self.loop.close()
        for host, link in zip(self.hosts, self.links):
            _ip("netns", "del", host.namespace, check=False)  # takes its end of the veth, and so the pair
            _ip("link", "del", link, check=False)

    async def _close(self) -> None:
        for server in self.servers:
            server.close()
        tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def address(self) -> str:
        """This machine as every host reaches it (the first host's gateway; the others route to it)."""
        return self.hosts[0].gateway

    def relay(self, port: int) -> int:
        """A port on every host's gateway address whose connections are carried to 127.0.0.1:``port``."""
        with socket.socket() as probe:
            probe.bind((self.hosts[0].gateway, 0))
            relay_port = probe.getsockname()[1]

        async def pipe(reader, writer) -> None:
            try:
                while data := await reader.read(1 << 16):
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                writer.close()

        async def carry(reader, writer) -> None:
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                writer.close()
                return
            await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

        async def listen() -> None:
            for host in self.hosts:
                self.servers.append(await asyncio.start_server(carry, host.gateway, relay_port))

        asyncio.run_coroutine_threadsafe(listen(), self.loop).result(timeout=10)
        return relay_port
