"""Hypervisor designs: the root-mode software the executor runs.

A design creates VMs (EPT, guest memory, grants), builds each vCPU's VMCS, handles each VM exit
and picks the vCPU a logical processor runs next. The three reference designs follow the three
VMM organisations: ``hosted`` (a kernel module plus a user-space device model, KVM + QEMU),
``bare_metal`` (one hypervisor handles everything, ESX) and ``hybrid`` (the hypervisor handles
processor and memory; devices live in a privileged service VM, Xen's dom0).
"""

from __future__ import annotations

from collections.abc import Mapping

from vtx.errors import InputError
from vtx.machine.designs.bare_metal import BareMetal
from vtx.machine.designs.base import Design, Handling
from vtx.machine.designs.hosted import Hosted
from vtx.machine.designs.hybrid import Hybrid

DESIGNS: Mapping[str, Design] = {d.name: d for d in (Hosted(), BareMetal(), Hybrid())}
"""The reference designs by name."""


def get_design(name: str) -> Design:
    """The design ``name``; InputError naming the known ones otherwise."""
    design = DESIGNS.get(name)
    if design is None:
        raise InputError("design", repr(name), f"known designs: {', '.join(DESIGNS)}")
    return design


__all__ = ["DESIGNS", "Design", "Handling", "get_design"]
