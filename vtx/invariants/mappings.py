"""Every translation an EPT hierarchy makes, as ranges: the leaves a complete walk can reach and
the paging-structure tables it reads (SDM Vol. 3C §30.3.2 "EPT Translation Mechanism").

:func:`ept_view` visits the hierarchy from the root with the concrete walker's own rules
(:mod:`vtx.paging.ept`): an entry continues the walk only if it is present and not misconfigured
(§30.3.3.1 "EPT Misconfigurations"); an entry that maps a page ends it, with the logical AND of the
permission bits of every entry used. A guest-physical address translates iff it lies in one leaf's
range, and then to that leaf's host range at the same offset; this is the range analysis the
invariant checkers use, and its agreement with :func:`vtx.paging.ept.walk_ept` and with the z3
encoding of :mod:`vtx.proofs.encoding` is tested.
"""

from __future__ import annotations

import struct

import attrs

from vtx.paging.ept import ENTRY_BYTES, PS, UX, Ept, EptLevel, R, W, X, misconfiguration
from vtx.paging.formats import PAGE_OFFSET_BITS, PAGE_SIZE
from vtx.paging.guest import LEAF, PS_PAGE, RW, XD, CompiledMode, P
from vtx.paging.memory import PhysicalMemory
from vtx.typecheck import checked

_ENTRIES = PAGE_SIZE // ENTRY_BYTES
_UNPACK = struct.Struct(f"<{_ENTRIES}Q")
_ALL_RIGHTS = R | W | X | UX


@attrs.frozen
class EptMapping:
    """One EPT leaf as a range: guest-physical [``gpa``, ``gpa + size``) translates to host-physical
    [``hpa``, ``hpa + size``) with ``permissions`` (AND of bits 2:0 and 10 of every entry used);
    ``entry`` is the leaf, read at host-physical ``entry_hpa`` in a table of ``level``."""

    gpa: int
    size: int
    hpa: int
    permissions: int
    entry: int
    entry_hpa: int
    level: str

    @property
    def hpa_end(self) -> int:
        return self.hpa + self.size


@attrs.frozen
class EptView:
    """What one EPT hierarchy maps: its leaves in guest-physical order and the host-physical
    addresses of the tables a walk can read (the root first)."""

    ept: Ept
    leaves: tuple[EptMapping, ...]
    tables: tuple[int, ...]


def _entries(memory: PhysicalMemory, table: int) -> tuple[int, ...]:
    page = memory.pages.get(table >> PAGE_OFFSET_BITS)
    if page is None:
        return ()
    return _UNPACK.unpack(page)


@checked
def ept_view(ept: Ept, memory: PhysicalMemory) -> EptView:
    """Every leaf and table reachable from ``ept``'s root in ``memory``."""
    leaves: list[EptMapping] = []
    tables: list[int] = []
    present = ept.present_mask

    def visit(table: int, depth: int, base: int, perms: int) -> None:
        lv: EptLevel = ept.levels[depth]
        tables.append(table)
        for index, entry in enumerate(_entries(memory, table)):
            if not entry & present:
                continue
            page = lv.maps_page == LEAF or (lv.maps_page == PS_PAGE and bool(entry & PS))
            if misconfiguration(ept, lv, entry, page) is not None:
                continue
            gpa = base | (index << lv.shift)
            rights = perms & entry
            if page:
                leaves.append(EptMapping(gpa, lv.page_size, entry & lv.page_mask, rights & present, entry,
                                         table + index * ENTRY_BYTES, lv.name))
            else:
                visit(entry & lv.table_mask, depth + 1, gpa, rights)

    visit(ept.root, 0, 0, _ALL_RIGHTS)
    return EptView(ept, tuple(leaves), tuple(dict.fromkeys(tables)))


@checked
def page_range(start: int, size: int) -> range:
    """The 4-KByte page numbers that [``start``, ``start + size``) touches."""
    return range(start >> PAGE_OFFSET_BITS, (start + size + PAGE_SIZE - 1) >> PAGE_OFFSET_BITS)


@attrs.frozen
class PageTableView:
    """What a classic PV guest's page tables map: leaves (linear to machine) and the tables read."""

    compiled: CompiledMode
    root: int
    leaves: tuple[EptMapping, ...]
    tables: tuple[int, ...]


@checked
def page_table_view(compiled: CompiledMode, root: int, memory: PhysicalMemory) -> PageTableView:
    """Every translation a classic PV guest's own page tables make (SDM Vol. 3A §5.5 "4-Level
    Paging and 5-Level Paging"): the leaves reachable from the machine address ``root`` through
    present entries that set no reserved bit (§5.7, RSVD), as ranges of linear addresses (``gpa``
    holds the linear address) to machine addresses, with ``permissions`` in EPT notation: read
    always, write if every entry used sets R/W, execute unless one sets XD."""
    leaves: list[EptMapping] = []
    tables: list[int] = []

    def visit(table: int, depth: int, base: int, writable: bool, executable: bool) -> None:
        lv = compiled.levels[depth]
        tables.append(table)
        for index, entry in enumerate(_entries(memory, table)):
            if not entry & P:
                continue
            page = lv.maps_page == LEAF or (lv.maps_page == PS_PAGE and bool(entry & PS))
            if entry & (lv.rsvd_page if page else lv.rsvd_table):
                continue
            gla = base | (index << lv.shift)
            w = writable and bool(entry & RW)
            x = executable and not (compiled.execute_disable and entry & XD)
            if page:
                rights = R | (W if w else 0) | (X if x else 0)
                leaves.append(EptMapping(gla, lv.page_size, entry & lv.page_mask, rights, entry,
                                         table + index * ENTRY_BYTES, lv.name))
            else:
                visit(entry & lv.table_mask, depth + 1, gla, w, x)

    visit(root & compiled.root_mask, 0, 0, True, True)
    return PageTableView(compiled, root & compiled.root_mask, tuple(leaves), tuple(dict.fromkeys(tables)))
