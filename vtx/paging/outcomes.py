"""What a translation produces: the memory references it made and its outcome, as values.

A translation ends in exactly one of :class:`Translated`, :class:`PageFault`,
:class:`EptViolation`, :class:`EptMisconfig`, :class:`Npf` or :class:`GeneralProtection`. Every
outcome carries the memory references made, in order, and the memory after the accessed and
dirty flags the processor set on the way.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

import attrs

from vtx.paging.memory import PhysicalMemory


class Space(enum.Enum):
    """Which paging structures a reference read."""

    GUEST = "guest"
    EPT = "ept"
    NPT = "npt"


class Reference(NamedTuple):
    """One read of a paging-structure entry.

    ``address`` is where the entry lies in its own space (guest-physical for a guest entry,
    host-physical for an EPT / NPT entry); ``host_address`` is the host-physical address read.
    ``level`` is the depth (5 = PML5E ... 1 = PTE) and ``name`` the entry's name at that depth.
    """

    space: Space
    level: int
    name: str
    address: int
    host_address: int
    value: int


class Rights(NamedTuple):
    """The access rights of a complete guest translation, as a TLB may cache them (SDM Vol. 3A
    §5.10.2.1 "Page Numbers, Page Frames, and Page Offsets" and §5.6): user-mode address,
    writable, execute-disable, the protection key, the dirty flag after the access, global."""

    user: bool
    writable: bool
    execute_disable: bool
    protection_key: int
    dirty: bool
    is_global: bool


@attrs.frozen
class Translated:
    """The access may proceed: ``gla`` (None for a guest-physical access) translates to ``gpa``
    and ``hpa``. ``page_size`` is the size of the smaller of the guest and EPT / NPT pages.
    Where EPT applies: ``memory_type`` the effective memory type of the access (SDM Vol. 3C
    §30.3.7.2), ``ept_memory_type`` / ``ignore_pat`` the memory type and IPAT bit of the EPT
    entry that maps the page, ``pat_memory_type`` the guest's PAT type (None elsewhere: vtx
    models no MTRRs). ``rights`` the guest paging rights (None with paging disabled).
    ``second`` is the translation of the part of an access that crosses into the next page
    (None if the access lies in one page); ``references`` and ``memory`` then cover both
    parts."""

    gla: int | None
    gpa: int
    hpa: int
    page_size: int
    references: tuple[Reference, ...]
    memory: PhysicalMemory = attrs.field(repr=False)
    memory_type: str | None = None
    ignore_pat: bool | None = None
    rights: Rights | None = None
    ept_memory_type: str | None = None
    pat_memory_type: str | None = None
    second: Translated | None = None


@attrs.frozen
class PageFault:
    """A page-fault exception (#PF) delivered to the guest: CR2 = ``address``."""

    error_code: int
    address: int
    references: tuple[Reference, ...]
    memory: PhysicalMemory = attrs.field(repr=False)


@attrs.frozen
class EptViolation:
    """A VM exit for an EPT violation (basic exit reason 48)."""

    qualification: int
    gpa: int
    gla: int | None
    references: tuple[Reference, ...]
    memory: PhysicalMemory = attrs.field(repr=False)


@attrs.frozen
class EptMisconfig:
    """A VM exit for an EPT misconfiguration (basic exit reason 49); no exit qualification."""

    gpa: int
    references: tuple[Reference, ...]
    memory: PhysicalMemory = attrs.field(repr=False)


@attrs.frozen
class Npf:
    """#VMEXIT(NPF): a nested page fault (EXITINFO1 fault code, EXITINFO2 guest-physical address)."""

    exit_info_1: int
    exit_info_2: int
    references: tuple[Reference, ...]
    memory: PhysicalMemory = attrs.field(repr=False)


@attrs.frozen
class GeneralProtection:
    """A general-protection exception (#GP(0)), e.g. for a non-canonical linear address."""

    references: tuple[Reference, ...]
    memory: PhysicalMemory = attrs.field(repr=False)


Outcome = Translated | PageFault | EptViolation | EptMisconfig | Npf | GeneralProtection
