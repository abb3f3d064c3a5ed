"""The README and docs/ stay true: links resolve, the README stays short, and every command they
show names a real make target, parses as a `relay` command, or names a file that exists.

Which commands also run: `make test` runs the local ones through the suites (the demo in
tests/integration/test_demo.py, the operator commands in tests/integration/test_ops.py, `relay
adopt` in test_adopt.py, `relay submit --wait` in test_client.py); the ones that need Google Cloud
(terraform, gcloud) are checked here for their shape only.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from replicate_relay.cli import _parser

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted(
    [
        ROOT / "README.md",
        ROOT / "CHANGELOG.md",
        *(ROOT / "docs").glob("*.md"),
        *(page for page in (ROOT / "examples").glob("**/README.md") if "node_modules" not in page.parts),
        ROOT / "bench" / "README.md",
    ]
)
README_MAX_LINES = 200
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", flags=re.MULTILINE | re.DOTALL)


def _page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = _FENCE.sub("", page.read_text(encoding="utf-8"))
    return {_slug(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}


def _code_lines(page: Path) -> list[str]:
    """Each command line of the page's code blocks, continuation lines joined, prompts removed."""
    lines: list[str] = []
    for block in _FENCE.findall(page.read_text(encoding="utf-8")):
        joined = block.replace("\\\n", " ")
        for raw in joined.splitlines():
            line = raw.strip()
            lines.append(line[2:] if line.startswith("$ ") else line)
    return lines


def test_the_readme_reads_in_five_minutes() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; depth belongs in docs/"


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_every_relative_link_resolves_to_a_file_and_heading(page: Path) -> None:
    broken = []
    for target in _LINK.findall(_FENCE.sub("", page.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(f"{target}: no heading #{anchor}")
    assert broken == [], f"{_page_id(page)}: {broken}"


def test_the_readme_links_every_page_of_docs() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    unlinked = [page.name for page in (ROOT / "docs").glob("*.md") if f"docs/{page.name}" not in readme]
    assert unlinked == []


def test_no_page_cites_a_file_outside_the_repository() -> None:
    citing = [_page_id(page) for page in PAGES if "shared/design" in page.read_text(encoding="utf-8")]
    assert citing == []


def _makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([a-z][\w-]*):", text, flags=re.MULTILINE))


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_every_make_command_shown_is_a_target(page: Path) -> None:
    targets = _makefile_targets()
    unknown = []
    for line in _code_lines(page):
        if not line.startswith("make "):
            continue
        words = [word for word in line.split("#", 1)[0].split()[1:] if "=" not in word]
        unknown += [word for word in words if word not in targets]
    assert unknown == [], f"{_page_id(page)}: no such make target: {unknown}"


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_every_relay_command_shown_parses(page: Path) -> None:
    parser = _parser()
    refused = []
    for line in _code_lines(page):
        match = re.match(r"^(?:\.venv/bin/)?relay ([a-z-].*)$", line)
        if not match or re.match(r"relay [a-z-]+: ", line):  # `relay verify: …` is a command's output
            continue
        # A placeholder such as <prediction id> stands for one argument.
        command = re.sub(r"<[^>]+>", "PLACEHOLDER", match.group(1).split(" #", 1)[0])
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                parser.parse_args(shlex.split(command))
        except SystemExit as exit_:
            if exit_.code:  # --help exits 0
                refused.append(line)
    assert refused == [], f"{_page_id(page)}: commands relay refuses: {refused}"


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_every_script_and_module_shown_exists(page: Path) -> None:
    missing = []
    for line in _code_lines(page):
        for script in re.findall(r"(?:^|\s)(?:\.venv/bin/)?python3? ((?:bench|examples)/[\w/]+\.py)", line):
            if not (ROOT / script).exists():
                missing.append(script)
        for module in re.findall(r"python3? -m (replicate_relay\.[\w.]+)", line):
            path = ROOT / module.replace(".", "/")
            if not (path.with_suffix(".py").exists() or (path / "__main__.py").exists()):
                missing.append(module)
    assert missing == [], f"{_page_id(page)}: {missing}"
