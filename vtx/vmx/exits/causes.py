"""The causes of VM exits (``spec/vmx/exit_causes.toml``): per guest-operation kind, the exit
reason, the condition and the fault that takes priority; the exit reasons vtx does not produce;
and the bitmap, vector and APIC facts the rules read (SDM Vol. 3C §27.1 "Instructions That Cause
VM Exits", §27.2 "Other Causes of VM Exits")."""

from __future__ import annotations

from typing import Any

import attrs

from vtx.bits import BitRange
from vtx.citation import Citation
from vtx.errors import SpecError
from vtx.guest_ops import OP_KINDS
from vtx.spec import VMCS_FIELDS, Control, ExitReason, _bits, _Table, get_control, get_exit_reason

PRIVILEGES = ("none", "cpl0", "cpl0_ud", "cpl0_unless_pce", "cpl0_if_tsd", "io", "vmx", "getsec", "descriptor", "smm",
              "mov_dr")


@attrs.frozen
class Cause:
    """One way a guest operation kind causes one basic exit reason."""

    op: str
    mnemonics: tuple[str, ...]
    exit: ExitReason
    when: str
    control: Control | None
    enable: Control | None
    controls: tuple[Control, ...]
    privilege: str
    exit_first: bool
    citation: Citation


@attrs.frozen
class NotModelled:
    exit: ExitReason
    reason: str
    citation: Citation


def _control(ref: str, where: str) -> Control:
    field, _, name = ref.removeprefix("ctl:").partition(".")
    try:
        return get_control(field, name)
    except SpecError as e:
        raise SpecError(where, ref, "names no control of controls.toml") from e


def _load() -> tuple[tuple[Cause, ...], tuple[NotModelled, ...], dict[str, Any], _Table]:
    t = _Table("vmx/exit_causes.toml")
    causes = []
    for r in t.rows("cause"):
        where = f"{t.relpath} [[cause]] {r['op']}/{r['exit']}"
        if r["op"] not in OP_KINDS or r["privilege"] not in PRIVILEGES:
            raise SpecError(where, r["op"],
                            "op must be a vtx.guest_ops kind and privilege one of " + ", ".join(PRIVILEGES))
        when = r["when"]
        if not (when == "always" or when.startswith(("ctl:", "rule:"))):
            raise SpecError(where, when, "when is always, ctl:<field>.<control> or rule:<name>")
        causes.append(Cause(
            r["op"], tuple(r.get("mnemonics", ())), get_exit_reason(r["exit"]), when,
            _control(when, where) if when.startswith("ctl:") else None,
            _control(r["enable"], where) if "enable" in r else None,
            tuple(_control(c, where) for c in r.get("controls", ())), r["privilege"],
            bool(r.get("exit_first", False)), t.cite("cause", r)))
    skipped = tuple(NotModelled(get_exit_reason(r["exit"]), r["reason"], t.cite("not_modelled", r))
                    for r in t.rows("not_modelled"))
    return tuple(causes), skipped, t.data, t


CAUSES, NOT_MODELLED, _DATA, _T = _load()
"""Every cause of a VM exit, and the exit reasons not modelled (with why)."""


def _range(section: str, key: str) -> BitRange:
    return _bits(_DATA[section][key], f"{_T.relpath} [{section}] {key}")


MSR_LOW = _range("msr_bitmap", "low")
MSR_HIGH = _range("msr_bitmap", "high")
MSR_OFFSETS = {k: _DATA["msr_bitmap"][k] for k in ("read_low", "read_high", "write_low", "write_high")}
IO_BITMAP_A = _range("io_bitmap", "a")
IO_BITMAP_B = _range("io_bitmap", "b")
VECTORS: dict[str, int] = {k: v for k, v in _DATA["vectors"].items() if k != "cite"}
LEAF_LAST_BIT: int = _DATA["leaf_bitmap"]["last_bit"]
LEAF_BITMAPS = {m: VMCS_FIELDS[_DATA["leaf_bitmap"][m]] for m in ("encls", "enclv", "pconfig")}
VTPR_OFFSET: int = _DATA["apic"]["vtpr_offset"]
VTPR_PRIORITY = _range("apic", "vtpr_priority")
TPR_THRESHOLD = _range("apic", "threshold")
CR8_PRIORITY = _range("apic", "cr8_priority")
CR3_TARGETS = tuple(VMCS_FIELDS[n] for n in _DATA["cr3_targets"]["fields"])
EOI_BITMAPS = tuple(VMCS_FIELDS[n] for n in _DATA["apic"]["eoi_bitmap_fields"])
_AV = _DATA["apic_virtualization"]
APIC_REGISTER_BYTES: int = _AV["register_bytes"]
APIC_REGISTER_STRIDE: int = _AV["register_stride"]
APIC_EOI: int = _AV["eoi"]
APIC_VID_WRITES = frozenset(_AV["vid_writes"])
APIC_READS = frozenset(_AV["reads"])
APIC_WRITES = frozenset(_AV["writes"])
PML_ENTRIES: int = _DATA["pml"]["entries"]
WAIT_FOR_SIPI: int = _DATA["activity"]["wait_for_sipi"]
_PLE = _DATA["pause_loop"]
PLE_GAP = VMCS_FIELDS[_PLE["gap_field"]]
PLE_WINDOW = VMCS_FIELDS[_PLE["window_field"]]
PLE_CPL: int = _PLE["cpl"]
UD_OUTSIDE_PROTECTED = frozenset(_DATA["descriptor"]["ud_outside_protected"])
DR7_GENERAL_DETECT = 1 << _DATA["debug"]["dr7_general_detect"]
NMI_UNBLOCKING_UNDEFINED = frozenset(VECTORS[v] for v in _DATA["nmi_unblocking"]["undefined_for"])


def _index() -> dict[tuple[str, str | None], tuple[Cause, ...]]:
    keys = {(c.op, m) for c in CAUSES for m in (c.mnemonics or (None,))}
    return {(op, m): tuple(c for c in CAUSES if c.op == op and (not c.mnemonics or m in c.mnemonics))
            for op, m in keys}


_BY_OP = _index()


def causes_of(op_kind: str, mnemonic: str | None = None) -> tuple[Cause, ...]:
    """The causes for an operation kind (and mnemonic, for kinds that have several), in table order."""
    return _BY_OP.get((op_kind, mnemonic), ())
