"""A 64-bit boot state for a KVM guest, built from vtx's own models.

The GDT descriptors follow spec/kvm/boot.toml (SDM Vol. 3A §3.4.5 "Segment Descriptors"), the
4-level paging structures spec/paging/guest.toml (SDM Vol. 3A §5.5 "4-Level Paging and 5-Level
Paging"), and CR0 / CR4 / IA32_EFER are composed from the bits of spec/x86/registers.toml as
SDM Vol. 3A §10.8.5 "Initializing IA-32e Mode" requires: CR0.PE = CR0.PG = 1, CR4.PAE = 1,
IA32_EFER.LME = 1 (and LMA = 1, which KVM_SET_SREGS takes as given). Everything is built in a
:class:`~vtx.paging.memory.PhysicalMemory` first and then copied into KVM's memory slots, so the
model and KVM start from the same bytes.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from vtx.bits import BitRange, mask
from vtx.kvm.device import DTable, Segment, Sregs, Vm
from vtx.paging.formats import GUEST, PAGE_OFFSET_BITS, PAGE_SIZE, LevelFormat
from vtx.paging.guest import PS, PagingState
from vtx.paging.memory import HostPhysAddr, PhysicalMemory
from vtx.spec import _bits, _load, _Table, reg_bit
from vtx.typecheck import checked

_T = _Table("kvm/boot.toml")
DESCRIPTOR: Mapping[str, BitRange] = {r["name"]: _bits(r["bits"], _T.where("descriptor_bit", r))
                                      for r in _T.rows("descriptor_bit")}
for _r in _T.rows("descriptor_bit"):
    _T.cite("descriptor_bit", _r)
_TYPES = _load("kvm/boot.toml")["segment_type"]
LAYOUT: Mapping[str, int] = {k: v for k, v in _T.data["layout"].items() if k != "cite"}

MODE = GUEST.modes["4level"]
"""The paging mode of the boot state."""
ENTRY_BYTES = MODE.entry_bytes
P, RW = GUEST.entry["present"].mask, GUEST.entry["writable"].mask

CR0 = reg_bit("CR0", "PE").mask | reg_bit("CR0", "ET").mask | reg_bit("CR0", "NE").mask | reg_bit("CR0", "PG").mask
CR4 = reg_bit("CR4", "PAE").mask
EFER = reg_bit("IA32_EFER", "LME").mask | reg_bit("IA32_EFER", "LMA").mask
RFLAGS = reg_bit("RFLAGS", "FIXED1").mask
"""CR0, CR4, IA32_EFER and RFLAGS of the boot state (IA-32e mode, 4-level paging, interrupts off)."""


def descriptor(**fields: int) -> int:
    """A segment descriptor with the named fields of spec/kvm/boot.toml set."""
    value = 0
    for name, v in fields.items():
        value = DESCRIPTOR[name].put(value, v)
    return value


def _split(base: int, limit: int) -> dict[str, int]:
    base_low, limit_low = DESCRIPTOR["base_low"].width, DESCRIPTOR["limit_low"].width
    return {"base_low": base & mask(base_low), "base_high": base >> base_low,
            "limit_low": limit & mask(limit_low), "limit_high": limit >> limit_low}


@checked
def segment(selector: int, value: int) -> Segment:
    """The segment register KVM is given for a descriptor: the hidden part a load of
    ``selector`` would cache (limit in bytes: scaled by 4 KBytes when G = 1, §3.4.5)."""
    d = {name: rng.get(value) for name, rng in DESCRIPTOR.items()}
    base = d["base_low"] | d["base_high"] << DESCRIPTOR["base_low"].width
    limit = d["limit_low"] | d["limit_high"] << DESCRIPTOR["limit_low"].width
    if d["g"]:
        limit = limit << PAGE_OFFSET_BITS | mask(PAGE_OFFSET_BITS)
    return Segment(base, limit, selector, d["type"], d["present"], d["dpl"], d["db"], d["s"], d["l"], d["g"],
                   d["avl"], 0)


_FLAT = mask(DESCRIPTOR["limit_low"].width + DESCRIPTOR["limit_high"].width)
CODE = descriptor(**_split(0, _FLAT), type=_TYPES["code"], s=1, present=1, l=1, g=1)
DATA = descriptor(**_split(0, _FLAT), type=_TYPES["data"], s=1, present=1, db=1, g=1)
TSS = descriptor(**_split(0, LAYOUT["tss_bytes"] - 1), type=_TYPES["tss"], present=1)
"""The GDT's 64-bit code, flat data and (low half of the) 64-bit TSS descriptors."""


# ------------------------------------------------------------------ paging structures


@attrs.frozen
class PageTables:
    """4-level paging structures being built in ``memory``: ``root`` is the PML4 (CR3), new
    tables are allocated page by page from ``next_table``."""

    memory: PhysicalMemory
    root: int
    next_table: int

    @classmethod
    @checked
    def empty(cls, memory: PhysicalMemory, root: int) -> PageTables:
        return cls(memory, root, root + PAGE_SIZE)

    @checked
    def entry_address(self, table: int, level: LevelFormat, gla: int) -> int:
        return table + level.index.get(gla) * ENTRY_BYTES

    @checked
    def map(self, gla: int, gpa: int, page_size: int, leaf_bits: int, table_bits: int = P | RW) -> PageTables:
        """Map the ``page_size`` page at ``gla`` to ``gpa`` with an entry setting
        ``leaf_bits`` (PS added where the level maps pages only with PS = 1), creating the
        missing tables above it with entries setting ``table_bits``; existing entries above
        the page are kept."""
        memory, table, free = self.memory, self.root, self.next_table
        for level in MODE.levels:
            at = HostPhysAddr(self.entry_address(table, level, gla))
            if level.page_size == page_size:
                if level.page is None:
                    raise ValueError(f"{level.name} cannot map a {page_size:#x}-byte page")
                ps = PS if level.large != "leaf" else 0
                value = (gpa & level.page.mask) | leaf_bits | ps
                return PageTables(memory.write_int(at, ENTRY_BYTES, value), self.root, free)
            assert level.table is not None
            entry = memory.read_int(at, ENTRY_BYTES)
            if entry & P and not entry & PS:
                table = entry & level.table.mask
                continue
            table, free = free, free + PAGE_SIZE
            memory = memory.write_int(at, ENTRY_BYTES, table | table_bits)
        raise ValueError(f"no level maps {page_size:#x}-byte pages")


@checked
def identity_tables(memory: PhysicalMemory, root: int, size: int) -> PageTables:
    """Paging structures that map guest-linear [0, ``size``) to the same guest-physical
    addresses with the largest pages the 4-level mode has below 1 GByte (2-MByte PDEs),
    supervisor read/write."""
    page = next(lv.page_size for lv in reversed(MODE.levels) if lv.large == "always")
    tables = PageTables.empty(memory, root)
    for address in range(0, size, page):
        tables = tables.map(address, address, page, P | RW)
    return tables


@attrs.frozen
class BootImage:
    """The guest-physical memory and the register state of a 64-bit guest at its first
    instruction."""

    memory: PhysicalMemory
    cr3: int
    entry: int

    def paging_state(self) -> PagingState:
        """The translation registers, as vtx.paging reads them."""
        return PagingState(CR0, self.cr3, CR4, EFER, RFLAGS)

    @checked
    def sregs(self, base: Sregs) -> Sregs:
        """``base`` (what KVM_GET_SREGS returned) with the boot segments, GDT, control
        registers and EFER."""
        code = segment(LAYOUT["selector_code"], CODE)
        data = segment(LAYOUT["selector_data"], DATA)
        tr = segment(LAYOUT["selector_tss"], TSS)
        gdt_bytes = LAYOUT["selector_tss"] + 2 * ENTRY_BYTES
        return attrs.evolve(base, cs=code, ds=data, es=data, fs=data, gs=data, ss=data, tr=tr,
                            gdt=DTable(LAYOUT["gdt"], gdt_bytes - 1), cr0=CR0, cr3=self.cr3, cr4=CR4, efer=EFER)


@checked
def boot_image(code: bytes, *, memory: PhysicalMemory | None = None, tables: PageTables | None = None) -> BootImage:
    """The GDT, the identity-mapping page tables (unless ``tables`` gives others) and ``code``
    at the layout's addresses of spec/kvm/boot.toml, over ``memory``."""
    memory = memory or PhysicalMemory()
    gdt = LAYOUT["gdt"]
    for selector, value in ((LAYOUT["selector_code"], CODE), (LAYOUT["selector_data"], DATA),
                            (LAYOUT["selector_tss"], TSS)):
        memory = memory.write_int(HostPhysAddr(gdt + selector), ENTRY_BYTES, value)
    if tables is None:
        tables = identity_tables(memory, LAYOUT["pml4"], LAYOUT["identity_bytes"])
    memory = tables.memory.write(HostPhysAddr(LAYOUT["code"]), code)
    if LAYOUT["code"] + len(code) > LAYOUT["system_bytes"] or tables.next_table > LAYOUT["code"]:
        raise ValueError("the boot structures and code overflow the system slot of spec/kvm/boot.toml")
    return BootImage(memory, tables.root, LAYOUT["code"])


@checked
def load(vm: Vm, memory: PhysicalMemory) -> None:
    """Copy every page of ``memory`` that a slot of ``vm`` backs into that slot (pages no slot
    backs are left out: they are the model's, not the guest's)."""
    for number in memory.page_numbers():
        gpa = number << PAGE_OFFSET_BITS
        slot = vm.slot_at(gpa)
        if slot is not None:
            slot.write(gpa, memory.pages[number])
