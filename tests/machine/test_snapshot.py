"""Encapsulation and hardware independence: save, restore, clone, the snapshot file, `vtx snapshot`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vtx.errors import InputError
from vtx.fileio import sha256
from vtx.machine.executor import run
from vtx.machine.layout import LAYOUT
from vtx.machine.model import Machine
from vtx.machine.scenario import WORKLOADS, boot_machine, build_machine, parse_scenario
from vtx.machine.snapshot import (
    FORMAT_VERSION,
    HOST_OWNED,
    MAGIC,
    IncompatibleHost,
    clone_vm,
    decode_snapshot,
    encode_snapshot,
    guest_visible,
    missing_capabilities,
    pause_vm,
    read_snapshot,
    restore_vm,
    running_on,
    save_vm,
    write_snapshot,
)
from vtx.spec import VMCS_FIELDS
from vtx.vmx.capabilities import load_preset
from vtx.vmx.vmcs import LaunchState, Vmcs

ALT_LAYOUT = attrs.evolve(LAYOUT, vmxon=0x0002_0000, vmcs=0x0030_0000, pml=0x0070_0000, ept=0x0180_0000,
                          backing=0x2000_0000)
"""A second host-physical layout: VMXON, VMCS, PML, EPT and guest memory all elsewhere (the guest keys equal)."""
RUN_OUT = 3000
"""Steps enough for every single-vCPU program below to finish."""


def one_vm(*, kind: str = "hvm", workload: str = "mixed", length: int = 12, seed: int = 1,
           profile: str = "skylake_client", memory_mib: int = 4) -> Any:
    """One VM, one vCPU, one processor, no host timer: the guest's operations then happen in program
    order whatever the scheduler draws, so the guest-visible trace depends on nothing else."""
    return parse_scenario({"seed": seed, "logical_processors": 1, "tick": 0, "profile": profile,
                           "vm": [{"name": "g", "kind": kind, "workload": workload, "length": length,
                                   "memory_mib": memory_mib}]})


def fresh(design: str, *, profile: str = "skylake_client", layout: Any = LAYOUT, seed: int = 7) -> Machine:
    return boot_machine(load_preset(profile), design, logical_processors=1, seed=seed, tick=0, layout=layout)


def saved(machine: Machine, steps: int) -> tuple[Machine, Any, Any]:
    machine, first = run(machine, steps)
    machine, kick = pause_vm(machine, 0)
    return machine, save_vm(machine, 0), first + kick


# ------------------------------------------------------------------ encapsulation


@settings(max_examples=12, deadline=None)
@given(workload=st.sampled_from(WORKLOADS), kind=st.sampled_from(("hvm", "pv")),
       design=st.sampled_from(("hosted", "bare_metal", "hybrid")), length=st.integers(3, 16),
       seed=st.integers(0, 1000), k=st.integers(0, 80),
       target=st.sampled_from(("same", "alt_layout", "emeraldrapids_server", "max")))
def test_restore_continues_the_guest_visible_trace(*, workload: str, kind: str, design: str, length: int, seed: int,
                                                  k: int, target: str) -> None:
    """Run k steps, pause, save, restore into a fresh machine (same layout and preset, another
    layout, or another preset that has every needed capability) and run to the end: the
    guest-visible trace (per vCPU: accesses with GVA / GPA / value, completed operations,
    delivered faults and interrupts) equals the uninterrupted run's. One vCPU, one processor and
    tick = 0 make it independent of the scheduler; host-side events (exits that only resume the
    guest, VMCS transfers, HPAs) may and do differ."""
    sc = one_vm(kind=kind, workload=workload, length=length, seed=seed)
    whole, reference = run(build_machine(sc, design), RUN_OUT)
    assert whole.all_done
    _, image, before = saved(build_machine(sc, design), k)
    profile = target if target in ("emeraldrapids_server", "max") else "skylake_client"
    dst = fresh(design, profile=profile, layout=ALT_LAYOUT if target == "alt_layout" else LAYOUT)
    restored = restore_vm(dst, image)
    end, after = run(restored, RUN_OUT)
    assert end.all_done and not any(v.failed for v in end.vms[0].vcpus)
    expected = guest_visible(reference, "g")
    assert len(expected) == 1 and len(expected[0][1]) > length // 2
    assert guest_visible(before + after, "g") == expected
    assert all(e.get("checks") == "pass" for e in after if e.kind == "entry")


def test_restore_places_the_vm_by_the_target_layout_and_keeps_guest_state() -> None:
    _, image, _ = saved(build_machine(one_vm(workload="memory", length=20), "hosted"), 60)
    m = restore_vm(fresh("hosted", layout=ALT_LAYOUT), image)
    vm = m.vms[0]
    assert vm.backing == ALT_LAYOUT.backing and vm.ept_root == ALT_LAYOUT.ept
    assert vm.vcpus[0].vmcs_addr == ALT_LAYOUT.vmcs_region(0) and vm.vcpus[0].pml_addr == ALT_LAYOUT.pml_page(0)
    assert vm.mapped == frozenset(image.memory)
    vmcs = m.regions[vm.vcpus[0].vmcs_addr]
    assert isinstance(vmcs, Vmcs) and vmcs.launch_state is LaunchState.CLEAR
    assert vmcs["EPT_POINTER"] & ~0xFFF == ALT_LAYOUT.ept and vmcs["PML_ADDRESS"] == ALT_LAYOUT.pml_page(0)
    assert vmcs["HOST_RIP"] == image.vcpus[0].fields["HOST_RIP"]
    for name, value in image.vcpus[0].fields.items():
        if VMCS_FIELDS[name].type.value in ("guest", "control") and name not in HOST_OWNED | {"EPT_POINTER"}:
            assert vmcs[name] == value, name
        elif VMCS_FIELDS[name].type.value == "exit_info":
            assert vmcs[name] == 0, name  # a restored VMCS has recorded no exit
    again = save_vm(m, 0)
    assert again.memory == image.memory and again.vcpus[0].pc == image.vcpus[0].pc


def test_save_refuses_a_running_vm_and_an_unknown_vm() -> None:
    m = build_machine(one_vm(), "hosted")
    while not running_on(m, 0):
        m, _ = run(m, 1)
    with pytest.raises(InputError, match="pause it first"):
        save_vm(m, 0)
    with pytest.raises(InputError, match="no such VM"):
        save_vm(m, 3)


def test_restore_refuses_a_taken_name() -> None:
    m, image, _ = saved(build_machine(one_vm(), "hosted"), 5)
    with pytest.raises(InputError, match="name taken"):
        restore_vm(m, image)


def test_clone_runs_the_same_guest_from_the_same_point() -> None:
    sc = one_vm(workload="memory", length=14, seed=4)
    m, _ = run(build_machine(sc, "bare_metal"), 30)
    cloned = clone_vm(m, 0, "copy")
    a, b = cloned.vms
    assert b.name == "copy" and b.backing != a.backing and b.vcpus[0].vmcs_addr != a.vcpus[0].vmcs_addr
    va, vb = (cloned.regions[v.vcpus[0].vmcs_addr] for v in (a, b))
    assert isinstance(va, Vmcs) and isinstance(vb, Vmcs)
    assert va["VIRTUAL_PROCESSOR_ID"] != vb["VIRTUAL_PROCESSOR_ID"] and va["GUEST_RIP"] == vb["GUEST_RIP"]
    assert save_vm(cloned, 1).memory == save_vm(pause_vm(cloned, 0)[0], 0).memory
    end, trace = run(cloned, 2 * RUN_OUT)
    assert end.all_done
    assert guest_visible(trace, "g") == guest_visible(trace, "copy")


# ------------------------------------------------------------------ hardware independence: refusal


def test_restore_onto_a_preset_lacking_capabilities_lists_each() -> None:
    _, image, _ = saved(build_machine(one_vm(), "hosted"), 10)
    with pytest.raises(IncompatibleHost) as raptor:
        restore_vm(fresh("hosted", profile="raptorlake_client"), image)
    assert raptor.value.missing == ("Secondary processor-based VM-execution controls: enable_pml "
                                    "(IA32_VMX_PROCBASED_CTLS2 allowed-1 bit 17)",)
    assert isinstance(raptor.value, InputError) and "enable_pml" in str(raptor.value)
    ivy = missing_capabilities(image, load_preset("ivybridge_client"))
    assert any("enable_pml" in m for m in ivy)
    assert any("IA32_VMX_EPT_VPID_CAP bit 21" in m for m in ivy)
    penryn = missing_capabilities(image, load_preset("penryn_server"))
    for needed in ("enable_ept (IA32_VMX_PROCBASED_CTLS2 allowed-1 bit 1)",
                   "enable_vpid (IA32_VMX_PROCBASED_CTLS2 allowed-1 bit 5)",
                   "cr3_load_exiting = 0 (IA32_VMX_PROCBASED_CTLS allowed-0 bit 15 is 1)"):
        assert any(needed in m for m in penryn), needed


def test_a_vm_built_without_pml_restores_where_pml_is_missing() -> None:
    _, image, _ = saved(build_machine(one_vm(profile="raptorlake_client"), "hosted"), 10)
    assert not missing_capabilities(image, load_preset("raptorlake_client"))
    assert not missing_capabilities(image, load_preset("skylake_client"))
    assert any("bit 21" in m for m in missing_capabilities(image, load_preset("ivybridge_client")))


def test_a_control_the_target_forces_to_1_is_missing() -> None:
    _, image, _ = saved(build_machine(one_vm(), "hosted"), 10)
    caps = load_preset("skylake_client")
    true_proc = caps.msr("IA32_VMX_TRUE_PROCBASED_CTLS")
    assert true_proc is not None
    forced = caps.overlay({"IA32_VMX_TRUE_PROCBASED_CTLS": hex(true_proc | 1 << 15)}, name="forced")
    assert any("cr3_load_exiting = 0" in m and "allowed-0 bit 15" in m for m in missing_capabilities(image, forced))


@settings(max_examples=8, deadline=None)
@given(source=st.sampled_from(("skylake_client", "raptorlake_client", "ivybridge_client", "emeraldrapids_server")),
       target=st.sampled_from(("skylake_client", "raptorlake_client", "ivybridge_client", "emeraldrapids_server",
                               "max", "penryn_server")))
def test_restore_either_refuses_or_enters(source: str, target: str) -> None:
    """Whatever the pair of presets: restore refuses with a non-empty list, or the first VM entry
    on the target passes every VM-entry check (nothing the report misses stops the VM)."""
    _, image, _ = saved(build_machine(one_vm(profile=source), "hosted"), 8)
    dst = fresh("hosted", profile=target) if target != "penryn_server" else None
    missing = missing_capabilities(image, load_preset(target))
    if missing:
        if dst is not None:
            with pytest.raises(IncompatibleHost):
                restore_vm(dst, image)
        return
    assert dst is not None
    _, trace = run(restore_vm(dst, image), 50)
    entries = [e for e in trace if e.kind == "entry"]
    assert entries and entries[0].get("instruction") == "vmlaunch" and entries[0].get("checks") == "pass"


# ------------------------------------------------------------------ the file


@pytest.fixture(scope="module")
def image() -> Any:
    return saved(build_machine(one_vm(kind="pv", workload="io", length=10), "hybrid"), 40)[1]


def test_file_round_trip(tmp_path: Path, image: Any) -> None:
    path = tmp_path / "g.snap"
    write_snapshot(path, image)
    assert read_snapshot(path) == image
    blob = path.read_bytes()
    assert blob.startswith(MAGIC)
    header, payload = blob[len(MAGIC):].split(b"\n", 1)
    assert header.decode() == f"version={FORMAT_VERSION} sha256={sha256(payload)} bytes={len(payload)}"
    assert json.loads(payload)["vm"]["name"] == "g"


def _damaged(blob: bytes, how: str) -> bytes:
    head, payload = blob[:blob.index(b"\n", len(MAGIC)) + 1], blob[blob.index(b"\n", len(MAGIC)) + 1:]
    if how == "truncated":
        return blob[:len(blob) * 2 // 3]
    if how == "corrupted":
        i = len(payload) // 2
        return head + payload[:i] + bytes([payload[i] ^ 0x01]) + payload[i + 1:]
    if how == "wrong_magic":
        return b"VTXSNAQ\n" + blob[len(MAGIC):]
    if how == "future_version":
        return blob.replace(f"version={FORMAT_VERSION} ".encode(), f"version={FORMAT_VERSION + 1} ".encode(), 1)
    if how == "malformed_header":
        return MAGIC + b"nonsense\n" + payload
    if how == "trailing":
        return blob + b"x"
    raise AssertionError(how)


PROBLEMS = {"truncated": "truncated", "corrupted": "corrupted", "wrong_magic": "wrong magic",
            "future_version": "newer than this vtx reads", "malformed_header": "malformed header",
            "trailing": "trailing data"}


@pytest.mark.parametrize("how", sorted(PROBLEMS))
def test_damaged_files_are_refused_naming_file_and_problem(tmp_path: Path, image: Any, how: str) -> None:
    path = tmp_path / f"{how}.snap"
    path.write_bytes(_damaged(encode_snapshot(image), how))
    with pytest.raises(InputError) as e:
        read_snapshot(path)
    assert str(path) in str(e.value) and PROBLEMS[how] in str(e.value)


@settings(max_examples=20, deadline=None)
@given(cut=st.integers(0, 10_000), flip=st.integers(0, 10_000))
def test_every_truncation_or_bit_flip_is_refused(image: Any, cut: int, flip: int) -> None:
    blob = encode_snapshot(image)
    with pytest.raises(InputError):
        decode_snapshot(blob[:cut % len(blob)], "f")
    i = flip % len(blob)
    with pytest.raises(InputError):
        decode_snapshot(blob[:i] + bytes([blob[i] ^ 0x10]) + blob[i + 1:], "f")


def test_requirements_that_contradict_the_fields_are_refused(image: Any) -> None:
    data = json.loads(encode_snapshot(image).split(b"\n", 2)[2])
    data["requirements"] = data["requirements"][1:]
    payload = json.dumps(data).encode()
    blob = MAGIC + f"version=1 sha256={sha256(payload)} bytes={len(payload)}\n".encode() + payload
    with pytest.raises(InputError, match="requirements"):
        decode_snapshot(blob, "f")


def test_a_missing_file_is_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unreadable"):
        read_snapshot(tmp_path / "absent.snap")


# ------------------------------------------------------------------ vtx snapshot


def vtx(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vtx.cli", *args], capture_output=True, text=True, timeout=300,
                          check=False)


SCENARIO = """seed = 3
logical_processors = 1
tick = 0
design = "hosted"
[[vm]]
name = "web"
workload = "io"
length = 10
"""


def test_cli_save_show_check(tmp_path: Path) -> None:
    scenario = tmp_path / "s.toml"
    scenario.write_text(SCENARIO)
    snap = tmp_path / "web.snap"
    r = vtx("snapshot", "save", str(scenario), "--vm", "web", "--steps", "30", "-o", str(snap))
    assert r.returncode == 0, r.stderr
    assert read_snapshot(snap).name == "web"
    r = vtx("snapshot", "show", str(snap))
    assert r.returncode == 0 and "format version 1" in r.stdout and "vm web" in r.stdout
    assert "requirements" in r.stdout and "enable_pml" in r.stdout and "pages" in r.stdout
    shown = json.loads(vtx("snapshot", "show", str(snap), "--json").stdout)
    assert shown["vm"] == "web" and shown["pages"] > 0
    r = vtx("snapshot", "check", str(snap), "--profile", "emeraldrapids_server")
    assert r.returncode == 0 and "can run" in r.stdout
    r = vtx("snapshot", "check", str(snap), "--profile", "raptorlake_client")
    assert r.returncode == 1 and "enable_pml (IA32_VMX_PROCBASED_CTLS2 allowed-1 bit 17)" in r.stdout


def test_cli_bad_input_exits_2(tmp_path: Path) -> None:
    scenario = tmp_path / "s.toml"
    scenario.write_text(SCENARIO)
    bad = tmp_path / "bad.snap"
    bad.write_bytes(b"VTXSNAP\nversion=1 sha256=00 bytes=3\nabc")
    cases = [("snapshot", "save", str(scenario), "--vm", "nope", "-o", str(tmp_path / "x.snap")),
             ("snapshot", "save", str(tmp_path / "absent.toml"), "--vm", "web", "-o", str(tmp_path / "x.snap")),
             ("snapshot", "show", str(bad)), ("snapshot", "show", str(tmp_path / "absent.snap")),
             ("snapshot", "check", str(bad), "--profile", "max")]
    for args in cases:
        r = vtx(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert r.stderr.startswith("vtx: error:") and "Traceback" not in r.stderr
    snap = tmp_path / "web.snap"
    assert vtx("snapshot", "save", str(scenario), "--vm", "web", "-o", str(snap)).returncode == 0
    r = vtx("snapshot", "check", str(snap), "--profile", "no_such_cpu")
    assert r.returncode == 2 and "no_such_cpu" in r.stderr


def _with_payload(data: Any) -> bytes:
    payload = json.dumps(data).encode()
    return MAGIC + f"version={FORMAT_VERSION} sha256={sha256(payload)} bytes={len(payload)}\n".encode() + payload


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-2, 1 << 65) | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                        max_size=3), max_leaves=8)


@settings(max_examples=60, deadline=None)
@given(path=st.lists(st.sampled_from(["vm", "vcpus", 0, "fields", "program", "memory", "pages", "devices", "pc",
                                      "requirements", "name", "kind", "memory_bytes", "granted", "value", "$class",
                                      "access", "rax", "pending_vector", "page_size", "format_version"]),
                     min_size=1, max_size=4),
       value=JSON_VALUES)
def test_any_malformed_payload_with_a_valid_checksum_is_input_error(image: Any, path: list[Any], value: Any) -> None:
    """A well-formed file whose JSON payload has any value replaced anywhere: InputError (never
    another exception), or an image equal to the one written when the change was meaningless."""
    data = json.loads(encode_snapshot(image).split(b"\n", 2)[2])
    node = data
    for key in path[:-1]:
        inside = key in node if isinstance(node, dict) else isinstance(key, int) and key < len(node)
        if isinstance(node, dict | list) and inside:
            node = node[key]
    last = path[-1]
    if isinstance(node, dict):
        node[str(last)] = value
    elif isinstance(node, list) and node:
        node[0] = value
    try:
        decoded = decode_snapshot(_with_payload(data), "f")
        restored = restore_vm(fresh("hybrid"), decoded)
    except InputError:
        return
    run(restored, 200)  # whatever the file held, restoring and running it raises nothing
