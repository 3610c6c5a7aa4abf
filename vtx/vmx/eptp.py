"""The extended-page-table pointer (EPTP) and its validity.

SDM Vol. 3C §28.2.1.1 "VM-Execution Control Fields": if "enable EPT" is 1, the EPTP must have a
memory type IA32_VMX_EPT_VPID_CAP allows (UC: bit 8; WB: bit 14), a page-walk length it allows
(4 levels: bit 6; 5 levels: bit 7), bit 6 (accessed/dirty) only if bit 21 allows it, bit 7
(supervisor shadow stack) only if bit 23 allows it, bits 11:8 zero, and no bit set beyond the
physical-address width. VMFUNC EPTP switching and single-context INVEPT apply the same rules.
"""

from __future__ import annotations

import attrs

from vtx.bits import BitRange
from vtx.errors import NotEvaluable
from vtx.spec import _bits, _Table
from vtx.vmx.capabilities import Capabilities


@attrs.frozen
class EptpLayout:
    memory_type: BitRange
    walk_length_minus_1: BitRange
    accessed_dirty: BitRange
    supervisor_shadow_stack: BitRange
    reserved: BitRange
    address_lo: int
    memory_types: dict[int, str]
    walk_lengths: dict[int, str]
    accessed_dirty_capability: str
    supervisor_shadow_stack_capability: str
    citation: str


def _load() -> EptpLayout:
    t = _Table("vmx/eptp.toml")
    e = t.data["eptp"]
    return EptpLayout(
        memory_type=_bits(e["memory_type"], "eptp.memory_type"),
        walk_length_minus_1=_bits(e["walk_length_minus_1"], "eptp.walk_length_minus_1"),
        accessed_dirty=_bits(e["accessed_dirty"], "eptp.accessed_dirty"),
        supervisor_shadow_stack=_bits(e["supervisor_shadow_stack"], "eptp.supervisor_shadow_stack"),
        reserved=_bits(e["reserved"], "eptp.reserved"),
        address_lo=e["address_lo"],
        memory_types={m["value"]: m["capability"] for m in e["memory_types"]},
        walk_lengths={w["levels"]: w["capability"] for w in e["walk_lengths"]},
        accessed_dirty_capability=e["rules"]["accessed_dirty_capability"],
        supervisor_shadow_stack_capability=e["rules"]["supervisor_shadow_stack_capability"],
        citation=str(t.citations[e["rules"]["cite"]]),
    )


EPTP = _load()


def eptp_problems(eptp: int, caps: Capabilities) -> list[str]:
    """Every way ``eptp`` breaks the EPTP rules ([] if it is valid); NotEvaluable if the profile
    lacks IA32_VMX_EPT_VPID_CAP or MAXPHYADDR."""
    def cap(name: str) -> bool:
        v = caps.msr_field("IA32_VMX_EPT_VPID_CAP", name)
        if v is None:
            raise NotEvaluable("EPTP", f"{eptp:#x}", "the profile lacks IA32_VMX_EPT_VPID_CAP")
        return bool(v)

    problems = []
    mt = EPTP.memory_type.get(eptp)
    if mt not in EPTP.memory_types or not cap(EPTP.memory_types[mt]):
        problems.append(f"memory type {mt} (bits {EPTP.memory_type}) is not one IA32_VMX_EPT_VPID_CAP allows")
    levels = EPTP.walk_length_minus_1.get(eptp) + 1
    if levels not in EPTP.walk_lengths or not cap(EPTP.walk_lengths[levels]):
        problems.append(f"page-walk length {levels} (bits {EPTP.walk_length_minus_1} + 1) is not supported")
    if EPTP.accessed_dirty.get(eptp) and not cap(EPTP.accessed_dirty_capability):
        problems.append(f"bit {EPTP.accessed_dirty} (accessed/dirty flags) is set but not supported")
    if EPTP.supervisor_shadow_stack.get(eptp) and not cap(EPTP.supervisor_shadow_stack_capability):
        problems.append(f"bit {EPTP.supervisor_shadow_stack} (supervisor shadow stack) is set but not supported")
    if EPTP.reserved.get(eptp):
        problems.append(f"reserved bits {EPTP.reserved} are not 0")
    if eptp >> caps.require_fact("MAXPHYADDR"):
        problems.append(f"sets bits beyond the physical-address width ({caps.require_fact('MAXPHYADDR')})")
    return problems


def is_valid_eptp(eptp: int, caps: Capabilities) -> bool:
    """Whether ``eptp`` satisfies every EPTP rule."""
    return not eptp_problems(eptp, caps)
