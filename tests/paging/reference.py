"""A deliberately simple, independent reference walker for the paging tests.

Written from the SDM's prose, not from vtx's tables or code: bit positions are literals here,
each mode is spelled out, memory is a plain dict of bytearrays, and nothing is precompiled.
Its results are compared with vtx.paging's in the property tests. It returns plain tuples:

    ("ok", gpa, hpa, page_size, memory_type) | ("pf", error_code, gla) | ("gp",)
    | ("ept_violation", qualification, gpa, gla) | ("ept_misconfig", gpa)

together with the references made as (space, level, address, value) and the final memory.
``memory_type`` is the effective memory type under EPT (None without). An access whose bytes
cross a page boundary is two accesses, first page first; the result is the first part's "ok"
with the second's appended, or the first fault.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PAGE = 4096


@dataclass
class Mem:
    pages: dict[int, bytearray] = field(default_factory=dict)

    def read(self, addr: int, size: int) -> int:
        out = 0
        for i in range(size):
            a = addr + i
            page = self.pages.get(a // PAGE)
            byte = page[a % PAGE] if page is not None else 0
            out |= byte << (8 * i)
        return out

    def write(self, addr: int, size: int, value: int) -> None:
        for i in range(size):
            a = addr + i
            page = self.pages.setdefault(a // PAGE, bytearray(PAGE))
            page[a % PAGE] = (value >> (8 * i)) & 0xFF

    def set_bits(self, addr: int, size: int, bits: int) -> None:
        old = self.read(addr, size)
        if old | bits != old:
            self.write(addr, size, old | bits)


def bit(v: int, n: int) -> int:
    return (v >> n) & 1


def bits(v: int, hi: int, lo: int) -> int:
    return (v >> lo) & ((1 << (hi - lo + 1)) - 1)


def addr_mask(maxphy: int) -> int:
    """Bits 51:12 below MAXPHYADDR."""
    return ((1 << maxphy) - 1) & ~0xFFF


PAT_RESET = 0x0007040600070406  # SDM Vol. 3A 12.12.4: WB WT UC- UC WB WT UC- UC

# SDM Vol. 3A Table 12-7, MTRR (here: EPT) type -> {PAT type: effective type}
COMBINE = {
    "UC": {"UC": "UC", "UC-": "UC", "WC": "WC", "WT": "UC", "WB": "UC", "WP": "UC"},
    "WC": {"UC": "UC", "UC-": "WC", "WC": "WC", "WT": "UC", "WB": "WC", "WP": "UC"},
    "WT": {"UC": "UC", "UC-": "UC", "WC": "WC", "WT": "WT", "WB": "WT", "WP": "WP"},
    "WB": {"UC": "UC", "UC-": "UC", "WC": "WC", "WT": "WT", "WB": "WB", "WP": "WP"},
    "WP": {"UC": "UC", "UC-": "WC", "WC": "WC", "WT": "WT", "WB": "WP", "WP": "WP"},
}
TYPE_NAMES = {0: "UC", 1: "WC", 4: "WT", 5: "WP", 6: "WB", 7: "UC-"}


@dataclass
class Guest:
    cr0: int
    cr3: int
    cr4: int
    efer: int
    rflags: int = 2
    pkru: int = 0
    pdptes: tuple[int, ...] | None = None
    pat: int = PAT_RESET


@dataclass
class Acc:
    kind: str  # read / write / fetch
    user: bool
    implicit: bool = False
    nmi: bool = False
    ss: bool = False  # a shadow-stack access (read or write)
    asynchronous: bool = False
    size: int = 1


@dataclass
class EptCfg:
    eptp: int
    exec_only: bool = True
    pde_2mb: bool = True
    pdpte_1gb: bool = True
    advanced: bool = True
    mbec: bool = False
    paging_write: bool = False  # the "EPT paging-write control"
    gpv: bool = False  # the "guest-paging verification" control


class Stop(Exception):  # noqa: N818 - control flow inside the reference only
    def __init__(self, result: tuple[object, ...]) -> None:
        self.result = result


# ---------------------------------------------------------------------------- guest paging

def guest_levels(g: Guest) -> tuple[str, list[tuple[str, int, int]]]:
    """(mode, [(name, index_lo, index_bits)]) per SDM 5.3 / 5.4 / 5.5."""
    if not bit(g.cr4, 5):
        return "32bit", [("PDE", 22, 10), ("PTE", 12, 10)]
    if not bit(g.efer, 8):
        return "pae", [("PDPTE", 30, 2), ("PDE", 21, 9), ("PTE", 12, 9)]
    top = [("PML5E", 48, 9)] if bit(g.cr4, 12) else []
    return ("5level" if top else "4level"), [*top, ("PML4E", 39, 9), ("PDPTE", 30, 9), ("PDE", 21, 9),
                                             ("PTE", 12, 9)]


def guest_walk(g: Guest, maxphy: int, gb: bool, gla: int, read_entry) -> tuple:  # type: ignore[no-untyped-def]  # noqa: PLR0915
    """Returns ("pf", present, rsvd) or ("walk", gpa, size, user, rw, xd, leaf, entries)."""
    mode, levels = guest_levels(g)
    nxe = bool(bit(g.efer, 11))
    size8 = mode != "32bit"
    rsvd_phys = ((1 << 52) - 1) & ~((1 << maxphy) - 1) if size8 else 0
    user = rw = 1
    upper_rw = 1
    xd = 0
    entries = []
    if mode == "32bit":
        table = g.cr3 & 0xFFFFF000
    elif mode == "pae":
        table = None
    else:
        table = g.cr3 & addr_mask(maxphy)
    for depth_index, (name, lo, nbits) in enumerate(levels):
        depth = len(levels) - depth_index
        idx = (gla >> lo) & ((1 << nbits) - 1)
        if mode == "pae" and name == "PDPTE" and g.pdptes is not None:
            e = g.pdptes[idx]
            if not e & 1:
                return ("pf", 0, 0)
            table = e & addr_mask(maxphy)
            continue
        if mode == "pae" and name == "PDPTE":
            table = g.cr3 & 0xFFFFFFE0
        assert table is not None
        gpa = table + idx * (8 if size8 else 4)
        e = read_entry(gpa, depth, name)
        entries.append((depth, name, gpa, e))
        if not e & 1:
            return ("pf", 0, 0)
        if mode == "pae" and name == "PDPTE":
            # PDPTEs read during the walk (AMD nested paging): bits 2:1, 8:5, 63, 51:M reserved
            if e & 0x1E6 or bit(e, 63) or e & rsvd_phys:
                return ("pf", 1, 1)
            table = e & addr_mask(maxphy)
            entries[-1] = (depth, name, gpa, e, "norights")
            continue
        ps = bit(e, 7)
        if mode == "32bit":
            large = name == "PDE" and ps and bit(g.cr4, 4)
            is_page = name == "PTE" or large
            if large:
                m = min(maxphy, 40)
                # bit 21 reserved; bits 20:13 carry PA bits 39:32, those at or above M reserved
                r = (1 << 21)
                for b in range(13, 21):
                    if b - 13 + 32 >= m:
                        r |= 1 << b
                if e & r:
                    return ("pf", 1, 1)
        else:
            r = rsvd_phys
            if not nxe:
                r |= 1 << 63
            if name in ("PML5E", "PML4E"):
                r |= 1 << 7
                is_page = False
            elif name == "PDPTE":
                if ps and not gb:
                    r |= 1 << 7
                    is_page = False
                else:
                    is_page = bool(ps)
                    if is_page:
                        r |= ((1 << 30) - 1) & ~((1 << 13) - 1)
            elif name == "PDE":
                is_page = bool(ps)
                if is_page:
                    r |= ((1 << 21) - 1) & ~((1 << 13) - 1)
            else:
                is_page = True
            if e & r:
                return ("pf", 1, 1)
        user &= bit(e, 2)
        rw &= bit(e, 1)
        if size8 and nxe:
            xd |= bit(e, 63)
        if is_page:
            if mode == "32bit" and name == "PDE":
                frame = (e & 0xFFC00000) | (bits(e, 20, 13) << 32)
                frame &= (1 << maxphy) - 1
                size = 1 << 22
            else:
                size = 1 << lo
                frame = e & addr_mask(maxphy) & ~(size - 1) if size8 else e & 0xFFFFF000
            return ("walk", frame | (gla & (size - 1)), size, user, rw, xd, e, entries, upper_rw,
                    name == "PTE")
        upper_rw = rw
        table = (e & addr_mask(maxphy)) if size8 else (e & 0xFFFFF000)
    raise AssertionError


def guest_rights(g: Guest, mode: str, w: tuple, acc: Acc) -> tuple[bool, bool]:  # type: ignore[type-arg]
    """(allowed, pk) per SDM 5.6."""
    _, _, _, user, rw, xd, leaf, _, upper_rw, _ = w
    wp, smep, smap, ac = bit(g.cr0, 16), bit(g.cr4, 20), bit(g.cr4, 21), bit(g.rflags, 18)
    if acc.kind == "fetch":
        if xd:
            return False, False
        if acc.user:
            return bool(user), False
        return not (user and smep), False
    pk = False
    if acc.ss:
        # shadow-stack page: leaf R/W = 0 and D = 1, R/W = 1 above; U/S must match the mode
        ss_page = upper_rw and not bit(leaf, 1) and bit(leaf, 6)
        ok = bool(ss_page) and bool(user) == acc.user
    if mode in ("4level", "5level") and bit(g.cr4, 22) and user:
        key = bits(leaf, 62, 59)
        ad, wd = bit(g.pkru, 2 * key), bit(g.pkru, 2 * key + 1)
        if ad or (wd and acc.kind == "write" and (acc.user or wp)):
            pk = True
    if acc.ss:
        pass
    elif acc.user:
        ok = bool(user) and (acc.kind == "read" or bool(rw))
    else:
        ok = True
        if user and smap and (acc.implicit or not ac):
            ok = False
        if acc.kind == "write" and wp and not rw:
            ok = False
    return ok and not pk, pk


def pf_code(g: Guest, acc: Acc, present: int, rsvd: int, pk: bool) -> int:
    code = present | (2 if acc.kind == "write" else 0) | (4 if acc.user else 0) | (8 if rsvd else 0)
    if acc.kind == "fetch" and (bit(g.cr4, 20) or (bit(g.cr4, 5) and bit(g.efer, 11))):
        code |= 16
    if pk:
        code |= 32
    if acc.ss:
        code |= 64
    return code


def canonical_fault(g: Guest, gla: int) -> bool:
    if bit(g.efer, 10) or (bit(g.cr0, 31) and bit(g.cr4, 5) and bit(g.efer, 8)):
        w = 57 if bit(g.cr4, 12) else 48
        top = gla >> (w - 1)
        return top not in (0, (1 << (64 - w + 1)) - 1)
    return False


# ---------------------------------------------------------------------------- EPT

def ept_walk(cfg: EptCfg, maxphy: int, mem: Mem, gpa: int, refs: list) -> tuple:  # type: ignore[type-arg]
    """("fault", misconfig?, perms) or ("ok", hpa, size, perms, leaf, entry_addrs). perms = R|W|X|UX<<3."""
    walk5 = bits(cfg.eptp, 5, 3) == 4
    names = (["PML5E"] if walk5 else []) + ["PML4E", "PDPTE", "PDE", "PTE"]
    if gpa >> (57 if walk5 else 48):
        return ("fault", False, 0)
    table = cfg.eptp & addr_mask(maxphy)
    perms = 0xF
    addrs = []
    rsvd_phys = ((1 << 52) - 1) & ~((1 << maxphy) - 1)
    for i, name in enumerate(names):
        depth = len(names) - i
        shift = 12 + 9 * (depth - 1)
        a = table + ((gpa >> shift) & 511) * 8
        e = mem.read(a, 8)
        refs.append(("ept", depth, a, e))
        addrs.append(a)
        p = (e & 7) | ((bit(e, 10) << 3) if cfg.mbec else 0)
        perms &= p
        if p == 0:
            return ("fault", False, perms)
        if e & 3 == 2:
            return ("fault", True, perms)
        if e & 3 == 0 and not cfg.exec_only:
            return ("fault", True, perms)
        if e & rsvd_phys:
            return ("fault", True, perms)
        ps = bit(e, 7)
        if name == "PTE":
            page = True
        elif name == "PDE":
            page = bool(ps) and cfg.pde_2mb
        elif name == "PDPTE":
            page = bool(ps) and cfg.pdpte_1gb
        else:
            page = False
        if not page:
            if bits(e, 7, 3):
                return ("fault", True, perms)
            table = e & addr_mask(maxphy)
            continue
        size = 1 << shift
        if e & (size - 1) & ~0xFFF:
            return ("fault", True, perms)
        if bits(e, 5, 3) in (2, 3, 7):
            return ("fault", True, perms)
        return ("ok", (e & addr_mask(maxphy) & ~(size - 1)) | (gpa & (size - 1)), size, perms, e, addrs)
    raise AssertionError


def ept_ok(cfg: EptCfg, perms: int, kind: str, user_addr: bool) -> bool:
    if kind == "read":
        return bool(perms & 1)
    if kind == "write":
        return bool(perms & 2)
    if cfg.mbec and user_addr:
        return bool(perms & 8)
    return bool(perms & 4)


def ept_qual(cfg: EptCfg, kind: str, perms: int, *, gla_valid: bool, final: bool, info: tuple[int, int, int],
             nmi: bool, as_write: bool, leaf: int | None, ss: bool = False, asynchronous: bool = False,
             gpv: bool = False) -> int:
    q = {"read": 1, "write": 2, "fetch": 4}[kind]
    if as_write:
        q = 3
    q |= (perms & 7) << 3
    if cfg.mbec and perms & 8:
        q |= 1 << 6
    if gla_valid:
        q |= 1 << 7
        if final:
            q |= 1 << 8
            if cfg.advanced:
                u, rw, xd = info
                q |= (u << 9) | (rw << 10) | (xd << 11)
    if nmi:
        q |= 1 << 12
    if ss and final:
        q |= 1 << 13
    if bit(cfg.eptp, 7) and leaf is not None and bit(leaf, 60):
        q |= 1 << 14
    if gpv:
        q |= 1 << 15
    if asynchronous:
        q |= 1 << 16
    return q


def ept_ad(cfg: EptCfg, mem: Mem, w: tuple, write: bool) -> None:  # type: ignore[type-arg]
    if not bit(cfg.eptp, 6):
        return
    addrs = w[5]
    for i, a in enumerate(addrs):
        mem.set_bits(a, 8, (1 << 8) | ((1 << 9) if write and i == len(addrs) - 1 else 0))


# ---------------------------------------------------------------------------- the whole access

def translate(g: Guest, maxphy: int, gb: bool, ept: EptCfg | None, mem: Mem, gla: int,  # noqa: PLR0917
              acc: Acc) -> tuple[tuple, list, Mem]:  # type: ignore[type-arg]
    in_first = PAGE - gla % PAGE
    if acc.size <= in_first:
        return translate_one(g, maxphy, gb, ept, mem, gla, acc)
    long_mode = bit(g.efer, 10) or (bit(g.cr0, 31) and bit(g.cr4, 5) and bit(g.efer, 8))
    nxt = (gla + in_first) % (1 << (64 if long_mode else 32))
    if canonical_fault(g, gla) or canonical_fault(g, nxt):
        return ("gp",), [], mem
    first, refs, mem = translate_one(g, maxphy, gb, ept, mem, gla, Acc(**{**acc.__dict__, "size": in_first}))
    if first[0] != "ok":
        return first, refs, mem
    second, refs2, mem = translate_one(g, maxphy, gb, ept, mem, nxt,
                                       Acc(**{**acc.__dict__, "size": acc.size - in_first}))
    return ((*first, second) if second[0] == "ok" else second), refs + refs2, mem


def memory_type(g: Guest, ept_leaf: int, guest_leaf: int | None, is_pte: bool) -> str:
    """SDM Vol. 3C 30.3.7.2 with Vol. 3A 12.12.3: UC under CR0.CD; EPT type if IPAT; else the
    EPT type combined with the PAT entry PAT:PCD:PWT selects (WB without guest paging)."""
    if bit(g.cr0, 30):
        return "UC"
    ept_type = TYPE_NAMES[bits(ept_leaf, 5, 3)]
    if bit(ept_leaf, 6):
        return ept_type
    if guest_leaf is None:
        return COMBINE[ept_type]["WB"]
    index = (bit(guest_leaf, 7 if is_pte else 12) << 2) | (bit(guest_leaf, 4) << 1) | bit(guest_leaf, 3)
    return COMBINE[ept_type][TYPE_NAMES[(g.pat >> (8 * index)) & 7]]


def translate_one(g: Guest, maxphy: int, gb: bool, ept: EptCfg | None, mem: Mem, gla: int,  # noqa: PLR0917, PLR0915
                  acc: Acc) -> tuple[tuple, list, Mem]:  # type: ignore[type-arg]
    refs: list[tuple[str, int, int, int]] = []
    if canonical_fault(g, gla):
        return ("gp",), refs, mem
    hpa_of: dict[int, tuple] = {}  # type: ignore[type-arg]
    table_leaves: list[int] = []  # EPT leaf of each guest paging-structure page read

    def paging_write_ok(perms: int, leaf: int) -> bool:
        # a processor write to a guest paging structure: W, or PW (bit 58) under the paging-write control
        return bool(perms & 2) or (ept is not None and ept.paging_write and bool(bit(leaf, 58)))

    def gpa_access(gpa: int, kind: str, final: bool, info: tuple[int, int, int], paging: bool) -> int:
        if ept is None:
            return gpa
        as_write = paging and bool(bit(ept.eptp, 6))
        w = ept_walk(ept, maxphy, mem, gpa, refs)
        if w[0] == "fault":
            if w[1]:
                raise Stop(("ept_misconfig", gpa))
            q = ept_qual(ept, kind, w[2], gla_valid=True, final=final, info=info, nmi=acc.nmi, as_write=as_write,
                         leaf=None, ss=acc.ss, asynchronous=acc.asynchronous)
            raise Stop(("ept_violation", q, gpa, gla))
        eff = "write" if as_write else kind
        if final and acc.ss and not acc.user and bit(ept.eptp, 7):
            # supervisor shadow-stack access under EPTP bit 7: R everywhere, W above the leaf, SSS in the leaf
            upper = [mem.read(a, 8) for a in w[5][:-1]]
            ok = all(e & 3 == 3 for e in upper) and bool(w[4] & 1) and bool(bit(w[4], 60))
        elif paging and as_write:
            ok = paging_write_ok(w[3], w[4])
        else:
            ok = ept_ok(ept, w[3], eff, bool(info[0]))
        if not ok:
            q = ept_qual(ept, kind, w[3], gla_valid=True, final=final, info=info, nmi=acc.nmi, as_write=as_write,
                         leaf=w[4], ss=acc.ss, asynchronous=acc.asynchronous)
            raise Stop(("ept_violation", q, gpa, gla))
        if final and ept.gpv and bit(w[4], 57) and not all(bit(t, 58) for t in table_leaves):
            q = ept_qual(ept, kind, w[3], gla_valid=True, final=True, info=info, nmi=acc.nmi, as_write=False,
                         leaf=w[4], ss=acc.ss, asynchronous=acc.asynchronous, gpv=True)
            raise Stop(("ept_violation", q, gpa, gla))
        ept_ad(ept, mem, w, eff == "write")
        hpa_of[gpa] = w
        if paging:
            table_leaves.append(w[4])
        return w[1]

    try:
        if not bit(g.cr0, 31):
            hpa = gpa_access(gla, acc.kind, True, (1, 1, 0), False)
            size = 4096 if ept is None else min(4096, hpa_of[gla][2])
            mt = None if ept is None else memory_type(g, hpa_of[gla][4], None, True)
            return ("ok", gla, hpa, size, mt), refs, mem
        mode, _ = guest_levels(g)
        size8 = mode != "32bit"
        if mode == "pae" and g.pdptes is None and ept is None:
            g = Guest(g.cr0, g.cr3, g.cr4, g.efer, g.rflags, g.pkru,
                      tuple(mem.read((g.cr3 & 0xFFFFFFE0) + 8 * i, 8) for i in range(4)), g.pat)

        def read_entry(gpa: int, depth: int, name: str) -> int:
            hpa = gpa_access(gpa, "read", False, (0, 0, 0), True)
            v = mem.read(hpa, 8 if size8 else 4)
            refs.append(("guest", depth, gpa, v))
            return v

        w = guest_walk(g, maxphy, gb, gla, read_entry)
        if w[0] == "pf":
            return ("pf", pf_code(g, acc, w[1], w[2], False), gla), refs, mem
        ok, pk = guest_rights(g, mode, w, acc)
        if not ok:
            return ("pf", pf_code(g, acc, 1, 0, pk), gla), refs, mem
        gpa, gsize = w[1], w[2]
        hpa = gpa_access(gpa, acc.kind, True, (w[3], w[4], w[5]), False)
        size = gsize if ept is None else min(gsize, hpa_of[gpa][2])
        entries = w[7]
        for i, ent in enumerate(entries):
            if len(ent) == 5:
                continue
            _, _, egpa, e = ent
            want = (1 << 5) | ((1 << 6) if acc.kind == "write" and i == len(entries) - 1 else 0)
            if e & want == want:
                continue
            if ept is not None:
                ew = hpa_of[egpa]
                if not paging_write_ok(ew[3], ew[4]):
                    q = ept_qual(ept, "write", ew[3], gla_valid=True, final=False, info=(0, 0, 0), nmi=acc.nmi,
                                 as_write=False, leaf=ew[4], asynchronous=acc.asynchronous)
                    raise Stop(("ept_violation", q, egpa, gla))
                ehpa = ew[1]
            else:
                ehpa = egpa
            mem.set_bits(ehpa, 8 if size8 else 4, want)
        mt = None if ept is None else memory_type(g, hpa_of[gpa][4], w[6], w[9])
        return ("ok", gpa, hpa, size, mt), refs, mem
    except Stop as s:
        return s.result, refs, mem
