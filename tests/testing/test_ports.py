"""Test servers get ports outside the range the OS hands to outgoing connections (and Ray's worker ports)."""

import socket
from pathlib import Path

from lungdr.testing.cluster import PORT_RANGE, free_port


def test_free_port_is_bindable_and_outside_the_ephemeral_range():
    low, high = PORT_RANGE
    path = Path("/proc/sys/net/ipv4/ip_local_port_range")
    if path.exists():  # the OS's own ephemeral range must not overlap ours
        first, _ = (int(x) for x in path.read_text().split())
        assert high <= first
    held = []
    try:
        for _ in range(5):  # each port is free when handed out, even with the previous ones held
            port = free_port()
            assert low <= port < high
            s = socket.socket()
            s.bind(("127.0.0.1", port))
            held.append(s)
    finally:
        for s in held:
            s.close()
