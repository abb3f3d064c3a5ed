"""bench/report.py's image section: the latest bench/image.py run in detail, and every image it has
reported kept in a committed history (docs/bench/image-history.json), one row each, so that the image
before and after a change stay side by side when bench/results/ is gone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.unit.bench_scripts import load

report = load("bench_report_image", "report.py")


def image_results(
    *, generated_at: str, commit: str, image_mb: float, start: float, note: str | None = None
) -> dict[str, Any]:
    """A bench/image.py results document."""
    return {
        "generated_at": generated_at,
        "host": {
            "engine": "podman",
            "image": "localhost/x:y",
            "image_id": "0123456789ab",
            "cpu_busy_before_run_percent": 1.0,
        },
        "code": {"commit": commit, "modified": []},
        "settings": {"rounds": 3, "quick": False, "note": note},
        "sizes": {"image_mb": image_mb, "venv_mb": 134.0, "app_mb": 1.4, "app_parts_mb": {"api": 0.2, "infra": 0.01}},
        "baseline_seconds": [0.2, 0.18, 0.19],
        "start_seconds": {"receiver": [start, start + 0.1, start - 0.1], "api": [0.7, 0.8, 0.9]},
    }


def test_a_run_becomes_one_row_of_medians() -> None:
    row = report.image_history_row(
        image_results(
            generated_at="2026-12-06T00:00:00+00:00", commit="abc1234", image_mb=348.04, start=0.6, note="after"
        )
    )
    assert row is not None
    assert row["commit"] == "abc1234"
    assert row["note"] == "after"
    assert row["image_mb"] == 348.0
    assert row["baseline_s"] == 0.19
    assert row["start_s"] == {"receiver": 0.6, "api": 0.8}
    assert report.image_history_row(None) is None


def test_the_history_keeps_each_run_once_and_the_section_shows_before_and_after(tmp_path: Path) -> None:
    history = tmp_path / "image-history.json"
    before = image_results(generated_at="2026-12-05T00:00:00+00:00", commit="1111111", image_mb=372.3, start=0.6)
    after = image_results(generated_at="2026-12-06T00:00:00+00:00", commit="2222222", image_mb=348.0, start=0.62)
    report.recorded_runs(history, report.image_history_row(before), identity=report.by_generated_at)
    report.recorded_runs(history, report.image_history_row(after), identity=report.by_generated_at)
    recorded = report.recorded_runs(
        history, report.image_history_row(after), identity=report.by_generated_at
    )  # the same run again
    assert [row["commit"] for row in json.loads(history.read_text())] == ["1111111", "2222222"]

    text = "\n".join(report.image_section(after, recorded))
    assert "**348 MB**" in text
    assert "/app: api/ 0.20 MB, infra/ 0.01 MB." in text
    assert "| 2026-12-05 00:00 | `1111111` |  | 372 | 134 | 1.40 | 0.19 | 0.60 | 0.80 |" in text
    assert "| 2026-12-06 00:00 | `2222222` |  | 348 | 134 | 1.40 | 0.19 | 0.62 | 0.80 |" in text


def test_without_results_the_history_is_still_shown() -> None:
    row = report.image_history_row(
        image_results(generated_at="2026-12-05T00:00:00+00:00", commit="1111111", image_mb=372.3, start=0.6)
    )
    text = "\n".join(report.image_section(None, [row]))
    assert "Not measured" in text
    assert "`1111111`" in text
