"""KVM_TRANSLATE against vtx.paging's guest walk on random 4-level page tables.

x86 KVM_TRANSLATE walks the guest tables as a supervisor-mode read (kvm_mmu_gva_to_gpa_system,
access 0) and always reports ``writeable = 1`` and ``usermode = 0`` (kvm_arch_vcpu_ioctl_translate
in arch/x86/kvm/x86.c): so the comparison is ``valid`` and the guest-physical address against
:func:`vtx.paging.guest.translate` for a supervisor read, and the accessed flags KVM's walk sets in
the tables against the model's (SDM Vol. 3A §5.8 "Accessed and Dirty Flags"). A fresh VM per
example keeps those writes from leaking between examples.

KVM's walker reads MAXPHYADDR and 1-GByte-page support from the guest's CPUID, so each example
gives the vCPU one of: no CPUID leaves (MAXPHYADDR 36, no 1-GByte pages: KVM's defaults, UNSURE
and confirmed by this test), KVM_GET_SUPPORTED_CPUID's leaves, or those with the 1-GByte-page
bit set (which counts only where KVM supports 1-GByte pages; otherwise PS = 1 in a PDPTE is a
reserved-bit fault: see :func:`vtx.kvm.personality.paging_features`).
Frames reach above MAXPHYADDR and XD is set while IA32_EFER.NXE = 0, so reserved-bit faults
are compared too.
"""

from __future__ import annotations

import functools
import time

from hypothesis import given, settings
from hypothesis import strategies as st
from kvm_budget import KVM_EXAMPLES

from vtx.kvm import boot
from vtx.kvm.boot import ENTRY_BYTES
from vtx.kvm.device import CpuidEntry, Kvm, SlotSpec
from vtx.kvm.personality import paging_features, with_fact
from vtx.kvm.runner import restrict, slot_memory, start
from vtx.paging.formats import PAGE_OFFSET_BITS
from vtx.paging.guest import Access, AccessKind, translate
from vtx.paging.memory import HostPhysAddr, PhysicalMemory
from vtx.paging.outcomes import Translated
from vtx.strategies import GuestMappings, guest_page_tables

TABLES = SlotSpec(1, 0x100000, 0x40000)
READ = Access(AccessKind.READ)
CPUID_CHOICES = ("none", "supported", "supported+1gb")


@functools.cache
def supported_cpuid(kvm: Kvm) -> tuple[CpuidEntry, ...]:
    return kvm.supported_cpuid()


def cpuid_for(kvm: Kvm, choice: str) -> tuple[CpuidEntry, ...]:
    if choice == "none":
        return ()
    supported = supported_cpuid(kvm)
    return with_fact(supported, "CPUID_1GB_PAGES", 1) if choice.endswith("1gb") else supported




@settings(max_examples=KVM_EXAMPLES)
@given(guest_page_tables(root=TABLES.gpa, index_range=4), st.sampled_from(CPUID_CHOICES))
def test_kvm_translate_agrees_with_guest_walk(kvm: Kvm, case: GuestMappings, choice: str) -> None:
    tables, glas, _ = case
    cpuid = cpuid_for(kvm, choice)
    features = paging_features(cpuid, supported_cpuid(kvm))
    image = boot.BootImage(boot.boot_image(b"", memory=tables.memory).memory, tables.root, boot.LAYOUT["code"])
    state = image.paging_state()
    memory = tables.memory
    with start(kvm, [TABLES], image, cpuid=cpuid) as vm:
        vcpu = vm.vcpus[0]
        for gla in glas:
            got = vcpu.translate(gla)
            want = translate(state, features, memory, gla, READ)
            assert (got.valid, got.writeable, got.usermode) == (isinstance(want, Translated), True, False), hex(gla)
            if isinstance(want, Translated):
                assert got.physical_address == want.gpa, hex(gla)
                memory = want.memory
        real_tables = slot_memory(vm, [TABLES])
    assert _entries(real_tables) == _entries(restrict(memory, [TABLES]))


def _entries(memory: PhysicalMemory) -> dict[int, int]:
    """The non-zero 8-byte entries of ``memory`` by address (a readable difference)."""
    return {a: v for n in memory.page_numbers() for a in range(n << PAGE_OFFSET_BITS, (n + 1) << PAGE_OFFSET_BITS,
                                                               ENTRY_BYTES)
            if (v := memory.read_int(HostPhysAddr(a), ENTRY_BYTES))}


def test_translate_cost(kvm: Kvm) -> None:
    """Not a check: prints the per-VM cost that sets max_examples above."""
    image = boot.boot_image(b"")
    t0 = time.perf_counter()
    for _ in range(10):
        with start(kvm, [TABLES], image) as vm:
            vm.vcpus[0].translate(0)
    print(f"VM + vCPU + translate: {(time.perf_counter() - t0) / 10 * 1e3:.2f} ms")
