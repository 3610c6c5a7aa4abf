"""What each design puts in its VMCSs, and how a classic PV guest reaches the hypervisor
(``spec/machine/designs.toml``), plus the MSR and I/O bitmaps those choices need.

The bitmaps follow SDM Vol. 3C §26.6.4 "I/O-Bitmap Addresses" (bitmap A for ports 0000H-7FFFH,
B for 8000H-FFFFH, one bit per port, 1 = exit) and §26.6.9 "MSR-Bitmap Address" (one 4-KByte
page: read bitmaps for 00000000H-00001FFFH and C0000000H-C0001FFFH, then the two write bitmaps;
1 = exit), with the ranges and offsets of ``spec/vmx/exit_causes.toml``. Both real designs start
from all ones (every access exits) and clear the bits of what they pass through.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import attrs

from vtx.errors import SpecError
from vtx.paging.formats import PAGE_SIZE
from vtx.spec import Control, _Table, get_control
from vtx.typecheck import checked
from vtx.vmx.exits.causes import IO_BITMAP_A, IO_BITMAP_B, MSR_HIGH, MSR_LOW, MSR_OFFSETS, VECTORS

DESIGNS_TABLE = "machine/designs.toml"
MECHANISMS = ("native", "trap", "hypercall")
ACCESS = {"r": (True, False), "rw": (True, True)}


@attrs.frozen
class MsrGrant:
    """An MSR a design lets the guest read (and, with ``write``, write) without a VM exit."""

    name: str
    index: int
    read: bool
    write: bool
    origin: str


@attrs.frozen
class DesignChoices:
    """One design's VMCS choices: the controls it sets, the VM kinds it runs, the MSRs and ports it
    passes through, and where the real system makes these choices."""

    name: str
    controls: tuple[Control, ...]
    kinds: tuple[str, ...]
    msrs: tuple[MsrGrant, ...]
    ports: frozenset[int]
    origin: str
    unsure: bool

    def uses(self, field: str, name: str) -> bool:
        return get_control(field, name) in self.controls


@attrs.frozen
class PvOp:
    """How a classic PV guest kernel performs one program operation."""

    op: str
    mechanism: str
    vector: int | None
    hypercall: str | None
    origin: str
    unsure: bool


def _control(ref: str, where: str) -> Control:
    field, _, name = ref.partition(".")
    try:
        return get_control(field, name)
    except SpecError as e:
        raise SpecError(where, ref, "controls name <field>.<control> of spec/vmx/controls.toml") from e


def _in_range(index: int) -> bool:
    return any(r.lo <= index <= r.hi for r in (MSR_LOW, MSR_HIGH))


@checked
def load_choices(relpath: str = DESIGNS_TABLE) -> tuple[Mapping[str, DesignChoices], Mapping[str, PvOp]]:
    """The designs' choices by name and the PV operations by op; SpecError naming the row for an
    unknown control, design, access, vector or mechanism, or an MSR no bitmap covers."""
    t = _Table(relpath)
    msrs: dict[str, list[MsrGrant]] = {}
    for r in t.rows("msr"):
        where = f"{relpath} [[msr]] {r.get('design')}/{r.get('name')}"
        t.cite("msr", r)
        if r.get("access") not in ACCESS or not _in_range(r.get("index", -1)):
            raise SpecError(where, (r.get("access"), r.get("index")),
                            "access is r or rw and the index lies in a range the MSR bitmap covers (SDM §26.6.9)")
        read, write = ACCESS[r["access"]]
        msrs.setdefault(r["design"], []).append(MsrGrant(r["name"], r["index"], read, write, r["origin"]))
    ports: dict[str, set[int]] = {}
    for r in t.rows("port"):
        if not IO_BITMAP_A.lo <= r.get("port", -1) <= IO_BITMAP_B.hi:
            raise SpecError(f"{relpath} [[port]] {r.get('design')}", r.get("port"), "a port is 0000H-FFFFH")
        ports.setdefault(r["design"], set()).add(r["port"])
    designs: dict[str, DesignChoices] = {}
    for r in t.rows("design"):
        where = f"{relpath} [[design]] {r['name']}"
        controls = tuple(_control(c, where) for c in r["controls"])
        designs[r["name"]] = DesignChoices(r["name"], controls, tuple(r["kinds"]), tuple(msrs.pop(r["name"], ())),
                                           frozenset(ports.pop(r["name"], ())), r["origin"],
                                           bool(r.get("unsure", False)))
    if msrs or ports:
        raise SpecError(relpath, sorted({*msrs, *ports}), "[[msr]] and [[port]] rows must name a [[design]]")
    for d in designs.values():
        if d.ports and not d.uses("proc", "use_io_bitmaps"):
            raise SpecError(f"{relpath} [[design]] {d.name}", sorted(d.ports),
                            "ports pass through only with I/O bitmaps")
        if d.msrs and not d.uses("proc", "use_msr_bitmaps"):
            raise SpecError(f"{relpath} [[design]] {d.name}", [m.name for m in d.msrs],
                            "MSRs pass through only with MSR bitmaps")
    ops: dict[str, PvOp] = {}
    for r in t.rows("pv_op"):
        where = f"{relpath} [[pv_op]] {r.get('op')}"
        mechanism = r.get("mechanism")
        vector = r.get("vector")
        if mechanism not in MECHANISMS or (mechanism == "trap") != (vector in VECTORS) or (
                mechanism == "hypercall") != bool(r.get("hypercall")):
            raise SpecError(where, mechanism, "mechanism is native, trap (with a vector of exit_causes.toml "
                            "[vectors]) or hypercall (with a hypercall name)")
        ops[r["op"]] = PvOp(r["op"], mechanism, VECTORS[vector] if vector else None, r.get("hypercall"), r["origin"],
                            bool(r.get("unsure", False)))
    return designs, ops


CHOICES, PV_OPS = load_choices()


# ------------------------------------------------------------------ bitmaps


def _clear(page: bytearray, bit: int) -> None:
    page[bit // 8] &= ~(1 << (bit % 8)) & 0xFF


@checked
def msr_bitmap(grants: Iterable[MsrGrant]) -> bytes:
    """The 4-KByte MSR bitmap that makes every RDMSR / WRMSR exit except the granted ones."""
    page = bytearray(b"\xff" * PAGE_SIZE)
    for g in grants:
        rng, half = (MSR_LOW, "low") if MSR_LOW.lo <= g.index <= MSR_LOW.hi else (MSR_HIGH, "high")
        for kind, allowed in (("read", g.read), ("write", g.write)):
            if allowed:
                _clear(page, MSR_OFFSETS[f"{kind}_{half}"] * 8 + g.index - rng.lo)
    return bytes(page)


@checked
def io_bitmaps(ports: Iterable[int]) -> tuple[bytes, bytes]:
    """I/O bitmaps A and B that make every port access exit except to the granted ports."""
    a, b = bytearray(b"\xff" * PAGE_SIZE), bytearray(b"\xff" * PAGE_SIZE)
    for port in ports:
        if port <= IO_BITMAP_A.hi:
            _clear(a, port - IO_BITMAP_A.lo)
        else:
            _clear(b, port - IO_BITMAP_B.lo)
    return bytes(a), bytes(b)


__all__ = ["CHOICES", "PV_OPS", "DesignChoices", "MsrGrant", "PvOp", "io_bitmaps", "load_choices", "msr_bitmap"]
