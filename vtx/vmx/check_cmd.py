"""``vtx check``, ``vtx template`` and ``vtx profiles``: VM-entry checking from the command line.

``vtx check FILE.json`` reads ``{"fields": {NAME_OR_ENCODING: value}, "profile": NAME,
"capabilities": {...}, "memory": [...], "processor": {...}}`` (documented in ``docs/check.rst``),
runs VMLAUNCH or VMRESUME on that VMCS and prints the architectural outcome, the other outcomes a
processor may produce, and every violated check with its citation. Exit status: 0 the entry
succeeds, 1 it fails, 2 bad input.
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
from vtx.inputs import check_keys, in_file, json_bool, json_int, json_object, key_path, shown
from vtx.outcomes import InstructionOutcome, VmEntered, VmEntryFailed, VmFailInvalid, VmFailValid
from vtx.paging.memory import parse_memory
from vtx.spec import VMCS_FIELDS
from vtx.svm.check_cmd import DEFAULT_SVM_PRESET, check_svm_document, svm_template_document
from vtx.svm.templates import SVM_TEMPLATES
from vtx.typecheck import checked
from vtx.vmx import instructions
from vtx.vmx.capabilities import Capabilities, load_preset, preset_names, read_json, resolve_capabilities
from vtx.vmx.entry import EntryContext, EntryOutcome, evaluate_vm_entry
from vtx.vmx.entry.catalogue import ENTRY_CHECKS
from vtx.vmx.operation import INVALID_POINTER, LogicalProcessor, VmxMode, VmxonRegion
from vtx.vmx.templates import TEMPLATES, build_template
from vtx.vmx.vmcs import LaunchState, Vmcs

TOP_KEYS = ("fields", "profile", "capabilities", "memory", "processor")
"""Keys of a VMX document (an optional ``"arch": "vmx"`` is accepted too)."""
PROCESSOR_KEYS = ("instruction", "launch_state", "current_vmcs", "blocking_by_mov_ss", "vmm_ia32e_mode", "in_smm",
                  "shadow_vmcs", "vmcs_address", "vmxon_pointer")
DEFAULT_VMCS_ADDRESS = 0xFFFF_E000
DEFAULT_VMXON_POINTER = 0xFFFF_F000
_HIGH_BITS = 32
_FAILED_ENTRY = spec.EXIT_REASON_FORMAT["failed_vmentry"].bits


@attrs.frozen
class CheckInput:
    caps: Capabilities
    vmcs: Vmcs
    state: LogicalProcessor
    instruction: str


def parse_fields(obj: object, caps: Capabilities) -> dict[str, int]:
    """Field values by name; ``_HIGH`` forms merge into their full field and must agree with it."""
    if not isinstance(obj, dict):
        raise InputError("fields", type(obj).__name__, "must be an object of VMCS field values")
    full: dict[str, int] = {}
    high: dict[str, tuple[str, int]] = {}
    for key, raw in obj.items():
        where = key_path("fields", key)
        try:
            field, is_high = VMCS_FIELDS.resolve(key)
        except InputError as e:
            raise InputError(where, e.value, e.rule) from e
        supported = caps.field_exists(field)
        if not supported:
            raise InputError(where, field.name, f"the profile {caps.name!r} does not support this field "
                             f"(it exists if {field.exists})" if supported is False else
                             f"the profile {caps.name!r} cannot say whether this field exists ({field.exists})")
        value = json_int(raw, where, _HIGH_BITS if is_high else field.bits)
        if is_high:
            high[field.name] = (key, value)
        else:
            full[field.name] = value
    for name, (key, value) in high.items():
        if name in full and full[name] >> _HIGH_BITS != value:
            raise InputError(key_path("fields", key), hex(value), f"contradicts bits 63:32 of {name} = {full[name]:#x}")
        full[name] = full.get(name, 0) | value << _HIGH_BITS
    return full


def parse(doc: object, *, profile: str | None = None, msrs: Path | None = None) -> CheckInput:
    """A parsed ``vtx check`` document (command-line capabilities over the file's)."""
    d = check_keys(doc, TOP_KEYS)
    caps = resolve_capabilities(profile=profile, msrs_file=msrs, document=d)
    fields = parse_fields(d.get("fields", {}), caps)
    proc = json_object(d, "processor", PROCESSOR_KEYS)
    instruction = str(proc.get("instruction", "VMLAUNCH")).lower()
    if instruction not in ("vmlaunch", "vmresume"):
        raise InputError("processor.instruction", proc["instruction"], "must be VMLAUNCH or VMRESUME")
    launch = str(proc.get("launch_state", "clear"))
    if launch not in ("clear", "launched"):
        raise InputError("processor.launch_state", launch, "must be clear or launched")
    flags = {k: json_bool(proc[k], f"processor.{k}") for k in
             ("current_vmcs", "blocking_by_mov_ss", "vmm_ia32e_mode", "in_smm", "shadow_vmcs") if k in proc}
    vmcs_address = json_int(proc.get("vmcs_address", DEFAULT_VMCS_ADDRESS), "processor.vmcs_address")
    vmxon_pointer = json_int(proc.get("vmxon_pointer", DEFAULT_VMXON_POINTER), "processor.vmxon_pointer")
    revision = caps.msr_field("IA32_VMX_BASIC", "vmcs_revision_id") or 0
    vmcs = Vmcs(revision_id=revision, shadow=flags.get("shadow_vmcs", False),
                launch_state=LaunchState(launch)).with_fields(fields)
    ia32e = flags.get("vmm_ia32e_mode", True)
    base = LogicalProcessor()
    state = LogicalProcessor(
        mode=VmxMode.ROOT, efer=base.efer if ia32e else 0, cs_l=ia32e, in_smm=flags.get("in_smm", False),
        blocking_by_mov_ss=flags.get("blocking_by_mov_ss", False), vmxon_pointer=vmxon_pointer,
        current_vmcs=vmcs_address if flags.get("current_vmcs", True) else INVALID_POINTER,
        regions={vmxon_pointer: VmxonRegion(revision), vmcs_address: vmcs}, memory=parse_memory(d.get("memory", [])))
    return CheckInput(caps, vmcs, state, instruction)


def _outcome_json(outcome: InstructionOutcome | EntryOutcome) -> dict[str, Any]:
    out: dict[str, Any] = {"outcome": "success", "error": None, "exit_reason": None, "exit_reason_full": None,
                           "qualification": None}
    if isinstance(outcome, VmFailValid):
        out.update(outcome="VMfailValid", error=outcome.error.number)
    elif isinstance(outcome, VmFailInvalid):
        out.update(outcome="VMfailInvalid")
    elif isinstance(outcome, VmEntryFailed):
        out.update(outcome="entry_failure", exit_reason=outcome.reason.number,
                   exit_reason_full=_FAILED_ENTRY.put(outcome.reason.number, 1), qualification=outcome.qualification)
    elif not isinstance(outcome, VmEntered):
        out.update(outcome=str(outcome))
    return out


_BASIC_IDS = {"VMfailInvalid": ("basic.current_vmcs", "basic.not_shadow_vmcs"), 26: ("basic.mov_ss_blocking",),
              4: ("basic.vmlaunch_clear",), 5: ("basic.vmresume_launched",)}


@checked
def run(inp: CheckInput) -> dict[str, Any]:
    """The result document of ``vtx check --json``."""
    step = getattr(instructions, inp.instruction)(inp.state, inp.caps)
    outcome = step[1]
    verdict = evaluate_vm_entry(inp.vmcs, inp.caps, EntryContext.from_processor(inp.state, inp.instruction))
    violations = [{"id": v.check_id, "citation": str(v.check.citation), "fields": list(v.check.fields),
                   "message": v.message} for v in verdict.violations]
    basic: tuple[str, ...] = ()
    if isinstance(outcome, VmFailInvalid):
        basic = _BASIC_IDS["VMfailInvalid"][0 if not inp.state.has_current_vmcs else 1:][:1]
    elif isinstance(outcome, VmFailValid) and outcome.error.number in _BASIC_IDS:
        basic = _BASIC_IDS[outcome.error.number]
    for check_id in basic:
        row = ENTRY_CHECKS[check_id]
        violations.insert(0, {"id": row.id, "citation": str(row.citation), "fields": list(row.fields),
                              "message": row.statement})
    result = _outcome_json(outcome)
    result["possible_outcomes"] = [_outcome_json(o) for o in verdict.possible_outcomes] if not basic else []
    result["violations"] = violations
    result["not_evaluable"] = list(verdict.not_evaluable)
    return result


@checked
def render(result: Mapping[str, Any]) -> str:
    lines = [f"outcome: {result['outcome']}" + "".join(
        f", {k.replace('_', ' ')} {result[k]:#x}" if k == "exit_reason_full" else f", {k.replace('_', ' ')} {result[k]}"
        for k in ("error", "exit_reason", "exit_reason_full", "qualification") if result[k] is not None)]
    others = [o for o in result["possible_outcomes"][1:]]
    for o in others:
        lines.append(f"  another processor may report: {o['outcome']} {o['error'] or o['exit_reason']}")
    for v in result["violations"]:
        lines.append(f"  {v['id']}: {v['message']}\n      {v['citation']}; reads {', '.join(v['fields'])}")
    for n in result["not_evaluable"]:
        lines.append(f"  not evaluable: {n}")
    return "\n".join(lines)


@checked
def render_svm(result: Mapping[str, Any]) -> str:
    lines = [f"outcome: {result['outcome']}" + (f", exit code {result['exit_code']}" if result["exit_code"] else "")]
    for v in result["violations"]:
        lines.append(f"  {v['id']}: {v['message']}\n      {v['citation']}; reads {', '.join(v['fields'])}")
    lines += [f"  not evaluable: {n}" for n in result["not_evaluable"]]
    return "\n".join(lines)


def cmd_check(args: argparse.Namespace) -> int:
    if args.profile is not None:
        load_preset(args.profile)  # a bad --profile is the command line's fault, not the file's
    with in_file(args.file, args.msrs):
        doc = read_json(args.file)
        if isinstance(doc, dict) and doc.get("arch", "vmx") == "svm":
            result = check_svm_document(doc, profile=args.profile, msrs=args.msrs)
            text = render_svm(result)
        else:
            if isinstance(doc, dict) and doc.get("arch", "vmx") != "vmx":
                raise InputError("arch", shown(doc["arch"]), "must be 'vmx' or 'svm'")
            result = run(parse({k: v for k, v in doc.items() if k != "arch"} if isinstance(doc, dict) else doc,
                               profile=args.profile, msrs=args.msrs))
            text = render(result)
    print(json.dumps(result, indent=2, ensure_ascii=False) if args.json else text)
    return 0 if result["outcome"] == "success" and not result["not_evaluable"] else 1


def cmd_template(args: argparse.Namespace) -> int:
    if args.arch == "svm":
        if args.name not in SVM_TEMPLATES:
            raise InputError("template", args.name, f"SVM templates: {', '.join(SVM_TEMPLATES)}")
        caps = resolve_capabilities(profile=args.profile or DEFAULT_SVM_PRESET, msrs_file=args.msrs)
        doc = svm_template_document(args.name, caps)
    else:
        caps = resolve_capabilities(profile=args.profile, msrs_file=args.msrs)
        vmcs = build_template(args.name, caps, features=args.feature or ())
        doc = {"fields": {k: f"{v:#x}" for k, v in vmcs.nonzero_fields().items()}}
    if args.msrs is not None:
        doc.pop("profile", None)
        doc["capabilities"] = caps.to_json()
    else:
        doc["profile"] = caps.name
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(f"template {args.name} for {caps.name}")
        for name, value in doc["fields"].items():
            print(f"  {name:36} {value}")
    return 0


def cmd_profiles(args: argparse.Namespace) -> int:
    profiles = {name: load_preset(name).to_json() for name in preset_names()}
    if args.json:
        print(json.dumps(profiles, indent=2))
    else:
        for name, p in profiles.items():
            print(f"{name}: {p.get('description', '')}")
            for key, value in p.items():
                if key.startswith("IA32_VMX_"):
                    print(f"  {key:32} {value}")
    return 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``vtx check``, ``vtx template`` and ``vtx profiles``."""
    p = sub.add_parser("check", help="check a VMCS against every VM-entry rule")
    p.add_argument("file", type=Path, help="JSON document (see docs/check.rst)")
    p.add_argument("--profile", help="capability preset (over the file's)")
    p.add_argument("--msrs", type=Path, help="capability file (over the preset)")
    p.add_argument("--json", action="store_true", help="print the machine-readable JSON result")
    p.set_defaults(func=cmd_check)
    p = sub.add_parser("template", help="print a VMCS template that passes every VM-entry check")
    p.add_argument("name", choices=sorted(set(TEMPLATES) | set(SVM_TEMPLATES)), help="the template")
    p.add_argument("--profile", help="capability preset (default: max; amd_genoa_server for --arch svm)")
    p.add_argument("--msrs", type=Path, help="capability file (over the preset)")
    p.add_argument("--arch", choices=["vmx", "svm"], default="vmx", help="a VMCS (vmx) or a VMCB (svm)")
    p.add_argument("--feature", action="append", help="secondary control to turn on (repeatable), e.g. enable_ept")
    p.add_argument("--json", action="store_true", help="print the machine-readable JSON result")
    p.set_defaults(func=cmd_template)
    p = sub.add_parser("profiles", help="list the capability presets with their MSR values")
    p.add_argument("--json", action="store_true", help="print the machine-readable JSON result")
    p.set_defaults(func=cmd_profiles)
