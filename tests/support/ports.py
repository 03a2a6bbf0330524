"""Free loopback ports for the tests, never the same one in two pytest-xdist workers.

A test picks a port by binding port 0 and closing the socket; the process that will listen
on it (a proxy, a server, PgBouncer) binds it a moment later, and a "dead" port is one
nothing should ever listen on. In between, the kernel may hand the same port to another
worker's pick: it chooses at random among the ports free at that instant. A proxy started
there would then answer this worker's readiness check, or listen on its dead port. So each
worker keeps only the ports of its own share, ``(port // 2) % workers == index``, pairs
of ports because the kernel hands out odd ports for bind and even ones for connect. Run
serially, every port is the process's share.
"""

from __future__ import annotations

import os
import re
import socket

# Each try keeps a port with probability 1/workers: this bounds the loop far above need.
_TRIES_PER_WORKER = 200


def worker_share() -> tuple[int, int]:
    """(index, workers) of this process among the xdist workers; (0, 1) when serial."""
    match = re.fullmatch(r"gw(\d+)", os.environ.get("PYTEST_XDIST_WORKER", ""))
    try:
        workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    except ValueError:
        workers = 1
    if match is None or workers < 2:
        return 0, 1
    # a worker that replaces a crashed one gets a number past the count
    return int(match.group(1)) % workers, workers


def is_mine(port: int) -> bool:
    index, workers = worker_share()
    return (port // 2) % workers == index


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on ``host`` now (IPv4, or IPv6 for an address with ':'), of this
    worker's share."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    _, workers = worker_share()
    for _ in range(_TRIES_PER_WORKER * workers):
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port: int = s.getsockname()[1]
        if is_mine(port):
            return port
    raise RuntimeError(f"no free port of this worker's share on {host}")


def free_port_pair() -> int:
    """An even port P with P and P + 1 both free on 127.0.0.1 now, both of this worker's
    share (a pair is always in one share)."""
    for _ in range(50):
        port = free_port() & ~1  # bind(0) mostly hands out odd ports: take its pair
        try:
            with socket.socket() as first, socket.socket() as second:
                first.bind(("127.0.0.1", port))
                second.bind(("127.0.0.1", port + 1))
        except OSError:
            continue
        return port
    raise RuntimeError("no two consecutive free ports on 127.0.0.1")
