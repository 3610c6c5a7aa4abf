"""``vtx translate FILE.json [--json]``: translate one guest access and draw the walk.

The input format is public and documented in ``docs/translate.rst``. Exit status: 0 the access
translates, 1 it faults or exits (#PF, #GP, EPT violation, EPT misconfiguration, #NPF), 2 bad
input (the message names the key).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from vtx import spec
from vtx.errors import InputError
from vtx.inputs import check_keys, in_file, json_bool, json_int, json_object, shown
from vtx.paging import guest, npt, walk2d
from vtx.paging.ept import Ept, ept_from_eptp
from vtx.paging.formats import EPT, EPT_VIOLATION_QUALIFICATION, GUEST, NPT, PAGE_OFFSET_BITS
from vtx.paging.guest import Access, AccessKind, PagingFeatures, PagingState
from vtx.paging.memory import PhysicalMemory, parse_memory
from vtx.paging.outcomes import (
    EptMisconfig,
    EptViolation,
    GeneralProtection,
    Npf,
    Outcome,
    PageFault,
    Reference,
    Space,
    Translated,
)
from vtx.typecheck import checked
from vtx.vmx.capabilities import Capabilities, read_json, resolve_capabilities

TOP_KEYS = ("arch", "profile", "capabilities", "eptp", "ncr3", "fields", "host", "guest", "memory", "access")
GUEST_KEYS = ("cr0", "cr3", "cr4", "efer", "rflags", "cpl", "pkru", "pat")
HOST_KEYS = ("cr0", "cr4", "efer")
ACCESS_KEYS = ("address", "kind", "size", "implicit", "nmi_unblocking", "shadow_stack", "asynchronous")
_USER_CPL = 3
PAT_ENTRIES = 64 // GUEST.pat.entry_bits
_ADDRESS_TOP = EPT.eptp["root"].bits.hi + 1
_PDPTR_FIELDS = tuple(f"GUEST_PDPTR{i}" for i in range(4))
_DEFAULT_HOST = {"cr0": GUEST.register("cr0", "pg").mask, "cr4": GUEST.register("cr4", "pae").mask,
                 "efer": GUEST.register("efer", "lme").mask | GUEST.register("efer", "lma").mask
                 | GUEST.register("efer", "nxe").mask}
"""The host state assumed for nested paging when the input gives none: 4-level paging, NX on."""






@attrs.frozen
class TranslateInput:
    """A parsed ``vtx translate`` document."""

    arch: str
    caps: Capabilities
    state: PagingState
    features: PagingFeatures
    memory: PhysicalMemory
    access: Access
    address: int
    eptp: int | None
    secondary_controls: int
    ncr3: int | None
    host: PagingState | None
    tertiary_controls: int = 0




def parse(doc: object, *, profile: str | None = None) -> TranslateInput:
    """Validate a ``vtx translate`` document; :class:`InputError` names the offending key."""
    doc = check_keys(doc, TOP_KEYS)
    arch = doc.get("arch", "vmx")
    if arch not in ("vmx", "svm"):
        raise InputError("arch", shown(arch), "must be 'vmx' or 'svm'")
    if arch == "vmx" and ("ncr3" in doc or "host" in doc):
        raise InputError("ncr3" if "ncr3" in doc else "host", "given", "ncr3 and host apply to arch 'svm' only")
    if arch == "svm" and ("eptp" in doc or "fields" in doc):
        raise InputError("eptp" if "eptp" in doc else "fields", "given", "eptp and fields apply to arch 'vmx' only")
    caps = resolve_capabilities(profile=profile, document=doc)
    features = PagingFeatures.from_capabilities(caps)
    g = json_object(doc, "guest", GUEST_KEYS, required=True)
    cpl = json_int(g.get("cpl", 0), "guest.cpl", 2)
    fields = _parse_fields(doc)
    eptp = json_int(doc["eptp"], "eptp") if "eptp" in doc else None
    state = PagingState(cr0=json_int(g.get("cr0", 0), "guest.cr0"), cr3=json_int(g.get("cr3", 0), "guest.cr3"),
                        cr4=json_int(g.get("cr4", 0), "guest.cr4"), efer=json_int(g.get("efer", 0), "guest.efer"),
                        rflags=json_int(g.get("rflags", 2), "guest.rflags"),
                        pkru=json_int(g.get("pkru", 0), "guest.pkru", 32),
                        pat=json_int(g.get("pat", GUEST.pat.reset), "guest.pat"))
    for index in range(PAT_ENTRIES):
        guest.pat_memory_type(state.pat, index)  # a reserved type is bad input naming guest.pat
    if eptp is not None and guest.paging_mode(state) is GUEST.modes["pae"]:
        pdptes = tuple(fields.get(name, 0) for name in _PDPTR_FIELDS)
        bad = guest.pdpte_problems(pdptes, features)
        if bad:
            raise InputError("fields.GUEST_PDPTRn", "; ".join(bad), "VM entry fails with reserved bits in a present "
                             "PDPTE (SDM Vol. 3A §5.4.1 \"PDPTE Registers\")")
        state = attrs.evolve(state, pdptes=pdptes)
    a = json_object(doc, "access", ACCESS_KEYS, required=True)
    if "address" not in a:
        raise InputError("access.address", "missing", "required key")
    try:
        kind = AccessKind(a.get("kind", "read"))
    except ValueError as e:
        raise InputError("access.kind", shown(a.get("kind")), "must be 'read', 'write' or 'fetch'") from e
    implicit = json_bool(a.get("implicit", False), "access.implicit")
    size = json_int(a.get("size", 1), "access.size")
    if size < 1:
        raise InputError("access.size", size, "an access is at least one byte")
    access = Access(kind, user=cpl == _USER_CPL and not implicit, implicit=implicit, size=size,
                    nmi_unblocking=json_bool(a.get("nmi_unblocking", False), "access.nmi_unblocking"),
                    shadow_stack=json_bool(a.get("shadow_stack", False), "access.shadow_stack"),
                    asynchronous=json_bool(a.get("asynchronous", False), "access.asynchronous"))
    secondary = fields.get("SECONDARY_VM_EXEC_CONTROL", 0)
    tertiary = fields.get("TERTIARY_VM_EXEC_CONTROL", 0)
    for field, key, name in (("SECONDARY_VM_EXEC_CONTROL", "proc2", "mode_based_execute_control_for_ept"),
                             ("TERTIARY_VM_EXEC_CONTROL", "proc3", "ept_paging_write_control"),
                             ("TERTIARY_VM_EXEC_CONTROL", "proc3", "guest_paging_verification")):
        control = spec.get_control(key, name)
        value = secondary if key == "proc2" else tertiary
        if value & control.mask and not caps.allows(key, control.name):
            raise InputError(f"fields.{field}", hex(value),
                             f"the profile does not allow {control.title!r} (VM entry would fail)")
    ncr3 = json_int(doc["ncr3"], "ncr3") if "ncr3" in doc else None
    host = None
    if arch == "svm" and ncr3 is not None:
        h = json_object(doc, "host", HOST_KEYS)
        host = PagingState(cr0=json_int(h.get("cr0", _DEFAULT_HOST["cr0"]), "host.cr0"), cr3=ncr3,
                           cr4=json_int(h.get("cr4", _DEFAULT_HOST["cr4"]), "host.cr4"),
                           efer=json_int(h.get("efer", _DEFAULT_HOST["efer"]), "host.efer"))
        if not host.paging:
            raise InputError("host.cr0", hex(host.cr0), "nested paging needs host paging enabled (CR0.PG = 1)")
    return TranslateInput(arch, caps, state, features, parse_memory(doc.get("memory", [])), access,
                          json_int(a["address"], "access.address"), eptp, secondary, ncr3, host, tertiary)


def _parse_fields(doc: Mapping[str, Any]) -> dict[str, int]:
    raw = json_object(doc, "fields", tuple(f.name for f in spec.VMCS_FIELDS))
    return {name: json_int(value, f"fields.{name}", spec.VMCS_FIELDS[name].bits) for name, value in raw.items()}


@checked
def run(inp: TranslateInput) -> Outcome:
    """Translate the document's access."""
    if inp.arch == "svm":
        if inp.ncr3 is None or inp.host is None:
            return guest.translate(inp.state, inp.features, inp.memory, inp.address, inp.access)
        return npt.translate(inp.state, inp.features, inp.memory, inp.address, inp.access, host=inp.host)
    if inp.eptp is None:
        return guest.translate(inp.state, inp.features, inp.memory, inp.address, inp.access)
    return walk2d.translate(inp.state, inp.features, inp.memory, inp.address, inp.access, ept=_ept(inp))


def _ept(inp: TranslateInput) -> Ept:
    assert inp.eptp is not None
    return ept_from_eptp(inp.eptp, inp.caps, secondary_controls=inp.secondary_controls,
                         tertiary_controls=inp.tertiary_controls)


# ------------------------------------------------------------------ output

_OUTCOME_NAMES = {Translated: "ok", PageFault: "page_fault", EptViolation: "ept_violation",
                  EptMisconfig: "ept_misconfig", Npf: "npf", GeneralProtection: "general_protection"}


def _hex(v: int | None) -> str | None:
    return None if v is None else f"{v:#x}"


@checked
def to_json(outcome: Outcome, inp: TranslateInput | None = None) -> dict[str, Any]:
    """The ``--json`` record of an outcome (keys that do not apply are null); with ``inp`` under
    EPT, each reference carries the memory type it was made with."""
    out: dict[str, Any] = {"outcome": _OUTCOME_NAMES[type(outcome)], "gpa": None, "hpa": None, "gla": None,
                           "exit_reason": None, "qualification": None, "error_code": None,
                           "exit_info_1": None, "exit_info_2": None, "page_size": None, "memory_type": None,
                           "ept_memory_type": None, "pat_memory_type": None, "ignore_pat": None, "second": None}
    if isinstance(outcome, Translated):
        out.update(gpa=_hex(outcome.gpa), hpa=_hex(outcome.hpa), gla=_hex(outcome.gla),
                   page_size=_hex(outcome.page_size), memory_type=outcome.memory_type,
                   ept_memory_type=outcome.ept_memory_type, pat_memory_type=outcome.pat_memory_type,
                   ignore_pat=outcome.ignore_pat)
        if outcome.second is not None:
            s = outcome.second
            out["second"] = {"gla": _hex(s.gla), "gpa": _hex(s.gpa), "hpa": _hex(s.hpa), "memory_type": s.memory_type}
    elif isinstance(outcome, PageFault):
        out.update(error_code=_hex(outcome.error_code), gla=_hex(outcome.address))
    elif isinstance(outcome, EptViolation):
        out.update(exit_reason=spec.get_exit_reason("EPT_VIOLATION").number, qualification=_hex(outcome.qualification),
                   gpa=_hex(outcome.gpa), gla=_hex(outcome.gla))
    elif isinstance(outcome, EptMisconfig):
        out.update(exit_reason=spec.get_exit_reason("EPT_MISCONFIG").number, gpa=_hex(outcome.gpa))
    elif isinstance(outcome, Npf):
        out.update(exit_reason=_hex(NPT.exit_code), exit_info_1=_hex(outcome.exit_info_1),
                   exit_info_2=_hex(outcome.exit_info_2), gpa=_hex(outcome.exit_info_2))
    types: list[str | None] = [None] * len(outcome.references)
    if inp is not None and inp.arch == "vmx" and inp.eptp is not None:
        types = list(walk2d.reference_memory_types(outcome.references, inp.state, _ept(inp)))
    out["references"] = [{"space": r.space.value, "level": r.level, "address": _hex(r.address), "value": _hex(r.value),
                          "memory_type": t} for r, t in zip(outcome.references, types, strict=True)]
    return out


def _flags(ref: Reference) -> str:
    """The named one-bit flags an entry sets (outside its address field)."""
    names = EPT.entry if ref.space is Space.EPT else GUEST.entry
    hidden = "pat_pte" if ref.level > 1 else "page_size"
    shown = [b.name for b in names if b.bits.width == 1 and ref.value & b.mask and b.name != hidden
             and (b.lo < PAGE_OFFSET_BITS or b.lo >= _ADDRESS_TOP)]
    return " ".join(shown) or "-"


@checked
def render(inp: TranslateInput, outcome: Outcome) -> str:
    """The walk drawn step by step, then the decision."""
    rec = to_json(outcome, inp)
    lines = [f"translate {inp.access.kind.value} of {inp.access.size} byte(s) at {inp.address:#x} "
             f"({'user' if inp.access.user else 'supervisor'}-mode), arch {inp.arch}, profile {inp.caps.name}"]
    for n, r in enumerate(outcome.references, 1):
        translated = r.space is Space.GUEST and r.host_address != r.address
        where = f"gpa {r.address:#x} (hpa {r.host_address:#x})" if translated else f"{r.address:#x}"
        memory_type = rec["references"][n - 1]["memory_type"]
        typed = f" ({memory_type})" if memory_type else ""
        lines.append(f"  {n:2}. {r.space.value:5} {r.name:6} @ {where}: {r.value:#018x}  [{_flags(r)}]{typed}")
    lines.append(f"  {len(outcome.references)} memory reference(s)")
    detail = {k: v for k, v in rec.items() if k not in ("outcome", "references", "second") and v is not None}
    if rec["second"] is not None:
        detail["second part"] = ", ".join(f"{k} {v}" for k, v in rec["second"].items())
    lines.append(f"=> {rec['outcome']}: " + ", ".join(f"{k} {v}" for k, v in detail.items()))
    if isinstance(outcome, EptViolation):
        bits = [q.name for q in EPT_VIOLATION_QUALIFICATION if outcome.qualification & q.mask]
        lines.append(f"   qualification bits: {', '.join(bits)}")
    if isinstance(outcome, PageFault):
        bits = [b.name for b in GUEST.error_code if outcome.error_code & b.mask]
        lines.append(f"   error code bits: {', '.join(bits) or 'none'}")
    if isinstance(outcome, Npf):
        bits = [b.name for b in NPT.exit_info_1 if outcome.exit_info_1 & b.mask]
        lines.append(f"   EXITINFO1 bits: {', '.join(bits) or 'none'}")
    return "\n".join(lines)


def cmd_translate(args: argparse.Namespace) -> int:
    """Translate the access of a JSON document; exit 0 ok, 1 a fault or exit, 2 bad input."""
    with in_file(args.file):
        inp = parse(read_json(args.file), profile=args.profile)
        outcome = run(inp)
    if args.json:
        print(json.dumps(to_json(outcome, inp), indent=2))
    else:
        print(render(inp, outcome))
    return 0 if isinstance(outcome, Translated) else 1


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Register ``vtx translate``."""
    p = subparsers.add_parser("translate", help="translate a guest access through guest paging and EPT / NPT")
    p.add_argument("file", type=Path, help="JSON document (see docs/translate.rst)")
    p.add_argument("--profile", help="capability preset (over the file's \"profile\")")
    p.add_argument("--json", action="store_true", help="print the machine-readable JSON result")
    p.set_defaults(func=cmd_translate)
    return p
