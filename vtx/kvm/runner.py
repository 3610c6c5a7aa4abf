"""Run a guest program on /dev/kvm and record what user space sees, in the form of
:class:`vtx.kvm.personality.Run`, so that the model's prediction and KVM's behaviour compare
as values."""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from vtx.kvm import boot
from vtx.kvm.boot import BootImage
from vtx.kvm.device import CpuidEntry, Exit, IoExit, Kvm, MmioExit, Regs, SlotSpec, Vm
from vtx.kvm.encode import Instruction, assemble
from vtx.kvm.personality import Run, supplied
from vtx.paging.formats import PAGE_OFFSET_BITS, PAGE_SIZE
from vtx.paging.memory import PhysicalMemory

SYSTEM_SLOT = 0
"""The slot number of the boot structures and code (guest-physical 0 up to the layout's
``system_bytes``)."""


def system_slot() -> SlotSpec:
    return SlotSpec(SYSTEM_SLOT, 0, boot.LAYOUT["system_bytes"])


def slot_memory(vm: Vm, slots: Sequence[SlotSpec]) -> PhysicalMemory:
    """The non-zero pages of ``slots`` as memory."""
    pages = {}
    for spec in slots:
        data = vm.slots[spec.slot].read(spec.gpa, spec.size)
        for off in range(0, spec.size, PAGE_SIZE):
            page = data[off:off + PAGE_SIZE]
            if any(page):
                pages[(spec.gpa + off) >> PAGE_OFFSET_BITS] = page
    return PhysicalMemory(pages)


def start(kvm: Kvm, slots: Sequence[SlotSpec], image: BootImage, regs: Regs | None = None,
          cpuid: Sequence[CpuidEntry] = ()) -> Vm:
    """A VM with the system slot and ``slots``, ``image`` loaded, and one vCPU at its entry
    (given the CPUID leaves ``cpuid``, if any)."""
    vm = kvm.create_vm()
    try:
        for spec in (system_slot(), *slots):
            vm.add_slot(spec)
        boot.load(vm, image.memory)
        vcpu = vm.create_vcpu()
        if cpuid:
            vcpu.set_cpuid(cpuid)
        vcpu.set_sregs(image.sregs(vcpu.get_sregs()))
        vcpu.set_regs(regs or Regs(rip=image.entry, rflags=boot.RFLAGS))
    except BaseException:
        vm.close()
        raise
    return vm


def execute(kvm: Kvm, program: Sequence[Instruction], slots: Sequence[SlotSpec], *, max_exits: int = 1000) -> Run:
    """Run ``program`` on KVM until an exit other than I/O or MMIO (or ``max_exits`` exits),
    answering each IN and MMIO read with :func:`~vtx.kvm.personality.supplied`."""
    image = boot.boot_image(assemble(program))
    with start(kvm, slots, image) as vm:
        vcpu = vm.vcpus[0]
        exits: list[Exit] = []
        while len(exits) < max_exits:
            exit_ = vcpu.run()
            exits.append(exit_)
            if isinstance(exit_, IoExit) and not exit_.out:
                vcpu.supply(supplied(len(exits) - 1, exit_.size * exit_.count))
            elif isinstance(exit_, MmioExit) and not exit_.is_write:
                vcpu.supply(supplied(len(exits) - 1, exit_.size))
            elif not isinstance(exit_, IoExit | MmioExit):
                break
        dirty = {s.slot: vm.dirty_pages(s.slot) for s in slots if s.log_dirty}
        return Run(tuple(exits), vcpu.get_regs(), slot_memory(vm, slots), dirty)


def restrict(memory: PhysicalMemory, slots: Sequence[SlotSpec]) -> PhysicalMemory:
    """The non-zero pages of ``memory`` that ``slots`` back (to compare with :func:`slot_memory`)."""
    return PhysicalMemory({n: p for n, p in memory.pages.items()
                           if any(p) and any(s.contains(n << PAGE_OFFSET_BITS) for s in slots)})


def same_run(model: Run, real: Run, slots: Sequence[SlotSpec]) -> bool:
    """The model and KVM agree on exits, registers, slot memory and dirty pages."""
    return attrs.evolve(model, memory=restrict(model.memory, slots)) == real
