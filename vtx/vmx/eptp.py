"""The extended-page-table pointer (EPTP) as the VM-entry checks, VMFUNC and INVEPT see it.

The format and the validity rules are those of ``spec/paging/ept.toml`` (loaded by
:mod:`vtx.paging.formats`; the rules are :func:`vtx.paging.ept.eptp_problems`); this module gives
the VMX side the named views it needs. SDM Vol. 3C §28.2.1.1 "VM-Execution Control Fields": the
EPTP must have a memory type and page-walk length IA32_VMX_EPT_VPID_CAP allows, bit 6 only if
EPT A/D flags are supported, bit 7 only if supervisor shadow stacks are, bits 11:8 zero and no bit
set beyond the physical-address width. VMFUNC EPTP switching and single-context INVEPT apply the
same rules.
"""

from __future__ import annotations

import attrs

from vtx.bits import BitRange
from vtx.paging.ept import Ept, ept_from_eptp, eptp_problems
from vtx.paging.formats import EPT
from vtx.spec import VMCS_FIELDS
from vtx.typecheck import checked
from vtx.vmx.capabilities import Capabilities
from vtx.vmx.vmcs import Vmcs


@attrs.frozen
class EptpLayout:
    memory_type: BitRange
    walk_length_minus_1: BitRange
    accessed_dirty: BitRange
    supervisor_shadow_stack: BitRange
    reserved: BitRange
    memory_types: dict[int, str]
    walk_lengths: dict[int, str]
    accessed_dirty_capability: str = "accessed_dirty"
    supervisor_shadow_stack_capability: str = "supervisor_shadow_stack"


EPTP = EptpLayout(
    memory_type=EPT.eptp["memory_type"].bits,
    walk_length_minus_1=EPT.eptp["walk_length"].bits,
    accessed_dirty=EPT.eptp["accessed_dirty"].bits,
    supervisor_shadow_stack=EPT.eptp["supervisor_shadow_stack"].bits,
    reserved=EPT.eptp["reserved"].bits,
    memory_types={t.value: t.eptp_capability for t in EPT.memory_types if t.eptp_capability},
    walk_lengths={w.length: w.capability for w in EPT.walk_lengths},
)


@checked
def is_valid_eptp(eptp: int, caps: Capabilities) -> bool:
    """Whether ``eptp`` satisfies every EPTP rule."""
    return not eptp_problems(eptp, caps)


_EPTP_FIELD = VMCS_FIELDS["EPT_POINTER"]
_SECONDARY = VMCS_FIELDS["SECONDARY_VM_EXEC_CONTROL"]


def ept_in_force(vmcs: Vmcs, caps: Capabilities) -> Ept:
    """The EPT a VMCS selects: its EPTP read with the secondary controls that change how EPT
    translates (mode-based execute control; SDM Vol. 3C §26.6.2 "Processor-Based VM-Execution
    Controls", §30.3.3.1)."""
    return ept_from_eptp(vmcs.get(_EPTP_FIELD), caps, secondary_controls=vmcs.get(_SECONDARY))
