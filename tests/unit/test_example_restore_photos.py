"""examples/restore_photos without a stack: the photos' inputs, sidecars, output names, progress and summary."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from examples.restore_photos import photos as album
from examples.restore_photos.report import PhotoResult, Progress, summary


def test_inputs_are_the_old_workers_four_with_the_photo_as_a_data_uri_and_a_seed_fixed_by_name(tmp_path: Path) -> None:
    (tmp_path / "old.jpg").write_bytes(b"\xff\xd8\xff")
    photo = album.find_photos(tmp_path)[0]

    inputs = photo.inputs()

    assert inputs == {
        "input_image": "data:image/jpeg;base64,/9j/",
        "seed": photo.seed,
        "output_format": "png",
        "safety_tolerance": 2,
    }
    assert album.Photo(tmp_path / "old.jpg").seed == photo.seed != album.Photo(tmp_path / "new.jpg").seed


def test_a_sidecar_of_extra_inputs_wins_over_the_defaults_and_the_runs_extras(tmp_path: Path) -> None:
    (tmp_path / "old.png").write_bytes(b"x")
    (tmp_path / "old.png.json").write_text(json.dumps({"seed": 7, "sim_outcome": "failed"}))
    (tmp_path / "notes.txt").write_text("not a photo")

    photos = album.find_photos(tmp_path)

    assert [photo.name for photo in photos] == ["old.png"]
    inputs = photos[0].inputs({"seed": 1, "sim_duration": 2})
    assert (inputs["seed"], inputs["sim_outcome"], inputs["sim_duration"]) == (7, "failed", 2)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({}, "has no photos"),
        ({"a.png": "x", "a.png.json": "[1]"}, "must be a JSON object"),
        ({"a.png": "x", "a.png.json": "{"}, "not readable JSON"),
    ],
)
def test_unusable_folders_and_sidecars_are_usage_errors(tmp_path: Path, files: dict[str, str], message: str) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)

    with pytest.raises(album.UsageError, match=message):
        album.find_photos(tmp_path)


def test_a_photo_whose_data_uri_passes_the_limit_is_refused_before_submitting(tmp_path: Path) -> None:
    path = tmp_path / "huge.png"
    path.write_bytes(b"\0" * (album.MAX_DATA_URI_CHARS * 3 // 4))

    with pytest.raises(album.PhotoTooLarge, match="host it and pass its URL"):
        album.Photo(path).inputs()


def test_outputs_are_named_after_the_photo_numbered_when_several_and_by_full_name_when_stems_clash() -> None:
    photos = [album.Photo(Path("a.jpg")), album.Photo(Path("a.png")), album.Photo(Path("b.jpg"))]

    stems = album.output_names(photos)

    assert stems == {"a.jpg": "a_jpg", "a.png": "a_png", "b.jpg": "b"}
    out = Path("out")
    assert (
        album.output_path(out, "b", index=0, count=1, source="gs://bkt/predictions/p/0-0-output.png") == out / "b.png"
    )
    assert (
        album.output_path(out, "b", index=1, count=2, source="https://x/files/p/1-output.webp?t=1") == out / "b-2.webp"
    )


def test_progress_redraws_one_line_on_a_terminal_and_writes_a_line_per_step_otherwise() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal, log = Terminal(), io.StringIO()
    for stream in (terminal, log):
        progress = Progress(2, "restoring", stream)
        progress.advance("a.png succeeded")
        progress.close()

    assert "\n" not in terminal.getvalue().rstrip("\n")
    assert "\rrestoring [############............] 1/2 a.png succeeded" in terminal.getvalue()
    assert log.getvalue() == "restoring 1/2: a.png succeeded\n"


def test_summary_counts_and_shows_files_of_successes_and_reasons_of_failures() -> None:
    shown = summary(
        [
            PhotoResult("a.png", "succeeded", seconds=1.234, files=["a.png"]),
            PhotoResult("b.png", "failed", seconds=2.0, reason="failed: CUDA out of memory"),
            PhotoResult("c.png", "timed out", reason="not announced within 5 s"),
        ]
    )

    assert shown.splitlines() == [
        "1 succeeded, 2 failed, of 3 photos",
        "",
        "photo  result     seconds  output / reason",
        "a.png  succeeded     1.23  a.png",
        "b.png  failed        2.00  failed: CUDA out of memory",
        "c.png  timed out        -  not announced within 5 s",
    ]
