"""The AMD-V tables of spec/svm/: VMCB offsets against Linux's structures, exit codes, intercepts,
features, and the loaders' cross-checks."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from vtx import spec as vtx_spec
from vtx.errors import SpecError
from vtx.paging.formats import NPT
from vtx.svm import spec

# Linux arch/x86/include/asm/svm.h, member by member with reserved members, in declaration order:
# (name, element size, count). Laying them out back to back must reproduce every spec offset.
LINUX_CONTROL = [
    ("intercepts", 4, 6), ("reserved_1", 4, 9), ("pause_filter_thresh", 2, 1), ("pause_filter_count", 2, 1),
    ("iopm_base_pa", 8, 1), ("msrpm_base_pa", 8, 1), ("tsc_offset", 8, 1), ("asid", 4, 1), ("tlb_ctl", 1, 1),
    ("erap_ctl", 1, 1), ("reserved_2", 1, 2), ("int_ctl", 4, 1), ("int_vector", 4, 1), ("int_state", 4, 1),
    ("reserved_3", 1, 4), ("exit_code", 8, 1), ("exit_info_1", 8, 1), ("exit_info_2", 8, 1),
    ("exit_int_info", 4, 1), ("exit_int_info_err", 4, 1), ("misc_ctl", 8, 1), ("avic_vapic_bar", 8, 1),
    ("ghcb_gpa", 8, 1), ("event_inj", 4, 1), ("event_inj_err", 4, 1), ("nested_cr3", 8, 1), ("misc_ctl2", 8, 1),
    ("clean", 4, 1), ("reserved_5", 4, 1), ("next_rip", 8, 1), ("insn_len", 1, 1), ("insn_bytes", 1, 15),
    ("avic_backing_page", 8, 1), ("reserved_6", 1, 8), ("avic_logical_id", 8, 1), ("avic_physical_id", 8, 1),
    ("reserved_7", 1, 8), ("vmsa_pa", 8, 1), ("reserved_8", 1, 16), ("bus_lock_counter", 2, 1),
    ("reserved_9", 1, 22), ("allowed_sev_features", 8, 1), ("guest_sev_features", 8, 1), ("reserved_10", 1, 664),
    ("reserved_sw", 1, 32),
]
SEGMENTS = ("es", "cs", "ss", "ds", "fs", "gs", "gdtr", "ldtr", "idtr", "tr")
LINUX_SAVE = [*[(s, 16, 1) for s in SEGMENTS], ("reserved_0xa0", 1, 42), ("vmpl", 1, 1), ("cpl", 1, 1),
              ("reserved_0xcc", 1, 4), ("efer", 8, 1), ("reserved_0xd8", 1, 112),
              *[(n, 8, 1) for n in ("cr4", "cr3", "cr0", "dr7", "dr6", "rflags", "rip")], ("reserved_0x180", 1, 88),
              *[(n, 8, 1) for n in ("rsp", "s_cet", "ssp", "isst_addr", "rax", "star", "lstar", "cstar", "sfmask",
                                    "kernel_gs_base", "sysenter_cs", "sysenter_esp", "sysenter_eip", "cr2")],
              ("reserved_0x248", 1, 32),
              *[(n, 8, 1) for n in ("g_pat", "dbgctl", "br_from", "br_to", "last_excp_from", "last_excp_to")],
              ("reserved_0x298", 1, 72), ("spec_ctrl", 8, 1)]
SEGMENT_MEMBERS = (("selector", 0, 2), ("attrib", 2, 2), ("limit", 4, 4), ("base", 8, 8))
LINUX_CONTROL_SIZE, LINUX_SAVE_SIZE = 1024, 744


def _layout(members: list[tuple[str, int, int]], area: str, base: int) -> tuple[dict[str, tuple[int, int]], int]:
    out: dict[str, tuple[int, int]] = {}
    offset = base
    for name, size, count in members:
        if name in SEGMENTS:
            out |= {f"{area}.{name}.{m}": (offset + o, s) for m, o, s in SEGMENT_MEMBERS}
        elif not name.startswith("reserved"):
            names = [f"{area}.{name}[{i}]" for i in range(count)] if count > 1 else [f"{area}.{name}"]
            out |= {n: (offset + i * size, size) for i, n in enumerate(names)}
        offset += size * count
    return out, offset - base


def test_every_field_sits_at_linux_offset() -> None:
    control, control_size = _layout(LINUX_CONTROL, "control", 0)
    save, save_size = _layout(LINUX_SAVE, "save", spec.LAYOUT.save_offset)
    assert (control_size, save_size) == (LINUX_CONTROL_SIZE, LINUX_SAVE_SIZE)
    expected = control | save
    assert {f.name: (f.offset, f.size) for f in spec.VMCB_FIELDS} == expected


@pytest.mark.parametrize(("name", "offset"), [
    ("control.intercepts[0]", 0x000), ("control.intercepts[4]", 0x010), ("control.pause_filter_count", 0x03E),
    ("control.asid", 0x058), ("control.int_ctl", 0x060), ("control.exit_code", 0x070),
    ("control.exit_int_info", 0x088), ("control.misc_ctl", 0x090), ("control.event_inj", 0x0A8),
    ("control.nested_cr3", 0x0B0), ("control.clean", 0x0C0), ("control.next_rip", 0x0C8),
    ("control.insn_bytes[0]", 0x0D1), ("control.vmsa_pa", 0x108), ("save.es.selector", 0x400),
    ("save.cs.attrib", 0x412), ("save.tr.base", 0x498), ("save.cpl", 0x4CB), ("save.efer", 0x4D0),
    ("save.cr4", 0x548), ("save.rip", 0x578), ("save.rsp", 0x5D8), ("save.rax", 0x5F8), ("save.cr2", 0x640),
    ("save.g_pat", 0x668), ("save.spec_ctrl", 0x6E0),
])
def test_apm_offsets(name: str, offset: int) -> None:
    """Spot checks against APM Tables B-1 / B-2 (VMCB offsets)."""
    assert spec.VMCB_FIELDS[name].offset == offset


def test_exit_codes_complete() -> None:
    codes = [e.code for e in spec.EXIT_CODES]
    assert len(codes) == 175
    assert codes == [*range(0x0A7), *range(0x400, 0x404), -1, -2, -3, -4]
    assert spec.get_exit_code("VMEXIT_INVALID").value == (1 << 64) - 1
    assert spec.get_exit_code("VMEXIT_NPF").code == NPT.exit_code
    assert spec.EXIT_CODES_BY_VALUE[0x400].name == "VMEXIT_NPF"
    assert spec.get_exit_code("VMEXIT_IDLE_REQUIRED").code == -3
    assert spec.get_exit_code("VMEXIT_INVALID_PMC").code == -4
    with pytest.raises(SpecError):
        spec.get_exit_code("VMEXIT_NOPE")


def test_every_intercept_exit_code_is_word_times_32_plus_bit() -> None:
    """Table B-1 / C-1: the intercept of word w bit b exits with code 32 * w + b (0x000-0x0A6)."""
    assert len(spec.INTERCEPTS) == 0x0A7
    for i in spec.INTERCEPTS:
        assert i.exit.code == 32 * i.word + i.bit, i.name
    assert spec.get_intercept("INTERCEPT_VMRUN").exit.name == "VMEXIT_VMRUN"
    assert spec.get_intercept("INTERCEPT_MWAIT_COND").exit.code == 0x08C
    with pytest.raises(SpecError):
        spec.get_intercept("INTERCEPT_NOPE")


@pytest.mark.parametrize("name", [
    "INTERCEPT_CR0_READ", "INTERCEPT_CR8_WRITE", "INTERCEPT_DR7_WRITE", "INTERCEPT_EXCEPTION_14", "INTERCEPT_INTR",
    "INTERCEPT_NMI", "INTERCEPT_SMI", "INTERCEPT_INIT", "INTERCEPT_VINTR", "INTERCEPT_SELECTIVE_CR0",
    "INTERCEPT_STORE_IDTR", "INTERCEPT_LOAD_TR", "INTERCEPT_RDTSC", "INTERCEPT_RDPMC", "INTERCEPT_PUSHF",
    "INTERCEPT_POPF", "INTERCEPT_CPUID", "INTERCEPT_RSM", "INTERCEPT_IRET", "INTERCEPT_INTn", "INTERCEPT_INVD",
    "INTERCEPT_PAUSE", "INTERCEPT_HLT", "INTERCEPT_INVLPG", "INTERCEPT_INVLPGA", "INTERCEPT_IOIO_PROT",
    "INTERCEPT_MSR_PROT", "INTERCEPT_TASK_SWITCH", "INTERCEPT_FERR_FREEZE", "INTERCEPT_SHUTDOWN", "INTERCEPT_VMRUN",
    "INTERCEPT_VMMCALL", "INTERCEPT_VMLOAD", "INTERCEPT_VMSAVE", "INTERCEPT_STGI", "INTERCEPT_CLGI",
    "INTERCEPT_SKINIT", "INTERCEPT_RDTSCP", "INTERCEPT_ICEBP", "INTERCEPT_WBINVD", "INTERCEPT_MONITOR",
    "INTERCEPT_MWAIT", "INTERCEPT_XSETBV", "INTERCEPT_RDPRU", "TRAP_EFER_WRITE", "TRAP_CR4_WRITE",
    "INTERCEPT_INVPCID", "INTERCEPT_MCOMMIT", "INTERCEPT_TLBSYNC", "INTERCEPT_BUSLOCK", "INTERCEPT_IDLE_HLT",
])
def test_named_intercepts_exist(name: str) -> None:
    assert spec.get_intercept(name).field.name.startswith("control.intercepts[")


def test_linux_enum_numbers() -> None:
    """Linux numbers intercepts word * 32 + bit: INTERCEPT_VMRUN = 128, INTERCEPT_INVLPGB = 160."""
    linux = {"INTERCEPT_INTR": 96, "INTERCEPT_VMRUN": 128, "TRAP_EFER_WRITE": 143, "TRAP_CR8_WRITE": 152,
             "INTERCEPT_INVLPGB": 160, "INTERCEPT_IDLE_HLT": 166, "INTERCEPT_DR0_WRITE": 48}
    assert {n: 32 * spec.get_intercept(n).word + spec.get_intercept(n).bit for n in linux} == linux


def test_features_and_clean_bits() -> None:
    assert {f.name: f.bit for f in spec.SVM_FEATURES if f.bit < 8} == {
        "NPT": 0, "LBRV": 1, "SVML": 2, "NRIPS": 3, "TSCRATEMSR": 4, "VMCBCLEAN": 5, "FLUSHBYASID": 6,
        "DECODEASSISTS": 7}
    assert spec.SVM_FEATURES["VGIF"].bit == 16 and spec.SVM_FEATURES["VNMI"].bit == 25
    assert [c.bit for c in spec.CLEAN_BITS] == list(range(13))
    assert {f.name for f in spec.CLEAN_BITS[8].fields} >= {"save.cs.attrib", "save.cpl", "save.es.base"}


def test_vmrun_check_catalogue_names_real_fields() -> None:
    assert len(spec.VMRUN_CHECKS) == 27
    for row in spec.VMRUN_CHECKS:
        assert row.citation.document.key in ("apm", "apm3")
        assert all(f in spec.VMCB_FIELDS for f in row.fields)


def _broken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, table: str, old: str, new: str) -> None:
    root = tmp_path / "spec"
    shutil.copytree(vtx_spec.SPEC_DIR, root)
    path = root / table
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    monkeypatch.setattr(vtx_spec, "SPEC_DIR", root)


@pytest.mark.parametrize("edit", [
    ("svm/vmcb.toml", 'name = "asid"\noffset = 0x058', 'name = "asid"\noffset = 0x056', "_load_vmcb"),
    ("svm/vmcb.toml", 'name = "clean"\noffset = 0x0C0\nsize = 4', 'name = "clean"\noffset = 0x0C0\nsize = 3',
     "_load_vmcb"),
    ("svm/vmcb.toml", 'name = "guest_sev_features"\noffset = 0x140', 'name = "guest_sev_features"\noffset = 0x3FC',
     "_load_vmcb"),
    ("svm/vmcb.toml", '"control.misc_ctl", "control.nested_cr3"', '"control.asid", "control.nested_cr3"',
     "_load_vmcb"),
    ("svm/vmcb.toml", 'fields = ["control.intercepts[3]", "control.intercepts[4]"]',
     'fields = ["control.intercepts[3]", "control.intercepts[5]"]', "_load_vmcb"),
    ("svm/intercepts.toml", 'exit = "VMEXIT_VMRUN"', 'exit = "VMEXIT_VMRUNX"', "_load_intercepts"),
    ("svm/intercepts.toml", "word = 5\nbit = 6", "word = 6\nbit = 6", "_load_intercepts"),
    ("svm/exit_codes.toml", "code = 0x001", "code = 0x000", "_load_exit_codes"),
    ("svm/vmrun_checks.toml", 'fields = ["control.asid"]', 'fields = ["control.asidx"]', "_load_checks"),
    ("svm/vmrun_checks.toml", 'failure = "ud"', 'failure = "triple_fault"', "_load_checks"),
    ("svm/vmrun.toml", "valid_exception_vectors = [0,", "valid_exception_vectors = [32, 0,", "_load_vmrun"),
])
def test_loader_rejects_broken_tables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      edit: tuple[str, str, str, str]) -> None:
    table, old, new, loader = edit
    _broken(tmp_path, monkeypatch, table, old, new)
    with pytest.raises(SpecError):
        getattr(spec, loader)()


def test_loaders_accept_the_shipped_tables() -> None:
    for loader in ("_load_vmcb", "_load_intercepts", "_load_exit_codes", "_load_checks", "_load_vmrun",
                   "_load_features"):
        getattr(spec, loader)()
