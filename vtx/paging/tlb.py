"""TLBs and paging-structure caches as a value, their invalidation, and the set of results the
architecture permits when software has not invalidated.

What may be cached and how it is tagged (SDM Vol. 3A §5.10 "Caching Translation Information";
Vol. 3C §30.4 "Caching Translation Information"):

* *linear mappings* (EPT not in use): translations and paging-structure-cache entries tagged by
  VPID and PCID; a translation with G = 1 (created with CR4.PGE = 1) is *global* and may be used
  with any PCID;
* *guest-physical mappings* (EPT in use): translations of guest-physical pages tagged by the
  EP4TA, EPTP bits 51:12 (not the whole EPTP: changing its A/D bit or memory type keeps them);
* *combined mappings* (EPT in use): translations of linear pages through both guest paging and
  EPT, tagged by VPID, PCID and EP4TA;
* AMD: entries tagged by ASID, which vtx carries in the ``vpid`` slot of :class:`Tags`.

A processor may use any cached entry created since the last invalidation that covers its tag,
and current memory for the rest; :func:`permitted` computes exactly that set of results, and
:func:`access` is one behaviour inside it (a TLB hit if one allows the access, otherwise a walk
that starts at the deepest matching paging-structure-cache entry). No entry is created from a
not-present entry or one that sets a reserved bit. vtx models paging-structure caches for
linear mappings; with EPT, TLB misses may use cached guest-physical mappings for the
guest-physical addresses the 2D walk translates (:func:`usable_guest_physical`); caching less
than the SDM allows is always permitted.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import NamedTuple

import attrs

from vtx.paging import ept as eptmod
from vtx.paging import guest, walk2d
from vtx.paging.ept import Ept, EptWalk, walk_ept
from vtx.paging.formats import GUEST
from vtx.paging.guest import (
    CR0_PG,
    CR4_PAE,
    CR4_PCIDE,
    CR4_PGE,
    CR4_SMEP,
    Access,
    GuestWalk,
    PagingFeatures,
    PagingState,
    WalkStart,
)
from vtx.paging.memory import PhysicalMemory
from vtx.paging.outcomes import (
    EptMisconfig,
    EptViolation,
    GeneralProtection,
    Npf,
    Outcome,
    PageFault,
    Rights,
    Space,
    Translated,
)
from vtx.typecheck import checked


@attrs.frozen
class Tags:
    """The current tags: VPID (0000H outside VMX non-root operation or with "enable VPID" = 0;
    the ASID on AMD), PCID (000H with CR4.PCIDE = 0) and the EP4TA (None: EPT not in use)."""

    vpid: int = 0
    pcid: int = 0
    ep4ta: int | None = None


class CachedTranslation(NamedTuple):
    """A TLB entry: a linear page (``base``, ``size``) and the physical frame it translates to,
    with the rights of the translation. ``ep4ta`` None: a linear mapping; else combined."""

    vpid: int
    pcid: int
    ep4ta: int | None
    base: int
    size: int
    gpa: int
    hpa: int
    rights: Rights
    memory_type: str | None = None
    """The effective memory type of the page (combined mappings; SDM Vol. 3C §30.3.7.2)."""
    ept_permissions: int | None = None
    """Combined mappings: the AND of the EPT permission bits of the guest-physical page, and
    whether its EPT dirty flag was set (SDM Vol. 3C §30.4.1 "Information That May Be Cached")."""
    ept_dirty: bool = True

    def covers(self, gla: int) -> bool:
        return self.base <= gla < self.base + self.size


class StructureCacheEntry(NamedTuple):
    """A paging-structure-cache entry: the upper bits of a linear address (``prefix``, bits above
    ``shift``) mapped to the next paging structure and the rights accumulated so far."""

    vpid: int
    pcid: int
    mode: str
    shift: int
    prefix: int
    start: WalkStart

    def covers(self, gla: int) -> bool:
        return gla >> self.shift == self.prefix


class GuestPhysicalTranslation(NamedTuple):
    """A guest-physical mapping: an EPT translation of a guest-physical page, tagged by EP4TA,
    with the AND of the permission bits of the EPT entries used and the entry that maps the page
    (its memory type, IPAT and supervisor-shadow-stack bits)."""

    ep4ta: int
    base: int
    size: int
    hpa: int
    permissions: int = 0
    leaf: int = 0

    def covers(self, gpa: int) -> bool:
        return self.base <= gpa < self.base + self.size

    def as_walk(self, gpa: int) -> EptWalk:
        """The EPT translation of ``gpa`` this entry gives (no entries read)."""
        return EptWalk(self.hpa + gpa - self.base, self.size, self.permissions, self.leaf, ())


PAGE_SIZES = tuple(sorted({lv.page_size for mode in GUEST.modes for lv in mode.levels if lv.page is not None}))
"""Every size of page a translation may map (4 KBytes, 2 MBytes, 4 MBytes, 1 GByte)."""


@attrs.frozen
class Tlb:
    """Everything cached, as frozen sets; every operation returns a new value."""

    translations: frozenset[CachedTranslation] = frozenset()
    structures: frozenset[StructureCacheEntry] = frozenset()
    guest_physical: frozenset[GuestPhysicalTranslation] = frozenset()
    _index: dict[tuple[int, int | None, int, int], tuple[CachedTranslation, ...]] | None = attrs.field(
        default=None, init=False, eq=False, repr=False)

    @property
    def index(self) -> dict[tuple[int, int | None, int, int], tuple[CachedTranslation, ...]]:
        """The translations by (VPID, EP4TA, page size, page base), each group in sorted order:
        the data structure of :func:`hit` (built once per value)."""
        if self._index is None:
            groups: dict[tuple[int, int | None, int, int], list[CachedTranslation]] = {}
            for t in sorted(self.translations):
                groups.setdefault((t.vpid, t.ep4ta, t.size, t.base), []).append(t)
            object.__setattr__(self, "_index", {k: tuple(v) for k, v in groups.items()})
        assert self._index is not None
        return self._index

    def keep(self, *, translation: object = None, structure: object = None, guest_physical: object = None) -> Tlb:
        """This TLB without the entries the given predicates select."""
        return Tlb(
            frozenset(t for t in self.translations if not (translation and translation(t))),  # type: ignore[operator]
            frozenset(s for s in self.structures if not (structure and structure(s))),  # type: ignore[operator]
            frozenset(g for g in self.guest_physical if not (guest_physical and guest_physical(g))),  # type: ignore[operator]
        )


# ------------------------------------------------------------------ using cached entries


def _usable(t: CachedTranslation, tags: Tags, gla: int) -> bool:
    """SDM Vol. 3C §30.4.2 "Creating and Using Cached Translation Information": without EPT,
    linear mappings of the current VPID and PCID (or global ones of any PCID); with EPT,
    combined mappings of the current VPID and EP4TA and PCID (or global of any PCID)."""
    return (t.vpid == tags.vpid and t.ep4ta == tags.ep4ta and (t.pcid == tags.pcid or t.rights.is_global)
            and t.covers(gla))


def rights_allow(state: PagingState, mode_has_keys: bool, rights: Rights, access: Access) -> bool:
    """Whether cached rights allow an access (the rules of §5.6 on cached values; PKRU and the
    control registers are current). A write needs a cached dirty flag: otherwise the processor
    must set D in memory, which takes a walk."""
    ok, _ = guest.rights_allow(state, access, protection_keys=mode_has_keys, user=rights.user,
                               writable=rights.writable, execute_disable=rights.execute_disable,
                               key=rights.protection_key)
    return ok and (rights.dirty or not access.is_write)


def entry_allows(state: PagingState, mode_has_keys: bool, t: CachedTranslation, access: Access,
                 ept: Ept | None) -> bool:
    """Whether cached translation ``t`` allows ``access`` by itself: its guest rights
    (:func:`rights_allow`) and, for a combined mapping, its cached EPT permissions (a write with
    EPT A/D flags enabled also needs the EPT dirty flag cached as set, or the processor walks to
    set it; SDM Vol. 3C §30.3.3.2, §30.3.4)."""
    if not rights_allow(state, mode_has_keys, t.rights, access):
        return False
    if ept is None or t.ept_permissions is None:
        return True
    return eptmod.allows(ept, t.ept_permissions, access.kind, t.rights.user) and (
        t.ept_dirty or not ept.accessed_dirty or not access.is_write)


@checked
def lookup(tlb: Tlb, tags: Tags, gla: int) -> list[CachedTranslation]:
    """The cached translations usable for ``gla`` under ``tags``, in the order the model
    prefers them: smaller pages first, then those of the current PCID before global ones of
    another, then in sorted order (the architecture leaves the choice open)."""
    return sorted((t for t in tlb.translations if _usable(t, tags, gla)),
                  key=lambda t: (t.size, t.pcid != tags.pcid, t))


def hit(tlb: Tlb, tags: Tags, gla: int, allows: Callable[[CachedTranslation], bool]) -> CachedTranslation | None:
    """The first translation of :func:`lookup` that ``allows``, found through
    :attr:`Tlb.index` (one dictionary probe per page size): the TLB-hit path. Equal to the
    linear search (tested)."""
    index = tlb.index
    vpid, pcid, ep4ta = tags.vpid, tags.pcid, tags.ep4ta
    for size in PAGE_SIZES:
        group = index.get((vpid, ep4ta, size, gla & -size))
        if group is not None:
            for t in group:
                if t.pcid == pcid and allows(t):
                    return t
            for t in group:
                if t.pcid != pcid and t.rights.is_global and allows(t):
                    return t
    return None


def _structure_starts(tlb: Tlb, tags: Tags, mode: str, gla: int) -> list[StructureCacheEntry]:
    """The usable paging-structure-cache entries for ``gla``, shallowest first."""
    return sorted((s for s in tlb.structures if s.vpid == tags.vpid and s.pcid == tags.pcid and s.mode == mode
                   and s.covers(gla)), key=lambda s: -s.shift)


@checked
def access(tlb: Tlb, tags: Tags, memory: PhysicalMemory, gla: int, acc: Access, *, state: PagingState,
           features: PagingFeatures, ept: Ept | None = None) -> tuple[Outcome, Tlb]:
    """One access through the TLBs: a usable cached translation that allows it, or else a walk
    (from the deepest matching paging-structure-cache entry, without EPT); the outcome and the
    TLB after the entries the access creates and the invalidations its fault implies."""
    if guest.linear_address_fault(state, gla):
        return GeneralProtection((), memory), tlb
    mode = guest.paging_mode(state)
    if mode is None:
        out = guest.translate(state, features, memory, gla, acc) if ept is None else walk2d.translate(
            state, features, memory, gla, acc, ept=ept)
        return out, tlb
    if not acc.shadow_stack and not guest.crosses_page(gla, acc):
        keys = mode.protection_keys
        t = hit(tlb, tags, gla, lambda entry: entry_allows(state, keys, entry, acc, ept))
        if t is not None:
            offset = gla - t.base
            return Translated(gla, t.gpa + offset, t.hpa + offset, t.size, (), memory, t.memory_type,
                              rights=t.rights), tlb
    compiled = guest.compile_for(state, features)
    assert compiled is not None
    if ept is not None:
        def cached(gpa: int) -> EptWalk | None:
            usable = usable_guest_physical(tlb, tags, gpa)
            return usable[0].as_walk(gpa) if usable else None

        out = walk2d.translate(state, features, memory, gla, acc, ept=ept,
                               gpa_cache=cached if tlb.guest_physical else None)
        return out, _after(tlb, tags, gla, out, ept=ept)
    starts = _structure_starts(tlb, tags, compiled.name, gla)
    walked: list[GuestWalk] = []
    out = guest.translate(state, features, memory, gla, acc, start=starts[-1].start if starts else None,
                          walked=walked)
    return out, _after(tlb, tags, gla, out, w=walked[0] if walked and isinstance(out, Translated) else None,
                       compiled=compiled, state=state)


def _after(tlb: Tlb, tags: Tags, gla: int, out: Outcome, *, w: GuestWalk | None = None, ept: Ept | None = None,
           compiled: guest.CompiledMode | None = None, state: PagingState | None = None) -> Tlb:
    """Entries created by a walk, and the invalidations a fault implies (§5.10.4.1: a page fault
    invalidates the faulting address's entries for the current PCID; Vol. 3C §30.4.3.1: an EPT
    violation invalidates the guest-physical mappings of the faulting guest-physical address
    and the combined mappings of the linear address)."""
    if isinstance(out, PageFault):
        return invalidate_address(tlb, tags, gla, pcid=tags.pcid, globals_too=True)
    if isinstance(out, EptViolation):
        tlb = invalidate_address(tlb, tags, gla, pcid=tags.pcid, globals_too=True)
        return tlb.keep(guest_physical=lambda g: g.ep4ta == tags.ep4ta and g.base <= out.gpa < g.base + g.size)
    if not isinstance(out, Translated) or out.rights is None:
        return tlb
    base = gla & ~(out.page_size - 1)
    ept_permissions, ept_dirty = None, True
    if ept is not None:
        final = walk_ept(ept, out.memory, out.gpa, [])
        if not isinstance(final, EptWalk):
            return tlb  # the EPT changed under the access: cache nothing
        ept_permissions, ept_dirty = final.permissions, bool(final.leaf & eptmod.DIRTY)
    entry = CachedTranslation(tags.vpid, tags.pcid, tags.ep4ta, base, out.page_size, out.gpa - (gla - base),
                              out.hpa - (gla - base), out.rights, out.memory_type, ept_permissions, ept_dirty)
    translations = tlb.translations | {entry}
    guest_physical = tlb.guest_physical
    if ept is not None:
        guest_physical = guest_physical | set(_guest_physical_entries(ept, out))
    structures = tlb.structures
    if w is not None and compiled is not None and state is not None:
        structures = structures | set(_structure_entries(tags, compiled, state, gla, w))
    return Tlb(translations, structures, guest_physical)


def _guest_physical_entries(ept: Ept, out: Translated) -> list[GuestPhysicalTranslation]:
    """Guest-physical mappings for the guest-physical addresses a successful 2D walk translated:
    the guest paging-structure entries' and the final one (SDM Vol. 3C §30.4.2: a translation
    used may be cached). Permissions and A/D flags are as the walk found them (the A/D flags it
    set do not change them)."""
    out_entries = []
    for gpa in [r.address for r in out.references if r.space is Space.GUEST] + [out.gpa]:
        w = walk_ept(ept, out.memory, gpa, [])
        if isinstance(w, EptWalk):
            base = gpa & ~(w.page_size - 1)
            out_entries.append(GuestPhysicalTranslation(ept.ep4ta, base, w.page_size, w.hpa - (gpa - base),
                                                        w.permissions, w.leaf))
    return out_entries


@checked
def usable_guest_physical(tlb: Tlb, tags: Tags, gpa: int) -> list[GuestPhysicalTranslation]:
    """The guest-physical mappings usable for ``gpa``: those of the current EP4TA that cover it
    (§30.4.2), in sorted order."""
    return sorted(g for g in tlb.guest_physical if g.ep4ta == tags.ep4ta and g.covers(gpa))


def _structure_entries(tags: Tags, compiled: guest.CompiledMode, state: PagingState, gla: int,
                       w: GuestWalk) -> list[StructureCacheEntry]:
    """A paging-structure-cache entry for every entry of ``w`` that references a table."""
    out = []
    user = writable = True
    xd = False
    index = len(compiled.levels) - len(w.entries)
    for lv, _, entry in w.entries[:-1]:
        index += 1
        if lv.rights:
            user, writable = user and bool(entry & guest.US), writable and bool(entry & guest.RW)
            xd = xd or (compiled.execute_disable and bool(entry & guest.XD))
        start = WalkStart(index, entry & lv.table_mask, user, writable, xd)
        out.append(StructureCacheEntry(tags.vpid, tags.pcid, compiled.name, lv.shift, gla >> lv.shift, start))
    return out


# ------------------------------------------------------------------ the permitted results


def outcome_key(out: Outcome) -> tuple[object, ...]:
    """What distinguishes architectural results: the kind of outcome and its reported values."""
    if isinstance(out, Translated):
        return ("ok", out.gpa, out.hpa)
    if isinstance(out, PageFault):
        return ("page_fault", out.error_code, out.address)
    if isinstance(out, EptViolation):
        return ("ept_violation", out.qualification, out.gpa)
    if isinstance(out, EptMisconfig):
        return ("ept_misconfig", out.gpa)
    if isinstance(out, Npf):
        return ("npf", out.exit_info_1, out.exit_info_2)
    return ("general_protection",)


@checked
def permitted(tlb: Tlb, tags: Tags, memory: PhysicalMemory, gla: int, acc: Access, *, state: PagingState,
              features: PagingFeatures, ept: Ept | None = None) -> set[tuple[object, ...]]:
    """Every result the SDM permits for ``acc`` given what is cached: each usable cached
    translation (allowing the access, or faulting on its cached rights: a stale entry may cause
    a "spurious" page fault, §5.10.4.3), and each walk that starts at the root or at a usable
    paging-structure-cache entry and reads current memory for the rest."""
    if guest.linear_address_fault(state, gla):
        return {("general_protection",)}
    compiled = guest.compile_for(state, features)
    fresh = guest.translate(state, features, memory, gla, acc) if ept is None else walk2d.translate(
        state, features, memory, gla, acc, ept=ept)
    results = {outcome_key(fresh)}
    if compiled is None:
        return results
    for t in lookup(tlb, tags, gla):
        offset = gla - t.base
        if entry_allows(state, compiled.mode.protection_keys, t, acc, ept):
            results.add(("ok", t.gpa + offset, t.hpa + offset))
        elif not rights_allow(state, compiled.mode.protection_keys, t.rights, acc):
            results.add(outcome_key(PageFault(guest.error_code(state, acc, present=True), gla, (), memory)))
    if ept is None:
        for s in _structure_starts(tlb, tags, compiled.name, gla):
            results.add(outcome_key(guest.translate(state, features, memory, gla, acc, start=s.start)))
    else:
        results |= _with_guest_physical(tlb, tags, memory, gla, acc, state=state, features=features, ept=ept)
    return results


def _with_guest_physical(tlb: Tlb, tags: Tags, memory: PhysicalMemory, gla: int, acc: Access, *,
                         state: PagingState, features: PagingFeatures, ept: Ept) -> set[tuple[object, ...]]:
    """The results of every 2D walk that, for each guest-physical address it translates, either
    walks the EPT or uses any usable cached guest-physical mapping (§30.4.2): each sequence of
    choices is tried once (depth-first over the choice points the walk meets)."""
    results: set[tuple[object, ...]] = set()
    pending: list[tuple[int, ...]] = [()]
    while pending:
        prefix = pending.pop()
        counts: list[int] = []

        def choose(gpa: int, prefix: tuple[int, ...] = prefix, counts: list[int] = counts) -> EptWalk | None:
            options = usable_guest_physical(tlb, tags, gpa)
            i = len(counts)
            counts.append(len(options) + 1)
            pick = prefix[i] if i < len(prefix) else 0
            return options[pick - 1].as_walk(gpa) if pick else None

        out = walk2d.translate(state, features, memory, gla, acc, ept=ept, gpa_cache=choose)
        results.add(outcome_key(out))
        for i in range(len(prefix), len(counts)):
            pending.extend((*prefix, *(0,) * (i - len(prefix)), alt) for alt in range(1, counts[i]))
    return results


# ------------------------------------------------------------------ invalidation


@checked
def invalidate_address(tlb: Tlb, tags: Tags, gla: int, *, pcid: int, globals_too: bool) -> Tlb:
    """The entries of the current VPID (all EP4TAs) for ``gla`` and ``pcid`` (and global ones
    if ``globals_too``), and every paging-structure-cache entry of that VPID and PCID."""
    return tlb.keep(
        translation=lambda t: t.vpid == tags.vpid and t.covers(gla) and (
            t.pcid == pcid if not globals_too else (t.pcid == pcid or t.rights.is_global)),
        structure=lambda s: s.vpid == tags.vpid and s.pcid == pcid)


@checked
def invlpg(tlb: Tlb, tags: Tags, gla: int) -> Tlb:
    """INVLPG (SDM Vol. 3A §5.10.4.1 "Operations that Invalidate TLBs and Paging-Structure
    Caches"): the translations for the page of ``gla`` of the current PCID, global ones of any
    PCID, and every paging-structure-cache entry of the current PCID; for the current VPID and
    every EP4TA (Vol. 3C §30.4.3.1)."""
    return invalidate_address(tlb, tags, gla, pcid=tags.pcid, globals_too=True)


class InvpcidType(enum.IntEnum):
    """The INVPCID types (SDM Vol. 2B INVPCID)."""

    INDIVIDUAL_ADDRESS = 0
    SINGLE_CONTEXT = 1
    ALL_CONTEXT_INCLUDING_GLOBALS = 2
    ALL_CONTEXT = 3


@checked
def invpcid(tlb: Tlb, tags: Tags, kind: InvpcidType, pcid: int = 0, gla: int = 0) -> Tlb:
    """INVPCID (§5.10.4.1): individual-address (non-global translations of ``gla`` and ``pcid``),
    single-context (non-global of ``pcid``), all-context including globals, all-context (non-global);
    paging-structure caches of the PCIDs concerned. Current VPID, every EP4TA."""
    vpid = tags.vpid
    if kind is InvpcidType.INDIVIDUAL_ADDRESS:
        return invalidate_address(tlb, tags, gla, pcid=pcid, globals_too=False)
    if kind is InvpcidType.SINGLE_CONTEXT:
        return tlb.keep(translation=lambda t: t.vpid == vpid and t.pcid == pcid and not t.rights.is_global,
                        structure=lambda s: s.vpid == vpid and s.pcid == pcid)
    keep_globals = kind is InvpcidType.ALL_CONTEXT
    return tlb.keep(translation=lambda t: t.vpid == vpid and not (keep_globals and t.rights.is_global),
                    structure=lambda s: s.vpid == vpid)


@checked
def mov_to_cr3(tlb: Tlb, tags: Tags, state: PagingState, new_cr3: int, *, no_flush: bool = False) -> Tlb:
    """MOV to CR3 (§5.10.4.1): with CR4.PCIDE = 0, the non-global translations and the
    paging-structure caches of PCID 000H; with CR4.PCIDE = 1, those of the new PCID unless bit
    63 of the source operand is 1."""
    if state.cr4 & CR4_PCIDE:
        if no_flush:
            return tlb
        pcid = guest.CR3_PCID.get(new_cr3)
    else:
        pcid = 0
    return invpcid(tlb, tags, InvpcidType.SINGLE_CONTEXT, pcid)


@checked
def mov_to_cr4(tlb: Tlb, tags: Tags, old: int, new: int) -> Tlb:
    """MOV to CR4 (§5.10.4.1): everything of every PCID if it changes CR4.PGE or clears
    CR4.PCIDE; everything of the current PCID if it changes CR4.PAE or sets CR4.SMEP."""
    if (old ^ new) & CR4_PGE or (old & CR4_PCIDE and not new & CR4_PCIDE):
        return invpcid(tlb, tags, InvpcidType.ALL_CONTEXT_INCLUDING_GLOBALS)
    if (old ^ new) & CR4_PAE or (new & CR4_SMEP and not old & CR4_SMEP):
        return tlb.keep(translation=lambda t: t.vpid == tags.vpid and t.pcid == tags.pcid,
                        structure=lambda s: s.vpid == tags.vpid and s.pcid == tags.pcid)
    return tlb


@checked
def mov_to_cr0(tlb: Tlb, tags: Tags, old: int, new: int) -> Tlb:
    """MOV to CR0 (§5.10.4.1): everything of every PCID if it clears CR0.PG."""
    if old & CR0_PG and not new & CR0_PG:
        return invpcid(tlb, tags, InvpcidType.ALL_CONTEXT_INCLUDING_GLOBALS)
    return tlb


class InvvpidType(enum.IntEnum):
    """The INVVPID types (SDM Vol. 3C §30.4.3.1)."""

    INDIVIDUAL_ADDRESS = 0
    SINGLE_CONTEXT = 1
    ALL_CONTEXT = 2
    SINGLE_CONTEXT_RETAINING_GLOBALS = 3


@checked
def invvpid(tlb: Tlb, kind: InvvpidType, vpid: int = 0, gla: int = 0) -> Tlb:
    """INVVPID (SDM Vol. 3C §30.4.3.1 "Operations that Invalidate Cached Mappings"): linear and
    combined mappings (every PCID, every EP4TA) of ``vpid`` for ``gla``; of ``vpid``; of every
    VPID except 0000H; of ``vpid`` except global translations. Guest-physical mappings stay."""
    if kind is InvvpidType.INDIVIDUAL_ADDRESS:
        return tlb.keep(translation=lambda t: t.vpid == vpid and t.covers(gla),
                        structure=lambda s: s.vpid == vpid and s.covers(gla))
    if kind is InvvpidType.SINGLE_CONTEXT:
        return tlb.keep(translation=lambda t: t.vpid == vpid, structure=lambda s: s.vpid == vpid)
    if kind is InvvpidType.ALL_CONTEXT:
        return tlb.keep(translation=lambda t: t.vpid != 0, structure=lambda s: s.vpid != 0)
    return tlb.keep(translation=lambda t: t.vpid == vpid and not t.rights.is_global,
                    structure=lambda s: s.vpid == vpid)


class InveptType(enum.IntEnum):
    """The INVEPT types (SDM Vol. 3C §30.4.3.1)."""

    SINGLE_CONTEXT = 1
    GLOBAL = 2


@checked
def invept(tlb: Tlb, kind: InveptType, ep4ta: int = 0) -> Tlb:
    """INVEPT (§30.4.3.1): guest-physical and combined mappings of ``ep4ta`` (every VPID and
    PCID), or of every EP4TA. Linear mappings stay."""
    if kind is InveptType.SINGLE_CONTEXT:
        return tlb.keep(translation=lambda t: t.ep4ta == ep4ta, guest_physical=lambda g: g.ep4ta == ep4ta)
    return tlb.keep(translation=lambda t: t.ep4ta is not None, guest_physical=lambda g: True)


@checked
def vmx_transition(tlb: Tlb, *, enable_vpid: bool) -> Tlb:
    """VM entry or VM exit (§30.4.3.1): with "enable VPID" = 0, the linear and combined mappings
    of VPID 0000H (every EP4TA); with it 1, nothing."""
    if enable_vpid:
        return tlb
    return invvpid(tlb, InvvpidType.SINGLE_CONTEXT, 0)


class TlbControl(enum.IntEnum):
    """VMCB TLB_CONTROL values (AMD APM Vol. 2 §15.16 "TLB Control")."""

    NOTHING = 0
    FLUSH_ALL = 1
    FLUSH_ASID = 3
    FLUSH_ASID_NON_GLOBAL = 7


def tlb_control(tlb: Tlb, control: TlbControl, asid: int) -> Tlb:
    """VMRUN with TLB_CONTROL (APM Vol. 2 §15.16): flush everything, the guest's ASID, or its
    non-global entries. UNSURE: section number and title from earlier APM revisions."""
    if control is TlbControl.FLUSH_ALL:
        return Tlb()
    if control is TlbControl.FLUSH_ASID:
        return invvpid(tlb, InvvpidType.SINGLE_CONTEXT, asid)
    if control is TlbControl.FLUSH_ASID_NON_GLOBAL:
        return invvpid(tlb, InvvpidType.SINGLE_CONTEXT_RETAINING_GLOBALS, asid)
    return tlb


__all__ = [
    "PAGE_SIZES",
    "CachedTranslation",
    "GuestPhysicalTranslation",
    "InveptType",
    "InvpcidType",
    "InvvpidType",
    "Rights",
    "StructureCacheEntry",
    "Tags",
    "Tlb",
    "TlbControl",
    "access",
    "entry_allows",
    "hit",
    "invalidate_address",
    "invept",
    "invlpg",
    "invpcid",
    "invvpid",
    "lookup",
    "mov_to_cr0",
    "mov_to_cr3",
    "mov_to_cr4",
    "outcome_key",
    "permitted",
    "rights_allow",
    "tlb_control",
    "usable_guest_physical",
    "vmx_transition",
]
