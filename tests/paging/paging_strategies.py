"""Hypothesis strategies for paging tests: random guest and EPT page tables along the path of
one linear address, every page size, random permissions, reserved bits and A/D flags.

A scenario is built by construction (never filtered): guest tables at small guest-physical
pages; with EPT, an EPT path for every guest-physical page the walk touches, EPT tables and
page frames in disjoint host-physical regions so that nothing overlaps by accident.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import reference as ref
from hypothesis import strategies as st

from vtx.paging import guest, walk2d
from vtx.paging.ept import Ept, ept_from_eptp
from vtx.paging.guest import Access, AccessKind, PagingFeatures, PagingState
from vtx.paging.memory import PhysicalMemory
from vtx.paging.outcomes import EptMisconfig, EptViolation, GeneralProtection, Outcome, PageFault, Translated
from vtx.spec import CAPABILITY_MSRS, get_control
from vtx.vmx.capabilities import Capabilities, load_preset

GUEST_TABLE_PAGES = range(1, 48)
EPT_TABLE_BASE = 0x4000_0000
FRAME_BASE = 0x1_0000_0000

KINDS = ("read", "write", "fetch")


@dataclass
class Scenario:
    guest: ref.Guest
    maxphy: int
    gb_pages: bool
    gla: int
    access: ref.Acc
    ept: ref.EptCfg | None
    mem: dict[int, bytes] = field(default_factory=dict)


class _Builder:
    def __init__(self, draw: st.DrawFn, maxphy: int) -> None:
        self.draw = draw
        self.noisy = draw(st.booleans())
        self.maxphy = maxphy
        self.mem = ref.Mem()
        self.next_ept_table = EPT_TABLE_BASE
        self.next_frame = FRAME_BASE

    def ept_table(self) -> int:
        a = self.next_ept_table
        self.next_ept_table += ref.PAGE
        return a

    def frame(self, size: int) -> int:
        a = (self.next_frame + size - 1) & ~(size - 1)
        self.next_frame = a + size
        return a

    def pick(self, clean: list[int], noisy: list[int]) -> int:
        """A value from ``clean``, or (in a noisy scenario) from ``clean + noisy``."""
        return self.draw(st.sampled_from(clean + noisy if self.noisy else clean))

    def junk_reserved(self, choices: list[int]) -> int:
        if not self.noisy or not choices or self.draw(st.integers(0, 14)) != 0:
            return 0
        return 1 << self.draw(st.sampled_from(choices))


def _phys_reserved_bits(maxphy: int) -> list[int]:
    return list(range(maxphy, 52))


@st.composite
def ept_configs(draw: st.DrawFn, maxphy: int) -> tuple[ref.EptCfg, _Builder]:
    b = _Builder(draw, maxphy)
    walk = draw(st.sampled_from([3, 4]))
    eptp = 6 | (walk << 3) | (draw(st.booleans()) << 6) | (draw(st.booleans()) << 7) | b.ept_table()
    cfg = ref.EptCfg(eptp, exec_only=draw(st.booleans()), pde_2mb=draw(st.booleans()), pdpte_1gb=draw(st.booleans()),
                     advanced=draw(st.booleans()), mbec=draw(st.booleans()),
                     paging_write=draw(st.integers(0, 3)) == 0, gpv=draw(st.integers(0, 3)) == 0)
    return cfg, b


def _ept_entry(b: _Builder, cfg: ref.EptCfg, *, leaf: bool, page: bool, addr: int, name: str) -> int:
    draw = b.draw
    perm = b.pick([7, 7, 7, 7, 3, 1, 5], [4, 0, 2, 6])
    e = perm | addr
    if cfg.mbec and draw(st.booleans()):
        e |= 1 << 10
    e |= draw(st.sampled_from([0, 1 << 8, 3 << 8]))
    if page or leaf:
        e |= b.pick([6, 6, 6, 0, 1, 4, 5], [2, 7]) << 3
        e |= draw(st.booleans()) << 6
        if draw(st.booleans()):
            e |= 1 << 60
        e |= draw(st.sampled_from([0, 1 << 57, 1 << 58, 3 << 57, 1 << 58]))  # verify guest paging, paging-write
    if page and not leaf:
        e |= 1 << 7
    choices = _phys_reserved_bits(b.maxphy)
    if not (page or leaf):
        choices += [3, 4, 5, 6] + ([7] if name in ("PML5E", "PML4E") else [])
    e |= b.junk_reserved(choices)
    e |= draw(st.sampled_from([0, 0, 1 << 11, 1 << 52, 1 << 62]))  # ignored bits
    return e


def ept_map(b: _Builder, cfg: ref.EptCfg, gpa: int) -> int | None:
    """Make (or reuse) an EPT path for ``gpa``; the host-physical address it maps to, if the
    path as built maps it (None if an entry on it is not present)."""
    walk5 = ref.bits(cfg.eptp, 5, 3) == 4
    depths = [5, 4, 3, 2, 1] if walk5 else [4, 3, 2, 1]
    names = {5: "PML5E", 4: "PML4E", 3: "PDPTE", 2: "PDE", 1: "PTE"}
    table = cfg.eptp & ~0xFFF
    for depth in depths:
        shift = 12 + 9 * (depth - 1)
        a = table + ((gpa >> shift) & 511) * 8
        e = b.mem.read(a, 8)
        if e == 0:
            can_page = (depth == 2 and cfg.pde_2mb) or (depth == 3 and cfg.pdpte_1gb)
            page = depth == 1 or (can_page and b.draw(st.integers(0, 3)) == 0)
            addr = b.frame(1 << shift) if page else b.ept_table()
            e = _ept_entry(b, cfg, leaf=depth == 1, page=page, addr=addr, name=names[depth])
            b.mem.write(a, 8, e)
        present = (e & 7) or (cfg.mbec and ref.bit(e, 10))
        if not present:
            return None
        is_page = depth == 1 or (ref.bit(e, 7) and ((depth == 2 and cfg.pde_2mb) or (depth == 3 and cfg.pdpte_1gb)))
        if is_page:
            size = 1 << shift
            return (e & ((1 << 52) - 1) & ~(size - 1)) | (gpa & (size - 1))
        table = e & ((1 << 52) - 1) & ~0xFFF
    return None


def _guest_entry(b: _Builder, mode: str, name: str, *, leaf_level: bool, can_page: bool, next_table: int,
                 maxphy: int, nxe: bool) -> int:
    draw = b.draw
    e = b.pick([1], [1, 1, 1, 0])
    e |= b.pick([2], [0, 2]) | b.pick([4, 4, 4, 0], [0]) | draw(st.sampled_from([0, 8, 16, 24]))
    e |= draw(st.sampled_from([0, 0x20, 0x20, 0x60]))
    size8 = mode != "32bit"
    page = leaf_level or (can_page and draw(st.integers(0, 2)) == 0)
    if page and not leaf_level:
        e |= 0x80
    if leaf_level and draw(st.booleans()):
        e |= 0x80  # PAT
    if page:
        e |= draw(st.sampled_from([0, 0x100]))
        lo = {"PTE": 12, "PDE": 22 if mode == "32bit" else 21, "PDPTE": 30}[name]
        limit = min(maxphy, 32 if mode == "32bit" else maxphy)
        frame = draw(st.integers(0, (1 << (limit - lo)) - 1)) << lo
        e |= frame
        if mode == "32bit" and name == "PDE":
            e |= draw(st.integers(0, 255)) << 13 if draw(st.integers(0, 3)) == 0 else 0
    else:
        e |= next_table
    if size8:
        if draw(st.booleans()):
            e |= 1 << 63 if nxe or draw(st.integers(0, 4)) == 0 else 0
        e |= draw(st.integers(0, 15)) << 59
        reserved = _phys_reserved_bits(maxphy)
        if page and name == "PDE":
            reserved += list(range(13, 21))
        if page and name == "PDPTE":
            reserved += list(range(13, 30))
        if name in ("PML4E", "PML5E"):
            reserved += [7]
        e |= b.junk_reserved(reserved)
    elif name == "PDE" and page:
        e |= b.junk_reserved([21])
    return e & ((1 << (64 if size8 else 32)) - 1)


@st.composite
def scenarios(draw: st.DrawFn, *, with_ept: bool) -> Scenario:  # noqa: PLR0915 - one recipe, read top down
    """A guest state, page tables along the path of one linear address, and an access."""
    maxphy = draw(st.sampled_from([36, 39, 46, 52]))
    gb = draw(st.booleans())
    mode = draw(st.sampled_from(["none", "32bit", "pae", "4level", "4level", "5level"]))
    nxe = draw(st.booleans())
    cr0 = 0x11 | (draw(st.booleans()) << 16) | ((mode != "none") << 31)
    cr4 = ((draw(st.booleans()) << 4) | (draw(st.booleans()) << 7) | (draw(st.booleans()) << 20)
           | (draw(st.booleans()) << 21) | (draw(st.booleans()) << 22))
    efer = nxe << 11
    if mode in ("pae", "4level", "5level"):
        cr4 |= 1 << 5
    if mode in ("4level", "5level"):
        efer |= (1 << 8) | (1 << 10)
    if mode == "5level":
        cr4 |= 1 << 12
    if mode in ("4level", "5level"):
        width = 57 if mode == "5level" else 48
        low = draw(st.integers(0, (1 << (width - 1)) - 1))
        gla = low if draw(st.booleans()) else ((1 << 64) - (1 << (width - 1))) | low
        if draw(st.integers(0, 29)) == 0:
            gla ^= 1 << (width + 1)  # non-canonical
    else:
        gla = draw(st.integers(0, (1 << 32) - 1))
    cpl3 = draw(st.booleans())
    kind = draw(st.sampled_from(KINDS))
    shadow_stack = kind != "fetch" and draw(st.integers(0, 4)) == 0
    access = ref.Acc(kind, user=cpl3, implicit=(not cpl3) and not shadow_stack and draw(st.integers(0, 4)) == 0,
                     nmi=draw(st.booleans()), ss=shadow_stack, asynchronous=draw(st.integers(0, 4)) == 0,
                     size=draw(st.sampled_from([1, 1, 1, 2, 4, 8])))
    if draw(st.integers(0, 5)) == 0:
        gla = gla | 0xFFF  # the last byte of a page: a wider access crosses into the next
    rflags = 2 | (draw(st.booleans()) << 18)
    pkru = draw(st.integers(0, (1 << 32) - 1))
    pat = draw(st.sampled_from([ref.PAT_RESET, 0x0001050406070400, 0x0606060606060606]))
    cr0 |= (draw(st.integers(0, 7)) == 0) << 30  # CR0.CD: memory type UC
    ept_cfg, b = draw(ept_configs(maxphy)) if with_ept else (None, _Builder(draw, maxphy))

    pages = iter(draw(st.permutations(list(GUEST_TABLE_PAGES))))
    guest_tables: list[int] = []
    levels = ref.guest_levels(ref.Guest(cr0, 0, cr4, efer))[1] if mode != "none" else []
    pdptes = None
    if mode == "pae":
        cr3 = next(pages) * ref.PAGE + 32 * draw(st.integers(0, 3))
        guest_tables.append(cr3 & ~0xFFF)
    elif mode != "none":
        cr3 = next(pages) * ref.PAGE | draw(st.sampled_from([0, 8, 0x10]))
        guest_tables.append(cr3 & ~0xFFF)
    else:
        cr3 = 0
    # entries along the path of gla
    writes: list[tuple[int, int, int]] = []  # (gpa, size, value)
    table = cr3 & ~0x1F if mode == "pae" else cr3 & ~0xFFF
    for i, (name, lo, nbits) in enumerate(levels):
        size8 = mode != "32bit"
        idx = (gla >> lo) & ((1 << nbits) - 1)
        gpa = table + idx * (8 if size8 else 4)
        nxt = next(pages) * ref.PAGE
        leaf_level = i == len(levels) - 1
        if mode == "pae" and name == "PDPTE":
            e = b.pick([1], [1, 1, 0]) | draw(st.sampled_from([0, 8, 16])) | nxt
            pdpt = [0, 0, 0, 0]
            pdpt[idx] = e
            for j in range(4):
                writes.append((table + 8 * j, 8, pdpt[j]))
            pdptes = tuple(pdpt)
            table = nxt
            guest_tables.append(nxt)
            continue
        can_page = name == "PDE" or (name == "PDPTE" and mode in ("4level", "5level"))
        e = _guest_entry(b, mode, name, leaf_level=leaf_level, can_page=can_page, next_table=nxt, maxphy=maxphy,
                         nxe=nxe)
        writes.append((gpa, 8 if size8 else 4, e))
        if not leaf_level:
            guest_tables.append(nxt)
        table = nxt
    guest = ref.Guest(cr0, cr3, cr4, efer, rflags, pkru, pdptes if (with_ept and mode == "pae") else None, pat)
    # place guest tables (through EPT when in use)
    for gpa, size, value in writes:
        hpa = gpa
        if ept_cfg is not None:
            mapped = ept_map(b, ept_cfg, gpa)
            if mapped is None:
                continue
            hpa = mapped
        b.mem.write(hpa, size, value)
    if ept_cfg is not None:
        # map where the walk may end: the final page of a complete guest walk, or gla itself
        g_ok, _, _ = ref.translate(guest, maxphy, gb, None, _GpaOnly(b.mem, ept_cfg, maxphy), gla,
                                      ref.Acc("read", False))
        final = g_ok[1] if g_ok[0] == "ok" else None
        if final is not None and final < (1 << maxphy):
            ept_map(b, ept_cfg, final)
    return Scenario(guest, maxphy, gb, gla, access, ept_cfg, {n: bytes(p) for n, p in b.mem.pages.items()})


class _GpaOnly(ref.Mem):
    """Reads guest-physical memory by following the EPT as built (no checks), to find where a
    guest walk ends."""

    def __init__(self, host: ref.Mem, cfg: ref.EptCfg, maxphy: int) -> None:
        super().__init__({})
        self.host, self.cfg, self.maxphy = host, cfg, maxphy

    def read(self, addr: int, size: int) -> int:
        w = ref.ept_walk(self.cfg, self.maxphy, self.host, addr, [])
        return self.host.read(w[1], size) if w[0] == "ok" else 0

    def set_bits(self, addr: int, size: int, bits: int) -> None:
        return None


# ---------------------------------------------------------------------------- running vtx on a scenario

@functools.cache
def ept_capabilities(exec_only: bool, pde_2mb: bool, pdpte_1gb: bool, advanced: bool, maxphy: int) -> Capabilities:
    """The ``max`` profile with the EPT capabilities of a scenario."""
    caps = load_preset("max")
    value = caps.msr("IA32_VMX_EPT_VPID_CAP") or 0
    for name, on in (("execute_only", exec_only), ("pde_2mb", pde_2mb), ("pdpte_1gb", pdpte_1gb),
                     ("advanced_exit_info", advanced)):
        field_mask = CAPABILITY_MSRS["IA32_VMX_EPT_VPID_CAP"].field(name).mask
        value = value | field_mask if on else value & ~field_mask
    return caps.overlay({"IA32_VMX_EPT_VPID_CAP": value, "MAXPHYADDR": maxphy}, name="scenario")


def vtx_inputs(sc: Scenario) -> tuple[PagingState, PagingFeatures, PhysicalMemory, Access, Ept | None]:
    g = sc.guest
    state = PagingState(g.cr0, g.cr3, g.cr4, g.efer, g.rflags, g.pkru, g.pdptes, g.pat)
    a = sc.access
    access = Access(AccessKind(a.kind), user=a.user, implicit=a.implicit, nmi_unblocking=a.nmi, shadow_stack=a.ss,
                    asynchronous=a.asynchronous, size=a.size)
    ept = None
    if sc.ept is not None:
        c = sc.ept
        caps = ept_capabilities(c.exec_only, c.pde_2mb, c.pdpte_1gb, c.advanced, sc.maxphy)
        mbec = get_control("proc2", "mode_based_execute_control_for_ept").mask if c.mbec else 0
        tertiary = ((get_control("proc3", "ept_paging_write_control").mask if c.paging_write else 0)
                    | (get_control("proc3", "guest_paging_verification").mask if c.gpv else 0))
        ept = ept_from_eptp(c.eptp, caps, secondary_controls=mbec, tertiary_controls=tertiary)
    return state, PagingFeatures(sc.maxphy, sc.gb_pages), PhysicalMemory.from_pages(sc.mem), access, ept


def run_vtx(sc: Scenario) -> tuple[tuple[object, ...], list[tuple[str, int, int, int]], PhysicalMemory]:
    """vtx's outcome in the reference's tuple form, its references and its final memory."""
    state, features, memory, access, ept = vtx_inputs(sc)
    if ept is None:
        out = guest.translate(state, features, memory, sc.gla, access)
    else:
        out = walk2d.translate(state, features, memory, sc.gla, access, ept=ept)
    refs = [(r.space.value, r.level, r.address, r.value) for r in out.references]
    return as_tuple(out), refs, out.memory


def as_tuple(out: Outcome) -> tuple[object, ...]:
    if isinstance(out, Translated):
        second = () if out.second is None else (as_tuple(out.second),)
        return ("ok", out.gpa, out.hpa, out.page_size, out.memory_type, *second)
    if isinstance(out, PageFault):
        return ("pf", out.error_code, out.address)
    if isinstance(out, EptViolation):
        return ("ept_violation", out.qualification, out.gpa, out.gla)
    if isinstance(out, EptMisconfig):
        return ("ept_misconfig", out.gpa)
    if isinstance(out, GeneralProtection):
        return ("gp",)
    raise AssertionError(out)


def run_reference(sc: Scenario) -> tuple[tuple[object, ...], list[tuple[str, int, int, int]], ref.Mem]:
    mem = ref.Mem({n: bytearray(p) for n, p in sc.mem.items()})
    return ref.translate(sc.guest, sc.maxphy, sc.gb_pages, sc.ept, mem, sc.gla, sc.access)


def same_memory(a: PhysicalMemory, b: ref.Mem) -> bool:
    zero = bytes(ref.PAGE)
    numbers = set(a.pages) | set(b.pages)
    return all(a.pages.get(n, zero) == bytes(b.pages.get(n, zero)) for n in numbers)
