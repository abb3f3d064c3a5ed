"""The local stack against the real emulators, where a start-up failure must say why."""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path

import httpx
import pytest

from replicate_relay.devstack.processes import StackError
from replicate_relay.devstack.stack import LocalStack, StackConfig


def test_an_emulator_whose_port_is_taken_says_so(tmp_path: Path) -> None:
    """What failed CI on 2026-12-02 (an outgoing connection took the port between the pick and the
    JVM's bind) now reads as its cause, not as the last frames of a Java stack trace."""
    config = StackConfig.on_free_ports(log_dir=tmp_path)
    local = LocalStack(config)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind((config.host, config.firestore_port))
        holder.listen()
        try:
            with pytest.raises(StackError) as failure:
                local.start_emulators()  # not start(): its preflight would refuse the port first
        finally:
            local.stop()
    assert "the Firestore emulator exited during start-up (java.net.BindException: Address already in use)" in str(
        failure.value
    )


def _time_wait_sockets(port: int) -> int:
    """How many TCP sockets whose local side is `port` are in TIME_WAIT (state 06); the JVMs' sockets
    are IPv6 ones, in /proc/net/tcp6."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in (line.split() for line in Path(table).read_text().splitlines()[1:]):
            count += row[1].endswith(f":{port:04X}") and row[3] == "06"
    return count


@pytest.mark.skipif(not Path("/proc/net/tcp6").exists(), reason="reads the sockets' states from Linux's /proc/net")
def test_a_stack_starts_at_once_on_the_ports_of_one_just_stopped(tmp_path: Path) -> None:
    """`relay dev` started again within a minute of the last one gets the Pub/Sub emulator's port,
    though the connections the stopped servers closed still sit there in TIME_WAIT."""
    config = StackConfig.on_free_ports(
        reconcile_every=0, log_dir=tmp_path / "logs", telemetry_dir=tmp_path / "telemetry"
    )
    emulators = {"Pub/Sub": config.pubsub_port, "Firestore": config.firestore_port}
    first = LocalStack(config)
    clients: list[socket.socket] = []
    try:
        first.start()
        # Clients still connected when the stack stops, as `relay dev --demo`'s own are: the servers
        # close those connections first, which leaves them in TIME_WAIT on the servers' ports.
        clients = [socket.create_connection((config.host, port), timeout=10) for port in emulators.values()]
    finally:
        first.stop()
        for client in clients:
            with contextlib.suppress(OSError):
                client.recv(1)  # the server's FIN (b"") from its exit
            client.close()
    held = {name: _time_wait_sockets(port) for name, port in emulators.items()}
    assert all(held.values()), f"no TIME_WAIT on an emulator's port after the stop, nothing to test: {held}"

    second = LocalStack(config)
    try:
        second.start()  # its preflight checks every port, then each server binds its own
        assert httpx.get(second.receiver_url + "/health", timeout=10).status_code == 200
    finally:
        second.stop()
