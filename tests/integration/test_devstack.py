"""The local stack against the real emulators, where a start-up failure must say why."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from relay.devstack.processes import StackError
from relay.devstack.stack import LocalStack, StackConfig


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
