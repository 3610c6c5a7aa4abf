"""Small builders of page tables for the deterministic paging tests."""

from __future__ import annotations

from vtx.paging.ept import Ept, ept_from_eptp

__all__ = ["Ept", "ept_from_eptp"]
from vtx.paging.memory import HostPhysAddr, PhysicalMemory
from vtx.spec import CAPABILITY_MSRS, get_control
from vtx.vmx.capabilities import Capabilities, load_preset

PAGE = 4096
EPT_ROOT = 0x80_0000
HOST_OFFSET = 0x1000_0000
"""EPT maps guest-physical page X to host-physical X + HOST_OFFSET."""

G_PML4, G_PDPT, G_PD, G_PT = 0x1000, 0x2000, 0x3000, 0x4000
GUEST_FLAGS = 0x27  # P RW US A
LA = 0x1234
DATA_GPA = 0x5000
MBEC = get_control("proc2", "mode_based_execute_control_for_ept").mask


def caps(**ept_cap: bool) -> Capabilities:
    """The max profile with EPT capability bits turned on or off by name."""
    base = load_preset("max")
    value = base.msr("IA32_VMX_EPT_VPID_CAP") or 0
    for name, on in ept_cap.items():
        m = CAPABILITY_MSRS["IA32_VMX_EPT_VPID_CAP"].field(name).mask
        value = value | m if on else value & ~m
    return base.overlay({"IA32_VMX_EPT_VPID_CAP": value}, name="test")


def eptp(*, ad: bool = False, walk5: bool = False, sss: bool = False, root: int = EPT_ROOT) -> int:
    return root | 6 | ((4 if walk5 else 3) << 3) | (ad << 6) | (sss << 7)


PAGING_WRITE = get_control("proc3", "ept_paging_write_control").mask
GUEST_PAGING_VERIFICATION = get_control("proc3", "guest_paging_verification").mask


def ept(*, ad: bool = False, mbec: bool = False, sss: bool = False, c: Capabilities | None = None,
        tertiary: int = 0) -> Ept:
    return ept_from_eptp(eptp(ad=ad, sss=sss), c or caps(), secondary_controls=MBEC if mbec else 0,
                         tertiary_controls=tertiary)


def w(mem: PhysicalMemory, address: int, value: int, size: int = 8) -> PhysicalMemory:
    return mem.write_int(HostPhysAddr(address), size, value)


def ept_map(mem: PhysicalMemory, gpa: int, *, leaf: int = 7 | (6 << 3), upper: int = 7,
            root: int = EPT_ROOT) -> PhysicalMemory:
    """A 4-level EPT path for the 4-KByte page of ``gpa`` (tables after ``root``, one per page
    of gpa), mapping it to gpa + HOST_OFFSET; ``leaf`` / ``upper`` are the non-address bits."""
    page = gpa >> 12
    pdpt, pd, pt = root + 0x1000, root + 0x2000, root + 0x3000 + (page >> 9) * 0x1000
    mem = w(mem, root + ((gpa >> 39) & 511) * 8, pdpt | upper)
    mem = w(mem, pdpt + ((gpa >> 30) & 511) * 8, pd | upper)
    mem = w(mem, pd + ((gpa >> 21) & 511) * 8, pt | upper)
    return w(mem, pt + ((gpa >> 12) & 511) * 8, ((gpa & ~0xFFF) + HOST_OFFSET) | leaf)


def guest_4level(mem: PhysicalMemory, *, leaf: int = GUEST_FLAGS, upper: int = GUEST_FLAGS, through_ept: bool,
                 la: int = LA, data: int = DATA_GPA, host_offset: int | None = None) -> PhysicalMemory:
    """4-level guest tables at G_PML4.. mapping ``la`` to ``data`` (4-KByte page); written at
    their host-physical addresses (gpa + HOST_OFFSET through EPT, else gpa)."""
    off = host_offset if host_offset is not None else HOST_OFFSET if through_ept else 0
    mem = w(mem, off + G_PML4 + ((la >> 39) & 511) * 8, G_PDPT | upper)
    mem = w(mem, off + G_PDPT + ((la >> 30) & 511) * 8, G_PD | upper)
    mem = w(mem, off + G_PD + ((la >> 21) & 511) * 8, G_PT | upper)
    return w(mem, off + G_PT + ((la >> 12) & 511) * 8, data | leaf)


def full_ept(mem: PhysicalMemory, *, leaf: int = 7 | (6 << 3), upper: int = 7, data_leaf: int | None = None
             ) -> PhysicalMemory:
    """EPT mappings for the four guest tables and the data page."""
    for gpa in (G_PML4, G_PDPT, G_PD, G_PT):
        mem = ept_map(mem, gpa, leaf=leaf, upper=upper)
    return ept_map(mem, DATA_GPA, leaf=leaf if data_leaf is None else data_leaf, upper=upper)
