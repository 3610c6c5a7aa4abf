"""Guest paging: linear-address translation in every paging mode of SDM Vol. 3A Chapter 5.

The walk is one loop over the levels of the mode (spec/paging/guest.toml), compiled into masks
once per (mode, MAXPHYADDR, IA32_EFER.NXE, CR4.PSE, 1-GByte-page support). It is shared by
three callers that differ only in how a paging-structure entry is read:

* :func:`translate` — no EPT or NPT: guest-physical addresses are host-physical;
* :mod:`vtx.paging.walk2d` — every entry's guest-physical address is translated through EPT;
* :mod:`vtx.paging.npt` — the nested walk itself uses this walker on the host's tables, and the
  guest walk reads its entries through it.

Order of events (SDM Vol. 3A §5.5 "4-Level Paging and 5-Level Paging", §5.7 "Page-Fault
Exceptions", §5.8 "Accessed and Dirty Flags"): the walk reads entries from the root and stops
at the first entry that is not present (#PF, P = 0) or sets a reserved bit (#PF, P = 1,
RSVD = 1); a complete translation is then checked against the access rights (§5.6); only an
allowed access sets accessed flags in every entry used and the dirty flag in the entry that maps
the page.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable
from typing import NamedTuple

import attrs

from vtx.bits import BitRange, is_canonical, mask
from vtx.errors import InputError
from vtx.paging.formats import GUEST, PAGE_OFFSET_BITS, PAGE_SIZE, LevelFormat, PagingMode
from vtx.paging.memory import GuestPhysAddr, HostPhysAddr, PhysicalMemory
from vtx.paging.outcomes import GeneralProtection, Outcome, PageFault, Reference, Rights, Space, Translated
from vtx.typecheck import checked
from vtx.vmx.capabilities import Capabilities

# ------------------------------------------------------------------ bits, from spec/paging/guest.toml


def _entry(name: str) -> int:
    return GUEST.entry[name].mask


def _reg(register: str, name: str) -> int:
    return GUEST.register(register, name).mask


def _err(name: str) -> int:
    return GUEST.error_code[name].mask


P, RW, US, ACCESSED, DIRTY, PS = (_entry(n) for n in ("present", "writable", "user", "accessed", "dirty", "page_size"))
GLOBAL, XD = _entry("global"), _entry("execute_disable")
PKEY = GUEST.entry["protection_key"].bits
CR0_PG, CR0_WP = _reg("cr0", "pg"), _reg("cr0", "wp")
CR4_PSE, CR4_PAE, CR4_PGE, CR4_LA57 = (_reg("cr4", n) for n in ("pse", "pae", "pge", "la57"))
CR4_PCIDE, CR4_SMEP, CR4_SMAP, CR4_PKE = (_reg("cr4", n) for n in ("pcide", "smep", "smap", "pke"))
EFER_LME, EFER_LMA, EFER_NXE = _reg("efer", "lme"), _reg("efer", "lma"), _reg("efer", "nxe")
RFLAGS_AC = _reg("rflags", "ac")
CR3_PCID = GUEST.register("cr3", "pcid").bits
PF_P, PF_W, PF_U, PF_RSVD, PF_I, PF_PK, PF_SS = (_err(n) for n in ("present", "write", "user", "reserved", "fetch",
                                                                    "protection_key", "shadow_stack"))
_PDPTE_COUNT = 1 << GUEST.modes["pae"].levels[0].index.width
_OFFSET_MASK = mask(PAGE_OFFSET_BITS)
_PKRU_BITS_PER_KEY = 2
_new_tuple = tuple.__new__


class AccessKind(enum.Enum):
    """The kind of a memory access."""

    READ = "read"
    WRITE = "write"
    FETCH = "fetch"


@attrs.frozen
class Access:
    """One memory access by the guest.

    ``user`` is a user-mode access (CPL = 3 and not an implicit supervisor-mode access);
    ``implicit`` an implicit supervisor-mode access (to the GDT, IDT, LDT or TSS), which SMAP
    checks whatever RFLAGS.AC says (SDM Vol. 3A §5.6.1 "Determination of Access Rights").
    ``nmi_unblocking`` says the access is by an IRET that unblocked NMIs (reported in an EPT
    violation's exit qualification). ``shadow_stack`` marks a shadow-stack access of CET (a
    read or a write; SDM Vol. 3A §5.6.1);
    ``asynchronous`` one asynchronous to instruction execution and not part of event delivery,
    such as Intel PT trace output (reported in bit 16 of an EPT violation's qualification).
    ``size`` bytes from the address: an access that crosses a page boundary is translated as
    two accesses, one per page, in address order.
    """

    kind: AccessKind
    user: bool = False
    implicit: bool = False
    size: int = 1
    nmi_unblocking: bool = False
    shadow_stack: bool = False
    asynchronous: bool = False

    def __attrs_post_init__(self) -> None:
        if self.user and self.implicit:
            raise InputError("access", "user and implicit", "an implicit supervisor-mode access is not a user access")
        if self.size < 1:
            raise InputError("access.size", self.size, "an access is at least one byte")
        if self.shadow_stack and (self.kind is AccessKind.FETCH or self.implicit):
            raise InputError("access.shadow_stack", True, "a shadow-stack access is an explicit read or write")

    @property
    def is_write(self) -> bool:
        return self.kind is AccessKind.WRITE

    @property
    def is_fetch(self) -> bool:
        return self.kind is AccessKind.FETCH


@attrs.frozen
class PagingState:
    """The guest registers that bear on translation; ``pdptes`` are the four PDPTE registers
    of PAE paging (SDM Vol. 3A §5.4.1 "PDPTE Registers"), None where they are not used."""

    cr0: int
    cr3: int
    cr4: int
    efer: int
    rflags: int = 0x2
    pkru: int = 0
    pdptes: tuple[int, ...] | None = None
    pat: int = GUEST.pat.reset
    """IA32_PAT (default: its value after reset, SDM Vol. 3A §12.12.4 "Programming the PAT")."""

    @property
    def paging(self) -> bool:
        return bool(self.cr0 & CR0_PG)

    @property
    def ia32e(self) -> bool:
        """IA-32e paging (4-level or 5-level): CR0.PG = CR4.PAE = IA32_EFER.LME = 1 (§5.1)."""
        return bool(self.cr0 & CR0_PG and self.cr4 & CR4_PAE and self.efer & EFER_LME)

    @property
    def pcid(self) -> int:
        """The current PCID: CR3 bits 11:0 if CR4.PCIDE = 1, else 000H (§5.10.1)."""
        return CR3_PCID.get(self.cr3) if self.cr4 & CR4_PCIDE else 0


@attrs.frozen
class PagingFeatures:
    """The processor facts translation depends on."""

    maxphyaddr: int
    gb_pages: bool

    @classmethod
    @checked
    def from_capabilities(cls, caps: Capabilities) -> PagingFeatures:
        """MAXPHYADDR and 1-GByte-page support of a capability profile (both required)."""
        return cls(caps.require_fact("MAXPHYADDR"), bool(caps.require_fact("CPUID_1GB_PAGES")))


def paging_mode(state: PagingState) -> PagingMode | None:
    """The paging mode CR0.PG, CR4.PAE, IA32_EFER.LME and CR4.LA57 select (SDM Vol. 3A §5.1
    "Paging Modes and Control Bits"); None when paging is disabled."""
    if not state.paging:
        return None
    if not state.cr4 & CR4_PAE:
        return GUEST.modes["32bit"]
    if not state.efer & EFER_LME:
        return GUEST.modes["pae"]
    return GUEST.modes["5level" if state.cr4 & CR4_LA57 else "4level"]


# ------------------------------------------------------------------ compiled formats


class Level(NamedTuple):
    """One level of a paging mode compiled for a processor and register state."""

    name: str
    depth: int
    shift: int
    index_mask: int
    table_mask: int
    page_mask: int
    high_mask: int
    high_shift: int
    maps_page: int
    rsvd_table: int
    rsvd_page: int
    page_size: int
    rights: bool


LEAF, PS_PAGE, NO_PAGE = 2, 1, 0
"""How an entry of a level maps a page: always, when PS = 1, never."""


def _above(rng: BitRange | None, maxphyaddr: int) -> int:
    return 0 if rng is None else rng.mask & ~mask(maxphyaddr)


@checked
def compile_level(fmt: LevelFormat, maxphyaddr: int, xd_reserved: int, maps_page: int, *, ps_reserved: bool,
                  rights: bool = True) -> Level:
    """The masks of one level: the fixed reserved bits, the address bits at or above
    MAXPHYADDR, XD while IA32_EFER.NXE = 0, and PS where no page may be mapped
    (SDM Vol. 3A §5.7 "Page-Fault Exceptions", RSVD flag). ``rights`` is False for the PAE
    PDPTEs, which carry no access rights and no accessed flag (§5.4.1)."""
    table = fmt.table.mask & mask(maxphyaddr) if fmt.table is not None else 0
    page = fmt.page.mask & mask(maxphyaddr) if fmt.page is not None else 0
    high_mask = high_shift = high_rsvd = 0
    if fmt.page_high is not None:
        bits, to = fmt.page_high
        high_shift = to - bits.lo
        high_mask = bits.mask & (mask(maxphyaddr) >> high_shift)
        high_rsvd = bits.mask & ~high_mask
    rsvd_table = fmt.reserved | _above(fmt.table, maxphyaddr) | xd_reserved | (PS if ps_reserved else 0)
    rsvd_page = fmt.reserved_page | _above(fmt.page, maxphyaddr) | high_rsvd | xd_reserved
    return Level(fmt.name, fmt.depth, fmt.index.lo, mask(fmt.index.width), table, page, high_mask, high_shift,
                 maps_page, rsvd_table, rsvd_page, fmt.page_size, rights)


@attrs.frozen
class CompiledMode:
    """A paging mode compiled for one processor and the register bits that change formats."""

    mode: PagingMode
    levels: tuple[Level, ...]
    root_mask: int
    execute_disable: bool

    @property
    def name(self) -> str:
        return self.mode.name


@functools.cache
def compile_mode(name: str, maxphyaddr: int, nxe: bool, pse: bool, gb_pages: bool) -> CompiledMode:
    """The masks of a paging mode for a processor and register state (cached)."""
    mode = GUEST.modes[name]
    xd_enabled = mode.execute_disable and nxe
    xd_reserved = XD if mode.execute_disable and not nxe else 0
    allowed = {"leaf": LEAF, "never": NO_PAGE, "always": PS_PAGE,
               "cr4.pse": PS_PAGE if pse else NO_PAGE, "1gb_pages": PS_PAGE if gb_pages else NO_PAGE}
    levels = []
    for i, fmt in enumerate(mode.levels):
        maps = allowed[fmt.large]
        register = mode.pdpte_registers and i == 0
        levels.append(compile_level(fmt, maxphyaddr, 0 if register else xd_reserved, maps,
                                    ps_reserved=maps == NO_PAGE and fmt.ps_unsupported == "reserved",
                                    rights=not register))
    return CompiledMode(mode, tuple(levels), mode.root.mask & mask(maxphyaddr), xd_enabled)


def compile_for(state: PagingState, features: PagingFeatures) -> CompiledMode | None:
    """The compiled mode of ``state`` (None: paging disabled)."""
    mode = paging_mode(state)
    if mode is None:
        return None
    return compile_mode(mode.name, features.maxphyaddr, bool(state.efer & EFER_NXE), bool(state.cr4 & CR4_PSE),
                        features.gb_pages)


# ------------------------------------------------------------------ the walk


@attrs.frozen
class GuestWalk:
    """A complete guest translation whose access rights are not yet checked.

    ``entries`` are the entries read from memory, root first, as (level, guest-physical address,
    value); the PDPTE registers of PAE paging are not among them. ``user`` / ``writable`` /
    ``execute_disable`` combine every entry that controls the translation (§5.6.1);
    ``upper_writable`` is R/W of every one but the entry that maps the page.
    """

    gpa: int
    page_size: int
    user: bool
    writable: bool
    execute_disable: bool
    leaf: int
    leaf_level: int
    entries: tuple[tuple[Level, int, int], ...]
    upper_writable: bool = True

    @property
    def shadow_stack_page(self) -> bool:
        """A shadow-stack page: R/W = 0 and D = 1 in the entry that maps it, R/W = 1 in every
        other entry (SDM Vol. 3A §5.6.1 "Determination of Access Rights")."""
        return self.upper_writable and not self.leaf & RW and bool(self.leaf & DIRTY)

    @checked
    def pat_memory_type(self, state: PagingState) -> str:
        """The memory type of the IA32_PAT entry the entry that maps the page selects (PAT, PCD,
        PWT; SDM Vol. 3A §12.12.3 "Selecting a Memory Type from the PAT")."""
        return pat_memory_type(state.pat, pat_index(self.leaf, pat_bit=True, pte=self.leaf_level == 1))

    @property
    def protection_key(self) -> int:
        return PKEY.get(self.leaf)

    @property
    def is_global(self) -> bool:
        return bool(self.leaf & GLOBAL)

    @checked
    def rights(self, state: PagingState, access: Access) -> Rights:
        """The rights a TLB may cache after ``access``; G counts only with CR4.PGE = 1 (§5.10.2.4)."""
        return Rights(self.user, self.writable, self.execute_disable, self.protection_key,
                      bool(self.leaf & DIRTY) or access.is_write, self.is_global and bool(state.cr4 & CR4_PGE))


@attrs.frozen
class WalkFault:
    """The walk stopped at ``level``: an entry not present, or one setting a reserved bit."""

    level: int
    reserved: bool


class WalkStart(NamedTuple):
    """Where a walk resumes from a paging-structure-cache entry: the index of the next level in
    the compiled mode, its table's address and the rights accumulated above it."""

    level_index: int
    table: int
    user: bool
    writable: bool
    execute_disable: bool


Fetch = Callable[[int, Level], "int | Outcome"]
"""Reads the guest paging-structure entry at a guest-physical address (or ends the walk with
an EPT / NPT exit)."""


def walk(compiled: CompiledMode, state: PagingState, gla: int, fetch: Fetch, *,
         start: WalkStart | None = None) -> GuestWalk | WalkFault | Outcome:
    """Walk the paging structures of ``state`` for ``gla``, reading entries with ``fetch``.

    Under PAE paging the first level is ``state.pdptes`` (the PDPTE registers); with
    ``pdptes`` None it is read with ``fetch`` like any other level (AMD nested paging).
    ``start`` resumes the walk below a cached paging-structure entry (§5.10.3).

    SDM Vol. 3A §5.3 "32-Bit Paging", §5.4.2 "Linear-Address Translation with PAE Paging",
    §5.5 "4-Level Paging and 5-Level Paging".
    """
    entry_bytes = compiled.mode.entry_bytes
    table = state.cr3 & compiled.root_mask
    user = writable = True
    xd = False
    entries: list[tuple[Level, int, int]] = []
    levels = compiled.levels
    pdptes = state.pdptes
    upper_writable = True
    if start is not None:
        table, user, writable, xd = start.table, start.user, start.writable, start.execute_disable
        upper_writable = writable
        levels = levels[start.level_index:]
    elif compiled.mode.pdpte_registers and pdptes is not None:
        first = levels[0]
        entry = pdptes[(gla >> first.shift) & first.index_mask]
        if not entry & P:
            return WalkFault(first.depth, reserved=False)
        table = entry & first.table_mask
        levels = levels[1:]
    for lv in levels:
        gpa = table + ((gla >> lv.shift) & lv.index_mask) * entry_bytes
        got = fetch(gpa, lv)
        if type(got) is not int:
            return got  # type: ignore[return-value]
        entry = got
        entries.append((lv, gpa, entry))
        if not entry & P:
            return WalkFault(lv.depth, reserved=False)
        page = lv.maps_page == LEAF or (lv.maps_page == PS_PAGE and entry & PS)
        if entry & (lv.rsvd_page if page else lv.rsvd_table):
            return WalkFault(lv.depth, reserved=True)
        if lv.rights:
            user = user and bool(entry & US)
            writable = writable and bool(entry & RW)
            xd = xd or (compiled.execute_disable and bool(entry & XD))
        if page:
            frame = (entry & lv.page_mask) | ((entry & lv.high_mask) << lv.high_shift)
            offset = gla & (lv.page_size - 1)
            return GuestWalk(frame | offset, lv.page_size, user, writable, xd, entry, lv.depth, tuple(entries),
                             upper_writable)
        upper_writable = writable
        table = entry & lv.table_mask
    raise AssertionError("the last level of every mode maps a page")


def access_allowed(state: PagingState, compiled: CompiledMode, w: GuestWalk, access: Access) -> tuple[bool, bool]:
    """Whether the access rights of ``w`` allow ``access``, and whether a protection key is
    what forbids it (the PK flag); see :func:`rights_allow`."""
    return rights_allow(state, access, protection_keys=compiled.mode.protection_keys, user=w.user,
                        writable=w.writable, execute_disable=w.execute_disable, key=w.protection_key,
                        shadow_stack_page=w.shadow_stack_page)


def rights_allow(state: PagingState, access: Access, *, protection_keys: bool, user: bool, writable: bool,
                 execute_disable: bool, key: int, shadow_stack_page: bool = False) -> tuple[bool, bool]:
    """Whether a translation with these rights (user-mode address, writable, execute-disable,
    protection key) allows ``access``, and whether a protection key is what forbids it.

    SDM Vol. 3A §5.6.1 "Determination of Access Rights": a user-mode access needs a user-mode
    address (U/S = 1 in every entry), a write also R/W = 1 in every entry, a fetch XD = 0. A
    supervisor-mode access may read any address, except a user-mode one under CR4.SMAP unless
    it is explicit with RFLAGS.AC = 1; it may write where reads are allowed, honouring R/W only
    if CR0.WP = 1; it may fetch where XD = 0, but not from a user-mode address under CR4.SMEP.
    §5.6.2 "Protection Keys": with 4-level or 5-level paging (``protection_keys``) and
    CR4.PKE = 1, a data access to a user-mode address with key i is forbidden if PKRU.ADi = 1,
    and a write if PKRU.WDi = 1 and the access is user-mode or CR0.WP = 1.
    A shadow-stack access needs a shadow-stack page (``shadow_stack_page``) whose address is
    user-mode for a user-mode access and supervisor-mode otherwise (§5.6.1). UNSURE: protection
    keys govern shadow-stack accesses as they do data accesses (as Bochs has it).
    """
    wp = bool(state.cr0 & CR0_WP)
    if access.kind is AccessKind.FETCH:
        if execute_disable:
            return False, False
        return (user if access.user else not (user and state.cr4 & CR4_SMEP)), False
    if access.shadow_stack:
        ok = shadow_stack_page and user == access.user
    elif access.user:
        ok = user and (writable or not access.is_write)
    else:
        smap_blocks = user and state.cr4 & CR4_SMAP and (access.implicit or not state.rflags & RFLAGS_AC)
        ok = not smap_blocks and (writable or not access.is_write or not wp)
    pk = False
    if protection_keys and state.cr4 & CR4_PKE and user:
        rights = state.pkru >> (_PKRU_BITS_PER_KEY * key)
        ad, wd = rights & 1, rights >> 1 & 1
        pk = bool(ad or (wd and access.is_write and (access.user or wp)))
    return ok and not pk, pk


@checked
def error_code(state: PagingState, access: Access, *, present: bool, reserved: bool = False,
               protection_key: bool = False) -> int:
    """The page-fault error code (SDM Vol. 3A §5.7 "Page-Fault Exceptions").

    I/D is set for an instruction fetch only if CR4.SMEP = 1, or CR4.PAE = 1 and
    IA32_EFER.NXE = 1; PK only for a protection-key violation; SS for a shadow-stack access.
    """
    code = PF_P if present else 0
    if access.is_write:
        code |= PF_W
    if access.user:
        code |= PF_U
    if reserved:
        code |= PF_RSVD
    if access.is_fetch and (state.cr4 & CR4_SMEP or (state.cr4 & CR4_PAE and state.efer & EFER_NXE)):
        code |= PF_I
    if protection_key:
        code |= PF_PK
    if access.shadow_stack:
        code |= PF_SS
    return code


@checked
def accessed_dirty(w: GuestWalk, access: Access) -> list[tuple[int, int]]:
    """The (entry index in ``w.entries``, bits) the processor sets for an allowed access: the
    accessed flag in every entry used, the dirty flag in the entry that maps the page on a
    write (SDM Vol. 3A §5.8 "Accessed and Dirty Flags"); only bits not already set."""
    updates = []
    last = len(w.entries) - 1
    for i, (lv, _, entry) in enumerate(w.entries):
        if not lv.rights:
            continue
        bits = ACCESSED | (DIRTY if i == last and access.is_write else 0)
        if entry & bits != bits:
            updates.append((i, bits))
    return updates


# ------------------------------------------------------------------ memory typing

_PWT, _PCD = GUEST.entry["pwt"], GUEST.entry["pcd"]
_PAT_PTE, _PAT_LARGE = GUEST.entry["pat_pte"], GUEST.entry["pat_large"]


def pat_index(entry: int, *, pat_bit: bool, pte: bool = True) -> int:
    """The PAT entry an entry selects: PAT * 4 + PCD * 2 + PWT (SDM Vol. 3A §12.12.3 "Selecting
    a Memory Type from the PAT", Table 12-11). The PAT bit is bit 7 of a PTE and bit 12 of a
    PDE / PDPTE that maps a page; ``pat_bit`` False for a reference to a paging structure, which
    uses PCD and PWT only (§5.9.2)."""
    pat = entry >> (_PAT_PTE.lo if pte else _PAT_LARGE.lo) & 1 if pat_bit else 0
    return pat << 2 | (entry >> _PCD.lo & 1) << 1 | entry >> _PWT.lo & 1


@functools.cache
def pat_memory_type(pat: int, index: int) -> str:
    """The memory type of entry ``index`` of IA32_PAT value ``pat`` (SDM Vol. 3A §12.12.2
    "IA32_PAT MSR"); a reserved encoding is bad input (WRMSR would have raised #GP)."""
    try:
        return GUEST.pat.entry(pat, index)
    except KeyError:
        raise InputError("guest.pat", hex(pat), f"PAT entry {index} holds a reserved memory type "
                         f"(WRMSR would #GP; {GUEST.pat.citation})") from None



# ------------------------------------------------------------------ addresses and PDPTEs


_U64 = mask(64)


def linear_address_fault(state: PagingState, gla: int) -> bool:
    """True if ``gla`` is not canonical in IA-32e mode (#GP; SDM Vol. 1 §3.3.7.1 "Canonical
    Addressing"): 48-bit, or 57-bit with CR4.LA57. Outside IA-32e mode a linear address has 32
    bits; a wider one is bad input, as is a negative one or one wider than 64 bits."""
    if not 0 <= gla <= _U64:
        raise InputError("access.address", hex(gla), "a linear address is an unsigned 64-bit value")
    if state.efer & EFER_LMA or state.ia32e:
        width = GUEST.modes["5level" if state.cr4 & CR4_LA57 else "4level"].linear_bits
        return not is_canonical(gla, width)
    if gla >> GUEST.modes["32bit"].linear_bits:
        raise InputError("access.address", hex(gla), "outside IA-32e mode a linear address has 32 bits")
    return False


@checked
def pdpte_problems(pdptes: tuple[int, ...], features: PagingFeatures) -> list[str]:
    """Reserved bits set in present PDPTEs (SDM Vol. 3A §5.4.1 "PDPTE Registers": loading such a
    PDPTE makes MOV to CR3 #GP and VM entry fail); [] if none."""
    lv = compile_mode("pae", features.maxphyaddr, True, False, features.gb_pages).levels[0]
    return [f"PDPTE{i} = {v:#x} sets reserved bits {v & lv.rsvd_table:#x}"
            for i, v in enumerate(pdptes) if v & P and v & lv.rsvd_table]


@checked
def load_pdptes(state: PagingState, memory: PhysicalMemory) -> tuple[int, ...]:
    """The four PDPTEs that MOV to CR3 loads from the PDPT at CR3 bits 31:5 (§5.4.1)."""
    mode = GUEST.modes["pae"]
    base = state.cr3 & mode.root.mask
    return tuple(memory.read_int(HostPhysAddr(base + i * mode.entry_bytes), mode.entry_bytes)
                 for i in range(_PDPTE_COUNT))


# ------------------------------------------------------------------ translation without EPT / NPT


def crosses_page(gla: int, access: Access) -> bool:
    """Whether the bytes of ``access`` at ``gla`` lie in more than one 4-KByte page."""
    return (gla & _OFFSET_MASK) + access.size > PAGE_SIZE


OnePage = Callable[[int, Access, PhysicalMemory], Outcome]
"""Translates an access that lies in one page, given the memory so far."""


def split_access(state: PagingState, gla: int, access: Access, memory: PhysicalMemory, one: OnePage) -> Outcome:
    """An access whose bytes cross a page boundary is two accesses, each translated on its own:
    the bytes in the first page, then those in the next. A fault on the first ends the access;
    a fault on the second (after the first translated) is reported with the second part's
    linear address. The result carries the references of both parts in order and the memory
    after both; the second part's translation is ``second`` of the first's. Linear addresses
    wrap at 2^32 outside IA-32e mode. A non-canonical address in either part is #GP before any
    translation (SDM Vol. 1 §3.3.7.1 "Canonical Addressing": the check covers every byte).

    UNSURE: the SDM states no order for the two translations nor which address CR2 receives
    when the second page faults; vtx translates in address order and reports the first byte
    of the second page (what Bochs and Linux KVM's emulator do)."""
    if not crosses_page(gla, access):
        return one(gla, access, memory)
    first_size = PAGE_SIZE - (gla & _OFFSET_MASK)
    width = _U64 if state.efer & EFER_LMA or state.ia32e else mask(GUEST.modes["32bit"].linear_bits)
    next_gla = (gla + first_size) & width
    if linear_address_fault(state, gla) or linear_address_fault(state, next_gla):
        return GeneralProtection((), memory)
    first = one(gla, attrs.evolve(access, size=first_size), memory)
    if not isinstance(first, Translated):
        return first
    second = one(next_gla, attrs.evolve(access, size=access.size - first_size), first.memory)
    references = first.references + second.references
    if not isinstance(second, Translated):
        return attrs.evolve(second, references=references)
    return attrs.evolve(first, references=references, memory=second.memory, second=second)


@checked
def translate(state: PagingState, features: PagingFeatures, memory: PhysicalMemory, gla: int,
              access: Access, *, start: WalkStart | None = None, walked: list[GuestWalk] | None = None) -> Outcome:
    """Translate ``gla`` for ``access`` with guest-physical = host-physical (no EPT or NPT).

    The result is :class:`Translated` (``gpa`` = ``hpa``), :class:`PageFault` or
    :class:`GeneralProtection` (non-canonical address), with the references made and the memory
    after the accessed / dirty updates. ``state.pdptes`` None under PAE paging means they are
    loaded from memory now, as MOV to CR3 would have. ``start`` resumes below a cached
    paging-structure entry; a complete walk is appended to ``walked`` (for the TLB model); an
    access that crosses a page is split (:func:`split_access`) and uses neither.
    """
    if crosses_page(gla, access):
        return split_access(state, gla, access, memory,
                            lambda a, part, mem: translate(state, features, mem, a, part))
    if linear_address_fault(state, gla):
        return GeneralProtection((), memory)
    compiled = compile_for(state, features)
    if compiled is None:
        return Translated(gla, gla, gla, 1 << PAGE_OFFSET_BITS, (), memory)
    if compiled.mode.pdpte_registers and state.pdptes is None:
        state = attrs.evolve(state, pdptes=load_pdptes(state, memory))
        bad = pdpte_problems(state.pdptes or (), features)
        if bad:
            raise InputError("cr3", hex(state.cr3), "the PDPTEs it points to set reserved bits, so MOV to CR3 "
                             f"would have raised #GP (SDM Vol. 3A §5.4.1 \"PDPTE Registers\"): {'; '.join(bad)}")
    refs: list[Reference] = []
    entry_bytes = compiled.mode.entry_bytes

    read_entry = memory.read_entry

    def fetch(gpa: int, lv: Level) -> int:
        value = read_entry(gpa, entry_bytes)
        refs.append(_new_tuple(Reference, (Space.GUEST, lv.depth, lv.name, gpa, gpa, value)))  # Reference(...)
        return value

    w = walk(compiled, state, gla, fetch, start=start)
    if isinstance(w, WalkFault):
        return PageFault(error_code(state, access, present=w.reserved, reserved=w.reserved), gla, tuple(refs), memory)
    assert isinstance(w, GuestWalk)
    if walked is not None:
        walked.append(w)
    ok, pk = access_allowed(state, compiled, w, access)
    if not ok:
        return PageFault(error_code(state, access, present=True, protection_key=pk), gla, tuple(refs), memory)
    updates = accessed_dirty(w, access)
    memory = memory.set_bits((HostPhysAddr(w.entries[i][1]), entry_bytes, bits) for i, bits in updates)
    return Translated(gla, w.gpa, w.gpa, w.page_size, tuple(refs), memory, rights=w.rights(state, access))


def as_gpa(address: int) -> GuestPhysAddr:
    """A guest-physical address (for callers that hold a plain int)."""
    return GuestPhysAddr(address)
