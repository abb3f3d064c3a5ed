"""Generations of the dev stack's telemetry files.

Every process of the local stack appends to one span file and one metrics file. When the stack
starts and a file has grown past `LIMIT`, it becomes `PATH.1` (replacing any older one) and a new
file begins, so readers (`relay trace`, `relay status`, the status page) read both, oldest first.
"""

from __future__ import annotations

from pathlib import Path

LIMIT = 64 * 1024 * 1024


def previous_generation(path: Path) -> Path:
    return path.with_name(path.name + ".1")


def rotate(path: Path, *, limit: int = LIMIT) -> None:
    """Keep one previous generation of `path` once it passes `limit` bytes."""
    try:
        if path.stat().st_size > limit:
            path.replace(previous_generation(path))
    except FileNotFoundError:
        pass


def generations(path: Path) -> list[Path]:
    """`path` and, first, its previous generation: those of the two that exist."""
    return [file for file in (previous_generation(path), path) if file.is_file()]
