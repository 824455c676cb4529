"""``horovodrun`` with its rendezvous server bound to one address.

Horovod 0.28.1's rendezvous (key-value) server answers anyone, unauthenticated, and binds to
every interface (``find_port`` passes ``''``). The launcher runs horovodrun through this module
instead, which binds that server to the IPv4 address of the interface ``LEPTON_HOROVOD_BIND``
names (the first the job's traffic takes: ``lo``, so 127.0.0.1, for a one-host job), found
where horovodrun runs, and then runs horovodrun's own command line unchanged.

    python -m resources.horovodrun HOROVODRUN-ARGS...
"""

import os
import random
import socket
import sys

import psutil
from horovod.runner.http import http_server
from horovod.runner.launch import run_commandline

BIND_VARIABLE = "LEPTON_HOROVOD_BIND"
LOWEST_PORT, PORTS = 1024, 65536 - 1024


def interface_address(name: str) -> str:
    """The IPv4 address of the network interface ``name`` on this host."""
    found = [a.address for a in psutil.net_if_addrs().get(name, []) if a.family == socket.AF_INET]
    if not found:
        raise SystemExit(f"network interface {name!r} has no IPv4 address on this host")
    return found[0]


def bound_find_port(server_factory):  # noqa: ANN001, ANN201 (horovod's signature)
    """horovod's ``find_port``, on one interface's address instead of every interface."""
    address = interface_address(os.environ[BIND_VARIABLE])
    start = random.randrange(PORTS)
    for offset in range(PORTS):
        port = LOWEST_PORT + (start + offset) % PORTS
        try:
            return server_factory((address, port)), port
        except OSError:
            continue
    raise OSError(f"no free port to bind Horovod's rendezvous server to on {address}")


def main() -> None:
    if not os.environ.get(BIND_VARIABLE):
        raise SystemExit(f"{BIND_VARIABLE} is not set: the interface Horovod's server binds to")
    http_server.find_port = bound_find_port
    sys.argv[0] = "horovodrun"
    run_commandline()  # exits non-zero itself when a rank fails


if __name__ == "__main__":
    main()
