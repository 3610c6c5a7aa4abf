"""SVM templates pass every VMRUN check; `vtx check` / `vtx template` documents for arch svm;
SVM capabilities read from the shared profiles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vtx.errors import InputError
from vtx.svm.capabilities import features, has_feature, has_svm, nasid
from vtx.svm.check_cmd import check_svm_document, svm_template_document
from vtx.svm.checks import SvmState
from vtx.svm.templates import SVM_TEMPLATES, build_svm_template
from vtx.svm.vmrun import vmrun
from vtx.vmx.capabilities import Capabilities, load_preset

AMD = ("amd_genoa_server", "amd_vermeer_client")


@pytest.mark.parametrize("profile", AMD)
@pytest.mark.parametrize("name", SVM_TEMPLATES)
def test_templates_pass_every_check(profile: str, name: str) -> None:
    caps = load_preset(profile)
    result = vmrun(SvmState(), caps, build_svm_template(name, caps))
    assert result.succeeds, result.violations


@pytest.mark.parametrize("name", SVM_TEMPLATES)
def test_template_document_round_trips_through_check(name: str) -> None:
    doc = svm_template_document(name, load_preset("amd_vermeer_client"))
    assert doc["arch"] == "svm" and doc["profile"] == "amd_vermeer_client"
    result = check_svm_document(json.loads(json.dumps(doc)))
    assert result["outcome"] == "success" and result["violations"] == [] and result["not_evaluable"] == []


def test_template_modes() -> None:
    caps = load_preset("amd_genoa_server")
    assert build_svm_template("long-mode", caps)["save.cs.attrib"] & (1 << 9)
    real = build_svm_template("real-mode", caps)
    assert real["save.cs.base"] == 0xF0000 and real["save.rip"] == 0xFFF0 and not real["save.cr0"] & 1
    assert build_svm_template("protected-mode", caps)["save.cs.base"] == 0


def test_template_rejects_bad_input() -> None:
    with pytest.raises(InputError, match="known SVM templates"):
        build_svm_template("pae", load_preset("amd_genoa_server"))
    with pytest.raises(InputError, match="SVM"):
        build_svm_template("long-mode", load_preset("skylake_client"))


def test_check_reports_violations_with_citations() -> None:
    doc = svm_template_document("long-mode", load_preset("amd_genoa_server"))
    doc["fields"] |= {"save.efer": "0x500", "control.asid": 0, "control.nested_ctl": 1, "control.nested_cr3": 1 << 60}
    result = check_svm_document(doc)
    assert result["outcome"] == "VMEXIT_INVALID" and result["exit_code"] == "0xffffffffffffffff"
    ids = {v["id"] for v in result["violations"]}
    assert ids == {"save.efer_svme", "control.asid", "control.nested_cr3_width"}
    asid = next(v for v in result["violations"] if v["id"] == "control.asid")
    assert asid["citation"].startswith("APM §15.5.1") and asid["fields"] == ["control.asid"]


def test_check_processor_state_and_older_names() -> None:
    doc = svm_template_document("long-mode", load_preset("amd_genoa_server"))
    assert check_svm_document({**doc, "processor": {"cpl": 3}})["outcome"] == "#GP(0)"
    assert check_svm_document({**doc, "processor": {"efer": "0x500"}})["outcome"] == "#UD"
    assert check_svm_document({**doc, "processor": {"guest_mode": True}})["outcome"] == "VMEXIT_VMRUN"
    fields = {k: v for k, v in doc["fields"].items() if k != "control.intercepts[4]"}
    older = check_svm_document({**doc, "fields": fields | {"control.intercept": "0x100000000"}})
    assert older["outcome"] == "success"


def test_check_capabilities_and_profile_options(tmp_path: Path) -> None:
    doc = svm_template_document("long-mode", load_preset("amd_genoa_server"))
    doc["fields"]["control.msrpm_base_pa"] = hex((1 << 48) - 0x1000)
    assert check_svm_document(doc)["outcome"] == "success"  # Genoa: 52-bit physical addresses
    assert check_svm_document(doc, profile="amd_vermeer_client")["outcome"] == "VMEXIT_INVALID"  # 48 bits
    assert check_svm_document({**doc, "capabilities": {"MAXPHYADDR": 40}})["outcome"] == "VMEXIT_INVALID"
    caps_file = tmp_path / "caps.json"
    caps_file.write_text(json.dumps({"MAXPHYADDR": 46}))
    result = check_svm_document(doc, msrs=caps_file)
    assert result["outcome"] == "VMEXIT_INVALID" and result["profile"].endswith("caps.json")


@pytest.mark.parametrize(("doc", "where"), [
    ({"arch": "vmx"}, "arch"),
    ({"fields": {"save.nope": 1}}, "fields.save.nope"),
    ({"fields": {"control.asid": 1 << 32}}, "fields.control.asid"),
    ({"fields": []}, "fields"),
    ({"processor": {"cpl": "x"}}, "processor.cpl"),
    ({"processor": {"guest_mode": 1}}, "processor.guest_mode"),
    ({"processor": {"mode": 1}}, "processor.mode"),
    ({"extra": 1}, "extra"),
])
def test_check_rejects_bad_documents(doc: dict[str, object], where: str) -> None:
    with pytest.raises(InputError) as e:
        check_svm_document(doc)
    assert e.value.where == where


def test_svm_capabilities() -> None:
    genoa, vermeer = load_preset("amd_genoa_server"), load_preset("amd_vermeer_client")
    assert has_svm(genoa) and has_svm(vermeer) and not has_svm(load_preset("skylake_client"))
    assert nasid(genoa) == nasid(vermeer) == 0x8000
    assert {"NPT", "NRIPS", "VMCBCLEAN", "FLUSHBYASID", "DECODEASSISTS", "AVIC", "VGIF"} <= (features(vermeer) or set())
    assert has_feature(genoa, "VNMI") and has_feature(genoa, "X2AVIC")
    assert not has_feature(vermeer, "VNMI") and not has_feature(vermeer, "X2AVIC")
    bare = Capabilities("bare")
    assert has_svm(bare) is None and features(bare) is None and nasid(bare) is None
    assert has_feature(bare, "NPT") is None
    with pytest.raises(InputError, match="unknown SVM feature"):
        has_feature(genoa, "WARP_DRIVE")
