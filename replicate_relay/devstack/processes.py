"""Child processes in their own process groups: started, awaited until ready, always stopped whole."""

from __future__ import annotations

import contextlib
import errno
import os
import random
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path


class StackError(Exception):
    """The local stack cannot run; the message is one sentence saying why and what to do."""


def ensure_port_free(host: str, port: int, what: str) -> None:
    """Fail fast, naming the port and its user, when something already listens there.

    The probe binds with SO_REUSEADDR, as every server of the stack does (the emulators' JVMs,
    fake-gcs-server, gunicorn, uvicorn): the connections a stack stopped moments ago leaves in
    TIME_WAIT on its ports (for a minute on Linux) do not keep those servers from binding, so they
    must not fail this check either, while a live listener on the port still does.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise StackError(
                    f"port {port} for the {what} is already in use on {host}: stop what holds it "
                    f"or choose another port (relay dev --help lists the port options)"
                ) from None
            raise StackError(f"cannot use {host}:{port} for the {what}: {error.strerror}") from None


# Ports free_port() has handed out in this process: never twice, so one stack's ports are distinct.
_handed_out: set[int] = set()
_LOWEST_FREE_PORT = 10000


def _ephemeral_ports() -> tuple[int, int]:
    """The kernel's range for the local ports of outgoing connections."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def _kernel_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free now, for test and benchmark stacks, where fixed ports could clash.

    Drawn at random from below the kernel's ephemeral range: a port from bind(host, 0) lies inside
    it, and in the seconds before a JVM binds it, any outgoing connection (of which a loaded test
    stack makes thousands) may take it as its local port, and the emulator exits with
    "Address already in use". No port is handed out twice in one process.
    """
    low = _LOWEST_FREE_PORT
    high = _ephemeral_ports()[0] - 1
    if high - low < 1000:  # an unusual kernel setting: let the kernel choose, as before
        return _kernel_port(host)
    for _ in range(200):
        port = random.randint(low, high)  # noqa: S311 - a port, not a secret
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise StackError(f"no free port on {host} between {low} and {high} after 200 tries")


# "java.net.BindException: ...", "OSError: ...", after a "[firestore] " prefix that gcloud may add,
# or gcloud's own "ERROR: (gcloud.emulators.firestore.start) ...".
_EXCEPTION_LINE = re.compile(
    r"^(?:\[[\w-]+\]\s*)?((?:[\w$]+\.)*[\w$]*(?:Exception|Error): .*|ERROR: \(gcloud[\w.-]*\) .*)$", re.MULTILINE
)


def first_exception(text: str) -> str | None:
    """The first line that names an exception or an error (a JVM's "java.net.BindException: Address
    already in use", a Python "OSError: ...", gcloud's "ERROR: (gcloud...)"), which the last lines of
    a long stack trace or usage text do not show."""
    match = _EXCEPTION_LINE.search(text)
    return match.group(1).strip() if match else None


def log_contains(text: str) -> Callable[[Path], bool]:
    def check(log_path: Path) -> bool:
        try:
            return text in log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return False

    return check


def http_answers(url: str) -> Callable[[Path], bool]:
    """Ready once anything answers HTTP at `url`, whatever the status."""

    def check(_: Path) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return True
        except urllib.error.HTTPError:
            return True
        except (OSError, ValueError):
            return False

    return check


class ManagedProcess:
    """One child process group whose output goes to a log file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        ready: Callable[[Path], bool],
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._ready = ready
        self._env = dict(env) if env is not None else None
        self._cwd = cwd
        self._process: subprocess.Popen[bytes] | None = None
        # Monotonic times of the last start and of the first ready check that passed after it.
        self.started_at: float | None = None
        self.ready_at: float | None = None
        self._log_offset = 0  # where the last start's output begins in the (appended) log

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log_file:
            self._log_offset = log_file.tell()
            self.started_at, self.ready_at = time.monotonic(), None
            try:
                # A session of its own, so that stop() reaches every descendant (gcloud starts
                # a Java child that would otherwise outlive it).
                self._process = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    env=self._env,
                    cwd=self._cwd,
                    start_new_session=True,
                )
            except OSError as error:
                raise StackError(f"cannot start the {self.name} ({self.argv[0]}): {error.strerror}") from None

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                cause = first_exception(self._last_start_output())
                raise StackError(
                    f"the {self.name} exited during start-up{f' ({cause})' if cause else ''}; "
                    f"its log {self.log_path} ends with: {self.log_tail()}"
                )
            if self._ready(self.log_path):
                self.ready_at = time.monotonic()
                return
            time.sleep(0.2)
        raise StackError(
            f"the {self.name} was not ready after {timeout:g} s; its log {self.log_path} ends with: {self.log_tail()}"
        )

    @property
    def start_seconds(self) -> float | None:
        """From the last start to ready (None until then)."""
        if self.started_at is None or self.ready_at is None:
            return None
        return self.ready_at - self.started_at

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def wait_exit(self, timeout: float) -> int | None:
        """The exit status once the process ends by itself within `timeout`; None if it is still running."""
        if self._process is None:
            return None
        try:
            return self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the whole group, then SIGKILL whatever is left after `timeout`; returns, once no
        process of the group runs, the leader's exit status (negative: the signal that ended it),
        None when it was not running."""
        process = self._process
        if process is None:
            return None
        self._signal_group(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=timeout)
        # The leader may be gone while its children (the emulator's JVM) still run.
        self._signal_group(process.pid, signal.SIGKILL)
        process.wait()
        self._process = None
        wait_group_gone(process.pid)
        return process.returncode

    def kill(self) -> None:
        """SIGKILL the whole group at once: a crash, not a shutdown (the fault suite's)."""
        process = self._process
        if process is None:
            return
        self._signal_group(process.pid, signal.SIGKILL)
        process.wait()
        self._process = None
        wait_group_gone(process.pid)

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:]) or "(empty log)"

    def _last_start_output(self) -> str:
        try:
            with self.log_path.open("rb") as log_file:
                log_file.seek(self._log_offset)
                return log_file.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    @staticmethod
    def _signal_group(pgid: int, signum: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signum)


def group_members(pgid: int) -> list[int]:
    """The processes of group `pgid` still running; zombies, which hold no port, are left out (an
    orphan's zombie lasts as long as whatever reaps orphans here takes, or for ever)."""
    proc = Path("/proc")
    if not (proc / "self" / "stat").exists():  # no procfs: any process of the group, zombies too
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        except PermissionError:
            pass
        return [pgid]
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        # "pid (comm) state ppid pgrp ...", where comm may hold spaces and parentheses
        state, _, group = stat[stat.rfind(")") + 2 :].split()[:3]
        if int(group) == pgid and state not in {"Z", "X"}:
            members.append(int(entry.name))
    return members


def wait_group_gone(pgid: int, timeout: float = 10.0) -> bool:
    """Wait until no process of group `pgid` runs (True), or `timeout` passes (False).

    A JVM that SIGKILL reached can take seconds to exit, its sockets still listening meanwhile: a
    stack started again on the same ports at once (`relay dev` right after the last, a restarted
    emulator) would find them taken.
    """
    deadline = time.monotonic() + timeout
    while group_members(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
