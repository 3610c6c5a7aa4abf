"""VMCB templates: VMCBs that pass every VMRUN consistency check for a given processor.

* ``long-mode``: a 64-bit guest (EFER.LME = LMA = 1, CR0.PG, CR4.PAE, CS.L).
* ``protected-mode``: a 32-bit protected-mode guest without paging.
* ``real-mode``: a real-mode guest at F000:FFF0 (SVM runs real mode directly; paging off).

Every template sets the mandatory VMRUN intercept, ASID 1, the permission maps at page-aligned
addresses below any MAXPHYADDR, guest EFER.SVME (§15.5.1 requires it), no event injection, and
the GDT layout of the VMX templates (CS 08H, data 10H, TR 18H). VMCB segment attributes are the
packed format of APM Vol. 2 Appendix B (type 3:0, S 4, DPL 6:5, P 7, AVL 8, L 9, D/B 10, G 11).
"""

from __future__ import annotations

from collections.abc import Mapping

from vtx import spec as x86
from vtx.errors import InputError
from vtx.svm import spec
from vtx.svm.capabilities import has_svm
from vtx.svm.spec import get_intercept
from vtx.svm.vmcb import Vmcb
from vtx.typecheck import checked
from vtx.vmx.capabilities import Capabilities
from vtx.vmx.templates import (
    BUSY_TSS,
    CODE_EXEC_READ_ACCESSED,
    DATA_READ_WRITE_ACCESSED,
    FLAT_LIMIT,
    GDT_SELECTORS,
    GUEST_RIP,
    PAGE_TABLES,
    REAL_MODE_LIMIT,
    TSS_LIMIT,
)

SVM_TEMPLATES = ("long-mode", "protected-mode", "real-mode")
IOPM_BASE = 0x0020_0000
MSRPM_BASE = 0x0020_4000
GUEST_ASID = 1
REAL_MODE_CS = 0xF000
REAL_MODE_RIP = 0xFFF0
REAL_MODE_SEGMENT_SHIFT = 4  # real-mode base = selector * 16


def _bits(register: str, *names: str) -> int:
    return sum(spec.reg_bit(register, n).mask for n in names)


def _attrib(**parts: int) -> int:
    """A packed VMCB segment-attribute value from named sub-fields."""
    value = 0
    for name, v in parts.items():
        value = spec.reg_bit("SEG_ATTRIB", name.upper()).bits.put(value, v)
    return value


def _segments(*, cs: int, data: int, limit: int, selectors: Mapping[str, int],
              real_mode: bool = False) -> dict[str, int]:
    """CS, data segments, TR and the descriptor tables; a real-mode base is the selector times 16."""
    fields: dict[str, int] = {}
    for reg in ("cs", "ss", "ds", "es", "fs", "gs"):
        selector = selectors[reg.upper()]
        fields |= {f"save.{reg}.selector": selector, f"save.{reg}.attrib": cs if reg == "cs" else data,
                   f"save.{reg}.limit": limit,
                   f"save.{reg}.base": selector << REAL_MODE_SEGMENT_SHIFT if real_mode else 0}
    fields |= {"save.tr.selector": selectors["TR"], "save.tr.attrib": _attrib(type=BUSY_TSS, p=1),
               "save.tr.limit": TSS_LIMIT, "save.gdtr.limit": REAL_MODE_LIMIT, "save.idtr.limit": REAL_MODE_LIMIT}
    return fields


@checked
def build_svm_template(name: str, caps: Capabilities) -> Vmcb:
    """The VMCB template ``name`` for ``caps`` (bad input if the processor has no SVM)."""
    if name not in SVM_TEMPLATES:
        raise InputError("template", repr(name), f"known SVM templates: {', '.join(SVM_TEMPLATES)}")
    if not has_svm(caps):
        raise InputError("profile", caps.name, "an SVM template needs a processor with SVM (CPUID_SVM)")
    vmrun = get_intercept("INTERCEPT_VMRUN")
    fields: dict[str, int] = {
        vmrun.field.name: vmrun.mask, "control.asid": GUEST_ASID, "control.iopm_base_pa": IOPM_BASE,
        "control.msrpm_base_pa": MSRPM_BASE, "save.rflags": x86.reg_bit("RFLAGS", "FIXED1").mask,
        "save.rip": GUEST_RIP, "save.efer": _bits("AMD_EFER", "SVME"),
    }
    cr0_prot = sum(x86.reg_bit("CR0", b).mask for b in ("PE", "ET", "NE"))
    if name == "long-mode":
        cs = _attrib(type=CODE_EXEC_READ_ACCESSED, s=1, p=1, l=1, g=1)
        data = _attrib(type=DATA_READ_WRITE_ACCESSED, s=1, p=1, db=1, g=1)
        fields |= _segments(cs=cs, data=data, limit=FLAT_LIMIT, selectors=GDT_SELECTORS)
        fields |= {"save.efer": _bits("AMD_EFER", "SVME", "LME", "LMA"), "save.cr0": cr0_prot
                   | x86.reg_bit("CR0", "PG").mask, "save.cr4": _bits("AMD_CR4", "PAE"), "save.cr3": PAGE_TABLES}
    elif name == "protected-mode":
        cs = _attrib(type=CODE_EXEC_READ_ACCESSED, s=1, p=1, db=1, g=1)
        data = _attrib(type=DATA_READ_WRITE_ACCESSED, s=1, p=1, db=1, g=1)
        fields |= _segments(cs=cs, data=data, limit=FLAT_LIMIT, selectors=GDT_SELECTORS) | {"save.cr0": cr0_prot}
    else:  # real-mode
        cs = _attrib(type=CODE_EXEC_READ_ACCESSED, s=1, p=1)
        data = _attrib(type=DATA_READ_WRITE_ACCESSED, s=1, p=1)
        selectors = dict.fromkeys(GDT_SELECTORS, 0) | {"CS": REAL_MODE_CS}
        fields |= _segments(cs=cs, data=data, limit=REAL_MODE_LIMIT, selectors=selectors, real_mode=True)
        fields |= {"save.cr0": x86.reg_bit("CR0", "ET").mask, "save.rip": REAL_MODE_RIP}
    return Vmcb.from_fields(fields)
