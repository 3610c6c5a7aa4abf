"""``vtx snapshot save | show | check``: save a VM of a scenario to a snapshot file, show a
snapshot, and check whether a capability profile can run it.

Exit status: 0 success (``check``: the profile has every capability the VM needs); 1 ``check``
found missing capabilities (each is listed); 2 bad input (unreadable, truncated, corrupted,
wrong-magic or future-version file, bad scenario, unknown VM or profile).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from vtx.errors import InputError
from vtx.machine.executor import run
from vtx.machine.scenario import build_machine, load_scenario
from vtx.machine.snapshot import (
    VmImage,
    missing_capabilities,
    pause_vm,
    read_snapshot,
    save_vm,
    vm_index,
    write_snapshot,
)
from vtx.typecheck import checked
from vtx.vmx.capabilities import resolve_capabilities


@checked
def summary(image: VmImage) -> dict[str, Any]:
    """What ``vtx snapshot show`` prints."""
    return {
        "format_version": image.format_version, "vm": image.name, "kind": image.kind,
        "memory_bytes": image.memory_bytes, "source": image.source, "pages": len(image.memory),
        "vcpus": [{"index": v.index, "pc": v.pc, "program_steps": len(v.program), "pending_vector": v.pending_vector,
                   "fields": len(v.fields)} for v in image.vcpus],
        "devices": {"granted": sorted(image.devices.granted)},
        "requirements": [r.text for r in image.requirements],
    }


def cmd_save(args: argparse.Namespace) -> int:
    scenario = load_scenario(args.scenario)
    design = args.design or scenario.designs[0]
    if args.steps < 0:
        raise InputError("--steps", args.steps, "must be >= 0")
    machine = build_machine(scenario, design)
    index = vm_index(machine, args.vm)
    machine, _ = run(machine, args.steps)
    machine, _ = pause_vm(machine, index)
    image = save_vm(machine, index)
    write_snapshot(args.output, image)
    print(f"saved VM {image.name!r} after {machine.step} steps of design {design} to {args.output}: "
          f"{len(image.memory)} pages, {len(image.vcpus)} vCPUs, {len(image.requirements)} requirements")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    image = read_snapshot(args.file)
    data = summary(image)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print(f"snapshot {args.file}: format version {image.format_version}")
    print(f"  vm {image.name} ({image.kind}, {image.memory_bytes} bytes), saved from {image.source}")
    print(f"  pages {len(image.memory)} (guest-physical {', '.join(f'{p:#x}' for p in sorted(image.memory)[:8])}"
          f"{' ...' if len(image.memory) > 8 else ''})")
    for v in data["vcpus"]:
        print(f"  vcpu {v['index']}: step {v['pc']} of {v['program_steps']}, {v['fields']} non-zero VMCS fields"
              + (f", pending vector {v['pending_vector']:#x}" if v["pending_vector"] is not None else ""))
    print(f"  devices: pages granted to the service VM {data['devices']['granted']}")
    print(f"  requirements ({len(image.requirements)}):")
    for text in data["requirements"]:
        print(f"    {text}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    image = read_snapshot(args.file)
    caps = resolve_capabilities(profile=args.profile, msrs_file=args.msrs)
    missing = missing_capabilities(image, caps)
    if args.json:
        print(json.dumps({"vm": image.name, "profile": caps.name, "compatible": not missing,
                          "missing": list(missing)}, indent=2))
    elif missing:
        print(f"VM {image.name!r} cannot run on {caps.name}: {len(missing)} missing capabilities")
        for text in missing:
            print(f"  {text}")
    else:
        print(f"VM {image.name!r} can run on {caps.name}: every one of its {len(image.requirements)} requirements "
              "is met")
    return 1 if missing else 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("snapshot", help="save, show and check VM snapshots (encapsulation)")
    verbs = p.add_subparsers(dest="snapshot_verb", required=True)
    s = verbs.add_parser("save", help="run a scenario K steps and save one VM")
    s.add_argument("scenario", type=Path, help="scenario TOML file (format: docs/executor.rst)")
    s.add_argument("--vm", required=True, help="the VM's name (or index)")
    s.add_argument("--steps", type=int, default=0, help="scheduler steps to run before saving (default 0)")
    s.add_argument("--design", help="hypervisor design (default: the scenario's first)")
    s.add_argument("-o", "--output", type=Path, required=True, help="the snapshot file to write")
    s.set_defaults(func=cmd_save)
    s = verbs.add_parser("show", help="print a snapshot's version, VM, pages and requirements")
    s.add_argument("file", type=Path)
    s.add_argument("--json", action="store_true", help="print the machine-readable JSON result")
    s.set_defaults(func=cmd_show)
    s = verbs.add_parser("check", help="can a capability profile run the snapshot's VM? (exit 1 if not)")
    s.add_argument("file", type=Path)
    s.add_argument("--profile", help="capability preset name (default: max)")
    s.add_argument("--msrs", type=Path, help="JSON file in the public capability format (over the preset)")
    s.add_argument("--json", action="store_true", help="print the machine-readable JSON result")
    s.set_defaults(func=cmd_check)
