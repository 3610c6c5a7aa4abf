"""The minimal-intercept VMCB: a VMCB under which as few guest operations as AMD-V allows cause a
#VMEXIT, defined field by field on the long-mode template of :mod:`vtx.svm.templates`.

* Intercept words 0-2 (CR and DR reads and writes, exceptions) are 0.
* Words 3-5 hold only INTERCEPT_VMRUN (VMRUN requires it, APM Vol. 2 §15.5.1 "Basic Operation"),
  INTERCEPT_IOIO_PROT and INTERCEPT_MSR_PROT, so that every I/O access and RDMSR / WRMSR consults
  the permission maps, which are all zero at IOPM_BASE_PA and MSRPM_BASE_PA (memory never written
  reads as zeros).
* INT_CTL (no virtual interrupt pending), MISC_CTL (no SEV-ES write traps) and the bus-lock counter
  are 0.
"""

from __future__ import annotations

from vtx.svm.spec import INTERCEPTS, get_intercept
from vtx.svm.templates import build_svm_template
from vtx.svm.vmcb import Vmcb
from vtx.typecheck import checked
from vtx.vmx.capabilities import Capabilities

KEPT_INTERCEPTS = ("INTERCEPT_VMRUN", "INTERCEPT_IOIO_PROT", "INTERCEPT_MSR_PROT")
ZERO_FIELDS = ("control.int_ctl", "control.misc_ctl", "control.bus_lock_counter")


@checked
def minimal_intercept_vmcb(caps: Capabilities, *, template: str = "long-mode") -> Vmcb:
    """The minimal-intercept VMCB for ``caps`` (see the module docstring)."""
    words = {i.field.name: 0 for i in INTERCEPTS}
    for name in KEPT_INTERCEPTS:
        intercept = get_intercept(name)
        words[intercept.field.name] |= intercept.mask
    return build_svm_template(template, caps).with_fields({**words, **dict.fromkeys(ZERO_FIELDS, 0)})
