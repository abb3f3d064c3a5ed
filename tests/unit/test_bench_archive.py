"""bench/archive.py's streams: the pattern it copies, read as a resumable upload reads it."""

from __future__ import annotations

import hashlib
import io

import pytest

from tests.unit.bench_scripts import load

archive = load("archive")

MIB = 1024 * 1024


@pytest.mark.parametrize("chunk", [1, 5_000, MIB, 8 * MIB + 3])
def test_a_piece_reader_fills_each_read_and_counts_what_it_gave(chunk: int) -> None:
    size = 2 * MIB + 17
    reader = archive.piece_reader(archive.pattern_pieces(size))
    read = []
    while data := reader.read(chunk):
        assert len(data) == chunk or reader.tell() == size
        read.append(data)
    assert reader.tell() == size
    assert b"".join(read) == b"".join(archive.pattern_pieces(size))


def test_read_without_a_size_gives_the_rest() -> None:
    reader = archive.piece_reader(archive.pattern_pieces(MIB + 5))
    head = reader.read(10)
    assert len(head + reader.read()) == MIB + 5
    assert reader.tell() == MIB + 5


def test_a_reader_over_a_response_counts_what_it_gave() -> None:
    reader = archive.Reader(io.BytesIO(b"abcdefg").read)
    assert (reader.read(3), reader.read(), reader.tell()) == (b"abc", b"defg", 7)


def test_no_two_pieces_of_the_pattern_are_alike() -> None:
    digests = {hashlib.sha256(piece).digest() for piece in archive.pattern_pieces(8 * MIB)}
    assert len(digests) == 8
