"""Physical memory: sparse, immutable, little-endian."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vtx.paging.formats import PAGE_SIZE
from vtx.paging.memory import HostPhysAddr, PhysicalMemory


def test_unwritten_memory_reads_zero() -> None:
    assert PhysicalMemory().read_int(HostPhysAddr(0x1234_5678), 8) == 0


def test_write_returns_new_memory_and_leaves_the_old_unchanged() -> None:
    old = PhysicalMemory().write_int(HostPhysAddr(0x1000), 4, 0xAABBCCDD)
    new = old.write_int(HostPhysAddr(0x1000), 1, 0x11)
    assert old.read_int(HostPhysAddr(0x1000), 4) == 0xAABBCCDD
    assert new.read_int(HostPhysAddr(0x1000), 4) == 0xAABBCC11


def test_values_are_little_endian() -> None:
    m = PhysicalMemory().write_int(HostPhysAddr(0x10), 2, 0x1234)
    assert m.read(HostPhysAddr(0x10), 2) == b"\x34\x12"


def test_a_write_shares_untouched_pages() -> None:
    m = PhysicalMemory().write_int(HostPhysAddr(0), 1, 1).write_int(HostPhysAddr(PAGE_SIZE), 1, 2)
    n = m.write_int(HostPhysAddr(0), 1, 3)
    assert n.pages[1] is m.pages[1] and n.pages[0] is not m.pages[0]


@given(st.integers(0, 3 * PAGE_SIZE), st.binary(min_size=1, max_size=2 * PAGE_SIZE))
def test_reads_and_writes_may_cross_pages(address: int, data: bytes) -> None:
    m = PhysicalMemory().write(HostPhysAddr(address), data)
    assert m.read(HostPhysAddr(address), len(data)) == data
    if len(data) <= 8:
        assert m.read_int(HostPhysAddr(address), len(data)) == int.from_bytes(data, "little")


def test_set_bits_only_writes_when_bits_change() -> None:
    m = PhysicalMemory().write_int(HostPhysAddr(0x20), 8, 0x21)
    assert m.set_bits([(HostPhysAddr(0x20), 8, 0x20)]) is m
    assert m.set_bits([(HostPhysAddr(0x20), 8, 0x40)]).read_int(HostPhysAddr(0x20), 8) == 0x61


def test_bad_values_and_pages_are_rejected() -> None:
    with pytest.raises(ValueError, match="1-byte"):
        PhysicalMemory().write_int(HostPhysAddr(0), 1, 0x100)
    with pytest.raises(ValueError, match="bytes"):
        PhysicalMemory.from_pages({0: b"short"})


def test_from_writes_later_writes_win() -> None:
    m = PhysicalMemory.from_writes([(HostPhysAddr(0), b"\x01\x02"), (HostPhysAddr(1), b"\x03")])
    assert m.read(HostPhysAddr(0), 2) == b"\x01\x03"


@given(st.dictionaries(st.integers(0, 7), st.binary(min_size=4096, max_size=4096), max_size=3),
       st.integers(0, 8 * 4096 - 8), st.sampled_from([4, 8]))
def test_entry_views_read_what_read_int_reads(pages: dict[int, bytes], address: int, size: int) -> None:
    memory = PhysicalMemory.from_pages(pages)
    aligned = address & ~(size - 1)
    assert memory.read_entry(aligned, size) == memory.read_int(HostPhysAddr(aligned), size)
    assert memory.entry_views(size)[aligned >> 12][(aligned & 0xFFF) // size] == memory.read_int(
        HostPhysAddr(aligned), size)
    assert memory.read_entry(address, size) == memory.read_int(HostPhysAddr(address), size)  # unaligned too
