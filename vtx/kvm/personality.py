"""What KVM shows user space when a guest program runs: a model to compare the real thing with.

A pure function of the program, the memory-slot layout and the boot image: the sequence of
exits to user space, the registers after the final HLT, the contents of the slots and the pages
the dirty log reports. The guest runs in 64-bit mode with the identity-mapping boot page tables
of :mod:`vtx.kvm.boot`, so a linear address is its guest-physical address.

KVM's rules modelled here (Linux Documentation/virt/kvm/api.rst, "KVM_RUN" and
"KVM_SET_USER_MEMORY_REGION"):

* IN and OUT exit with KVM_EXIT_IO when no in-kernel device claims the port (none is created);
  user space supplies an IN's bytes before the next KVM_RUN.
* A load or store to a guest-physical address no slot backs exits with KVM_EXIT_MMIO; so does a
  store to a read-only slot (KVM_MEM_READONLY), while a load from it reads the slot.
* HLT exits with KVM_EXIT_HLT when the local APIC is not emulated in the kernel.
* A store to a slot with KVM_MEM_LOG_DIRTY_PAGES marks its page in the dirty log.
* CPUID without KVM_SET_CPUID2 returns zeros (see :data:`CPUID_OUTPUTS`).

Register results follow SDM Vol. 1 §3.4.1.1 "General-Purpose Registers in 64-Bit Mode": a
32-bit destination is zero-extended to 64 bits, an 8- or 16-bit destination leaves the other
bits unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from vtx.bits import mask
from vtx.kvm.api import API
from vtx.kvm.boot import RFLAGS, BootImage
from vtx.kvm.device import CpuidEntry, Exit, HltExit, IoExit, MmioExit, Regs, SlotSpec
from vtx.kvm.encode import REGISTERS, Cpuid, Hlt, In, Instruction, Load, MovImm, Out, Store, encode
from vtx.paging.formats import PAGE_OFFSET_BITS
from vtx.paging.guest import PagingFeatures
from vtx.paging.memory import HostPhysAddr, PhysicalMemory
from vtx.spec import CPUID_FACTS
from vtx.typecheck import checked

_DX = REGISTERS["rdx"]
_RAX = REGISTERS["rax"]
_PORT_BITS = 16
_ZERO_EXTENDED = 4
"""A 32-bit destination is zero-extended to 64 bits (SDM Vol. 1 §3.4.1.1)."""
_REG_BITS = 64
CPUID_OUTPUTS = ("rax", "rbx", "rcx", "rdx")
"""CPUID writes EAX, EBX, ECX and EDX (zero-extended). A vCPU given no CPUID entries
(no KVM_SET_CPUID2) finds none for any leaf, and KVM then returns zeros (UNSURE: observed on
kvm_pvm; the rule is KVM's, in kvm_cpuid() of arch/x86/kvm/cpuid.c)."""


@checked
def cpuid_fact(entries: Sequence[CpuidEntry], name: str) -> int | None:
    """The value of a spec/cpuid.toml fact in the CPUID leaves a vCPU was given (None if the
    leaf is absent)."""
    fact = CPUID_FACTS[name]
    entry = next((e for e in entries if e.function == fact.leaf and (fact.subleaf or 0) == e.index), None)
    return None if entry is None else fact.bits.get(getattr(entry, fact.register))


@checked
def with_fact(entries: Sequence[CpuidEntry], name: str, value: int) -> tuple[CpuidEntry, ...]:
    """``entries`` with a spec/cpuid.toml fact set to ``value`` (in an existing leaf)."""
    fact = CPUID_FACTS[name]
    return tuple(attrs.evolve(e, **{fact.register: fact.bits.put(getattr(e, fact.register), value)})
                 if e.function == fact.leaf and (fact.subleaf or 0) == e.index else e for e in entries)


@checked
def paging_features(entries: Sequence[CpuidEntry], supported: Sequence[CpuidEntry]) -> PagingFeatures:
    """MAXPHYADDR and 1-GByte-page support as KVM's guest walker sees them for a vCPU given
    ``entries`` by KVM_SET_CPUID2 (none given: no leaves) on a KVM that reports ``supported``
    from KVM_GET_SUPPORTED_CPUID.

    Without leaf 80000008H KVM takes MAXPHYADDR = KVM_DEFAULT_MAXPHYADDR (arch/x86/kvm/cpuid.c).
    A feature bit counts only if the guest's CPUID sets it and KVM supports it: KVM's guest
    capabilities are the intersection (UNSURE: true of the Linux 6.18 tested here, where a
    1-GByte-page bit KVM does not support is ignored; older kernels read the guest's CPUID
    alone).
    """
    width = cpuid_fact(entries, "MAXPHYADDR")
    gb_pages = bool(cpuid_fact(entries, "CPUID_1GB_PAGES")) and bool(cpuid_fact(supported, "CPUID_1GB_PAGES"))
    return PagingFeatures(API.constants["KVM_DEFAULT_MAXPHYADDR"] if width is None else width, gb_pages)


@checked
def supplied(index: int, size: int) -> bytes:
    """The bytes vtx's user space answers the ``index``-th exit of a run with (an IN or an MMIO
    read): a fixed pattern, so that the model and the real run agree on the input."""
    return bytes((0x5A + 0x3B * index + 0x11 * i) & 0xFF for i in range(size))


@attrs.frozen
class Run:
    """The outcome of running a program to its HLT: the exits in order, the final registers,
    the guest memory and, per slot that logs dirty pages, the guest-physical pages written."""

    exits: tuple[Exit, ...]
    regs: Regs
    memory: PhysicalMemory
    dirty: dict[int, frozenset[int]]


def _write_reg(regs: list[int], reg: int, size: int, value: int) -> None:
    if size >= _ZERO_EXTENDED:
        regs[reg] = value
    else:
        regs[reg] = regs[reg] & ~mask(8 * size) | value


def _slot(slots: Sequence[SlotSpec], gpa: int, size: int) -> SlotSpec | None:
    return next((s for s in slots if s.contains(gpa, size)), None)


@checked
def predict(program: Sequence[Instruction], slots: Sequence[SlotSpec], image: BootImage) -> Run:
    """Run ``program`` (which ends with its first HLT) over ``slots`` starting from ``image``."""
    regs = [0] * len(REGISTERS)
    memory = image.memory
    exits: list[Exit] = []
    dirty: dict[int, set[int]] = {s.slot: set() for s in slots if s.log_dirty}
    rip = image.entry
    for ins in program:
        rip += len(encode(ins))
        if isinstance(ins, Out):
            port = regs[_DX] & mask(_PORT_BITS) if ins.port is None else ins.port
            exits.append(IoExit(True, ins.size, port, 1, regs[_RAX].to_bytes(8, "little")[:ins.size]))
        elif isinstance(ins, In):
            port = regs[_DX] & mask(_PORT_BITS) if ins.port is None else ins.port
            data = supplied(len(exits), ins.size)
            exits.append(IoExit(False, ins.size, port, 1, b""))
            _write_reg(regs, _RAX, ins.size, int.from_bytes(data, "little"))
        elif isinstance(ins, Store):
            data = regs[REGISTERS[ins.reg]].to_bytes(8, "little")[:ins.size]
            slot = _slot(slots, ins.address, ins.size)
            if slot is None or slot.readonly:
                exits.append(MmioExit(ins.address, ins.size, True, data))
            else:
                memory = memory.write(HostPhysAddr(ins.address), data)
                if slot.log_dirty:
                    dirty[slot.slot].add(ins.address >> PAGE_OFFSET_BITS << PAGE_OFFSET_BITS)
        elif isinstance(ins, Load):
            if _slot(slots, ins.address, ins.size) is None:
                data = supplied(len(exits), ins.size)
                exits.append(MmioExit(ins.address, ins.size, False, b""))
            else:
                data = memory.read(HostPhysAddr(ins.address), ins.size)
            _write_reg(regs, REGISTERS[ins.reg], ins.size, int.from_bytes(data, "little"))
        elif isinstance(ins, MovImm):
            regs[REGISTERS[ins.reg]] = ins.value & mask(_REG_BITS)
        elif isinstance(ins, Cpuid):
            for name in CPUID_OUTPUTS:
                regs[REGISTERS[name]] = 0
        elif isinstance(ins, Hlt):
            exits.append(HltExit())
            break
        else:
            raise ValueError(f"the model does not run {type(ins).__name__} (straight-line programs only)")
    final = Regs(rip=rip, rflags=RFLAGS, **{name: regs[n] for name, n in REGISTERS.items()})
    return Run(tuple(exits), final, memory, {k: frozenset(v) for k, v in dirty.items()})
