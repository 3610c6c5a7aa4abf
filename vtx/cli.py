"""The ``vtx`` command.

Exit status: 0 success, 1 the checked thing fails, 2 bad input (the message names the file,
field, value and rule).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vtx import __version__, prove_cmd, spec
from vtx.cluster import cluster_cmd
from vtx.dumps import explain_cmd
from vtx.errors import VtxError
from vtx.machine import run_cmd, snapshot_cmd
from vtx.paging import translate_cmd
from vtx.vmx import check_cmd
from vtx.vmx.capabilities import preset_names, resolve_capabilities


def _add_capability_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", help="capability preset name (default: max); see `vtx capabilities --list`")
    p.add_argument("--msrs", type=Path, help="JSON file in the public capability format (over the preset)")


def _summary() -> dict[str, Any]:
    return {
        "sdm": {"number": spec.SDM.number, "date": spec.SDM.date},
        "vmcs_fields": len(spec.VMCS_FIELDS),
        "exit_reasons": len(spec.EXIT_REASONS),
        "vm_instruction_errors": len(spec.VM_INSTRUCTION_ERRORS),
        "control_fields": len(spec.CONTROL_FIELDS),
        "controls": len(spec.CONTROLS),
        "capability_msrs": len(spec.CAPABILITY_MSRS),
        "cpuid_facts": len(spec.CPUID_FACTS),
        "presets": preset_names(),
    }


def cmd_verify(args: argparse.Namespace) -> int:
    """Load and cross-check every catalogue and preset; report what vtx knows."""
    caps = resolve_capabilities(profile=args.profile, msrs_file=args.msrs)
    summary = _summary()
    summary["profile"] = caps.name
    reports, scenario_lines, scenario = run_cmd.verify_report()
    status = 0 if all(r.finished for r in reports) else 1
    proof_status, proof_lines, proofs = prove_cmd.prove_report()
    status = max(status, proof_status)
    if args.json:
        print(json.dumps({**summary, "scenario": scenario, "prove": proofs}, indent=2))
        return status
    print(f"vtx {__version__}: catalogues of SDM {spec.SDM.number} ({spec.SDM.date}) load and cross-check")
    for key, value in summary.items():
        if key not in ("sdm", "presets", "profile"):
            print(f"  {key.replace('_', ' '):24} {value}")
    print(f"  presets                  {', '.join(summary['presets'])}")
    print(f"  profile                  {caps.name} (consistent)")
    print("\n".join(scenario_lines))
    print("\n".join(proof_lines))
    return status


def cmd_capabilities(args: argparse.Namespace) -> int:
    """Show a capability profile: allowed settings of every control field, facts, MSRs."""
    if args.list:
        for name in preset_names():
            print(name)
        return 0
    caps = resolve_capabilities(profile=args.profile, msrs_file=args.msrs)
    if args.json:
        print(json.dumps(caps.to_json(), indent=2))
        return 0
    print(f"profile {caps.name}: {caps.description}")
    def show(v: int | None) -> str:
        return "unknown" if v is None else f"{v:#010x}"

    for cf in spec.CONTROL_FIELDS:
        a0, a1 = caps.allowed0(cf.key), caps.allowed1(cf.key)
        print(f"  {cf.key:6} {cf.title:42} must-be-1 {show(a0)}  may-be-1 {show(a1)}  ({caps.control_msr(cf.key)})")
    for fact in spec.CPUID_FACTS:
        print(f"  {fact.name:24} {caps.facts.get(fact.name, 'unknown')}")
    return 0


def cmd_field(args: argparse.Namespace) -> int:
    """Look a VMCS field up by name or encoding."""
    field, high = spec.VMCS_FIELDS.resolve(args.field)
    record = {
        "name": field.name + ("_HIGH" if high else ""),
        "encoding": f"{field.high_encoding if high else field.encoding:#06x}",
        "width": field.width.value, "type": field.type.value, "index": field.index,
        "title": field.title, "exists": str(field.exists), "citation": str(field.citation),
        "source": field.source.title,
    }
    if args.json:
        print(json.dumps(record, indent=2))
    else:
        for k, v in record.items():
            print(f"{k:10} {v}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vtx", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"vtx {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True)
    p = sub.add_parser("verify", help="load and cross-check the catalogues (the main job)")
    _add_capability_options(p)
    p.add_argument("--json", action="store_true", help="print the machine-readable JSON result")
    p.set_defaults(func=cmd_verify)
    p = sub.add_parser("capabilities", help="show a capability profile")
    _add_capability_options(p)
    p.add_argument("--list", action="store_true", help="list the presets")
    p.add_argument("--json", action="store_true", help="print the machine-readable JSON result")
    p.set_defaults(func=cmd_capabilities)
    p = sub.add_parser("field", help="look a VMCS field up by name or encoding")
    p.add_argument("field", help="a Linux field name (GUEST_CR0, EPT_POINTER_HIGH) or an encoding (0x6800)")
    p.add_argument("--json", action="store_true", help="print the machine-readable JSON result")
    p.set_defaults(func=cmd_field)
    translate_cmd.add_parser(sub)
    check_cmd.add_parsers(sub)
    explain_cmd.add_parser(sub)
    run_cmd.add_parser(sub)
    snapshot_cmd.add_parser(sub)
    prove_cmd.add_parser(sub)
    cluster_cmd.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        status: int = args.func(args)
    except VtxError as e:
        print(f"vtx: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader closed the pipe (e.g. `| head`): not an error of vtx
        sys.stderr.close()
        return 0
    return status


if __name__ == "__main__":
    sys.exit(main())
