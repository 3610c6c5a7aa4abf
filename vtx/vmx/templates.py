"""VMCS templates: VMCSs that pass every VM-entry check for a given processor — the starting
points users (and tests) mutate.

* ``long-mode``: a 64-bit guest under a 64-bit host (EPT off unless asked).
* ``protected-mode``: a 32-bit protected-mode guest with 32-bit paging.
* ``real-mode``: a real-address-mode guest, which needs "unrestricted guest" and therefore EPT.
* ``pae``: a 32-bit guest with PAE paging; with EPT the PDPTEs come from the VMCS.

Every template has a 64-bit host (CR0.PG, CR4.PAE, "host address-space size"), an 8-byte GDT
layout (CS 08H, SS/DS/ES/FS/GS 10H, TR 18H), no event injection, no MSR loading, activity state
active, and VMCS link pointer FFFFFFFF_FFFFFFFFH. Control fields hold exactly their must-be-1
bits plus what the template and the requested features need; a feature the processor does not
allow is bad input.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from vtx import spec
from vtx.errors import InputError
from vtx.spec import get_control, reg_bit
from vtx.typecheck import checked
from vtx.vmx.capabilities import Capabilities
from vtx.vmx.eptp import EPTP
from vtx.vmx.operation import INVALID_POINTER
from vtx.vmx.vmcs import Vmcs

TEMPLATES = ("long-mode", "protected-mode", "real-mode", "pae")


def _cr(register: str, *bits: str) -> int:
    return sum(reg_bit(register, b).mask for b in bits)


def _ar(**bits: int) -> int:
    """An access-rights value from named sub-fields of the VMCS access-rights format."""
    value = 0
    for name, v in bits.items():
        value = reg_bit("VMCS_ACCESS_RIGHTS", name.upper()).bits.put(value, v)
    return value


CODE_EXEC_READ_ACCESSED = 11
DATA_READ_WRITE_ACCESSED = 3
BUSY_TSS = 11  # 32-bit / 64-bit busy TSS
LDT = 2

HOST_CR0 = _cr("CR0", "PE", "ET", "NE", "PG")
HOST_CR4 = _cr("CR4", "PAE", "VMXE")
GDT_SELECTORS = {"CS": 0x08, "SS": 0x10, "DS": 0x10, "ES": 0x10, "FS": 0x10, "GS": 0x10, "TR": 0x18}
FLAT_LIMIT = 0xFFFF_FFFF
TSS_LIMIT = 0x67
REAL_MODE_LIMIT = 0xFFFF
PAGE_TABLES = 0x0010_0000        # guest CR3 / host CR3 / EPT root: page-aligned, below any MAXPHYADDR
GUEST_RIP = 0x0000_1000
HOST_RIP = 0xFFFF_FFFF_8100_0000
PDPTE_PRESENT = 1  # bit 0 of a PAE PDPTE (SDM Vol. 3A §5.4.1 "PDPTE Registers")

# Secondary features the templates can turn on, with the fields each needs.
FEATURE_FIELDS: Mapping[str, Mapping[str, int]] = {
    "enable_ept": {},  # EPTP set below
    "enable_vpid": {"VIRTUAL_PROCESSOR_ID": 1},
    "unrestricted_guest": {},
    "descriptor_table_exiting": {}, "enable_rdtscp": {}, "wbinvd_exiting": {}, "rdrand_exiting": {},
    "rdseed_exiting": {}, "enable_invpcid": {}, "enable_xsaves_xrstors": {}, "pause_loop_exiting": {},
    "enable_vm_functions": {}, "enable_user_wait_and_pause": {}, "conceal_vmx_from_pt": {},
    "use_tsc_scaling": {"TSC_MULTIPLIER": 1 << 48},
    "virtualize_apic_accesses": {"APIC_ACCESS_ADDR": 0x0020_0000},
    "vmcs_shadowing": {"VMREAD_BITMAP": 0x0021_0000, "VMWRITE_BITMAP": 0x0022_0000},
    "enable_pml": {"PML_ADDRESS": 0x0023_0000},
    "ept_violation_ve": {"VE_INFORMATION_ADDRESS": 0x0024_0000},
}
REQUIRES = {"unrestricted_guest": ("enable_ept",), "enable_pml": ("enable_ept",)}


def _controls(caps: Capabilities) -> dict[str, int]:
    fields: dict[str, int] = {}
    for cf in spec.CONTROL_FIELDS:
        a0 = caps.allowed0(cf.key)
        if a0 is None:
            raise InputError(f"capabilities {caps.name!r}", cf.msr.name, "a template needs every control MSR")
        fields[cf.vmcs_field.name] = a0
    fields["VM_EXIT_CONTROLS"] |= get_control("exit", "host_address_space_size").mask
    return fields


def _host() -> dict[str, int]:
    return {
        "HOST_CR0": HOST_CR0, "HOST_CR3": PAGE_TABLES, "HOST_CR4": HOST_CR4, "HOST_RIP": HOST_RIP,
        **{f"HOST_{r}_SELECTOR": s for r, s in GDT_SELECTORS.items()},
    }


def _segments(*, cs_ar: int, data_ar: int, limit: int, tr_ar: int, tr_limit: int, selectors: Mapping[str, int],
              bases: Mapping[str, int] | None = None) -> dict[str, int]:
    fields: dict[str, int] = {}
    for reg in ("CS", "SS", "DS", "ES", "FS", "GS"):
        fields[f"GUEST_{reg}_SELECTOR"] = selectors[reg]
        fields[f"GUEST_{reg}_LIMIT"] = limit
        fields[f"GUEST_{reg}_AR_BYTES"] = cs_ar if reg == "CS" else data_ar
        fields[f"GUEST_{reg}_BASE"] = (bases or {}).get(reg, 0)
    fields.update(GUEST_TR_SELECTOR=selectors["TR"], GUEST_TR_LIMIT=tr_limit, GUEST_TR_AR_BYTES=tr_ar,
                  GUEST_LDTR_AR_BYTES=_ar(unusable=1), GUEST_GDTR_LIMIT=0xFFFF, GUEST_IDTR_LIMIT=0xFFFF)
    return fields


def _flat_segments(*, long_mode: bool) -> dict[str, int]:
    cs = _ar(type=CODE_EXEC_READ_ACCESSED, s=1, p=1, g=1, **({"l": 1} if long_mode else {"db": 1}))
    data = _ar(type=DATA_READ_WRITE_ACCESSED, s=1, p=1, db=1, g=1)
    return _segments(cs_ar=cs, data_ar=data, limit=FLAT_LIMIT, tr_ar=_ar(type=BUSY_TSS, p=1), tr_limit=TSS_LIMIT,
                     selectors=GDT_SELECTORS)


def _eptp(caps: Capabilities) -> int:
    wb = next(v for v, name in EPTP.memory_types.items() if name == "memtype_wb")
    uc = next(v for v, name in EPTP.memory_types.items() if name == "memtype_uc")
    memory_type = wb if caps.msr_field("IA32_VMX_EPT_VPID_CAP", "memtype_wb") else uc
    eptp = EPTP.memory_type.put(PAGE_TABLES + 0x1000, memory_type)
    return EPTP.walk_length_minus_1.put(eptp, 4 - 1)


@checked
def build_template(name: str, caps: Capabilities, *, features: Iterable[str] = ()) -> Vmcs:
    """The template ``name`` for ``caps`` with the secondary ``features`` (control names) turned on."""
    if name not in TEMPLATES:
        raise InputError("template", repr(name), f"known templates: {', '.join(TEMPLATES)}")
    wanted = list(dict.fromkeys(features))
    if name == "real-mode":
        wanted += ["unrestricted_guest"]
    if name == "pae":
        wanted += ["enable_ept"]
    for f in list(wanted):
        wanted += [r for r in REQUIRES.get(f, ()) if r not in wanted]
    fields = _controls(caps) | _host()
    for feature in dict.fromkeys(wanted):
        if feature not in FEATURE_FIELDS:
            raise InputError("feature", repr(feature), f"templates can turn on: {', '.join(FEATURE_FIELDS)}")
        if not caps.allows("proc2", feature) or not caps.allows("proc", "activate_secondary_controls"):
            raise InputError("feature", feature, f"capabilities {caps.name!r} do not allow this control")
        fields["CPU_BASED_VM_EXEC_CONTROL"] |= get_control("proc", "activate_secondary_controls").mask
        fields["SECONDARY_VM_EXEC_CONTROL"] |= get_control("proc2", feature).mask
        fields.update(FEATURE_FIELDS[feature])
    if "enable_ept" in wanted:
        fields["EPT_POINTER"] = _eptp(caps)
    fields.update(GUEST_RFLAGS=reg_bit("RFLAGS", "FIXED1").mask, GUEST_RIP=GUEST_RIP, GUEST_DR7=0x400,
                  VMCS_LINK_POINTER=INVALID_POINTER, GUEST_CR3=PAGE_TABLES)
    if name == "long-mode":
        fields["VM_ENTRY_CONTROLS"] |= get_control("entry", "ia32e_mode_guest").mask
        fields.update(_flat_segments(long_mode=True), GUEST_CR0=HOST_CR0, GUEST_CR4=HOST_CR4)
    elif name == "protected-mode":
        fields.update(_flat_segments(long_mode=False), GUEST_CR0=HOST_CR0, GUEST_CR4=_cr("CR4", "VMXE"))
    elif name == "pae":
        pdpte = [PAGE_TABLES + 0x1000 * (i + 2) | PDPTE_PRESENT for i in range(4)]
        fields.update(_flat_segments(long_mode=False), GUEST_CR0=HOST_CR0, GUEST_CR4=HOST_CR4,
                      **{f"GUEST_PDPTR{i}": p for i, p in enumerate(pdpte)})
    else:  # real-mode
        cs = _ar(type=CODE_EXEC_READ_ACCESSED, s=1, p=1)
        data = _ar(type=DATA_READ_WRITE_ACCESSED, s=1, p=1)
        selectors = dict.fromkeys(GDT_SELECTORS, 0) | {"CS": 0xF000}
        fields.update(_segments(cs_ar=cs, data_ar=data, limit=REAL_MODE_LIMIT, tr_ar=_ar(type=BUSY_TSS, p=1),
                                tr_limit=REAL_MODE_LIMIT, selectors=selectors, bases={"CS": 0xF0000}),
                      GUEST_CR0=_cr("CR0", "ET", "NE"), GUEST_CR4=_cr("CR4", "VMXE"), GUEST_RIP=0xFFF0,
                      GUEST_CR3=0)
    return Vmcs(revision_id=caps.msr_field("IA32_VMX_BASIC", "vmcs_revision_id") or 0).with_fields(fields)
