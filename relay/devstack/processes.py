"""Child processes in their own process groups: started, awaited until ready, always stopped whole."""

from __future__ import annotations

import contextlib
import errno
import os
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
    """Fail fast, naming the port and its user, when something already listens there."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise StackError(
                    f"port {port} for the {what} is already in use on {host}: stop what holds it "
                    f"or choose another port (python -m relay dev --help lists the port options)"
                ) from None
            raise StackError(f"cannot use {host}:{port} for the {what}: {error.strerror}") from None


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel just had free (for tests, where fixed ports could clash)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


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

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log_file:
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
                raise StackError(
                    f"the {self.name} exited during start-up; its log {self.log_path} ends with: {self.log_tail()}"
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
        """SIGTERM the whole group, then SIGKILL whatever is left after `timeout`; returns the leader's
        exit status (negative: the signal that ended it), None when it was not running."""
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
        return process.returncode

    def kill(self) -> None:
        """SIGKILL the whole group at once: a crash, not a shutdown (the fault suite's)."""
        process = self._process
        if process is None:
            return
        self._signal_group(process.pid, signal.SIGKILL)
        process.wait()
        self._process = None

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:]) or "(empty log)"

    @staticmethod
    def _signal_group(pgid: int, signum: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signum)
