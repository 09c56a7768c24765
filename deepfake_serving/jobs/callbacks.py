"""Job callbacks, delivered apart from analysis: a POST of the job's end state, signed with the submitting
key's callback secret, sent by the callback task on its own queue and workers (jobs.worker), never by an
analysis worker.

- **Where**: the URL's host is resolved once per attempt and the request goes to the address that was
  checked (no second lookup to rebind). Loopback, private, link-local, shared, multicast and reserved
  addresses are refused unless the deployment lists their network in ``callback_allow``.
- **How long**: one attempt has a total deadline (``callback_timeout_s``) over resolving, connecting,
  sending and reading the status line, whatever the receiver drips; nothing else of the answer is read.
- **What counts**: a 2xx is delivered; a redirect is not followed and a 4xx is not retried (both failed); a
  5xx, a 429, a timeout or a refused connection is retried by the task with backoff (never by sleeping in a
  worker) until ``callback_attempts``; a key has at most ``callback_per_key`` deliveries in flight.
- **What the job record says**: ``callback`` is ``pending``, ``delivered``, ``failed`` (for every way of
  failing alike: a closed port and a 404 read the same) or ``refused`` (a destination the policy forbids,
  decided from the URL and DNS alone, which the client knows already); so the record is no port scanner.

Standard ``requests``/``urllib3`` time out per read, not per exchange, so a receiver sending a byte every
few seconds would hold them for ever; this module speaks the few lines of HTTP/1.1 it needs over a socket
whose timeout is the time left before every operation.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import socket
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from deepfake_serving.core.errors import RequestError

SIGNATURE_HEADER = "X-Deepfake-Signature"  # "sha256=" + hex HMAC-SHA256 of the body with the callback secret
DELIVERED, FAILED, REFUSED, RETRY = "delivered", "failed", "refused", "retry"
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def allowed_networks(spec: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """``callback_allow``: comma-separated networks (``10.1.0.0/16,127.0.0.1/32``) callbacks may reach."""
    try:
        return [ipaddress.ip_network(part.strip(), strict=False) for part in spec.split(",") if part.strip()]
    except ValueError as err:
        raise ValueError(f"callback_allow: {err}") from None


def permitted(address: IPAddress, allow: list) -> bool:
    """A public unicast address, or one in a network the deployment allows."""
    if any(address in network for network in allow):
        return True
    mapped = getattr(address, "ipv4_mapped", None)
    address = mapped or address
    return address.is_global and not address.is_multicast


@dataclass(frozen=True)
class Destination:
    scheme: str
    host: str
    port: int
    target: str  # path and query, as sent

    @classmethod
    def parse(cls, url: str) -> "Destination":
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or len(url) > 2048 or parts.username \
                or any(c in url for c in "\r\n\t "):
            raise RequestError("bad_option", "callback_url must be an http(s) URL of at most 2048 characters, "
                               "without credentials or spaces")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise RequestError("bad_option", "callback_url has a bad port") from None
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(parts.scheme, parts.hostname, port, target)

    def literal_refused(self, allow: list) -> bool:
        """Refused from the URL alone (an address literal outside the policy, or localhost): told at once."""
        if self.host.lower() in ("localhost", "localhost.localdomain") or self.host.lower().endswith(".localhost"):
            return not any(ipaddress.ip_address("127.0.0.1") in network for network in allow)
        try:
            return not permitted(ipaddress.ip_address(self.host), allow)
        except ValueError:
            return False  # a name: checked when it is resolved

    def resolve(self, allow: list, deadline: float) -> IPAddress | None:
        """The first address the host resolves to, or None when any of them is refused (a name that also
        points inside must not be a way in)."""
        infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        if time.monotonic() > deadline:
            raise TimeoutError("resolving the callback's host took the attempt's time")
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
        if not addresses or not all(permitted(a, allow) for a in addresses):
            return None
        return addresses[0]


def signed(payload: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()


def post_once(destination: Destination, payload: bytes, headers: dict[str, str], allow: list,
              timeout_s: float) -> str:
    """One attempt: DELIVERED, FAILED, REFUSED or RETRY, within ``timeout_s`` in all."""
    deadline = time.monotonic() + timeout_s

    def left() -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the callback's deadline passed")
        return remaining

    try:
        address = destination.resolve(allow, deadline)
        if address is None:
            return REFUSED
        sock = socket.create_connection((str(address), destination.port), timeout=left())
    except (OSError, TimeoutError):
        return RETRY
    try:
        if destination.scheme == "https":
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=destination.host)
        default = 443 if destination.scheme == "https" else 80
        host = destination.host if destination.port == default else f"{destination.host}:{destination.port}"
        if ":" in destination.host:
            host = f"[{destination.host}]" + ("" if destination.port == default else f":{destination.port}")
        lines = [f"POST {destination.target} HTTP/1.1", f"Host: {host}", "Connection: close",
                 "User-Agent: deepfake-serving-callback", f"Content-Length: {len(payload)}",
                 *(f"{name}: {value}" for name, value in headers.items())]
        request = ("\r\n".join(lines) + "\r\n\r\n").encode() + payload
        while request:
            sock.settimeout(left())
            sent = sock.send(request)
            request = request[sent:]
        status = b""
        while b"\r\n" not in status and len(status) < 1024:
            sock.settimeout(left())
            chunk = sock.recv(1024)
            if not chunk:
                break
            status += chunk
    except (OSError, TimeoutError):
        return RETRY
    finally:
        sock.close()
    words = status.split(b"\r\n", 1)[0].split()
    code = int(words[1]) if len(words) > 1 and words[0].startswith(b"HTTP/") and words[1].isdigit() else 0
    if 200 <= code < 300:
        return DELIVERED
    return RETRY if code == 0 or code == 429 or code >= 500 else FAILED


def end_payload(job_id: str, record: dict) -> bytes:
    """The callback's body: the job's id, its end state and its answer or error, as the job's view has them."""
    body: dict = {"id": job_id, "state": record.get("state")}
    for field in ("result", "error"):
        if record.get(field):
            body[field] = json.loads(record[field])
    return json.dumps(body).encode()


class CallbackSender:
    """One delivery attempt of a job's callback per call (what the callback task runs; no Celery in here)."""

    def __init__(self, settings, records):
        self.settings, self.records = settings, records
        self.allow = allowed_networks(settings.callback_allow)

    def deliver(self, job_id: str) -> float | None:
        """Try once; None when the outcome is recorded, else the seconds after which to try again."""
        from deepfake_serving.jobs.front import KeyRing

        record = self.records.get(job_id)
        if not record or not record.get("callback_url") or record.get("callback") not in ("pending", None):
            return None
        redis, key = self.records.redis, self.records.key(job_id)
        secret = KeyRing(redis).callback_secret(record.get("owner", ""))
        if not secret:  # the key was revoked: its jobs call back no more
            redis.hset(key, "callback", FAILED)
            return None
        slot = f"deepfake:callbacks-in-flight:{record.get('owner', '')}"
        if redis.incr(slot) > self.settings.callback_per_key:  # this key's other callbacks are being sent
            redis.decr(slot)
            return 2.0
        redis.expire(slot, int(self.settings.callback_timeout_s) + 60)  # a killed sender frees its slot
        try:
            attempt = int(redis.hincrby(key, "callback_attempts", 1))
            payload = end_payload(job_id, record)
            headers = {"Content-Type": "application/json", SIGNATURE_HEADER: signed(payload, secret),
                       "X-Deepfake-Job": job_id}
            try:
                outcome = post_once(Destination.parse(record["callback_url"]), payload, headers, self.allow,
                                    self.settings.callback_timeout_s)
            except RequestError:
                outcome = REFUSED
        finally:
            redis.decr(slot)
        if outcome == RETRY and attempt < self.settings.callback_attempts:
            return min(60.0, self.settings.retry_backoff_s * 2 ** (attempt - 1))
        redis.hset(key, "callback", FAILED if outcome == RETRY else outcome)
        return None
