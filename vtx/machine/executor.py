"""The reference executor: ``run(machine, steps) -> (machine, trace)``.

Each step the seeded scheduler picks a logical processor. In VMX root operation the hypervisor
design picks a vCPU and enters it: if the vCPU's VMCS is active on another processor it is first
VMCLEARed there, then VMPTRLD here and VMLAUNCH (a VMCS that is clear must be launched, not
resumed: SDM Vol. 3C §26.11.3 "Initializing a VMCS", §32.3 VMLAUNCH/VMRESUME); a VMCS already
current and launched here is VMRESUMEd. Every entry runs the VM-entry checks
(:func:`vtx.vmx.instructions.vmlaunch` / ``vmresume``). In non-root operation the vCPU's next
guest operation is judged by the exit rules (:func:`vtx.vmx.exits.rules.decide`) under the VMCS
in force; a memory access first goes through the 2D walk (:func:`vtx.paging.walk2d.translate`).
An exit switches the processor to root operation (:func:`vtx.vmx.transitions.load_host_state`)
and the design handles it. Values are never mutated: each step returns a new machine.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

import attrs

from vtx import guest_ops as g
from vtx.errors import SpecError
from vtx.machine.cost import MIGRATION, PV_TRAP, VM_ROUND_TRIP, price
from vtx.machine.designs import Design, get_design
from vtx.machine.designs.base import Handling, ept_levels
from vtx.machine.designs.pv import PV_KIND, pv_translate
from vtx.machine.dirty import drain_pml, log_writes
from vtx.machine.memory_map import map_backed
from vtx.machine.model import Event, LinearAccess, Machine, MapPage, ProgramStep, Trace, Vcpu
from vtx.outcomes import VmEntered, VmSucceed
from vtx.paging import walk2d
from vtx.paging.formats import EPT_VIOLATION_QUALIFICATION, PAGE_SIZE
from vtx.paging.guest import Access, AccessKind, PagingFeatures, PagingState
from vtx.paging.memory import HostPhysAddr, PhysicalMemory
from vtx.paging.outcomes import EptMisconfig, EptViolation, Outcome, PageFault, Translated
from vtx.spec import VMCS_FIELDS, get_control, reg_bit
from vtx.typecheck import checked
from vtx.vmx import instructions as ins
from vtx.vmx.eptp import ept_in_force
from vtx.vmx.exits.causes import VECTORS
from vtx.vmx.exits.info import INTERRUPTION, ExitInfo
from vtx.vmx.exits.rules import Decision, Executes, GuestContext, GuestFault, decide
from vtx.vmx.operation import LogicalProcessor, VmxMode
from vtx.vmx.transitions import load_host_state
from vtx.vmx.vmcs import LaunchState, Vmcs

_F = VMCS_FIELDS
_AR_DPL = reg_bit("VMCS_ACCESS_RIGHTS", "DPL").bits
_ENTRY_VALID = INTERRUPTION.fields["valid"].mask
_PROC2 = _F["SECONDARY_VM_EXEC_CONTROL"]
_PML = get_control("proc2", "enable_pml").mask
PV_CPL = 3
"""The privilege level a classic 64-bit PV guest kernel runs at (Barham et al., SOSP 2003, §2.1:
x86-64 has no usable ring 1, so the kernel shares ring 3 with its applications)."""
_QUAL_FINAL = next(q.mask for q in EPT_VIOLATION_QUALIFICATION if q.name == "final_translation")
"""Exit-qualification bit 8 of an EPT violation: the access was to the final guest-physical address (Table 29-7)."""


# ------------------------------------------------------------------ the guest as the rules see it


def guest_context(vmcs: Vmcs, lp: LogicalProcessor, memory: PhysicalMemory) -> GuestContext:
    """The guest state the exit rules read: the registers VM entry loaded into ``lp`` and the
    interruptibility / activity state of the guest-state area (§28.3.2 "Loading Guest State")."""
    assert lp.mode is VmxMode.NON_ROOT
    return GuestContext(cpl=lp.cpl, rflags=lp.rflags, cr0=lp.cr0, cr4=lp.cr4, efer=lp.efer, cs_l=lp.cs_l,
                        interruptibility=vmcs.get(_F["GUEST_INTERRUPTIBILITY_INFO"]),
                        activity_state=vmcs.get(_F["GUEST_ACTIVITY_STATE"]), memory=memory)


def paging_state(vmcs: Vmcs, lp: LogicalProcessor) -> PagingState:
    return PagingState(lp.cr0, vmcs.get(_F["GUEST_CR3"]), lp.cr4, lp.efer, lp.rflags)


def translate(machine: Machine, lp: LogicalProcessor, vmcs: Vmcs, step: LinearAccess) -> Outcome:
    """The 2D walk of a guest access under the VMCS's EPT."""
    ept = ept_in_force(vmcs, machine.caps)
    return walk2d.translate(paging_state(vmcs, lp), PagingFeatures.from_capabilities(machine.caps), machine.memory,
                            step.gva, Access(step.access, size=step.size), ept=ept)


def memory_op(step: LinearAccess, out: Outcome) -> g.MemoryAccess:
    """The guest operation the exit rules judge for a translated access, or for the guest-physical
    address at which EPT stopped the walk (a guest paging-structure read when the walk had not
    reached the final address)."""
    if isinstance(out, Translated):
        return g.MemoryAccess(step.gva, out.gpa, step.access, step.size, step.value)
    assert isinstance(out, EptViolation | EptMisconfig)
    final = isinstance(out, EptViolation) and bool(out.qualification & _QUAL_FINAL)
    if isinstance(out, EptMisconfig) or final:
        return g.MemoryAccess(step.gva, out.gpa, step.access, step.size, step.value)
    return g.MemoryAccess(step.gva, out.gpa, AccessKind.READ, 8, 0, paging_structure=True)




# ------------------------------------------------------------------ run


def _ev(machine: Machine, kind: str, lp: int | None, vcpu: Vcpu | None, **detail: object) -> Event:
    vm = machine.vm(vcpu.vm).name if vcpu is not None else None
    name = f"{vm}.{vcpu.index}" if vcpu is not None else None
    extra = {k: detail.pop(k) for k in ("op", "vmcs", "context", "decision") if k in detail}
    return Event(machine.step, kind, lp, vm, name, tuple(detail.items()), **extra)


@checked
def run(machine: Machine, steps: int) -> tuple[Machine, Trace]:
    """Advance ``machine`` by up to ``steps`` scheduler steps (fewer once every vCPU is done and
    every processor is back in root operation); the same machine and steps give the same trace."""
    design = get_design(machine.design)
    rng = random.Random()
    rng.setstate(machine.rng_state)
    events: list[Event] = []
    for _ in range(steps):
        if machine.all_done and not any(in_guest(lp) for lp in machine.lps):
            break
        machine = attrs.evolve(machine, step=machine.step + 1)
        i = rng.randrange(len(machine.lps))
        if machine.lps[i].mode is VmxMode.NON_ROOT:
            machine = _guest_step(machine, design, rng, i, events)
        elif in_pv_guest(machine.lps[i]):
            machine = _pv_step(machine, design, rng, i, events)
        else:
            machine = _host_step(machine, design, rng, i, events)
    return attrs.evolve(machine, rng_state=rng.getstate()), tuple(events)


@checked
def interrupt(machine: Machine, lp: int) -> tuple[Machine, Trace]:
    """An interprocessor interrupt from the hypervisor reaches processor ``lp``: in VMX non-root
    operation the guest exits (external-interrupt exiting, SDM Vol. 3C §26.6.1 "Pin-Based
    VM-Execution Controls") and the design reschedules; in root operation nothing happens. How a
    hypervisor gets every processor into root operation (to pause a VM, or to execute INVEPT)."""
    ref = machine.running[lp]
    if machine.lps[lp].mode is not VmxMode.NON_ROOT or ref is None:
        return machine, ()
    processor = machine.processor(lp)
    vmcs = processor.get_current_vmcs()
    ctx = guest_context(vmcs, processor, machine.memory)
    op = g.ExternalInterrupt(machine.tick_vector)
    events: list[Event] = []
    machine = _decided(machine, get_design(machine.design), lp, machine.vcpu(*ref), vmcs=vmcs, ctx=ctx, op=op,
                       decision=decide(op, vmcs, ctx, caps=machine.caps), events=events, program_step=False)
    return machine, tuple(events)


# ------------------------------------------------------------------ root operation: schedule and enter


def in_pv_guest(lp: LogicalProcessor) -> bool:
    """The processor runs a classic PV guest: ring 3 of VMX root operation (only a PV guest
    kernel runs there; the hypervisor runs in ring 0)."""
    return lp.mode is VmxMode.ROOT and lp.cpl == PV_CPL


def in_guest(lp: LogicalProcessor) -> bool:
    """The processor runs a guest: in VMX non-root operation, or a classic PV guest in ring 3."""
    return lp.mode is VmxMode.NON_ROOT or in_pv_guest(lp)


def _vmx(machine: Machine, i: int, instruction: str, *, address: int, vcpu: Vcpu, events: list[Event]) -> Machine:
    caps = machine.caps
    lp = machine.processor(i)
    new, outcome = ins.vmclear(lp, caps, address) if instruction == "vmclear" else ins.vmptrld(lp, caps, address)
    events.append(_ev(machine, "vmx", i, vcpu, instruction=instruction, address=address, outcome=str(outcome)))
    if not isinstance(outcome, VmSucceed):
        raise SpecError("executor", f"{instruction} {address:#x}", f"the hypervisor's {instruction} failed: {outcome}")
    return machine.with_lp(i, new)


def _host_step(machine: Machine, design: Design, rng: random.Random, i: int, events: list[Event]) -> Machine:
    busy = {machine.running[j] for j, lp in enumerate(machine.lps) if in_guest(lp)}
    here = machine.running[i]
    if here is not None and not machine.vcpu(*here).done and not machine.vcpu(*here).yielded:
        pick = here
    else:
        # a VMCS active on a processor that is running a guest cannot be VMCLEARed there now
        held = {a for a, j in machine.active.items() if j != i and in_guest(machine.lps[j])}
        candidates = [(vm.index, v.index) for vm in machine.all_vms for v in vm.vcpus
                      if not v.done and not v.waiting and (vm.index, v.index) not in busy and v.vmcs_addr not in held]
        if not candidates:
            return machine
        pick = design.schedule(rng, i, candidates, machine)
    vcpu = machine.vcpu(*pick)
    if machine.vm(pick[0]).kind == PV_KIND:
        return _pv_enter(machine, i, vcpu, events)
    address = vcpu.vmcs_addr
    owner = machine.active.get(address)
    if owner is not None and owner != i:  # migrate: VMCLEAR on the old processor
        machine = _vmx(machine, owner, "vmclear", address=address, vcpu=vcpu, events=events)
        running = tuple(None if j == owner and r == pick else r for j, r in enumerate(machine.running))
        active = {a: p for a, p in machine.active.items() if a != address}
        machine = attrs.evolve(machine, running=running, active=active)
        events.append(_ev(machine, "migrate", i, vcpu, old_lp=owner, switches=(MIGRATION,),
                          cycles=price((MIGRATION,))[1]))
    if machine.lps[i].current_vmcs != address:
        machine = _vmx(machine, i, "vmptrld", address=address, vcpu=vcpu, events=events)
        machine = attrs.evolve(machine, active={**machine.active, address: i})
    machine = attrs.evolve(machine, running=tuple(pick if j == i else r for j, r in enumerate(machine.running)))
    lp = machine.processor(i)
    vmcs = lp.get_current_vmcs()
    if vcpu.pending_vector is not None:
        info = INTERRUPTION.encode(vector=vcpu.pending_vector, type="external_interrupt", valid=1)
        lp = lp.with_region(address, vmcs.with_fields({"VM_ENTRY_INTR_INFO_FIELD": info}))
    launched = vmcs.launch_state is LaunchState.LAUNCHED
    enter = ins.vmresume if launched else ins.vmlaunch
    new, outcome = enter(lp, machine.caps)
    entered = isinstance(outcome, VmEntered)
    machine = machine.with_lp(i, new)
    events.append(_ev(machine, "entry", i, vcpu, instruction="vmresume" if launched else "vmlaunch",
                      outcome=str(outcome) if not entered else "entered", checks="pass" if entered else "fail"))
    if not entered:
        return machine.with_vcpu(attrs.evolve(vcpu, failed=str(outcome)))
    if vcpu.pending_vector is not None:
        events.append(_ev(machine, "inject", i, vcpu, vector=vcpu.pending_vector, type="external_interrupt"))
    return machine.with_vcpu(attrs.evolve(vcpu, pending_vector=None, yielded=False))


# ------------------------------------------------------------------ non-root operation: one guest operation


def _guest_step(machine: Machine, design: Design, rng: random.Random, i: int, events: list[Event]) -> Machine:
    ref = machine.running[i]
    assert ref is not None
    vcpu = machine.vcpu(*ref)
    lp = machine.processor(i)
    vmcs = lp.get_current_vmcs()
    ctx = guest_context(vmcs, lp, machine.memory)

    def judge(op: g.GuestOp, decision: Decision | None = None, *, program_step: bool = True) -> Machine:
        if decision is None:
            decision = decide(op, vmcs, ctx, caps=machine.caps)
        return _decided(machine, design, i, vcpu, vmcs=vmcs, ctx=ctx, op=op, decision=decision, events=events,
                        program_step=program_step)

    if rng.random() < machine.tick or vcpu.done:
        return judge(g.ExternalInterrupt(machine.tick_vector), program_step=False)
    step = resolved(vcpu)
    if not isinstance(step, LinearAccess):
        assert not isinstance(step, MapPage), "only a classic PV guest writes its page tables by hypercall"
        return judge(step)
    out = translate(machine, lp, vmcs, step)
    if isinstance(out, PageFault):
        return judge(g.Exception_(VECTORS["page_fault"], out.error_code))
    if not isinstance(out, Translated | EptViolation | EptMisconfig):
        return judge(g.Exception_(VECTORS["general_protection"], 0))
    mop = memory_op(step, out)
    decision = decide(mop, vmcs, ctx, caps=machine.caps)
    if isinstance(out, Translated) != isinstance(decision, Executes):
        raise SpecError("executor", f"{mop}", f"the 2D walk ({type(out).__name__}) and the exit rules "
                        f"({type(decision).__name__}) disagree")
    if not isinstance(out, Translated):
        return judge(mop, decision)
    memory = out.memory
    if vmcs.get(_PROC2) & _PML:  # page-modification logging (§30.3.6): may end in a log-full exit
        memory, logged, full = log_writes(machine.memory, out, vmcs)
        if logged is not vmcs:
            processor = machine.processor(i)
            machine = machine.with_lp(i, processor.with_region(processor.current_vmcs, logged))
        if full is not None:
            pml = g.PmlLog(full)
            return _decided(attrs.evolve(machine, memory=memory), design, i, vcpu, vmcs=logged, ctx=ctx, op=pml,
                            events=events, decision=decide(pml, logged, ctx, caps=machine.caps), program_step=True)
    memory, value, moved = perform(memory, vcpu, step, out)
    machine = attrs.evolve(machine, memory=memory)
    events.append(_ev(machine, "access", i, vcpu, access=step.access.value, gva=step.gva, gpa=out.gpa,
                      hpa=out.hpa, size=step.size, value=value, op=mop, vmcs=vmcs, context=ctx, decision=decision))
    return machine.with_vcpu(moved)


def resolved(vcpu: Vcpu) -> ProgramStep:
    """The vCPU's next program step, a store of RAX with the value it stores."""
    step = vcpu.program[vcpu.pc]
    if isinstance(step, LinearAccess) and step.from_rax:
        return attrs.evolve(step, value=vcpu.rax)
    return step


def perform(memory: PhysicalMemory, vcpu: Vcpu, step: LinearAccess,
            out: Translated) -> tuple[PhysicalMemory, int, Vcpu]:
    """Carry out a translated access: a store writes its value, a load reads into RAX; the memory
    after it, the value stored or read, and the vCPU moved past the step. An access that crosses a
    page uses the second page's translation for the bytes beyond the first (``out.second``)."""
    parts = _parts(out, step.size)
    if step.access is AccessKind.WRITE:
        shift = 0
        for hpa, size in parts:
            memory = memory.write_int(HostPhysAddr(hpa), size, step.value >> shift & ((1 << 8 * size) - 1))
            shift += 8 * size
        return memory, step.value, attrs.evolve(vcpu, pc=vcpu.pc + 1)
    value = shift = 0
    for hpa, size in parts:
        value |= memory.read_int(HostPhysAddr(hpa), size) << shift
        shift += 8 * size
    rax = value if step.access is AccessKind.READ else vcpu.rax
    return memory, value, attrs.evolve(vcpu, pc=vcpu.pc + 1, rax=rax)


def _parts(out: Translated, size: int) -> list[tuple[int, int]]:
    """The host-physical runs of a ``size``-byte access: one, or two when it crosses a page."""
    if out.second is None:
        return [(out.hpa, size)]
    first = PAGE_SIZE - (out.hpa & (PAGE_SIZE - 1))
    return [(out.hpa, first), (out.second.hpa, size - first)]


def _decided(machine: Machine, design: Design, i: int, vcpu: Vcpu, *, vmcs: Vmcs, ctx: GuestContext, op: g.GuestOp,
             decision: Decision, events: list[Event], program_step: bool) -> Machine:
    """Carry out the exit rules' decision about ``op``."""
    keep = {"op": op, "vmcs": vmcs, "context": ctx, "decision": decision}
    if isinstance(decision, GuestFault):
        fault = g.Exception_(decision.vector, decision.error_code)
        events.append(_ev(machine, "guest_fault", i, vcpu, vector=decision.vector, **keep))
        return _decided(machine, design, i, vcpu, vmcs=vmcs, ctx=ctx, op=fault,
                        decision=decide(fault, vmcs, ctx, caps=machine.caps), events=events, program_step=program_step)
    if isinstance(decision, Executes):
        events.append(_ev(machine, "executed", i, vcpu, operation=op.kind, **keep))
        return machine.with_vcpu(attrs.evolve(vcpu, pc=vcpu.pc + int(program_step)))
    return _exit(machine, design, i, vcpu, vmcs=vmcs, op=op, info=decision, events=events, keep=keep,
                 program_step=program_step)


def _exit(machine: Machine, design: Design, i: int, vcpu: Vcpu, *, vmcs: Vmcs, op: g.GuestOp, info: ExitInfo,
          events: list[Event], keep: Mapping[str, object], program_step: bool) -> Machine:
    """The VM exit (§29.2 "Recording VM-Exit Information and Updating VM-Entry Control Fields": the
    valid bit of the VM-entry interruption-information field is cleared) and its handling."""
    lp = machine.processor(i)
    cleared = vmcs.with_fields({"VM_ENTRY_INTR_INFO_FIELD": vmcs["VM_ENTRY_INTR_INFO_FIELD"] & ~_ENTRY_VALID})
    lp = load_host_state(lp.with_region(lp.current_vmcs, cleared), machine.caps, cleared, info.reason, info=info)
    machine = machine.with_lp(i, lp)
    events.append(_ev(machine, "exit", i, vcpu, reason=info.reason.name, number=info.reason.number,
                      qualification=info.qualification, operation=op.kind, **keep))
    handling: Handling = design.handle_exit(machine, vcpu, info, op)
    if handling.action == "pml_drain":
        machine = drain_pml(machine, vcpu.vm, vcpu.index)
    if handling.machine is not None:
        machine = handling.machine
    vm = machine.vm(vcpu.vm)
    if handling.map_gpa is not None:
        memory, vm = map_backed(machine.memory, vm, ept_levels(machine.caps, vmcs), handling.map_gpa)
        machine = attrs.evolve(machine, memory=memory).with_vm(vm)
        vcpu = vm.vcpus[vcpu.index]
    if handling.advance:
        lp = machine.processor(i)
        current = lp.get_current_vmcs()
        rip = current["GUEST_RIP"] + info.instruction_length
        machine = machine.with_lp(i, lp.with_region(lp.current_vmcs, current.with_fields({"GUEST_RIP": rip})))
    switches = (VM_ROUND_TRIP, *handling.switches)
    events.append(_ev(machine, "handled", i, vcpu, handler=handling.handler, action=handling.action,
                      advance=handling.advance, switches=switches, cycles=price(switches)[1], note=handling.note))
    pc = vcpu.pc + int(program_step and handling.advance)
    failed = handling.note if handling.stop else None
    pending = handling.inject if handling.inject is not None else vcpu.pending_vector
    return machine.with_vcpu(attrs.evolve(vcpu, pc=pc, yielded=handling.yield_cpu, waiting=handling.wait,
                                          pending_vector=pending, failed=failed))


# ------------------------------------------------------------------ classic PV guests: ring 3, no VMX


def _pv_enter(machine: Machine, i: int, vcpu: Vcpu, events: list[Event]) -> Machine:
    """The hypervisor resumes a classic PV vCPU on processor ``i``: no VMCS and no VM entry, it
    returns to the guest kernel in ring 3 of VMX root operation (delivering a pending event by
    upcall on the way)."""
    machine = machine.with_lp(i, attrs.evolve(machine.processor(i), cpl=PV_CPL))
    machine = attrs.evolve(machine, running=tuple((vcpu.vm, vcpu.index) if j == i else r
                                                  for j, r in enumerate(machine.running)))
    events.append(_ev(machine, "pv_enter", i, vcpu, ring=PV_CPL))
    if vcpu.pending_vector is not None:
        events.append(_ev(machine, "inject", i, vcpu, vector=vcpu.pending_vector, type="upcall"))
    return machine.with_vcpu(attrs.evolve(vcpu, pending_vector=None, yielded=False))


def _pv_step(machine: Machine, design: Design, rng: random.Random, i: int, events: list[Event]) -> Machine:
    """One operation of the classic PV vCPU on processor ``i``: a host interrupt, an access
    through its own page tables straight to machine frames, or an operation that runs natively,
    traps to the hypervisor or is a hypercall (:meth:`Design.pv_step`)."""
    ref = machine.running[i]
    assert ref is not None
    vcpu = machine.vcpu(*ref)
    if rng.random() < machine.tick or vcpu.done:
        events.append(_ev(machine, "trap", i, vcpu, operation="external_interrupt", vector=machine.tick_vector))
        return _pv_handled(machine, i, vcpu, Handling("hypervisor", "host_interrupt", (PV_TRAP,), yield_cpu=True,
                                                      note="host timer tick: preempt"), events, program_step=False)
    step = resolved(vcpu)
    if isinstance(step, LinearAccess):
        vm = machine.vm(vcpu.vm)
        out = pv_translate(machine.memory, PagingFeatures.from_capabilities(machine.caps), vm, step)
        if isinstance(out, Translated):
            memory, value, moved = perform(out.memory, vcpu, step, out)
            machine = attrs.evolve(machine, memory=memory)
            events.append(_ev(machine, "direct_access", i, vcpu, access=step.access.value, gva=step.gva, hpa=out.hpa,
                              size=step.size, value=value))
            return machine.with_vcpu(moved)
        vector = VECTORS["page_fault" if isinstance(out, PageFault) else "general_protection"]
        events.append(_ev(machine, "trap", i, vcpu, operation="memory", vector=vector, gva=step.gva))
        return _pv_handled(machine, i, vcpu, Handling("hypervisor", "bounce", (PV_TRAP,), advance=True,
                                                      note="the fault is the guest's: bounced to its kernel"), events)
    pv = design.pv_step(machine, vcpu, step)
    if pv.handling is None:
        events.append(_ev(machine, "native", i, vcpu, operation=pv.operation))
        return machine.with_vcpu(attrs.evolve(vcpu, pc=vcpu.pc + 1))
    detail = {"vector": pv.vector} if pv.kind == "trap" else {"hypercall": pv.hypercall}
    events.append(_ev(machine, pv.kind, i, vcpu, operation=pv.operation, **detail))
    return _pv_handled(machine, i, vcpu, pv.handling, events)


def _pv_handled(machine: Machine, i: int, vcpu: Vcpu, handling: Handling, events: list[Event], *,
                program_step: bool = True) -> Machine:
    """The hypervisor's handling of a PV trap or hypercall: back to ring 3, or (the vCPU yields)
    the processor stays in the hypervisor's ring 0."""
    if handling.machine is not None:
        machine = handling.machine
    if handling.yield_cpu or handling.stop:
        machine = machine.with_lp(i, attrs.evolve(machine.processor(i), cpl=0))
    events.append(_ev(machine, "handled", i, vcpu, handler=handling.handler, action=handling.action,
                      switches=handling.switches, cycles=price(handling.switches)[1], note=handling.note))
    pending = handling.inject if handling.inject is not None else vcpu.pending_vector
    return machine.with_vcpu(attrs.evolve(vcpu, pc=vcpu.pc + int(program_step and handling.advance),
                                          yielded=handling.yield_cpu, waiting=handling.wait, pending_vector=pending,
                                          failed=handling.note if handling.stop else None))
