"""The photos folder: which files are photos, what each is submitted with, and where its results go."""

from __future__ import annotations

import base64
import hashlib
import json
import mimetypes
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

MODEL = "flux-kontext-apps/restore-image"
PHOTO_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
SIDECAR_SUFFIX = ".json"  # old.jpg.json: extra inputs for old.jpg
# Replicate recommends data: URIs only under 1 MB; anything larger belongs at a URL. Held to the
# whole URI, which also keeps the create request under the simulator's 1 MiB body cap.
MAX_DATA_URI_CHARS = 1_000_000
# The old worker's settings: PNG out, Replicate's default safety tolerance.
OUTPUT_FORMAT = "png"
SAFETY_TOLERANCE = 2


class UsageError(Exception):
    """The folders or a sidecar file are not usable: nothing was submitted (exit code 2)."""


class PhotoTooLarge(ValueError):
    """The photo does not fit in a data: URI; it is reported as failed, not submitted."""


@dataclass(frozen=True)
class Photo:
    path: Path
    extra: Mapping[str, Any] = field(default_factory=dict)  # from the sidecar: extra inputs per photo

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def seed(self) -> int:
        """Fixed per file name, so a photo restored again comes out the same."""
        return int.from_bytes(hashlib.sha256(self.name.encode()).digest()[:4], "big") & 0x7FFFFFFF

    def inputs(self, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The model's inputs: the four the old worker sent, then `extra`, then the photo's sidecar."""
        return {
            "input_image": data_uri(self.path),
            "seed": self.seed,
            "output_format": OUTPUT_FORMAT,
            "safety_tolerance": SAFETY_TOLERANCE,
            **(extra or {}),
            **self.extra,
        }


def data_uri(path: Path) -> str:
    """The file as a data: URI; raises PhotoTooLarge past MAX_DATA_URI_CHARS."""
    data = path.read_bytes()
    media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    uri = f"data:{media_type};base64,{base64.b64encode(data).decode('ascii')}"
    if len(uri) > MAX_DATA_URI_CHARS:
        raise PhotoTooLarge(
            f"{len(data):,} bytes is {len(uri):,} characters as a data: URI, over the {MAX_DATA_URI_CHARS:,} "
            "Replicate recommends (about 750 kB of photo): host it and pass its URL instead"
        )
    return uri


def find_photos(folder: Path) -> list[Photo]:
    """The photos directly in `folder`, by name, each with its sidecar's extra inputs; raises UsageError."""
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder")
    paths = sorted(path for path in folder.iterdir() if path.is_file() and path.suffix.lower() in PHOTO_SUFFIXES)
    if not paths:
        raise UsageError(f"{folder} has no photos ({', '.join(sorted(PHOTO_SUFFIXES))})")
    return [Photo(path, _sidecar(path)) for path in paths]


def _sidecar(photo: Path) -> dict[str, Any]:
    sidecar = photo.with_name(photo.name + SIDECAR_SUFFIX)
    if not sidecar.exists():
        return {}
    try:
        extra = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise UsageError(f"{sidecar}: not readable JSON ({error})") from None
    if not isinstance(extra, dict):
        raise UsageError(f'{sidecar}: must be a JSON object of extra inputs, e.g. {{"seed": 7}}')
    return extra


def prepare_out_dir(folder: Path) -> Path:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"cannot create {folder}: {error.strerror}") from None
    return folder


def output_names(photos: Sequence[Photo]) -> dict[str, str]:
    """Photo name → the stem of its outputs: the photo's stem, or its whole name when two stems clash."""
    stems = [photo.path.stem for photo in photos]
    return {
        photo.name: photo.path.stem if stems.count(photo.path.stem) == 1 else photo.name.replace(".", "_")
        for photo in photos
    }


def output_path(
    out_dir: Path, stem: str, *, index: int, count: int, source: str, content_type: str | None = None
) -> Path:
    """`stem.png` for a single output, `stem-1.png`, `stem-2.png`… for several; the suffix from the source's
    path (a gs:// or https:// URI), else from the content type."""
    suffix = PurePosixPath(source.partition("?")[0]).suffix or mimetypes.guess_extension(content_type or "") or ""
    numbered = stem if count == 1 else f"{stem}-{index + 1}"
    return out_dir / f"{numbered}{suffix}"
