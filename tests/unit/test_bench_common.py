"""bench/common.py: the one percentile, and a benchmark's section replacing only its own part of the report."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.unit.bench_scripts import load

common = load("common")


@pytest.mark.parametrize(("p", "expected"), [(50, 5), (90, 9), (99, 10), (100, 10), (0, 1)])
def test_percentile_is_the_nearest_rank(p: float, expected: int) -> None:
    assert common.percentile(range(10, 0, -1), p) == expected


def test_percentile_of_nothing_is_none() -> None:
    assert common.percentile([], 50) is None


def test_a_section_replaces_only_what_lies_between_its_markers(tmp_path: Path) -> None:
    report = tmp_path / "BENCHMARKS.md"
    report.write_text(
        "intro\n<!-- bench:a -->\nold a\n<!-- /bench:a -->\nprose\n<!-- bench:b -->\nold b\n<!-- /bench:b -->\n"
    )
    common.write_section("a", "new a", report)
    assert (
        report.read_text()
        == "intro\n<!-- bench:a -->\nnew a\n<!-- /bench:a -->\nprose\n<!-- bench:b -->\nold b\n<!-- /bench:b -->\n"
    )


def test_a_report_without_the_markers_is_refused(tmp_path: Path) -> None:
    report = tmp_path / "BENCHMARKS.md"
    report.write_text("no markers\n")
    with pytest.raises(common.BenchError, match="bench:a"):
        common.write_section("a", "text", report)


def test_a_child_result_is_its_last_line_of_json(tmp_path: Path) -> None:
    program = "import sys; print('warming up'); print('{\"us\": 1.5}'); print('note', file=sys.stderr)"
    log = tmp_path / "child.log"
    assert common.child_result("ok", ["-c", program], env={}, timeout=60, log=log) == {"us": 1.5}
    assert log.read_text() == "note\n"


@pytest.mark.parametrize(
    ("program", "message"),
    [("raise SystemExit(3)", "broken child failed (3)"), ("print('no json')", "broken child printed no result")],
)
def test_a_child_that_fails_or_prints_no_result_is_a_bench_error(tmp_path: Path, program: str, message: str) -> None:
    with pytest.raises(common.BenchError, match=re.escape(message)):
        common.child_result("broken", ["-c", program], env={}, timeout=60, log=tmp_path / "child.log")
