"""``vtx check`` and ``vtx template`` for AMD-V: VMRUN checking of a VMCB given as JSON.

A document is ``{"arch": "svm", "fields": {NAME: value}, "profile": NAME, "capabilities": {...},
"processor": {...}}``: field names are Linux's ``struct vmcb_control_area`` / ``vmcb_save_area``
members prefixed ``control.`` / ``save.`` (``control.intercepts[4]``, ``save.efer``,
``save.cs.attrib``; the older ``control.intercept`` and ``control.nested_ctl`` are accepted),
values ints or hex strings. ``processor`` sets the state VMRUN reads outside the VMCB (``efer``,
``cr0``, ``rflags``, ``cpl``, ``rax``, ``guest_mode``); by default a 64-bit host at CPL 0 with
EFER.SVME = 1 runs VMRUN on a VMCB at 0. The ``processor`` keys are read with json_int, so values
are ints or hex strings. The profile defaults to ``amd_genoa_server``.

The result is ``{"outcome": "success" | "VMEXIT_INVALID" | "VMEXIT_VMRUN" | "#UD" | "#GP(0)",
"exit_code": ..., "violations": [{"id", "citation", "fields", "message"}], "not_evaluable": [...],
"profile": ...}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from vtx.errors import InputError
from vtx.inputs import check_keys, json_bool, json_int, json_object, shown
from vtx.outcomes import Fault
from vtx.spec import reg_bit
from vtx.svm.checks import SvmState, intercept_of
from vtx.svm.templates import build_svm_template
from vtx.svm.vmcb import Vmcb
from vtx.svm.vmrun import SvmResult, SvmVmexit, vmrun
from vtx.typecheck import checked
from vtx.vmx.capabilities import Capabilities, resolve_capabilities

DEFAULT_SVM_PRESET = "amd_genoa_server"
TOP_KEYS = ("arch", "fields", "profile", "capabilities", "processor")
REGISTER_KEYS = ("efer", "cr0", "rflags", "cpl", "rax")
PROCESSOR_KEYS = (*REGISTER_KEYS, "guest_mode")
_CPL_BITS = reg_bit("VMCS_ACCESS_RIGHTS", "DPL").bits.width
"""A privilege level (CPL, DPL) is 0 to 3 (SDM Vol. 3A §5.5 "Privilege Levels"; APM Vol. 2 §4.9)."""


def parse_vmcb(obj: object) -> Vmcb:
    """The VMCB a ``fields`` object describes; errors name ``fields.<name>``."""
    if not isinstance(obj, dict):
        raise InputError("fields", type(obj).__name__, "must be an object of VMCB field values")
    try:
        return Vmcb.from_fields(obj)
    except InputError as e:
        plain = e.where and e.where.isprintable() and not any(c.isspace() or c == ":" for c in e.where)
        raise InputError(f"fields.{e.where if plain else repr(e.where)}", e.value, e.rule) from e


@checked
def parse_state(doc: Mapping[str, Any]) -> SvmState:
    """The processor state of the document's ``processor`` object (defaults: :class:`SvmState`).
    ``guest_mode: true`` runs the instruction in a guest whose VMCB sets only the VMRUN intercept."""
    proc = json_object(doc, "processor", PROCESSOR_KEYS)
    state = SvmState().with_registers(**{k: json_int(proc[k], f"processor.{k}", _CPL_BITS if k == "cpl" else 64)
                                         for k in REGISTER_KEYS if k in proc})
    if "guest_mode" in proc and json_bool(proc["guest_mode"], "processor.guest_mode"):
        vmrun = intercept_of("vmrun")
        state = attrs.evolve(state, guest=Vmcb().with_fields({vmrun.field.name: vmrun.mask}))
    return state


@checked
def result_document(result: SvmResult, caps: Capabilities) -> dict[str, Any]:
    """The JSON result of checking one VMRUN."""
    outcome, exit_code = result.outcome, None
    if isinstance(outcome, SvmVmexit):
        name, exit_code = outcome.code.name.removeprefix("VMEXIT_"), outcome.code.value
        label = f"VMEXIT_{name}"
    elif isinstance(outcome, Fault):
        label = str(outcome)
    else:
        label = "success"
    return {
        "outcome": label,
        "exit_code": None if exit_code is None else f"{exit_code:#x}",
        "violations": [{"id": v.check_id, "citation": str(v.check.citation), "fields": list(v.check.fields),
                        "message": v.message} for v in result.violations],
        "not_evaluable": list(result.not_evaluable),
        "profile": caps.name,
    }


@checked
def check_svm_document(doc: Mapping[str, Any], *, profile: str | None = None,
                       msrs: Path | None = None) -> dict[str, Any]:
    """``vtx check`` of an ``"arch": "svm"`` document: VMRUN on its VMCB, every violation, the outcome."""
    d = check_keys(doc, TOP_KEYS)
    if d.get("arch", "svm") != "svm":
        raise InputError("arch", shown(d["arch"]), "this checker takes 'svm' documents")
    preset = profile if profile is not None else d.get("profile", DEFAULT_SVM_PRESET)
    caps = resolve_capabilities(profile=preset, msrs_file=msrs, document=d)
    vmcb = parse_vmcb(d.get("fields", {}))
    return result_document(vmrun(parse_state(d), caps, vmcb), caps)


@checked
def svm_template_document(name: str, caps: Capabilities) -> dict[str, Any]:
    """``vtx template --arch svm``: a document that :func:`check_svm_document` accepts."""
    vmcb = build_svm_template(name, caps)
    return {"arch": "svm", "profile": caps.name,
            "fields": {k: f"{v:#x}" for k, v in vmcb.nonzero_fields().items()}}
