"""The z3 encoding of an EPT hierarchy read from concrete memory, and of guest-physical accesses.

Every entry of every table a walk can read becomes a 64-bit constant, read from concrete memory;
a table is read by a balanced multiplexer on the 9 index bits of the guest-physical address, and
the table by the host-physical address the previous entry names. A guest-physical address is a
bit-vector as wide as the walk translates (48 bits for a 4-level EPT, 57 for a 5-level one; a
wider address faults before any entry is read). The walk is unrolled to the fixed depth of the
EPTP, with the concrete walker's rules compiled from the same catalogue (``spec/paging/ept.toml``
through :mod:`vtx.paging.ept`): an entry is present if it sets a bit of the present mask
(§30.3.2 "EPT Translation Mechanism"); it is misconfigured if it sets a reserved bit of its
level, is writable but not readable, is execute-only without the capability, or maps a page with
a reserved memory type (§30.3.3.1 "EPT Misconfigurations"); a read, write or fetch is allowed by
the AND of the permission bits of the entries used (§30.3.3.2 "EPT Violations").

The encoding holds only the tables that :func:`vtx.invariants.mappings.ept_view` found, so every
walk also yields ``covered``: each table it reads is one of them. Proofs assert coverage as a
conjunct, so a table missed by the concrete enumeration shows up as a failed proof, never as
silent soundness loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import z3

from vtx.invariants.mappings import EptView
from vtx.paging.ept import ENTRY_BYTES, MEMORY_TYPE, PS, UX, Ept, R, W, X
from vtx.paging.formats import EPT, PAGE_OFFSET_BITS, PAGE_SIZE
from vtx.paging.guest import LEAF, PS_PAGE, AccessKind, CompiledMode
from vtx.paging.guest import RW as GUEST_RW
from vtx.paging.guest import XD as GUEST_XD
from vtx.paging.guest import P as GUEST_P
from vtx.paging.memory import HostPhysAddr, PhysicalMemory
from vtx.typecheck import checked

ADDRESS = 64
"""Width of host-physical addresses and entries in the encoding."""
ACCESS_CODES = {AccessKind.READ: 0, AccessKind.WRITE: 1, AccessKind.FETCH: 2}
"""How an access type is encoded in the 2-bit access variable."""
ACCESS_KINDS = {code: kind for kind, code in ACCESS_CODES.items()}
RESERVED_MEMORY_TYPES = tuple(t << MEMORY_TYPE.lo for t in range(1 << MEMORY_TYPE.width) if t not in EPT.memory_types)
"""Leaf memory-type fields that are misconfigurations (values 0-7 without a row in ept.toml)."""


@checked
def bv(value: int, width: int = ADDRESS) -> z3.BitVecRef:
    return z3.BitVecVal(value, width)


def nonzero(term: z3.BitVecRef) -> z3.BoolRef:
    return term != bv(0, term.size())


@attrs.frozen
class SymbolicWalk:
    """The walk of a symbolic guest-physical address: whether it completes (``translated``), the
    host-physical address and the AND of the permission bits, the page size, and ``covered``
    (every table read is one of the encoded tables)."""

    translated: Any
    hpa: Any
    permissions: Any
    page_size: Any
    covered: Any


@attrs.frozen
class SymbolicEpt:
    """One EPT hierarchy as z3 terms: ``tables`` maps the host-physical address of every encoded
    table to its 512 entry values (concrete), read by a multiplexer on the index bits."""

    ept: Ept
    tables: tuple[tuple[int, tuple[int, ...]], ...]
    entries: int

    @property
    def address_bits(self) -> int:
        return self.ept.address_bits

    def read(self, table: z3.BitVecRef, index: z3.BitVecRef) -> z3.BitVecRef:
        return read_entry(self.tables, table, index)


def read_entry(tables: tuple[tuple[int, tuple[int, ...]], ...], table: z3.BitVecRef,
               index: z3.BitVecRef) -> z3.BitVecRef:
    """Entry ``index`` of the table at host-physical ``table`` (0 outside ``tables``, which a walk
    never reads while it is ``covered``)."""
    out: z3.BitVecRef = bv(0)
    for address, values in reversed(tables):
        out = z3.If(table == bv(address), select(values, index), out)
    return out


ENTRIES_PER_TABLE = PAGE_SIZE // ENTRY_BYTES
INDEX_BITS = (ENTRIES_PER_TABLE - 1).bit_length()


def select(values: tuple[int, ...], index: z3.BitVecRef) -> z3.BitVecRef:
    """``values[index]`` as a balanced multiplexer on the bits of ``index``, most significant bit
    first; a run of equal values is one constant (an empty table is the constant 0)."""
    def mux(lo: int, hi: int, bit: int) -> z3.BitVecRef:
        first = values[lo]
        if all(v == first for v in values[lo:hi]):
            return bv(first)
        mid = (lo + hi) // 2
        return z3.If(z3.Extract(bit, bit, index) == z3.BitVecVal(1, 1), mux(mid, hi, bit - 1), mux(lo, mid, bit - 1))
    return mux(0, len(values), index.size() - 1)


@checked
def encode_ept(view: EptView, memory: PhysicalMemory) -> SymbolicEpt:
    """The entry values of every table of ``view``, read from ``memory``."""
    tables = encode_tables(view.tables, memory)
    return SymbolicEpt(view.ept, tables, sum(1 for _, values in tables for v in values if v))


def walk(enc: SymbolicEpt, gpa: z3.BitVecRef) -> SymbolicWalk:
    """The EPT walk of ``gpa`` (a bit-vector of ``enc.address_bits``), unrolled level by level."""
    ept = enc.ept
    gpa64 = z3.ZeroExt(ADDRESS - gpa.size(), gpa)
    present = bv(ept.present_mask)
    table: z3.BitVecRef = bv(ept.root)
    reach: z3.BoolRef = z3.BoolVal(True)
    perms: z3.BitVecRef = bv(R | W | X | UX)
    covered: list[z3.BoolRef] = []
    leaves: list[tuple[z3.BoolRef, z3.BitVecRef, z3.BitVecRef, int]] = []
    for lv in ept.levels:
        covered.append(z3.Implies(reach, z3.Or([table == bv(t) for t, _ in enc.tables])))
        width = lv.index_mask.bit_length()
        assert width == INDEX_BITS
        entry = enc.read(table, z3.Extract(lv.shift + width - 1, lv.shift, gpa64))
        perms = perms & entry
        is_present = nonzero(entry & present)
        if lv.maps_page == LEAF:
            page: z3.BoolRef = z3.BoolVal(True)
        elif lv.maps_page == PS_PAGE:
            page = nonzero(entry & PS)
        else:
            page = z3.BoolVal(False)
        reserved = z3.If(page, nonzero(entry & lv.rsvd_page), nonzero(entry & lv.rsvd_table))
        readable = nonzero(entry & R)
        unreadable = z3.And(z3.Not(readable), z3.Or(nonzero(entry & W), z3.BoolVal(not ept.execute_only)))
        memory_type = entry & MEMORY_TYPE.mask
        bad_type = z3.Or([memory_type == bv(t) for t in RESERVED_MEMORY_TYPES]) if RESERVED_MEMORY_TYPES \
            else z3.BoolVal(False)
        well_formed = z3.And(is_present, z3.Not(reserved), z3.Not(unreadable), z3.Not(z3.And(page, bad_type)))
        hpa = (entry & lv.page_mask) | (gpa64 & bv(lv.page_size - 1))
        leaves.append((z3.And(reach, well_formed, page), hpa, perms & present, lv.page_size))
        reach = z3.And(reach, well_formed, z3.Not(page))
        table = entry & lv.table_mask
    return _combine(leaves, covered)


@checked
def encode_tables(tables: tuple[int, ...], memory: PhysicalMemory) -> tuple[tuple[int, tuple[int, ...]], ...]:
    """The entry values of each table at ``tables``, read from ``memory``."""
    out = []
    for table in tables:
        page = memory.read(HostPhysAddr(table), PAGE_SIZE)
        out.append((table, tuple(int.from_bytes(page[i:i + ENTRY_BYTES], "little")
                                 for i in range(0, PAGE_SIZE, ENTRY_BYTES))))
    return tuple(out)


def walk_page_tables(compiled: CompiledMode, root: int, tables: tuple[tuple[int, tuple[int, ...]], ...],
                     gla: z3.BitVecRef) -> SymbolicWalk:
    """A classic PV guest's walk of its own page tables from machine address ``root`` (SDM Vol.
    3A §5.5 "4-Level Paging and 5-Level Paging"): an entry continues the walk if P = 1 and it sets
    no reserved bit of its level (§5.7 "Page-Fault Exceptions"); the permissions are EPT-style:
    read always, write if every entry used sets R/W, execute unless one sets XD."""
    gla64 = z3.ZeroExt(ADDRESS - gla.size(), gla)
    table: z3.BitVecRef = bv(root)
    reach: z3.BoolRef = z3.BoolVal(True)
    writable: z3.BoolRef = z3.BoolVal(True)
    executable: z3.BoolRef = z3.BoolVal(True)
    covered: list[z3.BoolRef] = []
    leaves: list[tuple[z3.BoolRef, z3.BitVecRef, z3.BitVecRef, int]] = []
    for lv in compiled.levels:
        covered.append(z3.Implies(reach, z3.Or([table == bv(t) for t, _ in tables])))
        width = lv.index_mask.bit_length()
        entry = read_entry(tables, table, z3.Extract(lv.shift + width - 1, lv.shift, gla64))
        page = z3.BoolVal(lv.maps_page == LEAF) if lv.maps_page != PS_PAGE else nonzero(entry & PS)
        reserved = z3.If(page, nonzero(entry & lv.rsvd_page), nonzero(entry & lv.rsvd_table))
        ok = z3.And(nonzero(entry & GUEST_P), z3.Not(reserved))
        writable = z3.And(writable, nonzero(entry & GUEST_RW))
        if compiled.execute_disable:
            executable = z3.And(executable, z3.Not(nonzero(entry & GUEST_XD)))
        rights = bv(R) | z3.If(writable, bv(W), bv(0)) | z3.If(executable, bv(X), bv(0))
        hpa = (entry & lv.page_mask) | (gla64 & bv(lv.page_size - 1))
        leaves.append((z3.And(reach, ok, page), hpa, rights, lv.page_size))
        reach = z3.And(reach, ok, z3.Not(page))
        table = entry & lv.table_mask
    return _combine(leaves, covered)


def _combine(leaves: list[tuple[z3.BoolRef, z3.BitVecRef, z3.BitVecRef, int]],
             covered: list[z3.BoolRef]) -> SymbolicWalk:
    translated = z3.Or([c for c, _, _, _ in leaves])
    hpa_t, perms_t, size_t = bv(0), bv(0), bv(0)
    for cond, hpa, p, size in reversed(leaves):
        hpa_t, perms_t, size_t = z3.If(cond, hpa, hpa_t), z3.If(cond, p, perms_t), z3.If(cond, bv(size), size_t)
    return SymbolicWalk(translated, hpa_t, perms_t, size_t, z3.And(covered))


def allows(ept: Ept | None, permissions: z3.BitVecRef, access: z3.BitVecRef, user: z3.BoolRef) -> z3.BoolRef:
    """Whether ``permissions`` allow the access coded ``access`` (0 read, 1 write, 2 fetch), as
    :func:`vtx.paging.ept.allows`: a fetch from a user-mode linear address needs bit 10 instead of
    bit 2 with mode-based execute control (``ept`` None: a classic PV guest's page tables)."""
    fetch = nonzero(permissions & X)
    if ept is not None and ept.mode_based_execute:
        fetch = z3.If(user, nonzero(permissions & UX), fetch)
    code = ACCESS_CODES
    return z3.Or(z3.And(access == code[AccessKind.READ], nonzero(permissions & R)),
                 z3.And(access == code[AccessKind.WRITE], nonzero(permissions & W)),
                 z3.And(access == code[AccessKind.FETCH], fetch))


def in_range(hpa: z3.BitVecRef, base: int, size: int) -> z3.BoolRef:
    """``base <= hpa < base + size`` (unsigned)."""
    return z3.And(z3.UGE(hpa, bv(base)), z3.ULT(hpa, bv(base + size)))


def page_of(hpa: z3.BitVecRef) -> z3.BitVecRef:
    return z3.LShR(hpa, PAGE_OFFSET_BITS)


@checked
def any_of(terms: Sequence[z3.BoolRef]) -> z3.BoolRef:
    return z3.Or(list(terms)) if terms else z3.BoolVal(False)
