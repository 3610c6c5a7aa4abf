"""One regression test per bug the fuzz tests found (issue 14): each input used to crash, print an
unreadable or unlocated message, or be read with a silent default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fuzz_harness import check_file, run_cli, scratch, template_json
from hypothesis import given
from hypothesis import strategies as st

from vtx import inputs
from vtx.errors import InputError
from vtx.machine.scenario import MAX_STEPS, parse_scenario
from vtx.paging import guest
from vtx.paging.ept import ept_from_eptp, translate_gpa
from vtx.paging.guest import Access, AccessKind, PagingFeatures, PagingState
from vtx.paging.memory import PhysicalMemory, parse_memory
from vtx.vmx.capabilities import Capabilities, load_preset

MAX = load_preset("max")
DEEP = "[" * 5000 + "]" * 5000
TRANSLATE = {"guest": {"cr0": "0x80000011", "cr3": "0x1000", "cr4": "0x20", "efer": "0xd00"},
             "access": {"address": "0x1000"}}


def last_error(err: str) -> str:
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize("verb", [["check"], ["translate"], ["capabilities", "--msrs"], ["explain"]])
def test_deeply_nested_json_is_bad_input_not_a_recursion_error(verb: list[str]) -> None:
    text = DEEP if verb != ["explain"] else '{"fields": ' + DEEP + "}"
    r = check_file(verb, text)
    assert r.code == 2 and "nested too deeply" in r.err


def test_an_odd_unknown_key_is_quoted_and_its_value_cut_short() -> None:
    doc = template_json("long-mode")
    doc[""] = doc.pop("fields")
    r = check_file(["check"], doc)
    message = last_error(r.err)
    assert r.code == 2 and f"{scratch() / 'in.json'}: '': {{'GUEST_ES" in message and len(message) < 300


def test_a_long_field_value_is_cut_short_in_the_message() -> None:
    doc = template_json("long-mode", "--arch", "svm")
    doc["fields"]["save.fs.limit"] = ["0xffffffff"] * 40
    r = check_file(["check"], doc)
    assert r.code == 2 and "fields.save.fs.limit: ['0xffffffff'" in r.err and len(last_error(r.err)) < 300


@pytest.mark.parametrize(("verb", "doc", "where"), [
    (["check"], {"fields": {"GUEST_CR9": 1}}, "fields.GUEST_CR9"),
    (["translate"], {**TRANSLATE, "eptp": "0x101f"}, "eptp"),
    (["explain"], {"fields": []}, "fields"),
])
def test_an_error_in_a_document_names_the_file_then_the_key(verb: list[str], doc: object, where: str) -> None:
    r = check_file(verb, doc)
    assert r.code == 2 and last_error(r.err).startswith(f"vtx: error: {scratch() / 'in.json'}: {where}: ")


def test_a_bad_command_line_profile_is_not_blamed_on_the_file() -> None:
    r = check_file(["check", "--profile", "nope"], template_json("long-mode"))
    assert r.code == 2 and last_error(r.err).startswith("vtx: error: profile: 'nope'")


@pytest.mark.parametrize("key", ["implicit", "nmi_unblocking"])
def test_translate_flags_must_be_booleans_not_truthy_values(key: str) -> None:
    r = check_file(["translate"], {**TRANSLATE, "access": {"address": "0x1000", key: "no"}})
    assert r.code == 2 and f"access.{key}: 'no': must be true or false" in r.err


@pytest.mark.parametrize("profile", ["", None, False, 0])
@pytest.mark.parametrize("arch", ["vmx", "svm"])
def test_an_empty_or_null_profile_is_bad_input_not_the_default_preset(profile: object, arch: str) -> None:
    doc = template_json("long-mode", "--arch", arch)
    doc["profile"] = profile
    r = check_file(["check"], doc)
    assert r.code == 2 and ": profile: " in r.err


@pytest.mark.parametrize("name", ["../presets/max", "max.json", "../../pyproject"])
def test_a_profile_is_a_preset_name_never_a_path(name: str) -> None:
    with pytest.raises(InputError, match="no such preset"):
        load_preset(name)


@pytest.mark.parametrize(("key", "verb"), [("processor", ["check"]), ("memory", ["check"]), ("memory", ["translate"]),
                                           ("guest", ["translate"])])
def test_a_null_object_or_list_is_bad_input_not_the_default(key: str, verb: list[str]) -> None:
    doc = template_json("long-mode") if verb == ["check"] else dict(TRANSLATE)
    doc[key] = None
    r = check_file(verb, doc)
    assert r.code == 2 and f": {key}: " in r.err


def test_a_memory_run_past_the_64_bit_space_is_bad_input() -> None:
    with pytest.raises(InputError, match=r"memory\[0\].*runs past"):
        parse_memory([{"address": hex(2**64 - 1), "bytes": "0011"}])


@pytest.mark.parametrize("gla", [-1, 2**64, 2**70])
@pytest.mark.parametrize("efer", [0xD00, 0])
def test_a_linear_address_outside_64_bits_is_bad_input_not_a_fault(gla: int, efer: int) -> None:
    state = PagingState(cr0=0x80000011, cr3=0x1000, cr4=0x20, efer=efer)
    with pytest.raises(InputError, match=r"^access\.address: "):
        guest.translate(state, PagingFeatures.from_capabilities(MAX), PhysicalMemory(), gla, Access(AccessKind.READ))


@pytest.mark.parametrize("gpa", [-1, 2**64])
def test_a_guest_physical_address_outside_64_bits_is_bad_input(gpa: int) -> None:
    with pytest.raises(InputError, match="gpa"):
        translate_gpa(ept_from_eptp(0x101E, MAX), PhysicalMemory(), gpa, AccessKind.READ)


def test_an_unknown_field_in_a_check_document_is_named_by_its_key() -> None:
    r = check_file(["check"], {"fields": {"NOPE": 1}})
    assert r.code == 2 and ": fields.NOPE: 'NOPE': no VMCS field has this name" in r.err


def test_a_bad_cpuid_leaf_key_is_named_by_its_path() -> None:
    with pytest.raises(InputError, match=r"^capabilities\.cpuid\.zz: 'zz': a leaf key"):
        Capabilities.from_json({"cpuid": {"zz": {}}})


def test_a_file_over_the_size_bound_is_refused_before_it_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inputs, "MAX_INPUT_BYTES", 10)
    r = check_file(["check"], json.dumps({"fields": {}}))
    assert r.code == 2 and "larger than the 10 bytes vtx reads" in r.err


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    r = run_cli(["translate", str(tmp_path / "absent.json")])
    assert r.code == 2 and last_error(r.err).startswith(f"vtx: error: {tmp_path / 'absent.json'}: unreadable")


@pytest.mark.parametrize(("cpl", "code"), [(99, 2), (4, 2), (3, 1), (0, 0)])
def test_an_svm_cpl_is_a_privilege_level_0_to_3(cpl: int, code: int) -> None:
    doc = template_json("long-mode", "--arch", "svm")
    doc["processor"] = {"cpl": cpl}
    r = check_file(["check"], doc)
    assert r.code == code and (code != 2 or "processor.cpl: " in r.err)


def test_an_msrs_file_error_names_the_file_then_the_key(tmp_path: Path) -> None:
    f = tmp_path / "cpu.json"
    f.write_text(json.dumps({"cpuid": {" ": {}}}))
    r = run_cli(["capabilities", "--msrs", str(f)])
    assert r.code == 2 and last_error(r.err).startswith(f"vtx: error: {f}: capabilities.cpuid.' ': ' ': a leaf key")


def test_an_unknown_capability_key_gives_a_short_message() -> None:
    with pytest.raises(InputError) as e:
        Capabilities.from_json({"-0x10000": "x"})
    assert "'cpuid', a fact name (CPUID_VMX" in str(e.value) and len(str(e.value)) < 300


def test_an_unknown_memory_key_is_quoted_with_its_value() -> None:
    with pytest.raises(InputError, match=r"^memory\[0\]\.'a\\nb': 1: unknown key"):
        parse_memory([{"address": 0, "a\nb": 1}])


def test_many_contradicting_msrs_give_a_short_message() -> None:
    with pytest.raises(InputError) as e:
        Capabilities.from_json({"IA32_VMX_PINBASED_CTLS": 1, "IA32_VMX_PROCBASED_CTLS": 1})
    assert "more)" in str(e.value) and len(str(e.value)) < 600


def test_a_scenario_value_is_shown_cut_short() -> None:
    """A [[vm]] entry that is a long array used to be printed whole (a 650-character message)."""
    vm = '{name = "c", program = [' + ", ".join(['{op = "cpuid"}'] * 40) + "]}"
    r = check_file(["run"], f"vm = [{vm}, [{vm}, {vm}]]\n", name="scenario.toml")
    assert r.code == 2 and "vm[1]" in last_error(r.err) and "..." in last_error(r.err)


def test_a_huge_scenario_file_is_refused_before_it_is_read() -> None:
    path = scratch() / "big.toml"
    path.write_bytes(b"#" * (inputs.MAX_INPUT_BYTES + 1))
    r = run_cli(["run", str(path)])
    assert r.code == 2 and "larger than" in r.err


SMALL_SCENARIO = {"vm": [{"name": "a", "workload": "compute", "length": 2}]}


@given(st.integers(MAX_STEPS + 1, 2**70))
def test_a_scenario_run_is_bounded_in_steps(steps: int) -> None:
    """``steps`` had no upper bound: a file could ask for an endless run."""
    try:
        parse_scenario({**SMALL_SCENARIO, "steps": steps})
    except InputError as e:
        assert e.where == "steps"
    else:
        raise AssertionError("an unbounded run was accepted")


def test_more_vms_than_the_layout_holds_are_refused() -> None:
    """Any number of VMs was accepted, but VM 16's EPT area is dom0's: the layout holds 16 VMs."""
    vms = [{"name": f"v{n}", "workload": "compute", "length": 1} for n in range(17)]
    parse_scenario({"vm": vms[:16]})
    try:
        parse_scenario({"vm": vms})
    except InputError as e:
        assert e.where == "vm" and "16" in e.rule
    else:
        raise AssertionError("17 VMs were accepted")


def test_guest_memory_too_small_for_its_page_tables_is_refused() -> None:
    """With memory_mib = 1 the guest's page tables (at guest-physical 1 MiB) lay outside its memory,
    and the design mapped them outside the VM's partition (found by the stateful isolation test)."""
    r = check_file(["run"], '[[vm]]\nname = "a"\nmemory_mib = 1\n', name="scenario.toml")
    assert r.code == 2 and "vm[0].memory_mib" in r.err


@pytest.mark.parametrize("name", ["", "a b", "x:y"])
def test_an_odd_vmcb_field_name_is_quoted(name: str) -> None:
    """An empty VMCB field name gave ``fields.: unknown: ...`` (no location; found by the deep run)."""
    r = check_file(["check"], {"arch": "svm", "profile": "amd_genoa_server", "fields": {name: 1}})
    assert r.code == 2 and f"fields.{name!r}" in r.err


def test_control_characters_in_a_message_are_escaped() -> None:
    """A snapshot header holding a vertical tab printed it raw: the message broke over two lines
    (found by the deep run of snapshot files)."""
    e = InputError("file\x0b", "sha256 \x0bab", "corrupted\u2028")
    assert str(e) == "file\\x0b: sha256 \\x0bab: corrupted\\u2028" and len(str(e).splitlines()) == 1


def test_an_unplaceable_cluster_names_the_file() -> None:
    """A cluster whose VMs no host can take failed with ``vm db-00: unplaced: ...`` and no file
    (found by the deep run of cluster files)."""
    doc = ('name = "tiny"\nslots = 1\n[[host]]\nname = "h"\nprofile = "skylake_client"\nmemory_gib = 1\n'
           'logical_processors = 1\n[[vm]]\nname = "big"\nmemory_gib = 64\nvcpus = 1\nload = 0.1\n')
    r = check_file(["cluster", "--no-executor", "--time-limit", "1"], doc, name="cluster.toml")
    assert r.code == 2 and "cluster.toml" in last_error(r.err), r.err
