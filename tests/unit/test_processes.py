"""The local stack's process helpers: the ports it picks and what it says when a child dies."""

from __future__ import annotations

import errno
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from replicate_relay.devstack.processes import (
    ManagedProcess,
    StackError,
    _ephemeral_ports,
    ensure_port_free,
    first_exception,
    free_port,
    group_members,
)

# The start of what the Firestore emulator logs when its port is taken (CI, 2026-12-02); the last
# five lines of the trace, all a StackError used to show, say nothing of the cause.
FIRESTORE_BIND_FAILURE = """\
[firestore] Dec 02, 2026 3:01:12 AM com.google.cloud.datastore.emulator.firestore.CloudFirestore main
[firestore] SEVERE: Exiting due to unexpected exception.
[firestore] java.net.BindException: Address already in use
[firestore] \tat java.base/sun.nio.ch.Net.bind0(Native Method)
[firestore] \tat io.netty.util.concurrent.SingleThreadEventExecutor$4.run(SingleThreadEventExecutor.java:994)
[firestore] \tat java.base/java.lang.Thread.run(Thread.java:840)
"""


def test_free_ports_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    ports = [free_port() for _ in range(60)]
    assert len(set(ports)) == len(ports)
    assert all(1024 < port < _ephemeral_ports()[0] for port in ports)
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", port))


def test_free_port_skips_a_port_in_use(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", free_port()))
        held.listen()
        taken = held.getsockname()[1]
        draws: list[int] = []
        real_randint = random.randint

        def randint(low: int, high: int) -> int:  # the held port twice, then random ones
            draws.append(taken if len(draws) < 2 else real_randint(low, high))
            return draws[-1]

        monkeypatch.setattr(random, "randint", randint)
        assert free_port() != taken
        assert draws[:2] == [taken, taken]


@pytest.mark.parametrize(
    ("log", "cause"),
    [
        (FIRESTORE_BIND_FAILURE, "java.net.BindException: Address already in use"),
        (
            'Traceback (most recent call last):\n  File "x.py", line 1, in <module>\n'
            "OSError: [Errno 98] Address already in use\n",
            "OSError: [Errno 98] Address already in use",
        ),
        (
            "ERROR: (gcloud.emulators.firestore.start) argument --host-port: Failed to parse host and port.\n\n"
            "  IPv4_ADDRESS_OR_HOSTNAME:PORT\n",
            "ERROR: (gcloud.emulators.firestore.start) argument --host-port: Failed to parse host and port.",
        ),
        ("[pubsub] Server started, listening on 8085\n[pubsub] INFO: errors: 0\n", None),
        ("", None),
    ],
)
def test_first_exception_names_the_cause(log: str, cause: str | None) -> None:
    assert first_exception(log) == cause


def test_a_child_that_dies_at_start_up_is_reported_with_its_cause(tmp_path: Path) -> None:
    log_path = tmp_path / "child.log"
    log_path.write_text("an earlier run's output\njava.io.IOException: from the earlier run\n")
    script = f"import sys; sys.stdout.write({FIRESTORE_BIND_FAILURE!r}); sys.exit(1)"
    child = ManagedProcess(
        "Firestore emulator", [sys.executable, "-c", script], log_path=log_path, ready=lambda _: False
    )
    child.start()
    with pytest.raises(StackError) as failure:
        child.wait_ready(30)
    message = str(failure.value)
    # The cause of this start, not the earlier run's that the appended log also holds.
    assert "exited during start-up (java.net.BindException: Address already in use)" in message
    assert "IOException" not in message
    assert "Thread.java:840" in message  # and still the log's last lines
    child.stop()


def _time_wait_sockets(port: int) -> int:
    """How many TCP sockets whose local side is `port` are in TIME_WAIT (/proc/net/tcp's state 06)."""
    rows = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    return sum(1 for row in rows if row[1].endswith(f":{port:04X}") and row[3] == "06")


def _leave_time_wait_on(port: int) -> None:
    """A connection to a listener on `port`, closed by the server's side first: the side that closes
    first keeps the connection in TIME_WAIT, here on `port` itself, as a stopped stack's servers do."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the emulators' servers do
        listener.bind(("127.0.0.1", port))
        listener.listen()
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
        accepted, _ = listener.accept()
        accepted.close()  # the server's side first: FIN from port
        assert client.recv(1) == b""  # the client has its FIN
        client.close()  # and answers with its own: the server's side goes to TIME_WAIT
    deadline = time.monotonic() + 5
    while _time_wait_sockets(port) == 0:
        assert time.monotonic() < deadline, f"no TIME_WAIT on port {port}"
        time.sleep(0.01)


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads the sockets' states from Linux's /proc/net/tcp")
def test_a_port_held_only_by_time_wait_connections_is_free() -> None:
    """A port whose only connections are in TIME_WAIT (a stack stopped within the last minute) is
    free: TIME_WAIT keeps a bind without SO_REUSEADDR out, though not the emulator's own."""
    port = free_port()
    _leave_time_wait_on(port)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as plain:  # what the check did before
        with pytest.raises(OSError, match="Address already in use") as refused:
            plain.bind(("127.0.0.1", port))
        assert refused.value.errno == errno.EADDRINUSE
    ensure_port_free("127.0.0.1", port, "Pub/Sub emulator")
    assert _time_wait_sockets(port) >= 1  # still there: the check passed because of it, not after it
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:  # and a server can indeed bind
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", port))
        server.listen()


@pytest.mark.parametrize("address", ["127.0.0.1", "0.0.0.0"])  # noqa: S104 - a container's published port
@pytest.mark.parametrize("reuse", [False, True], ids=["plain", "so_reuseaddr"])
def test_a_port_with_a_live_listener_is_still_taken(address: str, reuse: bool) -> None:
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        if reuse:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((address, port))
        listener.listen()
        with pytest.raises(StackError) as taken:
            ensure_port_free("127.0.0.1", port, "Pub/Sub emulator")
    assert str(taken.value).startswith(f"port {port} for the Pub/Sub emulator is already in use on 127.0.0.1")


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads the sockets' states from Linux's /proc/net/tcp")
def test_a_live_listener_is_taken_even_with_time_wait_connections_beside_it() -> None:
    port = free_port()
    _leave_time_wait_on(port)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen()
        with pytest.raises(StackError, match="already in use"):
            ensure_port_free("127.0.0.1", port, "Pub/Sub emulator")


def test_stop_returns_once_no_process_of_the_group_runs(tmp_path: Path) -> None:
    """As gcloud does with the emulator's JVM: the leader exits at SIGTERM, its child does not and is
    left to SIGKILL, after which stop() waits for it (a JVM took up to 2 s, its port listening)."""
    script = (
        "import signal, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', "
        "'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); time.sleep(60)'])\n"
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
        "time.sleep(60)\n"
    )
    log_path = tmp_path / "group.log"
    process = ManagedProcess(
        "group", [sys.executable, "-c", script], log_path=log_path, ready=lambda path: "1" in path.read_text()
    )
    process.start()
    process.wait_ready(30)
    leader = process.pid
    assert leader is not None
    assert len(group_members(leader)) == 2
    assert process.stop(timeout=1) == 0
    assert group_members(leader) == []


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="tells zombies apart through Linux's /proc")
def test_group_members_leaves_zombies_out() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    try:
        stat = Path(f"/proc/{child.pid}/stat")
        deadline = time.monotonic() + 30
        while stat.read_text().rsplit(")", 1)[1].split()[0] != "Z":  # exited, not reaped yet
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert group_members(child.pid) == []
    finally:
        child.wait()
