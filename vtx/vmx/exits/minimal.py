"""The minimal-exit VMCS: a VMCS under which as few guest operations as the processor allows
cause VM exits, defined field by field.

* Every control field holds its allowed-0 bits (the must-be-1 bits; with no TRUE MSR the
  default1 controls "CR3-load exiting" / "CR3-store exiting" stay set) — the template's choice.
* "use MSR bitmaps" and "use I/O bitmaps" are set, with all-zero bitmaps at MSR_BITMAP,
  IO_BITMAP_A and IO_BITMAP_B (memory never written reads as zeros).
* CR0/CR4 guest/host masks 0, read shadows 0; exception bitmap, PFEC mask and match 0;
  CR3-target count 0.

SDM Vol. 3C §26.6 "VM-Execution Control Fields"; built on :func:`vtx.vmx.templates.build_template`.
"""

from __future__ import annotations

from vtx.spec import get_control
from vtx.typecheck import checked
from vtx.vmx.capabilities import Capabilities
from vtx.vmx.templates import build_template
from vtx.vmx.vmcs import Vmcs

MSR_BITMAP_ADDR = 0x0030_0000
IO_BITMAP_A_ADDR = 0x0030_1000
IO_BITMAP_B_ADDR = 0x0030_2000
"""Page-aligned bitmap addresses away from the template's page tables and feature pages."""

ZERO_FIELDS = ("CR0_GUEST_HOST_MASK", "CR4_GUEST_HOST_MASK", "CR0_READ_SHADOW", "CR4_READ_SHADOW",
               "EXCEPTION_BITMAP", "PAGE_FAULT_ERROR_CODE_MASK", "PAGE_FAULT_ERROR_CODE_MATCH", "CR3_TARGET_COUNT")


@checked
def minimal_exit_vmcs(caps: Capabilities, *, template: str = "long-mode") -> Vmcs:
    """The minimal-exit VMCS for ``caps`` (see the module docstring)."""
    vmcs = build_template(template, caps)
    proc = vmcs["CPU_BASED_VM_EXEC_CONTROL"] | get_control("proc", "use_msr_bitmaps").mask | get_control(
        "proc", "use_io_bitmaps").mask
    return vmcs.with_fields({"CPU_BASED_VM_EXEC_CONTROL": proc, "MSR_BITMAP": MSR_BITMAP_ADDR,
                             "IO_BITMAP_A": IO_BITMAP_A_ADDR, "IO_BITMAP_B": IO_BITMAP_B_ADDR,
                             **dict.fromkeys(ZERO_FIELDS, 0)})


@checked
def default1_exits(caps: Capabilities) -> frozenset[str]:
    """The exiting controls the processor does not allow to be 0 (so the minimal VMCS keeps them)."""
    a0 = caps.allowed0("proc") or 0
    return frozenset(c for c in ("cr3_load_exiting", "cr3_store_exiting", "hlt_exiting", "invlpg_exiting",
                                 "mwait_exiting", "rdpmc_exiting", "rdtsc_exiting", "monitor_exiting",
                                 "mov_dr_exiting", "unconditional_io_exiting", "cr8_load_exiting",
                                 "cr8_store_exiting")
                     if a0 & get_control("proc", c).mask)
