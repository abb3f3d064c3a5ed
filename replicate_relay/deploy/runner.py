"""How `relay deploy` runs gcloud, terraform and git, and prints its numbered steps.

Every command goes through `Runner.run`: it is printed before it runs, its output streamed indented or
kept, and under --plan a mutating command is only printed. A secret is never on a command line: it goes
on stdin, and a command whose output is a secret (an access token, a secret version) is never echoed.
"""

from __future__ import annotations

import shlex
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from replicate_relay.errors import DeployError

INDENT = "      "


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


class Runner:
    """Runs commands for one deploy; under `plan`, mutating ones are printed and not run."""

    def __init__(self, out: TextIO, *, plan: bool, cwd: Path, environ: Mapping[str, str]) -> None:
        self.out = out
        self.plan = plan
        self.cwd = cwd
        self.environ = dict(environ)
        self.would_run: list[str] = []  # under --plan: each mutating command, as printed

    def run(
        self,
        argv: Sequence[str],
        *,
        mutating: bool = False,
        stdin: str | None = None,
        secret_output: bool = False,
        stream: bool = False,
        check: bool = True,
        quiet: bool = False,
    ) -> Result:
        """Run `argv` (no shell). `stdin` is a secret's value, never printed; `secret_output`: the
        command prints a secret, so its output is kept, never shown; `stream`: show the output as it
        comes; `check`: a non-zero exit raises DeployError; `quiet`: do not print the command line."""
        shown = shlex.join(argv) + (" < (secret on stdin)" if stdin is not None else "")
        if mutating and self.plan:
            self.would_run.append(shown)
            print(f"{INDENT}would run: {shown}", file=self.out, flush=True)
            return Result(0, "", "")
        if not quiet:
            print(f"{INDENT}$ {shown}", file=self.out, flush=True)
        try:
            if stream and not secret_output:
                result = self._streamed(argv, stdin)
            else:
                done = subprocess.run(  # noqa: S603 - argv is built here, never shell-parsed
                    list(argv), input=stdin, capture_output=True, text=True, cwd=self.cwd, env=self.environ, check=False
                )
                result = Result(done.returncode, done.stdout, done.stderr)
        except FileNotFoundError:
            raise DeployError(f"{argv[0]} is not on PATH") from None
        if check and result.returncode != 0:
            raise DeployError(
                f"`{shlex.join(argv)}` exited {result.returncode}{tail(result, streamed=stream and not secret_output)}"
            )
        return result

    def _streamed(self, argv: Sequence[str], stdin: str | None) -> Result:
        lines: list[str] = []
        with subprocess.Popen(  # noqa: S603 - argv is built here, never shell-parsed
            list(argv),
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=self.cwd,
            env=self.environ,
        ) as process:
            if stdin is not None and process.stdin is not None:
                process.stdin.write(stdin)
                process.stdin.close()
            assert process.stdout is not None  # noqa: S101 - stdout=PIPE above
            for line in process.stdout:
                lines.append(line)
                print(f"{INDENT}│ {line.rstrip()}", file=self.out, flush=True)
            returncode = process.wait()
        return Result(returncode, "".join(lines), "")


def tail(result: Result, *, streamed: bool = False) -> str:
    """The end of a failed command's stderr for a one-line message (": a / b"), or where to look. Never its
    stdout, which can be a secret."""
    if streamed:
        return " (its output is above)"
    last = [line.strip() for line in result.stderr.splitlines() if line.strip()][-3:]
    return (": " + " / ".join(last)) if last else ""


@dataclass
class StepNote:
    """What a step reports on its ✓ line ("unchanged", "applied", ...)."""

    summary: str = ""
    skipped: bool = False
    problems: list[str] = field(default_factory=list)  # a check's findings: marked ✗, one line each


@dataclass
class Steps:
    """The numbered step list: `[n/N] title`, then ✓/✗/– with the time it took, and a summary at the end."""

    out: TextIO
    titles: Sequence[str]
    done: list[tuple[str, str, float, str]] = field(default_factory=list)  # mark, title, seconds, summary

    @contextmanager
    def step(self, title: str) -> Iterator[StepNote]:
        number = len(self.done) + 1
        name = f"{number}. {title}"
        print(f"[{number}/{len(self.titles)}] {title}", file=self.out, flush=True)
        note = StepNote()
        began = time.monotonic()
        try:
            yield note
        except DeployError as error:
            seconds = time.monotonic() - began
            self.done.append(("✗", title, seconds, "failed (above)"))
            print(f"{INDENT}✗ {error.message} ({seconds:.1f} s)", file=self.out, flush=True)
            error.step = name
            raise
        seconds = time.monotonic() - began
        for problem in note.problems:
            print(f"{INDENT}✗ {problem}", file=self.out, flush=True)
        mark = "✗" if note.problems else "–" if note.skipped else "✓"
        summary = f"{len(note.problems)} missing" if note.problems else note.summary
        self.done.append((mark, title, seconds, summary))
        line = f"{mark} {summary}".rstrip()
        print(f"{INDENT}{line} ({seconds:.1f} s)", file=self.out, flush=True)

    def summary(self) -> None:
        print("", file=self.out)
        width = max(len(title) for title in self.titles)
        for number, title in enumerate(self.titles, start=1):
            if number <= len(self.done):
                mark, _, seconds, summary = self.done[number - 1]
                print(f"  {mark} {number:>2}. {title:<{width}}  {seconds:6.1f} s  {summary}", file=self.out)
            else:
                print(f"    {number:>2}. {title:<{width}}  {'':>8}  not reached", file=self.out)
        self.out.flush()
