"""Public hypothesis strategies: capability profiles, VMCSs, page tables, EPT hierarchies, guest
programs and scenarios, for property tests of vtx and of hypervisor designs built on it.

Conventions (docs/architecture.rst): plural names; keyword-only options; valid values are built
by construction, never filtered; :func:`vmcs_breaking` draws a VMCS that breaks exactly one named
VM-entry check. Each strategy's docstring says what it shrinks towards.

>>> from hypothesis import given
>>> from vtx import strategies as vst
>>> from vtx.vmx.capabilities import load_preset
>>> from vtx.vmx.entry import evaluate_vm_entry
>>> caps = load_preset("max")
>>> @given(vst.vmcs_states(caps))
... def test_templates_enter(vmcs):
...     assert evaluate_vm_entry(vmcs, caps).succeeds
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import attrs
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from vtx import spec
from vtx.bits import mask
from vtx.errors import InputError
from vtx.kvm.boot import ENTRY_BYTES, MODE, RW, P, PageTables, identity_tables
from vtx.machine.designs import DESIGNS
from vtx.machine.layout import LAYOUT, Layout
from vtx.machine.model import LinearAccess, ProgramStep, Vm
from vtx.machine.scenario import KINDS, MIB, SIMPLE_OPS, WORKLOADS, build_machine, parse_op, parse_scenario
from vtx.paging.ept import ENTRY_BYTES as EPT_ENTRY_BYTES
from vtx.paging.ept import EPTP_FIELDS, MEMORY_TYPE, PS, Ept, R, W, X, ept_from_eptp
from vtx.paging.formats import EPT, GUEST, PAGE_SIZE
from vtx.paging.guest import LEAF, PS_PAGE, AccessKind, PagingFeatures
from vtx.paging.memory import HostPhysAddr, PhysicalMemory
from vtx.spec import VmcsField
from vtx.typecheck import checked
from vtx.vmx.capabilities import Capabilities, load_preset, preset_names
from vtx.vmx.entry import evaluate_vm_entry, evaluate_vm_entry_incremental, gates
from vtx.vmx.entry.catalogue import ENTRY_CHECKS
from vtx.vmx.templates import FEATURE_FIELDS, PAGE_TABLES, REQUIRES, TEMPLATES, build_template
from vtx.vmx.vmcs import Vmcs

__all__ = [
    "FREE_FIELDS", "EptHierarchy", "EptMapping", "GuestMapping", "GuestMappings", "adversarial_programs",
    "breakable_checks", "capabilities", "ept_eptp", "ept_hierarchies", "ept_map_page", "executor_presets",
    "guest_page_tables", "guest_programs", "layout_limit_mib", "probe_targets", "program_items", "scenarios",
    "vmcs_breaking", "vmcs_states", "vmx_presets",
]

_U32 = mask(32)
_PRESET_ORDER = ("max", "skylake_client")
MIN_MEMORY_MIB = 2
"""The least guest memory :func:`scenarios` gives a VM: the designs install the guest's page tables
at guest-physical 1 MiB (the templates' CR3), so a 1-MiB VM's tables lie outside its memory and its
EPT maps them beyond its partition (a partitioning violation the stateful isolation test found;
``parse_scenario`` still accepts ``memory_mib = 1``)."""
"""Presets drawn first (the shrink targets of :func:`capabilities`)."""


# ------------------------------------------------------------------ capabilities


def vmx_presets() -> tuple[str, ...]:
    """The shipped presets that describe a VMX processor (IA32_VMX_BASIC present), ``max`` first."""
    names = [n for n in preset_names() if load_preset(n).msr("IA32_VMX_BASIC") is not None]
    return tuple(sorted(names, key=lambda n: (n not in _PRESET_ORDER, _PRESET_ORDER.index(n)
                                              if n in _PRESET_ORDER else 0, n)))


@functools.cache
def executor_presets() -> tuple[str, ...]:
    """The VMX presets every reference design runs on (a one-VM machine builds under each: the
    designs' controls, EPT and VPID are allowed)."""
    def runs(name: str) -> bool:
        try:
            scenario = parse_scenario({"profile": name, "vm": [{"name": "probe", "program": []}]})
            return all(build_machine(scenario, d) is not None for d in DESIGNS)
        except InputError:
            return False
    return tuple(n for n in vmx_presets() if runs(n))


def _optional_bits(caps: Capabilities) -> dict[str, int]:
    """Per control MSR pair (plain and TRUE): the allowed-1 bits neither MSR requires."""
    out: dict[str, int] = {}
    for cf in spec.CONTROL_FIELDS:
        plain = caps.msr(cf.msr.name)
        if plain is None or cf.msr_format is not spec.MsrFormat.PAIR:
            continue
        true = caps.msr(cf.true_msr.name) if cf.true_msr is not None else None
        required = (plain | (true if true is not None else 0)) & _U32
        optional = (plain >> 32) & ~required
        if optional:
            out[cf.key] = optional
    return out


def _bits_of(value: int) -> list[int]:
    return [1 << i for i in range(value.bit_length()) if value >> i & 1]


@st.composite
def capabilities(draw: st.DrawFn, *, presets: Sequence[str] | None = None, vary: bool = True) -> Capabilities:
    """A capability profile: a shipped VMX preset, and (``vary``) the same processor with some
    optional controls withdrawn: allowed-1 bits cleared in a control MSR and its TRUE_* MSR
    together, never a must-be-1 bit nor one the templates need (IA-32e mode guest, host
    address-space size), so the profile stays consistent (SDM Vol. 3D §A.3
    "VM-Execution Controls" ... §A.5 "VM-Entry Controls": allowed-0 settings must be allowed-1).
    A withdrawn "activate secondary controls" withdraws the whole secondary field.

    Shrinks towards ``max`` with nothing withdrawn.

    >>> from hypothesis import given
    >>> @given(capabilities())
    ... def test(caps): assert caps.consistency_problems() == []
    """
    names = tuple(presets) if presets is not None else vmx_presets()
    base = load_preset(draw(st.sampled_from(names)))
    if not vary or not draw(st.booleans()):
        return base
    overlay: dict[str, Any] = {}
    template = build_template("long-mode", base)
    for key, optional in _optional_bits(base).items():
        needed = template.get(spec.CONTROL_FIELDS[key].vmcs_field)  # what every template sets (IA-32e mode...)
        if not optional & ~needed:
            continue
        drop = sum(draw(st.sets(st.sampled_from(_bits_of(optional & ~needed)), max_size=4)))
        if not drop:
            continue
        cf = spec.CONTROL_FIELDS[key]
        for msr in (cf.msr, cf.true_msr):
            value = base.msr(msr.name) if msr is not None else None
            if msr is not None and value is not None:
                overlay[msr.name] = value & ~(drop << 32)
    if not overlay:
        return base
    return base.overlay(overlay, name=f"{base.name}-varied")


# ------------------------------------------------------------------ VMCS states


_GATE_MASKS: frozenset[tuple[str, int]] = frozenset(
    (g.flag.field.name, g.flag.mask) for row in ENTRY_CHECKS for g in gates(row))
"""Control bits some VM-entry check's applicability depends on (the catalogue's ``applies_if``)."""
_READ_BY_CHECKS: frozenset[str] = frozenset(f for row in ENTRY_CHECKS for f in row.fields)
FREE_FIELDS: tuple[VmcsField, ...] = tuple(f for f in spec.VMCS_FIELDS
                                           if not f.is_read_only and f.name not in _READ_BY_CHECKS
                                           and f.type is not spec.FieldType.CONTROL)
"""Writable fields no VM-entry check reads (their catalogue rows list every field they read):
any value of such a field keeps a valid VMCS valid."""


def _free_controls(caps: Capabilities) -> dict[str, int]:
    """Per control field (VMCS field name): the optional control bits ``caps`` allows that open no
    check's applicability gate and that, set alone on every template (:func:`_bases`), fail no
    check (some checks read a control without a gate: "entry to SMM" outside SMM). Computed once
    per profile."""
    def compute() -> dict[str, int]:
        bases = _bases(caps)
        out: dict[str, int] = {}
        for cf in spec.CONTROL_FIELDS:
            a0, a1 = caps.allowed0(cf.key), caps.allowed1(cf.key)
            if a0 is None or a1 is None:
                continue
            name = cf.vmcs_field.name
            free = sum(b for b in _bits_of(a1 & ~a0) if (name, b) not in _GATE_MASKS
                       and all(evaluate_vm_entry(v.set(cf.vmcs_field, v.get(cf.vmcs_field) | b), caps).succeeds
                               for v in bases))
            if free:
                out[name] = free
        return out
    return caps.memoized(("vtx.strategies.free_controls",), compute)


def _usable_features(caps: Capabilities) -> tuple[str, ...]:
    if not caps.allows("proc", "activate_secondary_controls"):
        return ()
    return tuple(f for f in FEATURE_FIELDS if caps.allows("proc2", f)
                 and all(caps.allows("proc2", r) for r in REQUIRES.get(f, ())))


def _usable_templates(caps: Capabilities) -> tuple[str, ...]:
    features = _usable_features(caps)
    return tuple(t for t in TEMPLATES if t in {"long-mode", "protected-mode"}
                 or (t == "real-mode" and "unrestricted_guest" in features)
                 or (t == "pae" and "enable_ept" in features))


@st.composite
def vmcs_states(draw: st.DrawFn, caps: Capabilities, *, valid: bool = True,
                templates: Sequence[str] | None = None) -> Vmcs:
    """A VMCS for ``caps`` that passes every VM-entry check (valid by construction): a template
    (:mod:`vtx.vmx.templates`) with a drawn set of the secondary features ``caps`` allows, drawn
    optional controls that no check's applicability depends on, and random values in the
    fields no check reads (:data:`FREE_FIELDS`: exception bitmap, CR read shadows, TSC offset,
    guest and host RSP...). With ``valid=False``: :func:`vmcs_breaking`.

    Shrinks towards the ``long-mode`` template with no feature and every free field at its
    template value.

    >>> from hypothesis import given
    >>> from vtx.vmx.entry import evaluate_vm_entry
    >>> caps = load_preset("skylake_client")
    >>> @given(vmcs_states(caps))
    ... def test(vmcs): assert evaluate_vm_entry(vmcs, caps).succeeds
    """
    if not valid:
        return draw(vmcs_breaking(caps))[0]
    names = tuple(templates) if templates is not None else _usable_templates(caps)
    template = draw(st.sampled_from(names))
    features = draw(st.sets(st.sampled_from(_usable_features(caps)))) if _usable_features(caps) else set()
    vmcs = build_template(template, caps, features=sorted(features))
    values: dict[str, int] = {}
    for field, free in _free_controls(caps).items():
        extra = sum(draw(st.sets(st.sampled_from(_bits_of(free)), max_size=6)))
        if extra:
            values[field] = vmcs[field] | extra
    for free_field in draw(st.sets(st.sampled_from([f for f in FREE_FIELDS if caps.field_exists(f)]), max_size=8)):
        values[free_field.name] = draw(st.integers(0, mask(free_field.bits)))
    return vmcs.with_fields(values) if values else vmcs


def _candidates(before: int, bits: int) -> list[int]:
    """Values tried for a field of ``bits`` bits holding ``before``, simplest first: 0, all ones,
    each single bit, ``before`` with each single bit flipped."""
    seen = {before}
    out = []
    for v in (0, mask(bits), *(1 << i for i in range(bits)), *(before ^ 1 << i for i in range(bits))):
        if v not in seen:
            seen.add(v)
            out.append(v)
    return out


def _alone(vmcs: Vmcs, caps: Capabilities, check_id: str) -> bool:
    """Whether every violation of ``vmcs`` is of check ``check_id`` (and there is one)."""
    return {v.check_id for v in evaluate_vm_entry(vmcs, caps).violations} == {check_id}


def _bases(caps: Capabilities) -> tuple[Vmcs, ...]:
    features = _usable_features(caps)
    plain = tuple(build_template(t, caps) for t in _usable_templates(caps))
    return (*plain, build_template("long-mode", caps, features=features)) if features else plain


def _breakers(caps: Capabilities) -> Mapping[str, tuple[tuple[int, str, int], ...]]:
    """For each check that one field change can make the only failing one: the (base index, field,
    value) triples that do, over the templates of :func:`_bases`. Every field some check reads is
    tried once per template with every value of :func:`_candidates`, evaluated incrementally
    (:func:`~vtx.vmx.entry.evaluate_vm_entry_incremental`: only the checks reading that field
    run again). Computed once per profile."""
    def compute() -> dict[str, tuple[tuple[int, str, int], ...]]:
        found: dict[str, list[tuple[int, str, int]]] = {}
        for b, base in enumerate(_bases(caps)):
            verdict = evaluate_vm_entry(base, caps)
            for name in sorted(_READ_BY_CHECKS):
                field = spec.VMCS_FIELDS[name]
                if field.is_read_only or not caps.field_exists(field):
                    continue
                for value in _candidates(base.get(field), field.bits):
                    after = evaluate_vm_entry_incremental(base, verdict, base.set(field, value), caps)
                    ids = {v.check_id for v in after.violations}
                    if len(ids) == 1:
                        found.setdefault(ids.pop(), []).append((b, name, value))
        order = list(ENTRY_CHECKS.keys())
        return {c: tuple(found[c]) for c in sorted(found, key=order.index)}
    return caps.memoized(("vtx.strategies.breakers",), compute)


@checked
def breakable_checks(caps: Capabilities) -> tuple[str, ...]:
    """The ids of the VM-entry checks :func:`vmcs_breaking` can break alone under ``caps``: those a
    change of one field the check reads makes the only violation, from some template (the rest
    need processor state, memory, or two fields at once). Computed once per profile (seconds)."""
    return tuple(_breakers(caps))


@st.composite
def vmcs_breaking(draw: st.DrawFn, caps: Capabilities, check_id: str | None = None) -> tuple[Vmcs, str]:
    """``(vmcs, check_id)``: a VMCS for which :func:`~vtx.vmx.entry.evaluate_vm_entry` reports
    violations of check ``check_id`` and of no other (drawn from :func:`breakable_checks` if None).
    A valid VMCS is drawn by :func:`vmcs_states` and one field the check reads is changed to one
    of: 0, all ones, a single bit, the old value with a bit flipped (drawn order); if no such
    change of the drawn VMCS breaks the check alone, the change known to break it on a template
    is used. ``InvalidArgument`` for a check no single-field change breaks alone.

    Shrinks towards the first breakable check (catalogue order) on the plain ``long-mode``
    template, with the simplest value.

    >>> from hypothesis import given
    >>> caps = load_preset("max")
    >>> @given(vmcs_breaking(caps, "guest.cr0.fixed_bits"))
    ... def test(case):
    ...     vmcs, check = case
    ...     assert [v.check_id for v in evaluate_vm_entry(vmcs, caps).violations] == [check]
    """
    table = _breakers(caps)
    if check_id is None:
        check_id = draw(st.sampled_from(tuple(table)))
    elif check_id not in table:
        raise InvalidArgument(f"check {check_id!r} cannot be broken alone by one field under {caps.name!r} "
                              f"(breakable: {len(table)} checks; see breakable_checks)")
    vmcs = draw(vmcs_states(caps))
    fields = list(dict.fromkeys(name for _, name, _ in table[check_id]))
    field = spec.VMCS_FIELDS[draw(st.sampled_from(fields))]
    values = _candidates(vmcs.get(field), field.bits)
    start = draw(st.integers(0, len(values) - 1))
    for value in values[start:] + values[:start]:
        candidate = vmcs.set(field, value)
        if _alone(candidate, caps, check_id):
            return candidate, check_id
    b, name, value = table[check_id][0]
    return _bases(caps)[b].set(spec.VMCS_FIELDS[name], value), check_id


# ------------------------------------------------------------------ guest page tables


class GuestMapping(NamedTuple):
    """One mapping as :func:`guest_page_tables` wrote it (a later one may overwrite it)."""

    gla: int
    gpa: int
    size: int
    leaf_bits: int
    table_bits: int


class GuestMappings(NamedTuple):
    """4-level guest paging structures (:class:`vtx.kvm.boot.PageTables`), the linear addresses
    worth translating (each mapped one, then a few random ones) and the mappings written, in order."""

    tables: PageTables
    glas: list[int]
    mappings: tuple[GuestMapping, ...]


_GUEST_PAGE_SIZES = tuple(lv.page_size for lv in MODE.levels if lv.page is not None)
_XD = GUEST.entry["execute_disable"].mask
_US = GUEST.entry["user"].mask
GUEST_ENTRY_BITS = (P, P | RW, P | _US, P | RW | _US, 0, RW, P | RW | _XD)
"""Entry bits drawn for guest paging entries: present or not, writable, user, execute-disable."""


@st.composite
def guest_page_tables(draw: st.DrawFn, *, root: int = PAGE_TABLES, max_mappings: int = 6, index_range: int = 4,
                      gpa_bits: int = 52) -> GuestMappings:
    """4-level guest paging structures rooted at guest-physical ``root`` mapping 1 to
    ``max_mappings`` pages of every size (4 KBytes, 2 MBytes, 1 GByte; SDM Vol. 3A §5.5 "4-Level
    Paging and 5-Level Paging") with random entry bits (:data:`GUEST_ENTRY_BITS`: not present,
    read-only, user, execute-disable) in the leaf and the tables above it; each table index is
    below ``index_range`` (few tables), frames anywhere below 2^``gpa_bits`` (reserved-bit
    faults above MAXPHYADDR included). Later mappings may overwrite earlier ones, as software may.

    Shrinks towards one 4-KByte mapping of linear 0 to guest-physical 0.

    >>> from hypothesis import given
    >>> @given(guest_page_tables())
    ... def test(case): tables, glas, mappings = case
    """
    tables = PageTables.empty(PhysicalMemory(), root)
    glas, mappings = [], []
    for _ in range(draw(st.integers(1, max_mappings))):
        size = draw(st.sampled_from(_GUEST_PAGE_SIZES))
        gla = 0
        for lv in MODE.levels:
            if lv.page_size < size:
                break
            gla |= draw(st.integers(0, index_range - 1)) << lv.index.lo
        gla |= draw(st.integers(0, size - 1))
        gpa = draw(st.integers(0, mask(gpa_bits)) | st.integers(0, _U32)) & ~(size - 1)
        leaf, table = draw(st.sampled_from(GUEST_ENTRY_BITS)), draw(st.sampled_from(GUEST_ENTRY_BITS))
        tables = tables.map(gla, gpa, size, leaf, table)
        glas.append(gla)
        mappings.append(GuestMapping(gla, gpa, size, leaf, table))
    glas += draw(st.lists(st.integers(0, mask(40)), max_size=2))
    return GuestMappings(tables, glas, tuple(mappings))


# ------------------------------------------------------------------ EPT hierarchies


@attrs.frozen
class EptMapping:
    """One EPT leaf as built: guest-physical ``gpa`` (aligned to ``size``) to host-physical
    ``hpa``, with permission bits ``permissions`` (R, W, X of the leaf; tables above allow
    everything) and ``misconfig`` set when the leaf is built to be an EPT misconfiguration (SDM
    Vol. 3C §30.3.3.1 "EPT Misconfigurations": write without read, execute-only unsupported, a
    reserved bit, a reserved memory type)."""

    gpa: int
    hpa: int
    size: int
    permissions: int
    misconfig: bool = False

    @checked
    def covers(self, gpa: int) -> bool:
        return self.gpa <= gpa < self.gpa + self.size


@attrs.frozen
class EptHierarchy:
    """EPT paging structures in ``memory`` for ``ept`` (an EPTP compiled for a profile), the
    leaves they contain and the host-physical pages their tables occupy."""

    ept: Ept
    memory: PhysicalMemory
    mappings: tuple[EptMapping, ...]
    tables: frozenset[int]

    def mapping(self, gpa: int) -> EptMapping | None:
        """The leaf that maps ``gpa``, None if none does."""
        return next((m for m in self.mappings if m.covers(gpa)), None)


EPT_TABLE_BASE = 0x4000_0000
"""Where :func:`ept_hierarchies` allocates EPT tables (host-physical), one page at a time."""
EPT_FRAME_BASE = 0x1_0000_0000
"""Where :func:`ept_hierarchies` allocates the frames leaves map, above the tables."""
_TABLE_BITS = R | W | X


def _memory_type(name: str) -> int:
    return next(t.value for t in EPT.memory_types if t.name == name)


@checked
def ept_eptp(caps: Capabilities, *, root: int = EPT_TABLE_BASE, five_level: bool = False) -> int:
    """An EPTP for ``caps``: write-back (uncacheable if WB is not supported), a 4- or 5-level walk,
    root at ``root`` (SDM Vol. 3C §26.6.11 "Extended-Page-Table Pointer (EPTP)")."""
    wb = bool(caps.msr_field("IA32_VMX_EPT_VPID_CAP", "memtype_wb"))
    length = 5 if five_level else 4
    walk = next(w for w in EPT.walk_lengths if w.length == length)
    eptp = EPTP_FIELDS["memory_type"].bits.put(root, _memory_type("WB" if wb else "UC"))
    return EPTP_FIELDS["walk_length"].bits.put(eptp, walk.encoded)


@checked
def ept_map_page(memory: PhysicalMemory, ept: Ept, gpa: int, hpa: int, *, size: int, leaf_bits: int,
                 next_table: int) -> tuple[PhysicalMemory, int, list[int]]:
    """Map the ``size`` page of ``gpa`` to ``hpa`` with leaf bits ``leaf_bits`` (PS added where the
    level maps pages only with PS = 1), creating missing tables from ``next_table`` (SDM Vol. 3C
    §30.3.2 "EPT Translation Mechanism"); returns memory, the next free table and the tables
    created. An existing leaf above the page's level is replaced by a table."""
    table, created = ept.root, list[int]()
    for lv in ept.levels:
        at = HostPhysAddr(table + ((gpa >> lv.shift) & lv.index_mask) * EPT_ENTRY_BYTES)
        if lv.page_size == size:
            ps = PS if lv.maps_page == PS_PAGE else 0
            assert lv.maps_page in (LEAF, PS_PAGE), f"{lv.name} cannot map a {size:#x}-byte page"
            return memory.write_int(at, EPT_ENTRY_BYTES, (hpa & lv.page_mask) | leaf_bits | ps), next_table, created
        entry = memory.read_int(at, EPT_ENTRY_BYTES)
        if entry & _TABLE_BITS and not entry & PS:
            table = entry & lv.table_mask
            continue
        table, next_table = next_table, next_table + PAGE_SIZE
        created.append(table)
        memory = memory.write_int(at, EPT_ENTRY_BYTES, table | _TABLE_BITS)
    raise AssertionError(f"no EPT level maps {size:#x}-byte pages")


def _page_sizes(ept: Ept) -> tuple[int, ...]:
    return tuple(lv.page_size for lv in ept.levels if lv.maps_page in (LEAF, PS_PAGE))


_VALID_PERMISSIONS = (R | W | X, R, R | W, R | X)
_MISCONFIG_PERMISSIONS = (W, W | X)


@st.composite
def ept_hierarchies(draw: st.DrawFn, caps: Capabilities | None = None, *, max_mappings: int = 8,
                    misconfigured: bool = False, gpa_bits: int | None = None) -> EptHierarchy:
    """EPT paging structures for ``caps`` (default: the ``max`` preset) with 1 to ``max_mappings``
    leaves of every page size ``caps`` supports (4 KBytes; 2 MBytes and 1 GByte with
    IA32_VMX_EPT_VPID_CAP bits 16 and 17), every permission combination that is not a
    misconfiguration (execute-only where bit 0 allows it) and every architectural memory type,
    at disjoint guest-physical ranges (each in its own 1-GByte slot below 2^``gpa_bits``, default
    min(MAXPHYADDR, 48)) to fresh host frames. With ``misconfigured``, some leaves are built to be
    misconfigurations instead (write without read, a reserved bit, a reserved memory type),
    recorded in :attr:`EptMapping.misconfig`.

    Shrinks towards one 4-KByte read/write/execute write-back leaf at guest-physical 0.

    >>> from hypothesis import given
    >>> from vtx.paging.ept import translate_gpa
    >>> @given(ept_hierarchies())
    ... def test(h):
    ...     m = h.mappings[0]
    ...     translate_gpa(h.ept, h.memory, m.gpa, AccessKind.READ)
    """
    caps = caps if caps is not None else load_preset("max")
    five = bool(caps.msr_field("IA32_VMX_EPT_VPID_CAP", "page_walk_5")) and draw(st.booleans())
    ept = ept_from_eptp(ept_eptp(caps, five_level=five), caps)
    bits = min(ept.maxphyaddr, ept.address_bits) if gpa_bits is None else gpa_bits
    slot_bits = max(bits - 30, 1)
    slots = draw(st.lists(st.integers(0, mask(slot_bits)), min_size=1, max_size=max_mappings, unique=True))
    permissions = _VALID_PERMISSIONS + ((X,) if ept.execute_only else ())
    types = tuple(t.value for t in EPT.memory_types)
    reserved_types = tuple(sorted(set(range(1 << MEMORY_TYPE.width)) - set(types)))
    memory, next_table, frame = PhysicalMemory(), ept.root + PAGE_SIZE, EPT_FRAME_BASE
    tables = {ept.root}
    mappings = []
    for slot in slots:
        size = draw(st.sampled_from(_page_sizes(ept)))
        gpa = (slot << 30) + (draw(st.integers(0, (1 << 30) // size - 1)) * size if size < 1 << 30 else 0)
        frame = (frame + size - 1) & ~(size - 1)
        hpa, frame = frame, frame + size
        perms = draw(st.sampled_from(permissions))
        leaf = perms | MEMORY_TYPE.put(0, draw(st.sampled_from(types)))
        bad = misconfigured and draw(st.integers(0, 3)) == 0
        if bad:
            lv = next(lv for lv in ept.levels if lv.page_size == size)
            reserved = lv.rsvd_page & ~(PS if lv.maps_page == PS_PAGE else 0)
            how = draw(st.sampled_from(("permissions", "memory_type") + (("reserved",) if reserved else ())))
            if how == "permissions":
                perms = draw(st.sampled_from(_MISCONFIG_PERMISSIONS))
                leaf = perms | MEMORY_TYPE.put(0, _memory_type("WB"))
            elif how == "memory_type":
                leaf = perms | MEMORY_TYPE.put(0, draw(st.sampled_from(reserved_types)))
            else:
                leaf |= draw(st.sampled_from(_bits_of(reserved)))
        memory, next_table, created = ept_map_page(memory, ept, gpa, hpa, size=size, leaf_bits=leaf,
                                                   next_table=next_table)
        tables.update(created)
        mappings.append(EptMapping(gpa, hpa, size, perms, bad))
    return EptHierarchy(ept, memory, tuple(mappings), frozenset(tables))


# ------------------------------------------------------------------ guest programs


def _memory_items(gvas: st.SearchStrategy[int]) -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(
        st.builds(lambda gva, v: {"op": "store", "gva": gva, "value": v}, gvas, st.integers(0, mask(64))),
        st.builds(lambda gva: {"op": "load", "gva": gva}, gvas),
        st.builds(lambda gva: {"op": "fetch", "gva": gva}, gvas))


@checked
def program_items(*, memory_bytes: int = 4 * MIB, kind: str = "hvm", max_length: int = 12,
                  layout: Layout = LAYOUT) -> st.SearchStrategy[list[dict[str, Any]]]:
    """A guest program in the scenario format (``[[vm]] program`` items of docs/executor.rst):
    the simple instructions, RDMSR / WRMSR, port I/O, MMIO, loads, stores and fetches at 8-byte
    aligned linear addresses of the guest's identity-mapped memory, and ring notifications for a
    PV guest. Shrinks towards the empty program.

    >>> program_items(max_length=3).example()  # doctest: +SKIP
    [{'op': 'cpuid'}, {'op': 'store', 'gva': 2097152, 'value': 7}]
    """
    gvas = st.integers(0, memory_bytes // 8 - 1).map(lambda n: n * 8)
    items = [st.sampled_from([{"op": op} for op in SIMPLE_OPS]),
             st.builds(lambda op, msr: {"op": op, "msr": msr}, st.sampled_from(["rdmsr", "wrmsr"]),
                       st.sampled_from([layout.msr, 0x174, 0xC0000080]) | st.integers(0, _U32)),
             st.builds(lambda op, port, size: {"op": op, "port": port, "size": size}, st.sampled_from(["in", "out"]),
                       st.just(layout.device_port) | st.integers(0, 0xFFFF), st.sampled_from([1, 2, 4])),
             st.builds(lambda op, off: {"op": op, "offset": off * 8}, st.sampled_from(["mmio_read", "mmio_write"]),
                       st.integers(0, (PAGE_SIZE - 8) // 8)),
             _memory_items(gvas)]
    if kind == "pv":
        items.append(st.builds(lambda v: {"op": "ring_notify", "value": v}, st.integers(1, _U32)))
    return st.lists(st.one_of(*items), max_size=max_length)


@checked
def guest_programs(*, memory_bytes: int = 4 * MIB, kind: str = "hvm", max_length: int = 12,
                   layout: Layout = LAYOUT) -> st.SearchStrategy[tuple[ProgramStep, ...]]:
    """A guest program as the executor runs it (guest operations of :mod:`vtx.guest_ops` and
    :class:`~vtx.machine.model.LinearAccess`): :func:`program_items` parsed by
    :func:`vtx.machine.scenario.parse_op`. Shrinks towards the empty program.

    >>> from hypothesis import given
    >>> @given(guest_programs(max_length=4))
    ... def test(program): assert len(program) <= 8   # ring_notify is two steps
    """
    def parse(items: list[dict[str, Any]]) -> tuple[ProgramStep, ...]:
        out: tuple[ProgramStep, ...] = ()
        for n, item in enumerate(items):
            out += parse_op(item, f"program[{n}]", layout, kind)
        return out
    return program_items(memory_bytes=memory_bytes, kind=kind, max_length=max_length, layout=layout).map(parse)


@functools.lru_cache(maxsize=4096)
def _entry_address(cr3: int, identity_bytes: int, gla: int, depth: str) -> int:
    """The guest-physical address of the paging-structure entry at level ``depth`` (PDPTE or PDE)
    for ``gla`` in the identity tables the designs install at ``cr3`` (the tables above it exist:
    ``gla`` lies in the first 512 GBytes)."""
    memory = identity_tables(PhysicalMemory(), cr3, identity_bytes).memory
    table = cr3
    for lv in MODE.levels:
        at = table + lv.index.get(gla) * ENTRY_BYTES
        if lv.name == depth:
            return at
        assert lv.table is not None
        table = memory.read_int(HostPhysAddr(at), ENTRY_BYTES) & lv.table.mask
    raise AssertionError(depth)


@checked
def probe_targets(*, memory_bytes: int, maxphyaddr: int, layout: Layout = LAYOUT) -> tuple[int, ...]:
    """Guest-physical addresses worth probing for a VM of ``memory_bytes`` under the executor's
    layout (``spec/machine/layout.toml``): 0, the end of its memory, the MMIO window, the end of
    its identity-mapped range, the ring page, its page tables, and every host-physical address
    where the hypervisor keeps something (VMXON and VMCS regions, EPT tables, other VMs' memory,
    dom0's EPT and grant window: a guest-physical address equal to a host one must not reach it)
    and the top of the physical-address space."""
    top = 1 << maxphyaddr
    targets = [0, memory_bytes - 8, memory_bytes, layout.mmio_gpa, layout.identity_bytes - 8, layout.ring_gpa,
               PAGE_TABLES, layout.vmxon, layout.vmcs, layout.ept, layout.ept + layout.ept_stride, layout.backing,
               layout.backing + layout.backing_stride, layout.backing + 2 * layout.backing_stride,
               layout.service_ept, layout.grant_gpa, top - PAGE_SIZE, top - 8]
    return tuple(sorted({t for t in targets if 0 <= t < top}))


@st.composite
def adversarial_programs(draw: st.DrawFn, vm: Vm, *, caps: Capabilities | None = None, max_length: int = 12,
                         cr3: int = PAGE_TABLES, layout: Layout = LAYOUT) -> tuple[ProgramStep, ...]:
    """A hostile guest program for ``vm`` that probes every guest-physical address the guest can
    form. A guest forms guest-physical addresses two ways: through the identity paging the
    designs install (linear = guest-physical below ``layout.identity_bytes``: its memory, the
    space beyond it, the MMIO window) and by rewriting its own paging structures, which live in
    its own memory: a probe stores a 2-MByte PDE (or, with 1-GByte pages, a PDPTE; SDM Vol. 3A
    §5.5 "4-Level Paging and 5-Level Paging") mapping a spare linear region to any guest-physical
    page below 2^MAXPHYADDR (:func:`probe_targets`, or any other), then loads, stores or fetches
    there. The hypervisor, whatever the guest does, must keep every access inside the VM's
    partition.

    Shrinks towards one load of guest-physical 0.

    >>> from hypothesis import given
    >>> @given(adversarial_programs(machine.vms[0]))   # doctest: +SKIP
    ... def test(program): ...
    """
    caps = caps if caps is not None else load_preset("skylake_client")
    features = PagingFeatures.from_capabilities(caps)
    maxphy = features.maxphyaddr
    targets = probe_targets(memory_bytes=vm.memory_bytes, maxphyaddr=maxphy, layout=layout)
    kinds = st.sampled_from((AccessKind.READ, AccessKind.WRITE, AccessKind.FETCH))
    large = next(lv for lv in MODE.levels if lv.name == "PDE").page_size
    huge = next(lv for lv in MODE.levels if lv.name == "PDPTE").page_size
    first_spare_pde = layout.identity_bytes // large
    steps: list[ProgramStep] = []
    for _ in range(draw(st.integers(1, max_length))):
        how = draw(st.sampled_from(("direct", "remap_2m", "remap_1g") if features.gb_pages else ("direct", "remap_2m")))
        kind = draw(kinds)
        value = draw(st.integers(0, mask(64)))
        if how == "direct":
            gpa = draw(st.sampled_from([t for t in targets if t < layout.identity_bytes])
                       | st.integers(0, layout.identity_bytes // 8 - 1).map(lambda n: n * 8))
            steps.append(LinearAccess(gpa & ~7, kind, 8, value))
            continue
        size = large if how == "remap_2m" else huge
        index = draw(st.integers(first_spare_pde if size == large else 1, 511))
        gla = index * size
        target = draw(st.sampled_from(targets) | st.integers(0, mask(maxphy) // 8).map(lambda n: n * 8))
        entry_gpa = _entry_address(cr3, layout.identity_bytes, gla, "PDE" if size == large else "PDPTE")
        pte = (target & ~(size - 1)) | P | RW | GUEST.entry["page_size"].mask
        steps.append(LinearAccess(entry_gpa, AccessKind.WRITE, ENTRY_BYTES, pte))
        steps.append(LinearAccess(gla + (target & (size - 1) & ~7), kind, 8, value))
    return tuple(steps)


# ------------------------------------------------------------------ scenarios


@st.composite
def scenarios(draw: st.DrawFn, *, designs: Sequence[str] | None = None, max_vms: int = 3, max_vcpus: int = 2,
              max_processors: int = 2, max_length: int = 8, steps: int = 200,
              profiles: Iterable[str] | None = None, kinds: Iterable[str] | None = None) -> dict[str, Any]:
    """A valid scenario document (the TOML format of docs/executor.rst, as a decoded dict) that
    :func:`vtx.machine.scenario.parse_scenario` accepts and every design in ``designs`` (default:
    all) can build: 1 to ``max_vms`` VMs (of the ``kinds``, default every kind, that every one of
    the designs runs) of 1 to ``max_vcpus`` vCPUs and :data:`MIN_MEMORY_MIB` to
    :func:`layout_limit_mib` MiB,
    each with a generated workload or an explicit :func:`program_items` program, on an executor
    preset (:func:`executor_presets`).

    Shrinks towards one HVM VM with one vCPU, 2 MiB and an empty program, on ``max``.

    >>> from hypothesis import given
    >>> from vtx.machine.scenario import parse_scenario
    >>> @given(scenarios())
    ... def test(doc): parse_scenario(doc)
    """
    names = list(designs) if designs is not None else list(DESIGNS)
    wanted = tuple(kinds) if kinds is not None else KINDS
    usable = tuple(k for k in wanted if all(k in DESIGNS[d].kinds for d in names))
    profile = draw(st.sampled_from(tuple(profiles) if profiles is not None else executor_presets()))
    max_mib = layout_limit_mib()
    vms = []
    for n in range(draw(st.integers(1, max_vms))):
        kind = draw(st.sampled_from(usable))
        mib = draw(st.integers(MIN_MEMORY_MIB, max_mib))
        vm: dict[str, Any] = {"name": f"vm{n}", "vcpus": draw(st.integers(1, max_vcpus)), "kind": kind,
                              "memory_mib": mib}
        if draw(st.booleans()):
            vm["program"] = draw(program_items(memory_bytes=mib * MIB, kind=kind, max_length=max_length))
        else:
            vm["workload"] = draw(st.sampled_from(WORKLOADS))
            vm["length"] = draw(st.integers(1, max_length))
        vms.append(vm)
    return {"seed": draw(st.integers(0, _U32)), "steps": steps, "profile": profile,
            "logical_processors": draw(st.integers(1, max_processors)), "designs": names,
            "tick": draw(st.sampled_from([0.0, 0.05, 0.2])), "vm": vms}


@checked
def layout_limit_mib(layout: Layout = LAYOUT) -> int:
    """The largest ``memory_mib`` a scenario may give a VM (below the MMIO window and the stride
    between VMs' memory)."""
    return min(layout.backing_stride, layout.mmio_gpa) // MIB

