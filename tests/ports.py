"""Loopback ports for tests that start a server on a port of their choosing, picked outside
the kernel's ephemeral port range.

A port found free by binding port 0 comes from the range the kernel also takes the local port
of every outgoing connection from: a moment later a client may hold it, and the server the
test starts on it fails with "Address already in use". .ci/run runs three suites side by side,
whose load generators open thousands of connections, so that is not rare. connect() never
takes a port below the range; a random one there is checked free by binding it.
"""

import random
import socket
from typing import Tuple

_RANDOM = random.SystemRandom()  # independent of the tests' seeded random


def ephemeral_range(path: str = "/proc/sys/net/ipv4/ip_local_port_range") -> Tuple[int, int]:
    try:
        with open(path) as f:
            low, high = (int(x) for x in f.read().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing uses now and no outgoing connection will take."""
    first = ephemeral_range()[0]
    if first - 10000 >= 1000:
        for _ in range(200):
            port = _RANDOM.randrange(10000, first)
            with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
                try:
                    s.bind((host, port))
                except OSError:
                    continue
                return port
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:  # no room below the range
        s.bind((host, 0))
        return int(s.getsockname()[1])
