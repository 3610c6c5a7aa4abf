"""Guest programs on KVM against vtx.kvm.personality: exits, registers, memory, dirty log.

Each example draws a memory-slot layout (writable, read-only and dirty-logging slots, and
windows no slot backs, where accesses become MMIO exits) and a straight-line program of OUT,
IN, MOV to and from memory, MOV reg, imm64 and CPUID ending in HLT; a fresh VM runs it and the
run must equal :func:`vtx.kvm.personality.predict` as a value.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kvm_budget import KVM_EXAMPLES

from vtx.kvm import boot
from vtx.kvm.device import Kvm, SlotSpec
from vtx.kvm.encode import (
    IO_SIZES,
    MOV_SIZES,
    REGISTER_NAMES,
    Cpuid,
    Hlt,
    In,
    Instruction,
    Load,
    MovImm,
    Out,
    Store,
    assemble,
)
from vtx.kvm.errors import KvmError
from vtx.kvm.personality import predict
from vtx.kvm.runner import execute, restrict, start
from vtx.paging.formats import PAGE_SIZE

WINDOW = 0x100000
FIRST_WINDOW = 0x200000
WINDOWS = 4
MAX_PAGES = 3




@st.composite
def layouts(draw: st.DrawFn) -> list[SlotSpec]:
    """Up to WINDOWS slots, one per window at most; the rest of each window is unbacked."""
    slots = []
    for i in range(WINDOWS):
        if draw(st.booleans()):
            pages = draw(st.integers(1, MAX_PAGES))
            slots.append(SlotSpec(i + 1, FIRST_WINDOW + i * WINDOW, pages * PAGE_SIZE,
                                  readonly=draw(st.booleans()), log_dirty=draw(st.booleans())))
    return slots


def addresses(size: int) -> st.SearchStrategy[int]:
    """Naturally aligned addresses in the windows, backed or not."""
    return st.builds(lambda w, off: FIRST_WINDOW + w * WINDOW + off * size,
                     st.integers(0, WINDOWS - 1), st.integers(0, (MAX_PAGES + 1) * PAGE_SIZE // size - 1))


REGS = st.sampled_from(REGISTER_NAMES)
PORTS = st.one_of(st.none(), st.integers(0, 0xFF))
IO = st.sampled_from(IO_SIZES)
MEMORY_OPS = st.sampled_from(MOV_SIZES).flatmap(
    lambda size: st.one_of(st.builds(Store, st.just(size), REGS, addresses(size)),
                           st.builds(Load, st.just(size), REGS, addresses(size))))
INSTRUCTIONS: st.SearchStrategy[Instruction] = st.one_of(
    st.builds(MovImm, REGS, st.integers(0, (1 << 64) - 1)),
    st.builds(Out, IO, PORTS), st.builds(In, IO, PORTS), MEMORY_OPS, st.just(Cpuid()))


@settings(max_examples=KVM_EXAMPLES)
@given(layouts(), st.lists(INSTRUCTIONS, max_size=12))
def test_program_exits_registers_memory_agree(kvm: Kvm, slots: list[SlotSpec], body: list[Instruction]) -> None:
    program = [*body, Hlt()]
    model = predict(program, slots, boot.boot_image(assemble(program)))
    real = execute(kvm, program, slots)
    assert real.exits == model.exits
    assert real.regs == model.regs
    assert real.dirty == model.dirty
    assert real.memory == restrict(model.memory, slots)


@settings(max_examples=KVM_EXAMPLES)
@given(st.lists(st.builds(Store, st.sampled_from(MOV_SIZES), REGS, addresses(8)), min_size=1, max_size=16),
       st.lists(st.booleans(), min_size=WINDOWS, max_size=WINDOWS))
def test_dirty_log_agrees(kvm: Kvm, stores: list[Store], logged: list[bool]) -> None:
    """Writes to dirty-logging slots mark exactly their pages; a second KVM_GET_DIRTY_LOG with no
    writes in between reports none (reading the log clears it)."""
    slots = [SlotSpec(i + 1, FIRST_WINDOW + i * WINDOW, (MAX_PAGES + 1) * PAGE_SIZE, log_dirty=log)
             for i, log in enumerate(logged)]
    program = [MovImm("rax", 0x0123456789ABCDEF), *stores, Hlt()]
    model = predict(program, slots, boot.boot_image(assemble(program)))
    with start(kvm, slots, boot.boot_image(assemble(program))) as vm:
        assert vm.vcpus[0].run() == model.exits[-1]
        assert {s.slot: vm.dirty_pages(s.slot) for s in slots if s.log_dirty} == model.dirty
        assert all(not vm.dirty_pages(s.slot) for s in slots if s.log_dirty)


def test_closed_vm_ioctl_names_device_and_ioctl(kvm: Kvm) -> None:
    vm = kvm.create_vm()
    vm.close()
    with pytest.raises(KvmError, match="/dev/kvm KVM_CREATE_VCPU"):
        vm.create_vcpu()


def test_bad_slot_is_kvm_error_with_errno(kvm: Kvm) -> None:
    with kvm.create_vm() as vm:
        vm.add_slot(SlotSpec(1, FIRST_WINDOW, PAGE_SIZE))
        with pytest.raises(KvmError, match=r"EEXIST|EINVAL"):
            vm.add_slot(SlotSpec(2, FIRST_WINDOW, PAGE_SIZE))
