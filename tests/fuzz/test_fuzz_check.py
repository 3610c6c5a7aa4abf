"""Fuzzing ``vtx check`` (VMX and SVM documents) and ``vtx template``.

Structure-aware: templates and hand-written documents with every top-level and processor key,
mutated; plus raw bytes and byte-level mutations of valid files. The oracle is
:func:`fuzz_harness.assert_clean`.
"""

from __future__ import annotations

from typing import Any

import pytest
from fuzz_harness import assert_clean, check_file, run_cli, run_file, scratch, template_json
from fuzz_strategies import byte_mutations, dumps, json_values, mutated, odd_strings, raw_inputs
from hypothesis import given
from hypothesis import strategies as st

from vtx.svm.templates import SVM_TEMPLATES
from vtx.vmx.templates import TEMPLATES

_PROCESSOR = {"instruction": "VMRESUME", "launch_state": "launched", "current_vmcs": True, "blocking_by_mov_ss": False,
              "vmm_ia32e_mode": True, "in_smm": False, "shadow_vmcs": False, "vmcs_address": "0xffffe000",
              "vmxon_pointer": "0xfffff000"}
_MEMORY = [{"address": "0x1000", "size": 8, "value": "0x1"}, {"address": "0x2000", "bytes": "00ff"}]
VMX_SEEDS: list[Any] = [
    *(template_json(name) for name in TEMPLATES),
    {**template_json("long-mode", "--feature", "enable_ept"), "processor": _PROCESSOR, "memory": _MEMORY,
     "capabilities": {"MAXPHYADDR": 39, "cpuid": {"0x7.0": {"eax": 0, "ebx": "0x1", "ecx": 0, "edx": 0}}}},
]
SVM_SEEDS: list[Any] = [
    *(template_json(name, "--arch", "svm") for name in SVM_TEMPLATES),
    {**template_json("long-mode", "--arch", "svm"),
     "processor": {"efer": "0x1d00", "cr0": "0x80000011", "rflags": 2, "cpl": 0, "rax": 0, "guest_mode": False}},
]
SEED_BYTES = [dumps(d) for d in VMX_SEEDS + SVM_SEEDS]


@pytest.mark.parametrize("doc", VMX_SEEDS + SVM_SEEDS)
def test_seeds_are_valid_documents(doc: Any) -> None:
    r = run_file(scratch(), ["check"], doc)
    assert r.code in (0, 1) and not r.err, r.err


@given(mutated(VMX_SEEDS + SVM_SEEDS))
def test_mutated_documents(doc: Any) -> None:
    check_file(["check", "--json"], doc)


@given(st.dictionaries(st.sampled_from(["arch", "fields", "profile", "capabilities", "memory", "processor"]),
                       json_values, max_size=6))
def test_documents_with_the_right_keys_and_any_values(doc: dict[str, Any]) -> None:
    check_file(["check"], doc)


@given(raw_inputs)
def test_raw_bytes(data: bytes) -> None:
    check_file(["check"], data)


@given(byte_mutations(SEED_BYTES))
def test_byte_mutations_of_valid_files(data: bytes) -> None:
    check_file(["check"], data)


@given(st.sampled_from(sorted(set(TEMPLATES) | set(SVM_TEMPLATES))), st.sampled_from(["vmx", "svm"]),
       st.lists(st.one_of(odd_strings, st.sampled_from(["enable_ept", "unrestricted_guest", "enable_vpid"])),
                max_size=3),
       st.one_of(st.none(), odd_strings, st.sampled_from(["max", "penryn_server", "amd_genoa_server"])))
def test_template_arguments(name: str, arch: str, features: list[str], profile: str | None) -> None:
    argv = ["template", name, "--arch", arch] + [a for f in features for a in ("--feature", f)]
    assert_clean(run_cli(argv + ([] if profile is None else ["--profile", profile])))
