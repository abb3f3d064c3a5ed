"""The local stack's process helpers: the ports it picks and what it says when a child dies."""

from __future__ import annotations

import random
import socket
import sys
from pathlib import Path

import pytest

from relay.devstack.processes import ManagedProcess, StackError, _ephemeral_ports, first_exception, free_port

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
