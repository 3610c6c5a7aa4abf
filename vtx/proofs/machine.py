"""z3 proofs of the invariants of one concrete machine, for every guest-physical address, access
type, I/O port, MSR and PCID.

One conjunct per (VM or vCPU) and obligation; each lists the cases in which it fails (the host
owner that would be reached, the hypervisor structure, the grant exceeded, a table the encoding
does not cover) so that a refutation names the narrowest one. A refutation is decoded into a
guest-physical address and access (or port, MSR, tag pair) and replayed on the concrete model:
the EPT walker (:func:`vtx.paging.ept.translate_gpa`), the exit rules' bitmap lookups, or the TLB
model (:mod:`vtx.paging.tlb`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import attrs
import z3

from vtx.invariants.isolation import UNCONDITIONAL_IO, TlbTag, open_msrs, open_ports, vcpu_tag
from vtx.invariants.ownership import USE_IO_BITMAPS, USE_MSR_BITMAPS, Ownership, VcpuContext, VmContext, ownership
from vtx.invariants.partitioning import rights
from vtx.machine.designs import get_design
from vtx.machine.designs.pv import pv_translate
from vtx.machine.executor import run
from vtx.machine.layout import LAYOUT
from vtx.machine.model import Event, LinearAccess, Machine
from vtx.machine.scenario import ACCESS_BYTES
from vtx.machine.scenario import _instruction as _scenario_instruction
from vtx.paging import tlb as tlbm
from vtx.paging.ept import Ept, EptWalk, LinearInfo, R, W, X, translate_gpa, walk_ept
from vtx.paging.formats import PAGE_OFFSET_BITS, PAGE_SIZE
from vtx.paging.guest import AccessKind, PagingFeatures
from vtx.paging.memory import HostPhysAddr, PhysicalMemory
from vtx.paging.outcomes import Rights, Translated
from vtx.proofs.encoding import (
    ACCESS_KINDS,
    SymbolicWalk,
    allows,
    any_of,
    bv,
    encode_ept,
    encode_tables,
    in_range,
    nonzero,
    page_of,
    walk,
    walk_page_tables,
)
from vtx.proofs.result import TIMEOUT_MS, Case, Conjunct, ProofResult, prove_all
from vtx.spec import VMCS_FIELDS
from vtx.typecheck import checked
from vtx.vmx.exits import causes
from vtx.vmx.exits.rules import is_set
from vtx.vmx.vmcs import Vmcs

_F = VMCS_FIELDS
_RWX = R | W | X
_RIGHT = {AccessKind.READ: R, AccessKind.WRITE: W, AccessKind.FETCH: X}
_RIGHTS = {code: _RIGHT[kind] for code, kind in ACCESS_KINDS.items()}
"""The EPT permission bit each access code needs."""
Explain = Callable[[Case, Any], tuple[str, bool]]


def _num(model: Any, term: Any) -> int:
    return int(model.eval(term, model_completion=True).as_long())


# ------------------------------------------------------------------ EPT conjuncts


def _owners_cases(own: Ownership, vm: str, hpa: Any, bad: Any) -> list[Case]:
    """``bad`` split by who owns the host address reached: another VM, a hypervisor structure, nobody."""
    cases = []
    regions = []
    for p in own.partitions:
        if p.vm != vm:
            regions.append(in_range(hpa, p.base, p.size))
            cases.append(Case(f"{p.vm}'s partition", z3.And(bad, regions[-1])))
    for r in own.hypervisor:
        regions.append(in_range(hpa, r.base, r.size))
        cases.append(Case(f"hypervisor {r.kind} of {r.owner} at {r.base:#x}", z3.And(bad, regions[-1])))
    cases.append(Case("memory no VM owns", z3.And(bad, z3.Not(any_of(regions)))))
    return cases


def _allowed_here(own: Ownership, vm: str, hpa: Any, size: Any, right: Callable[[int], Any]) -> Any:
    """``hpa`` is in ``vm``'s partition or on a page granted to ``vm`` (4-KByte mapping) whose grant
    ``right`` accepts."""
    part = own.partition(vm)
    ok = [in_range(hpa, part.base, part.size)] if part is not None else []
    for g in own.grants_to(vm):
        ok.append(z3.And(page_of(hpa) == bv(g.hpa >> PAGE_OFFSET_BITS), size == bv(PAGE_SIZE), right(g.permissions)))
    return any_of(ok)


def _no_ept(c: VcpuContext) -> Explain:
    def explain(case: Case, model: Any) -> tuple[str, bool]:
        return f"{c.name}: {c.ept_problem}", True
    return explain


@attrs.frozen
class Walked:
    """A symbolic walk of one VM's translation structures with its variables and explainer."""

    tag: str
    walk: SymbolicWalk
    access: Any
    user: Any
    ept: Ept | None
    explain: Explain


def _walk_conjuncts(own: Ownership, ctx: VmContext, invariant: str, t: Walked) -> list[Conjunct]:
    """The obligations of ``invariant`` on one walk: every leaf in the partition or a grant
    (partitioning); every allowed access there, no leaf on hypervisor memory, and for a classic PV
    guest no writable mapping of one of its page-table frames (isolation)."""
    w = t.walk
    coverage = Case("table outside the encoding", z3.Not(w.covered))
    if invariant == "partitioning":
        def within(perms: int) -> Any:
            return (w.permissions & bv(_RWX & ~perms)) == bv(0)

        bad = z3.And(w.translated, z3.Not(_allowed_here(own, ctx.name, w.hpa, w.page_size, within)))
        return [Conjunct(f"{t.tag}.leaves", (coverage, *_owners_cases(own, ctx.name, w.hpa, bad)), w.translated,
                         t.explain, z3.Or(coverage.formula, bad))]

    def grant_right(perms: int) -> Any:
        return z3.Or([z3.And(t.access == k, z3.BoolVal(bool(perms & v))) for k, v in _RIGHTS.items()])

    reach = z3.And(w.translated, allows(t.ept, w.permissions, t.access, t.user), z3.ULE(t.access, bv(2, 2)))
    bad = z3.And(reach, z3.Not(_allowed_here(own, ctx.name, w.hpa, w.page_size, grant_right)))
    out = [Conjunct(f"{t.tag}.reach", (coverage, *_owners_cases(own, ctx.name, w.hpa, bad)), reach, t.explain,
                    z3.Or(coverage.formula, bad))]
    hyp = tuple(Case(f"hypervisor {r.kind} of {r.owner} at {r.base:#x}",
                     z3.And(w.translated, in_range(w.hpa, r.base, r.size))) for r in own.hypervisor)
    out.append(Conjunct(f"{t.tag}.hypervisor", (coverage, *hyp), w.translated, t.explain))
    if ctx.classic_pv:
        frames = any_of([page_of(w.hpa) == bv(f) for f in sorted(ctx.vm.page_tables)])
        forge = Case("writable page-table frame", z3.And(w.translated, nonzero(w.permissions & bv(W)), frames))
        out.append(Conjunct(f"{t.tag}.page_tables", (forge,), z3.And(w.translated, frames), t.explain))
    return out


def _ept_conjuncts(machine: Machine, own: Ownership, ctx: VmContext, invariant: str) -> list[Conjunct]:
    out = []
    for c in ctx.vcpus:
        if c.vmcs is not None and c.ept is None:
            out.append(Conjunct(f"{invariant}.{c.name}.ept", (Case("no usable EPT", z3.BoolVal(True)),),
                                z3.BoolVal(True), _no_ept(c)))
    access, user = z3.BitVec("access", 2), z3.Bool("user")
    for n, view in enumerate(ctx.views):
        enc = encode_ept(view, machine.memory)
        gpa = z3.BitVec("gpa", enc.address_bits)
        w = walk(enc, gpa)
        tag = f"{invariant}.{ctx.name}" + (f".ept{n}" if len(ctx.views) > 1 else "")
        explain = _ept_explainer(machine, own, ctx.name, ept=view.ept, gpa=gpa, access=access, user=user, w=w)
        out += _walk_conjuncts(own, ctx, invariant, Walked(tag, w, access, user, view.ept, explain))
    pt = ctx.page_table_view
    if pt is not None:
        gla = z3.BitVec("gla", pt.compiled.mode.linear_bits)
        w = walk_page_tables(pt.compiled, pt.root, encode_tables(pt.tables, machine.memory), gla)
        explain = _pt_explainer(machine, own, ctx, gla=gla, access=access, w=w)
        out += _walk_conjuncts(own, ctx, invariant, Walked(f"{invariant}.{ctx.name}.page_tables", w, access, user,
                                                           None, explain))
    return out


def _decoded(case: Case, model: Any, *, address: Any, access: Any, w: Any) -> tuple[int, AccessKind, int, bool]:
    """A counterexample's address, access kind and host-physical address as the model gives them,
    and whether it is the encoding's own failure (a walk reading a table the encoding lacks)."""
    kind = ACCESS_KINDS.get(_num(model, access) % 4, ACCESS_KINDS[0])
    return _num(model, address), kind, _num(model, w.hpa), case.name == "table outside the encoding"


def _pt_explainer(machine: Machine, own: Ownership, ctx: VmContext, *, gla: Any, access: Any, w: Any) -> Explain:
    def explain(case: Case, model: Any) -> tuple[str, bool]:
        g, kind, hpa, incomplete = _decoded(case, model, address=gla, access=access, w=w)
        if incomplete:
            return f"{ctx.name}: the walk of {g:#x} reads a table the encoding lacks (encoding incomplete)", False
        out = pv_translate(machine.memory, PagingFeatures.from_capabilities(machine.caps), ctx.vm,
                           LinearAccess(g, kind))
        whose = ", ".join(o for o in own.owners(hpa, 1) if o != ctx.name) or "no other owner"
        text = (f"{ctx.name} (classic PV): linear {g:#x} ({kind.value}) maps machine {hpa:#x} "
                f"[{rights(_num(model, w.permissions))}], memory of {whose}; walker replay: {type(out).__name__}"
                + (f" hpa={out.hpa:#x}" if isinstance(out, Translated) else ""))
        leaf = next((m for m in ctx.page_tables if m.gpa <= g < m.gpa + m.size), None)
        return text, leaf is not None and leaf.hpa + g - leaf.gpa == hpa
    return explain


def _ept_explainer(machine: Machine, own: Ownership, vm: str, *, ept: Ept, gpa: Any, access: Any, user: Any,
                   w: Any) -> Explain:
    def explain(case: Case, model: Any) -> tuple[str, bool]:
        g, kind, hpa, incomplete = _decoded(case, model, address=gpa, access=access, w=w)
        if incomplete:
            return f"{vm}: the walk of gpa {g:#x} reads a table the encoding lacks (encoding incomplete)", False
        u = bool(model.eval(user, model_completion=True))
        concrete = translate_gpa(ept, machine.memory, g, kind, linear=LinearInfo(0, True, user=u))
        walked = walk_ept(ept, machine.memory, g, [])
        same = isinstance(walked, EptWalk) and walked.hpa == hpa
        if isinstance(concrete, Translated):
            same = same and concrete.hpa == hpa
        whose = ", ".join(o for o in own.owners(hpa, 1) if o != vm) or "no VM"
        perms = rights(walked.permissions) if isinstance(walked, EptWalk) else "?"
        text = (f"{vm}: guest-physical {g:#x} ({kind.value}{', user' if u and ept.mode_based_execute else ''}) "
                f"translates to host {hpa:#x} [{perms}], memory of {whose}; "
                f"walker replay: {type(concrete).__name__}" + (f" hpa={concrete.hpa:#x}"
                                                               if isinstance(concrete, Translated) else ""))
        event = replay_access(machine, vm, g, kind)
        if event is not None:
            text += f"; executor replay: {event.vcpu} {kind.value} at gva {g:#x} reached host {event.get('hpa'):#x}"
            same = same and event.get("hpa") == hpa
        return text, same
    return explain


REPLAY_STEPS = 200


def hlt_instruction() -> Any:
    return _scenario_instruction("hlt")


@checked
def replay_access(machine: Machine, vm: str, gpa: int, kind: AccessKind) -> Event | None:
    """Run ``vm``'s first vCPU on the executor with one guest access at linear address ``gpa``
    (the guest's identity paging maps it to the same guest-physical address) and every other vCPU
    idle; the ``access`` event it produces, if any (None: ``gpa`` is outside the identity-mapped
    range, the VM has no vCPU, or the access did not complete)."""
    target = next((v for v in machine.vms + ((machine.service,) if machine.service else ()) if v.name == vm), None)
    if target is None or not target.vcpus or gpa + ACCESS_BYTES > machine.layout.identity_bytes:
        return None
    program = (LinearAccess(gpa, kind, ACCESS_BYTES), hlt_instruction())
    for other in machine.vms + ((machine.service,) if machine.service else ()):
        for v in other.vcpus:
            mine = other.name == vm and v.index == 0
            machine = machine.with_vcpu(attrs.evolve(v, program=program if mine else (), pc=0, failed=None,
                                                     paused=False, waiting=False))
    _, trace = run(attrs.evolve(machine, tick=0.0), REPLAY_STEPS)
    return next((e for e in trace if e.kind == "access" and e.vcpu == f"{vm}.0"), None)


# ------------------------------------------------------------------ layout


def _layout_conjunct(own: Ownership) -> Conjunct:
    hpa = z3.BitVec("hpa", 64)
    parts = [p for p in own.partitions if p.size]
    cases = []
    for a, b in itertools.combinations(parts, 2):
        cases.append(Case(f"{a.vm} and {b.vm} overlap", z3.And(in_range(hpa, a.base, a.size),
                                                               in_range(hpa, b.base, b.size))))
    for p in parts:
        cases.append(Case(f"{p.vm} beyond the physical-address width",
                          z3.And(in_range(hpa, p.base, p.size), z3.UGE(hpa, bv(own.capacity)))))
        for r in own.hypervisor:
            cases.append(Case(f"{p.vm} contains the hypervisor's {r.kind} of {r.owner}",
                              z3.And(in_range(hpa, p.base, p.size), in_range(hpa, r.base, r.size))))
    vcpus = [c for ctx in own.vms for c in ctx.vcpus]
    for a2, b2 in itertools.combinations(vcpus, 2):
        cases.append(Case(f"vCPUs {a2.name} and {b2.name} share a VMCS",
                          z3.And(hpa == bv(a2.vmcs_addr), bv(a2.vmcs_addr) == bv(b2.vmcs_addr))))

    def explain(case: Case, model: Any) -> tuple[str, bool]:
        h = _num(model, hpa)
        owners = own.owners(h, 1)
        vmcs_owners = [c.name for c in vcpus if c.vmcs_addr == h]
        confirmed = len(owners) > 1 or h >= own.capacity or len(vmcs_owners) > 1
        return f"host {h:#x}: {case.name} (owners: {', '.join(owners + vmcs_owners) or 'none'})", confirmed

    witness = any_of([in_range(hpa, p.base, p.size) for p in parts])
    return Conjunct("partitioning.layout", tuple(cases), witness, explain)


# ------------------------------------------------------------------ TLB tags


def _tlb_conjunct(own: Ownership) -> Conjunct:
    tags = [t for ctx in own.vms for c in ctx.vcpus if (t := vcpu_tag(c)) is not None]
    pcid = z3.BitVec("pcid", 12)

    def effective(t: TlbTag) -> int:
        return t.tag if t.tagged else 0

    def serves(a: TlbTag, b: TlbTag) -> Any:
        """A translation cached while ``a`` ran (PCID ``pcid``) is usable while ``b`` runs with the same PCID."""
        same_kind = (a.ep4ta is None) == (b.ep4ta is None)
        return z3.And(z3.BoolVal(a.tagged), bv(effective(a), 16) == bv(effective(b), 16), z3.BoolVal(same_kind),
                      bv(a.ep4ta or 0) == bv(b.ep4ta or 0), z3.ULE(pcid, bv(0xFFF, 12)))

    cases = tuple(Case(f"{a.vcpu} -> {b.vcpu}", serves(a, b)) for a, b in itertools.permutations(tags, 2)
                  if a.vm != b.vm)

    def explain(case: Case, model: Any) -> tuple[str, bool]:
        a_name, b_name = case.name.split(" -> ")
        a = next(t for t in tags if t.vcpu == a_name)
        b = next(t for t in tags if t.vcpu == b_name)
        p = _num(model, pcid)
        return f"a translation cached by {a.vcpu} under PCID {p:#x} serves {b.vcpu}", _replay_tlb(a, b, p)

    witness = z3.Or([serves(t, t) for t in tags]) if tags else z3.BoolVal(False)
    return Conjunct("tlb_isolation.tags", cases, witness, explain)


def _replay_tlb(a: TlbTag, b: TlbTag, pcid: int) -> bool:
    """Cache a translation under ``a``'s tags in the TLB model, leave ``a`` (VM exit) and enter
    ``b`` (VM entry), and look the address up under ``b``'s tags."""
    tags_a = tlbm.Tags(a.tag if a.tagged else 0, pcid, a.ep4ta)
    tags_b = tlbm.Tags(b.tag if b.tagged else 0, pcid, b.ep4ta)
    entry = tlbm.CachedTranslation(tags_a.vpid, pcid, a.ep4ta, 0, PAGE_SIZE, 0, 0,
                                   Rights(True, True, False, 0, False, False))
    cache = tlbm.vmx_transition(tlbm.Tlb(frozenset({entry})), enable_vpid=a.tagged)
    cache = tlbm.vmx_transition(cache, enable_vpid=b.tagged)
    return bool(tlbm.lookup(cache, tags_b, 0))


# ------------------------------------------------------------------ I/O ports and MSRs


def _byte_array(data: bytes, width: int) -> Any:
    common = max(set(data), key=data.count) if data else 0
    array = z3.K(z3.BitVecSort(width), bv(common, 8))
    for i, byte in enumerate(data):
        if byte != common:
            array = z3.Store(array, bv(i, width), bv(byte, 8))
    return array


def _bit(array: Any, index: Any, width: int) -> Any:
    byte = z3.Select(array, z3.Extract(width + 2, 3, index))
    return nonzero(z3.LShR(byte, z3.ZeroExt(5, z3.Extract(2, 0, index))) & bv(1, 8))


def _member(value: Any, members: frozenset[int], width: int) -> Any:
    return any_of([value == bv(m, width) for m in sorted(members)])


def _page(memory: PhysicalMemory, address: int) -> bytes:
    return memory.read(HostPhysAddr(address), PAGE_SIZE)


def _grant_conjuncts(machine: Machine, own: Ownership) -> list[Conjunct]:
    design = get_design(machine.design)
    out = []
    a, b = causes.IO_BITMAP_A, causes.IO_BITMAP_B
    for ctx in own.vms:
        io, msrs = design.io_grants(ctx.vm), design.msr_grants(ctx.vm)
        for c in ctx.vcpus:
            if c.vmcs is not None:
                out.append(_io_conjunct(machine, c, c.vmcs, io, a=a, b=b))
                out.append(_msr_conjunct(machine, c, c.vmcs, msrs))
    return out


def _io_conjunct(machine: Machine, c: VcpuContext, vmcs: Vmcs, grants: frozenset[int], *, a: Any, b: Any) -> Conjunct:
    port = z3.BitVec("port", 16)
    if is_set(vmcs, USE_IO_BITMAPS):
        bitmap_a = _byte_array(_page(machine.memory, vmcs.get(_F["IO_BITMAP_A"])), 12)
        bitmap_b = _byte_array(_page(machine.memory, vmcs.get(_F["IO_BITMAP_B"])), 12)
        exits = z3.If(z3.ULE(port, bv(a.hi, 16)), _bit(bitmap_a, port - bv(a.lo, 16), 12),
                      _bit(bitmap_b, port - bv(b.lo, 16), 12))
    else:
        exits = z3.BoolVal(is_set(vmcs, UNCONDITIONAL_IO))
    bad = z3.And(z3.Not(exits), z3.Not(_member(port, grants, 16)))

    def explain(case: Case, model: Any) -> tuple[str, bool]:
        p = _num(model, port)
        return (f"{c.name} reaches I/O port {p:#x} without a VM exit; the design does not grant it",
                p in open_ports(vmcs, machine.memory) and p not in grants)

    sample = LAYOUT.device_port  # the encoding agrees with the exit rules at the device port
    witness = z3.And(port == bv(sample, 16), exits == z3.BoolVal(sample not in open_ports(vmcs, machine.memory)))
    return Conjunct(f"io_msr_grants.{c.name}.ports", (Case("ungranted port", bad),), witness, explain)


def _msr_conjunct(machine: Machine, c: VcpuContext, vmcs: Vmcs, grants: frozenset[int]) -> Conjunct:
    msr = z3.BitVec("msr", 32)
    write = z3.Bool("write")
    if is_set(vmcs, USE_MSR_BITMAPS):
        bitmap = _byte_array(_page(machine.memory, vmcs.get(_F["MSR_BITMAP"])), 12)
        offsets = causes.MSR_OFFSETS
        terms = []
        for rng, half in ((causes.MSR_LOW, "low"), (causes.MSR_HIGH, "high")):
            inside = z3.And(z3.UGE(msr, bv(rng.lo, 32)), z3.ULE(msr, bv(rng.hi, 32)))
            index = z3.Extract(14, 0, msr - bv(rng.lo, 32))
            bit = z3.If(write, _bit(bitmap, index + bv(offsets["write_" + half] * 8, 15), 12),
                        _bit(bitmap, index + bv(offsets["read_" + half] * 8, 15), 12))
            terms.append((inside, bit))
        exits = z3.If(terms[0][0], terms[0][1], z3.If(terms[1][0], terms[1][1], z3.BoolVal(True)))
    else:
        exits = z3.BoolVal(True)
    bad = z3.And(z3.Not(exits), z3.Not(_member(msr, grants, 32)))

    def explain(case: Case, model: Any) -> tuple[str, bool]:
        m = _num(model, msr)
        w = bool(model.eval(write, model_completion=True))
        reads, writes = open_msrs(vmcs, machine.memory)
        return (f"{c.name} {'writes' if w else 'reads'} MSR {m:#x} without a VM exit; the design does not grant it",
                m in (writes if w else reads) and m not in grants)

    sample = LAYOUT.msr  # the encoding agrees with the exit rules at the workloads' MSR
    concrete = sample not in open_msrs(vmcs, machine.memory)[0]
    witness = z3.And(msr == bv(sample, 32), z3.Not(write), exits == z3.BoolVal(concrete))
    return Conjunct(f"io_msr_grants.{c.name}.msrs", (Case("ungranted MSR", bad),), witness, explain)


# ------------------------------------------------------------------ the machine


@checked
def prove_machine(machine: Machine, *, timeout_ms: int = TIMEOUT_MS) -> tuple[ProofResult, ...]:
    """Prove partitioning, isolation, TLB isolation and the I/O / MSR grants of ``machine``."""
    own = ownership(machine)
    partitioning = [_layout_conjunct(own)]
    isolation = []
    for ctx in own.vms:
        partitioning += _ept_conjuncts(machine, own, ctx, "partitioning")
        isolation += _ept_conjuncts(machine, own, ctx, "isolation")
    design = machine.design
    return (prove_all("partitioning", design, partitioning, timeout_ms),
            prove_all("isolation", design, isolation, timeout_ms),
            prove_all("tlb_isolation", design, [_tlb_conjunct(own)], timeout_ms),
            prove_all("io_msr_grants", design, _grant_conjuncts(machine, own), timeout_ms))
