"""EPT: the EPT pointer, guest-physical-address translation, EPT violations and
misconfigurations (SDM Vol. 3C §30.3 "The Extended Page Table Mechanism (EPT)").

:func:`walk_ept` reads the EPT paging structures from the root and stops at the first entry that
is not present (an EPT violation) or misconfigured (an EPT misconfiguration, §30.3.3.1); a
complete translation gives the logical AND of the permission bits of every entry used, and
only then are permissions judged (§30.3.3.3 "Prioritization of EPT Misconfigurations and EPT
Violations"). :func:`qualification` assembles the exit qualification of an EPT violation
(SDM Vol. 3C §29.2.1, Table 29-7).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import attrs

from vtx.bits import mask
from vtx.errors import InputError
from vtx.paging.formats import EPT, EPT_VIOLATION_QUALIFICATION, GUEST, Rule
from vtx.paging.guest import LEAF, NO_PAGE, PS_PAGE, AccessKind
from vtx.paging.memory import HostPhysAddr, PhysicalMemory
from vtx.paging.outcomes import EptMisconfig, EptViolation, Outcome, Reference, Space, Translated
from vtx.spec import get_control
from vtx.typecheck import checked
from vtx.vmx.capabilities import Capabilities


def _bit(name: str) -> int:
    return EPT.entry[name].mask


R, W, X, UX = _bit("read"), _bit("write"), _bit("execute"), _bit("user_execute")
PS, ACCESSED, DIRTY, IPAT, SSS = (_bit(n) for n in ("page_size", "accessed", "dirty", "ignore_pat",
                                                      "supervisor_shadow_stack"))
VGP, PW = _bit("verify_guest_paging"), _bit("paging_write_access")
MEMORY_TYPE = EPT.entry["memory_type"].bits
EPTP_FIELDS = EPT.eptp
ENTRY_BYTES = EPT.entry_bytes
_RESERVED_TYPES = frozenset(set(range(1 << MEMORY_TYPE.width)) - set(EPT.memory_types.keys()))
_RESERVED_TYPE_VALUES = frozenset(t << MEMORY_TYPE.lo for t in _RESERVED_TYPES)
_MEMORY_TYPE_MASK = MEMORY_TYPE.mask
_MBEC = get_control("proc2", "mode_based_execute_control_for_ept").mask
_PAGING_WRITE = get_control("proc3", "ept_paging_write_control").mask
_GUEST_PAGING_VERIFICATION = get_control("proc3", "guest_paging_verification").mask
_Q = {q.name: q.mask for q in EPT_VIOLATION_QUALIFICATION}
_new_tuple = tuple.__new__


class EptLevel(NamedTuple):
    """One EPT level compiled for a processor."""

    name: str
    depth: int
    shift: int
    index_mask: int
    table_mask: int
    page_mask: int
    maps_page: int
    rsvd_table: int
    rsvd_page: int
    address_rsvd: int
    page_size: int


class FastLevel(NamedTuple):
    """An :class:`EptLevel` as the fast path unpacks it: ``leaf`` (every entry maps a page) and
    ``ps`` (the PS bit if an entry with PS = 1 maps a page here, else 0)."""

    shift: int
    index_mask: int
    depth: int
    name: str
    leaf: bool
    ps: int
    rsvd_table: int
    rsvd_page: int
    table_mask: int
    page_mask: int
    offset_mask: int

    @classmethod
    def of(cls, lv: EptLevel) -> FastLevel:
        return cls(lv.shift, lv.index_mask, lv.depth, lv.name, lv.maps_page == LEAF,
                   PS if lv.maps_page == PS_PAGE else 0, lv.rsvd_table, lv.rsvd_page, lv.table_mask, lv.page_mask,
                   lv.page_size - 1)


@functools.cache
def _levels(maxphyaddr: int, pde_2mb: bool, pdpte_1gb: bool) -> tuple[EptLevel, ...]:
    allowed = {"leaf": LEAF, "never": NO_PAGE, "pde_2mb": PS_PAGE if pde_2mb else NO_PAGE,
               "pdpte_1gb": PS_PAGE if pdpte_1gb else NO_PAGE}
    out = []
    for fmt in EPT.levels:
        addr = fmt.table or fmt.page
        assert addr is not None
        above = addr.mask & ~mask(maxphyaddr)
        table = fmt.table.mask & mask(maxphyaddr) if fmt.table else 0
        page = fmt.page.mask & mask(maxphyaddr) if fmt.page else 0
        out.append(EptLevel(fmt.name, fmt.depth, fmt.index.lo, mask(fmt.index.width), table, page,
                            allowed[fmt.large], fmt.reserved | above, fmt.reserved_page | above, above,
                            fmt.page_size))
    return tuple(out)


@attrs.frozen
class Ept:
    """EPT as one VMCS configures it: the EPTP compiled with the processor's capabilities and
    the "mode-based execute control for EPT", "EPT paging-write control" and "guest-paging
    verification" VM-execution controls."""

    eptp: int
    root: int
    levels: tuple[EptLevel, ...]
    accessed_dirty: bool
    supervisor_shadow_stack: bool
    mode_based_execute: bool
    execute_only: bool
    advanced_exit_info: bool
    maxphyaddr: int
    paging_write: bool = False
    guest_paging_verification: bool = False
    address_bits: int = attrs.field(init=False)
    """How many guest-physical-address bits the walk translates (48 or 57)."""
    present_mask: int = attrs.field(init=False)
    """An entry is present if any of bits 2:0 is 1, or bit 10 with mode-based execute control."""
    fast_levels: tuple[FastLevel, ...] = attrs.field(init=False, eq=False, repr=False)
    """The levels as :class:`FastLevel` (the fast path of :mod:`vtx.paging.walk2d`)."""

    def __attrs_post_init__(self) -> None:
        top = self.levels[0]
        object.__setattr__(self, "address_bits", top.shift + top.index_mask.bit_length())
        object.__setattr__(self, "present_mask", R | W | X | (UX if self.mode_based_execute else 0))
        object.__setattr__(self, "fast_levels", tuple(FastLevel.of(lv) for lv in self.levels))

    @property
    def ep4ta(self) -> int:
        """The EPT PML4 (or PML5) table address, EPTP bits 51:12: the tag of guest-physical and
        combined mappings (SDM Vol. 3C §30.4.1 "Information That May Be Cached")."""
        return EPTP_FIELDS["root"].bits.mask & self.eptp


@checked
def eptp_problems(eptp: int, caps: Capabilities) -> list[tuple[Rule, str]]:
    """The EPTP checks of VM entry that ``eptp`` fails (SDM Vol. 3C §28.2.1.1 "VM-Execution
    Control Fields"), as (rule, detail); [] if it is valid."""
    def cap(name: str) -> bool:
        return bool(caps.msr_field("IA32_VMX_EPT_VPID_CAP", name))

    maxphyaddr = caps.require_fact("MAXPHYADDR")
    problems = []
    mt = EPTP_FIELDS["memory_type"].bits.get(eptp)
    t = EPT.memory_types.get(mt)
    if t is None or t.eptp_capability is None or not cap(t.eptp_capability):
        problems.append((EPT.eptp_checks["eptp.memory_type"], f"memory type {mt}"))
    encoded = EPTP_FIELDS["walk_length"].bits.get(eptp)
    walk = next((w for w in EPT.walk_lengths if w.encoded == encoded), None)
    if walk is None or not cap(walk.capability):
        problems.append((EPT.eptp_checks["eptp.walk_length"], f"bits 5:3 = {encoded}"))
    if EPTP_FIELDS["accessed_dirty"].mask & eptp and not cap("accessed_dirty"):
        problems.append((EPT.eptp_checks["eptp.accessed_dirty"], "bit 6 set"))
    if EPTP_FIELDS["supervisor_shadow_stack"].mask & eptp and not cap("supervisor_shadow_stack"):
        problems.append((EPT.eptp_checks["eptp.supervisor_shadow_stack"], "bit 7 set"))
    reserved = (EPTP_FIELDS["reserved"].mask | EPTP_FIELDS["reserved_high"].mask
                | (EPTP_FIELDS["root"].mask & ~mask(maxphyaddr))) & eptp
    if reserved:
        problems.append((EPT.eptp_checks["eptp.reserved_bits"], f"bits {reserved:#x}"))
    return problems


@checked
def ept_from_eptp(eptp: int, caps: Capabilities, *, secondary_controls: int = 0, tertiary_controls: int = 0) -> Ept:
    """The :class:`Ept` of a valid EPTP; :class:`InputError` naming the failed check otherwise
    (VM entry would have failed). Computed once per capabilities value, EPTP and controls."""
    return caps.memoized(("ept_from_eptp", eptp, secondary_controls, tertiary_controls),
                         lambda: _ept_from_eptp(eptp, caps, secondary_controls, tertiary_controls))


def _ept_from_eptp(eptp: int, caps: Capabilities, secondary_controls: int, tertiary_controls: int) -> Ept:
    problems = eptp_problems(eptp, caps)
    if problems:
        rule, detail = problems[0]
        raise InputError("eptp", hex(eptp), f"{rule.id}: {rule.statement} ({detail}; {rule.citation})")
    length = next(w.length for w in EPT.walk_lengths if w.encoded == EPTP_FIELDS["walk_length"].bits.get(eptp))
    maxphyaddr = caps.require_fact("MAXPHYADDR")

    def cap(name: str) -> bool:
        return bool(caps.msr_field("IA32_VMX_EPT_VPID_CAP", name))

    levels = _levels(maxphyaddr, cap("pde_2mb"), cap("pdpte_1gb"))
    return Ept(eptp, eptp & EPTP_FIELDS["root"].mask, levels[len(levels) - length:],
               accessed_dirty=bool(eptp & EPTP_FIELDS["accessed_dirty"].mask),
               supervisor_shadow_stack=bool(eptp & EPTP_FIELDS["supervisor_shadow_stack"].mask),
               mode_based_execute=bool(secondary_controls & _MBEC), execute_only=cap("execute_only"),
               advanced_exit_info=cap("advanced_exit_info"), maxphyaddr=maxphyaddr,
               paging_write=bool(tertiary_controls & _PAGING_WRITE),
               guest_paging_verification=bool(tertiary_controls & _GUEST_PAGING_VERIFICATION))


# ------------------------------------------------------------------ the walk


class EptWalk(NamedTuple):
    """A complete EPT translation: the host-physical address, the size of the EPT page, the AND
    of the permission bits of every entry used, the entry that maps the page, and the
    (host-physical address, value) of every entry read, root first."""

    hpa: int
    page_size: int
    permissions: int
    leaf: int
    entries: tuple[tuple[int, int], ...]


class EptFault(NamedTuple):
    """The EPT walk stopped: ``misconfiguration`` names the rule (None: not present, an EPT
    violation); ``permissions`` is the AND of the permission bits read so far."""

    misconfiguration: str | None
    permissions: int
    level: int


def walk_ept(ept: Ept, memory: PhysicalMemory, gpa: int, refs: list[Reference]) -> EptWalk | EptFault:
    """Translate ``gpa`` through the EPT paging structures, appending each entry read to
    ``refs`` (SDM Vol. 3C §30.3.2 "EPT Translation Mechanism", §30.3.3.1 "EPT
    Misconfigurations"). Permissions are not judged here.

    UNSURE: a guest-physical address wider than the walk translates (bits 51:48 with a
    4-level walk) gives an EPT violation with no entry read.
    """
    if gpa >> ept.address_bits:
        return EptFault(None, 0, ept.levels[0].depth)
    present = ept.present_mask
    execute_only = ept.execute_only
    read_entry = memory.read_entry
    table = ept.root
    perms = R | W | X | UX
    entries = []
    for lv in ept.levels:
        hpa = table + ((gpa >> lv.shift) & lv.index_mask) * ENTRY_BYTES
        entry = read_entry(hpa, ENTRY_BYTES)
        refs.append(_new_tuple(Reference, (Space.EPT, lv.depth, lv.name, hpa, hpa, entry)))  # Reference(...), faster
        entries.append((hpa, entry))
        perms &= entry
        if not entry & present:
            return EptFault(None, perms & present, lv.depth)
        page = lv.maps_page == LEAF or (lv.maps_page == PS_PAGE and entry & PS)
        reserved = entry & (lv.rsvd_page if page else lv.rsvd_table)
        unreadable = not entry & R and (entry & W or not execute_only)
        if reserved or unreadable or (page and entry & _MEMORY_TYPE_MASK in _RESERVED_TYPE_VALUES):
            return EptFault(misconfiguration(ept, lv, entry, bool(page)), perms, lv.depth)
        if page:
            offset = gpa & (lv.page_size - 1)
            return EptWalk((entry & lv.page_mask) | offset, lv.page_size, perms & present, entry, tuple(entries))
        table = entry & lv.table_mask
    raise AssertionError("the last EPT level maps a page")


def misconfiguration(ept: Ept, lv: EptLevel, entry: int, page: bool) -> str | None:
    """The id of the first misconfiguration rule a present entry breaks (None: none), in the
    order of the rows of spec/paging/ept.toml."""
    rights = entry & (R | W)
    if rights == W:
        return "ept.write_without_read"
    if not rights and not ept.execute_only:
        return "ept.execute_only_unsupported"
    reserved = entry & (lv.rsvd_page if page else lv.rsvd_table)
    if reserved:
        if reserved & lv.address_rsvd:
            return "ept.address_beyond_maxphyaddr"
        if not page and entry & PS:
            return "ept.page_size_unsupported"
        return "ept.reserved_bit"
    if page and entry & _MEMORY_TYPE_MASK in _RESERVED_TYPE_VALUES:
        return "ept.memory_type_reserved"
    return None


def allows(ept: Ept, permissions: int, kind: AccessKind, user_address: bool) -> bool:
    """Whether EPT permissions allow an access (SDM Vol. 3C §30.3.3.2 "EPT Violations"): a read
    needs bit 0, a write bit 1, a fetch bit 2 in every entry used; with mode-based execute
    control a fetch from a user-mode linear address needs bit 10 instead."""
    if kind is AccessKind.READ:
        return bool(permissions & R)
    if kind is AccessKind.WRITE:
        return bool(permissions & W)
    if ept.mode_based_execute and user_address:
        return bool(permissions & UX)
    return bool(permissions & X)


def allows_paging_write(ept: Ept, w: EptWalk) -> bool:
    """Whether EPT lets the processor write a guest paging-structure entry in the page ``w``
    translates (to set accessed / dirty flags, or an access treated as a write with EPT A/D
    flags): write access, or with the "EPT paging-write control" bit 58 (paging-write access)
    in the entry that maps the page (SDM Vol. 3C §30.3.3.2 "EPT Violations").
    UNSURE: written from the control's and the bits' descriptions (ia32-doc EPT.yml; SDM Vol.
    3C §26.6.2 "Processor-Based VM-Execution Controls"), not from the full text of 086US."""
    return bool(w.permissions & W) or (ept.paging_write and bool(w.leaf & PW))


def fails_guest_paging_verification(ept: Ept, final: EptWalk, table_pages: list[EptWalk]) -> bool:
    """With the "guest-paging verification" control: an access to a page whose EPT entry sets
    bit 57 (verify guest paging) is an EPT violation (qualification bit 15) unless every guest
    paging-structure entry used to translate its linear address lies in a page whose EPT entry
    sets bit 58 (paging-write access) (SDM Vol. 3C §30.3.3.2). UNSURE as
    :func:`allows_paging_write`."""
    return (ept.guest_paging_verification and bool(final.leaf & VGP)
            and not all(t.leaf & PW for t in table_pages))


def allows_supervisor_shadow_stack(w: EptWalk) -> bool:
    """Whether EPT allows a supervisor shadow-stack access when EPTP bit 7 ("supervisor
    shadow-stack control") is 1 (SDM Vol. 3C §30.3.3.2 "EPT Violations"): read access in every
    EPT entry used, write access in every one but the entry that maps the page, and bit 60
    (supervisor shadow stack) in that entry; its write bit does not matter.
    UNSURE: read from Bochs' reading of the SDM, which we could not check against 086US."""
    upper = R | W
    for _, entry in w.entries[:-1]:
        upper &= entry
    return upper == R | W and bool(w.leaf & R) and bool(w.leaf & SSS)


def accessed_dirty(ept: Ept, w: EptWalk, write: bool) -> list[tuple[HostPhysAddr, int, int]]:
    """With EPTP bit 6 = 1: the accessed flag in every EPT entry used, the dirty flag in the
    entry that maps the page on a write (SDM Vol. 3C §30.3.4 "Accessed and Dirty Flags for
    EPT"); as (address, size, bits) for :meth:`PhysicalMemory.set_bits`."""
    if not ept.accessed_dirty:
        return []
    last = len(w.entries) - 1
    return [(HostPhysAddr(hpa), ENTRY_BYTES, ACCESSED | (DIRTY if i == last and write else 0))
            for i, (hpa, _) in enumerate(w.entries)]


@attrs.frozen
class LinearInfo:
    """What an EPT violation reports about the linear address behind a guest-physical access
    (SDM Vol. 3C §29.2.1, Table 29-7 bits 7-11)."""

    gla: int
    final: bool
    user: bool = True
    writable: bool = True
    execute_disable: bool = False


def qualification(ept: Ept, kind: AccessKind, permissions: int, linear: LinearInfo | None, *,
                  paging_structure_write: bool = False, nmi_unblocking: bool = False, leaf: int | None = None,
                  shadow_stack: bool = False, asynchronous: bool = False,
                  guest_paging_verification: bool = False) -> int:
    """The exit qualification of an EPT violation (Table 29-7 "Exit Qualification for EPT
    Violations"). A guest paging-structure access treated as a write (EPT A/D enabled) sets
    both bits 0 and 1; bits 9-11 are reported only with advanced VM-exit information for a
    final translation; bit 6 is 0 without mode-based execute control (undefined there); bit 13
    marks a shadow-stack access; bit 14 copies bit 60 of the entry that maps the page when EPTP
    bit 7 = 1 and the walk reached it; bit 15 a violation caused by guest-paging verification;
    bit 16 marks an access asynchronous to instruction execution."""
    q = 0
    if paging_structure_write:
        q |= _Q["read"] | _Q["write"]
    else:
        q |= _Q[{AccessKind.READ: "read", AccessKind.WRITE: "write", AccessKind.FETCH: "fetch"}[kind]]
    if permissions & R:
        q |= _Q["readable"]
    if permissions & W:
        q |= _Q["writable"]
    if permissions & X:
        q |= _Q["executable"]
    if ept.mode_based_execute and permissions & UX:
        q |= _Q["user_executable"]
    if linear is not None:
        q |= _Q["gla_valid"]
        if linear.final:
            q |= _Q["final_translation"]
            if ept.advanced_exit_info:
                q |= ((_Q["user_mode_address"] if linear.user else 0)
                      | (_Q["read_write_page"] if linear.writable else 0)
                      | (_Q["execute_disable_page"] if linear.execute_disable else 0))
    if nmi_unblocking:
        q |= _Q["nmi_unblocking"]
    if shadow_stack:
        q |= _Q["shadow_stack"]
    if ept.supervisor_shadow_stack and leaf is not None and leaf & SSS:
        q |= _Q["supervisor_shadow_stack"]
    if guest_paging_verification:
        q |= _Q["guest_paging_verification"]
    if asynchronous:
        q |= _Q["asynchronous"]
    return q


def memory_type_name(leaf: int) -> str:
    """The name of the EPT memory type of the entry that maps a page (§30.3.7)."""
    return EPT.memory_types[MEMORY_TYPE.get(leaf)].name


# ------------------------------------------------------------------ memory typing

_CR0_CD = GUEST.register("cr0", "cd").mask
_UC, WB = "UC", "WB"
"""UC; and WB, the PAT type that leaves the other type unchanged in Table 12-7."""
assert {_UC, WB} <= {t.name for t in EPT.memory_types} & set(GUEST.pat.types.values())


def effective_memory_type(cr0: int, ept_leaf: int, pat_type: str) -> str:
    """The memory type of an access to a translated guest-physical address (SDM Vol. 3C
    §30.3.7.2 "Memory Type Used for Translated Guest-Physical Addresses"): UC if CR0.CD = 1;
    else the EPT memory type of the entry that maps the page if its IPAT bit is 1; else the EPT
    memory type combined with the PAT memory type as Table 12-7 combines an MTRR type with a
    PAT type (the MTRRs are not consulted)."""
    return _effective(bool(cr0 & _CR0_CD), ept_leaf & (_MEMORY_TYPE_MASK | IPAT), pat_type)


@functools.cache
def _effective(cache_disabled: bool, type_and_ipat: int, pat_type: str) -> str:
    if cache_disabled:
        return _UC
    ept_type = memory_type_name(type_and_ipat)
    if type_and_ipat & IPAT:
        return ept_type
    return GUEST.pat.effective[(ept_type, pat_type)]


@checked
def structure_memory_type(ept: Ept, cr0: int) -> str:
    """The memory type of accesses to the EPT paging structures (SDM Vol. 3C §30.3.7.1 "Memory
    Type Used for Accessing EPT Paging Structures"): EPTP bits 2:0, or UC if CR0.CD = 1; the
    MTRRs have no effect."""
    return _UC if cr0 & _CR0_CD else EPT.memory_types[EPTP_FIELDS["memory_type"].bits.get(ept.eptp)].name


# ------------------------------------------------------------------ guest-physical accesses


_U64 = mask(64)


@checked
def translate_gpa(ept: Ept, memory: PhysicalMemory, gpa: int, kind: AccessKind, *,
                  linear: LinearInfo | None = None, paging_structure: bool = False,
                  nmi_unblocking: bool = False, refs: list[Reference] | None = None,
                  asynchronous: bool = False, cr0: int = 0) -> Outcome:
    """One access to guest-physical address ``gpa`` through EPT.

    ``paging_structure`` marks an access to a guest paging-structure entry, which EPT treats
    as a write when accessed and dirty flags are enabled (§30.3.3.2, §30.3.4); ``linear`` says
    which linear address (if any) the access is for; ``asynchronous`` an access asynchronous to
    instruction execution (qualification bit 16); ``cr0`` the guest CR0 (CD selects UC).
    Returns :class:`Translated`, :class:`EptViolation` or :class:`EptMisconfig`; on success the
    EPT accessed / dirty flags are set in the returned memory. The effective memory type uses
    PAT type WB (no guest paging entry selects one). UNSURE: that an access by guest-physical
    address combines the EPT memory type with WB.
    """
    if not 0 <= gpa <= _U64:
        raise InputError("gpa", hex(gpa), "a guest-physical address is an unsigned 64-bit value")
    refs = [] if refs is None else refs
    w = walk_ept(ept, memory, gpa, refs)
    as_write = paging_structure and ept.accessed_dirty and linear is not None
    effective = AccessKind.WRITE if as_write else kind
    if isinstance(w, EptFault):
        if w.misconfiguration is not None:
            return EptMisconfig(gpa, tuple(refs), memory)
        q = qualification(ept, kind, w.permissions, linear, paging_structure_write=as_write,
                          nmi_unblocking=nmi_unblocking, asynchronous=asynchronous)
        return EptViolation(q, gpa, linear.gla if linear else None, tuple(refs), memory)
    user_address = linear.user if linear is not None else True
    if not allows(ept, w.permissions, effective, user_address):
        q = qualification(ept, kind, w.permissions, linear, paging_structure_write=as_write,
                          nmi_unblocking=nmi_unblocking, leaf=w.leaf, asynchronous=asynchronous)
        return EptViolation(q, gpa, linear.gla if linear else None, tuple(refs), memory)
    memory = memory.set_bits(accessed_dirty(ept, w, effective is AccessKind.WRITE))
    return Translated(linear.gla if linear else None, gpa, w.hpa, w.page_size, tuple(refs), memory,
                      effective_memory_type(cr0, w.leaf, WB), bool(w.leaf & IPAT),
                      ept_memory_type=memory_type_name(w.leaf), pat_memory_type=WB)
