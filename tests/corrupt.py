"""Bit rot as a disk makes it, for the integrity tests: one flipped bit in a shard that plain
Parquet reading does not notice (the values just change)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest


def flip_a_bit_silently(shard: Path) -> None:
    """Flip one bit in the first row group's signal pages such that reading without page
    checksums still succeeds but returns other values (most flips in lz4 literals do; one in
    a length field fails decompression instead). Fails the test when no such bit is found."""
    orig = shard.read_bytes()
    col = pq.ParquetFile(shard).metadata.row_group(0).column(8)      # the signal column
    assert col.path_in_schema.startswith("signal")
    clean = pq.read_table(shard, columns=["signal"])
    for pos in range(col.data_page_offset + 64, col.data_page_offset +
                     col.total_compressed_size, 61):
        data = bytearray(orig)
        data[pos] ^= 0x01
        shard.write_bytes(bytes(data))
        try:
            if not pq.read_table(shard, columns=["signal"]).equals(clean):
                return
        except Exception:
            pass
    pytest.fail("no silent bit flip found")
