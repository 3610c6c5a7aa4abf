"""Physical memory as an immutable value, and the three address spaces as distinct types.

Memory is sparse and page-granular: a mapping from page number to the page's bytes, where a
page never written reads as zeros. A write returns a new :class:`PhysicalMemory` that shares
every untouched page with the old one (one page copied per write). Memory is always
*host-physical*: it is addressed by :data:`HostPhysAddr`. A guest-physical address reaches it
only through a translation (EPT, NPT, or the identity when neither is in use), so that mypy
keeps the spaces apart.

Multi-byte values are little-endian (SDM Vol. 1 §1.3.1 "Bit and Byte Order").
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal, NewType

import attrs

from vtx.bits import mask
from vtx.errors import InputError
from vtx.inputs import json_int, key_path, shown
from vtx.paging.formats import PAGE_OFFSET_BITS, PAGE_SIZE
from vtx.typecheck import checked

HostPhysAddr = NewType("HostPhysAddr", int)
"""A host-physical address: what memory is addressed by."""

GuestPhysAddr = NewType("GuestPhysAddr", int)
"""A guest-physical address: the output of guest paging, the input of EPT / NPT."""

GuestLinearAddr = NewType("GuestLinearAddr", int)
"""A guest linear address: the input of guest paging."""

_OFFSET_MASK = mask(PAGE_OFFSET_BITS)
_U64 = mask(64)
_ZERO_PAGE = bytes(PAGE_SIZE)
_VIEW_FORMATS: dict[int, Literal["I", "Q"]] = {4: "I", 8: "Q"} if sys.byteorder == "little" else {}
"""Entry sizes read through a cached typed view of the page (native order must be little-endian)."""


class _PageViews(dict[int, "memoryview[int]"]):
    """Typed views of the pages of one memory value, made on first use."""

    def __init__(self, pages: Mapping[int, bytes], fmt: Literal["I", "Q"]) -> None:
        super().__init__()
        self.pages, self.fmt = pages, fmt

    def __missing__(self, number: int) -> memoryview[int]:
        view = self[number] = memoryview(self.pages.get(number, _ZERO_PAGE)).cast(self.fmt)
        return view


def _page_bytes(page: object, number: int) -> bytes:
    if not isinstance(page, bytes) or len(page) != PAGE_SIZE:
        raise ValueError(f"page {number:#x} must be {PAGE_SIZE} bytes")
    return page


@attrs.frozen
class PhysicalMemory:
    """Sparse host-physical memory: page number -> ``PAGE_SIZE`` bytes; absent pages read 0."""

    pages: Mapping[int, bytes] = attrs.field(factory=dict, repr=False)
    _views: dict[int, _PageViews] = attrs.field(factory=dict, init=False, eq=False, repr=False)
    """Typed views of the pages by entry size (see :meth:`entry_views`); pages never change, so
    a view stays valid for the life of this value."""

    @classmethod
    @checked
    def from_pages(cls, pages: Mapping[int, bytes]) -> PhysicalMemory:
        """Memory from whole pages (page number -> ``PAGE_SIZE`` bytes); ValueError otherwise."""
        return cls({n: _page_bytes(p, n) for n, p in pages.items()})

    @classmethod
    @checked
    def from_writes(cls, writes: Iterable[tuple[HostPhysAddr, bytes]]) -> PhysicalMemory:
        """Memory holding each ``(address, data)`` in order (later writes win)."""
        pages: dict[int, bytearray] = {}
        for address, data in writes:
            for i, byte in enumerate(data):
                a = address + i
                pages.setdefault(a >> PAGE_OFFSET_BITS, bytearray(PAGE_SIZE))[a & _OFFSET_MASK] = byte
        return cls({n: bytes(p) for n, p in pages.items()})

    @checked
    def read(self, address: HostPhysAddr, size: int) -> bytes:
        """``size`` bytes from ``address`` (they may cross pages)."""
        out = bytearray()
        a = int(address)
        while len(out) < size:
            page = self.pages.get(a >> PAGE_OFFSET_BITS, _ZERO_PAGE)
            off = a & _OFFSET_MASK
            chunk = page[off:off + size - len(out)]
            out += chunk
            a += len(chunk)
        return bytes(out)

    def read_int(self, address: HostPhysAddr, size: int) -> int:
        """The little-endian unsigned integer of ``size`` bytes at ``address``."""
        off = address & _OFFSET_MASK
        if off + size <= PAGE_SIZE:
            page = self.pages.get(address >> PAGE_OFFSET_BITS)
            return 0 if page is None else int.from_bytes(page[off:off + size], "little")
        return int.from_bytes(self.read(address, size), "little")

    def entry_views(self, size: int) -> Mapping[int, Sequence[int]]:
        """Page number -> the page as a sequence of ``size``-byte little-endian values (4 or 8):
        ``views[a >> 12][(a & 0xFFF) // size]`` equals ``read_int(a, size)`` for an address
        aligned to ``size``. The read path of the walkers' inner loops; absent pages read 0."""
        views = self._views.get(size)
        if views is None:
            if size not in _VIEW_FORMATS:
                raise ValueError(f"no {size}-byte view on a {sys.byteorder}-endian host")
            views = self._views[size] = _PageViews(self.pages, _VIEW_FORMATS[size])
        return views

    def read_entry(self, address: int, size: int) -> int:
        """The ``size``-byte value at ``address`` (the read path of paging-structure entries):
        equal to :meth:`read_int`, through :meth:`entry_views` when the address is aligned."""
        if size not in _VIEW_FORMATS or address & (size - 1):
            return self.read_int(HostPhysAddr(address), size)
        return self.entry_views(size)[address >> PAGE_OFFSET_BITS][(address & _OFFSET_MASK) // size]

    def write(self, address: HostPhysAddr, data: bytes) -> PhysicalMemory:
        """A new memory with ``data`` at ``address``; this one is unchanged."""
        pages = dict(self.pages)
        a, pos = int(address), 0
        while pos < len(data):
            number, off = a >> PAGE_OFFSET_BITS, a & _OFFSET_MASK
            n = min(len(data) - pos, PAGE_SIZE - off)
            page = pages.get(number, _ZERO_PAGE)
            pages[number] = page[:off] + data[pos:pos + n] + page[off + n:]
            a, pos = a + n, pos + n
        return PhysicalMemory(pages)

    def write_int(self, address: HostPhysAddr, size: int, value: int) -> PhysicalMemory:
        """A new memory with the little-endian ``size``-byte ``value`` at ``address``."""
        if size < 1 or not 0 <= value <= mask(8 * size):
            raise ValueError(f"{value:#x} is not an unsigned {size}-byte value")
        return self.write(address, value.to_bytes(size, "little"))

    def set_bits(self, updates: Iterable[tuple[HostPhysAddr, int, int]]) -> PhysicalMemory:
        """A new memory where each ``(address, size, bits)`` has ``bits`` ORed into the
        ``size``-byte value at ``address`` (how the processor sets accessed and dirty flags)."""
        memory = self
        for address, size, bits in updates:
            old = memory.read_int(address, size)
            if old | bits != old:
                memory = memory.write_int(address, size, old | bits)
        return memory

    def page_numbers(self) -> list[int]:
        """The numbers of the pages ever written, in order."""
        return sorted(self.pages)


MAX_VALUE_BYTES = 8
"""The widest ``value`` a ``memory`` item of the JSON formats may give (wider runs use ``bytes``)."""


def parse_memory(items: object) -> PhysicalMemory:
    """The ``memory`` list: ``{"address", "size", "value"}`` items (``value`` a little-endian
    integer of ``size`` bytes, 1 to 8) or ``{"address", "bytes": "<hex>"}`` for longer runs."""
    if not isinstance(items, list):
        raise InputError("memory", type(items).__name__, "must be a list of {address, size, value} objects")
    writes: list[tuple[HostPhysAddr, bytes]] = []
    for i, item in enumerate(items):
        where = f"memory[{i}]"
        if not isinstance(item, dict):
            raise InputError(where, shown(item), "must be an object")
        extra = set(item) - {"address", "size", "value", "bytes"}
        if extra:
            key = sorted(extra)[0]
            raise InputError(key_path(where, key), shown(item[key]), "unknown key (address, size, value, bytes)")
        if "address" not in item:
            raise InputError(f"{where}.address", "missing", "required key")
        address = json_int(item["address"], f"{where}.address")
        if "bytes" in item:
            if "value" in item or "size" in item:
                raise InputError(where, "bytes with value/size", "give either bytes or size and value")
            try:
                data = bytes.fromhex(str(item["bytes"]))
            except ValueError as e:
                raise InputError(f"{where}.bytes", shown(item["bytes"]), "must be a hex string") from e
        else:
            if "value" not in item:
                raise InputError(f"{where}.value", "missing", "required key (or bytes)")
            size = json_int(item.get("size", MAX_VALUE_BYTES), f"{where}.size")
            if not 1 <= size <= MAX_VALUE_BYTES:
                raise InputError(f"{where}.size", size, "must be 1 to 8 bytes")
            data = json_int(item["value"], f"{where}.value", 8 * size).to_bytes(size, "little")
        if address + len(data) - 1 > _U64:
            raise InputError(where, f"{len(data)} bytes at {address:#x}", "runs past the 64-bit physical address space")
        writes.append((HostPhysAddr(address), data))
    return PhysicalMemory.from_writes(writes)
